"""Plain scaled dot-product attention (multi-head, no mask)."""

from attncc.lang import Tensor, attention, variant


@variant(defaults=dict(B=1, H=8, S=1024, D=64))
def sdpa(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v)
