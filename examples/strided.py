"""Strided (dilated) attention, as in the Sparse Transformer's strided pattern: a query
attends causally to the previous LOCAL tokens and to every STRIDE-th token before it.
prune-sparsity proves which (query block, key block) tiles are empty, full or partial;
the kernels walk only the non-empty key blocks (a block table: this mask is no band)."""

from attncc.lang import Tensor, attention, variant

LOCAL = 128
STRIDE = 256


def strided_mask(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) & ((q_idx - kv_idx < LOCAL) | (kv_idx % STRIDE == STRIDE - 1))


@variant(defaults=dict(B=1, H=8, S=2048, D=64))
def strided(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=strided_mask)
