"""ROCm backend: the FlashAttention-2 style GPU kernel on AMD matrix cores.

It is the CUDA kernel's tiling (``_gpu_flash.py`` holds what the two share: key-block
skipping, the element mask only on partial tiles, score_mod, online softmax in base 2,
the GQA head mapping, the spec checks) with what AMD hardware does differently:

* wavefronts of 64 lanes on CDNA (gfx90a, gfx94x), 32 on RDNA3 (gfx11); ``num_waves``
  wavefronts per work-group, each owning ``block_q / num_waves`` query rows (whole
  16-row tiles);
* matrix instructions through LLVM's AMDGPU intrinsics (the ones TVM's
  ``tvm.s_tir.tensor_intrin.rocm`` wraps, called directly since the kernel is written
  with explicit thread bindings): ``v_mfma_f32_16x16x16_{f16,bf16}`` on CDNA (4 elements of
  A and B per lane, 4 of C), ``v_wmma_f32_16x16x16_{f16,bf16}`` on gfx11 (16 of A and B per
  lane, the two half-waves holding copies; 8 of C);
* both products are computed transposed, Sᵀ = K·Qᵀ and Oᵀ = Vᵀ·Pᵀ, so that the lane that
  holds a query row's scores also holds that row's probabilities as the B operand of
  the second product and that row's output: the softmax state is one row per lane and
  16-row tile, the row max and sum are two (CDNA) or one (gfx11) ``ds_bpermute`` away;
* no cp.async: K and V tiles go global -> registers -> LDS (16-byte copies) between two
  barriers; LDS rows are padded by 16 bytes against bank conflicts; LDS is 64 KiB per
  work-group on every supported architecture;
* bf16 travels as 16-bit integers (TVM legalizes bf16 arithmetic on ROCm to fp32) and is
  rounded to nearest even by integer arithmetic in the epilogue.

Table mode (``use_block_table``: a mask that is no single band -- prefix-LM, strided, local +
global, chunked, document ids), as the CUDA kernels: the tile map ``int32 [NQB, NKB]`` (0 empty, 1
partial, 2 full; prune-sparsity's map, or per call from the captured tensors with
``spec.runtime_tile_map``) is the argument after ``lse``, scales and captures follow it.
Wavefront 0 compacts its query block's row into an LDS list of the non-empty key blocks (entries
key block * 2 + full; :func:`compact_row_macro`: the row's loads all issued before the first
``llvm.amdgcn.ballot``, a lane's slot from ``v_mbcnt_lo``/``v_mbcnt_hi``, wave64 or wave32), a
barrier, every lane reads the count (``readfirstlane``: a scalar loop bound), the key loop walks
the list and full tiles skip the element mask; empty tiles issue nothing.  Bands (causal,
sliding window) keep the key-block range walk, without a table.

Quantization (the quantize pass; ``--quantize int8|fp8|fp8_e5m2 [--quantize-pv]``): q and k
(and v with quant_pv) arrive as int8 / float8_e4m3fn / float8_e5m2 with f32 scales (arguments
after the tile map, before the captures -- the CUDA and CPU order).  **The 8-bit operands are
widened to the kernel's 16-bit type and multiplied on the 16-bit MFMA/WMMA** (memory traffic is
8-bit, the matrix instructions are 16-bit): every int8, e4m3fn and e5m2 value is an f16 and a
bf16 value, so the products are exact.  Not native int8/fp8 MFMA: gfx942's fp8 MFMA takes the
FNUZ fp8 encodings (bias 8/16, no negative zero), which differ from the OCP e4m3fn/e5m2 the IR
and ml_dtypes use; gfx90a and gfx11 have no fp8 matrix instructions at all.  (Native int8 matrix
instructions do exist -- ``v_mfma_i32_16x16x16i8`` on gfx90a, ``..16x16x32_i8`` on gfx942,
``v_wmma_i32_16x16x16_iu8`` on gfx11 -- with other k steps and operand layouts; int8 takes the
16-bit path too, for one lowering of all three formats: a possible speed-up not taken.)  fp8 is decoded by
bits (:func:`fp8_to_16_bits`, checked against ml_dtypes on all 256 codes; TVM 0.27's fp8 casts
are wrong for zero and subnormals).  Q fragments are widened from global memory into registers;
K/V tiles travel global -> registers as 8-bit (16 bytes a lane, all loads issued first), are
widened there, and LDS holds the widened 16-bit values (the same LDS layout as 16-bit inputs).
The dequantization is fused: the q scale (per row) and k scale (per head, or per key) multiply
the f32 scores before score_mod and the mask (``_gpu_flash.score_functions``, shared with the
CUDA kernels); a per-tensor/per-head v scale multiplies the output at the end, a per-key (block
granularity) v scale multiplies P per key after the row sum and before P·V.

Building needs ROCm's device bitcode and an ``ld.lld`` that knows code object v6 (LLVM
17 or newer; Debian: ``apt-get install lld-19 rocm-device-libs``); :func:`toolchain` finds
them and names what is missing.  Running needs a TVM built with ROCm and an AMD GPU;
without them a kernel is compiled, never run, and the CLI says so.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from attncc.errors import ConfigError, DTypeError, ShapeError, TargetError
from attncc.targets import _gpu_flash as gpu
from attncc.targets.spec import FlashKernelSpec
from attncc.targets.spec import input_numpy_dtypes as _input_dtypes, numpy_dtype as _np_dtype

NAME = "rocm"

__all__ = ["NAME", "RocmConfig", "Config", "RocmKernel", "ARCHS", "default_config", "validate_config",
           "lower", "build", "run", "measure", "assembly", "code_object", "export_library",
           "kernel_arguments", "argument_specs", "LAYOUTS", "kernel_metadata", "parse_metadata", "lds_bytes",
           "toolchain", "not_runnable"]

# the IR names of the dtypes the matrix cores take, and the dtype an f32 variant is traced in
SUPPORTED_DTYPES = ("f16", "bf16")
DEFAULT_DTYPE = "bf16"
DEFAULT_ARCH = "gfx942"
LDS_PAD = 8                      # 16-bit elements (16 bytes) of padding per LDS row
# attncc export (a folder for attncc.runtime) would need TVM's ROCm runtime, which the wheel lacks
NOT_EXPORTABLE = ("not supported yet: loading it needs a TVM runtime built with ROCm, which the "
                      "apache-tvm wheel is not; `attncc compile --target rocm --arch gfx942 -o k.hsaco` writes "
                      "the code object (kernel main_kernel) for HIP's hipModuleLoad")


@dataclass(frozen=True)
class Arch:
    """What the kernel needs to know of an AMD GPU architecture."""

    name: str
    wave: int                    # lanes per wavefront
    lds_bytes: int               # LDS per work-group
    matrix: str                  # "mfma" (CDNA) or "wmma" (RDNA3)
    product: str


ARCHS = {a.name: a for a in (
    Arch("gfx90a", 64, 64 * 1024, "mfma", "MI200 (CDNA2)"),
    Arch("gfx940", 64, 64 * 1024, "mfma", "MI300 (CDNA3)"),
    Arch("gfx941", 64, 64 * 1024, "mfma", "MI300 (CDNA3)"),
    Arch("gfx942", 64, 64 * 1024, "mfma", "MI300X/MI300A/MI325X (CDNA3)"),
    Arch("gfx1100", 32, 64 * 1024, "wmma", "Radeon RX 7900 / PRO W7900 (RDNA3)"),
    Arch("gfx1101", 32, 64 * 1024, "wmma", "Radeon RX 7800/7700 (RDNA3)"),
    Arch("gfx1102", 32, 64 * 1024, "wmma", "Radeon RX 7600 (RDNA3)"),
)}


def arch_info(arch: str, variant: Optional[str] = None) -> Arch:
    if arch not in ARCHS:
        raise TargetError(f"rocm target: arch {arch!r} is not supported (supported: {', '.join(ARCHS)}; "
                          "the kernel needs MFMA (CDNA2/3) or WMMA (RDNA3) with bf16)", variant=variant)
    return ARCHS[arch]


@dataclass(frozen=True)
class RocmConfig:
    """The tunable knobs of the ROCm kernel (frozen and hashable: keys build caches).

    block_q     query rows per work-group
    block_k     keys per key block (the K/V tile in LDS)
    num_waves   wavefronts per work-group; each owns block_q / num_waves rows (a multiple of 16)
    q_in_registers  keep the Q fragments in registers for the whole key loop (else re-read them,
                from global memory through the caches, at every key block: wide heads on gfx11,
                whose WMMA operands take 16 elements per lane)
    """

    block_q: int = 128
    block_k: int = 64
    num_waves: int = 4
    q_in_registers: bool = True


Config = RocmConfig


# --------------------------------------------------------------------------- configs


def lds_bytes(spec: FlashKernelSpec, config: RocmConfig) -> int:
    """LDS of one work-group, in bytes: the K and V tiles with padded rows (16-bit: quantized
    K/V are widened on the way in), and in table mode the key-block list (int32, NKB + 1)."""
    table = 4 * (-(-spec.kv_len // config.block_k) + 1) if use_block_table(spec) else 0
    return 2 * config.block_k * ((spec.head_dim + LDS_PAD) + (spec.head_dim_v + LDS_PAD)) + table


def registers_estimate(spec: FlashKernelSpec, config: RocmConfig, arch: str = DEFAULT_ARCH) -> int:
    """32-bit registers per lane held by fragments and accumulators (before addresses)."""
    a = ARCHS.get(arch, ARCHS[DEFAULT_ARCH])
    mt = config.block_q // config.num_waves // 16
    # elements per lane of a 16x16 f32 tile: 256 / wave; of a 16x16 16-bit operand: 4 or 16
    c = 256 // a.wave
    op = 4 if a.matrix == "mfma" else 16
    acc = mt * (spec.head_dim_v // 16) * c
    scores = mt * (config.block_k // 16) * c
    q = mt * (spec.head_dim // 16 if config.q_in_registers else 1) * op // 2
    return acc + scores + q + 4 * mt


def default_config(spec: FlashKernelSpec, arch: Optional[str] = None) -> RocmConfig:
    """4 wavefronts; 128 query rows (64 for short queries or when the accumulators would not
    fit); 64 keys per block (32 for heads over 128).  Untuned: no AMD GPU to tune on."""
    arch = arch if arch in ARCHS else DEFAULT_ARCH
    d = max(spec.head_dim, spec.head_dim_v)
    block_k = 64 if d <= 128 else 32
    block_q = 64 if spec.q_len <= 64 else 128
    cfg = RocmConfig(block_q=block_q, block_k=block_k, num_waves=4)
    if registers_estimate(spec, cfg, arch) > 192:
        cfg = RocmConfig(block_q=64, block_k=block_k, num_waves=4)
    if registers_estimate(spec, cfg, arch) > 192:
        cfg = RocmConfig(block_q=64, block_k=block_k, num_waves=4, q_in_registers=False)
    return cfg


def validate_config(spec: FlashKernelSpec, config: RocmConfig, arch: Optional[str] = None) -> None:
    """Raise :class:`ConfigError` with the reason if ``config`` cannot build ``spec``."""
    c = config
    a = ARCHS.get(arch or DEFAULT_ARCH) or arch_info(arch, spec.name or None)

    def bad(msg):
        raise ConfigError(f"rocm config {c}: {msg}", variant=spec.name or None)

    for name in ("block_q", "block_k", "num_waves"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            bad(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(c.q_in_registers, bool):
        bad(f"q_in_registers must be a bool, got {c.q_in_registers!r}")
    if c.num_waves not in (1, 2, 4, 8):
        bad(f"num_waves must be 1, 2, 4 or 8, got {c.num_waves}")
    if c.num_waves * a.wave > 1024:
        bad(f"{c.num_waves} wavefronts of {a.wave} lanes exceed 1024 work-items per work-group")
    if c.block_q % (16 * c.num_waves):
        bad(f"block_q ({c.block_q}) must be a multiple of 16 * num_waves ({16 * c.num_waves}): "
            "each wavefront owns whole 16-row tiles")
    if c.block_k % 16:
        bad(f"block_k ({c.block_k}) must be a multiple of 16 (the matrix instructions' k step)")
    for name in ("head_dim", "head_dim_v"):
        d = getattr(spec, name)
        if d % 16:
            raise ShapeError(f"rocm target: {name} ({d}) must be a multiple of 16 (the matrix "
                             "instructions' k step)", variant=spec.name or None)
    lds = lds_bytes(spec, c)
    if lds > a.lds_bytes:
        bad(f"needs {lds} bytes of LDS per work-group, over the {a.lds_bytes} of {a.name}: lower block_k")
    regs = registers_estimate(spec, c, a.name)
    if regs > 224:
        bad(f"holds about {regs} registers of fragments per lane on {a.name} (256 architected VGPRs): "
            "lower block_q per wavefront or block_k, or set q_in_registers=False")


QUANT_DTYPES = ("int8", "float8_e4m3fn", "float8_e5m2")


def _validate_spec(spec: FlashKernelSpec) -> None:
    gpu.validate_spec(spec, "rocm", unit="matrix cores (MFMA/WMMA)", captures_ok=True)
    if spec.quant_dtype is not None:
        if spec.quant_dtype not in QUANT_DTYPES:
            raise DTypeError(f"rocm target: --quantize {spec.quant_dtype} is not supported (int8, fp8 "
                             "e4m3fn or fp8 e5m2)", variant=spec.name or None)
        if len(spec.scales) != (3 if spec.quant_pv else 2):
            raise TargetError(f"rocm target: a quantized kernel takes {3 if spec.quant_pv else 2} scales "
                              f"(q, k{', v' if spec.quant_pv else ''}), the spec has {len(spec.scales)}",
                              variant=spec.name or None)


def use_block_table(spec: FlashKernelSpec, config=None) -> bool:
    """True when the kernel takes the tile map (int32 [NQB, NKB]: 0 empty, 1 partial, 2 full)
    after ``lse``: a mask that is no single band (prefix-LM, strided, local + global, chunked,
    document ids) whose tile map is known when compiling or computed per call from the captured
    tensors.  Bands (causal, sliding window) walk their key-block range without a table."""
    return gpu.use_block_table(spec)


def block_tables(spec: FlashKernelSpec, config: RocmConfig, tiles=None):
    """The kernel's tile-map argument (int32 [NQB, NKB]), as ``cuda.block_tables``."""
    return (gpu.tile_map_argument(spec, config.block_q, config.block_k, tiles),)


