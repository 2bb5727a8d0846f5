"""Not one fusable attention: the softmax probabilities are returned as well."""

from attncc.lang import Tensor, matmul, softmax, variant


@variant(defaults=dict(B=1, H=2, S=16, D=8))
def probs_returned(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    p = softmax(matmul(q, k, transpose_b=True) * 0.125)
    return matmul(p, v), p
