"""Packed sequences (document masking): several documents share one batch row; a
query attends causally, and only to keys of its own document.  The document ids
are a runtime input, so tiles are classified per call from the actual ids (like
FlexAttention's BlockMask); the causal part is still proven at compile time."""

from attncc.lang import Tensor, attention, variant


@variant(defaults=dict(B=1, H=8, S=2048, D=64))
def document_mask(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"],
                  doc: Tensor["S", "i32"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (doc[q_idx] == doc[kv_idx]) & (kv_idx <= q_idx))
