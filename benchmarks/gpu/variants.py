"""The attention variants of the GPU benchmark (issue 3): bf16, D=128, H=16.

Each is an ordinary attncc variant; build.py compiles them for the CUDA target at the
benchmark shapes, attention.py times them beside torch SDPA (cuDNN, FlashAttention-2)
and FlexAttention with the same semantics.
"""

from attncc.lang import Tensor, attention, tanh, variant

HEADS = 16
WINDOW = 1024
SOFTCAP = 50.0


@variant(defaults=dict(B=4, H=HEADS, S=4096, D=128))
def full(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v)


@variant(defaults=dict(B=4, H=HEADS, S=4096, D=128))
def causal(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)


@variant(defaults=dict(B=4, H=HEADS, S=4096, D=128))
def sliding_window(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) & (q_idx - kv_idx < WINDOW))


def _alibi(score, b, h, q_idx, kv_idx):
    return score - 2.0 ** (-8.0 * (h + 1) / HEADS) * (q_idx - kv_idx)


@variant(defaults=dict(B=4, S=4096, D=128))
def alibi(q: Tensor["B", HEADS, "S", "D"], k: Tensor["B", HEADS, "S", "D"], v: Tensor["B", HEADS, "S", "D"]):
    return attention(q, k, v, score_mod=_alibi, mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)


@variant(defaults=dict(B=4, H=HEADS, S=4096, D=128))
def softcap(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, score_mod=lambda s, b, h, q_idx, kv_idx: SOFTCAP * tanh(s / SOFTCAP),
                     mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)


@variant(defaults=dict(B=4, Hq=32, Hkv=8, S=4096, D=128))
def gqa(q: Tensor["B", "Hq", "S", "D"], k: Tensor["B", "Hkv", "S", "D"], v: Tensor["B", "Hkv", "S", "D"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)
