"""Causal sliding-window attention (Mistral / Longformer local): query i sees the
WINDOW most recent keys, i - WINDOW < j <= i."""

from attncc.lang import Tensor, attention, variant

WINDOW = 256


def sliding_window_mask(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) & (q_idx - kv_idx < WINDOW)


@variant(defaults=dict(B=1, H=8, S=2048, D=64))
def sliding_window(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=sliding_window_mask)
