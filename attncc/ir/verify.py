"""The verifier: SSA order, types re-inferred, terminators, closed scalar regions."""

from __future__ import annotations

from attncc.errors import AttnccError, VerifyError
from attncc.ir.core import OPS, Function, Module, Op, Region, infer_types

_REGION_FORBIDDEN = {"attn.matmul", "attn.softmax", "attn.reduce", "attn.flash", "attn.iota", "attn.return",
                     "attn.quantize", "attn.dequantize"}


def _check_block(ops: list[Op], defined: set, terminator: str, where: str, in_region: bool):
    if not ops or ops[-1].name != terminator:
        raise VerifyError(f"{where} must end with {terminator}")
    for op in ops:
        for v in op.operands:
            if v not in defined:
                raise VerifyError(f"{where}: operand of {op.name} is not defined before it "
                                  f"(or comes from outside the region)", op=op.name, line=op.line)
        if op is not ops[-1] and OPS[op.name].terminator:
            raise VerifyError(f"{where}: terminator {op.name} in the middle of a block", op=op.name, line=op.line)
        if in_region and op.name in _REGION_FORBIDDEN:
            raise VerifyError(f"{where}: {op.name} is not allowed in a scalar region", op=op.name, line=op.line)
        try:
            types = infer_types(op.name, op.operands, op.attrs, op.regions, op.line)
        except AttnccError:
            raise
        got = [r.type for r in op.results]
        if got != types:
            raise VerifyError(f"{where}: result types ({', '.join(map(str, got))}) differ from inferred "
                              f"({', '.join(map(str, types))})", op=op.name, line=op.line)
        if in_region:
            for r in op.results:
                if not r.type.is_scalar:
                    raise VerifyError(f"{where}: region values must be scalars, got {r.type}", op=op.name,
                                      line=op.line)
        for r in op.regions:
            _check_region(r, f"{where}: region '{r.name}' of {op.name}")
        defined.update(op.results)


def _check_region(r: Region, where: str):
    n_scalar = 5 if r.name == "score" else 4
    for a in r.args[:n_scalar]:
        if not a.type.is_scalar:
            raise VerifyError(f"{where}: the index/score arguments of a region must be scalars")
    _check_block(r.ops, set(r.args), "attn.yield", where, True)


def verify(x) -> None:
    """Raise VerifyError (or ShapeError/DTypeError) if ``x`` is malformed."""
    if isinstance(x, Module):
        names = set()
        for f in x.functions:
            if f.name in names:
                raise VerifyError(f"function @{f.name} defined twice")
            names.add(f.name)
            verify(f)
        return
    f: Function = x
    names = [a.hint for a in f.args]
    if len(set(names)) != len(names):
        raise VerifyError(f"@{f.name}: argument names repeat: {names}")
    _check_block(f.ops, set(f.args), "attn.return", f"@{f.name}", False)
