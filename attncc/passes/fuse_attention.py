"""fuse-attention: matmul(q, kᵀ) -> score ops / mask -> softmax -> matmul(·, v)
becomes one ``attn.flash`` op with scalar ``score`` and ``mask`` regions.

The elementwise ops between the two matmuls are split as follows: the outermost
``select(cond, x, -inf)`` layers whose ``cond`` reads only indices become the
mask (their conjunction); a multiplication of the raw scores by a constant
becomes the ``scale`` attribute; whatever remains is the score region.
Index tensors (``attn.iota`` over the score's dims 0..3) become the region's
``b, h, q_idx, kv_idx`` arguments.

What is not attention is refused with a reason (``PassError``): a softmax not on
the last axis, probabilities used elsewhere, a score that reads another tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from attncc.errors import PassError
from attncc.ir.core import Function, Op, Region, Value, is_neg_inf, make_op
from attncc.ir.types import DType, TensorType, dims_equal, dim_str
from attncc.passes._rewrite import remove_dead, replace_uses, users
from attncc.passes.pipeline import Pass, register_pass

_ELEMENTWISE = {"attn.add", "attn.sub", "attn.mul", "attn.div", "attn.max", "attn.min", "attn.floordiv",
                "attn.mod", "attn.exp", "attn.log", "attn.tanh", "attn.sigmoid", "attn.sqrt", "attn.neg",
                "attn.abs", "attn.lt", "attn.le", "attn.gt", "attn.ge", "attn.eq", "attn.ne", "attn.and",
                "attn.or", "attn.not", "attn.select", "attn.cast", "attn.constant", "attn.iota",
                "attn.gather"}


def _refuse(func: Function, op: Op | None, msg: str):
    raise PassError(f"fuse-attention: {msg}", variant=func.name, op=op.name if op else None,
                    line=op.line if op else None)


@register_pass
@dataclass(frozen=True)
class FuseAttention(Pass):
    name = "fuse-attention"
    # refuse (rather than pass through) a function with no attention in it
    require: bool = True

    def apply(self, func: Function) -> Function:
        softmaxes = [op for op in func.ops if op.name == "attn.softmax"]
        if not softmaxes:
            if any(op.name == "attn.flash" for op in func.ops) or not self.require:
                return func
            _refuse(func, None, "no softmax found: this graph is not attention "
                    "(expected matmul(q, kᵀ) -> score ops -> softmax -> matmul(·, v))")
        for sm in softmaxes:
            self._fuse(func, sm)
        return remove_dead(func)

    # ------------------------------------------------------------------------------------
    def _fuse(self, func: Function, sm: Op):
        x = sm.operands[0]
        if x.type.rank != 4:
            _refuse(func, sm, f"softmax input must be [batch, heads, queries, keys], got {x.type}")
        if sm.attrs.get("axis", -1) % 4 != 3:
            _refuse(func, sm, "softmax must be over the last (key) axis")
        g = func.graph()
        # the score path: what reaches the softmax without passing through a matmul
        # (whatever computes q and k upstream of the score matmul is not part of the score)
        for op in g.nodes:
            if isinstance(op, Op) and op.name == "attn.matmul":
                g.remove_edges_from(list(g.in_edges(op)))
        up = nx.ancestors(g, sm) | {x.owner} if x.owner is not None else set()
        qk = [op for op in up if isinstance(op, Op) and op.name == "attn.matmul"]
        if len(qk) != 1:
            _refuse(func, sm, f"softmax input must come from exactly one matmul(q, kᵀ), found {len(qk)}")
        mm = qk[0]
        if not mm.attrs.get("transpose_b", False):
            _refuse(func, mm, "the score matmul must be q · kᵀ (transpose_b = true)")
        q, k = mm.operands
        if q.type.rank != 4:
            _refuse(func, mm, f"q must be [batch, heads, seq, dim], got {q.type}")
        # the ops strictly between mm and sm
        between = [op for op in func.ops if op in up and op is not mm]
        for op in between:
            if op.name not in _ELEMENTWISE:
                _refuse(func, op, f"{op.name} between the score matmul and the softmax is not elementwise")
            for n_operand, v in enumerate(op.operands):
                if v.owner is None and op.name == "attn.gather" and n_operand == 0:
                    continue        # a captured input read at indices (document ids, ...)
                if v.owner is None:
                    _refuse(func, op, f"the score reads tensor %{v.hint}, which is not an index: "
                            "only the scores, indices and constants may enter the score")
        for op in between:
            if op.name == "attn.iota":
                d = op.attrs["dim"]
                if not dims_equal(op.results[0].type.shape[d], mm.results[0].type.shape[d]):
                    _refuse(func, op, f"index over dim {d} has extent {dim_str(op.results[0].type.shape[d])}, "
                            f"but the scores have {dim_str(mm.results[0].type.shape[d])}")
            if op.name in ("attn.constant", "attn.iota"):
                continue    # copied into the region: other users keep the original
            for r in op.results:
                outside = [u for u in users(func, r) if u not in up and u is not sm]
                if outside and r is not x:
                    _refuse(func, outside[0], "an intermediate score value is also used outside the attention")
        # softmax -> (cast) -> matmul(p, v) -> (cast)
        p_users = users(func, sm.results[0])
        if len(p_users) != 1:
            _refuse(func, sm, "the probabilities are used by more than one op (fusing would lose them)")
        cur = p_users[0]
        pval = sm.results[0]
        if cur.name == "attn.cast":
            pval = cur.results[0]
            nxt = users(func, cur.results[0])
            if len(nxt) != 1:
                _refuse(func, cur, "the probabilities are used by more than one op")
            cur = nxt[0]
        if cur.name != "attn.matmul" or cur.operands[0] is not pval or cur.attrs.get(
                "transpose_b", False):
            _refuse(func, cur, "softmax output must feed matmul(p, v)")
        pv = cur
        v = pv.operands[1]
        if v.type.dtype != q.type.dtype or k.type.dtype != q.type.dtype:
            _refuse(func, pv, f"q, k, v dtypes differ: {q.type.dtype}, {k.type.dtype}, {v.type.dtype}")
        final = pv.results[0]
        fu = users(func, final)
        if len(fu) == 1 and fu[0].name == "attn.cast" and fu[0].attrs["to"] == q.type.dtype:
            final = fu[0].results[0]

        mask_conds, score_val = _peel_mask(x)
        scale, score_val, raw = _peel_scale(score_val, mm.results[0])
        captures = []
        for op in between:
            if op.name == "attn.gather" and op.operands[0].owner is None and op.operands[0] not in captures:
                captures.append(op.operands[0])
        for c in captures:
            if any(c is x for x in (q, k, v)):
                _refuse(func, None, f"the score reads q, k or v at indices (%{c.hint}); only other inputs "
                        "may be captured")
        regions = []
        if score_val is not raw:
            regions.append(_region_of(func, "score", score_val, raw, True, captures))
        if mask_conds:
            regions.append(_region_of(func, "mask", mask_conds, raw, False, captures))
        attrs = {"scale": scale} if scale is not None else {}
        flash = make_op("attn.flash", [q, k, v] + captures, attrs, regions, line=sm.line)
        out = flash.results[0]
        new = [flash]
        if out.type != final.type:
            c = make_op("attn.cast", [out], {"to": final.type.dtype})
            new.append(c)
            out = c.results[0]
        idx = func.ops.index(final.owner)
        func.ops[idx + 1:idx + 1] = new
        replace_uses(func.ops, final, out)


def _peel_mask(x: Value):
    """Outer select(cond, s, -inf) / select(cond, -inf, s) layers -> ([conds], s)."""
    conds = []
    while x.owner is not None and x.owner.name == "attn.select":
        c, a, b = x.owner.operands
        if is_neg_inf(b) and not _reads_scores(c):
            conds.append((c, False))
            x = a
        elif is_neg_inf(a) and not _reads_scores(c):
            conds.append((c, True))     # negated
            x = b
        else:
            break
    return conds, x


def _reads_scores(v: Value) -> bool:
    """Whether v depends on the score matmul (inputs read by gather do not count)."""
    stack, seen = [v], set()
    while stack:
        u = stack.pop()
        if u in seen or u.owner is None:
            continue
        seen.add(u)
        if u.owner.name == "attn.matmul":
            return True
        stack.extend(u.owner.operands)
    return False


def _peel_scale(s: Value, raw: Value):
    """If the raw scores enter only as mul(raw, c) with a scalar constant c: (c, s, mul result)."""
    uses = []
    stack, seen = [s], set()
    while stack:
        u = stack.pop()
        if u in seen or u.owner is None or u is raw:
            continue
        seen.add(u)
        for w in u.owner.operands:
            if w is raw:
                uses.append(u.owner)
            stack.append(w)
    if len(uses) == 1 and uses[0].name == "attn.mul" and uses[0].operands[0] is raw:
        c = uses[0].operands[1]
        if c.owner is not None and c.owner.name == "attn.constant" and c.type.is_scalar:
            return c.owner.attrs["value"], s, uses[0].results[0]
    return None, s, raw


def _region_of(func: Function, name: str, root, raw: Value, is_score: bool, captures=()) -> Region:
    """Copy the tensor DAG ending at ``root`` into scalar ops over region arguments."""
    i32, f32 = TensorType((), DType.i32), TensorType((), DType.f32)
    arg_names = ["b", "h", "q_idx", "kv_idx"]
    args = ([Value(f32, "score")] if is_score else []) + [Value(i32, n) for n in arg_names]
    index_args = args[1:] if is_score else args
    capture_args = {c: Value(c.type, c.hint) for c in captures}
    args = args + list(capture_args.values())
    mapping: dict = {}
    ops: list[Op] = []

    def emit(name, operands, attrs=None):
        op = make_op(name, operands, attrs or {})
        ops.append(op)
        return op.results[0]

    def conv(v: Value) -> Value:
        if v in mapping:
            return mapping[v]
        if v is raw:
            if not is_score:
                raise AssertionError("mask reads scores")
            out = args[0]
        else:
            op = v.owner
            if op.name == "attn.iota":
                out = index_args[op.attrs["dim"]]
            elif op.name == "attn.gather":
                out = emit("attn.gather", [capture_args[op.operands[0]]] + [conv(w) for w in op.operands[1:]])
            elif op.name == "attn.constant":
                out = emit("attn.constant", [], dict(op.attrs))
            else:
                out = emit(op.name, [conv(w) for w in op.operands], dict(op.attrs))
        mapping[v] = out
        return out

    if is_score:
        res = conv(root)
        if res.type.dtype != DType.f32:
            res = emit("attn.cast", [res], {"to": DType.f32})
    else:
        res = None
        for c, negated in reversed(root):
            m = conv(c)
            if negated:
                m = emit("attn.not", [m])
            res = m if res is None else emit("attn.and", [res, m])
    ops.append(make_op("attn.yield", [res]))
    return Region(name, args, ops)
