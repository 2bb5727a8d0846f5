"""Chunked (block-local) attention, as in Llama 4's local layers: the sequence is cut
into chunks of CHUNK tokens and a query attends causally within its own chunk."""

from attncc.lang import Tensor, attention, variant

CHUNK = 256


def chunked_causal(b, h, q_idx, kv_idx):
    return (q_idx // CHUNK == kv_idx // CHUNK) & (kv_idx <= q_idx)


@variant(defaults=dict(B=1, H=8, S=2048, D=64))
def chunked(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=chunked_causal)
