"""CUDA backend: a FlashAttention-2 style forward kernel on tensor cores.

The kernel is handwritten TensorIR (TVMScript with explicit thread bindings) whose
matrix work is TVM's PTX intrinsics (``T.ptx["mma.sync.aligned.m16n8k16..."]``,
``T.ptx["ldmatrix..."]``, ``T.ptx["cp.async..."]``); TVM's CUDA codegen turns each into
an inline-asm helper.  It is generated from a :class:`FlashKernelSpec` and a
:class:`CudaConfig` and reads top to bottom:

* grid ``(batch * q_heads, ceil(q_len / block_q))``: one thread block per (batch, head,
  query block); query blocks are walked heaviest first (causal) so that the tail of the
  launch is short.  ``num_warps`` warps, each owning ``block_q / num_warps`` query rows
  (a multiple of 16: one or more m16 row tiles).
* shared memory (one dynamic buffer, 16-bit elements, rows XOR-swizzled by 16-byte
  chunk so that ``ldmatrix`` is free of bank conflicts): the Q tile, and ``num_stages``
  slots of (K tile, V tile).  K/V tiles arrive by ``cp.async`` (16 bytes per thread and
  instruction, zero fill past ``kv_len``), software pipelined ``num_stages - 1`` key
  blocks ahead of the math.
* S = Q·Kᵀ on ``mma.sync.m16n8k16`` (fp16/bf16 in, fp32 accumulate); Q fragments come
  from ``ldmatrix`` (kept in registers for the whole loop when ``q_in_registers``), K
  fragments from ``ldmatrix`` (non-transposed: K rows are the B operand's columns).
* online softmax in registers, in the mma accumulator layout (each thread holds 2 rows
  per m16 tile; row max by two ``shfl.xor`` in the quad; the row sum stays per thread
  until the end, as in FlashAttention-2), base-2 exponentials (``ex2.approx``) with
  log2(e) folded into the scale.  score_mod and the element mask are applied only
  where needed: tiles wholly inside ``spec.key_bounds`` (and inside ``kv_len``) skip the
  mask, key blocks wholly outside it are never visited.
* P is converted to fp16/bf16 in registers (``cvt.rn.{f16,bf16}x2.f32``) and reused as
  the A operand of P·V; V fragments come from ``ldmatrix.trans``.
* epilogue: ``out = acc / l`` (0 where no key was kept), ``lse = m + log l`` (natural
  log, -inf where no key was kept), the output tile staged through shared memory and
  written with 16-byte stores.

GQA/MQA: query head ``h`` reads kv head ``h // group``; nothing is copied.

Table mode (``use_block_table``: a mask that is no band -- prefix-LM, strided, local + global,
chunked, document ids): the tile map ``int32 [NQB, NKB]`` (0 empty, 1 partial, 2 full) is the
argument after ``lse``, captured tensors (document ids) follow it; warp 0 compacts the query
block's row into a shared list of the non-empty key blocks (``_cuda_wgmma.compact_row_macro``)
while Q is in flight, the key loop walks the list, and full tiles skip the element mask.
``run`` takes the captures after (q, k, v) and computes the map from them per call (once per
distinct data).  The Hopper wgmma kernel (``_cuda_wgmma.py``, the default for sm_90a) does the
same.

Quantized inputs (the quantize pass; their f32 scales are the arguments after the tile map):
INT8 q and k run Q·Kᵀ on ``mma.sync.m16n8k32.s32.s8.s8`` (sm_80 and newer, also the kernel
int8 gets on Hopper), FP8 (e4m3 / e5m2) on ``mma.sync.m16n8k32.f32.e4m3.e4m3`` (sm_89 and
newer; on sm_90a the wgmma kernel takes fp8 where the head is a multiple of 128 wide).  The
8-bit tiles use the 16-bit path's shared-memory layout and ``ldmatrix`` addresses unchanged: a
32-byte k step is one k16 step of 16-bit data.  The q scale of each row and the k scale (per
head, or per key) multiply the f32 scores before score_mod and the mask.  fp8 P·V converts P to
e4m3 (2^8 exp2(s - m), FlashAttention-3's FP8 forward) and reads V transposed and key-permuted
(``attncc.runtime._layouts.fp8_v_layout``, the Hopper kernel's host prologue: the S accumulator
then *is* the A fragment of P), its scale (per tensor or head) folded into 1 / l.  int8 P·V is
refused (P is not an integer quantity).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from attncc.errors import ConfigError, DTypeError, ShapeError, TargetError
from attncc.targets.spec import FlashKernelSpec
from attncc.targets.spec import input_numpy_dtypes as _input_dtypes, numpy_dtype as _np_dtype
from attncc.targets import _gpu_flash as _gpu  # what the GPU kernels share (tiling, mask, score_mod)
from attncc.targets import _cuda_decode as _decode  # split-KV decode kernel (q_len <= 16)
from attncc.targets._cuda_decode import DecodeConfig  # noqa: F401  (re-exported)
from attncc.targets import _cuda_wgmma as _wgmma_dense  # Hopper wgmma prefill kernel (mma="wgmma")
from attncc.runtime import _layouts  # host-side argument layouts (fp8 P·V's transposed V)
from attncc.targets import _cuda_wgmma_sparse as _wgmma_sparse  # in order: chained blocks, 1-warpgroup tile maps


# Which kernel (and which revision of it) a config runs: tuning records carry it, and a
# record measured on another revision is not used (its config may no longer be the best).
# Bump a revision when a kernel's schedule changes what is fast.
KERNEL_REVISIONS = {"sync": "sync-1", "wgmma": "wgmma-2", "wgmma_sparse": "wgmma-sparse-2", "decode": "decode-1",
                    "wgmma_persistent": "wgmma-persistent-3"}


def kernel_revision(spec: FlashKernelSpec, config) -> str:
    """The kernel revision ``config`` runs for ``spec`` (see KERNEL_REVISIONS)."""
    if isinstance(config, _decode.DecodeConfig):
        return KERNEL_REVISIONS["decode"]
    if getattr(config, "persistent", 0):
        return KERNEL_REVISIONS["wgmma_persistent"]
    if getattr(config, "mma", "sync") == "wgmma":
        return KERNEL_REVISIONS["wgmma_sparse" if _wgmma_for(spec, config) is _wgmma_sparse else "wgmma"]
    return KERNEL_REVISIONS["sync"]


# experiment builds only (benchmarks/gpu/build.py --only onewg): {"one_warpgroup": "inorder" or
# "pingpong"} runs every one-warpgroup config on that schedule; empty = the rule below
_ROUTE: dict = {}


def _wgmma_for(spec: FlashKernelSpec, config=None):
    """The wgmma kernel module for ``spec``: ``_cuda_wgmma_sparse`` when the config chains query
    blocks (a feature the ping-pong kernel of ``_cuda_wgmma`` does not have), or iterates a tile
    map with one warpgroup (no ping-pong partner: the in-order schedule measured 3-6 % faster at
    64 x 32 on documents, causal documents and 512-token chunks, the same on bands; H200,
    benchmarks/gpu/RESULTS.md); else ``_cuda_wgmma`` (bands, tile maps, captured tensors, fp8
    inputs).  (``_ROUTE["fp8"] = "inorder"``: fp8 on the in-order kernel, as before it moved to
    the ping-pong one -- an experiment build's comparison.)"""
    if spec.quant_dtype is not None and _ROUTE.get("fp8") == "inorder":
        return _wgmma_sparse
    if _wgmma_sparse.chained(config) > 1:
        return _wgmma_sparse
    if getattr(config, "num_warps", None) == 4:
        route = _ROUTE.get("one_warpgroup")
        if route == "inorder" or (route is None and _wgmma_dense.use_block_table(spec)):
            return _wgmma_sparse
    return _wgmma_dense

NAME = "cuda"

__all__ = [
    "NAME",
    "CudaConfig",
    "Config",
    "CudaKernel",
    "default_config",
    "validate_config",
    "cuda_target",
    "lower",
    "build",
    "run",
    "measure",
    "source",
    "export_library",
    "shared_memory_bytes",
    "use_block_table",
    "block_tables",
    "row_order_column",
    "launch_order",
    "row_limits",
    "row_order_window",
    "runtime_tables",
    "small_config",
    "small_below",
    "kernel_v",
]

_SUPPORTED_DTYPES = ("float16", "bfloat16")
# the quantize pass's dtypes the kernels take: int8 on mma.sync (m16n8k32 s8, sm_80+), fp8 on
# mma.sync (m16n8k32 e4m3/e5m2, sm_89+) and on the Hopper wgmma kernel
QUANT_DTYPES = ("int8", "float8_e4m3fn", "float8_e5m2")
# the IR names of those, and the dtype a variant declared in f32 is traced in for this target
SUPPORTED_DTYPES = ("f16", "bf16")
DEFAULT_DTYPE = "bf16"
_PTX_TYPE = {"float16": "f16", "bfloat16": "bf16"}
# Largest dynamic shared memory per block (bytes), by compute capability major.minor.
_SMEM_LIMIT = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_87": 163 * 1024, "sm_89": 99 * 1024,
               "sm_90": 227 * 1024, "sm_90a": 227 * 1024}
_DEFAULT_SMEM_LIMIT = 227 * 1024
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


