"""Schedule family of the CPU target (``attncc/targets/cpu.py``).

Knobs (``CpuConfig``) and the values searched:

    block_q        16 .. 256   query rows per parallel task: the parallel granularity
                               (tasks = batch * heads * ceil(S / block_q)) and the
                               reuse of each K/V block
    block_k        32 .. 512   keys per inner block: the score tile block_q x block_k
    vector_width   4, 8, 16    float32 lanes per SIMD vector, up to the host's widest
    micro_rows     1 .. 8      rows of the register tile of both matmuls
    micro_vectors  1, 2, 4     vectors per row of the register tile

Lengths cap the block sizes (no block_q beyond the next power of two of S).  A
config is rejected before any build by the target's ``validate_config`` (block
multiples, the 32-register file) and here when its vectors are wider than the host's.

Measuring: builds are NOT overlapped with measurement by default (``OVERLAP_BUILDS``):
the kernel runs on every CPU of the process, so an LLVM build on one of the 2 cores
here would slow the candidate being timed and rank configs by their luck.

``cost_model`` is an analytic model of the kernel (see its docstring); the guided
search ranks candidates with it and corrects it as measurements arrive.
"""

from __future__ import annotations

import math
import os
import time
from functools import lru_cache
from typing import Optional

import numpy as np

from attncc.errors import ConfigError
from attncc.schedules.space import Knob, key_blocks

TARGET = "cpu"
OVERLAP_BUILDS = False

BLOCK_Q = (16, 32, 64, 128, 256)
BLOCK_K = (32, 64, 128, 256, 512)
VECTOR_WIDTH = (4, 8, 16)
MICRO_ROWS = (1, 2, 4, 8)
MICRO_VECTORS = (1, 2, 4)


def _target():
    from attncc.targets import cpu

    return cpu


