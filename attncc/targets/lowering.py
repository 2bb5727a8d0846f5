"""From the IR's tiled ``attn.flash`` op to the spec every target builds.

* ``kernel_spec(func, env)`` finds the one flash op, binds the dims, and returns a
  :class:`FlashKernelSpec` whose score/mask callables produce TVM expressions.
* ``key_bounds(mask_region, env)`` derives the simple band bound
  ``q_idx + lower <= kv_idx <= q_idx + upper`` from conjuncts of comparisons that
  are affine in (q_idx, kv_idx) with unit coefficients (causal, sliding window);
  it is exact when the mask is nothing but such conjuncts.  The general proof
  over tiles is the prune-sparsity pass (a later issue).
"""

from __future__ import annotations

import functools

from typing import Optional

import sympy

from attncc.errors import DTypeError, TargetError
from attncc.ir.core import Function, Op, Region, Value
from attncc.ir.printer import print_ir
from attncc.ir.types import DType
from attncc.reference import eval_scalar
from attncc.targets.spec import BandPart, FlashKernelSpec, KeyBounds, RowRuns


def find_flash(func: Function) -> Op:
    flashes = [op for op in func.ops if op.name == "attn.flash"]
    if len(flashes) != 1:
        raise TargetError(f"expected exactly one attn.flash op after the passes, found {len(flashes)} "
                          "(run fuse-attention; a graph that is not attention cannot be built)", variant=func.name)
    op = flashes[0]
    allowed = {"attn.flash", "attn.return", "attn.cast"}
    for other in func.ops:
        if other.name == "attn.quantize" and other.operands[0].owner is None:
            continue            # host-side prologue: quantize an input before the kernel
        if other.name not in allowed:
            raise TargetError(f"the kernel would also need {other.name} outside the attention; attncc builds "
                              "one fused attention per kernel", variant=func.name, op=other.name, line=other.line)
    for v in op.operands:
        if v.owner is not None and v.owner.name != "attn.quantize":
            raise TargetError(f"flash operand %{v.hint or '?'} is computed inside the function; q, k, v and "
                              "captured tensors must be function inputs", variant=func.name, op="attn.flash")
    return op


# ---------------------------------------------------------------------------------------------
# regions -> TVM expressions

def region_to_tir(region: Optional[Region], env: dict):
    """A Python callable that builds the region's TIR expression from TIR arguments."""
    if region is None:
        return None

    def build(*args):
        from tvm import tirx
        vals = dict(zip(region.args, args))
        for op in region.ops:
            if op.name == "attn.yield":
                return vals[op.operands[0]]
            a = [vals[v] for v in op.operands]
            vals[op.results[0]] = _tir_op(tirx, op, a, env)
        raise AssertionError("region without yield")
    return build


def _tir_const(tirx, value, dt: DType):
    if dt.is_bool:
        return tirx.const(bool(value), "bool")
    if dt.is_float:
        return tirx.const(float(value), "float32")
    return tirx.const(int(value), "int32")


def _tir_op(tirx, op: Op, a: list, env: dict):
    n = op.short
    dt = op.results[0].type.dtype
    if n == "constant":
        return _tir_const(tirx, eval_scalar(op.attrs["value"], env), op.attrs["dtype"])
    if n == "add":
        return a[0] + a[1]
    if n == "sub":
        return a[0] - a[1]
    if n == "mul":
        return a[0] * a[1]
    if n == "div":
        return a[0] / a[1] if dt.is_float else tirx.truncdiv(a[0], a[1])
    if n == "floordiv":
        return tirx.floordiv(a[0], a[1])
    if n == "mod":
        return tirx.floormod(a[0], a[1])
    if n == "max":
        return tirx.max(a[0], a[1])
    if n == "min":
        return tirx.min(a[0], a[1])
    if n == "neg":
        return -a[0]
    if n == "abs":
        return tirx.abs(a[0])
    if n in ("exp", "log", "tanh", "sigmoid", "sqrt"):
        return getattr(tirx, n)(a[0])
    if n == "lt":
        return a[0] < a[1]
    if n == "le":
        return a[0] <= a[1]
    if n == "gt":
        return a[0] > a[1]
    if n == "ge":
        return a[0] >= a[1]
    if n == "eq":
        return tirx.EQ(a[0], a[1])
    if n == "ne":
        return tirx.NE(a[0], a[1])
    if n == "and":
        return tirx.And(a[0], a[1])
    if n == "or":
        return tirx.Or(a[0], a[1])
    if n == "not":
        return tirx.Not(a[0])
    if n == "select":
        return tirx.Select(a[0], a[1], a[2])
    if n == "gather":
        buf = a[0]
        idx = [tirx.max(tirx.min(x, int(d) - 1), 0) for x, d in zip(a[1:], buf.shape)]
        val = buf[tuple(idx)] if idx else buf[()]
        src_dt = op.operands[0].type.dtype
        if src_dt.is_float and src_dt != DType.f32:
            return tirx.Cast("float32", val)
        if src_dt.is_int and src_dt != DType.i32:
            return tirx.Cast("int32", val)
        if src_dt.is_bool:
            return tirx.NE(tirx.Cast("int32", val), 0)
        return val
    if n == "cast":
        to: DType = op.attrs["to"]
        if to.is_float:
            return tirx.Cast("float32", a[0]) if to == DType.f32 else tirx.Cast("float32", tirx.Cast(to.tvm, a[0]))
        if to.is_bool:
            return tirx.NE(a[0], tirx.const(0, a[0].dtype))
        return tirx.Cast("int32", a[0])
    raise TargetError(f"no TVM lowering for {op.name} in a region", op=op.name, line=op.line)