@dataclass(frozen=True)
class CudaConfig:
    """The tunable knobs of the CUDA kernel (frozen and hashable: keys build caches).

    block_q         query rows per thread block
    block_k         keys per pipelined key block (K/V tile rows)
    num_warps       warps per thread block; each owns block_q / num_warps rows (multiple of 16)
    num_stages      shared-memory slots of (K, V) tiles; loads run num_stages - 1 blocks ahead
    q_in_registers  keep the Q fragments in registers for the whole key loop (else re-read
                    them from shared memory with ldmatrix at every key block)
    mma             "sync": mma.sync m16n8k16 (sm_80 and newer, this file); "wgmma": Hopper
                    warpgroup wgmma.mma_async (sm_90a, _cuda_wgmma.py; block_q = 16 *
                    num_warps, q_in_registers unused)
    query_blocks    wgmma only: query blocks one thread block runs as one stream of key tiles,
                    the next block's Q and first K/V loaded under the current one's last tile
                    and write-out (_cuda_wgmma_sparse.py; num_stages 2).  Measured at most 3 %
                    faster (window 256 at S=16k on the H200) and slower on dense work: a knob,
                    not a default (benchmarks/gpu/RESULTS.md, "Low density").
    small_below     wgmma with a block mask computed per call (captured tensors: document
                    ids): when at most this fraction of the call's tiles (of this config's
                    block_q x block_k) is non-empty, the call runs a second kernel of 64 x 32
                    tiles (one warpgroup, 2 stages: four thread blocks an SM), built beside
                    the first.  0: one kernel.  None (the default): SMALL_BELOW where it
                    applies (see small_below()), so tuned records of the 128-row kernel keep
                    the per-call choice (tuning times one input and cannot choose it).
    persistent      wgmma only: the persistent, warp-specialised kernel with this many thread
                    blocks (132: an H100/H200's SMs; 0: off) -- a producer warpgroup issues every
                    Q/K/V tile by TMA on mbarriers, two consumer warpgroups (block_q 128, 8
                    warps) run the ping-pong steps without loads, each block walks the work
                    tiles in a static order balanced on the tile map (ws_default_order), the
                    next tile's Q and first K/V landing under this one's end (_cuda_wgmma.py).
                    num_stages 2 (two Q buffers; a third K slot where shared memory holds it),
                    no fp8, no query_blocks.  Picked for bands of tile density in
                    (LOW_DENSITY, PERSISTENT_BELOW] and causal from PERSISTENT_CAUSAL_KEYS keys,
                    and tile maps (document ids per call, its sparse calls on the 64 x 32
                    kernel; compile-time maps above LOW_DENSITY), at head dim 128, measured
                    (benchmarks/gpu/RESULTS.md).  In table mode the host deals the tiles to
                    the thread blocks (the table's schedule, _layouts.tile_schedule).
    """

    block_q: int = 128
    block_k: int = 64
    num_warps: int = 8
    num_stages: int = 2
    q_in_registers: bool = True
    mma: str = "sync"
    # (left out of tuning records and candidate names at its default, so records and names
    # written before the knob existed still match)
    query_blocks: int = dataclasses.field(default=1, metadata={"omit_default": True})
    small_below: Optional[float] = dataclasses.field(default=None, metadata={"omit_default": True})
    persistent: int = dataclasses.field(default=0, metadata={"omit_default": True})


Config = CudaConfig


