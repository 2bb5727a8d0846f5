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


# ---- decode (issue 3): a few query tokens against a long KV cache, GQA 32/8, split-KV kernel.
# Query i of q_len sits at position T - S + i of the cache; the masks below say so explicitly
# (attncc's index space is top-left aligned: a plain `kv_idx <= q_idx` would keep only the
# first keys).  DECODE_KEYS is the cache length the windowed variants are written for.
DECODE_KEYS = 4096
DECODE_WINDOW = 1000


@variant(defaults=dict(B=16, Hq=32, Hkv=8, S=1, T=4096, D=128))
def decode(q: Tensor["B", "Hq", "S", "D"], k: Tensor["B", "Hkv", "T", "D"], v: Tensor["B", "Hkv", "T", "D"]):
    return attention(q, k, v)


@variant(defaults=dict(B=2, Hq=32, Hkv=8, S=4, T=DECODE_KEYS, D=128))
def decode_window(q: Tensor["B", "Hq", "S", "D"], k: Tensor["B", "Hkv", "T", "D"], v: Tensor["B", "Hkv", "T", "D"]):
    # query i at position DECODE_KEYS - S + i (S = 4): causal within the cache, last DECODE_WINDOW keys
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx:
                     (kv_idx <= q_idx + (DECODE_KEYS - 4))
                     & (kv_idx > q_idx + (DECODE_KEYS - 4) - DECODE_WINDOW))


@variant(defaults=dict(B=2, Hq=32, Hkv=8, S=1, T=4096, D=128))
def decode_alibi(q: Tensor["B", "Hq", "S", "D"], k: Tensor["B", "Hkv", "T", "D"], v: Tensor["B", "Hkv", "T", "D"]):
    # ALiBi slopes per query head (the head mapping of the packed GQA rows matters here)
    return attention(q, k, v, score_mod=lambda s, b, h, q_idx, kv_idx:
                     s - 2.0 ** (-8.0 * (h + 1) / 32) * (DECODE_KEYS - 1 + q_idx - kv_idx))


@variant(defaults=dict(B=2, Hq=32, Hkv=8, S=2, T=4096, D=128))
def decode_softcap_strided(q: Tensor["B", "Hq", "S", "D"], k: Tensor["B", "Hkv", "T", "D"],
                           v: Tensor["B", "Hkv", "T", "D"]):
    # score_mod plus a mask that is no band (element mask on every tile)
    return attention(q, k, v, score_mod=lambda s, b, h, q_idx, kv_idx: SOFTCAP * tanh(s / SOFTCAP),
                     mask_mod=lambda b, h, q_idx, kv_idx: ((kv_idx + q_idx + h) % 3) != 0)


@variant(defaults=dict(B=2, Hq=8, Hkv=2, S=3, T=600, D=64))
def decode_causal_topleft(q: Tensor["B", "Hq", "S", "D"], k: Tensor["B", "Hkv", "T", "D"],
                          v: Tensor["B", "Hkv", "T", "D"]):
    # the IR's plain causal mask: query i keeps keys 0..i (a 3-key range; the rest is skipped)
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)


@variant(defaults=dict(B=2, Hq=8, Hkv=2, S=2, T=700, D=64))
def decode_empty_rows(q: Tensor["B", "Hq", "S", "D"], k: Tensor["B", "Hkv", "T", "D"], v: Tensor["B", "Hkv", "T", "D"]):
    # query 0 keeps no key (out 0, lse -inf); query 1 keeps the keys of even heads
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (q_idx * (1 - h % 2)) > 0)


# ---- sparsity (issue 4): time against the density of non-empty tiles, beside FlexAttention's
# BlockMask of the same mask.  Sliding windows are bands (the key loop's bounds); document ids
# are a runtime input (the host computes the tile map per call, the kernel walks its list).
@variant(defaults=dict(B=1, H=HEADS, S=16384, D=128))
def sw_256(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) & (q_idx - kv_idx < 256))


@variant(defaults=dict(B=1, H=HEADS, S=16384, D=128))
def sw_512(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) & (q_idx - kv_idx < 512))


@variant(defaults=dict(B=1, H=HEADS, S=16384, D=128))
def sw_2048(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) & (q_idx - kv_idx < 2048))


@variant(defaults=dict(B=1, H=HEADS, S=16384, D=128))
def sw_1024(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) & (q_idx - kv_idx < 1024))


@variant(defaults=dict(B=1, H=HEADS, S=16384, D=128))
def sw_4096(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) & (q_idx - kv_idx < 4096))


@variant(defaults=dict(B=1, H=HEADS, S=16384, D=128))
def doc_mask(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"],
             doc: Tensor["S", "i32"]):
    # packed documents, bidirectional inside each (as benchmarks/sparsity.py on CPU)
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: doc[q_idx] == doc[kv_idx])


@variant(defaults=dict(B=1, H=HEADS, S=16384, D=128))
def doc_causal(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"],
               doc: Tensor["S", "i32"]):
    # packed documents, causal inside each (examples/document_mask.py at D=128)
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (doc[q_idx] == doc[kv_idx]) & (kv_idx <= q_idx))


@variant(defaults=dict(B=1, H=4, S=333, T=517, D=128))
def band_offset(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "T", "D"], v: Tensor["B", "H", "T", "D"]):
    # a window of 300 keys ending 184 keys past the query (chunked prefill's bottom-right causal at
    # these lengths): both band sides and a key length that is no multiple of the key block
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx + 184)
                     & (q_idx + 184 - kv_idx < 300))


@variant(defaults=dict(B=1, H=4, S=1100, D=128))
def late_keys(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    # queries below 600 keep no key (out 0, lse -inf): whole query blocks without key blocks
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: kv_idx + 600 <= q_idx)


@variant(defaults=dict(B=1, H=HEADS, S=16384, D=128))
def chunk_512(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    # chunked causal (Llama 4's local layers) with 512-token chunks: a compile-time tile map
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (q_idx // 512 == kv_idx // 512) & (kv_idx <= q_idx))


@variant(defaults=dict(B=1, H=HEADS, S=16384, D=128))
def chunk_2048(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (q_idx // 2048 == kv_idx // 2048) & (kv_idx <= q_idx))


@variant(defaults=dict(B=1, H=HEADS, S=16384, D=128))
def prefix_2048(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    # prefix-LM (examples/prefix_lm.py) with a 2048-token prefix: a compile-time tile map
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) | (kv_idx < 2048))


@variant(defaults=dict(B=1, H=HEADS, S=16384, D=128))
def local_global(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    # Longformer-style: a causal window of 1024 keys plus the first 128 tokens as global keys
    return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: ((kv_idx <= q_idx) & (q_idx - kv_idx < 1024))
                     | (kv_idx < 128))
