"""Small helpers shared by passes: use replacement, dead-code removal, cloning."""

from __future__ import annotations

from attncc.ir.core import OPS, Function, Op, Value


def replace_uses(ops: list[Op], old: Value, new: Value) -> None:
    for op in ops:
        op.operands = [new if v is old else v for v in op.operands]


def remove_dead(func: Function) -> Function:
    """Drop pure ops whose results nobody uses (repeatedly, bottom up)."""
    used: set = set()
    keep: list[Op] = []
    for op in reversed(func.ops):
        if OPS[op.name].pure and op.results and not any(r in used for r in op.results):
            continue
        keep.append(op)
        used.update(op.operands)
    func.ops = list(reversed(keep))
    return func


def users(func: Function, v: Value) -> list[Op]:
    return [op for op in func.ops if any(x is v for x in op.operands)]
