"""What a target is given to build: the fused attention op with concrete shapes.

The lowering from the IR's ``attn.flash`` op to this spec lives in
``attncc/targets/lowering.py``; targets only see this dataclass, never the
Python that wrote the variant.

Layouts (row-major, contiguous):
    q   [batch, q_heads,  q_len,  head_dim]
    k   [batch, kv_heads, kv_len, head_dim]
    v   [batch, kv_heads, kv_len, head_dim_v]
    out [batch, q_heads,  q_len,  head_dim_v]   (dtype = spec.dtype)
    lse [batch, q_heads,  q_len]                (float32, natural log; -inf on fully-masked rows)

Query head ``h`` reads kv head ``h // (q_heads // kv_heads)`` (GQA/MQA by head mapping).

Semantics, per (b, h, i):
    s_j   = score_mod(scale * dot(q[b,h,i], k[b,h',j]), b, h, i, j)    (score_mod None: identity)
    keep_j = mask_mod(b, h, i, j)                                      (mask_mod None: all true)
    p_j   = exp(s_j - max_{keep} s) over kept j, 0 elsewhere
    out   = sum_j p_j v[b,h',j] / sum_j p_j ;  lse = max + log(sum p)
    a row with no kept key: out = 0, lse = -inf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

# score_mod(score: PrimExpr[float32], b, h, q_idx, kv_idx: PrimExpr[int32]) -> PrimExpr[float32]
ScoreFn = Callable[..., object]
# mask_mod(b, h, q_idx, kv_idx: PrimExpr[int32]) -> PrimExpr[bool]
MaskFn = Callable[..., object]


@dataclass(frozen=True)
class KeyBounds:
    """A sound bound on the kept keys of query row i: lower(i) <= j <= upper(i).

    ``lower = i + lower_offset`` (None: 0) and ``upper = i + upper_offset``
    (None: kv_len - 1).  Keys outside the bound are masked for every b, h;
    keys inside may still be masked by mask_mod.  Targets use it to skip
    whole key blocks and to drop the element mask on blocks wholly inside
    ``[lower, upper]`` when ``exact`` is True (the mask is exactly the band).
    """

    lower_offset: Optional[int] = None
    upper_offset: Optional[int] = None
    exact: bool = False


@dataclass(frozen=True)
class BandPart:
    """The mask is ``band | rest``: the band ``lower(i) <= j <= upper(i)`` (offsets j - i, None:
    unbounded) or'ed with ``rest``, a tree of affine comparisons in i = q_idx and j = kv_idx --
    ``("cmp", ci, cj, c0, rel)`` for ``ci i + cj j + c0 REL 0`` (rel lt/le/gt/ge), ``("and" | "or",
    (t, ...))``, ``("not", t)`` -- such as global keys (``kv_idx < G``) or a prefix.  On a tile
    where ``rest`` is false everywhere the band alone decides, so a kernel masks that partial
    tile with the band's compares instead of evaluating the whole mask a score
    (``rest_false``)."""

    lower_offset: Optional[int]
    upper_offset: Optional[int]
    rest: tuple


def _affine_range(ci, cj, c0, i0, i1, j0, j1):
    """(min, max) of ci i + cj j + c0 over the box [i0, i1] x [j0, j1] (expressions or ints)."""
    lo, hi = c0, c0
    for c, a, b in ((ci, i0, i1), (cj, j0, j1)):
        if c > 0:
            lo, hi = lo + c * a, hi + c * b
        elif c < 0:
            lo, hi = lo + c * b, hi + c * a
    return lo, hi


def rest_holds(tree, value: bool, i0, i1, j0, j1, and_=lambda a, b: a and b, or_=lambda a, b: a or b):
    """A condition on the box [i0, i1] x [j0, j1] under which ``tree`` (``BandPart.rest``) is
    ``value`` at every point (sufficient, from the affine forms' ranges): Python bools for ints,
    or the kernel's expressions with ``and_`` / ``or_`` from its IR."""
    kind = tree[0]
    if kind == "not":
        return rest_holds(tree[1], not value, i0, i1, j0, j1, and_, or_)
    if kind in ("and", "or"):
        parts = [rest_holds(t, value, i0, i1, j0, j1, and_, or_) for t in tree[1]]
        every = (kind == "and") == value          # and-true / or-false: every part; else any
        out = parts[0]
        for p in parts[1:]:
            out = and_(out, p) if every else or_(out, p)
        return out
    _, ci, cj, c0, rel = tree
    lo, hi = _affine_range(ci, cj, c0, i0, i1, j0, j1)
    if value:
        return {"lt": hi < 0, "le": hi <= 0, "gt": lo > 0, "ge": lo >= 0}[rel]
    return {"lt": lo >= 0, "le": lo > 0, "gt": hi <= 0, "ge": hi < 0}[rel]


@dataclass(frozen=True)
class RowRuns:
    """The mask is exactly ``ids[q_idx] == ids[kv_idx]`` and the band ``lower(i) <= j <= upper(i)``
    (``KeyBounds``' offsets, None: unbounded) for every b, h, with ``ids`` the 1-D integer capture
    number ``capture`` (gathers clamp their index into the array, as everywhere).  Where each id's
    keys are one contiguous run -- packed documents -- row i keeps exactly one interval of keys,
    which a host step computes per call (``attncc.runtime._layouts.row_limits``) so that a kernel
    masks a partial tile with two compares a score instead of reading ids."""

    capture: int
    lower_offset: Optional[int] = None
    upper_offset: Optional[int] = None


@dataclass(frozen=True)
class FlashKernelSpec:
    name: str
    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    head_dim_v: int
    dtype: str                       # "float32" | "float16" | "bfloat16"
    scale: float
    score_mod: Optional[ScoreFn] = None
    mask_mod: Optional[MaskFn] = None
    key_bounds: KeyBounds = field(default_factory=KeyBounds)
    # free-form text describing score/mask, for printing and cache keys
    description: str = ""
    # tile_map(block_q, block_k) -> int8 array [ceil(q_len/block_q), ceil(kv_len/block_k)] of
    # 0 empty / 1 partial / 2 full (prune-sparsity's proof); None: not analysed
    tile_map: Optional[Callable[[int, int], object]] = None
    # captured inputs read by score/mask (e.g. document ids): (name, shape, dtype) each.  The
    # kernel takes them after (q, k, v, out, lse); score_mod/mask_mod take one TVM Buffer per
    # capture after their index arguments.
    captures: tuple = ()
    # runtime_tile_map([capture arrays], block_q, block_k) -> tile map from the actual data
    # (evaluates the mask on every element, like FlexAttention's create_block_mask)
    runtime_tile_map: Optional[Callable[..., object]] = None
    # quantization (the quantize pass): q and k (and v when quant_pv) arrive in quant_dtype
    # ("int8", "float8_e4m3fn", "float8_e5m2") with f32 scales, kernel inputs after the block
    # table and before the captures: (name, shape) each, shape [B or 1, H or 1, rows or 1, 1].
    # ``dtype`` stays the output's (and v's unless quant_pv) dtype.
    quant_dtype: Optional[str] = None
    quant_pv: bool = False
    scales: tuple = ()
    # numpy twins of score_mod / mask_mod for targets that evaluate the regions on host
    # arrays (the systolic simulator's vector unit): score_numpy(s, b, h, i, j, *captures)
    # with float32 s and int64 index arrays that broadcast; mask_numpy(b, h, i, j, *captures)
    # -> bool.  Each has ``op_names``: the region's ops, in order (for counting their cost).
    score_numpy: Optional[Callable[..., object]] = None
    mask_numpy: Optional[Callable[..., object]] = None
    # the mask is a document mask (and a band), which per call may be one key interval a row
    row_runs: Optional[RowRuns] = None
    # the mask is a band or'ed with affine comparisons (global keys, a prefix)
    band_part: Optional[BandPart] = None

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads


def numpy_dtype(name: str):
    """The numpy dtype of a kernel dtype name (bf16 and fp8 through ml_dtypes)."""
    import numpy as np

    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def input_numpy_dtypes(spec: FlashKernelSpec, base: Optional[str] = None) -> tuple:
    """numpy dtypes of q, k, v as a kernel takes them: quantized inputs keep their 8-bit type
    (v only with quant_pv); the rest are ``base`` (default: the spec's dtype)."""
    b = numpy_dtype(base or spec.dtype)
    if spec.quant_dtype is None:
        return b, b, b
    qd = numpy_dtype(spec.quant_dtype)
    return qd, qd, (qd if spec.quant_pv else b)