# --------------------------------------------------------------------------- 8-bit operands

def fp8_to_16_bits(u, fmt: str, dst: str, where=np.where):
    """The bits (int, 0..0xFFFF) of the fp8 code ``u`` (0..255, OCP ``float8_e4m3fn`` or
    ``float8_e5m2``) as ``dst`` ("float16" or "bfloat16"): exact, every fp8 value being a 16-bit
    value.  Integer arithmetic only, so the same formula runs on numpy arrays (``where`` =
    np.where; tests compare all 256 codes with ml_dtypes) and in the kernel (``where`` =
    tirx.Select on int32 expressions) -- TVM 0.27's fp8 casts are wrong for zero and subnormals.
    e5m2 is the top byte of an f16 (same exponent field); otherwise the exponent is rebiased,
    the mantissa shifted, and subnormal fp8 values (all normal in the 16-bit type) normalized."""
    if fmt == "float8_e5m2" and dst == "float16":
        return u << 8
    eb, mb, bias = (4, 3, 7) if fmt == "float8_e4m3fn" else (5, 2, 15)
    EB, MB, BIAS = (5, 10, 15) if dst == "float16" else (8, 7, 127)
    s = (u >> 7) << 15
    e = (u >> mb) & ((1 << eb) - 1)
    m = u & ((1 << mb) - 1)
    normal = s | ((e + (BIAS - bias)) << MB) | (m << (MB - mb))
    # a subnormal m * 2^(1 - bias - mb) with its leading bit at p: exponent p + 1 - bias - mb
    sub = s
    for p in range(mb):           # m in [2^p, 2^(p+1)): the leading bit dropped, the rest shifted up
        field = ((p + 1 - bias - mb + BIAS) << MB) | ((m << (MB - p)) & ((1 << MB) - 1))
        sub = where(m >= (1 << p), s | field, sub)
    out = where(e == 0, sub, normal)
    top = (1 << eb) - 1
    if fmt == "float8_e4m3fn":    # no infinities; S.1111.111 is NaN
        nan = s | (((1 << EB) - 1) << MB) | (1 << (MB - 1))
        return where((e == top) & (m == (1 << mb) - 1), nan, out)
    special = s | (((1 << EB) - 1) << MB) | (m << (MB - mb))      # inf (m = 0) and NaN
    return where(e == top, special, out)


