"""A correct variant with no default dimension values: --shape must give them all."""

from attncc.lang import Tensor, attention, variant


@variant
def no_defaults(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
    return attention(q, k, v)
