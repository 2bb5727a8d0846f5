"""A variant file with a Python syntax error on line 7."""

from attncc.lang import Tensor, attention, variant


@variant(defaults=dict(B=1, H=2, S=16, D=8))
def broken(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]) -> None
    return attention(q, k, v)
