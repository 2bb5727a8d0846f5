"""CPU (LLVM) backend: one fused flash-attention kernel per spec.

The kernel is handwritten TensorIR (TVMScript with explicit loops), generated
from a :class:`~attncc.targets.spec.FlashKernelSpec` and a :class:`CpuConfig`;
``score_mod``/``mask_mod`` are called on TIR expressions while the kernel is
generated, so their arithmetic is inlined (and vectorised) in the inner loops.
It reads top to bottom as four stages:

1. ``pack_q``  -- only for float16/bfloat16: q -> float32 (float32 q is read in
   place; rows of a ragged last query block are clamped, computed twice and
   stored once);
2. ``pack_k``  -- ``scale * k`` (times log2 e without a score_mod) -> float32,
   transposed per key block to ``[key_block, head_dim, block_k]`` so that the
   Q·Kᵀ inner loop loads whole vectors of keys; padded keys are zero.  Whole key
   blocks are transposed as vector_width x vector_width tiles in registers
   (shuffles); the ragged last block, a head_dim that is no multiple of the vector
   width and FP8 keys take an element loop;
3. ``pack_v``  -- only for float16/bfloat16 or a ``head_dim_v`` that is not a
   multiple of the register tile: v -> float32, padded (float32 v is read in
   place; keys of a ragged last block are clamped, their probability is 0);
4. ``attend``  -- parallel over (batch, q_head, query block), query blocks in
   zigzag order so that the runtime's static split balances causal work.
   Each task keeps the running max ``m``, lane-wise running sums ``l`` and the
   accumulator ``acc[block_q, head_dim_v]`` private and walks only the key
   blocks that ``spec.key_bounds`` allows, with online softmax in base 2:

       S   = Qblk · Kblkᵀ            register tile micro_rows x (micro_vectors*vector_width), FMA over head_dim
       S   = score_mod(S)·log2 e, mask   the element mask only on partial tiles
       m'  = max(m, rowmax S);  P = 2^(S - m');  l = l·2^(m - m') + rowsum P
       acc = acc·2^(m - m') + P·Vblk register tile micro_rows x (micro_vectors*vector_width), FMA over keys

   and writes ``out = acc / l`` and ``lse = m·ln 2 + log l``; a row with no
   kept key (m = -inf) gets out = 0, lse = -inf.

A tile is *full* when it lies wholly inside the key bounds, has no padded keys
and the bounds are the whole mask (``exact`` or no mask_mod): full tiles skip
the mask arithmetic, and partial tiles of an exact band test only the band.
Gathers from captured inputs (``doc[kv_idx]``) lose their range clamp where the
index is provably in range, so they load whole vectors.  GQA/MQA reads kv head ``h // group``; nothing is copied
per query head.  Everything is computed in float32; the output is cast to the
input dtype on the final store.

``exp2`` is a polynomial written in TIR (LLVM's ``llvm.exp`` on vectors becomes
scalar libm calls).  Knobs: see :class:`CpuConfig`.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from attncc.errors import ConfigError, DTypeError, TargetError
from attncc.targets import lowering as _lowering
from attncc.targets.spec import FlashKernelSpec
from attncc.targets.spec import input_numpy_dtypes as _input_dtypes, numpy_dtype as _np_dtype

__all__ = [
    "CpuConfig",
    "default_config",
    "validate_config",
    "host_target",
    "lower",
    "build",
    "run",
    "measure",
]

NAME = "cpu"

# TVM's thread pool counts physical cores: on a machine whose 2 vCPUs are one core's two
# hyperthreads it runs the parallel loop on ONE thread (seen here: 136 vs 270 GFLOP/s).
# Use every CPU this process may run on, unless the user set TVM_NUM_THREADS.
try:
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
except AttributeError:  # pragma: no cover - not Linux
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

_SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class CpuConfig:
    """The tunable knobs of the CPU kernel (frozen and hashable: keys build caches).

    block_q        query rows per parallel task (a multiple of ``micro_rows``)
    block_k        keys per inner block (a multiple of ``micro_vectors * vector_width``)
    vector_width   float32 lanes per SIMD vector (4: SSE, 8: AVX2, 16: AVX-512)
    micro_rows     rows of the register tile of both matmuls
    micro_vectors  vectors per row of the register tile (keys for Q·Kᵀ, head_dim_v for P·V)
    """

    block_q: int = 64
    block_k: int = 64
    vector_width: int = 16
    micro_rows: int = 4
    micro_vectors: int = 4


# --------------------------------------------------------------------------- host


@lru_cache(maxsize=None)
def host_target():
    """The LLVM target of this machine: ``{"kind": "llvm", "mcpu": <host cpu>}``.

    Falls back to a generic x86-64 target (SSE2) if the host CPU name is unknown to
    this LLVM, and to plain ``llvm`` on non-x86 hosts.
    """
    import tvm
    from tvm.target import codegen

    try:
        cpu = codegen.llvm_get_system_cpu()
        triple = codegen.llvm_get_system_triple()
        if cpu and cpu != "generic" and codegen.llvm_is_valid_cpu(cpu, triple):
            return tvm.target.Target({"kind": "llvm", "mcpu": cpu})
    except Exception:  # pragma: no cover - depends on the host
        pass
    import platform

    if platform.machine() in ("x86_64", "AMD64"):
        return tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})
    return tvm.target.Target("llvm")  # pragma: no cover


@lru_cache(maxsize=None)
def host_vector_width() -> int:
    """float32 lanes of the host's widest SIMD register (4, 8 or 16)."""
    from tvm.target import codegen

    try:
        bits = int(codegen.llvm_get_vector_width(host_target()))
    except Exception:  # pragma: no cover
        bits = 128
    return max(4, min(16, bits // 32))


# --------------------------------------------------------------------------- configs


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def default_config(spec: FlashKernelSpec) -> CpuConfig:
    """A good config for ``spec`` on this host without tuning."""
    vw = host_vector_width()
    # Register budget: micro_rows * micro_vectors accumulators + micro_vectors operands
    # must fit in the register file (32 zmm with AVX-512, 16 ymm/xmm otherwise).
    if vw >= 16:
        rows, vecs = 4, 4
    else:
        rows, vecs = 4, 2
    tile = vw * vecs
    # 128 keys per block measured best on AVX-512 (D=64): S and the K/V blocks stay in L1/L2.
    block_k = min(max(128 // tile, 1) * tile, _round_up(spec.kv_len, tile))
    block_q = 64
    if spec.q_len < block_q:
        block_q = _round_up(max(spec.q_len, 1), rows)
    return CpuConfig(block_q=block_q, block_k=block_k, vector_width=vw,
                     micro_rows=rows, micro_vectors=vecs)


def validate_config(spec: FlashKernelSpec, config: CpuConfig) -> None:
    """Raise :class:`ConfigError` with the reason if ``config`` cannot build ``spec``."""
    c = config

    def bad(msg):
        raise ConfigError(f"cpu config {c}: {msg}", variant=spec.name or None)

    for name in ("block_q", "block_k", "vector_width", "micro_rows", "micro_vectors"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            bad(f"{name} must be a positive integer, got {value!r}")
    if c.vector_width not in (4, 8, 16):
        bad(f"vector_width must be 4, 8 or 16 float32 lanes, got {c.vector_width}")
    if c.micro_rows * c.micro_vectors > 32:
        bad(f"register tile micro_rows*micro_vectors = {c.micro_rows * c.micro_vectors} "
            "exceeds 32 vector registers")
    if c.block_q % c.micro_rows:
        bad(f"block_q ({c.block_q}) must be a multiple of micro_rows ({c.micro_rows})")
    tile = c.micro_vectors * c.vector_width
    if c.block_k % tile:
        bad(f"block_k ({c.block_k}) must be a multiple of micro_vectors*vector_width ({tile})")
    if c.block_q > 1024 or c.block_k > 1024:
        bad("block_q and block_k must be at most 1024")


def _validate_spec(spec: FlashKernelSpec) -> None:
    if spec.dtype not in _SUPPORTED_DTYPES:
        raise DTypeError(f"cpu target: dtype {spec.dtype!r} is not supported "
                         f"(supported: {', '.join(_SUPPORTED_DTYPES)})",
                         variant=spec.name or None)
    for name in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim", "head_dim_v"):
        value = getattr(spec, name)
        if not isinstance(value, int) or value <= 0:
            raise TargetError(f"cpu target: {name} must be a positive integer, got {value!r}",
                              variant=spec.name or None)
    if spec.q_heads % spec.kv_heads:
        raise TargetError(f"cpu target: q_heads ({spec.q_heads}) must be a multiple of "
                          f"kv_heads ({spec.kv_heads})", variant=spec.name or None)


# --------------------------------------------------------------------------- TIR helpers

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
# 2^x below 2^-64 is flushed to exactly 0: such a weight cannot change a float32 row sum
# that contains the row maximum's weight 1, and keeping it would feed denormal products
# into P·V (x86 denormal arithmetic is ~100x slower: seen here, 270 -> 150 GFLOP/s with
# scores spanning a few hundred).
_EXP2_LO = -64.0
# near-minimax (relative error 2e-9) coefficients of 2^t on [-1/2, 1/2], t^1 .. t^6
_EXP2_COEFFS = (0.6931472028551, 0.2402264791362, 0.05550332471027, 0.009618437358294,
                0.001339887444548, 0.0001535336181616)


def _fast_exp2(x, exact_zero: bool = False):
    """2**x for a float32 PrimExpr (scalar or vector) as plain arithmetic that vectorises.

    n = floor(x + 1/2), t = x - n in [-1/2, 1/2), 2^t by a degree-6 polynomial
    (relative error ~1e-7 in float32), times 2^n built from the exponent bits.
    x < -64 (and -inf) gives exactly 0 (see _EXP2_LO; ``exact_zero`` is kept for
    callers that ask for it explicitly).  Arguments are <= 0 in the kernel (scores
    minus their running max), so there is no upper clamp.
    """
    from tvm import tirx

    f32 = "float32"
    lanes = _lanes(_dtype_of(x))

    def c(v):
        return tirx.const(v, f32)

    xc = tirx.max(x, c(_EXP2_LO))
    # floor(x + 1/2), not nearbyint: LLVM 22 splits a 512-bit llvm.nearbyint into halves
    n = tirx.floor(xc + c(0.5))
    t = xc - n
    y = c(_EXP2_COEFFS[-1])
    for coef in reversed(_EXP2_COEFFS[:-1]):
        y = y * t + c(coef)
    y = y * t + c(1.0)
    idtype = "int32" if lanes == 1 else f"int32x{lanes}"
    bits = tirx.shift_left(tirx.Cast(idtype, n) + tirx.const(127, "int32"),
                           tirx.const(23, "int32"))
    result = y * tirx.reinterpret(f32 if lanes == 1 else f"float32x{lanes}", bits)
    return tirx.Select(x < c(_EXP2_LO), c(0.0), result)


def _fp8_to_f32(x, fmt: str):
    """Exact FP8 -> float32 by bit manipulation.  TVM 0.27's LLVM lowering of
    Cast(float32, float8_*) is wrong for zero and subnormals (0 -> 2^-7 in e4m3, seen
    here on 2026-11-22), so the decode is written out."""
    from tvm import tirx

    u = tirx.Cast("int32", tirx.reinterpret("uint8", x))
    eb, mb, bias = (4, 3, 7) if fmt == "float8_e4m3fn" else (5, 2, 15)
    s = tirx.shift_right(u, 7)
    e = tirx.bitwise_and(tirx.shift_right(u, mb), (1 << eb) - 1)
    m = tirx.bitwise_and(u, (1 << mb) - 1)
    normal = tirx.reinterpret("float32", tirx.bitwise_or(tirx.bitwise_or(
        tirx.shift_left(s, 31), tirx.shift_left(e + (127 - bias), 23)), tirx.shift_left(m, 23 - mb)))
    sub = tirx.Cast("float32", m) * tirx.const(2.0 ** (1 - bias - mb), "float32")
    val = tirx.Select(e == 0, tirx.Select(s == 1, -sub, sub), normal)
    nan = tirx.const(float("nan"), "float32")
    if fmt == "float8_e4m3fn":           # no infinities; S.1111.111 is NaN
        return tirx.Select(tirx.And(e == 15, m == 7), nan, val)
    inf = tirx.Select(s == 1, tirx.const(float("-inf"), "float32"), tirx.const(float("inf"), "float32"))
    return tirx.Select(e == 31, tirx.Select(m == 0, inf, nan), val)


def _dtype_of(expr) -> str:
    """dtype text of a PrimExpr ("float32", "boolx16"); TVM 0.27 keeps it in ``expr.ty``."""
    ty = getattr(expr, "ty", None)
    if ty is not None and hasattr(ty, "dtype"):
        return str(ty.dtype)
    return str(expr.dtype)


def _lanes(dtype) -> int:
    text = str(dtype)
    return int(text.split("x")[-1]) if "x" in text else 1


def _scalar_dtype(dtype) -> str:
    return str(dtype).split("x")[0]


def _as_bool(expr):
    from tvm import tirx
    from tvm.ir import Expr as PrimExpr

    if isinstance(expr, (bool, np.bool_)):
        return tirx.const(bool(expr), "bool")
    if isinstance(expr, PrimExpr) and not _dtype_of(expr).startswith("bool"):
        return tirx.NE(expr, tirx.const(0, _scalar_dtype(_dtype_of(expr))))
    return expr


def _as_f32(expr):
    from tvm import tirx

    if isinstance(expr, (int, float, np.floating, np.integer)):
        return tirx.const(float(expr), "float32")
    if _scalar_dtype(_dtype_of(expr)) != "float32":
        lanes = _lanes(_dtype_of(expr))
        return tirx.Cast("float32" if lanes == 1 else f"float32x{lanes}", expr)
    return expr


# --------------------------------------------------------------------------- lowering


def lower(spec: FlashKernelSpec, config: CpuConfig):
    """The kernel as a ``tvm.IRModule`` whose ``main`` takes ``(q, k, v, out, lse)``."""
    import tvm
    from tvm import tirx
    from tvm.script import tirx as T

    _validate_spec(spec)
    validate_config(spec, config)

    B, H, KVH = spec.batch, spec.q_heads, spec.kv_heads
    S, TK, D, DV = spec.q_len, spec.kv_len, spec.head_dim, spec.head_dim_v
    G = spec.group
    dtype = spec.dtype
    scale = float(spec.scale)

    BQ, BK = config.block_q, config.block_k
    VW, RQ, MV = config.vector_width, config.micro_rows, config.micro_vectors
    TILE = VW * MV
    NQB = (S + BQ - 1) // BQ
    NKB = (TK + BK - 1) // BK
    SP, TP = NQB * BQ, NKB * BK
    DVP = _round_up(DV, TILE)
    BQT, BKT, DVT = BQ // RQ, BK // TILE, DVP // TILE
    NKV = BK // VW            # vectors per key block row
    DV_VEC = DV % VW == 0

    kb_lower = spec.key_bounds.lower_offset
    kb_upper = spec.key_bounds.upper_offset
    if kb_upper is not None and kb_upper >= TK - 1:
        kb_upper = None  # i + upper >= kv_len - 1 for every row: no bound
    if kb_lower is not None and kb_lower <= -(S - 1):
        kb_lower = None
    # The element mask is needed on a tile unless the tile is wholly inside the band
    # and the band is the whole mask (or there is no mask_mod).
    band_is_mask = spec.mask_mod is None or spec.key_bounds.exact
    score_mod = spec.score_mod
    mask_mod = spec.mask_mod

    f32 = "float32"
    NEG_INF = tirx.const(float("-inf"), f32)

    # ---- Python helpers evaluated by the TVMScript parser (they build PrimExprs)
    def with_indices(fn, lead, i, j):
        """``fn(*lead, i, j, *captures)``, its gathers unclamped where rows (keys) are in range:
        unless the last query (key) block is ragged (``lowering.with_indices``)."""
        return _lowering.with_indices(fn, lead, i, j, CAPTURE_BUFFERS, S if SP == S else None,
                                      TK if TP == TK else None)

    def modded(s, b, h, i, j):
        # Scores are kept in log2 units (softmax by exp2).  Without a score_mod the
        # factor log2(e) is folded into the scale of the packed keys.
        if score_mod is None:
            return s
        return _as_f32(with_indices(score_mod, (s, b, h), i, j)) * tirx.const(_LOG2E, f32)

    def keep(b, h, i, j):
        conds = []
        if TP != TK:
            conds.append(j < TK)
        if kb_lower is not None:
            conds.append(j >= i + kb_lower)
        if kb_upper is not None:
            conds.append(j <= i + kb_upper)
        if mask_mod is not None and not band_is_mask:
            # (an exact band is the whole mask: the two comparisons above are it)
            conds.append(_as_bool(with_indices(mask_mod, (b, h), i, j)))
        if not conds:
            return tirx.const(True, "bool")
        out = conds[0]
        for cnd in conds[1:]:
            out = tirx.And(out, cnd)
        return out

    def masked_score(s, b, h, i, j):
        return tirx.Select(keep(b, h, i, j), modded(s, b, h, i, j), NEG_INF)

    def block_range(q0):
        """[kb_lo, kb_hi) key blocks that may hold kept keys of rows q0 .. q0+BQ-1."""
        q_last = tirx.min(q0 + (BQ - 1), S - 1)
        if kb_lower is None:
            lo = tirx.const(0, "int32")
        else:
            lo = tirx.max(q0 + kb_lower, 0) // BK
        if kb_upper is None:
            hi = tirx.const(NKB, "int32")
        else:
            hi = tirx.max(tirx.min(q_last + kb_upper, TK - 1) // BK + 1, lo)
        return lo, hi

    def tile_is_full(q0, kb):
        """True when no element of tile (q0 block, kb) needs the element mask."""
        if not band_is_mask:
            return tirx.const(False, "bool")
        q_last = tirx.min(q0 + (BQ - 1), S - 1)
        j0 = kb * BK
        conds = []
        if TP != TK:
            conds.append(j0 + BK <= TK)
        if kb_lower is not None:
            conds.append(j0 >= q_last + kb_lower)
        if kb_upper is not None:
            conds.append(j0 + (BK - 1) <= q0 + kb_upper)
        if not conds:
            return tirx.const(True, "bool")
        out = conds[0]
        for cnd in conds[1:]:
            out = tirx.And(out, cnd)
        return out

    # Captured inputs (document ids, ...) are extra kernel parameters after the outputs
    # (and the block table); the score/mask expressions load from them.
    CAPTURE_BUFFERS = [tirx.decl_buffer(tuple(shape), cdt, name) for name, shape, cdt in spec.captures]
    # (their parameters are added after parsing, so the well-formedness check runs after that)

    # Table mode: masks that are not one band (prefix-LM, global tokens, runtime block
    # masks) iterate a per-query-block list of the non-empty key blocks, with a flag
    # saying which are full (no element mask).  Bands use the closed-form range.
    USE_TABLE = use_block_table(spec)

    def tile_live(tile_map, qb, kb):
        # a Python True is decided while parsing: no branch in the band/dense kernels
        return tirx.NE(tile_map[qb, kb], 0) if USE_TABLE else True

    def block_is_full(tile_map, qb, q0, kb):
        if USE_TABLE:
            full_ok = tirx.EQ(tile_map[qb, kb], 2)
            return tirx.And(full_ok, kb * BK + BK <= TK) if TP != TK else full_ok
        return tile_is_full(q0, kb)

    def zigzag(r):
        # Interleave cheap and expensive query blocks (causal) so that the runtime's
        # contiguous static split of the parallel loop balances.
        return tirx.Select(r % 2 == 0, r // 2, NQB - 1 - r // 2)

    def fexp2(x, exact_zero=False):
        return _fast_exp2(x, exact_zero)

    def to_out(x):
        return x if dtype == f32 else tirx.Cast(dtype, x)

    def to_f32(x):
        src = _scalar_dtype(_dtype_of(x))
        if src.startswith("float8"):
            return _fp8_to_f32(x, src)
        return x if src == f32 else tirx.Cast(f32, x)

    # quantized inputs: q, k (and v) in QDT/KDT/VDT with f32 scales, dequantized while packing
    QDT = spec.quant_dtype or dtype
    KDT = spec.quant_dtype or dtype
    VDT = spec.quant_dtype if spec.quant_pv else dtype
    SCALE_BUFFERS = [tirx.decl_buffer(tuple(shape), f32, name) for name, shape in spec.scales]

    def dequant(which, b, h, row):
        """The scale of q (0), k (1) or v (2) at (b, h, row); 1 when not quantized."""
        if which >= len(SCALE_BUFFERS):
            return tirx.const(1.0, f32)
        buf = SCALE_BUFFERS[which]
        shp = [int(x) for x in buf.shape]
        idx = (b if shp[0] > 1 else 0, h if shp[1] > 1 else 0, row if shp[2] > 1 else 0, 0)
        return buf[idx]

    HAS_SCORE_MOD = score_mod is not None
    k_scale = scale if HAS_SCORE_MOD else scale * _LOG2E
    PACK_Q = QDT != f32
    PACK_V = VDT != f32 or DVP != DV

    # pack_k of whole key blocks as VW x VW tiles transposed in registers: VW row loads
    # (head_dim contiguous), log2(VW) rounds of two-vector shuffles, VW column stores
    # (keys contiguous).  Element by element the transposition costs a load and an
    # insert per float and was most of the kernel's fixed cost at low tile density.
    PACK_K_SHUFFLE = D % VW == 0 and not KDT.startswith("float8")

    def pack_k_by_tiles(bkb):
        # a Python bool is decided while parsing; only a ragged last key block needs a branch
        if not PACK_K_SHUFFLE or TP == TK:
            return PACK_K_SHUFFLE
        return bkb % NKB < NKB - 1

    def pack_k_tile(k, kp, b, hk, kb, j0, d0):
        """Emit kp[b, hk, kb, d0 + c, j0 + r] = k_scale * k[b, hk, kb*BK + j0 + r, d0 + c]
        for r, c < VW (called while the TVMScript is parsed: it adds statements)."""
        rows = []
        for r in range(VW):
            key = kb * BK + j0 + r
            row = k[b, hk, key, tirx.Ramp(d0, 1, VW)]
            if KDT == "bfloat16":
                # bits << 16 (exact); TVM 0.27's vector Cast from bfloat16 gave wrong values here
                row = tirx.reinterpret(f"float32x{VW}", tirx.shift_left(
                    tirx.Cast(f"uint32x{VW}", tirx.reinterpret(f"uint16x{VW}", row)),
                    tirx.Broadcast(tirx.const(16, "uint32"), VW)))
            elif KDT != f32:
                row = tirx.Cast(f"float32x{VW}", row)
            rows.append(T.bind(row * tirx.Broadcast(dequant(1, b, hk, key) * tirx.const(k_scale, f32), VW)))
        half = VW // 2
        while half >= 1:
            # swap the off-diagonal half x half blocks of every 2*half x 2*half block
            lo_idx = [c if not c & half else VW + c - half for c in range(VW)]
            hi_idx = [c + half if not c & half else VW + c for c in range(VW)]
            nxt = list(rows)
            for r in range(VW):
                if not r & half:
                    pair = [rows[r], rows[r + half]]
                    nxt[r] = T.bind(tirx.Shuffle(pair, lo_idx))
                    nxt[r + half] = T.bind(tirx.Shuffle(pair, hi_idx))
            rows = nxt
            half //= 2
        for c in range(VW):
            T.buffer_store(kp, rows[c], [b, hk, kb, d0 + c, tirx.Ramp(j0, 1, VW)])

    def qrow(r):
        # rows of the ragged last query block are clamped (computed twice, stored once)
        return r if SP == S else tirx.min(r, S - 1)

    def vrow(j):
        # keys of the ragged last key block are clamped (their probability is 0)
        return j if TP == TK else tirx.min(j, TK - 1)

    try:
        @T.macro
        def kernel_body(q, k, v, out, lse, tile_map):
            # ---- pack_q: only to convert float16/bfloat16 (float32 q is read in place)
            if PACK_Q:
                qp = T.alloc_buffer((B, H, S, D), "float32")
                for bhi in T.parallel(B * H * NQB):
                    for i in T.serial(T.min(BQ, S - bhi % NQB * BQ)):
                        for d in T.serial(D):
                            qp[bhi // NQB // H, bhi // NQB % H, bhi % NQB * BQ + i, d] = to_f32(
                                q[bhi // NQB // H, bhi // NQB % H, bhi % NQB * BQ + i, d]) * dequant(
                                0, bhi // NQB // H, bhi // NQB % H, bhi % NQB * BQ + i)
            else:
                qp = q
            # ---- pack_k: scale * k, transposed per key block, padded keys zero
            kp = T.alloc_buffer((B, KVH, NKB, D, BK), "float32")
            for bkb in T.parallel(B * KVH * NKB):
                if pack_k_by_tiles(bkb):
                    # whole key blocks: VW x VW tiles transposed in registers
                    for jb in T.serial(NKV):
                        for db in T.serial(D // VW):
                            pack_k_tile(k, kp, bkb // NKB // KVH, bkb // NKB % KVH, bkb % NKB, jb * VW, db * VW)
                else:
                    for d in T.serial(D):
                        for jv in T.serial(NKV):
                            for lane in T.vectorized(VW):
                                kp[bkb // NKB // KVH, bkb // NKB % KVH, bkb % NKB, d, jv * VW + lane] = T.if_then_else(
                                    bkb % NKB * BK + jv * VW + lane < TK,
                                    to_f32(k[bkb // NKB // KVH, bkb // NKB % KVH,
                                             T.min(bkb % NKB * BK + jv * VW + lane, TK - 1), d]) * (dequant(
                                        1, bkb // NKB // KVH, bkb // NKB % KVH,
                                        T.min(bkb % NKB * BK + jv * VW + lane, TK - 1)) * T.float32(k_scale)),
                                    T.float32(0))
            # ---- pack_v: only to convert the dtype or pad head_dim_v (ragged keys are
            # clamped in place: their probabilities are exactly 0)
            if PACK_V:
                vp = T.alloc_buffer((B, KVH, TK, DVP), "float32")
                for bkb in T.parallel(B * KVH * NKB):
                    for j in T.serial(T.min(BK, TK - bkb % NKB * BK)):
                        for d in T.serial(DVP):
                            vp[bkb // NKB // KVH, bkb // NKB % KVH, bkb % NKB * BK + j, d] = T.if_then_else(
                                d < DV,
                                to_f32(v[bkb // NKB // KVH, bkb // NKB % KVH, bkb % NKB * BK + j,
                                         T.min(d, DV - 1)]) * dequant(
                                    2, bkb // NKB // KVH, bkb // NKB % KVH, bkb % NKB * BK + j),
                                T.float32(0))
            else:
                vp = v
            # ---- attend
            for task in T.parallel(B * H * NQB):
                acc = T.alloc_buffer((BQ, DVP), "float32", scope="local")
                sc = T.alloc_buffer((BQ, BK), "float32", scope="local")
                m = T.alloc_buffer((BQ,), "float32", scope="local")
                l = T.alloc_buffer((BQ,), "float32", scope="local")
                lvec = T.alloc_buffer((BQ, VW), "float32", scope="local")
                mnew = T.alloc_buffer((BQ,), "float32", scope="local")
                msafe = T.alloc_buffer((BQ,), "float32", scope="local")
                alpha = T.alloc_buffer((BQ,), "float32", scope="local")
                red = T.alloc_buffer((VW,), "float32", scope="local")
                st = T.alloc_buffer((4,), "float32", scope="local")
                creg = T.alloc_buffer((RQ, MV, VW), "float32", scope="local")
                b = task // (H * NQB)
                h = task // NQB % H
                qb = zigzag(task % NQB)
                hk = h // G
                q0 = qb * BQ
                for i in T.serial(BQ):
                    m[i] = NEG_INF
                    for lane in T.vectorized(VW):
                        lvec[i, lane] = T.float32(0)
                    for d in T.vectorized(DVP):
                        acc[i, d] = T.float32(0)
                kb_lo, kb_hi = block_range(q0)
                for kb in T.serial(kb_lo, kb_hi):
                    if tile_live(tile_map, qb, kb):
                        # S = Q Kᵀ, register tile RQ x (MV*VW), FMA over head_dim
                        for it in T.serial(BQT):
                            for jt in T.serial(BKT):
                                for ii in T.unroll(RQ):
                                    for mv in T.unroll(MV):
                                        for lane in T.vectorized(VW):
                                            creg[ii, mv, lane] = T.float32(0)
                                for d in T.serial(D):
                                    for ii in T.unroll(RQ):
                                        for mv in T.unroll(MV):
                                            for lane in T.vectorized(VW):
                                                creg[ii, mv, lane] = creg[ii, mv, lane] + qp[
                                                    b, h, qrow(q0 + it * RQ + ii), d] * kp[
                                                    b, hk, kb, d, jt * TILE + mv * VW + lane]
                                for ii in T.unroll(RQ):
                                    for mv in T.unroll(MV):
                                        for lane in T.vectorized(VW):
                                            sc[it * RQ + ii, jt * TILE + mv * VW + lane] = creg[ii, mv, lane]
                        # score_mod + mask, online softmax.
                        # (a) per row: scores -> lane-wise max -> tree reduction -> new running max
                        full = block_is_full(tile_map, qb, q0, kb)
                        for i in T.serial(BQ):
                            for lane in T.vectorized(VW):
                                red[lane] = NEG_INF
                            if full:
                                for jv in T.serial(NKV):
                                    for lane in T.vectorized(VW):
                                        if HAS_SCORE_MOD:
                                            sc[i, jv * VW + lane] = modded(
                                                sc[i, jv * VW + lane], b, h, q0 + i, kb * BK + jv * VW + lane)
                                        red[lane] = T.max(red[lane], sc[i, jv * VW + lane])
                            else:
                                for jv in T.serial(NKV):
                                    for lane in T.vectorized(VW):
                                        sc[i, jv * VW + lane] = masked_score(
                                            sc[i, jv * VW + lane], b, h, q0 + i, kb * BK + jv * VW + lane)
                                        red[lane] = T.max(red[lane], sc[i, jv * VW + lane])
                            if VW >= 16:
                                for lane in T.vectorized(8):
                                    red[lane] = T.max(red[lane], red[lane + 8])
                            if VW >= 8:
                                for lane in T.vectorized(4):
                                    red[lane] = T.max(red[lane], red[lane + 4])
                            for lane in T.vectorized(2):
                                red[lane] = T.max(red[lane], red[lane + 2])
                            red[0] = T.max(red[0], red[1])
                            mnew[i] = T.max(m[i], red[0])
                        # (b) vectorised over rows: rescale factor and the finite stand-in for the max
                        for i in T.vectorized(BQ):
                            msafe[i] = T.Select(mnew[i] == NEG_INF, T.float32(0), mnew[i])
                            alpha[i] = fexp2(m[i] - msafe[i])
                            m[i] = mnew[i]
                        # (c) per row: P = exp2(S - max), lane-wise running sums; masked keys
                        # (partial tiles) get exactly 0
                        for i in T.serial(BQ):
                            for lane in T.vectorized(VW):
                                red[lane] = lvec[i, lane] * alpha[i]
                            if full:
                                for jv in T.serial(NKV):
                                    for lane in T.vectorized(VW):
                                        sc[i, jv * VW + lane] = fexp2(sc[i, jv * VW + lane] - msafe[i])
                                        red[lane] = red[lane] + sc[i, jv * VW + lane]
                            else:
                                for jv in T.serial(NKV):
                                    for lane in T.vectorized(VW):
                                        sc[i, jv * VW + lane] = fexp2(sc[i, jv * VW + lane] - msafe[i], True)
                                        red[lane] = red[lane] + sc[i, jv * VW + lane]
                            for lane in T.vectorized(VW):
                                lvec[i, lane] = red[lane]
                        # acc = acc * alpha + P V, register tile RQ x (MV*VW), FMA over keys
                        for it in T.serial(BQT):
                            for dt in T.serial(DVT):
                                for ii in T.unroll(RQ):
                                    for mv in T.unroll(MV):
                                        for lane in T.vectorized(VW):
                                            creg[ii, mv, lane] = acc[it * RQ + ii, dt * TILE + mv * VW + lane] * alpha[it * RQ + ii]
                                for j in T.serial(BK):
                                    for ii in T.unroll(RQ):
                                        for mv in T.unroll(MV):
                                            for lane in T.vectorized(VW):
                                                creg[ii, mv, lane] = creg[ii, mv, lane] + sc[
                                                    it * RQ + ii, j] * vp[b, hk, vrow(kb * BK + j), dt * TILE + mv * VW + lane]
                                for ii in T.unroll(RQ):
                                    for mv in T.unroll(MV):
                                        for lane in T.vectorized(VW):
                                            acc[it * RQ + ii, dt * TILE + mv * VW + lane] = creg[ii, mv, lane]
                # ---- epilogue: out = acc / l, lse = m ln 2 + log l
                for i in T.serial(BQ):
                    for lane in T.vectorized(VW):
                        red[lane] = lvec[i, lane]
                    if VW >= 16:
                        for lane in T.vectorized(8):
                            red[lane] = red[lane] + red[lane + 8]
                    if VW >= 8:
                        for lane in T.vectorized(4):
                            red[lane] = red[lane] + red[lane + 4]
                    for lane in T.vectorized(2):
                        red[lane] = red[lane] + red[lane + 2]
                    red[0] = red[0] + red[1]
                    l[i] = red[0]
                    if q0 + i < S:
                        # a row with no kept key (m = -inf): out = 0, lse = -inf
                        st[2] = T.Select(m[i] == NEG_INF, T.float32(0), T.float32(1) / l[i])
                        lse[b, h, q0 + i] = T.Select(m[i] == NEG_INF, NEG_INF,
                                                     m[i] * T.float32(_LN2) + T.log(l[i]))
                        if DV_VEC:
                            for dv in T.serial(DV // VW):
                                for lane in T.vectorized(VW):
                                    out[b, h, q0 + i, dv * VW + lane] = to_out(acc[i, dv * VW + lane] * st[2])
                        else:
                            for d in T.serial(DV):
                                out[b, h, q0 + i, d] = to_out(acc[i, d] * st[2])


        if USE_TABLE:
            @T.prim_func(check_well_formed=False)
            def main(q: T.Buffer((B, H, S, D), QDT), k: T.Buffer((B, KVH, TK, D), KDT),
                     v: T.Buffer((B, KVH, TK, DV), VDT), out: T.Buffer((B, H, S, DV), dtype),
                     lse: T.Buffer((B, H, S), "float32"), tile_map: T.Buffer((NQB, NKB), "int32")):
                T.func_attr({"global_symbol": "main", "tirx.noalias": True})
                kernel_body(q, k, v, out, lse, tile_map)
        else:
            @T.prim_func(check_well_formed=False)
            def main(q: T.Buffer((B, H, S, D), QDT), k: T.Buffer((B, KVH, TK, D), KDT),
                     v: T.Buffer((B, KVH, TK, DV), VDT), out: T.Buffer((B, H, S, DV), dtype),
                     lse: T.Buffer((B, H, S), "float32")):
                T.func_attr({"global_symbol": "main", "tirx.noalias": True})
                kernel_body(q, k, v, out, lse, None)

    except Exception as exc:  # e.g. a score_mod/mask_mod that does not build a PrimExpr
        raise TargetError(f"cpu target: cannot generate the kernel ({(spec.description or 'flash').splitlines()[0]}):"
                          f" {_last_line(exc)}", variant=spec.name or None) from exc
    if SCALE_BUFFERS or CAPTURE_BUFFERS:
        # in TVM 0.27 a buffer is itself a (buffer-typed) Var and can be a parameter
        main = tirx.PrimFunc(list(main.params) + SCALE_BUFFERS + CAPTURE_BUFFERS, main.body, main.ret_type,
                             main.attrs)
    try:
        tvm.tirx.analysis.verify_well_formed(main)
    except Exception as exc:  # pragma: no cover - a bug in this lowering
        raise TargetError(f"cpu target: generated TIR is ill-formed: {_last_line(exc)}") from exc
    return tvm.IRModule({"main": main})


def use_block_table(spec: FlashKernelSpec) -> bool:
    """True when the kernel iterates a block table (the mask is not a plain band)."""
    if spec.mask_mod is None or spec.key_bounds.exact:
        return False
    return spec.tile_map is not None or spec.runtime_tile_map is not None


def block_tables(spec: FlashKernelSpec, config: CpuConfig, tiles=None):
    """The kernel's block-table argument: the tile map [NQB, NKB] as int32 (0 empty: the
    key block is skipped, 1 partial: element mask, 2 full: no mask)."""
    if tiles is None:
        tiles = spec.tile_map(config.block_q, config.block_k)
    return (np.ascontiguousarray(np.asarray(tiles, dtype=np.int32)),)


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


# --------------------------------------------------------------------------- build / run


@dataclass
class CpuKernel:
    """A built kernel: the TVM executable plus what ``run`` needs to allocate outputs."""

    spec: FlashKernelSpec
    config: CpuConfig
    executable: object
    compile_seconds: float
    # block tables (kv_count, kv_index, kv_full) for a mask known at compile time
    tables: Optional[tuple] = None

    def extra_args(self, extra=(), tiles=None) -> list:
        """Block-table arguments (table mode), then the scales (quantized kernels), then the
        captured inputs; ``extra`` is scales + captures.  With runtime captures the tile
        map is computed from them (once per distinct data)."""
        import tvm

        spec = self.spec
        wanted = [(n, sh, "float32") for n, sh in spec.scales] + list(spec.captures)
        if len(extra) != len(wanted):
            raise TargetError(f"kernel takes {len(wanted)} input(s) after q, k, v "
                              f"({', '.join(c[0] for c in wanted) or 'none'}), got {len(extra)}",
                              variant=spec.name or None)
        scale_arrays, arrays = [], []
        for i, ((name, shape, cdt), arr) in enumerate(zip(wanted, extra)):
            a = np.ascontiguousarray(np.asarray(arr).astype(_np_dtype(cdt), copy=False))
            if a.shape != tuple(shape):
                from attncc.errors import ShapeError
                raise ShapeError(f"input {name} has shape {a.shape}, kernel expects {tuple(shape)}",
                                 variant=spec.name or None)
            (scale_arrays if i < len(spec.scales) else arrays).append(a)
        out = []
        if use_block_table(spec):
            if tiles is None and spec.runtime_tile_map is not None:
                # one block map per distinct captured data (like reusing a BlockMask)
                key = tuple(a.tobytes() for a in arrays)
                cache = self.__dict__.setdefault("_table_cache", {})
                if key not in cache:
                    if len(cache) >= 8:
                        cache.pop(next(iter(cache)))
                    t = spec.runtime_tile_map(arrays, self.config.block_q, self.config.block_k)
                    cache[key] = [tvm.runtime.tensor(np.ascontiguousarray(x))
                                  for x in block_tables(spec, self.config, t)]
                out += cache[key]
            else:
                tables = block_tables(spec, self.config, tiles) if tiles is not None else self.tables
                out += [tvm.runtime.tensor(np.ascontiguousarray(t)) for t in tables]
        elif tiles is not None:
            raise TargetError("this kernel takes no block table", variant=spec.name or None)
        return out + [tvm.runtime.tensor(a) for a in scale_arrays + arrays]

    @property
    def mod(self):
        return self.executable.mod

    def __call__(self, *args):
        return self.executable["main"](*args)


def build(spec: FlashKernelSpec, config: Optional[CpuConfig] = None, **options) -> CpuKernel:
    """Compile the kernel for the host CPU."""
    import tvm

    if options:
        raise TargetError(f"cpu target takes no option(s) {', '.join(sorted(options))} "
                          "(--arch is for GPU targets)", variant=spec.name or None)

    if config is None:
        config = default_config(spec)
    t0 = time.perf_counter()
    mod = lower(spec, config)
    try:
        executable = tvm.compile(mod, target=host_target())
    except Exception as exc:  # a TVM traceback never reaches a user
        raise TargetError(f"cpu target: TVM failed to build the kernel with {config}: "
                          f"{_last_line(exc)}",
                          variant=spec.name or None) from exc
    tables = block_tables(spec, config) if use_block_table(spec) and spec.tile_map is not None else None
    return CpuKernel(spec, config, executable, time.perf_counter() - t0, tables)




def _shapes(spec: FlashKernelSpec):
    B, H, KVH = spec.batch, spec.q_heads, spec.kv_heads
    return ((B, H, spec.q_len, spec.head_dim), (B, KVH, spec.kv_len, spec.head_dim),
            (B, KVH, spec.kv_len, spec.head_dim_v), (B, H, spec.q_len, spec.head_dim_v),
            (B, H, spec.q_len))


def run(built: CpuKernel, q, k, v, *extra, tiles=None):
    """Run ``built`` on numpy arrays; returns ``(out, lse)`` as numpy arrays."""
    import tvm

    spec = built.spec
    dt = _np_dtype(spec.dtype)
    q_shape, k_shape, v_shape, out_shape, lse_shape = _shapes(spec)
    args = []
    for name, arr, shape, adt in (("q", q, q_shape, _input_dtypes(spec)[0]), ("k", k, k_shape, _input_dtypes(spec)[1]),
                                  ("v", v, v_shape, _input_dtypes(spec)[2])):
        arr = np.ascontiguousarray(np.asarray(arr).astype(adt, copy=False))
        if arr.shape != shape:
            from attncc.errors import ShapeError

            raise ShapeError(f"cpu target: {name} has shape {arr.shape}, kernel expects {shape}",
                             variant=spec.name or None)
        args.append(tvm.runtime.tensor(arr))
    out = tvm.runtime.tensor(np.empty(out_shape, dtype=dt))
    lse = tvm.runtime.tensor(np.empty(lse_shape, dtype=np.float32))
    built(*args, out, lse, *built.extra_args(extra, tiles))
    return out.numpy(), lse.numpy()


def measure(built: CpuKernel, spec: Optional[FlashKernelSpec] = None, repeat: int = 10,
            warmup: int = 2, min_seconds: float = 0.0) -> float:
    """Median seconds per call on random inputs (outputs preallocated)."""
    import tvm

    spec = spec or built.spec
    dt = _np_dtype(spec.dtype)
    rng = np.random.default_rng(0)
    shapes = _shapes(spec)
    args = [tvm.runtime.tensor(np.clip(rng.standard_normal(s, dtype=np.float32), -8, 8).astype(adt))
            for s, adt in zip(shapes[:3], _input_dtypes(spec))]
    args.append(tvm.runtime.tensor(np.empty(shapes[3], dtype=dt)))
    args.append(tvm.runtime.tensor(np.empty(shapes[4], dtype=np.float32)))
    rng_c = np.random.default_rng(1)
    caps = [np.sort(rng_c.integers(0, 8, shape)).astype(_np_dtype(cdt)) for _, shape, cdt in spec.captures]
    scales = [np.full(shape, 0.05, np.float32) for _, shape in spec.scales]
    args.extend(built.extra_args(scales + caps))
    fn = built.executable["main"]
    for _ in range(max(0, warmup)):
        fn(*args)
    times = []
    start = time.perf_counter()
    while len(times) < max(1, repeat) or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


Config = CpuConfig


def source(built: CpuKernel, kind: str = "asm") -> str:
    """The generated code: x86 assembly by default ("ll" for LLVM IR)."""
    return built.mod.inspect_source(kind)


def export_library(built: CpuKernel, path: str) -> None:
    """Write the module as a shared object; ``tvm_ffi.load_module(path)["main"]``
    takes (q, k, v, out, lse) tensors."""
    built.executable.export_library(path)
