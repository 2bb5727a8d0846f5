"""q's head dim is D, k's is E: the scores q kᵀ are undefined."""

from attncc.lang import Tensor, attention, variant


@variant(defaults=dict(B=1, H=2, S=16, D=8, E=16))
def head_dim_mismatch(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "E"], v: Tensor["B", "H", "S", "E"]):
    return attention(q, k, v)
