"""tile-online-softmax: the flash op's softmax over a whole row becomes a running
max / running sum over key blocks (FlashAttention's online softmax), with the
block sizes left symbolic (``BQ``, ``BK``) unless given, and the op gains a
second result: the row's log-sum-exp, so partial results can be merged
(split-KV decode, ring attention).

Per query block, for each key block j of BK keys:
    m' = max(m, rowmax(S_j));  l = l·exp(m - m') + rowsum(exp(S_j - m'))
    acc = acc·exp(m - m') + exp(S_j - m') V_j;  m = m'
and at the end out = acc / l, lse = m + log l (0 and -inf for rows with l = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from attncc.ir.core import Function, make_op
from attncc.ir.types import sym
from attncc.passes._rewrite import replace_uses
from attncc.passes.pipeline import Pass, register_pass
from attncc.errors import PassError


@register_pass
@dataclass(frozen=True)
class TileOnlineSoftmax(Pass):
    name = "tile-online-softmax"
    block_q: Optional[int] = None
    block_k: Optional[int] = None

    def apply(self, func: Function) -> Function:
        for n, v in (("block_q", self.block_q), ("block_k", self.block_k)):
            if v is not None and v <= 0:
                raise PassError(f"tile-online-softmax: {n} must be positive, got {v}")
        new_ops = []
        for op in func.ops:
            if op.name != "attn.flash" or op.attrs.get("softmax") == "online":
                new_ops.append(op)
                continue
            attrs = dict(op.attrs)
            attrs["softmax"] = "online"
            attrs["block_q"] = self.block_q if self.block_q is not None else sym("BQ")
            attrs["block_k"] = self.block_k if self.block_k is not None else sym("BK")
            attrs["lse"] = True
            tiled = make_op("attn.flash", op.operands, attrs, op.regions, line=op.line)
            new_ops.append(tiled)
            replace_uses(func.ops, op.results[0], tiled.results[0])
            if len(op.results) > 1:
                replace_uses(func.ops, op.results[1], tiled.results[1])
        func.ops = new_ops
        return func
