"""The tensor-level style: causal attention written out by hand -- scores, an
explicit index mask, a hand-written (numerically safe) softmax, and the value
matmul.  fuse-attention recognises it as attention; canonicalize first raises
the hand-written softmax to attn.softmax."""

from attncc.lang import Tensor, cast, exp, indices, inf, matmul, reduce_max, reduce_sum, sqrt, variant, where


@variant(defaults=dict(B=1, H=8, S=1024, D=64))
def masked_softmax(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    scores = matmul(q, k, transpose_b=True) / sqrt(q.shape[-1])
    b, h, i, j = indices(scores)
    scores = where(j <= i, scores, -inf)
    e = exp(scores - reduce_max(scores))
    p = cast(e / reduce_sum(e), v.dtype)      # probabilities in the value dtype, as on tensor cores
    return cast(matmul(p, v), v.dtype)
