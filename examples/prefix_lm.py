"""Prefix-LM (T5 / UL2 / PaliGemma): the first PREFIX tokens attend to each other
bidirectionally; the rest is causal."""

from attncc.lang import Tensor, attention, variant

PREFIX = 128


def prefix_lm_mask(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) | (kv_idx < PREFIX)


@variant(defaults=dict(B=1, H=8, S=1024, D=64))
def prefix_lm(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=prefix_lm_mask)
