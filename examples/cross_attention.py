"""Cross-attention: queries from one sequence (S) attend to another (T), e.g. a
decoder over encoder states.  No mask; S and T differ."""

from attncc.lang import Tensor, attention, variant


@variant(defaults=dict(B=2, H=8, S=256, T=1000, D=64))
def cross_attention(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "T", "D"], v: Tensor["B", "H", "T", "D"]):
    return attention(q, k, v)
