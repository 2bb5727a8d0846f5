"""The textual form of the IR (MLIR-like).  ``parse(print(x))`` rebuilds ``x`` and
``print(parse(text)) == text`` for any text this printer wrote."""

from __future__ import annotations

import math

import sympy

from attncc.ir.core import Function, Module, Op, Region, Value
from attncc.ir.types import DType, dim_str


def format_attr(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, DType):
        return v.value
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, sympy.Expr):
        if v.is_Integer:
            return str(int(v))
        if v.is_Symbol:
            return v.name
        return "(" + dim_str(v) + ")"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {format_attr(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot print attribute {v!r}")


class _Names:
    def __init__(self):
        self.names: dict[Value, str] = {}
        self.counter = 0

    def define(self, v: Value, hint: str | None = None) -> str:
        name = hint if hint else str(self.counter)
        if not hint:
            self.counter += 1
        self.names[v] = name
        return "%" + name

    def use(self, v: Value) -> str:
        try:
            return "%" + self.names[v]
        except KeyError:
            return "%<undefined>"


def _print_ops(ops: list[Op], names: _Names, indent: str, out: list[str]):
    for op in ops:
        line = indent
        if op.results:
            line += ", ".join(names.define(r) for r in op.results) + " = "
        line += op.name
        if op.operands:
            line += " " + ", ".join(names.use(v) for v in op.operands)
        if op.attrs:
            line += " " + format_attr(op.attrs)
        if op.results:
            line += " : " + ", ".join(str(r.type) for r in op.results)
        if op.regions:
            out.append(line)
            for r in op.regions:
                out.extend(_print_region(r, indent + "  "))
            continue
        out.append(line)


def _print_region(r: Region, indent: str) -> list[str]:
    names = _Names()
    head = indent + r.name + "(" + ", ".join(
        f"{names.define(a, a.hint)}: {a.type}" for a in r.args) + ") {"
    out = [head]
    _print_ops(r.ops, names, indent + "  ", out)
    out.append(indent + "}")
    return out


def print_function(f: Function) -> str:
    names = _Names()
    args = ", ".join(f"{names.define(a, a.hint)}: {a.type}" for a in f.args)
    res = ", ".join(str(t) for t in f.result_types)
    head = f"attn.func @{f.name}({args}) -> ({res})"
    if f.attrs:
        head += " attributes " + format_attr(f.attrs)
    out = [head + " {"]
    _print_ops(f.ops, names, "  ", out)
    out.append("}")
    return "\n".join(out) + "\n"


def print_op(op: Op) -> str:
    """One op alone (operands named by their hints or '?'), for messages."""
    names = _Names()
    for v in op.operands:
        names.names[v] = v.hint or "?"
    out: list[str] = []
    _print_ops([op], names, "", out)
    return "\n".join(out)


def print_ir(x) -> str:
    if isinstance(x, Module):
        return "\n".join(print_function(f) for f in x.functions)
    if isinstance(x, Function):
        return print_function(x)
    if isinstance(x, Op):
        return print_op(x)
    raise TypeError(f"cannot print {type(x).__name__}")