def with_indices(fn, lead, i, j, captures, q_len=None, kv_len=None):
    """``fn(*lead, i, j, *captures)`` (a score_mod / mask_mod builder) with the clamps of its
    gathers (``doc[kv_idx]`` is ``doc[max(min(kv_idx, S - 1), 0)]``) removed where the kernel's
    index is in range: ``q_len`` / ``kv_len`` where every row / key the kernel evaluates lies in
    [0, q_len) / [0, kv_len) (the blocks divide the lengths), None where not.  The builder is
    traced on two index variables bound to those ranges, each gather index simplified, and the
    kernel's own index expressions substituted.  A clamped index costs a clamp and an address a
    load (CPU: a gather, a load and an insert per lane; GPU: loads at a constant offset)."""
    if not captures or (q_len is None and kv_len is None):
        return fn(*lead, i, j, *captures)
    import tvm_ffi
    from tvm import tirx
    from tvm.ir import Expr as PrimExpr, Range, Var
    from tvm.ir.expr import TensorLoad
    from tvm.sym import Analyzer

    i_var, j_var = tirx.Var("q_idx", "int32"), tirx.Var("kv_idx", "int32")
    expr = fn(*lead, i_var, j_var, *captures)
    if not isinstance(expr, PrimExpr):
        return expr
    analyzer = Analyzer()
    if q_len is not None:
        analyzer.bind(i_var, Range(0, q_len))
    if kv_len is not None:
        analyzer.bind(j_var, Range(0, kv_len))
    expr = tvm_ffi.structural_map(
        expr, (TensorLoad, lambda ld: ld.source[tuple(analyzer.simplify(x) for x in ld.indices)]), order="post")
    return tvm_ffi.structural_map(
        expr, (Var, lambda var: i if var.same_as(i_var) else (j if var.same_as(j_var) else var)), order="post")


def region_to_numpy(region: Optional[Region], env: dict):
    """A callable evaluating the region on numpy arrays in float32 (the reference's
    interpreter in its native precision), or None; ``.op_names`` lists the region's ops."""
    if region is None:
        return None
    from attncc.reference import _Interp

    interp = _Interp(dict(env), "native")

    def run(*args):
        return interp.region(region, list(args))

    run.op_names = tuple(op.short for op in region.ops if op.name != "attn.yield")
    return run


# ---------------------------------------------------------------------------------------------
# the simple key bound

def _affine(v: Value, args: dict, env: dict):
    """v as a sympy expression in i, j (or None if not affine over those)."""
    op = v.owner
    if op is None:
        return args.get(v)
    n = op.short
    if n == "constant":
        val = eval_scalar(op.attrs["value"], env)
        if isinstance(val, bool) or isinstance(val, float) and not float(val).is_integer():
            return None
        return sympy.Integer(int(val))
    if n == "cast" and op.attrs["to"] == DType.i32:
        return _affine(op.operands[0], args, env)
    sub = [_affine(w, args, env) for w in op.operands]
    if any(s is None for s in sub):
        return None
    if n == "add":
        return sub[0] + sub[1]
    if n == "sub":
        return sub[0] - sub[1]
    if n == "neg":
        return -sub[0]
    if n == "mul" and (sub[0].is_Number or sub[1].is_Number):
        return sub[0] * sub[1]
    return None


