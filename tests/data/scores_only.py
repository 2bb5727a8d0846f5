"""Not attention: returns the raw scores q kᵀ (no softmax, no value matmul)."""

from attncc.lang import Tensor, matmul, variant


@variant(defaults=dict(B=1, H=2, S=16, D=8))
def scores_only(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"]):
    return matmul(q, k, transpose_b=True)
