"""ALiBi (Press et al.): a per-head linear penalty on distance, causal.
Head h has slope 2^(-8 (h + 1) / H)."""

from attncc.lang import Tensor, attention, variant

HEADS = 8


def alibi_bias(score, b, h, q_idx, kv_idx):
    slope = 2.0 ** (-8.0 * (h + 1) / HEADS)
    return score - slope * (q_idx - kv_idx)


@variant(defaults=dict(B=1, S=1024, D=64))
def alibi(q: Tensor["B", HEADS, "S", "D"], k: Tensor["B", HEADS, "S", "D"], v: Tensor["B", HEADS, "S", "D"]):
    return attention(q, k, v, score_mod=alibi_bias, mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)