def _split(v: Value, name: str) -> list:
    """v split at its ``name`` operations (attn.and / attn.or)."""
    out: list[Value] = []
    stack = [v]
    while stack:
        c = stack.pop()
        if c.owner is not None and c.owner.name == name:
            stack.extend(c.owner.operands)
        else:
            out.append(c)
    return out


def _conjuncts(mask: Region) -> list:
    """The mask's result split at its ``and`` operations."""
    return _split(mask.results[0], "attn.and")


def _band_offsets(sides) -> tuple:
    """(lower, upper) offsets of the band that ``_band_side`` results bound together (None:
    unbounded)."""
    lower: Optional[int] = None
    upper: Optional[int] = None
    for side, bound in sides:
        if side == "upper":
            upper = _min(upper, bound)
        else:
            lower = _max(lower, bound)
    return lower, upper


def _band_side(c: Value, mask: Region, env: dict):
    """A conjunct ``j - i REL bound`` (affine, unit coefficients) as ("lower" | "upper", bound):
    the band kv_idx - q_idx >= bound or <= bound; None for any other conjunct."""
    i, j = sympy.Symbol("i"), sympy.Symbol("j")
    args = {mask.args[2]: i, mask.args[3]: j}
    op = c.owner
    if op is None or op.short not in ("lt", "le", "gt", "ge"):
        return None
    lhs, rhs = (_affine(w, args, env) for w in op.operands)
    if lhs is None or rhs is None:
        return None
    d = sympy.expand(lhs - rhs)            # d OP 0
    cj, ci = d.coeff(j), d.coeff(i)
    const = d - cj * j - ci * i
    if cj == 0 or ci != -cj or abs(cj) != 1 or const.free_symbols:
        return None
    # normalise to (j - i) REL -const*sign
    rel = op.short
    if cj == -1:
        rel = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}[rel]
        const = -const
    bound = -int(const)        # j - i REL bound
    return {"lt": ("upper", bound - 1), "le": ("upper", bound),
            "gt": ("lower", bound + 1), "ge": ("lower", bound)}[rel]


def key_bounds(mask: Optional[Region], env: dict) -> KeyBounds:
    if mask is None:
        return KeyBounds(None, None, exact=False)
    sides = [_band_side(c, mask, env) for c in _conjuncts(mask)]
    lower, upper = _band_offsets(s for s in sides if s is not None)
    return KeyBounds(lower, upper, exact=all(s is not None for s in sides))


def row_runs(mask: Optional[Region], env: dict) -> Optional[RowRuns]:
    """The mask as ``RowRuns`` -- exactly ``ids[q_idx] == ids[kv_idx]`` (one 1-D integer
    capture, gathered at the two index arguments themselves) and band conjuncts -- or None."""
    if mask is None:
        return None
    captures = list(mask.args[4:])
    capture = None
    for c in _conjuncts(mask):
        if _band_side(c, mask, env) is not None:
            continue        # (the band: key_bounds' offsets below)
        op = c.owner
        if op is None or op.short != "eq" or capture is not None:
            return None
        gathers = [w.owner for w in op.operands]
        if any(g is None or g.short != "gather" or len(g.operands) != 2 for g in gathers):
            return None
        src = {g.operands[0] for g in gathers}
        idx = [g.operands[1] for g in gathers]
        if len(src) != 1 or set(idx) != {mask.args[2], mask.args[3]}:
            return None
        ids = src.pop()
        if ids not in captures or ids.type.rank != 1 or not ids.type.dtype.is_int:
            return None
        capture = captures.index(ids)
    if capture is None:
        return None
    bounds = key_bounds(mask, env)
    return RowRuns(capture, bounds.lower_offset, bounds.upper_offset)


