"""Causal grouped-query attention: 32 query heads share 8 key/value heads."""

from attncc.lang import Tensor, attention, variant


@variant(defaults=dict(B=1, Hq=32, Hkv=8, S=512, D=64))
def causal_gqa(q: Tensor["B", "Hq", "S", "D"], k: Tensor["B", "Hkv", "S", "D"], v: Tensor["B", "Hkv", "S", "D"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)
