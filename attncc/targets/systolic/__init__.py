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
4. ``run`` -- q, k, v (bf16) go to the simulator's off-chip memory, the block table of
   non-empty tiles (prune-sparsity's tile map, or the runtime map from captured data)
   is computed, the program drives the simulator tile by tile, and out / lse come back
   with the cycle report (``built.last_report``).
5. ``measure`` -- simulated seconds (cycles / clock) on fixed random inputs.

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
from attncc.targets.spec import FlashKernelSpec
from attncc.targets.systolic import config as hwconfig
from attncc.targets.systolic.config import PRESETS, AcceleratorConfig, resolve
from attncc.targets.systolic.sim import Simulator, bf16, matmul_cycles

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


def memory_plan(spec: FlashKernelSpec, config: SystolicConfig) -> dict:
    """{memory: [(buffer, bytes), ...]} of the schedule's on-chip buffers (as the
    runtime allocates them)."""
    BQ, BK, D, DV = config.block_q, config.block_k, spec.head_dim, spec.head_dim_v
    n = 2 if config.double_buffer else 1
    x = f"{n}x " if n > 1 else ""
    return {
        "scratchpad": [
            (f"Q {BQ}x{D} bf16", BQ * D * 2),
            (f"K {x}{BK}x{D} bf16", n * BK * D * 2),
            (f"V {x}{BK}x{DV} bf16", n * BK * DV * 2),
            (f"P {x}{BQ}x{BK} bf16", n * BQ * BK * 2),
            (f"out {BQ}x{DV} bf16", BQ * DV * 2),
        ],
        "accumulator": [
            (f"S {x}{BQ}x{BK} fp32", n * BQ * BK * 4),
            (f"O {BQ}x{DV} fp32", BQ * DV * 4),
        ] + ([(f"PV 2x {BQ}x{DV} fp32", 2 * BQ * DV * 4)] if config.double_buffer else []) + [
            (f"row stats 5x{BQ} fp32", 5 * BQ * 4),
        ],
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
        raise DTypeError(f"systolic target: quantized ({spec.quant_dtype}) kernels are not supported; the "
                         "array takes bf16 operands", variant=spec.name or None)
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
    for name, arr, shape in zip("qkv", (q, k, v), _shapes(spec)):
        a = np.asarray(arr)
        if a.shape != shape:
            raise ShapeError(f"systolic target: {name} has shape {a.shape}, kernel expects {shape}",
                             variant=spec.name or None)
        arrays.append(np.ascontiguousarray(a.astype(bf16(), copy=False)))
    if len(extra) != len(spec.captures):
        raise TargetError(f"kernel takes {len(spec.captures)} input(s) after q, k, v "
                          f"({', '.join(c[0] for c in spec.captures) or 'none'}), got {len(extra)}",
                          variant=spec.name or None)
    captures = []
    for (name, shape, _), arr in zip(spec.captures, extra):
        a = np.asarray(arr)
        if a.shape != tuple(shape):
            raise ShapeError(f"input {name} has shape {a.shape}, kernel expects {tuple(shape)}",
                             variant=spec.name or None)
        captures.append(a)
    kinds = built.kinds if built.kinds is not None else tile_kinds(
        spec, built.config.block_q, built.config.block_k, captures)
    tables = block_tables(kinds)
    r = AttentionRun(spec, built.config, built.hardware, *arrays, captures=captures)
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
    })
    if trace:
        rep["trace"] = r.sim.trace
    built.last_report = rep
    return r.sim.dram["out"], r.sim.dram["lse"]


def _measure_inputs(spec: FlashKernelSpec):
    rng = np.random.default_rng(0)
    arrays = [np.clip(rng.standard_normal(s, dtype=np.float32), -8, 8).astype(bf16()) for s in _shapes(spec)]
    rng_c = np.random.default_rng(1)
    caps = [np.sort(rng_c.integers(0, 8, shape)).astype(np.dtype(cdt) if cdt != "bool" else bool)
            for _, shape, cdt in spec.captures]
    return arrays, caps


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
    lines = [
        f"accelerator {rep['accelerator']}  {rep['array']} array, {rep['dataflow']}, "
        f"{clock / 1e6:.0f} MHz; tiles {rep['block_q']}x{rep['block_k']}, "
        f"double buffering {'on' if rep['double_buffer'] else 'off'}",
        f"cycles      total {t(total)}",
        f"array       busy {t(busy['array'])}, {rep['ops']['array']} matmuls, {rep['macs']:,} MACs; "
        f"utilization {rep['array_utilization']:.3f} (busy {rep['array_busy_fraction']:.3f})",
        f"vector      busy {t(busy['vector'])}, {rep['ops']['vector']} ops ({busy['vector'] / max(total, 1):.3f} of total)",
        f"dma         busy {t(busy['dma'])}, {rep['ops']['dma']} transfers; loaded {rep['bytes_loaded']:,} B, "
        f"stored {rep['bytes_stored']:,} B ({busy['dma'] / max(total, 1):.3f} of total)",
        f"tiles       {rep['tiles_run']} of {rep['tiles_total']} run ({rep['tiles_full']} full, "
        f"{rep['tiles_partial']} partial); tile density {rep['tile_density']:.3f}; empty tiles issue nothing",
        f"memories    scratchpad {rep['scratchpad_used']:,} B, accumulator {rep['accumulator_used']:,} B in use",
    ]
    return lines


def not_runnable(built) -> Optional[str]:
    return None


def source(built: SystolicKernel, kind: str = "ll") -> str:
    """The control program's LLVM IR."""
    return built.mod.inspect_source(kind)


def export_library(built: SystolicKernel, path: str) -> None:
    raise TargetError(f"the systolic target cannot be exported: {NOT_EXPORTABLE}")
