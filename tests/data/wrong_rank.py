"""q has rank 3: attention() needs [batch, heads, seq, head_dim]."""

from attncc.lang import Tensor, attention, variant


@variant(defaults=dict(B=1, H=2, S=16, D=8))
def wrong_rank(q: Tensor["B", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v)