# --------------------------------------------------------------------------- configs


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def shared_memory_bytes(spec: FlashKernelSpec, config: CudaConfig) -> int:
    """Dynamic shared memory of one thread block, in bytes."""
    if isinstance(config, DecodeConfig):
        return _decode.shared_memory_bytes(spec, config)
    if config.mma == "wgmma":
        return _wgmma_for(spec, config).shared_memory_bytes(spec, config)
    qb = 1 if spec.quant_dtype else 2                       # bytes per q/k element
    vb = 1 if fp8_v_transposed(spec, config) else 2
    q_tile = config.block_q * max(spec.head_dim * qb, spec.head_dim_v * 2)     # Q, then the O staging
    kv = config.num_stages * config.block_k * (spec.head_dim * qb + spec.head_dim_v * vb)
    table = 4 * (-(-spec.kv_len // config.block_k) + 1) if use_block_table(spec, config) else 0
    return q_tile + kv + table


def registers_estimate(spec: FlashKernelSpec, config: CudaConfig) -> int:
    """32-bit registers per thread held by fragments (accumulators, P, Q)."""
    m_tiles = config.block_q // config.num_warps // 16
    acc = m_tiles * (spec.head_dim_v // 8) * 4
    scores = m_tiles * (config.block_k // 8) * 4
    probs = m_tiles * (config.block_k // 16) * 4
    q = m_tiles * (spec.head_dim // 16) * 4 if config.q_in_registers else 0
    return acc + scores + probs + q + 8 * m_tiles


def default_config(spec: FlashKernelSpec, arch: Optional[str] = None) -> CudaConfig:
    """A good config for ``spec`` without tuning (``arch``: the GPU it is for, when known).

    On Hopper (``arch`` sm_90a) the wgmma kernel when it can take the shape: block_q 128 (two
    warpgroups), block_k 128 (64 when the registers would not hold D_v = 256), 3 stages (K
    two blocks ahead) where shared memory holds them, 2 with a score_mod (ALiBi measured
    1.06x faster with 2) -- 1.06-1.35x FlexAttention on H200 (benchmarks/gpu/RESULTS.md, run 4).

    Measured on H100 (bf16, D=128, S=4k; benchmarks/gpu/RESULTS.md): 4 warps of two m16
    row tiles each (block_q 128) beat 8 warps of one (each K/V fragment read from shared
    memory feeds two mma), with Q re-read from shared memory when the fragments would not
    fit in registers beside the accumulators.
    """
    if spec.q_len <= _decode.DECODE_MAX_Q_LEN:   # decode: split-KV kernel (_cuda_decode.py)
        return _decode.default_config(spec)
    if arch == "sm_90a" and spec.dtype in _SUPPORTED_DTYPES and spec.quant_dtype != "int8":
        sparse = _low_density_config(spec, arch) or _persistent_config(spec, arch)
        if sparse is not None:
            return sparse
        last = None
        # 3 stages pay in the ping-pong kernel on bands (causal S=4k 453 vs 431 TFLOP/s); 2 do
        # without a mask since lazy rescaling (dense S=4k / 16k 530 / 542 vs 503 / 525; GQA 466 /
        # 508 vs 454 / 507; H200, benchmarks/gpu/RESULTS.md), with a score_mod (ALiBi 365 vs
        # 345), with a tile map (documents=2-8 2.380 / 1.381 / 0.756 ms vs 2.455 / 1.408 / 0.770
        # at 3; equal at 16-32) and in the in-order kernel (its 3-stage path overlaps P·V
        # differently: 390 vs 425)
        no_mask = (spec.mask_mod is None and spec.key_bounds.lower_offset is None
                   and spec.key_bounds.upper_offset is None)
        # fp8 on the ping-pong kernel: 2 (causal S=16k / 4k, Q·Kᵀ + P·V 764 / 648 vs 736 / 619 at 3;
        # Q·Kᵀ alone equal; H200, benchmarks/gpu/RESULTS.md, "fp8 on the ping-pong kernel")
        stages = ((2,) if spec.score_mod is not None or _wgmma_for(spec) is _wgmma_sparse
                  or spec.quant_dtype is not None or _wgmma_dense.use_block_table(spec) or no_mask else (3, 2))
        for block_k in (128, 64):
            for num_stages in stages:
                cfg = CudaConfig(block_q=128, block_k=block_k, num_warps=8, num_stages=num_stages, mma="wgmma")
                try:
                    validate_config(spec, cfg, arch)
                    return cfg
                except (ConfigError, ShapeError) as exc:
                    last = last or exc
                    continue
        if last is not None and spec.captures and spec.quant_dtype is None:
            raise last      # the wgmma kernel's reason (captured tensors)
        # (quantized inputs the wgmma kernel cannot take -- head_dim under 128 -- run on mma.sync)
    d = max(spec.head_dim, spec.head_dim_v)
    if spec.q_len <= 64:
        block_q, num_warps = 64, 4
    else:
        block_q, num_warps = 128, 4
    block_k = 64 if d <= 128 else 32
    cfg = CudaConfig(block_q=block_q, block_k=block_k, num_warps=num_warps, num_stages=2,
                     q_in_registers=True)
    if registers_estimate(spec, cfg) > 200:
        cfg = dataclasses.replace(cfg, q_in_registers=False)
    if registers_estimate(spec, cfg) > 240 or (spec.quant_dtype is not None
                                               and (spec.quant_pv or registers_estimate(spec, cfg) > 200)):
        # (quantized inputs: one m16 row tile a warp -- two spill at D=128, and with fp8 P·V at
        # D=64 too: ptxas -v for sm_90a, benchmarks/gpu/build.py --only quantsync)
        cfg = dataclasses.replace(cfg, block_q=block_q, num_warps=block_q // 16)
    return cfg


# A mask whose tiles are known at compile time (a band, or prune-sparsity's tile map) and at
# most this fraction of whose 128 x 128 tiles are non-empty: each query block visits 2-3 key
# blocks and the kernel is latency-bound (ncu on the H200, window 256 at S=16k: 34 % of peak
# DRAM bandwidth, 34 % of SM throughput, 8 warps an SM).  64 x 32 tiles, one warpgroup, 2
# stages (50 KB, 122 registers) let four thread blocks share an SM and hide each other's loads:
# window 256 (density 0.023) 0.136 ms against 0.147 (64 x 64) and 0.159-0.168 (128 x 128);
# chunked causal 512 (0.020) 0.130 vs 0.153.  At 0.066-0.068 (window 1024, chunks of 2048)
# 128 x 128 is faster (0.347 vs 0.387, 0.362 vs 0.383 ms), so those stay.
LOW_DENSITY = 0.04


# A block mask computed per call (document ids) at most this dense on 128 x 128 tiles runs the
# 64 x 32 kernel (CudaConfig.small_below): H200, S=16k, same run (benchmarks/gpu/RESULTS.md,
# "Table mode on the ping-pong kernel", run 5): documents=32 (density 0.049) 0.262 vs 0.308 ms,
# causal documents=16 (0.046) 0.258 vs 0.298; at 0.085 (documents=16) a tie, 0.466 vs 0.471;
# above, 128 x 128 wins (documents=8: 0.762 vs 0.843).  Re-measured with the rows' key limits
# in both kernels (thirteenth pass, run 25, two passes): documents=16 0.396-0.400 (the
# persistent kernel) vs 0.418-0.422, documents=8 0.664-0.667 vs 0.785-0.794; at 32 and 64
# documents and causal documents 16 / 32 (<= 0.049) the same kernel runs either way.
SMALL_BELOW = 0.06


def small_config(config: CudaConfig) -> CudaConfig:
    """The second kernel's config of a ``small_below`` config: 64 x 32 tiles, one warpgroup."""
    return CudaConfig(block_q=64, block_k=32, num_warps=4, num_stages=2, mma="wgmma")


def small_below(spec: FlashKernelSpec, config) -> float:
    """The density under which a call runs the 64 x 32 kernel (0: never): ``config.small_below``
    when given; by default SMALL_BELOW for a wgmma config of larger tiles whose mask is computed
    per call (no fp8, no score_mod, no chained blocks) and whose 64 x 32 kernel can be built."""
    if not isinstance(config, CudaConfig):
        return 0.0
    if config.small_below is not None:
        return float(config.small_below)
    small = small_config(config)
    if (config.mma != "wgmma" or spec.runtime_tile_map is None or spec.quant_dtype is not None
            or spec.score_mod is not None or config.query_blocks > 1
            or (config.block_q, config.block_k) == (small.block_q, small.block_k)):
        return 0.0
    try:
        validate_config(spec, small)
    except (ConfigError, ShapeError):
        return 0.0
    return SMALL_BELOW


# A band (the key loop's bounds; no tile map) whose 128 x 128 tiles are non-empty at a density
# above LOW_DENSITY and at most this runs the persistent, warp-specialised kernel
# (CudaConfig.persistent): 8-10 key tiles a query block, where the one-block-a-tile kernel pays
# its start and write-out per block.  H200, S=16k (benchmarks/gpu/RESULTS.md, "The persistent
# kernel"): window 1024 (0.068) 0.298-0.305 vs 0.312-0.319 ms, window 2048 (0.125) 0.521 vs
# 0.535; window 4096 (0.226) slower (0.956-0.959 vs 0.928-0.934); window 512 (0.038) a tie
# with 64 x 32 (0.191 vs 0.189).  Compile-time tile maps (chunks) ran it 1-2 % slower in a fixed
# walk; dealt on the host (fourteenth pass) chunks of 2048 run 8 % faster on it, so tile maps of
# density above LOW_DENSITY take it (_persistent_pays).  A tile map per call (document ids) runs it since its query blocks are ranked
# per call and the write-out's read wait left the path between tiles (twelfth pass, same run):
# documents=16 0.385 vs 0.409 ms, =8 0.653 vs 0.663, =2-4 and causal documents=4-16 equal; the
# sparser calls (density at most SMALL_BELOW) run the 64 x 32 kernel either way.
PERSISTENT_BELOW = 0.15
PERSISTENT_BLOCKS = 132          # an H100 SXM's or H200's SMs (fewer SMs: still correct)
# Causal (kv <= q + offset, exactly) runs it from this many keys, tiles heaviest-first across
# heads in a snake (ws_default_order "cost").  H200, bf16, 16 heads, D=128 (RESULTS.md, "The
# tile order: load balance, not per-step cost", run 10), persistent vs the 3-stage kernel, ms:
# S=4k B=4 0.580 vs 0.584, 8k B=2 1.042 vs 1.092, 16k 1.73-1.91 vs 2.01-2.04, 32k 7.74-7.82 vs
# 8.07; GQA 32/8 4k B=4 1.034 vs 1.131, 16k 3.79 vs 4.10.  At 2k (B=8) it is 10 % slower (0.350
# vs 0.319): 8 key blocks a tile on average, too few to hide a tile's start.
PERSISTENT_CAUSAL_KEYS = 4096


def _is_causal(spec: FlashKernelSpec) -> bool:
    """The mask is exactly ``kv_idx <= q_idx + offset`` (a key loop's upper bound, nothing else)."""
    kb = spec.key_bounds
    return kb.exact and kb.lower_offset is None and kb.upper_offset is not None


def _persistent_config(spec: FlashKernelSpec, arch: Optional[str]) -> Optional[CudaConfig]:
    if not _persistent_pays(spec):
        return None
    cfg = CudaConfig(block_q=128, block_k=128, num_warps=8, num_stages=2, mma="wgmma",
                     persistent=PERSISTENT_BLOCKS)
    try:
        validate_config(spec, cfg, arch)
    except (ConfigError, ShapeError):
        return None
    return cfg


def _persistent_pays(spec: FlashKernelSpec) -> bool:
    """Where the persistent kernel was measured faster (head dim 128, no score_mod, no fp8): a
    tile map per call (document ids: its tiles dealt per call; calls of at most SMALL_BELOW
    density still run the 64 x 32 kernel, small_below), a compile-time tile map of density above
    LOW_DENSITY (since its tiles are dealt on the host: chunks of 2048 0.291 vs 0.317 ms on the
    H200, RESULTS.md fourteenth pass), a band of density in (LOW_DENSITY, PERSISTENT_BELOW],
    causal from PERSISTENT_CAUSAL_KEYS keys."""
    if (spec.mask_mod is None or spec.score_mod is not None or spec.quant_dtype is not None
            or not spec.head_dim == spec.head_dim_v == 128):
        return False     # (measured at head dim 128 only: others keep the one-block-a-tile kernel)
    if spec.runtime_tile_map is not None:
        return True
    if spec.tile_map is None or spec.captures:
        return False
    density = float(np.mean(np.asarray(spec.tile_map(128, 128)) != 0))
    if _wgmma_dense.use_block_table(spec):
        # a compile-time tile map (chunks, prefix-LM, local + global): its tiles dealt to the thread
        # blocks on the host (ws_schedule); below LOW_DENSITY the 64 x 32 kernel keeps it
        return density > LOW_DENSITY
    return (LOW_DENSITY < density <= PERSISTENT_BELOW
            or (_is_causal(spec) and spec.kv_len >= PERSISTENT_CAUSAL_KEYS))


def _low_density_config(spec: FlashKernelSpec, arch: Optional[str]) -> Optional[CudaConfig]:
    if (spec.mask_mod is None or spec.tile_map is None or spec.runtime_tile_map is not None
            or spec.score_mod is not None or spec.quant_dtype is not None or spec.captures):
        return None
    if float(np.mean(np.asarray(spec.tile_map(128, 128)) != 0)) > LOW_DENSITY:
        return None
    cfg = CudaConfig(block_q=64, block_k=32, num_warps=4, num_stages=2, mma="wgmma")
    try:
        validate_config(spec, cfg, arch)
    except (ConfigError, ShapeError):
        return None
    return cfg


def validate_config(spec: FlashKernelSpec, config: CudaConfig, arch: Optional[str] = None) -> None:
    """Raise :class:`ConfigError` with the reason if ``config`` cannot build ``spec``."""
    if isinstance(config, DecodeConfig):
        _check_kernel_takes(spec, config)
        return _decode.validate_config(spec, config, arch, _SMEM_LIMIT.get(arch or "", _DEFAULT_SMEM_LIMIT))
    c = config

    def bad(msg):
        raise ConfigError(f"cuda config {c}: {msg}", variant=spec.name or None)

    if not isinstance(c.persistent, int) or isinstance(c.persistent, bool) or c.persistent < 0:
        bad(f"persistent must be a thread-block count >= 0 (0: off), got {c.persistent!r}")
    if c.persistent and c.mma != "wgmma":
        bad("persistent (the warp-specialised Hopper kernel) needs mma='wgmma'")
    if c.persistent and c.query_blocks > 1:
        bad("persistent and query_blocks > 1 are two ways to run several query blocks a thread block: "
            "pick one")
    for name in ("block_q", "block_k", "num_warps", "num_stages", "query_blocks"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            bad(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(c.q_in_registers, bool):
        bad(f"q_in_registers must be a bool, got {c.q_in_registers!r}")
    if c.mma not in ("sync", "wgmma"):
        bad(f"mma must be 'sync' or 'wgmma', got {c.mma!r}")
    _check_kernel_takes(spec, c)
    if c.query_blocks > 1 and c.mma != "wgmma":
        bad(f"query_blocks={c.query_blocks} needs mma='wgmma' (the chained kernel is the Hopper one)")
    if c.small_below is not None and (isinstance(c.small_below, bool) or not isinstance(c.small_below, (int, float))
                                      or not 0 <= c.small_below <= 1):
        bad(f"small_below must be a fraction in [0, 1], got {c.small_below!r}")
    if c.small_below is not None and c.small_below > 0:
        if c.mma != "wgmma" or spec.runtime_tile_map is None or spec.quant_dtype is not None or c.query_blocks > 1:
            bad("small_below (a second kernel of 64 x 32 tiles for sparse calls) takes the wgmma kernel with a block "
                "mask computed per call (captured tensors such as document ids), no fp8, no query_blocks")
        validate_config(spec, small_config(c), arch)
    if c.mma == "wgmma":
        return _wgmma_for(spec, c).validate_config(spec, c, arch, _SMEM_LIMIT.get(arch or "", _DEFAULT_SMEM_LIMIT))
    if c.num_warps not in (1, 2, 4, 8, 16):
        bad(f"num_warps must be 1, 2, 4, 8 or 16, got {c.num_warps}")
    if c.block_q % (16 * c.num_warps):
        bad(f"block_q ({c.block_q}) must be a multiple of 16 * num_warps ({16 * c.num_warps}): "
            "each warp owns whole m16 row tiles")
    if c.block_k % 16:
        bad(f"block_k ({c.block_k}) must be a multiple of 16 (the mma k step of P·V)")
    if c.num_stages < 2 or c.num_stages > 4:
        bad(f"num_stages must be 2, 3 or 4 (cp.async pipeline depth), got {c.num_stages}")
    for name in ("head_dim", "head_dim_v"):
        d = getattr(spec, name)
        if d % 16:
            raise ShapeError(f"cuda target: {name} ({d}) must be a multiple of 16 (mma k step)",
                             variant=spec.name or None)
    if spec.quant_dtype is not None:
        _check_sync_quant(spec, c, arch, bad)
    limit = _SMEM_LIMIT.get(arch or "", _DEFAULT_SMEM_LIMIT)
    smem = shared_memory_bytes(spec, c)
    if smem > limit:
        bad(f"needs {smem} bytes of shared memory per block, over the {limit} of "
            f"{arch or 'the largest supported GPU'}: lower block_q, block_k or num_stages")
    regs = registers_estimate(spec, c)
    if regs > 240:
        bad(f"holds about {regs} registers of fragments per thread (limit 255 with addresses "
            "and softmax state): lower block_q per warp or block_k, or set q_in_registers=False")


def _check_sync_quant(spec: FlashKernelSpec, config: CudaConfig, arch: Optional[str], bad) -> None:
    """The quantized mma.sync kernel's rules: 8-bit Q·Kᵀ in k32 steps; fp8 tensor cores from
    sm_89 (Ada) on; fp8 P·V reads V transposed in rows of block_k bytes, its scale one per
    tensor or head."""
    if spec.head_dim % 32:
        raise ShapeError(f"cuda target, {spec.quant_dtype}: head_dim ({spec.head_dim}) must be a multiple of 32 "
                         "(the 8-bit mma k step)", variant=spec.name or None)
    if spec.quant_dtype != "int8" and arch is not None and arch.startswith("sm_") and arch[3:5].isdigit() \
            and int(arch[3:5]) < 89:
        raise DTypeError(f"cuda target: fp8 ({spec.quant_dtype}) tensor cores need sm_89 or newer (Ada, Hopper); "
                         f"{arch} has none: use --quantize int8 (m16n8k32 s8 tensor cores)",
                         variant=spec.name or None)
    if spec.quant_pv:
        if config.block_k % 32:
            bad("fp8 P·V takes keys in k32 steps: block_k must be a multiple of 32")
        if any(int(sh[2]) > 1 for name, sh in spec.scales if name.startswith("v")):
            raise ShapeError("cuda target, fp8 P·V: per-block V scales are not supported (the V scale must be "
                             "per tensor or per head: --quantize-granularity tensor|head)",
                             variant=spec.name or None)


def _validate_spec(spec: FlashKernelSpec) -> None:
    # captured tensors and fp8 inputs: _check_kernel_takes (they need the wgmma kernel)
    _gpu.validate_spec(spec, "cuda", captures_ok=True)


def _check_kernel_takes(spec: FlashKernelSpec, config) -> None:
    """Quantized inputs need a prefill kernel that takes them (int8: mma.sync; fp8: wgmma or
    mma.sync), captured tensors a prefill kernel (wgmma or mma.sync, not split-KV decode): one
    clear error otherwise."""
    q = spec.quant_dtype
    if q is not None and q not in QUANT_DTYPES:
        raise DTypeError(f"cuda target: --quantize {q} is not supported on CUDA (int8, fp8 e4m3 and e5m2 are)",
                         variant=spec.name or None)
    if isinstance(config, DecodeConfig):
        if q is not None:
            raise DTypeError(f"cuda target: quantized ({q}) inputs need a prefill kernel (q_len over "
                             f"{_decode.DECODE_MAX_Q_LEN}); the split-KV decode kernel does not take them",
                             variant=spec.name or None)
        if spec.captures:
            names = ", ".join(str(c[0]) for c in spec.captures)
            raise TargetError(f"cuda target: score/mask read runtime tensors ({names}); captured inputs need the "
                              f"prefill kernels (q_len over {_decode.DECODE_MAX_Q_LEN}); the "
                              "split-KV decode kernel does not take them", variant=spec.name or None)
        return
    if q == "int8" and config.mma == "wgmma":
        raise DTypeError("cuda target: int8 inputs run on the mma.sync kernel (mma='sync': m16n8k32 s8 tensor "
                         "cores, sm_80 and newer); the wgmma kernel takes fp8 e4m3/e5m2",
                         variant=spec.name or None)
    if q == "int8" and spec.quant_pv:
        raise DTypeError("cuda target: --quantize-pv with int8 is not supported (P·V quantizes to fp8 e4m3 P "
                         "on CUDA, as FlashAttention-3; use --quantize fp8 --quantize-pv, or int8 for Q·Kᵀ only)",
                         variant=spec.name or None)


def fp8_v_transposed(spec: FlashKernelSpec, config) -> bool:
    """True when the kernel reads V in fp8 P·V's transposed, key-permuted layout
    (attncc.runtime._layouts.fp8_v_layout): fp8 --quantize-pv on a prefill kernel."""
    return bool(spec.quant_dtype in _wgmma_dense.FP8_PTX and spec.quant_pv
                and getattr(config, "mma", None) in ("sync", "wgmma"))


def use_block_table(spec: FlashKernelSpec, config=None) -> bool:
    """True when the kernel takes the tile map (int32 [NQB, NKB]: 0 empty, 1 partial, 2 full)
    after ``lse``: a wgmma or mma.sync kernel with a mask that is no single band (the decode
    kernel masks every tile of such a mask: correct, not sparse)."""
    if config is None or isinstance(config, DecodeConfig):
        return False
    return _wgmma_sparse.use_block_table(spec)


def row_order_column(spec: FlashKernelSpec, config) -> bool:
    """Whether the kernel's tile map carries column NKB: the query blocks in the order the
    persistent kernel walks them (``attncc.runtime._layouts.with_row_order``: ranked by cost, or
    last first; whoever fills a per-call map appends it)."""
    return isinstance(config, CudaConfig) and _wgmma_dense.ws_row_order_column(spec, config)


def row_schedule(spec: FlashKernelSpec, config):
    """(thread blocks, batch x heads) of the persistent kernel's tile schedule, which its table
    carries after the order column (``_layouts.with_row_order(..., schedule=)``), or None."""
    if not row_order_column(spec, config):
        return None
    return _wgmma_dense.ws_schedule(spec, config)


def row_order_window(spec: FlashKernelSpec, config) -> int:
    """The query blocks the persistent kernel runs at once (its thread blocks over batch x
    heads): how far ``_layouts.row_order`` looks when it ranks the query blocks."""
    return _wgmma_dense.ws_row_window(spec, config)


def launch_order(spec: FlashKernelSpec, config) -> int:
    """Batch x heads of the launch order that the kernel's table carries right after the tile map
    (``attncc.runtime._layouts.with_launch_order``: the in-order wgmma kernel in table mode, whose
    thread blocks read which tile they run from it), or 0: none."""
    if not (isinstance(config, CudaConfig) and config.mma == "wgmma") or _wgmma_for(spec, config) is not _wgmma_sparse:
        return 0
    return _wgmma_sparse.launch_bhn(spec, config)


def row_limits(spec: FlashKernelSpec, config) -> bool:
    """Whether the kernel's table carries the rows' key limits of a document mask
    (``_layouts.with_row_limits``, appended after the row order; ``spec.row_runs``): the wgmma
    kernels (the in-order one without chained query blocks)."""
    if not (isinstance(config, CudaConfig) and config.mma == "wgmma"):
        return False
    if _wgmma_for(spec, config) is _wgmma_sparse:
        return _wgmma_sparse.takes_row_limits(spec, config)
    return _wgmma_dense.row_limits_on(spec)


def block_tables(spec: FlashKernelSpec, config, tiles=None, caps=None):
    """The kernel's block-table argument: the tile map [NQB, NKB] as int32; the persistent
    kernel's with column NKB, the order it walks the query blocks, and the thread blocks' share of
    the tiles after it (``_layouts.with_row_order``); the in-order kernel's with its thread blocks'
    launch order after the map (``_layouts.with_launch_order``);
    where ``row_limits``, the rows' key limits from the captured inputs ``caps`` after them."""
    table = _gpu.tile_map_argument(spec, config.block_q, config.block_k, tiles)
    if row_order_column(spec, config):
        table = _layouts.with_row_order(table, row_order_window(spec, config), row_schedule(spec, config))
    launch_bhn = launch_order(spec, config)
    if launch_bhn:
        table = _layouts.with_launch_order(table, launch_bhn)
    if row_limits(spec, config):
        if caps is None:
            raise TargetError("this kernel's table holds the rows' key limits of its document mask: "
                              "it needs the captured inputs", variant=spec.name or None)
        rr = spec.row_runs
        table = _layouts.with_row_limits(table, caps[rr.capture], spec.q_len, spec.kv_len, config.block_q,
                                         rr.lower_offset, rr.upper_offset)
    return (table,)


# --------------------------------------------------------------------------- TIR helpers

_dtype_of = _gpu.dtype_of
_as_bool = _gpu.as_bool
_as_f32 = _gpu.as_f32


def _swizzle_width(row_elems: int) -> int:
    """16-byte chunks XOR-permuted within a row: the largest power of two <= 8 dividing
    the row's chunk count (8 makes an 8-row ldmatrix conflict-free)."""
    chunks = row_elems // 8
    w = 1
    while w < 8 and chunks % (w * 2) == 0:
        w *= 2
    return w


# --------------------------------------------------------------------------- lowering


def lower(spec: FlashKernelSpec, config: CudaConfig):
    """The kernel as a ``tvm.IRModule`` whose ``main`` takes ``(q, k, v, out, lse)``."""
    if isinstance(config, DecodeConfig):
        _check_kernel_takes(spec, config)
        return _decode.lower_decode(spec, config)
    if config.mma == "wgmma":
        _validate_spec(spec)
        validate_config(spec, config)
        return _wgmma_for(spec, config).lower(spec, config)
    import tvm
    from tvm import tirx
    from tvm.script import tirx as T

    _validate_spec(spec)
    validate_config(spec, config)

    B, H, KVH = spec.batch, spec.q_heads, spec.kv_heads
    S, TK, D, DV = spec.q_len, spec.kv_len, spec.head_dim, spec.head_dim_v
    G = spec.group
    dtype = spec.dtype
    ptx_t = _PTX_TYPE[dtype]

    BQ, BK = config.block_q, config.block_k
    NW, NS = config.num_warps, config.num_stages
    Q_IN_REGS = config.q_in_registers
    NT = NW * 32                      # threads per block
    RW = BQ // NW                     # query rows per warp
    MT = RW // 16                     # m16 tiles per warp
    NKT = BK // 8                     # n8 tiles of S per key block
    # quantized inputs (the quantize pass): q and k 8-bit (int8: m16n8k32 s8 with s32
    # accumulators, any arch; fp8 e4m3/e5m2: m16n8k32 f8, sm_89 and newer), their scales
    # applied to the scores; fp8 P·V (PV8) reads V transposed and key-permuted (the host
    # prologue, attncc.runtime._layouts.fp8_v_layout) with P in e4m3 as the wgmma kernel
    QUANT = spec.quant_dtype is not None
    INT8 = spec.quant_dtype == "int8"
    PV8 = QUANT and spec.quant_pv
    QK_DT = spec.quant_dtype if QUANT else dtype
    V_DT = spec.quant_dtype if PV8 else dtype
    QB = 1 if QUANT else 2            # bytes per q/k element
    TKP = _layouts.padded_kv_len(TK) if PV8 else TK
    V_SHAPE = (B, KVH, DV, TKP) if PV8 else (B, KVH, TK, DV)
    KD = D * QB // 32                 # k steps of Q·Kᵀ (32 bytes of q/k each: k16, or k32 for 8 bits)
    KK = BK // 32 if PV8 else BK // 16  # k steps of P·V
    NDV = DV // 8                     # n8 tiles of the output
    NQB = (S + BQ - 1) // BQ
    QROW = D * QB // 2                # 16-bit elements per Q/K row in shared memory
    VROW = BK // 2 if PV8 else DV     # ... per V row (fp8 P·V: a row is one output column's keys)
    V_ROWS = DV if PV8 else BK
    SWQ, SWV = _swizzle_width(QROW), _swizzle_width(VROW)
    SWO = _swizzle_width(DV)
    CQ, CV = QROW // 8, DV // 8       # 16-byte chunks per row of Q/K and of out
    CVL = VROW // 8                   # ... of a V tile row
    EQ = 16 // QB                     # q/k elements per 16-byte chunk

    # shared memory map, in 16-bit elements
    Q_ELEMS = BQ * max(QROW, DV)      # the Q tile, later the output tile
    K_BASE = Q_ELEMS
    K_ELEMS = BK * QROW
    V_BASE = K_BASE + NS * K_ELEMS
    V_ELEMS = V_ROWS * VROW
    # table mode (a mask that is no band, its tile map known when compiling or computed per call
    # from captured tensors): the tile map [NQB, NKB] is the argument after lse, the captured
    # tensors follow it; warp 0 compacts the query block's row into a list of the non-empty key
    # blocks (entries key block * 2 + full) past the V slots, and the key loop walks the list
    USE_TABLE = use_block_table(spec, config)
    NKB = (TK + BK - 1) // BK
    LIST_BASE = V_BASE + NS * V_ELEMS
    SMEM_ELEMS = LIST_BASE + (2 * (NKB + 1) if USE_TABLE else 0)
    TILE_MAP = tirx.decl_buffer((NQB, NKB), "int32", "tile_map") if USE_TABLE else None
    CAPTURE_BUFFERS = [tirx.decl_buffer(tuple(int(x) for x in shape), cdt, name)
                       for name, shape, cdt in spec.captures]
    SCALE_BUFFERS = [tirx.decl_buffer(tuple(int(x) for x in shape), "float32", name)
                     for name, shape in spec.scales]
    K_PER_KEY = QUANT and int(SCALE_BUFFERS[1].shape[2]) > 1
    compact_row, MAP_BATCH = (_wgmma_dense.compact_row_macro(TILE_MAP, NKB) if USE_TABLE else (None, 1))
    row_list = _wgmma_dense.row_list_macro(compact_row, NKB) if USE_TABLE else None

    # copies: chunks of a tile per thread (ceil), guarded when the tile does not divide
    Q_ITERS, K_ITERS, V_ITERS = (-(-(BQ * CQ) // NT), -(-(BK * CQ) // NT), -(-(V_ROWS * CVL) // NT))

    # key-block skipping, the element mask, score_mod and the log2 scaling: shared with rocm;
    # the dequantization (q scale per row x k scale per head or key) as in the wgmma kernels
    ix = _gpu.FlashIndexing(spec, BQ, BK, RW, tuple(CAPTURE_BUFFERS))
    scale_at = _wgmma_dense.scale_reader(SCALE_BUFFERS)
    scaled, to_log2, exp_arg, masked = _wgmma_dense.score_functions(ix, QUANT, PV8, K_PER_KEY, scale_at, G)
    set_row_fold = _wgmma_dense.row_fold_macro(scale_at, K_PER_KEY, float(spec.scale) * _LOG2E if ix.fold_scale
                                               else 1.0, MT)
    SHIFT = _wgmma_dense.P_SHIFT if PV8 else 0.0
    block_lo, block_hi, band_full = ix.block_lo, ix.block_hi, ix.tile_is_full

    def key_block(ent, which, pos):
        """The key block at loop position ``pos``: itself, or (table mode) that of the list entry
        copied to ent[which]."""
        return tirx.shift_right(ent[which], 1) if USE_TABLE else pos

    def lo_of(q0):
        return tirx.const(0, "int32") if USE_TABLE else block_lo(q0)

    def hi_of(q0, cnt):
        return cnt[0] if USE_TABLE else block_hi(q0)

    def tile_is_full(r0, kb, ent):
        if USE_TABLE:      # the tile map says full for the whole query block
            return ix.entry_is_full(ent[0], kb)
        return band_full(r0, kb)

    f32 = "float32"
    NEG_INF = tirx.const(float("-inf"), f32)
    FULL_MASK = tirx.const(0xFFFFFFFF, "uint32")

    # ---- Python helpers the TVMScript parser evaluates (they build PrimExprs)
    def sw(row, chunk, width):
        """XOR swizzle of a 16-byte chunk index by row."""
        if width == 1:
            return chunk
        return tirx.bitwise_xor(chunk, tirx.floormod(row, width))

    def q_off(row, chunk):
        return row * QROW + sw(row, chunk, SWQ) * 8

    def k_off(slot, row, chunk):
        return K_BASE + slot * K_ELEMS + row * QROW + sw(row, chunk, SWQ) * 8

    def v_off(slot, row, chunk):
        return V_BASE + slot * V_ELEMS + row * VROW + sw(row, chunk, SWV) * 8

    def o_off(row, chunk):
        return row * DV + sw(row, chunk, SWO) * 8

    def within(count, index):
        """Guard of a tile copy whose chunk count need not divide the thread count."""
        if count % NT == 0:
            return tirx.const(True, "bool")
        return index < count

    copy_out = _gpu.copy_out_macro(BQ, CV, NT, S, o_off, within)

    def both(a, c):
        return tirx.And(a, c)

    def qk(kd):
        """Q fragment slot of k step kd: all of them in registers, else one reused."""
        return kd if Q_IN_REGS else 0

    mma = f"mma.sync.aligned.m16n8k16.row.col.f32.{ptx_t}.{ptx_t}.f32"
    if INT8:
        mma_s = "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32"
    elif QUANT:
        f8 = _wgmma_dense.FP8_PTX[QK_DT]
        mma_s = f"mma.sync.aligned.m16n8k32.row.col.f32.{f8}.{f8}.f32"
    else:
        mma_s = mma
    mma_o = (f"mma.sync.aligned.m16n8k32.row.col.f32.e4m3.{_wgmma_dense.FP8_PTX[V_DT]}.f32" if PV8 else mma)
    cvt = f"cvt.rn.{ptx_t}x2.f32"
    cvt8 = "cvt.rn.satfinite.e4m3x2.f32"
    ldm = "ldmatrix.sync.aligned.m8n8.x4.shared.b16"
    ldm_t = "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"
    cpa = "cp.async.cg.shared.global"
    ex2 = "ex2.approx.ftz.f32"

    @T.macro
    def tile_product(instr, acc, mt, nt, a_frag, ka, b_frag, half):
        """acc[mt, nt] (one m16n8 tile) += A (a_frag[mt, ka], four registers) x B (b_frag's pair
        ``half``): the ``mma.sync`` ``instr`` of S = Q Kᵀ or O += P V."""
        T.ptx[instr](acc[mt, nt, 0], acc[mt, nt, 1], acc[mt, nt, 2], acc[mt, nt, 3],
                     a_frag[mt, ka, 0], a_frag[mt, ka, 1], a_frag[mt, ka, 2], a_frag[mt, ka, 3],
                     b_frag[half * 2], b_frag[half * 2 + 1],
                     acc[mt, nt, 0], acc[mt, nt, 1], acc[mt, nt, 2], acc[mt, nt, 3])

    @T.macro
    def load_kv(blk, slot, smem, k, v, tx, b, hk):
        """cp.async copies of key block ``blk``'s K and V tiles into slot ``slot`` (zero fill past
        the keys; fp8 P·V: V's tile is d_v rows of block_k keys, transposed on the host)."""
        for it in T.unroll(K_ITERS):
            if within(BK * CQ, it * NT + tx):
                T.ptx[cpa](
                    T.address_of(smem[k_off(slot, (it * NT + tx) // CQ, (it * NT + tx) % CQ)]),
                    T.address_of(k[b, hk, T.min(blk * BK + (it * NT + tx) // CQ, TK - 1),
                                   (it * NT + tx) % CQ * EQ]),
                    16,
                    T.Cast("uint32", T.Select(blk * BK + (it * NT + tx) // CQ < TK, 16, 0)))
        for it in T.unroll(V_ITERS):
            if within(V_ROWS * CVL, it * NT + tx):
                if PV8:
                    T.ptx[cpa](
                        T.address_of(smem[v_off(slot, (it * NT + tx) // CVL, (it * NT + tx) % CVL)]),
                        T.address_of(v[b, hk, (it * NT + tx) // CVL,
                                       T.min(blk * BK + (it * NT + tx) % CVL * 16, TKP - 16)]),
                        16,
                        T.Cast("uint32", T.Select(blk * BK + (it * NT + tx) % CVL * 16 < TKP, 16, 0)))
                else:
                    T.ptx[cpa](
                        T.address_of(smem[v_off(slot, (it * NT + tx) // CV, (it * NT + tx) % CV)]),
                        T.address_of(v[b, hk, T.min(blk * BK + (it * NT + tx) // CV, TK - 1),
                                       (it * NT + tx) % CV * 8]),
                        16,
                        T.Cast("uint32", T.Select(blk * BK + (it * NT + tx) // CV < TK, 16, 0)))

    @T.prim_func(check_well_formed=False)
    def main(q: T.Buffer((B, H, S, D), QK_DT), k: T.Buffer((B, KVH, TK, D), QK_DT),
             v: T.Buffer(V_SHAPE, V_DT), out: T.Buffer((B, H, S, DV), dtype),
             lse: T.Buffer((B, H, S), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for qb_rev in T.thread_binding(NQB, thread="blockIdx.y"):
            for bh in T.thread_binding(B * H, thread="blockIdx.x"):
                for tx in T.thread_binding(NT, thread="threadIdx.x"):
                    smem = T.decl_buffer((SMEM_ELEMS,), dtype, scope="shared.dyn")
                    q_frag = T.decl_buffer((MT, KD if Q_IN_REGS else 1, 4), "uint32", scope="local")
                    k_frag = T.decl_buffer((4,), "uint32", scope="local")
                    v_frag = T.decl_buffer((4,), "uint32", scope="local")
                    p_frag = T.decl_buffer((MT, KK, 4), "uint32", scope="local")
                    s_acc = T.decl_buffer((MT, NKT, 4), "float32", scope="local")
                    o_acc = T.decl_buffer((MT, NDV, 4), "float32", scope="local")
                    m_run = T.decl_buffer((MT * 2,), "float32", scope="local")
                    l_run = T.decl_buffer((MT * 2,), "float32", scope="local")
                    m_use = T.decl_buffer((MT * 2,), "float32", scope="local")
                    red = T.decl_buffer((MT * 2,), "float32", scope="local")
                    # table mode: [0, count) the non-empty key blocks (kb * 2 + full), [NKB] the count
                    kv_list = T.decl_buffer((NKB + 1,), "int32", data=smem.data, elem_offset=LIST_BASE // 2,
                                            scope="shared.dyn")
                    cnt = T.decl_buffer((1,), "int32", scope="local")
                    tvs = T.decl_buffer((MAP_BATCH,), "int32", scope="local")     # tile-map entries
                    ent = T.decl_buffer((2,), "int32", scope="local")            # list entries
                    row_fold = T.decl_buffer((MT * 2 if QUANT else 1,), "float32", scope="local")
                    s_int = T.decl_buffer((MT, NKT, 4) if INT8 else (1,), "uint32", scope="local")
                    p16 = T.decl_buffer((2,), "uint16", scope="local")
                    b = bh // H
                    h = bh % H
                    hk = h // G
                    qb = NQB - 1 - qb_rev
                    q0 = qb * BQ
                    warp = tx // 32
                    lane = tx % 32
                    r0 = q0 + warp * RW                    # first query row of this warp
                    # ---- prologue: Q tile, (table mode) the key-block list, the first num_stages - 1
                    # key blocks
                    for it in T.unroll(Q_ITERS):
                        if within(BQ * CQ, it * NT + tx):
                            T.ptx[cpa](
                                T.address_of(smem[q_off((it * NT + tx) // CQ, (it * NT + tx) % CQ)]),
                                T.address_of(q[b, h, T.min(q0 + (it * NT + tx) // CQ, S - 1),
                                               (it * NT + tx) % CQ * EQ]),
                                16,
                                T.Cast("uint32", T.Select(q0 + (it * NT + tx) // CQ < S, 16, 0)))
                    if USE_TABLE:      # the key-block list of this query block (Q in flight)
                        row_list(qb, cnt, tvs, kv_list, warp, lane)
                    kb_lo = lo_of(q0)
                    kb_hi = hi_of(q0, cnt)
                    if QUANT:      # the dequantization of the thread's rows (q scale x k scale per head)
                        set_row_fold(row_fold, b, h, hk, r0, lane)
                    for st in T.unroll(NS - 1):
                        if USE_TABLE:
                            ent[1] = kv_list[T.min(kb_lo + st, NKB)]
                        if kb_lo + st < kb_hi:
                            load_kv(key_block(ent, 1, kb_lo + st), st, smem, k, v, tx, b, hk)
                        T.ptx["cp.async.commit_group"]()
                    # ---- running state
                    for r in T.unroll(MT * 2):
                        m_run[r] = NEG_INF
                        l_run[r] = T.float32(0)
                    for mt in T.unroll(MT):
                        for nd in T.unroll(NDV):
                            for e in T.unroll(4):
                                o_acc[mt, nd, e] = T.float32(0)
                    # ---- the key loop
                    for kb in T.serial(kb_lo, kb_hi):
                        T.ptx["cp.async.wait_group"](NS - 2)
                        T.tvm_storage_sync("shared")
                        if USE_TABLE:      # the key blocks of this step and of its prefetch
                            ent[0] = kv_list[kb]
                            ent[1] = kv_list[T.min(kb + NS - 1, NKB)]
                        if Q_IN_REGS:
                            if kb == kb_lo:
                                for mt in T.unroll(MT):
                                    for kd in T.unroll(KD):
                                        T.ptx[ldm](q_frag[mt, kd, 0], q_frag[mt, kd, 1], q_frag[mt, kd, 2],
                                                   q_frag[mt, kd, 3],
                                                   T.address_of(smem[q_off(warp * RW + mt * 16 + lane % 16,
                                                                           kd * 2 + lane // 16)]))
                        # prefetch key block kb + NS - 1 into the slot freed by block kb - 1
                        if kb + (NS - 1) < kb_hi:
                            load_kv(key_block(ent, 1, kb + NS - 1), (kb - kb_lo + NS - 1) % NS, smem, k, v, tx, b, hk)
                        T.ptx["cp.async.commit_group"]()
                        # ---- S = Q Kᵀ
                        for mt in T.unroll(MT):
                            for nt in T.unroll(NKT):
                                for e in T.unroll(4):
                                    if INT8:
                                        s_int[mt, nt, e] = T.uint32(0)
                                    else:
                                        s_acc[mt, nt, e] = T.float32(0)
                        for kd in T.unroll(KD):
                            if not Q_IN_REGS:
                                for mt in T.unroll(MT):
                                    T.ptx[ldm](q_frag[mt, 0, 0], q_frag[mt, 0, 1], q_frag[mt, 0, 2],
                                               q_frag[mt, 0, 3],
                                               T.address_of(smem[q_off(warp * RW + mt * 16 + lane % 16,
                                                                       kd * 2 + lane // 16)]))
                            for np_ in T.unroll(NKT // 2):
                                T.ptx[ldm](k_frag[0], k_frag[1], k_frag[2], k_frag[3],
                                           T.address_of(smem[k_off((kb - kb_lo) % NS,
                                                                   np_ * 16 + lane // 16 * 8 + lane % 8,
                                                                   kd * 2 + lane // 8 % 2)]))
                                for mt in T.unroll(MT):
                                    for half in T.unroll(2):
                                        if INT8:
                                            tile_product(mma_s, s_int, mt, np_ * 2 + half, q_frag, qk(kd), k_frag, half)
                                        else:
                                            tile_product(mma_s, s_acc, mt, np_ * 2 + half, q_frag, qk(kd), k_frag, half)
                        if INT8:      # exact int32 dot products -> f32 (the scales follow in scaled)
                            for mt in T.unroll(MT):
                                for nt in T.unroll(NKT):
                                    for e in T.unroll(4):
                                        s_acc[mt, nt, e] = T.Cast("float32", T.reinterpret("int32", s_int[mt, nt, e]))
                        # ---- score_mod, mask (partial tiles only), log2 domain
                        if tile_is_full(r0, key_block(ent, 0, kb), ent):
                            for mt in T.unroll(MT):
                                for nt in T.unroll(NKT):
                                    for e in T.unroll(4):
                                        s_acc[mt, nt, e] = scaled(
                                            s_acc[mt, nt, e], b, h,
                                            r0 + mt * 16 + lane // 4 + e // 2 * 8,
                                            key_block(ent, 0, kb) * BK + nt * 8 + lane % 4 * 2 + e % 2,
                                            mt * 2 + e // 2, row_fold)
                        else:
                            for mt in T.unroll(MT):
                                for nt in T.unroll(NKT):
                                    for e in T.unroll(4):
                                        s_acc[mt, nt, e] = masked(
                                            s_acc[mt, nt, e], b, h,
                                            r0 + mt * 16 + lane // 4 + e // 2 * 8,
                                            key_block(ent, 0, kb) * BK + nt * 8 + lane % 4 * 2 + e % 2,
                                            mt * 2 + e // 2, row_fold)
                        # ---- online softmax
                        for r in T.unroll(MT * 2):
                            red[r] = NEG_INF
                        for mt in T.unroll(MT):
                            for nt in T.unroll(NKT):
                                for e in T.unroll(4):
                                    red[mt * 2 + e // 2] = T.max(red[mt * 2 + e // 2], s_acc[mt, nt, e])
                        for r in T.unroll(MT * 2):
                            red[r] = T.max(red[r], T.cuda.__shfl_xor_sync(FULL_MASK, red[r], 1, 32))
                            red[r] = T.max(red[r], T.cuda.__shfl_xor_sync(FULL_MASK, red[r], 2, 32))
                            red[r] = T.max(m_run[r], to_log2(red[r], r, row_fold))   # new running max
                            m_use[r] = T.Select(red[r] == NEG_INF, T.float32(0), red[r])
                            T.ptx[ex2](m_run[r], m_run[r] - m_use[r])          # alpha (m_run reused)
                            l_run[r] = l_run[r] * m_run[r]
                        for mt in T.unroll(MT):
                            for nd in T.unroll(NDV):
                                for e in T.unroll(4):
                                    o_acc[mt, nd, e] = o_acc[mt, nd, e] * m_run[mt * 2 + e // 2]
                        for r in T.unroll(MT * 2):
                            m_run[r] = red[r]
                        for mt in T.unroll(MT):
                            for nt in T.unroll(NKT):
                                for e in T.unroll(4):
                                    T.ptx[ex2](s_acc[mt, nt, e], exp_arg(s_acc[mt, nt, e], m_use[mt * 2 + e // 2],
                                                                         mt * 2 + e // 2, row_fold))
                                    l_run[mt * 2 + e // 2] = l_run[mt * 2 + e // 2] + s_acc[mt, nt, e]
                        # ---- P (16-bit, in registers) as the A operand of P·V; fp8 P·V: e4m3
                        # quadruples, register e of k32 step kk holding row half e % 2 and the keys of
                        # n8 tiles 4 kk + 2 (e // 2) + {0, 1} (V's keys permuted to match on the host)
                        for mt in T.unroll(MT):
                            for kk in T.unroll(KK):
                                for e in T.unroll(4):
                                    if PV8:
                                        for g in T.unroll(2):
                                            T.ptx[cvt8](p16[g], s_acc[mt, kk * 4 + e // 2 * 2 + g, e % 2 * 2 + 1],
                                                        s_acc[mt, kk * 4 + e // 2 * 2 + g, e % 2 * 2])
                                        p_frag[mt, kk, e] = T.Cast("uint32", p16[0]) | T.shift_left(
                                            T.Cast("uint32", p16[1]), T.uint32(16))
                                    else:
                                        T.ptx[cvt](p_frag[mt, kk, e],
                                                   s_acc[mt, kk * 2 + e // 2, e % 2 * 2 + 1],
                                                   s_acc[mt, kk * 2 + e // 2, e % 2 * 2])
                        # ---- O += P V
                        for kk in T.unroll(KK):
                            for dp in T.unroll(NDV // 2):
                                if PV8:      # the transposed tile: output columns are its rows, as K's keys
                                    T.ptx[ldm](v_frag[0], v_frag[1], v_frag[2], v_frag[3],
                                               T.address_of(smem[v_off((kb - kb_lo) % NS,
                                                                       dp * 16 + lane // 16 * 8 + lane % 8,
                                                                       kk * 2 + lane // 8 % 2)]))
                                else:
                                    T.ptx[ldm_t](v_frag[0], v_frag[1], v_frag[2], v_frag[3],
                                                 T.address_of(smem[v_off((kb - kb_lo) % NS,
                                                                         kk * 16 + lane // 8 % 2 * 8 + lane % 8,
                                                                         dp * 2 + lane // 16)]))
                                for mt in T.unroll(MT):
                                    for half in T.unroll(2):
                                        tile_product(mma_o, o_acc, mt, dp * 2 + half, p_frag, kk, v_frag, half)
                    # ---- epilogue
                    T.ptx["cp.async.wait_group"](0)
                    T.tvm_storage_sync("shared")
                    for r in T.unroll(MT * 2):
                        l_run[r] = l_run[r] + T.cuda.__shfl_xor_sync(FULL_MASK, l_run[r], 1, 32)
                        l_run[r] = l_run[r] + T.cuda.__shfl_xor_sync(FULL_MASK, l_run[r], 2, 32)
                        red[r] = T.Select(l_run[r] > T.float32(0), T.float32(1) / l_run[r], T.float32(0))
                        if PV8:      # V's scale (per tensor or head)
                            red[r] = red[r] * scale_at(2, b, hk, 0)
                    # lse: the lane holding column pair 0 of each row writes it
                    for mt in T.unroll(MT):
                        for hf in T.unroll(2):
                            if both(lane % 4 == 0, r0 + mt * 16 + hf * 8 + lane // 4 < S):
                                lse[b, h, r0 + mt * 16 + hf * 8 + lane // 4] = T.Select(
                                    l_run[mt * 2 + hf] > T.float32(0),
                                    (m_run[mt * 2 + hf] + T.log2(l_run[mt * 2 + hf]) - T.float32(SHIFT))
                                    * T.float32(_LN2),
                                    NEG_INF)
                    # out tile -> shared (16-bit, swizzled) -> global with 16-byte copies
                    for mt in T.unroll(MT):
                        for nd in T.unroll(NDV):
                            for e in T.unroll(4):
                                smem[o_off(warp * RW + mt * 16 + lane // 4 + e // 2 * 8, nd) + lane % 4 * 2 + e % 2] = \
                                    T.Cast(dtype, o_acc[mt, nd, e] * red[mt * 2 + e // 2])
                    T.tvm_storage_sync("shared")
                    copy_out(0, q0, smem, out, tx, b, h)

    extra = ([TILE_MAP] if USE_TABLE else []) + SCALE_BUFFERS + CAPTURE_BUFFERS
    if extra:
        # in TVM 0.27 a buffer is itself a (buffer-typed) Var and can be a parameter
        main = tirx.PrimFunc(list(main.params) + extra, main.body, main.ret_type, main.attrs)
    tvm.tirx.analysis.verify_well_formed(main)
    return tvm.IRModule({"main": main})


# --------------------------------------------------------------------------- build / run


def cuda_target(arch: str):
    import tvm

    return tvm.target.Target({"kind": "cuda", "arch": arch})


def local_arch() -> Optional[str]:
    """sm_XY of the local GPU (sm_90a on Hopper), or None without a CUDA device."""
    try:
        import tvm

        dev = tvm.cuda(0)
        if not dev.exist:
            return None
        major, minor = (int(x) for x in str(dev.compute_version).split("."))
        return f"sm_{major}{minor}" + ("a" if major == 9 else "")
    except Exception:  # pragma: no cover - depends on the machine
        return None


def not_runnable(built: "CudaKernel") -> Optional[str]:
    """Why ``built`` cannot run on this machine, or None when it can."""
    here = local_arch()
    if here is None:
        return f"no CUDA device here (compiled for {built.arch})"
    if here.rstrip("a") != built.arch.rstrip("a"):
        return f"the local GPU is {here}, the kernel was compiled for {built.arch}"
    return None


@dataclass
class CudaKernel:
    """A built kernel: the TVM executable plus what ``run`` needs to allocate outputs."""

    spec: FlashKernelSpec
    config: CudaConfig
    arch: str
    executable: object
    compile_seconds: float
    # the tile map argument of a table-mode kernel whose mask is known at compile time
    tables: Optional[tuple] = None

    def extra_args(self, extra=(), tiles=None, device=None) -> list:
        """The arguments after (q, k, v, out, lse) of the call (see call_args)."""
        return self.call_args(extra, tiles, device)[1]

    def call_args(self, extra=(), tiles=None, device=None):
        """(function, arguments after (q, k, v, out, lse)): the tile map (table mode; from the
        captured inputs when the mask reads them, once per distinct data), the scales
        (fp8 kernels), the captured inputs.  ``extra`` is scales + captures (numpy).  The
        function is "main", or "main_small" (``config.small_below``) when the call's block
        mask is that sparse."""
        import tvm

        spec = self.spec
        wanted = [(n, sh, "float32") for n, sh in spec.scales] + list(spec.captures)
        if len(extra) != len(wanted):
            raise TargetError(f"kernel takes {len(wanted)} input(s) after q, k, v "
                              f"({', '.join(c[0] for c in wanted) or 'none'}), got {len(extra)}",
                              variant=spec.name or None)
        dev = device if device is not None else tvm.cuda(0)
        arrays = []
        for (name, shape, cdt), arr in zip(wanted, extra):
            a = np.ascontiguousarray(np.asarray(arr).astype(_np_dtype(cdt), copy=False))
            if a.shape != tuple(int(x) for x in shape):
                raise ShapeError(f"input {name} has shape {a.shape}, kernel expects {tuple(shape)}",
                                 variant=spec.name or None)
            arrays.append(a)
        out = []
        function = "main"
        if use_block_table(spec, self.config):
            if tiles is None and spec.runtime_tile_map is not None:
                caps = arrays[len(spec.scales):]
                key = tuple(a.tobytes() for a in caps)
                cache = self.__dict__.setdefault("_table_cache", {})
                if key not in cache:
                    if len(cache) >= 8:
                        cache.pop(next(iter(cache)))
                    cache[key] = runtime_tables(spec, self.config, caps)
                function, tables = cache[key]
            else:
                # (a kernel loaded from a file -- the tuner's -- has no tables kept: the spec's map)
                tables = (block_tables(spec, self.config, tiles, arrays[len(spec.scales):])
                          if tiles is not None or self.tables is None else self.tables)
            out += [tvm.runtime.tensor(np.ascontiguousarray(t), device=dev) for t in tables]
        elif tiles is not None:
            raise TargetError("this kernel takes no tile map", variant=spec.name or None)
        return function, out + [tvm.runtime.tensor(a, device=dev) for a in arrays]

    @property
    def mod(self):
        return self.executable.mod

    def __call__(self, *args):
        return self.executable["main"](*args)

    def function(self, name: str = "main"):
        return self.executable[name]


def runtime_tables(spec: FlashKernelSpec, config: CudaConfig, caps) -> tuple:
    """(function, tables) of a call whose block mask is computed from the captured inputs
    ``caps``: "main" with the config's tile map, or -- ``config.small_below`` set and at most
    that fraction of the map non-empty -- "main_small" with the map of its 64 x 32 tiles."""
    tiles = spec.runtime_tile_map(caps, config.block_q, config.block_k)
    below = small_below(spec, config)
    if below > 0 and float(np.mean(np.asarray(tiles) != 0)) <= below:
        small = small_config(config)
        return "main_small", block_tables(spec, small, spec.runtime_tile_map(caps, small.block_q, small.block_k),
                                          caps)
    return "main", block_tables(spec, config, tiles, caps)


def build(spec: FlashKernelSpec, config: Optional[CudaConfig] = None, arch: Optional[str] = None) -> CudaKernel:
    """Compile the kernel for ``arch`` (``sm_80``, ``sm_90a``, ...; default: the local GPU).

    nvcc must be on PATH; no GPU is needed to build."""
    import tvm

    if arch is None:
        arch = local_arch()
        if arch is None:
            raise TargetError("cuda target: no CUDA device here, so the architecture must be given "
                              "(--arch sm_90a for H100/H200, --arch sm_80 for A100; arch='sm_90a' in target_options from Python)", variant=spec.name or None)
    if config is None:
        config = default_config(spec, arch)
    if not (isinstance(arch, str) and arch.startswith("sm_") and arch[3:5].isdigit() and int(arch[3:5]) >= 80):
        raise TargetError(f"cuda target: arch {arch!r} is not supported (needs sm_80 or newer: "
                          "mma.sync m16n8k16 with bf16, cp.async)", variant=spec.name or None)
    validate_config(spec, config, arch)
    t0 = time.perf_counter()
    mod = lower(spec, config)
    if small_below(spec, config) > 0:       # the sparse calls' kernel, in the same module
        small = lower(spec, small_config(config))["main"].with_attr("global_symbol", "main_small")
        mod = tvm.IRModule({"main": mod["main"], "main_small": small})
    try:
        executable = tvm.compile(mod, target=cuda_target(arch))
    except Exception as exc:  # a TVM traceback never reaches a user
        text = str(exc).strip()
        raise TargetError(f"cuda target: TVM failed to build the kernel with {config} for {arch}: "
                          f"{text.splitlines()[-1] if text else exc}", variant=spec.name or None) from exc
    tables = (block_tables(spec, config) if use_block_table(spec, config) and spec.runtime_tile_map is None
              else None)
    return CudaKernel(spec, config, arch, executable, time.perf_counter() - t0, tables)


def kernel_notes(built: CudaKernel) -> list:
    """What the CLI says of this kernel beyond its config: the persistent kernel's tile order; a
    document mask's partial tiles masked by each row's key limits."""
    spec, config, notes = built.spec, built.config, []
    blocks = getattr(config, "persistent", 0)
    if blocks and isinstance(config, CudaConfig):
        nqb = -(-spec.q_len // config.block_q)
        tiles = nqb * spec.batch * spec.q_heads
        order = _wgmma_dense._OPTIONS.get("ws_order") or _wgmma_dense.ws_default_order(spec, config)
        how = {"cost": "query blocks heaviest-first across the heads, the blocks taking them in a snake",
               "sorted": "query blocks in the order of the table's last column -- ranked by cost, or last "
                         "first where the ranking would scatter documents -- across the heads, the blocks "
                         "taking them in a snake",
               "head": "head-major round robin, a head's query blocks in a row",
               "scheduled": "the tiles dealt on the host to the least loaded blocks, a rank of the table's "
                            "order column at a time (_layouts.tile_schedule), read from the table"}[order]
        rows = _wgmma_dense.ws_row_cost(spec, config)
        if rows is not None:
            busiest = _wgmma_dense.ws_busiest_block(order, rows, spec.batch * spec.q_heads, blocks,
                                                    _wgmma_dense.ws_static_ranks(spec, config))
            balance = f"busiest block {busiest:.2f}x the mean, by the tile map"
        else:
            balance = ("tiles of equal cost" if spec.tile_map is None else
                       "the tile map and its order are per call" if order in ("sorted", "scheduled")
                       else "the tile map is per call: not estimated")
        notes.append(f"persistent: {min(blocks, tiles)} thread blocks walk {tiles} tiles in order {order!r} "
                     f"({how}; {balance})")
    if row_limits(spec, config):
        ids = spec.captures[spec.row_runs.capture][0]
        notes.append(f"row limits: partial tiles of the document mask on '{ids}' compare each key with its row's "
                     f"first and last kept key (from each call's ids, with the tile map) in query blocks whose "
                     f"rows' ids form runs; elsewhere they read '{ids}'")
    elif (isinstance(config, CudaConfig) and config.mma == "wgmma" and _wgmma_dense.band_part_on(spec)
          and not (config.query_blocks > 1)):
        bp = spec.band_part
        band = " and ".join(x for x in (None if bp.lower_offset is None else f"kv - q >= {bp.lower_offset}",
                                        None if bp.upper_offset is None else f"kv - q <= {bp.upper_offset}") if x)
        notes.append(f"band part: the mask is the band {band} or affine comparisons; a partial tile on which "
                     "those are false for a warp's rows compares each key with the band's two limits, any "
                     "other evaluates the mask")
    return notes


def source(built: CudaKernel) -> str:
    """The generated CUDA C++ of the kernel."""
    for m in built.executable.mod.imports:
        try:
            text = m.inspect_source()
        except Exception:  # pragma: no cover
            continue
        if "__global__" in text:
            return text
    raise TargetError("cuda target: the built module holds no CUDA source")


def export_library(built: CudaKernel, path: str) -> None:
    """Write a shared library holding the host code and the CUDA source (compiled at load)."""
    built.executable.export_library(path)




def kernel_v(spec: FlashKernelSpec, config, v):
    """v as the kernel reads it: as given, or for fp8 P·V (wgmma and mma.sync kernels) the host
    prologue's transposed, key-permuted layout (``_cuda_wgmma_sparse.fp8_v_layout``)."""
    if fp8_v_transposed(spec, config):
        return _wgmma_sparse.fp8_v_layout(v)
    return v


def _shapes(spec: FlashKernelSpec):
    B, H, KVH = spec.batch, spec.q_heads, spec.kv_heads
    return ((B, H, spec.q_len, spec.head_dim), (B, KVH, spec.kv_len, spec.head_dim),
            (B, KVH, spec.kv_len, spec.head_dim_v), (B, H, spec.q_len, spec.head_dim_v),
            (B, H, spec.q_len))


def run(built: CudaKernel, q, k, v, *extra, tiles=None):
    """Run ``built`` on numpy arrays on CUDA device 0; returns ``(out, lse)`` as numpy arrays.
    ``extra``: the scales (fp8 kernels) and captured inputs (e.g. document ids)."""
    import tvm

    spec = built.spec
    dev = tvm.cuda(0)
    if not dev.exist:
        raise TargetError("cuda target: no CUDA device to run on", variant=spec.name or None)
    dt = _np_dtype(spec.dtype)
    q_shape, k_shape, v_shape, out_shape, lse_shape = _shapes(spec)
    args = []
    for name, arr, shape, adt in (("q", q, q_shape, _input_dtypes(spec)[0]), ("k", k, k_shape, _input_dtypes(spec)[1]),
                                  ("v", v, v_shape, _input_dtypes(spec)[2])):
        arr = np.ascontiguousarray(np.asarray(arr).astype(adt, copy=False))
        if arr.shape != shape:
            raise ShapeError(f"cuda target: {name} has shape {arr.shape}, kernel expects {shape}",
                             variant=spec.name or None)
        if name == "v":
            arr = kernel_v(spec, built.config, arr)
        args.append(tvm.runtime.tensor(arr, device=dev))
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, dtype=dt), device=dev)
    lse = tvm.runtime.tensor(np.full(lse_shape, np.nan, dtype=np.float32), device=dev)
    function, rest = built.call_args(extra, tiles, dev)
    built.function(function)(*args, out, lse, *rest)
    dev.sync()
    return out.numpy(), lse.numpy()


def measure_args(built: CudaKernel, spec: Optional[FlashKernelSpec] = None, device=None):
    """(function, arguments) of one timed call on random inputs: q, k, v (fp8 kernels: v in its
    kernel layout), out, lse, then the tile map, scales and captured inputs (8 sorted random
    document ids per captured tensor) -- what ``measure`` and the tuner's sampler launch."""
    import tvm

    spec = spec or built.spec
    dev = device if device is not None else tvm.cuda(0)
    dt = _np_dtype(spec.dtype)
    rng = np.random.default_rng(0)
    shapes = _shapes(spec)
    args = [tvm.runtime.tensor(np.asarray(kernel_v(spec, built.config, rng.standard_normal(s, dtype=np.float32)
                                                   .astype(adt)) if i == 2 else
                                          rng.standard_normal(s, dtype=np.float32).astype(adt)), device=dev)
            for i, (s, adt) in enumerate(zip(shapes[:3], _input_dtypes(spec)))]
    args.append(tvm.runtime.tensor(np.empty(shapes[3], dtype=dt), device=dev))
    args.append(tvm.runtime.tensor(np.empty(shapes[4], dtype=np.float32), device=dev))
    caps = measure_captures(spec, rng)
    scales = [np.full(shape, 0.05, np.float32) for _, shape in spec.scales]
    function, rest = built.call_args(scales + caps, device=dev)
    return function, args + rest


def measure_captures(spec: FlashKernelSpec, rng) -> list:
    """The captured inputs a tuning measurement runs on: 8 sorted random ids per tensor
    (document ids: 8 documents), so that a mask of captured data has its typical sparsity.
    The in-process tuner (measure_args) and the split flow's candidates (captures.npz) both
    take them from here."""
    return [np.sort(rng.integers(0, 8, shape)).astype(_np_dtype(cdt)) for _, shape, cdt in spec.captures]


def measure(built: CudaKernel, spec: Optional[FlashKernelSpec] = None, repeat: int = 20,
            number: int = 5) -> float:
    """Median seconds per call on random inputs (device time, outputs preallocated)."""
    import tvm

    spec = spec or built.spec
    dev = tvm.cuda(0)
    if not dev.exist:
        raise TargetError("cuda target: no CUDA device to measure on", variant=spec.name or None)
    function, args = measure_args(built, spec, dev)
    timer = built.executable.mod.time_evaluator(function, dev, number=number, repeat=repeat,
                                                min_repeat_ms=0)
    return float(statistics.median(timer(*args).results))


def flops(spec: FlashKernelSpec, density: float = 1.0) -> float:
    """Matrix flops of the two products (4 * B * H * S * T * (D + DV) / 2), times the mask density."""
    return 2.0 * spec.batch * spec.q_heads * spec.q_len * spec.kv_len * (spec.head_dim + spec.head_dim_v) * density