def _rest_tree(v: Value, mask: Region, env: dict):
    """v as ``BandPart.rest``'s tree of affine comparisons, or None."""
    op = v.owner
    if op is None:
        return None
    n = op.short
    if n in ("and", "or"):
        kids = [_rest_tree(w, mask, env) for w in _split(v, op.name)]
        return None if any(t is None for t in kids) else (n, tuple(kids))
    if n == "not":
        t = _rest_tree(op.operands[0], mask, env)
        return None if t is None else ("not", t)
    if n not in ("lt", "le", "gt", "ge"):
        return None
    i, j = sympy.Symbol("i"), sympy.Symbol("j")
    lhs, rhs = (_affine(w, {mask.args[2]: i, mask.args[3]: j}, env) for w in op.operands)
    if lhs is None or rhs is None:
        return None
    d = sympy.expand(lhs - rhs)
    ci, cj = d.coeff(i), d.coeff(j)
    c0 = d - ci * i - cj * j
    if c0.free_symbols or not all(x.is_Integer for x in (ci, cj, c0)):
        return None
    return ("cmp", int(ci), int(cj), int(c0), n)


def band_part(mask: Optional[Region], env: dict) -> Optional[BandPart]:
    """The mask as ``BandPart`` -- an ``or`` of one band (a conjunction of ``kv_idx - q_idx``
    bounds) and affine comparisons (global keys ``kv_idx < G``, a prefix) -- or None."""
    if mask is None:
        return None
    top = mask.results[0]
    if top.owner is None or top.owner.name != "attn.or":
        return None
    band, rest = None, []
    for d in _split(top, "attn.or"):
        sides = [_band_side(c, mask, env) for c in _split(d, "attn.and")]
        if band is None and all(s is not None for s in sides):
            band = sides
            continue
        t = _rest_tree(d, mask, env)
        if t is None:
            return None
        rest.append(t)
    if band is None or not rest:
        return None
    lower, upper = _band_offsets(band)
    return BandPart(lower, upper, rest[0] if len(rest) == 1 else ("or", tuple(rest)))


def _min(a, b):
    return b if a is None else min(a, b)


def _max(a, b):
    return b if a is None else max(a, b)


# ---------------------------------------------------------------------------------------------

SUPPORTED_DTYPES = {DType.f32, DType.f16, DType.bf16}


def kernel_spec(func: Function, env: dict) -> FlashKernelSpec:
    op = find_flash(func)
    q, k, v = op.operands[:3]
    from attncc.ir.core import flash_scale_count
    n_scales = flash_scale_count(op.attrs)
    quant = op.attrs.get("quant")
    if op.attrs.get("softmax") != "online":
        raise TargetError("the flash op is not tiled: run tile-online-softmax before lowering",
                          variant=func.name, op="attn.flash")
    dt = quant["out"] if quant else q.type.dtype
    if dt not in SUPPORTED_DTYPES:
        raise DTypeError(f"dtype {dt} is not supported by the kernels yet (supported: "
                         f"{', '.join(sorted(d.value for d in SUPPORTED_DTYPES))}; fp8/int8 come with "
                         "the quantize pass)", variant=func.name, op="attn.flash")
    qs, ks, vs = (x.type.concrete(env) for x in (q, k, v))
    if qs[1] % ks[1] != 0:
        raise TargetError(f"query heads {qs[1]} are not a multiple of kv heads {ks[1]}", variant=func.name)
    scale = float(eval_scalar(op.attrs.get("scale", 1.0), env))
    mask = op.region("mask")
    score = op.region("score")
    desc = print_ir(op)
    tile_map = None
    if mask is not None and op.attrs.get("sparsity") in ("affine", "bounded"):
        from attncc.passes.prune_sparsity import analyze_mask, classify_tiles
        formula = analyze_mask(mask)
        S, T = qs[2], ks[2]

        @functools.lru_cache(maxsize=16)
        def _classified(block_q: int, block_k: int, _f=formula, _env=tuple(sorted(env.items()))):
            return classify_tiles(_f, S, T, block_q, block_k, dict(_env))

        def tile_map(block_q: int, block_k: int):
            # memoized per block shape (the default-config rule, the kernel, the tuning space and
            # the benchmarks ask for the same maps; 1.3 s for one at S=128k); a copy per caller
            return _classified(int(block_q), int(block_k)).copy()
    captures = tuple((c.hint, c.type.concrete(env), c.type.dtype.tvm) for c in op.operands[3 + n_scales:])
    scales = tuple((f"{x}_scale", s.type.concrete(env)) for x, s in zip("qkv", op.operands[3:3 + n_scales]))
    runtime_tile_map = None
    if captures and mask is not None:
        def runtime_tile_map(arrays, block_q, block_k, _mask=mask, _env=dict(env), _S=qs[2], _T=ks[2],
                             _B=qs[0], _H=qs[1]):
            return runtime_tiles(_mask, list(arrays), _S, _T, _B, _H, block_q, block_k, _env)
    return FlashKernelSpec(
        name=func.name, batch=qs[0], q_heads=qs[1], kv_heads=ks[1], q_len=qs[2], kv_len=ks[2],
        head_dim=qs[3], head_dim_v=vs[3], dtype=dt.tvm, scale=scale,
        score_mod=region_to_tir(score, env), mask_mod=region_to_tir(mask, env),
        key_bounds=key_bounds(mask, env), row_runs=row_runs(mask, env), band_part=band_part(mask, env),
        description=desc, tile_map=tile_map, captures=captures,
        runtime_tile_map=runtime_tile_map, quant_dtype=quant["dtype"].tvm if quant else None,
        quant_pv=bool(quant and quant.get("pv", False)), scales=scales,
        score_numpy=region_to_numpy(score, env), mask_numpy=region_to_numpy(mask, env))


