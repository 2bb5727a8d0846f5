"""Block-sparse attention with a user-given block layout (BigBird's random blocks, or any
pattern): ``layout`` is a runtime input [NB, NB] with one entry per BLOCK x BLOCK block of
(query, key) pairs; a query sees the keys of the blocks its row of the layout marks > 0.
The layout's block size need not be the kernel's: the targets classify their own tiles per
call from the actual layout (empty, full or partial, like FlexAttention's BlockMask) and skip
the empty ones."""

from attncc.lang import Tensor, attention, variant

BLOCK = 64
NB = 64                 # layout rows and columns: sequences up to NB * BLOCK = 4096 tokens


@variant(defaults=dict(B=1, H=8, S=2048, D=64))
def block_sparse(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"],
                 layout: Tensor[NB, NB, "i32"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: layout[q_idx // BLOCK, kv_idx // BLOCK] > 0)
