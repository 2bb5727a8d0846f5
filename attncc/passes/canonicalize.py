"""canonicalize: fold constants, fold scales, raise hand-written softmax, CSE, DCE.

Rewrites (applied to a fixed point):
  * an elementwise op of constants          -> one constant (sympy keeps 1/sqrt(D) exact)
  * neg(neg x) -> x, not(not x) -> x, x*1 -> x, x+0 -> x, cast to the same dtype -> x
  * mul(c, x) -> mul(x, c); mul(mul(x, a), b) -> mul(x, a*b); div(x, c) -> mul(x, 1/c)
  * matmul(mul(q, c), k) -> mul(matmul(q, k), c)   (the 1/sqrt(d) scale moves onto the scores)
  * exp(x - max(x)) / sum(exp(x - max(x))) -> softmax(x)   (also exp(x) / sum(exp(x)))
  * identical pure ops are merged (CSE); unused pure ops are removed (DCE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from attncc.ir.core import Function, Op, Value, const_value, make_op
from attncc.ir.printer import format_attr
from attncc.ir.types import DType
from attncc.passes._rewrite import remove_dead, replace_uses
from attncc.passes.pipeline import Pass, register_pass

_FOLD = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "max": lambda a, b: sympy.Max(a, b) if _sym(a, b) else max(a, b),
    "min": lambda a, b: sympy.Min(a, b) if _sym(a, b) else min(a, b),
    "neg": lambda a: -a,
}


def _sym(*xs):
    return any(isinstance(x, sympy.Expr) for x in xs)


def _is_const(v: Value):
    return v.owner is not None and v.owner.name == "attn.constant"


def _num(v: Value):
    c = const_value(v)
    if isinstance(c, bool):
        return None
    return c


def _norm(x, dt: DType):
    if isinstance(x, sympy.Expr):
        # one canonical form whether the text wrote 1 or 1.0: 1.0/sqrt(D) -> 1/sqrt(D)
        x = x.xreplace({f: sympy.Integer(int(f)) for f in x.atoms(sympy.Float) if float(f).is_integer()})
        x = sympy.nsimplify(x) if x.is_Float else sympy.simplify(x)
        if x.is_Number:
            x = int(x) if x.is_Integer and not dt.is_float else float(x)
        return x
    if dt.is_float:
        return float(x)
    return int(x)


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    name = "canonicalize"
    max_iterations: int = 16

    def apply(self, func: Function) -> Function:
        for _ in range(self.max_iterations):
            changed = self._once(func)
            changed |= self._cse(func)
            remove_dead(func)
            if not changed:
                break
        return func

    # ------------------------------------------------------------------------------
    def _once(self, func: Function) -> bool:
        changed = False
        new_ops: list[Op] = []
        for op in list(func.ops):
            repl = self._rewrite(op, new_ops)
            if repl is not None:
                replace_uses(func.ops, op.results[0], repl)
                changed = True
            else:
                new_ops.append(op)
        func.ops = new_ops
        return changed

    def _const(self, value, dt: DType, new_ops: list[Op]) -> Value:
        op = make_op("attn.constant", [], {"value": _norm(value, dt), "dtype": dt})
        new_ops.append(op)
        return op.result

    def _rewrite(self, op: Op, new_ops: list[Op]):
        n = op.short
        if not op.results or op.regions:
            return None
        t = op.results[0].type
        ops = op.operands
        # constant folding (scalars only)
        if n in _FOLD and ops and all(_is_const(v) and v.type.is_scalar for v in ops):
            vals = [_num(v) for v in ops]
            if None not in vals and not any(isinstance(x, float) and math.isinf(x) for x in vals):
                return self._const(_FOLD[n](*vals), t.dtype, new_ops)
        if n == "div" and t.dtype.is_float and all(_is_const(v) for v in ops):
            a, b = _num(ops[0]), _num(ops[1])
            if a is not None and b is not None and b != 0 and not any(
                    isinstance(x, float) and math.isinf(x) for x in (a, b)):
                return self._const(sympy.sympify(a) / sympy.sympify(b) if _sym(a, b) else a / b, t.dtype, new_ops)
        if n == "cast" and ops[0].type.dtype == op.attrs["to"]:
            return ops[0]
        if n == "cast" and _is_const(ops[0]) and _num(ops[0]) is not None and t.dtype.is_float:
            return self._const(_num(ops[0]), t.dtype, new_ops)
        if n in ("neg", "not") and ops[0].owner is not None and ops[0].owner.name == op.name:
            inner = ops[0].owner.operands[0]
            if inner.type == t:
                return inner
        if n == "mul" and t.dtype.is_float:
            x, c = ops
            if _is_const(x) and not _is_const(c):
                m = make_op("attn.mul", [c, x])
                if m.result.type == t:
                    new_ops.append(m)
                    return m.result
            if _is_const(c) and _num(c) == 1 and x.type == t:
                return x
            if (_is_const(c) and c.type.is_scalar and x.owner is not None and x.owner.name == "attn.mul"
                    and _is_const(x.owner.operands[1]) and x.owner.operands[1].type.is_scalar):
                a, b = _num(x.owner.operands[1]), _num(c)
                if a is not None and b is not None and not any(
                        isinstance(z, float) and math.isinf(z) for z in (a, b)):
                    k = self._const(a * b, t.dtype, new_ops)
                    m = make_op("attn.mul", [x.owner.operands[0], k])
                    new_ops.append(m)
                    return m.result
        if n == "add" and _is_const(ops[1]) and _num(ops[1]) == 0 and ops[0].type == t:
            return ops[0]
        if n == "div" and t.dtype.is_float and _is_const(ops[1]) and ops[1].type.is_scalar and not _is_const(ops[0]):
            b = _num(ops[1])
            if b is not None and b != 0 and not (isinstance(b, float) and math.isinf(b)):
                inv = self._const(1 / sympy.sympify(b) if isinstance(b, sympy.Expr) else 1.0 / b, t.dtype, new_ops)
                m = make_op("attn.mul", [ops[0], inv])
                new_ops.append(m)
                return m.result
        if n == "matmul":
            a, b = ops
            if (a.owner is not None and a.owner.name == "attn.mul" and _is_const(a.owner.operands[1])
                    and a.owner.operands[1].type.is_scalar and a.owner.operands[1].type.dtype.is_float):
                mm = make_op("attn.matmul", [a.owner.operands[0], b], dict(op.attrs))
                c = a.owner.operands[1]
                if c.type.dtype != mm.result.type.dtype:
                    return None
                new_ops.append(mm)
                m = make_op("attn.mul", [mm.result, c])
                new_ops.append(m)
                return m.result
        if n == "div":
            return self._raise_softmax(op, new_ops)
        return None

    def _raise_softmax(self, op: Op, new_ops: list[Op]):
        e, r = op.operands
        if r.owner is None or r.owner.name != "attn.reduce" or r.owner.attrs.get("kind") != "sum":
            return None
        if r.owner.operands[0] is not e or e.owner is None or e.owner.name != "attn.exp":
            return None
        axis = r.owner.attrs.get("axis", -1) % e.type.rank
        x = e.owner.operands[0]
        if x.owner is not None and x.owner.name == "attn.sub":
            base, m = x.owner.operands
            if (m.owner is not None and m.owner.name == "attn.reduce" and m.owner.attrs.get("kind") == "max"
                    and m.owner.operands[0] is base and m.owner.attrs.get("axis", -1) % base.type.rank == axis):
                x = base
        if x.type != op.results[0].type:
            return None
        sm = make_op("attn.softmax", [x], {"axis": axis - x.type.rank})
        new_ops.append(sm)
        return sm.result

    def _cse(self, func: Function) -> bool:
        seen: dict = {}
        changed = False
        keep = []
        for op in func.ops:
            if op.regions or not op.results or op.name in ("attn.return",):
                keep.append(op)
                continue
            key = (op.name, tuple(id(v) for v in op.operands), format_attr(op.attrs),
                   tuple(str(r.type) for r in op.results))
            if key in seen:
                for a, b in zip(op.results, seen[key].results):
                    replace_uses(func.ops, a, b)
                changed = True
                continue
            seen[key] = op
            keep.append(op)
        func.ops = keep
        return changed