def runtime_tiles(mask: Region, arrays: list, S: int, T: int, B: int, H: int, block_q: int, block_k: int,
                  env: dict, decide: bool = True):
    """The tile map of a data-dependent mask from the actual captured arrays: a tile is full
    or empty only if it is so for every element, batch and head.  Interval arithmetic over
    whole tiles, then over sub-boxes of the tiles it leaves undecided (tile_intervals.decide),
    settles most of them; the mask is evaluated element by element only in small sub-boxes
    that intervals cannot settle -- and on every tile (numpy, a query block at a time) with
    ``decide=False`` or where the mask has an operation without an interval rule."""
    import numpy as np

    from attncc.passes.prune_sparsity import EMPTY, FULL, PARTIAL
    from attncc.reference import _Interp
    from attncc.targets import tile_intervals

    it = _Interp(env, "float64")
    uses_bh = any(op_reads(mask, a) for a in mask.args[:2])
    nb, nh = (B, H) if uses_bh else (1, 1)
    bs = np.arange(nb).reshape(-1, 1, 1, 1, 1)
    hs = np.arange(nh).reshape(1, -1, 1, 1, 1)
    arrays = list(arrays)

    def elements(qlo, qhi, klo, khi):
        # boxes padded to the largest one by repeating their last row / key (any and all unchanged)
        i = np.minimum(qlo[:, None, None] + np.arange(int((qhi - qlo).max()) + 1)[None, :, None], qhi[:, None, None])
        j = np.minimum(klo[:, None, None] + np.arange(int((khi - klo).max()) + 1)[None, None, :], khi[:, None, None])
        keep = np.broadcast_to(it.region(mask, [bs, hs, i[None, None], j[None, None]] + arrays),
                               (nb, nh, len(qlo), i.shape[1], j.shape[2]))
        return keep.any(axis=(0, 1, 3, 4)), keep.all(axis=(0, 1, 3, 4))

    if decide:
        out = tile_intervals.decide(mask, arrays, S, T, B, H, block_q, block_k, env, elements)
        if out is not None:
            return out
    nq, nk = -(-S // block_q), -(-T // block_k)
    out = np.empty((nq, nk), dtype=np.int8)
    j = np.arange(T).reshape(1, 1, 1, -1)
    pad = nk * block_k - T
    for qb in range(nq):
        i = np.arange(qb * block_q, min((qb + 1) * block_q, S)).reshape(1, 1, -1, 1)
        keep = np.broadcast_to(it.region(mask, [bs[..., 0], hs[..., 0], i, j] + arrays),
                               (nb, nh, i.shape[2], T))
        if pad:
            keep_any = np.concatenate([keep, np.zeros(keep.shape[:3] + (pad,), bool)], axis=3)
            keep_all = np.concatenate([keep, np.ones(keep.shape[:3] + (pad,), bool)], axis=3)
        else:
            keep_any = keep_all = keep
        shape = keep.shape[:3] + (nk, block_k)
        any_ = keep_any.reshape(shape).any(axis=(0, 1, 2, 4))
        all_ = keep_all.reshape(shape).all(axis=(0, 1, 2, 4))
        out[qb] = np.where(all_, FULL, np.where(any_, PARTIAL, EMPTY))
    return out


def op_reads(region: Region, arg) -> bool:
    return any(arg in op.operands for op in region.ops)
