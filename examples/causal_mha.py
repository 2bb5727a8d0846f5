"""Causal multi-head attention: query i sees keys 0..i."""

from attncc.lang import Tensor, attention, variant


def causal(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx


@variant(defaults=dict(B=1, H=8, S=1024, D=64))
def causal_mha(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=causal)