def _widen(x, src: str, dtype: str):
    """An 8-bit operand element (``src``: int8, or fp8 read as uint8) -> the kernel's 16-bit dtype,
    as int16 bits; exact (every int8, e4m3fn and e5m2 value is an f16 and a bf16 value)."""
    from tvm import tirx

    if src == "int8":
        if dtype == "float16":
            return tirx.call_intrin("int16", "tirx.reinterpret", tirx.Cast("float16", x))
        u = tirx.call_intrin("uint32", "tirx.reinterpret", tirx.Cast("float32", x))   # exact: no rounding
        return tirx.Cast("int16", tirx.Cast("uint16", tirx.shift_right(u, tirx.const(16, "uint32"))))
    bits = fp8_to_16_bits(tirx.Cast("int32", x), src, dtype, where=tirx.Select)
    return tirx.Cast("int16", tirx.Cast("uint16", bits))


# --------------------------------------------------------------------------- lowering


@dataclass(frozen=True)
class FragmentLayout:
    """Where the kernel keeps a 16x16x16 matrix instruction's tiles, lane by lane.

    Operand element ``e`` of lane ``l`` (A: row ``l % 16``; B: column ``l % 16``) is at
    ``k = k0(l) + e``; accumulator element ``e`` of lane ``l`` is column ``l % 16``, row
    ``acc_row(l, e)``.  With Sᵀ = K·Qᵀ a lane's accumulators are one query row (``l % 16``)
    and keys ``acc_row``; the lanes holding the rest of that row are ``l ^ x`` for x in
    ``row_xor``.  These match the instructions' definitions: TVM's MFMA layouts
    (``tvm.s_tir.tensor_intrin.rocm``) and AMD's RDNA3 WMMA layout (16-bit A/B: lane ``l``
    holds row/column ``l % 16``, all 16 k, the half-waves alike; f32 C: element ``e`` is row
    ``2e + l // 16``); ``tests/test_rocm.py`` composes them into attention in numpy."""

    matrix: str
    wave: int
    operand_elems: int
    acc_elems: int
    row_xor: tuple

    def k0(self, lane):
        return 0 if self.matrix == "wmma" else lane // 16 * 4

    def acc_row(self, lane, e):
        return e * 2 + lane // 16 if self.matrix == "wmma" else lane // 16 * 4 + e


LAYOUTS = {"mfma": FragmentLayout("mfma", 64, 4, 4, (16, 32)),
           "wmma": FragmentLayout("wmma", 32, 16, 8, (16,))}


def _matrix_intrinsic(arch: Arch, dtype: str) -> str:
    t = "f16" if dtype == "float16" else "bf16"
    if arch.matrix == "wmma":
        return f"llvm.amdgcn.wmma.f32.16x16x16.{t}"
    return "llvm.amdgcn.mfma.f32.16x16x16f16" if t == "f16" else "llvm.amdgcn.mfma.f32.16x16x16bf16.1k"


