"""Systolic target: attention scheduled onto a simulated TPU-like accelerator.

Stages, top to bottom:

1. ``validate_config`` -- the schedule (:class:`SystolicConfig`: block_q, block_k,
   dataflow, double_buffer, and which accelerator) must fit the accelerator's
   scratchpad and accumulator (:func:`memory_plan`); a config that does not fit is
   refused with the buffer list and the bytes needed vs the capacity, so the
   simulator's memories can never overflow.
2. ``lower`` -- the fused tiled attention as a TensorIR control program whose body
   calls the simulator's DMA, matmul and vector operations as packed functions
   (``attncc/targets/systolic/kernel.py``); shapes, tile sizes and the block table of
   non-empty tiles are its arguments.
3. ``build`` -- ``tvm.compile`` for the host (LLVM); the program is compiled once per
   process and double-buffering mode (the mask enters through the block table and the
   vector unit, the dataflow and the accelerator through the simulator).
4. ``run`` -- q, k, v (bf16; or int8 / fp8 with f32 scales, from the quantize pass) go
   to the simulator's off-chip memory, the block table of
   non-empty tiles (prune-sparsity's tile map, or the runtime map from captured data)
   is computed, the program drives the simulator tile by tile, and out / lse come back
   with the cycle report (``built.last_report``).
5. ``measure`` -- simulated seconds (cycles / clock) on fixed random inputs.

Quantized kernels (``--quantize int8|fp8|fp8_e5m2 [--quantize-pv]``): INT8 q and k go
to the array as int8 with int32 accumulation, and the vector unit applies their scales to
the int32 scores (``S_ij = dot(q_i, k_j) · sq_i · sk_j · scale``: dequantization fused into
the kernel); with ``--quantize-pv`` v is int8 too (widened to bf16 in the array; P stays
bf16) and its scale is applied after P·V (one per head or tensor) or folded into P before
it (per-block scales vary by key row).  FP8 (e4m3, e5m2) is emulated: the DMA converts
each 1-byte element to bf16 (exactly) on its way into the scratchpad and the array
computes bf16; the scales are handled as for int8.  DMA bytes count the 1-byte elements.

The accelerator (``attncc/targets/systolic/config.py``) is a preset name or a JSON
file, given as the target option ``systolic_config`` (``--systolic-config`` on the
command line); the simulator (``sim.py``) documents the cycle model.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from attncc.errors import ConfigError, DTypeError, ShapeError, TargetError
from attncc.ir.types import parse_dtype
from attncc.reference import QMAX
from attncc.targets.spec import FlashKernelSpec, input_numpy_dtypes, numpy_dtype as _np_dtype
from attncc.targets.systolic import config as hwconfig
from attncc.targets.systolic.config import PRESETS, AcceleratorConfig, resolve
from attncc.targets.systolic.sim import Simulator, bf16, matmul_cycles

QUANT_DTYPES = {"int8": "int8", "float8_e4m3fn": "fp8 e4m3", "float8_e5m2": "fp8 e5m2"}

__all__ = ["NAME", "Config", "SystolicConfig", "default_config", "validate_config", "lower", "build", "run",
           "measure", "report", "memory_plan", "AcceleratorConfig", "PRESETS", "Simulator", "matmul_cycles"]

NAME = "systolic"
SUPPORTED_DTYPES = ("bf16", "bfloat16")
DEFAULT_DTYPE = "bf16"
OPTIONS = ("systolic_config",)
SIMULATED = True          # measure() returns simulated time (cycles / clock), not wall time
NOT_EXPORTABLE = ("its kernels drive the accelerator simulator inside this process (run them with "
                  "attncc.compile(..., target='systolic'), which returns the compiled kernel, or "
                  "attncc compile --target systolic)")


@dataclass(frozen=True)
class SystolicConfig:
    """The schedule of the attention on the accelerator (frozen: keys build caches).

    accelerator    preset name or JSON path of the hardware (AcceleratorConfig)
    block_q        query rows per tile (rows streamed through the array for Q·Kᵀ and P·V)
    block_k        keys per tile
    dataflow       "ws" weight-stationary or "os" output-stationary
    double_buffer  two buffers for K, V, S, P and the P·V result: the next tile's loads
                   and Q·Kᵀ overlap the current tile's softmax, which does not wait for the
                   previous P·V (merged into O one tile later)
    """

    accelerator: str = "default"
    block_q: int = 128
    block_k: int = 128
    dataflow: str = "ws"
    double_buffer: bool = True


Config = SystolicConfig


def _accelerator(options: Optional[dict]) -> str:
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS) - {"arch"})
    if unknown:
        raise TargetError(f"systolic target takes no option(s) {', '.join(unknown)} "
                          f"(options: {', '.join(OPTIONS)})")
    if options.get("arch"):
        raise TargetError("--arch is for GPU targets; the systolic target takes --systolic-config NAME|FILE.json")
    name = options.get("systolic_config") or "default"
    resolve(name)                                 # an unknown preset is an error here
    return str(name)


# --------------------------------------------------------------------------- memory plan



def input_dtypes(spec: FlashKernelSpec) -> tuple:
    """numpy dtypes of q, k, v in off-chip memory (quantized operands keep their int8/fp8
    type: the DMA moves 1 byte per element; the rest are bf16)."""
    return input_numpy_dtypes(spec, "bfloat16")


def operand_bytes(spec: FlashKernelSpec) -> tuple:
    """Off-chip bytes per element of q, k, v (what the DMA moves)."""
    return tuple(d.itemsize for d in input_dtypes(spec))


def operands(spec: FlashKernelSpec) -> str:
    """The operand formats of the kernel, in words (the cycle report's 'operands' line)."""
    q = spec.quant_dtype
    if q is None:
        return "bf16 q, k, v; bf16 x bf16 -> fp32 on the array"
    what = QUANT_DTYPES.get(q, q)
    if q == "int8":
        text = "int8 q, k: int8 x int8 -> int32 on the array, scales applied to the scores in the vector unit"
    else:
        text = (f"{what} q, k emulated: converted to bf16 (exactly) by the DMA on the way into the scratchpad, "
                "bf16 x bf16 -> fp32 on the array, scales applied in the vector unit")
    if spec.quant_pv:
        from attncc.targets.systolic.kernel import scale_rows

        per_row = scale_rows(spec.scales[2][1])
        where = "folded into P before P·V (per-block)" if per_row else "applied after P·V"
        if q == "int8":
            text += f"; int8 v (widened to bf16 in the array, P bf16), its scale {where}"
        else:
            text += f"; {what} v emulated the same way, its scale {where}"
    else:
        text += "; bf16 v"
    text += "; 1 byte per quantized element from memory"
    if q == "int8":
        text += " (int8 MACs assumed at the bf16 rate)"
    return text


def memory_plan(spec: FlashKernelSpec, config: SystolicConfig) -> dict:
    """{memory: [(buffer, bytes), ...]} of the schedule's on-chip buffers (as the
    runtime allocates them)."""
    from attncc.targets.systolic.kernel import operand_formats

    BQ, BK, D, DV = config.block_q, config.block_k, spec.head_dim, spec.head_dim_v
    n = 2 if config.double_buffer else 1
    x = f"{n}x " if n > 1 else ""
    fmt = operand_formats(spec)

    def name(t):
        return "int8" if fmt[t] == np.int8 else "bf16"

    qb, kb, vb = (fmt[t].itemsize for t in "qkv")
    scales = []
    v_rows = spec.quant_pv and len(spec.scales) == 3 and int(spec.scales[2][1][2]) > 1
    stats = 6 if v_rows else 5                    # m, l, lse, alpha x2 (, r: per-block v scales)
    if spec.quant_dtype is not None:
        scales = [(f"Q scale {BQ} fp32", BQ * 4), (f"K scale {x}{BK} fp32", n * BK * 4)]
        if spec.quant_pv:
            scales.append((f"V scale {x}{BK} fp32", n * BK * 4))
    return {
        "scratchpad": [
            (f"Q {BQ}x{D} {name('q')}", BQ * D * qb),
            (f"K {x}{BK}x{D} {name('k')}", n * BK * D * kb),
            (f"V {x}{BK}x{DV} {name('v')}", n * BK * DV * vb),
            (f"P {x}{BQ}x{BK} bf16", n * BQ * BK * 2),
            (f"out {BQ}x{DV} bf16", BQ * DV * 2),
        ],
        "accumulator": [
            (f"S {x}{BQ}x{BK} {'int32/fp32' if fmt['q'] == np.int8 else 'fp32'}", n * BQ * BK * 4),
            (f"O {BQ}x{DV} fp32", BQ * DV * 4),
        ] + ([(f"PV 2x {BQ}x{DV} fp32", 2 * BQ * DV * 4)] if config.double_buffer else []) + [
            (f"row stats {stats}x{BQ} fp32", stats * BQ * 4),
        ] + scales,
    }


def validate_config(spec: FlashKernelSpec, config: SystolicConfig) -> None:
    """Raise :class:`ConfigError` with the reason if ``config`` cannot run ``spec``."""
    c = config

    def bad(msg):
        raise ConfigError(f"systolic config {c}: {msg}", variant=spec.name or None)

    for name in ("block_q", "block_k"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            bad(f"{name} must be a positive integer, got {value!r}")
    if c.block_q > 4096 or c.block_k > 4096:
        bad("block_q and block_k must be at most 4096")
    if c.dataflow not in ("ws", "os"):
        bad(f"dataflow must be 'ws' (weight-stationary) or 'os' (output-stationary), got {c.dataflow!r}")
    if not isinstance(c.double_buffer, bool):
        bad(f"double_buffer must be True or False, got {c.double_buffer!r}")
    try:
        hw = resolve(c.accelerator)
    except ConfigError as exc:
        raise ConfigError(exc.message, variant=spec.name or None) from None
    plan = memory_plan(spec, c)
    for memory, capacity in (("scratchpad", hw.scratchpad_bytes), ("accumulator", hw.accumulator_bytes)):
        need = sum(b for _, b in plan[memory])
        if need > capacity:
            parts = ", ".join(f"{name} {b}" for name, b in plan[memory])
            bad(f"the tiles do not fit the {hw.name} accelerator's {memory}: they need {need} bytes "
                f"({parts}) but it holds {capacity} bytes; lower block_q/block_k"
                + (" or turn off double_buffer" if c.double_buffer else ""))


def _pow2_floor(n: int) -> int:
    p = 1
    while p * 2 <= n:
        p *= 2
    return p


def _pow2_ceil(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def default_config(spec: FlashKernelSpec, options: Optional[dict] = None) -> SystolicConfig:
    """Tiles of the array's size (block_q = rows, block_k = cols, at least 64, at most the
    next power of two of the lengths), weight-stationary, double-buffered; halved (the
    larger first) until they fit the memories."""
    name = _accelerator(options)
    hw = resolve(name)
    bq = min(max(hw.rows, 64), max(_pow2_ceil(spec.q_len), 8))
    bk = min(max(hw.cols, 64), max(_pow2_ceil(spec.kv_len), 8))
    for double_buffer in (True, False):
        q, k = bq, bk
        while True:
            cfg = SystolicConfig(name, q, k, "ws", double_buffer)
            try:
                validate_config(spec, cfg)
                return cfg
            except ConfigError:
                pass
            if q <= 8 and k <= 8:
                break
            if q >= k and q > 8:
                q //= 2
            else:
                k //= 2
    return SystolicConfig(name, 8, 8, "ws", False)     # validate_config will say why it does not fit


def _validate_spec(spec: FlashKernelSpec) -> None:
    if spec.quant_dtype is not None:
        if spec.quant_dtype not in QUANT_DTYPES:
            raise DTypeError(f"systolic target: quantized operands of type {spec.quant_dtype} are not supported "
                             "(int8, float8_e4m3fn, float8_e5m2)", variant=spec.name or None)
        want = 3 if spec.quant_pv else 2
        if len(spec.scales) != want:
            raise TargetError(f"systolic target: a quantized kernel takes {want} scales (q, k"
                              f"{', v' if spec.quant_pv else ''}), the spec has {len(spec.scales)}",
                              variant=spec.name or None)
        for (name, shape), rows, heads in zip(spec.scales, (spec.q_len, spec.kv_len, spec.kv_len),
                                              (spec.q_heads, spec.kv_heads, spec.kv_heads)):
            shape = tuple(int(x) for x in shape)
            if (len(shape) != 4 or shape[0] not in (1, spec.batch) or shape[1] not in (1, heads)
                    or shape[2] not in (1, rows) or shape[3] != 1):
                raise TargetError(f"systolic target: scale {name} of shape {shape} is not supported: scales "
                                  f"are [B or 1, H or 1, rows or 1, 1] = [{spec.batch} or 1, {heads} or 1, "
                                  f"{rows} or 1, 1]", variant=spec.name or None)
    if spec.dtype != "bfloat16":
        raise DTypeError(f"systolic target: dtype {spec.dtype} is not supported: the array takes bf16 "
                         "operands (trace the variant with --dtype bf16)", variant=spec.name or None)
    if spec.q_heads % spec.kv_heads:
        raise TargetError(f"systolic target: q_heads ({spec.q_heads}) must be a multiple of kv_heads "
                          f"({spec.kv_heads})", variant=spec.name or None)


# --------------------------------------------------------------------------- block tables


def tile_kinds(spec: FlashKernelSpec, block_q: int, block_k: int, captures=None) -> np.ndarray:
    """[NQB, NKB] int8 of 0 empty / 1 partial / 2 full: the runtime map from captured
    data (masks that read it), prune-sparsity's tile map, or the key bound; the ragged last key block is never
    full (its padding keys are masked)."""
    S, TK = spec.q_len, spec.kv_len
    nqb, nkb = -(-S // block_q), -(-TK // block_k)
    if spec.mask_mod is None:
        t = np.full((nqb, nkb), 2, dtype=np.int8)
    elif spec.runtime_tile_map is not None:
        # the mask reads runtime data: classify from the data (the whole mask, evaluated on
        # every element, like FlexAttention's create_block_mask)
        if captures is None:
            raise TargetError("this mask reads runtime data: the block table needs the captured inputs",
                              variant=spec.name or None)
        t = np.array(spec.runtime_tile_map(list(captures), block_q, block_k), dtype=np.int8)
    elif spec.tile_map is not None:
        t = np.array(spec.tile_map(block_q, block_k), dtype=np.int8)
    else:
        t = _band_tiles(spec, block_q, block_k)
    if nkb * block_k != TK:
        last = t[:, -1]
        last[last == 2] = 1
    return t


def _band_tiles(spec, block_q, block_k) -> np.ndarray:
    kb = spec.key_bounds
    S, TK = spec.q_len, spec.kv_len
    nqb, nkb = -(-S // block_q), -(-TK // block_k)
    t = np.ones((nqb, nkb), dtype=np.int8)
    for qb in range(nqb):
        q0, q1 = qb * block_q, min(S, (qb + 1) * block_q) - 1
        for kbi in range(nkb):
            k0, k1 = kbi * block_k, min(TK, (kbi + 1) * block_k) - 1
            lo, hi = kb.lower_offset, kb.upper_offset
            if (lo is not None and k1 < q0 + lo) or (hi is not None and k0 > q1 + hi):
                t[qb, kbi] = 0
            elif kb.exact and (lo is None or k0 >= q1 + lo) and (hi is None or k1 <= q0 + hi):
                t[qb, kbi] = 2
    return t


def block_tables(kinds: np.ndarray):
    """(kv_count [NQB], kv_index [NQB, NKB], kv_kind [NQB, NKB]) int32: the non-empty key
    blocks of each query block, in order."""
    nqb, nkb = kinds.shape
    count = np.zeros(nqb, np.int32)
    index = np.zeros((nqb, nkb), np.int32)
    kind = np.zeros((nqb, nkb), np.int32)
    for qb in range(nqb):
        nz = np.nonzero(kinds[qb])[0]
        count[qb] = nz.size
        index[qb, :nz.size] = nz
        kind[qb, :nz.size] = kinds[qb, nz]
    return count, index, kind


# --------------------------------------------------------------------------- lower / build


def _scalars(spec: FlashKernelSpec, config: SystolicConfig) -> tuple:
    return (spec.batch, spec.q_heads, spec.group, config.block_q, config.block_k)


def lower(spec: FlashKernelSpec, config: SystolicConfig):
    """The control program as a ``tvm.IRModule`` whose ``main(kv_count, kv_index, kv_kind,
    batch, q_heads, group, block_q, block_k)`` drives the simulator."""
    import tvm

    _validate_spec(spec)
    validate_config(spec, config)
    try:
        main = _program(bool(config.double_buffer))
        tvm.tirx.analysis.verify_well_formed(main)
    except Exception as exc:  # pragma: no cover - a bug in this lowering
        raise TargetError(f"systolic target: cannot generate the program: {_last_line(exc)}",
                          variant=spec.name or None) from exc
    return tvm.IRModule({"main": main})


@lru_cache(maxsize=None)
def _program(double_buffer: bool):
    """The PrimFunc, parsed from TVMScript once per process and double-buffering mode."""
    from attncc.targets.systolic.kernel import program

    return program(double_buffer)


@lru_cache(maxsize=None)
def _compile(double_buffer: bool):
    """The compiled program (one per process and double-buffering mode: shapes and block
    tables are arguments)."""
    import tvm

    return tvm.compile(tvm.IRModule({"main": _program(double_buffer)}), target=tvm.target.Target("llvm"))


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


@dataclass
class SystolicKernel:
    """A built kernel: the compiled control program, the accelerator and the schedule."""

    spec: FlashKernelSpec
    config: SystolicConfig
    hardware: AcceleratorConfig
    executable: object
    compile_seconds: float
    kinds: Optional[np.ndarray] = None          # the compile-time tile kinds (None: from data per call)
    last_report: Optional[dict] = None
    _measured: Optional[float] = None

    @property
    def mod(self):
        return self.executable.mod


def build(spec: FlashKernelSpec, config: Optional[SystolicConfig] = None, **options) -> SystolicKernel:
    """Compile the control program (LLVM, for the host that runs the simulator)."""
    name = _accelerator(options)
    if config is None:
        config = default_config(spec, options)
    elif "systolic_config" in options and resolve(config.accelerator) != resolve(name):
        config = dataclasses.replace(config, accelerator=name)
    _validate_spec(spec)
    validate_config(spec, config)
    t0 = time.perf_counter()
    lower(spec, config)
    try:
        executable = _compile(bool(config.double_buffer))
    except Exception as exc:  # a TVM traceback never reaches a user
        raise TargetError(f"systolic target: TVM failed to build the program with {config}: {_last_line(exc)}",
                          variant=spec.name or None) from exc
    kinds = None
    if spec.mask_mod is None or spec.runtime_tile_map is None:
        kinds = tile_kinds(spec, config.block_q, config.block_k)
    return SystolicKernel(spec, config, resolve(config.accelerator), executable, time.perf_counter() - t0, kinds)


# --------------------------------------------------------------------------- run / measure


def _shapes(spec: FlashKernelSpec):
    B, H, KVH = spec.batch, spec.q_heads, spec.kv_heads
    return ((B, H, spec.q_len, spec.head_dim), (B, KVH, spec.kv_len, spec.head_dim),
            (B, KVH, spec.kv_len, spec.head_dim_v))


def run(built: SystolicKernel, q, k, v, *extra, trace: bool = False):
    """Run ``built`` on numpy arrays: the simulator executes the program; returns
    ``(out, lse)`` (bf16, float32) and keeps the cycle report in ``built.last_report``."""
    from attncc.targets.systolic.kernel import AttentionRun, execute

    spec = built.spec
    arrays = []
    for name, arr, shape, dt in zip("qkv", (q, k, v), _shapes(spec), input_dtypes(spec)):
        a = np.asarray(arr)
        if a.shape != shape:
            raise ShapeError(f"systolic target: {name} has shape {a.shape}, kernel expects {shape}",
                             variant=spec.name or None)
        arrays.append(np.ascontiguousarray(a.astype(dt, copy=False)))
    n_scales = len(spec.scales)
    if len(extra) != n_scales + len(spec.captures):
        wanted = [n for n, _ in spec.scales] + [c[0] for c in spec.captures]
        raise TargetError(f"kernel takes {len(wanted)} input(s) after q, k, v "
                          f"({', '.join(wanted) or 'none'}), got {len(extra)}",
                          variant=spec.name or None)
    scales = []
    for (name, shape), arr in zip(spec.scales, extra[:n_scales]):
        a = np.ascontiguousarray(np.asarray(arr, dtype=np.float32))
        if a.shape != tuple(shape):
            raise ShapeError(f"input {name} has shape {a.shape}, kernel expects {tuple(shape)}",
                             variant=spec.name or None)
        scales.append(a)
    captures = []
    for (name, shape, _), arr in zip(spec.captures, extra[n_scales:]):
        a = np.asarray(arr)
        if a.shape != tuple(shape):
            raise ShapeError(f"input {name} has shape {a.shape}, kernel expects {tuple(shape)}",
                             variant=spec.name or None)
        captures.append(a)
    kinds = built.kinds if built.kinds is not None else tile_kinds(
        spec, built.config.block_q, built.config.block_k, captures)
    tables = block_tables(kinds)
    r = AttentionRun(spec, built.config, built.hardware, *arrays, captures=captures, scales=scales)
    if trace:
        r.sim.trace = []
    try:
        execute(built.executable, tables, _scalars(spec, built.config), r)
    except Exception as exc:
        if isinstance(exc, (TargetError, ConfigError, ShapeError, DTypeError)):
            raise
        raise TargetError(f"systolic target: the simulator failed: {type(exc).__name__}: {_last_line(exc)}",
                          variant=spec.name or None) from exc
    rep = r.sim.report()
    n = kinds.size
    rep.update({
        "block_q": built.config.block_q, "block_k": built.config.block_k,
        "double_buffer": built.config.double_buffer,
        "tiles_total": int(n) * spec.batch * spec.q_heads,
        "tiles_run": int(r.tiles.get(1, 0) + r.tiles.get(2, 0)),
        "tiles_partial": int(r.tiles.get(1, 0)), "tiles_full": int(r.tiles.get(2, 0)),
        "tile_density": float((kinds != 0).sum() / n),
        "operands": operands(spec),
        "quant_dtype": spec.quant_dtype,
        "quant_pv": bool(spec.quant_pv),
        "emulated": bool(spec.quant_dtype is not None and spec.quant_dtype != "int8"),
    })
    if trace:
        rep["trace"] = r.sim.trace
    built.last_report = rep
    return r.sim.dram["out"], r.sim.dram["lse"]


def _measure_inputs(spec: FlashKernelSpec):
    """Fixed random inputs: N(0, 1) clipped to [-8, 8]; quantized operands are that
    divided by one scale (8 / the format's largest value) and rounded, with that scale."""
    rng = np.random.default_rng(0)
    arrays, scales = [], []
    qmax = {q: QMAX[parse_dtype(q)] for q in QUANT_DTYPES}      # the quantize pass's ranges
    for shape, dt in zip(_shapes(spec), input_dtypes(spec)):
        x = np.clip(rng.standard_normal(shape, dtype=np.float32), -8, 8)
        if dt == bf16():
            arrays.append(x.astype(bf16()))
            continue
        step = np.float32(8.0 / qmax[spec.quant_dtype])
        y = x / step
        arrays.append(np.rint(y).astype(np.int8) if dt == np.int8 else y.astype(dt))
    for _, shape in spec.scales:
        scales.append(np.full(shape, 8.0 / qmax.get(spec.quant_dtype, 1.0), np.float32))
    rng_c = np.random.default_rng(1)
    caps = [np.sort(rng_c.integers(0, 8, shape)).astype(np.dtype(cdt) if cdt != "bool" else bool)
            for _, shape, cdt in spec.captures]
    return arrays, scales + caps


def measure(built: SystolicKernel, spec: Optional[FlashKernelSpec] = None, **_ignored) -> float:
    """Simulated seconds of one call (cycles / clock) on fixed random inputs; deterministic
    (computed once per built kernel)."""
    if built._measured is None:
        arrays, caps = _measure_inputs(spec or built.spec)
        run(built, *arrays, *caps)
        built._measured = built.last_report["seconds"]
        built._measured_report = built.last_report
    return built._measured


def report(built: SystolicKernel) -> dict:
    """The cycle report of the last run (measuring once if the kernel has not run)."""
    if built.last_report is None:
        measure(built)
    return built.last_report


def format_report(rep: dict) -> list:
    """Lines of the human-readable cycle report."""
    total = rep["total_cycles"]
    clock = rep["clock_hz"]

    def t(c):
        return f"{c:,} cycles ({c / clock * 1e6:.1f} us)"

    busy = rep["busy_cycles"]
    fmts = rep.get("macs_by_format") or {}
    by_format = (" (" + ", ".join(f"{k} {v:,}" for k, v in fmts.items()) + ")") if len(fmts) > 1 else ""
    lines = [
        f"accelerator {rep['accelerator']}  {rep['array']} array, {rep['dataflow']}, "
        f"{clock / 1e6:.0f} MHz; tiles {rep['block_q']}x{rep['block_k']}, "
        f"double buffering {'on' if rep['double_buffer'] else 'off'}",
        f"cycles      total {t(total)}",
        f"array       busy {t(busy['array'])}, {rep['ops']['array']} matmuls, {rep['macs']:,} MACs{by_format}; "
        f"utilization {rep['array_utilization']:.3f} (busy {rep['array_busy_fraction']:.3f})",
        f"vector      busy {t(busy['vector'])}, {rep['ops']['vector']} ops ({busy['vector'] / max(total, 1):.3f} of total)",
        f"dma         busy {t(busy['dma'])}, {rep['ops']['dma']} transfers; loaded {rep['bytes_loaded']:,} B, "
        f"stored {rep['bytes_stored']:,} B ({busy['dma'] / max(total, 1):.3f} of total)",
        f"tiles       {rep['tiles_run']} of {rep['tiles_total']} run ({rep['tiles_full']} full, "
        f"{rep['tiles_partial']} partial); tile density {rep['tile_density']:.3f}; empty tiles issue nothing",
        f"memories    scratchpad {rep['scratchpad_used']:,} B, accumulator {rep['accumulator_used']:,} B in use",
    ]
    if rep.get("operands"):
        lines.insert(1, f"operands    {rep['operands']}")
    return lines


def not_runnable(built) -> Optional[str]:
    return None


def source(built: SystolicKernel, kind: str = "ll") -> str:
    """The control program's LLVM IR."""
    return built.mod.inspect_source(kind)


def export_library(built: SystolicKernel, path: str) -> None:
    raise TargetError(f"the systolic target cannot be exported: {NOT_EXPORTABLE}")
