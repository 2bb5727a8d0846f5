"""Local + global attention (Longformer, BigBird's window and global parts): every query
sees a symmetric window of WINDOW keys on each side; the first GLOBAL tokens see, and are
seen by, every token.  Not a band, so the kernels iterate a block table of the non-empty
tiles that prune-sparsity proves at compile time."""

from attncc.lang import Tensor, attention, variant

WINDOW = 256
GLOBAL = 64


def local_global_mask(b, h, q_idx, kv_idx):
    local = (q_idx - kv_idx < WINDOW) & (kv_idx - q_idx < WINDOW)
    return local | (q_idx < GLOBAL) | (kv_idx < GLOBAL)


@variant(defaults=dict(B=1, H=8, S=2048, D=64))
def local_global(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=local_global_mask)