def compact_row_macro(tile_map, nkb: int, wave: int):
    """Table mode's ``compact_row(row, base, cnt, tvs, kv_list, lane)`` for AMD wavefronts (the
    CUDA kernels' is ``_cuda_wgmma.compact_row_macro``; ``_gpu_flash.row_list_macro`` calls either)
    and the size of its ``tvs`` register buffer.

    One wavefront turns row ``row`` of the tile map (int32 [NQB, NKB]: 0 empty, 1 partial, 2 full)
    into the list of its non-empty key blocks at ``kv_list[base:]`` (entries key block * 2 + full,
    in key order), their count at ``kv_list[base + NKB]``.  The row is read in chunks of ``wave``
    entries, ``MAP_BATCH`` chunks at a time, all of a batch's loads issued (clamped, selected: no
    branch) before its first ballot -- one memory latency per batch, not per chunk.  Per chunk:
    ``llvm.amdgcn.ballot`` (i64 on wave64, i32 on wave32) of the non-empty lanes; a lane's slot is
    the count so far plus the non-empty lanes below it (``llvm.amdgcn.mbcnt.lo`` over ballot bits
    0-31, then on wave64 ``mbcnt.hi`` over bits 32-63: the lanes below lane l are the bits under
    ``(1 << l) - 1``); the count grows by the ballot's popcount (uniform: a scalar)."""
    from tvm import tirx
    from tvm.script import tirx as T

    NKB, WS = nkb, wave
    TILE_MAP = tile_map
    NKC = -(-NKB // WS)              # wavefront-sized chunks of a tile-map row
    MAP_BATCH = min(NKC, 8)          # chunks loaded together
    NKC_OUTER = -(-NKC // MAP_BATCH)
    BALLOT_T = "uint64" if WS == 64 else "uint32"

    def ballot(cond):
        return tirx.call_llvm_intrin(BALLOT_T, f"llvm.amdgcn.ballot.i{WS}", cond)

    def lanes_below(mask):
        """Set bits of ``mask`` (a ballot) at lanes below this one (v_mbcnt_lo / v_mbcnt_hi)."""
        lo = tirx.Cast("int32", tirx.Cast("uint32", tirx.bitwise_and(mask, tirx.const(0xFFFFFFFF, BALLOT_T))))
        below = tirx.call_llvm_pure_intrin("int32", "llvm.amdgcn.mbcnt.lo", lo, tirx.const(0, "int32"))
        if WS == 64:
            hi = tirx.Cast("int32", tirx.Cast("uint32", tirx.shift_right(mask, tirx.const(32, BALLOT_T))))
            below = tirx.call_llvm_pure_intrin("int32", "llvm.amdgcn.mbcnt.hi", hi, below)
        return below

    def count(mask):
        return tirx.Cast("int32", tirx.call_llvm_pure_intrin(BALLOT_T, f"llvm.ctpop.i{WS}", mask))

    @T.macro
    def compact_row(row, base, cnt, tvs, kv_list, lane):
        cnt[0] = 0
        for c0 in T.serial(NKC_OUTER):
            for c1 in T.unroll(MAP_BATCH):
                tvs[c1] = T.Select((c0 * MAP_BATCH + c1) * WS + lane < NKB,
                                   TILE_MAP[row, T.min((c0 * MAP_BATCH + c1) * WS + lane, NKB - 1)], 0)
            for c1 in T.unroll(MAP_BATCH):
                mask = ballot(tvs[c1] != 0)
                if tvs[c1] != 0:
                    kv_list[base + cnt[0] + lanes_below(mask)] = \
                        ((c0 * MAP_BATCH + c1) * WS + lane) * 2 + T.Select(tvs[c1] == 2, 1, 0)
                cnt[0] = cnt[0] + count(mask)
        if lane == 0:
            kv_list[base + NKB] = cnt[0]

    return compact_row, MAP_BATCH


def lower(spec: FlashKernelSpec, config: RocmConfig, arch: str = DEFAULT_ARCH):
    """The kernel as a ``tvm.IRModule`` whose ``main`` takes ``(q, k, v, out, lse)``."""
    import tvm
    from tvm import tirx
    from tvm.script import tirx as T

    _validate_spec(spec)
    a = arch_info(arch, spec.name or None)
    validate_config(spec, config, arch)

    B, H, KVH = spec.batch, spec.q_heads, spec.kv_heads
    S, TK, D, DV = spec.q_len, spec.kv_len, spec.head_dim, spec.head_dim_v
    dtype = spec.dtype
    BQ, BK, NW = config.block_q, config.block_k, config.num_waves
    WS = a.wave
    WMMA = a.matrix == "wmma"
    NT = NW * WS                       # work-items per work-group
    RW = BQ // NW                      # query rows per wavefront
    MT = RW // 16                      # 16-row tiles per wavefront
    NKT = BK // 16                     # 16-key tiles per key block
    KD = D // 16                       # k16 steps of Q·Kᵀ
    NDV = DV // 16                     # 16-wide tiles of the output
    LAYOUT = LAYOUTS[a.matrix]
    OPE = LAYOUT.operand_elems         # 16-bit operand elements per lane
    ACE = LAYOUT.acc_elems             # f32 accumulator elements per lane
    CQ, CV = D // 8, DV // 8           # 16-byte chunks per row of K and of V
    KS, VS = D + LDS_PAD, DV + LDS_PAD  # LDS row strides (16-bit elements)
    K_ITERS, V_ITERS = -(-(BK * CQ) // NT), -(-(BK * CV) // NT)
    # captured inputs (document ids, ...): kernel parameters after lse, read by score/mask
    f32 = "float32"
    CAPTURE_BUFFERS = [tirx.decl_buffer(tuple(shape), cdt, name) for name, shape, cdt in spec.captures]
    ix = gpu.FlashIndexing(spec, BQ, BK, RW, tuple(CAPTURE_BUFFERS))
    Q_IN_REGS = config.q_in_registers

    def qk(kd):
        """Q fragment slot of k step kd: all of them in registers, else one reused."""
        return kd if Q_IN_REGS else 0

    NQB = ix.q_blocks
    NKB = ix.k_blocks
    # table mode (a mask that is no band): the tile map [NQB, NKB] is the argument after lse;
    # wavefront 0 compacts the query block's row into an LDS list of the non-empty key blocks
    # (entries key block * 2 + full), the key loop walks the list, full tiles skip the mask
    USE_TABLE = use_block_table(spec)
    TILE_MAP = tirx.decl_buffer((NQB, NKB), "int32", "tile_map") if USE_TABLE else None
    compact_row, MAP_BATCH = compact_row_macro(TILE_MAP, NKB, WS) if USE_TABLE else (None, 1)
    row_list = gpu.row_list_macro(compact_row, NKB) if USE_TABLE else None
    # quantized inputs (the quantize pass): q, k (and v with quant_pv) 8-bit with f32 scales
    # (arguments after the tile map, before the captures), widened to the 16-bit dtype on the way
    # into registers / LDS; the q scale (per row) and k scale (per head or key) multiply the f32
    # scores, a per-tensor/head v scale the output, a per-key v scale P before P·V
    QUANT = spec.quant_dtype is not None
    PV8 = QUANT and spec.quant_pv
    SRC8 = spec.quant_dtype           # (None unless QUANT)
    VIEW8 = "int8" if spec.quant_dtype == "int8" else "uint8"
    QK_DT = spec.quant_dtype if QUANT else dtype
    V_DT = spec.quant_dtype if PV8 else dtype
    SCALE_BUFFERS = [tirx.decl_buffer(tuple(int(x) for x in shape), f32, name) for name, shape in spec.scales]
    scale_at = gpu.scale_reader(SCALE_BUFFERS)
    K_PER_KEY = QUANT and int(SCALE_BUFFERS[1].shape[2]) > 1
    V_PER_KEY = PV8 and int(SCALE_BUFFERS[2].shape[2]) > 1
    scaled, to_log2, exp_arg, masked = gpu.score_functions(ix, QUANT, K_PER_KEY, scale_at, spec.group)
    ROW_FOLD = float(spec.scale) * gpu.LOG2E if ix.fold_scale else 1.0
    CQ8, CV8 = D // 16, DV // 16       # 16-byte chunks per row of 8-bit K and V
    K8_ITERS, V8_ITERS = -(-(BK * CQ8) // NT), -(-(BK * CV8) // NT)

    def key_block(ent, pos):
        """The key block at loop position ``pos``: itself, or (table mode) that of list entry ent[0]."""
        return tirx.shift_right(ent[0], 1) if USE_TABLE else pos

    def tile_is_full(r0, kb, ent):
        if USE_TABLE:      # the tile map says full for the whole query block
            return ix.entry_is_full(ent[0], kb)
        return ix.tile_is_full(r0, kb)

    def uniform(x):
        """x, known equal on every lane of the wavefront, as a scalar (readfirstlane)."""
        return tirx.call_llvm_pure_intrin("int32", "llvm.amdgcn.readfirstlane", x)

    def widen(x, src):
        return _widen(x, src, dtype)

    mfma = _matrix_intrinsic(a, dtype)
    op_vec = f"float16x{OPE}" if dtype == "float16" else f"int16x{OPE}"
    acc_vec = f"float32x{ACE}"

    NEG_INF = tirx.const(float("-inf"), f32)

    def within(count, index):
        if count % NT == 0:
            return tirx.const(True, "bool")
        return index < count

    def operand(buf, *idx):
        """A 16x16 operand fragment (OPE 16-bit lanes' elements) as the intrinsic's vector type."""
        v = buf[idx + (tirx.Ramp(0, 1, OPE),)]
        return tirx.call_intrin(op_vec, "tirx.reinterpret", v) if dtype == "float16" else v

    def matmul(acc, a_frag, b_frag):
        """acc (ACE f32 per lane) += A · B on one 16x16x16 tile."""
        if WMMA:
            return tirx.call_llvm_pure_intrin(acc_vec, mfma, a_frag, b_frag, acc)
        return tirx.call_llvm_pure_intrin(acc_vec, mfma, a_frag, b_frag, acc,
                                          tirx.const(0, "int32"), tirx.const(0, "int32"),
                                          tirx.const(0, "int32"))

    def shfl_xor(x, lane, mask):
        """x of lane ``lane ^ mask`` in this wavefront (ds_bpermute)."""
        got = tirx.call_llvm_pure_intrin("int32", "llvm.amdgcn.ds.bpermute",
                                         tirx.bitwise_xor(lane, mask) * 4,
                                         tirx.call_intrin("int32", "tirx.reinterpret", x))
        return tirx.call_intrin(f32, "tirx.reinterpret", got)

    def to16(x):
        """f32 -> the kernel's 16-bit dtype, as int16 bits (bf16: round to nearest even)."""
        if dtype == "float16":
            return tirx.call_intrin("int16", "tirx.reinterpret", tirx.Cast("float16", x))
        u = tirx.call_intrin("uint32", "tirx.reinterpret", x)
        r = tirx.shift_right(u + tirx.const(0x7FFF, "uint32")
                             + tirx.bitwise_and(tirx.shift_right(u, tirx.const(16, "uint32")),
                                                tirx.const(1, "uint32")),
                             tirx.const(16, "uint32"))
        return tirx.Cast("int16", tirx.Cast("uint16", r))

    key_in_tile = LAYOUT.acc_row       # key (in a 16-key tile) of accumulator element e (Sᵀ)
    a_k0 = LAYOUT.k0                   # first k (in a k16 step) of a lane's operand elements
    XOR_STEPS = LAYOUT.row_xor

    @T.macro
    def load_q(q_frag, slot, q16, mt, kd, b, h, r0, lane):
        """The Q fragment of row tile mt and k step kd (the B operand of Sᵀ = K·Qᵀ) from global
        memory into q_frag[mt, slot] (quantized q: widened to the 16-bit type)."""
        for e in T.vectorized(OPE):
            if QUANT:
                q_frag[mt, slot, e] = widen(q16[b, h, T.min(r0 + mt * 16 + lane % 16, S - 1),
                                                kd * 16 + a_k0(lane) + e], SRC8)
            else:
                q_frag[mt, slot, e] = q16[b, h, T.min(r0 + mt * 16 + lane % 16, S - 1), kd * 16 + a_k0(lane) + e]

    @T.macro
    def stage16(src, lds, iters, chunks, stride, kb, b, hk, tx):
        """Key block kb's K or V tile (16-bit, ``chunks`` 16-byte chunks a row) into LDS rows of
        ``stride`` elements, through registers."""
        for it in T.unroll(iters):
            if within(BK * chunks, it * NT + tx):
                for e in T.vectorized(8):
                    lds[(it * NT + tx) // chunks * stride + (it * NT + tx) % chunks * 8 + e] = \
                        src[b, hk, T.min(kb * BK + (it * NT + tx) // chunks, TK - 1), (it * NT + tx) % chunks * 8 + e]

    @T.macro
    def stage8(src, r8, lds, iters, chunks, stride, kb, b, hk, tx):
        """The same for an 8-bit tile: every lane's 16-byte loads first (``r8``), then widened to
        the 16-bit type into LDS."""
        for it in T.unroll(iters):
            if within(BK * chunks, it * NT + tx):
                for e in T.vectorized(16):
                    r8[it, e] = src[b, hk, T.min(kb * BK + (it * NT + tx) // chunks, TK - 1),
                                    (it * NT + tx) % chunks * 16 + e]
        for it in T.unroll(iters):
            if within(BK * chunks, it * NT + tx):
                for e in T.vectorized(16):
                    lds[(it * NT + tx) // chunks * stride + (it * NT + tx) % chunks * 16 + e] = widen(r8[it, e], SRC8)

    @T.prim_func(check_well_formed=False)   # checked below, once the captures are parameters
    def main(q: T.Buffer((B, H, S, D), QK_DT), k: T.Buffer((B, KVH, TK, D), QK_DT),
             v: T.Buffer((B, KVH, TK, DV), V_DT), out: T.Buffer((B, H, S, DV), dtype),
             lse: T.Buffer((B, H, S), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        # 16-bit views: data moves as bits (TVM computes bf16 in fp32 on ROCm); quantized q/k/v:
        # 8-bit views (int8, or fp8 codes as uint8), widened by _widen where they are read
        q16 = T.decl_buffer((B, H, S, D), VIEW8 if QUANT else "int16", data=q.data)
        k16 = T.decl_buffer((B, KVH, TK, D), VIEW8 if QUANT else "int16", data=k.data)
        v16 = T.decl_buffer((B, KVH, TK, DV), VIEW8 if PV8 else "int16", data=v.data)
        o16 = T.decl_buffer((B, H, S, DV), "int16", data=out.data)
        for qb_rev in T.thread_binding(NQB, thread="blockIdx.y"):
            for bh in T.thread_binding(B * H, thread="blockIdx.x"):
                for tx in T.thread_binding(NT, thread="threadIdx.x"):
                    k_lds = T.decl_buffer((BK * KS,), "int16", scope="shared")
                    v_lds = T.decl_buffer((BK * VS,), "int16", scope="shared")
                    q_frag = T.decl_buffer((MT, KD if Q_IN_REGS else 1, OPE), "int16", scope="local")
                    k_frag = T.decl_buffer((OPE,), "int16", scope="local")
                    v_frag = T.decl_buffer((OPE,), "int16", scope="local")
                    p_frag = T.decl_buffer((MT, NKT, OPE), "int16", scope="local")
                    s_acc = T.decl_buffer((MT, NKT, ACE), "float32", scope="local")
                    o_acc = T.decl_buffer((MT, NDV, ACE), "float32", scope="local")
                    m_run = T.decl_buffer((MT,), "float32", scope="local")
                    l_run = T.decl_buffer((MT,), "float32", scope="local")
                    m_use = T.decl_buffer((MT,), "float32", scope="local")
                    red = T.decl_buffer((MT,), "float32", scope="local")
                    row_fold = T.decl_buffer((MT,), "float32", scope="local")   # dequantization per row
                    k8 = T.decl_buffer((K8_ITERS, 16), VIEW8, scope="local")      # 8-bit K / V chunks
                    v8 = T.decl_buffer((V8_ITERS, 16), VIEW8, scope="local")
                    # table mode: [0, count) the non-empty key blocks (kb * 2 + full), [NKB] the count
                    kv_list = T.decl_buffer((NKB + 1 if USE_TABLE else 1,), "int32", scope="shared")
                    cnt = T.decl_buffer((1,), "int32", scope="local")
                    tvs = T.decl_buffer((MAP_BATCH,), "int32", scope="local")     # tile-map entries
                    ent = T.decl_buffer((1,), "int32", scope="local")            # the list entry
                    b = bh // H
                    h = bh % H
                    hk = ix.kv_head(h)
                    qb = NQB - 1 - qb_rev
                    q0 = qb * BQ
                    wave = tx // WS
                    lane = tx % WS
                    r0 = q0 + wave * RW                    # first query row of this wavefront
                    # ---- Q fragments straight from global memory (the B operand of Sᵀ = K·Qᵀ)
                    if Q_IN_REGS:
                        for mt in T.unroll(MT):
                            for kd in T.unroll(KD):
                                load_q(q_frag, kd, q16, mt, kd, b, h, r0, lane)
                    if QUANT:          # q scale of the lane's row (x k scale per head, x scale log2 e)
                        for mt in T.unroll(MT):
                            row_fold[mt] = scale_at(0, b, h, r0 + mt * 16 + lane % 16) * (
                                T.float32(1) if K_PER_KEY else scale_at(1, b, hk, 0)) * T.float32(ROW_FOLD)
                    if USE_TABLE:      # the key-block list of this query block (Q in flight)
                        row_list(qb, cnt, tvs, kv_list, wave, lane)
                        cnt[0] = uniform(cnt[0])
                    kb_lo = T.int32(0) if USE_TABLE else ix.block_lo(q0)
                    kb_hi = cnt[0] if USE_TABLE else ix.block_hi(q0)
                    # ---- running state: one query row per lane and 16-row tile
                    for mt in T.unroll(MT):
                        m_run[mt] = NEG_INF
                        l_run[mt] = T.float32(0)
                        for nd in T.unroll(NDV):
                            for e in T.unroll(ACE):
                                o_acc[mt, nd, e] = T.float32(0)
                    # ---- the key loop
                    for pos in T.serial(kb_lo, kb_hi):
                        if USE_TABLE:
                            ent[0] = uniform(kv_list[pos])
                        kb = key_block(ent, pos)
                        T.tvm_storage_sync("shared")           # the previous block's reads are done
                        if QUANT:      # 16 bytes of 8-bit K a lane, all loads issued, then widened into LDS
                            stage8(k16, k8, k_lds, K8_ITERS, CQ8, KS, kb, b, hk, tx)
                        else:
                            stage16(k16, k_lds, K_ITERS, CQ, KS, kb, b, hk, tx)
                        if PV8:
                            stage8(v16, v8, v_lds, V8_ITERS, CV8, VS, kb, b, hk, tx)
                        else:
                            stage16(v16, v_lds, V_ITERS, CV, VS, kb, b, hk, tx)
                        T.tvm_storage_sync("shared")
                        # ---- Sᵀ = K Qᵀ (A: 16 keys x k16 of K; B: k16 x 16 query rows of Qᵀ)
                        for mt in T.unroll(MT):
                            for nt in T.unroll(NKT):
                                for e in T.unroll(ACE):
                                    s_acc[mt, nt, e] = T.float32(0)
                        for kd in T.unroll(KD):
                            if not Q_IN_REGS:
                                for mt in T.unroll(MT):
                                    load_q(q_frag, 0, q16, mt, kd, b, h, r0, lane)
                            for nt in T.unroll(NKT):
                                for e in T.vectorized(OPE):
                                    k_frag[e] = k_lds[(nt * 16 + lane % 16) * KS + kd * 16 + a_k0(lane) + e]
                                for mt in T.unroll(MT):
                                    s_acc[mt, nt, T.ramp(0, 1, ACE)] = matmul(
                                        s_acc[mt, nt, T.ramp(0, 1, ACE)], operand(k_frag),
                                        operand(q_frag, mt, qk(kd)))
                        # ---- score_mod, mask (partial tiles only), log2 domain
                        if tile_is_full(r0, kb, ent):
                            for mt in T.unroll(MT):
                                for nt in T.unroll(NKT):
                                    for e in T.unroll(ACE):
                                        s_acc[mt, nt, e] = scaled(
                                            s_acc[mt, nt, e], b, h, r0 + mt * 16 + lane % 16,
                                            kb * BK + nt * 16 + key_in_tile(lane, e), mt, row_fold)
                        else:
                            for mt in T.unroll(MT):
                                for nt in T.unroll(NKT):
                                    for e in T.unroll(ACE):
                                        s_acc[mt, nt, e] = masked(
                                            s_acc[mt, nt, e], b, h, r0 + mt * 16 + lane % 16,
                                            kb * BK + nt * 16 + key_in_tile(lane, e), mt, row_fold)
                        # ---- online softmax (the lanes of a row differ in lane // 16)
                        for mt in T.unroll(MT):
                            red[mt] = NEG_INF
                            for nt in T.unroll(NKT):
                                for e in T.unroll(ACE):
                                    red[mt] = T.max(red[mt], s_acc[mt, nt, e])
                            for x in T.unroll(len(XOR_STEPS)):
                                red[mt] = T.max(red[mt], shfl_xor(red[mt], lane, XOR_STEPS[0] << x))
                            red[mt] = T.max(m_run[mt], to_log2(red[mt], mt, row_fold))   # new running max
                            m_use[mt] = T.Select(red[mt] == NEG_INF, T.float32(0), red[mt])
                            m_run[mt] = T.exp2(m_run[mt] - m_use[mt])            # alpha
                            l_run[mt] = l_run[mt] * m_run[mt]
                            for nd in T.unroll(NDV):
                                for e in T.unroll(ACE):
                                    o_acc[mt, nd, e] = o_acc[mt, nd, e] * m_run[mt]
                            m_run[mt] = red[mt]
                            for nt in T.unroll(NKT):
                                for e in T.unroll(ACE):
                                    s_acc[mt, nt, e] = T.exp2(exp_arg(s_acc[mt, nt, e], m_use[mt], mt, row_fold))
                                    l_run[mt] = l_run[mt] + s_acc[mt, nt, e]
                            if V_PER_KEY:      # per-key v scale folded into P (after the row sum)
                                for nt in T.unroll(NKT):
                                    for e in T.unroll(ACE):
                                        s_acc[mt, nt, e] = s_acc[mt, nt, e] * scale_at(
                                            2, b, hk, kb * BK + nt * 16 + key_in_tile(lane, e))
                        # ---- Pᵀ (16-bit) as the B operand of Oᵀ = Vᵀ Pᵀ
                        for mt in T.unroll(MT):
                            for nt in T.unroll(NKT):
                                if WMMA:
                                    # B holds all 16 keys of the lane's row: its own 8 (key parity
                                    # lane // 16) and the 8 of lane ^ 16
                                    for e in T.unroll(ACE):
                                        red[mt] = shfl_xor(s_acc[mt, nt, e], lane, 16)
                                        p_frag[mt, nt, e * 2] = to16(T.Select(lane < 16, s_acc[mt, nt, e], red[mt]))
                                        p_frag[mt, nt, e * 2 + 1] = to16(T.Select(lane < 16, red[mt], s_acc[mt, nt, e]))
                                else:
                                    for e in T.unroll(ACE):
                                        p_frag[mt, nt, e] = to16(s_acc[mt, nt, e])
                        # ---- Oᵀ += Vᵀ Pᵀ (A: 16 output columns x 16 keys of Vᵀ, from LDS)
                        for kk in T.unroll(NKT):
                            for nd in T.unroll(NDV):
                                for e in T.unroll(OPE):
                                    v_frag[e] = v_lds[(kk * 16 + a_k0(lane) + e) * VS + nd * 16 + lane % 16]
                                for mt in T.unroll(MT):
                                    o_acc[mt, nd, T.ramp(0, 1, ACE)] = matmul(
                                        o_acc[mt, nd, T.ramp(0, 1, ACE)], operand(v_frag),
                                        operand(p_frag, mt, kk))
                    # ---- epilogue: out = acc / l (0 where no key was kept), lse = (m + log2 l) ln 2
                    for mt in T.unroll(MT):
                        for x in T.unroll(len(XOR_STEPS)):
                            l_run[mt] = l_run[mt] + shfl_xor(l_run[mt], lane, XOR_STEPS[0] << x)
                        red[mt] = T.Select(l_run[mt] > T.float32(0), T.float32(1) / l_run[mt], T.float32(0))
                        if PV8 and not V_PER_KEY:      # per-tensor / per-head v scale on the output
                            red[mt] = red[mt] * scale_at(2, b, hk, 0)
                        if r0 + mt * 16 + lane % 16 < S:
                            if lane < 16:
                                lse[b, h, r0 + mt * 16 + lane % 16] = T.Select(
                                    l_run[mt] > T.float32(0),
                                    (m_run[mt] + T.log2(l_run[mt])) * T.float32(gpu.LN2), NEG_INF)
                            for nd in T.unroll(NDV):
                                for e in T.unroll(ACE):
                                    o16[b, h, r0 + mt * 16 + lane % 16, nd * 16 + key_in_tile(lane, e)] = \
                                        to16(o_acc[mt, nd, e] * red[mt])

    extra = ([TILE_MAP] if USE_TABLE else []) + SCALE_BUFFERS + CAPTURE_BUFFERS
    if extra:
        # in TVM 0.27 a buffer is itself a (buffer-typed) Var and can be a parameter
        main = tirx.PrimFunc(list(main.params) + extra, main.body, main.ret_type, main.attrs)
    try:
        tvm.tirx.analysis.verify_well_formed(main)
    except Exception as exc:  # pragma: no cover - a bug in this lowering
        raise TargetError(f"rocm target: generated TIR is ill-formed: {str(exc).strip().splitlines()[-1]}",
                          variant=spec.name or None) from exc
    return tvm.IRModule({"main": main})


# --------------------------------------------------------------------------- toolchain


@dataclass(frozen=True)
class Toolchain:
    lld: str                     # an ld.lld of LLVM 17 or newer (code object v6)
    rocm_path: str               # what TVM calls ROCM_PATH: holds amdgcn/bitcode/*.bc


_DEBIAN_ROCM_PATH = "/usr/lib/x86_64-linux-gnu"
_INSTALL_HINT = ("on Debian/Ubuntu: apt-get install lld-19 rocm-device-libs (or a ROCm install: "
                 "set ROCM_PATH)")


def _lld_version(path: str) -> Optional[int]:
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"LLD (\d+)", text)
    return int(m.group(1)) if m else None


def find_lld() -> Optional[str]:
    """The newest ``ld.lld`` of LLVM 17 or newer: ``ld.lld-NN`` on PATH, ROCm's, or plain ``ld.lld``."""
    found = []
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/opt/rocm/llvm/bin"]:
        for path in glob.glob(os.path.join(d, "ld.lld-*")):
            m = re.fullmatch(r"ld\.lld-(\d+)(\.\d+)*", os.path.basename(path))
            if m and int(m.group(1)) >= 17 and os.access(path, os.X_OK):
                found.append((int(m.group(1)), path))
    for path in (shutil.which("ld.lld"), "/opt/rocm/llvm/bin/ld.lld"):
        if path and os.access(path, os.X_OK):
            ver = _lld_version(path)
            if ver is not None and ver >= 17:
                found.append((ver, path))
    return max(found)[1] if found else None


def _has_bitcode(rocm_path: str) -> bool:
    return os.path.exists(os.path.join(rocm_path, "amdgcn", "bitcode", "ocml.bc"))


def toolchain() -> Toolchain:
    """The linker and device bitcode TVM's ROCm build needs, or one :class:`TargetError`."""
    lld = find_lld()
    rocm_path = os.environ.get("ROCM_PATH")
    if not rocm_path:
        for cand in ("/opt/rocm", _DEBIAN_ROCM_PATH):
            if _has_bitcode(cand):
                rocm_path = cand
                break
    missing = []
    if lld is None:
        missing.append("ld.lld of LLVM 17 or newer (TVM's LLVM 22 writes code object v6; "
                       "older ld.lld answer 'unknown abi version')")
    if not rocm_path or not _has_bitcode(rocm_path):
        where = f"ROCM_PATH={rocm_path} has no amdgcn/bitcode/ocml.bc" if rocm_path else "no ROCm device bitcode found"
        missing.append(f"ROCm device bitcode ({where})")
    if missing:
        raise TargetError("rocm target: cannot build AMD GPU code objects here: missing "
                          + " and ".join(missing) + f"; {_INSTALL_HINT}")
    return Toolchain(lld, rocm_path)


_link_lock = threading.Lock()
_linked: dict = {}


def _link_with(lld: str):
    """TVM's ``tvm_callback_rocm_link``: object -> code object with our ld.lld."""

    def link(obj_bin):
        with tempfile.TemporaryDirectory(prefix="attncc-rocm-") as d:
            obj, hsaco = os.path.join(d, "kernel.o"), os.path.join(d, "kernel.hsaco")
            with open(obj, "wb") as f:
                f.write(bytes(obj_bin))
            res = subprocess.run([lld, "--no-undefined", "-shared", obj, "-o", hsaco],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"{lld} failed: {(res.stderr or res.stdout).strip()}")
            with open(hsaco, "rb") as f:
                data = f.read()
        _linked["last"] = data
        return bytearray(data)

    return link


@contextlib.contextmanager
def _quiet_tvm_warnings():
    """TVM logs two warnings on every ROCm build without a device (ROCm version, thread
    count); drop those lines from stderr, pass everything else through."""
    known = ("Unable to detect ROCm version", "Cannot get maximum number of threads for AMD codegen")
    try:
        fd = os.dup(2)
    except OSError:          # pragma: no cover - no stderr
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if not any(k in line for k in known):
                    os.write(2, line.encode())


def rocm_target(arch: str):
    import tvm

    a = arch_info(arch)
    return tvm.target.Target({"kind": "rocm", "mcpu": arch, "thread_warp_size": a.wave,
                              "max_num_threads": 1024, "max_threads_per_block": 1024,
                              "max_shared_memory_per_block": a.lds_bytes})


# --------------------------------------------------------------------------- build / run


@dataclass
class RocmKernel:
    """A built kernel: the TVM executable, its code object, what ``run`` needs."""

    spec: FlashKernelSpec
    config: RocmConfig
    arch: str
    executable: object
    hsaco: bytes
    compile_seconds: float

    @property
    def mod(self):
        return self.executable.mod

    def __call__(self, *args):
        return self.executable["main"](*args)


def build(spec: FlashKernelSpec, config: Optional[RocmConfig] = None, arch: Optional[str] = None) -> RocmKernel:
    """Compile the kernel for ``arch`` (gfx90a, gfx942, gfx1100, ...; default: the local GPU,
    else gfx942).  Needs :func:`toolchain`; no GPU."""
    import tvm
    import tvm_ffi

    if arch is None:
        arch = local_arch() or DEFAULT_ARCH
    arch_info(arch, spec.name or None)
    if config is None:
        config = default_config(spec, arch)
    validate_config(spec, config, arch)
    tools = toolchain()
    t0 = time.perf_counter()
    mod = lower(spec, config, arch)
    with _link_lock:
        os.environ["ROCM_PATH"] = tools.rocm_path
        import tvm.support.rocm  # noqa: F401  (registers TVM's own callbacks, which we replace)

        tvm_ffi.register_global_func("tvm_callback_rocm_link", _link_with(tools.lld), override=True)
        _linked.clear()
        try:
            with _quiet_tvm_warnings():
                executable = tvm.compile(mod, target=rocm_target(arch))
        except Exception as exc:  # a TVM traceback never reaches a user
            text = str(exc).strip()
            raise TargetError(f"rocm target: TVM failed to build the kernel with {config} for {arch}: "
                              f"{text.splitlines()[-1] if text else exc}", variant=spec.name or None) from exc
        hsaco = _linked.pop("last", None)
    if not hsaco:
        raise TargetError("rocm target: TVM built the module but produced no code object",
                          variant=spec.name or None)
    return RocmKernel(spec, config, arch, executable, hsaco, time.perf_counter() - t0)


def _device_module(built: RocmKernel):
    for m in built.executable.mod.imports:
        if getattr(m, "kind", None) in ("hip", "rocm"):
            return m
    raise TargetError("rocm target: the built module holds no ROCm device module")


def assembly(built: RocmKernel) -> str:
    """The AMDGPU assembly of the kernel (LLVM's, with the code object's metadata)."""
    return _device_module(built).inspect_source("asm")


def source(built: RocmKernel) -> str:
    """What ``--emit source`` prints for this target: the assembly (there is no C++ source)."""
    return assembly(built)


def code_object(built: RocmKernel) -> bytes:
    """The linked code object (ELF for amdgcn-amd-amdhsa), as a HIP runtime loads it."""
    return built.hsaco


def export_library(built: RocmKernel, path: str) -> None:
    """``.hsaco``/``.co``: write the code object (load with hipModuleLoad; kernel ``main_kernel``).
    Otherwise a TVM module library (host code + code object; needs a TVM built with ROCm to load)."""
    if path.endswith((".hsaco", ".co")):
        with open(path, "wb") as f:
            f.write(built.hsaco)
        return
    built.executable.export_library(path)


_ARG_NAMES = {"q16": "q", "k16": "k", "v16": "v", "o16": "out"}


def parse_metadata(text: str) -> dict:
    """The first kernel's entries of AMDGPU code object metadata (the YAML that LLVM prints
    in the assembly's ``.amdgpu_metadata`` and ``llvm-readelf --notes`` prints from a code
    object): integers and names as they are, ``args`` the kernel arguments' names in order."""
    out: dict = {"args": []}
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "amdhsa.kernels:")
    except StopIteration:
        raise TargetError("rocm target: no amdhsa.kernels metadata found") from None
    kernel_indent = None
    for line in lines[start + 1:]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" -"))     # of the key, past a list's "- "
        if not line.startswith(" ") and not line.startswith("-"):
            if stripped.startswith("amdhsa.target:"):
                out["target"] = stripped.split(":", 1)[1].strip()
            if stripped.startswith("..."):
                break
            continue
        if kernel_indent is not None and re.match(r"^\s*- \.", line) and indent == kernel_indent:
            break                                   # a second kernel: the first is ours
        m = re.match(r"^(\s*-?\s*)\.(\w+):\s*(.*)$", line)
        if not m:
            continue
        key, value = m.group(2), m.group(3).strip()
        if kernel_indent is None:
            kernel_indent = len(m.group(1))
        if len(m.group(1)) > kernel_indent:         # inside .args (or another nested list)
            if key == "name":
                out["args"].append(_ARG_NAMES.get(value, value))
            continue
        if value == "":
            continue
        out[key] = int(value) if re.fullmatch(r"-?\d+", value) else value
    for line in lines:
        if line.strip().startswith("amdhsa.target:"):
            out["target"] = line.split(":", 1)[1].strip()
    return out


def kernel_metadata(built: RocmKernel) -> dict:
    """LDS (group_segment_fixed_size), VGPR/AGPR/SGPR counts, spills, wavefront size and the
    argument order of the built kernel, from its code object metadata."""
    return parse_metadata(assembly(built))


def kernel_notes(built: RocmKernel) -> list:
    """What the CLI says of this kernel beyond its config: table mode, 8-bit operands."""
    spec, notes = built.spec, []
    if use_block_table(spec):
        src = "computed per call from " + ", ".join(c[0] for c in spec.captures) if spec.runtime_tile_map else \
            "prune-sparsity's map, passed by run"
        notes.append(f"table mode: tile map int32 [NQB, NKB] after lse ({src}); wavefront 0 lists the non-empty "
                     "key blocks in LDS, the key loop walks the list, full tiles skip the mask")
    if spec.quant_dtype is not None:
        ops = "q, k, v" if spec.quant_pv else "q, k"
        t = "bf16" if spec.dtype == "bfloat16" else "f16"
        notes.append(f"{spec.quant_dtype} {ops} widened to {t} for 16-bit {'WMMA' if ARCHS[built.arch].matrix == 'wmma' else 'MFMA'} "
                     "(memory traffic 8-bit, matrix instructions 16-bit; not native int8/fp8 MFMA: gfx942's fp8 "
                     "MFMA takes the FNUZ encodings, not the OCP e4m3fn/e5m2 of the IR); scales fused")
    return notes


def describe_output(built: RocmKernel, path: str) -> str:
    if path.endswith((".hsaco", ".co")):
        meta = kernel_metadata(built)
        return (f"AMD GPU code object for {built.arch}, {len(built.hsaco)} bytes; kernel {meta.get('name')}, "
                f"grid ({built.spec.batch * built.spec.q_heads}, {-(-built.spec.q_len // built.config.block_q)}), "
                f"{built.config.num_waves * ARCHS[built.arch].wave} work-items, "
                f"{meta.get('group_segment_fixed_size')} bytes LDS; pointer args in this order: "
                + ", ".join(meta["args"])
                + (f"; {built.spec.quant_dtype} operands widened to 16-bit {ARCHS[built.arch].matrix.upper()}"
                   if built.spec.quant_dtype else ""))
    return "TVM module (host code + code object); load with tvm_ffi.load_module on a TVM built with ROCm"


def _rocm_device():
    """TVM's ROCm device 0 when this TVM has a ROCm runtime and a device exists, else None."""
    try:
        import tvm
        import tvm_ffi

        if tvm_ffi.get_global_func("device_api.rocm", allow_missing=True) is None:
            return None
        dev = tvm.rocm(0)
        return dev if dev.exist else None
    except Exception:  # pragma: no cover - depends on the machine
        return None


def _rocminfo_arch() -> Optional[str]:
    """The first GPU agent's gfx name from rocminfo (``gfx942:sramecc+:xnack-`` -> ``gfx942``)."""
    candidates = [shutil.which("rocminfo")]
    for root in (os.environ.get("ROCM_PATH"), "/opt/rocm"):
        if root:
            candidates.append(os.path.join(root, "bin", "rocminfo"))
    for exe in candidates:
        if exe and os.access(exe, os.X_OK):
            try:
                text = subprocess.run([exe], capture_output=True, text=True, timeout=60).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            m = re.search(r"Name:\s+(gfx[0-9a-f]+)", text)
            if m:
                return m.group(1)
    return None


def local_arch() -> Optional[str]:
    """gfxNNN of the local AMD GPU, or None without one (or without a ROCm-enabled TVM).

    From rocminfo: TVM's compute version of a ROCm device is only major.minor (9.4 is gfx940,
    gfx941 or gfx942), so it names the architecture only where that is unambiguous."""
    if _rocm_device() is None:
        return None
    arch = _rocminfo_arch()            # pragma: no cover - needs an AMD GPU from here on
    if arch is not None:
        return arch
    try:
        ver = str(_rocm_device().compute_version)
        return ver if ver.startswith("gfx") else {"11.0": "gfx1100"}.get(".".join(ver.split(".")[:2]))
    except Exception:
        return None


def not_runnable(built: RocmKernel) -> Optional[str]:
    """Why ``built`` cannot run on this machine, or None when it can."""
    if _rocm_device() is None:
        return f"compiled for {built.arch}; not executed: no ROCm device"
    here = local_arch()
    if here is None:
        return f"compiled for {built.arch}; not executed: the local AMD GPU's architecture is unknown (no rocminfo)"
    if here != built.arch:
        return f"compiled for {built.arch}; not executed: the local AMD GPU is {here}"
    return None




def _config_of(spec: FlashKernelSpec, config) -> RocmConfig:
    if config is None:
        if use_block_table(spec):
            raise TargetError("rocm target: a table-mode kernel's arguments depend on its config (the tile map's "
                              "block sizes): pass config=", variant=spec.name or None)
        return default_config(spec)
    return config


def argument_specs(spec: FlashKernelSpec, config: Optional[RocmConfig] = None) -> list:
    """(name, shape, numpy dtype) of the kernel entry's arguments, in order: q, k, v, out, lse,
    then (table mode) the tile map int32 [NQB, NKB], the scales (quantized kernels: f32 of q, k,
    and with quant_pv v), the captured inputs -- the CUDA kernels' order.  ``config`` is needed
    in table mode (the map's block sizes)."""
    dt = _np_dtype(spec.dtype)
    qd, kd, vd = _input_dtypes(spec)
    B, H, KVH = spec.batch, spec.q_heads, spec.kv_heads
    table = []
    if use_block_table(spec):
        c = _config_of(spec, config)
        table = [("tile_map", (-(-spec.q_len // c.block_q), -(-spec.kv_len // c.block_k)), np.dtype(np.int32))]
    return ([("q", (B, H, spec.q_len, spec.head_dim), qd),
             ("k", (B, KVH, spec.kv_len, spec.head_dim), kd),
             ("v", (B, KVH, spec.kv_len, spec.head_dim_v), vd),
             ("out", (B, H, spec.q_len, spec.head_dim_v), dt),
             ("lse", (B, H, spec.q_len), np.dtype(np.float32))]
            + table
            + [(name, tuple(int(x) for x in shape), np.dtype(np.float32)) for name, shape in spec.scales]
            + [(name, tuple(shape), _np_dtype(cdt)) for name, shape, cdt in spec.captures])


def kernel_arguments(spec: FlashKernelSpec, q, k, v, *extra, config: Optional[RocmConfig] = None,
                     tiles=None) -> list:
    """The host arrays of ``main(q, k, v, out, lse, [tile_map], *scales, *captures)``: ``extra`` is
    the scales (quantized kernels) then the captured inputs, as ``run`` takes them (the CUDA
    order).  Inputs are converted to the kernel's dtypes and checked against its shapes; quantized
    q/k/v must already be int8 / float8_e4m3fn / float8_e5m2 (converting floats would not quantize
    them: ``attncc.reference.quantize`` does); outputs are filled with NaN (an element no lane
    writes shows).  Table mode: the tile map is ``tiles`` if given, else computed from the captured
    inputs with ``spec.runtime_tile_map`` (document ids: per call), else prune-sparsity's map."""
    wanted = argument_specs(spec, config)
    table = use_block_table(spec)
    after = wanted[5 + int(table):]                       # scales, then captures
    if len(extra) != len(after):
        raise ShapeError(f"rocm target: the kernel takes {len(after)} input(s) after q, k, v "
                         f"({', '.join(n for n, _, _ in after) or 'none'}), got {len(extra)}",
                         variant=spec.name or None)
    arrays = {}
    for (name, shape, dt), arr in zip(wanted[:3] + after, (q, k, v) + tuple(extra)):
        arr = np.asarray(arr)
        if name in ("q", "k", "v") and spec.quant_dtype is not None and dt.itemsize == 1 and arr.dtype != dt:
            raise DTypeError(f"rocm target: {name} must arrive quantized, as {dt} (with its scale), got {arr.dtype}; "
                             "attncc.reference.quantize(x, dtype, granularity) makes both",
                             variant=spec.name or None)
        arr = np.ascontiguousarray(arr.astype(dt, copy=False))
        if arr.shape != shape:
            raise ShapeError(f"rocm target: {name} has shape {arr.shape}, kernel expects {shape}",
                             variant=spec.name or None)
        arrays[name] = arr
    for name, shape, dt in wanted[3:5]:
        arrays[name] = np.full(shape, np.nan, dtype=dt)
    if table:
        c = _config_of(spec, config)
        if tiles is None and spec.runtime_tile_map is not None:
            caps = [arrays[name] for name, _, _ in spec.captures]
            tiles = spec.runtime_tile_map(caps, c.block_q, c.block_k)
        arrays["tile_map"] = block_tables(spec, c, tiles)[0]
    elif tiles is not None:
        raise TargetError("rocm target: this kernel takes no tile map (its mask is a band, or none)",
                          variant=spec.name or None)
    return [arrays[name] for name, _, _ in wanted]


def run(built: RocmKernel, q, k, v, *extra, tiles=None):
    """Run ``built`` on numpy arrays on ROCm device 0; returns ``(out, lse)`` as numpy arrays.
    ``extra``: the scales (quantized kernels) and captured inputs (e.g. document ids); a table-mode
    kernel's tile map is computed from them per call (or is ``tiles``)."""
    import tvm

    why = not_runnable(built)
    if why is not None:
        raise TargetError(f"rocm target: cannot run: {why}", variant=built.spec.name or None)
    dev = _rocm_device()
    args = [tvm.runtime.tensor(a, device=dev)
            for a in kernel_arguments(built.spec, q, k, v, *extra, config=built.config, tiles=tiles)]
    built(*args)
    dev.sync()
    return args[3].numpy(), args[4].numpy()


def measure_arguments(spec: FlashKernelSpec, config: RocmConfig, seed: int = 0) -> list:
    """The host arrays of one timed call on random inputs: q, k, v (quantized kernels: random 8-bit
    codes, scales 0.05), out, lse, the tile map (from 8 sorted random document ids per captured
    tensor, as the CUDA target measures), scales, captures."""
    rng = np.random.default_rng(seed)
    wanted = argument_specs(spec, config)
    inputs = []
    for _, shape, dt in wanted[:3]:
        x = rng.standard_normal(shape, dtype=np.float32)
        inputs.append(np.clip(np.rint(x * 32), -127, 127).astype(dt) if dt == np.int8 else x.astype(dt))
    scales = [np.full(tuple(int(x) for x in shape), 0.05, np.float32) for _, shape in spec.scales]
    caps = [np.sort(rng.integers(0, 8, shape)).astype(_np_dtype(cdt)) for _, shape, cdt in spec.captures]
    return kernel_arguments(spec, *inputs, *scales, *caps, config=config)


def measure(built: RocmKernel, spec: Optional[FlashKernelSpec] = None, repeat: int = 20,
            number: int = 5) -> float:
    """Median seconds per call on random inputs (device time, outputs preallocated)."""
    import tvm

    spec = spec or built.spec
    why = not_runnable(built)
    if why is not None:
        raise TargetError(f"rocm target: cannot measure: {why}", variant=spec.name or None)
    dev = _rocm_device()
    args = [tvm.runtime.tensor(a, device=dev) for a in measure_arguments(spec, built.config)]
    timer = built.executable.mod.time_evaluator("main", dev, number=number, repeat=repeat, min_repeat_ms=0)
    return float(statistics.median(timer(*args).results))
