"""A small, correct variant: the control case of the error tests."""

from attncc.lang import Tensor, attention, variant


@variant(defaults=dict(B=1, H=2, S=16, D=8))
def small_sdpa(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)