def _pow2_ceil(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def knobs(spec, options: Optional[dict] = None) -> list:
    host_vw = _target().host_vector_width()
    q_cap = max(BLOCK_Q[0], _pow2_ceil(spec.q_len))
    k_cap = max(64, _pow2_ceil(spec.kv_len))
    return [
        Knob("block_q", tuple(v for v in BLOCK_Q if v <= q_cap), "query rows per parallel task"),
        Knob("block_k", tuple(v for v in BLOCK_K if v <= k_cap), "keys per inner block"),
        Knob("vector_width", tuple(v for v in VECTOR_WIDTH if v <= host_vw), "float32 SIMD lanes"),
        Knob("micro_rows", MICRO_ROWS, "register tile rows"),
        Knob("micro_vectors", MICRO_VECTORS, "register tile vectors per row"),
    ]


def validate(spec, config, options: Optional[dict] = None) -> None:
    """The target's validate_config, plus: vectors no wider than this host's."""
    cpu = _target()
    cpu.validate_config(spec, config)
    host_vw = cpu.host_vector_width()
    if config.vector_width > host_vw:
        raise ConfigError(f"cpu config {config}: vector_width {config.vector_width} is wider than this "
                          f"host's SIMD registers ({host_vw} float32 lanes)", variant=spec.name or None)


# --------------------------------------------------------------------------- the device


@lru_cache(maxsize=None)
def _cpuinfo() -> dict:
    info = {"model": "", "flags": set(), "mhz": 0.0}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k, v = k.strip(), v.strip()
                if k == "model name" and not info["model"]:
                    info["model"] = v
                elif k == "flags" and not info["flags"]:
                    info["flags"] = set(v.split())
                elif k == "cpu MHz" and not info["mhz"]:
                    try:
                        info["mhz"] = float(v)
                    except ValueError:
                        pass
    except OSError:  # pragma: no cover - not Linux
        pass
    if not info["model"]:  # pragma: no cover
        import platform

        info["model"] = platform.processor() or platform.machine() or "unknown cpu"
    return info


def cpu_count() -> int:
    """CPUs the kernel runs on: TVM_NUM_THREADS (which the cpu target sets) or the affinity."""
    try:
        return max(1, int(os.environ["TVM_NUM_THREADS"]))
    except (KeyError, ValueError):
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover
            return os.cpu_count() or 1


def _isa() -> str:
    flags = _cpuinfo()["flags"]
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    if "neon" in flags or "asimd" in flags:
        return "neon"
    return "sse" if flags else "unknown"


def device_name(options: Optional[dict] = None) -> str:
    """'<model name from /proc/cpuinfo>, <N> cpus, <widest SIMD>', e.g.
    'Intel(R) Xeon(R) Processor, 2 cpus, avx512'."""
    return f"{_cpuinfo()['model']}, {cpu_count()} cpus, {_isa()}"


@lru_cache(maxsize=None)
def _cache_bytes() -> tuple:
    """(L1 data, L2) bytes of cpu0 (48 KiB, 2 MiB when unknown)."""
    l1, l2 = 48 * 1024, 2 * 1024 * 1024
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in os.listdir(base):
            p = os.path.join(base, idx)
            try:
                level = open(os.path.join(p, "level")).read().strip()
                kind = open(os.path.join(p, "type")).read().strip()
                size = open(os.path.join(p, "size")).read().strip().upper()
            except OSError:
                continue
            mult = 1024 * 1024 if size.endswith("M") else 1024 if size.endswith("K") else 1
            val = int(size.rstrip("KM")) * mult
            if level == "1" and kind in ("Data", "Unified"):
                l1 = val
            elif level == "2":
                l2 = val
    except (OSError, ValueError):
        pass
    return l1, l2


# --------------------------------------------------------------------------- the cost model

FMA_PORTS = 2          # vector FMAs per cycle
LOAD_PORTS = 2         # vector loads per cycle
FMA_LATENCY = 4        # cycles
VECTOR_OPS = 2         # other vector ops per cycle
EXP2_OPS = 20          # vector ops of the exp2 polynomial + running sum + store
PARALLEL_LAUNCH_S = 4e-6


def _step_cycles(rows: int, vecs: int, regs: int, stream_lines: float = 0.0) -> float:
    """Cycles of one step of a rows x vecs register-tiled FMA loop: FMA throughput, load
    throughput (vecs vectors + rows broadcasts), the FMA latency chain of each
    accumulator, spills past the register file, and operand lines streamed from L2."""
    c = max(rows * vecs / FMA_PORTS, (rows + vecs) / LOAD_PORTS, FMA_LATENCY)
    live = rows * vecs + vecs + 1
    if live > regs:
        c += 2.0 * (live - regs)
    return max(c, stream_lines)


def cost_model(spec, config, options: Optional[dict] = None) -> float:
    """Predicted seconds of one call of the kernel with ``config``.

    Per (query block, key block) tile the kernel does Q·Kᵀ and P·V as register-tiled FMA
    loops (cycles per step from FMA/load throughput, FMA latency and spills, operands
    from L2 when the K or V block outgrows L1), online softmax over the score tile
    (exp2 polynomial per vector, a row reduction per row, the element mask on partial
    tiles), plus fixed per-tile and per-task work.  Tiles are counted as the kernel walks
    them (key bounds, tile maps, padding of ragged blocks); tasks (batch x head x query
    block, zigzag order) are split statically over the cores and the slowest core sets
    the time.  Packing K (a transposing copy) is added.  Vectors narrower than the host's
    cost the same per instruction, so proportionally more.
    """
    c = config
    S, TK, D, DV = spec.q_len, spec.kv_len, spec.head_dim, spec.head_dim_v
    B, H, KVH = spec.batch, spec.q_heads, spec.kv_heads
    BQ, BK, VW, RQ, MV = c.block_q, c.block_k, c.vector_width, c.micro_rows, c.micro_vectors
    host_vw = _target().host_vector_width()
    regs = 32 if host_vw >= 16 else 16
    slow = 1.0 if VW <= host_vw else 2.0 * VW / host_vw          # emulated wide vectors
    l1, l2 = _cache_bytes()
    cores = cpu_count()
    mhz = _cpuinfo()["mhz"] or 2500.0
    hz = mhz * 1e6

    tile = VW * MV
    dvp = -(-DV // tile) * tile
    nqb, nkb = -(-S // BQ), -(-TK // BK)
    line = 64.0
    # Q·Kᵀ: per micro tile, D steps; the K block is re-read for every row group
    k_block = D * BK * 4
    qk_stream = MV * VW * 4 / line if k_block > l1 else 0.0
    qk = (BQ // RQ) * (BK // tile) * (D * _step_cycles(RQ, MV, regs, qk_stream) + RQ * MV * 2)
    # P·V: per micro tile, BK steps; acc loaded, scaled by alpha and stored
    v_block = BK * DV * 4
    pv_stream = MV * VW * 4 / line if v_block > l1 else 0.0
    pv = (BQ // RQ) * (dvp // tile) * (BK * _step_cycles(RQ, MV, regs, pv_stream) + RQ * MV * 3)
    # online softmax over the score tile
    nvec = BK / VW
    soft = BQ * (nvec * (2 + EXP2_OPS) / VECTOR_OPS + 24 + 3 * math.log2(VW))
    if BQ * BK * 4 > l1:
        soft += BQ * nvec * 1.0                                  # the score tile streams from L2
    if spec.score_mod is not None:
        soft += BQ * nvec * 6 / VECTOR_OPS
    mask_extra = BQ * nvec * 8 / VECTOR_OPS
    per_tile = (qk + pv + soft) * slow + 60 + BQ * 2
    per_task = (BQ * dvp / VW * 3 + BQ * 40) * slow
    visited, full = key_blocks(spec, BQ, BK, tables=getattr(_target(), "use_block_table", lambda s: False)(spec))
    task = visited * per_tile + (visited - full) * mask_extra * slow + per_task     # per query block
    # static split of (b, h, zigzag(qb)) over the cores
    r = np.arange(nqb)
    zig = np.where(r % 2 == 0, r // 2, nqb - 1 - r // 2)
    costs = np.tile(task[zig], B * H)
    n = costs.size
    chunk = -(-n // cores)
    makespan = max(costs[i:i + chunk].sum() for i in range(0, n, chunk))
    # pack K: scale and transpose per key block (scalar gathers), parallel over key blocks
    pack_tasks = B * KVH * nkb
    pack = (BK * D * 1.0 + 200) * (-(-pack_tasks // cores))
    if spec.dtype != "float32" or dvp != DV:
        pack += B * KVH * TK * dvp / VW * 2 / cores
    cycles = makespan + pack
    return cycles / hz + 2 * PARALLEL_LAUNCH_S


# --------------------------------------------------------------------------- measuring


def _measure_args(built, spec):
    """The kernel's arguments for timing, made once (as targets.cpu.measure makes them)."""
    import tvm

    cpu = _target()
    dt = cpu._np_dtype(spec.dtype)
    rng = np.random.default_rng(0)
    shapes = cpu._shapes(spec)
    args = [tvm.runtime.tensor(np.clip(rng.standard_normal(s, dtype=np.float32), -8, 8).astype(adt))
            for s, adt in zip(shapes[:3], cpu._input_dtypes(spec))]
    args.append(tvm.runtime.tensor(np.empty(shapes[3], dtype=dt)))
    args.append(tvm.runtime.tensor(np.empty(shapes[4], dtype=np.float32)))
    rng_c = np.random.default_rng(1)
    caps = [np.sort(rng_c.integers(0, 8, shape)).astype(cpu._np_dtype(cdt)) for _, shape, cdt in spec.captures]
    scales = [np.full(shape, 0.05, np.float32) for _, shape in spec.scales]
    args.extend(built.extra_args(scales + caps))
    return args


def sampler(built, spec):
    """fn(n) -> n per-call times (seconds) of ``built`` on fixed random inputs."""
    cpu = _target()
    try:
        args = _measure_args(built, spec)
    except AttributeError:  # the target's helpers moved: time through its measure()
        return lambda n: [cpu.measure(built, spec, repeat=1, warmup=0) for _ in range(n)]
    fn = built.executable["main"]

    def run(n: int) -> list:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn(*args)
            out.append(time.perf_counter() - t0)
        return out

    return run


def load_built(spec, config, path: str, options: Optional[dict] = None, compile_seconds: float = 0.0):
    """A CpuKernel from a library written by ``export_library`` (a build in another process)."""
    import tvm

    cpu = _target()
    tables = (cpu.block_tables(spec, config) if cpu.use_block_table(spec) and spec.tile_map is not None
              else None)
    return cpu.CpuKernel(spec, config, tvm.runtime.load_module(path), compile_seconds, tables)
