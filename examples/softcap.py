"""Logit soft-capping (Gemma 2, Grok): scores squashed to (-CAP, CAP) with tanh, causal."""

from attncc.lang import Tensor, attention, tanh, variant

CAP = 50.0


@variant(defaults=dict(B=1, H=8, S=1024, D=64))
def softcap(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v,
                     score_mod=lambda s, b, h, q_idx, kv_idx: CAP * tanh(s / CAP),
                     mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)
