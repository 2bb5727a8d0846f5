"""quantize: Q·Kᵀ (and optionally P·V) in FP8 (e4m3, e5m2) or INT8 with scales.

Each flash op ``flash(q, k, v)`` becomes

    %q8, %qs = attn.quantize %q {dtype, granularity}     (host side, before the kernel)
    %k8, %ks = attn.quantize %k {dtype, granularity}
    %o, %lse = attn.flash %q8, %k8, %v, %qs, %ks {quant = {dtype, pv = false, out}}

so the kernel reads quantized q and k plus their scales (kernel inputs) and
dequantizes inside: scores = (q8 · k8ᵀ) · qs · ks · scale.  With ``pv = true``, v is
quantized too and P·V reads v8 · vs.  Scales are per tensor, per (batch, head), or
per block of ``block`` rows (stored per row).  Numbers follow ml_dtypes (round to
nearest even; INT8 is symmetric, [-127, 127]).
"""

from __future__ import annotations

from dataclasses import dataclass

from attncc.errors import PassError
from attncc.ir.core import QUANT_GRANULARITY, Function, make_op
from attncc.ir.types import DType
from attncc.passes._rewrite import replace_uses
from attncc.passes.pipeline import Pass, register_pass

_DTYPES = {"fp8": DType.f8e4m3, "fp8_e4m3": DType.f8e4m3, "f8e4m3": DType.f8e4m3, "e4m3": DType.f8e4m3,
           "fp8_e5m2": DType.f8e5m2, "f8e5m2": DType.f8e5m2, "e5m2": DType.f8e5m2,
           "int8": DType.i8, "i8": DType.i8}


@register_pass
@dataclass(frozen=True)
class Quantize(Pass):
    name = "quantize"
    dtype: str = "fp8"
    granularity: str = "head"
    block: int = 64
    pv: bool = False

    def apply(self, func: Function) -> Function:
        if self.dtype not in _DTYPES:
            raise PassError(f"quantize: unknown dtype '{self.dtype}' (use fp8, fp8_e5m2 or int8)")
        if self.granularity not in QUANT_GRANULARITY:
            raise PassError(f"quantize: granularity must be one of {', '.join(QUANT_GRANULARITY)}, "
                            f"got '{self.granularity}'")
        if self.block <= 0:
            raise PassError(f"quantize: block must be positive, got {self.block}")
        dt = _DTYPES[self.dtype]
        new_ops = []
        for op in func.ops:
            if op.name != "attn.flash" or "quant" in op.attrs:
                new_ops.append(op)
                continue
            q, k, v = op.operands[:3]
            if not q.type.dtype.is_float:
                raise PassError(f"quantize: q is {q.type.dtype}, not a float tensor", variant=func.name)
            attrs = {"dtype": dt, "granularity": self.granularity}
            if self.granularity == "block":
                attrs["block"] = self.block
            quantized = []
            for x in ([q, k, v] if self.pv else [q, k]):
                qop = make_op("attn.quantize", [x], dict(attrs), line=op.line)
                new_ops.append(qop)
                quantized.append(qop)
            scales = [qop.results[1] for qop in quantized]
            vq = quantized[2].results[0] if self.pv else v
            fattrs = dict(op.attrs)
            fattrs["quant"] = {"dtype": dt, "pv": self.pv, "out": op.results[0].type.dtype}
            flash = make_op("attn.flash", [quantized[0].results[0], quantized[1].results[0], vq] + scales
                            + list(op.operands[3:]), fattrs, op.regions, line=op.line)
            new_ops.append(flash)
            for old, new in zip(op.results, flash.results):
                replace_uses(func.ops, old, new)
        func.ops = new_ops
        return func
