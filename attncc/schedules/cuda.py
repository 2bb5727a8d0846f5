"""Schedule family of the CUDA target (``attncc/targets/cuda.py``).

Knobs are the fields of the config the target picks for the kernel (``CudaConfig`` for
prefill, the decode kernel's own config for q_len <= 16), searched over these values;
a field not listed here keeps its default, so a knob added to the target is searched
once it is listed:

    block_q         64, 128, 256    query rows per thread block
    block_k         32, 64, 128     keys per pipelined K/V tile
    num_warps       2 .. 8          warps per block (decode: 1 .. 8)
    num_stages      2, 3, 4         cp.async pipeline depth (shared-memory slots)
    q_in_registers  True, False     Q fragments kept in registers
    mma             sync, wgmma     mma.sync or Hopper wgmma (sm_90a)
    query_blocks    (not searched)  Hopper wgmma: query blocks chained per thread block; at
                                    most 3 % faster where measured (window 256, S=16k), so it is
                                    a --config knob, not a tuning dimension
    num_splits      1 .. 16         decode: key ranges per (batch, kv head)
    block_rows      16, 32, 64      decode: packed (head, query) rows per block

On Hopper (``arch`` sm_90*) prefill searches HOPPER_GRIDS instead: the wgmma kernel's grid
(block_k 64/96/128; 1-3 warpgroups as block_q 64/128/192; 2/3 stages) and mma.sync's
(block_q 64/128, 4/8 warps, block_k 64/128, 2/3 stages, Q in registers or not) -- 35 valid
configs at D=128.  Decode searches DECODE_SEARCH (50 valid at D=128).

Configs that cannot fit are rejected before building by the target's
``validate_config(spec, config, arch)``: shared memory per block against the arch's
limit, fragment registers per thread, warp/tile divisibility; a config outside its
kernel's Hopper grid by ``searched`` (each reason counted).

A GPU machine without TVM tunes by the split flow: candidates.py exports every valid
config here, measure_candidates.py times them there, ``attncc tune --ingest`` records them.
Records of one GPU serve the others of the same chip (SAME_CHIP) when compile finds none
of the device itself.

Builds overlap measurement by default (``OVERLAP_BUILDS``): nvcc/LLVM run on host
cores while the GPU times the previous candidate.  Tuning measures kernels, so it needs
a GPU; ``arch`` defaults to the local one.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from attncc.errors import AttnccError, ConfigError
from attncc.schedules.space import Knob

TARGET = "cuda"
OVERLAP_BUILDS = True
REQUIRED_OPTIONS = ("arch",)

VALUES = {
    "block_q": (64, 128, 256),
    "block_k": (32, 64, 128),
    "num_warps": (2, 4, 8),
    "num_stages": (2, 3, 4),
    "q_in_registers": (True, False),
    "mma": ("sync", "wgmma"),
    "num_splits": (1, 2, 4, 8, 16),
    "block_rows": (16, 32, 64),
}
DECODE_VALUES = {"num_warps": (1, 2, 4, 8)}

# Hopper (sm_90*): the space is the union of two grids, one per kernel: the wgmma kernel's
# knobs (block_k; warpgroups through block_q = 16 * num_warps: 1, 2 or 3; stages) and
# mma.sync's main knobs.  Knob values are the union; ``searched`` rejects a config outside
# its kernel's grid (with the reason counted, like a config that cannot fit), so the
# guided search's mutations stay inside the grids.  A few dozen candidates per shape.
HOPPER_VALUES = {
    "block_q": (64, 128, 192),
    "block_k": (64, 96, 128),
    "num_warps": (4, 8, 12),
    "num_stages": (2, 3),
    "q_in_registers": (True, False),
    "mma": ("wgmma", "sync"),
}
HOPPER_GRIDS = {
    "wgmma": {"block_q": (64, 128, 192), "block_k": (64, 96, 128), "num_stages": (2, 3),
              "q_in_registers": (True,)},          # the wgmma kernel keeps Q in shared memory: one value
    "sync": {"block_q": (64, 128), "num_warps": (4, 8), "block_k": (64, 128), "num_stages": (2, 3),
             "q_in_registers": (True, False)},
}
# decode (split-KV kernel) on any arch
DECODE_SEARCH = {"block_k": (64, 128), "num_warps": (2, 4, 8), "num_stages": (2, 3),
                 "num_splits": (1, 2, 4, 8, 16), "block_rows": (16, 32)}

# what a record's device is called when no GPU is present to ask (compile --arch on a host)
ARCH_NAMES = {
    "sm_80": "NVIDIA A100", "sm_86": "NVIDIA A10", "sm_87": "NVIDIA Jetson Orin", "sm_89": "NVIDIA L40S",
    "sm_90": "NVIDIA H100", "sm_90a": "NVIDIA H100", "sm_100": "NVIDIA B200", "sm_100a": "NVIDIA B200",
}
_FAMILIES = ("GH200", "H200", "H100", "H800", "H20", "B200", "B100", "A100", "A800", "A10G", "A10", "A30",
             "L40S", "L40", "L4", "RTX 6000", "RTX 4090", "RTX 3090", "A6000", "V100", "T4")
# streaming multiprocessors and dense fp16 tensor throughput (FLOP/s) for the cost model
_SPECS = {"NVIDIA H100": (132, 990e12), "NVIDIA H200": (132, 990e12), "NVIDIA A100": (108, 312e12),
          "NVIDIA L40S": (142, 362e12), "NVIDIA A10": (72, 125e12), "NVIDIA B200": (148, 2250e12)}


def _target():
    from attncc.targets import cuda

    return cuda


def default_arch(options: Optional[dict] = None) -> str:
    arch = _target().local_arch()
    if arch is None:
        raise AttnccError("cuda tuning measures kernels and there is no CUDA device here "
                          "(tune on the GPU machine; compile --arch sm_90a uses its records)")
    return arch


def check_can_measure(options: Optional[dict] = None) -> None:
    """Raise unless this machine can time kernels for ``options['arch']`` (the tuner asks
    before measuring): without the GPU, the split flow is the way."""
    local = _target().local_arch()
    arch = (options or {}).get("arch")
    if local is None:
        raise AttnccError("cuda tuning measures kernels and there is no CUDA device here: export the "
                          "candidates with --export-candidates DIR, time them on the GPU machine with "
                          "python -m attncc.schedules.measure_candidates, then attncc tune --ingest (README, Tuning)")
    if arch and arch != local:
        raise AttnccError(f"cannot time {arch} kernels on this GPU ({local}): tune on a {arch} GPU, or use "
                          "--export-candidates for one")


def _pow2_ceil(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def _hopper(options: Optional[dict]) -> bool:
    return str((options or {}).get("arch", "")).startswith("sm_90")


def knobs(spec, options: Optional[dict] = None) -> list:
    default = _target().default_config(spec)
    decode = not isinstance(default, _target().CudaConfig)
    hopper = _hopper(options) and not decode
    out = []
    for f in dataclasses.fields(default):
        if decode:
            vals = DECODE_SEARCH.get(f.name)
            if f.name == "block_rows":          # rows per block past the packed rows are idle
                vals = tuple(v for v in vals if v <= max(16, _pow2_ceil(spec.group * spec.q_len)))
        elif hopper:
            vals = HOPPER_VALUES.get(f.name)
        else:
            vals = VALUES.get(f.name)
        if vals is None:
            continue
        if f.name == "block_q" and not decode:
            vals = tuple(v for v in vals if v <= max(64, _pow2_ceil(spec.q_len)))
        if f.name == "mma" and not str((options or {}).get("arch", "")).startswith("sm_90"):
            vals = ("sync",)
        out.append(Knob(f.name, tuple(vals)))
    return out


def validate(spec, config, options: Optional[dict] = None) -> None:
    """Whether ``config`` can build this kernel (the target's ``validate_config``)."""
    _target().validate_config(spec, config, (options or {}).get("arch"))


def searched(spec, config, options: Optional[dict] = None) -> None:
    """Raise ConfigError if a buildable ``config`` is outside the searched grid of its kernel
    (Hopper: HOPPER_GRIDS).  Only the search space asks; a tuned record or --config outside
    the grid is still used."""
    cuda = _target()
    if not _hopper(options) or not isinstance(config, cuda.CudaConfig):
        return
    grid = HOPPER_GRIDS.get(config.mma, {})
    for name, values in grid.items():
        value = getattr(config, name)
        if value not in values:
            raise ConfigError(f"cuda config {config}: mma={config.mma} is searched with {name} in "
                              f"{{{', '.join(str(v) for v in values)}}}, not {value}", variant=spec.name or None)


# --------------------------------------------------------------------------- the device


# GPUs built on the same chip with the same SM count and clocks (they differ in memory: size,
# and for the H200 bandwidth).  The tuned config of a compute-bound kernel measured on one is
# the tuned config on the others; lookup (``compile``) uses such a record when no record of
# the device itself exists, and says which device measured it.
SAME_CHIP = (
    ("NVIDIA H100", "NVIDIA H200", "NVIDIA GH200", "NVIDIA H800"),     # GH100, 132 SMs, sm_90
    ("NVIDIA A100", "NVIDIA A800"),                                    # GA100, 108 SMs, sm_80
    ("NVIDIA B200", "NVIDIA B100"),
)


def normalize_device_name(name: str) -> str:
    """'NVIDIA H200' from torch's or TVM's 'NVIDIA H200 141GB HBM3e' (the record's device)."""
    for fam in _FAMILIES:
        if fam in name:
            return f"NVIDIA {fam}"
    return name.strip()


_normalize = normalize_device_name


def equivalent_devices(name: str) -> list:
    """The other devices whose records apply to ``name`` (SAME_CHIP), in that order."""
    for group in SAME_CHIP:
        if name in group:
            return [d for d in group if d != name]
    return []


def device_name(options: Optional[dict] = None) -> str:
    """The GPU's name from the runtime ('NVIDIA H100 80GB HBM3' -> 'NVIDIA H100') when the
    local GPU is the arch asked for, else from the arch ('sm_90a' -> 'NVIDIA H100')."""
    arch = (options or {}).get("arch")
    try:
        import tvm

        dev = tvm.cuda(0)
        if dev.exist:
            local = _target().local_arch()
            if arch is None or arch == local:
                return _normalize(str(dev.device_name))
    except Exception:  # pragma: no cover - depends on the machine
        pass
    if arch is None:
        return "no CUDA device"
    return ARCH_NAMES.get(arch, f"NVIDIA {arch}")


# --------------------------------------------------------------------------- the cost model


def cost_model(spec, config, options: Optional[dict] = None) -> float:
    """Predicted seconds: tensor-core time of the visited tiles at an efficiency set by
    latency hiding (resident warps per SM, pipeline depth, Q re-reads from shared memory),
    plus the softmax's exponentials, over waves of thread blocks on the SMs (occupancy
    from shared memory, registers and threads; the last wave's tail counted whole)."""
    from attncc.schedules.space import key_blocks

    cuda = _target()
    name = device_name(options)
    sms, peak = _SPECS.get(name, (132, 990e12))
    clock = 1.7e9
    c = config
    B, H, D, DV = spec.batch, spec.q_heads, spec.head_dim, spec.head_dim_v
    if not isinstance(c, cuda.CudaConfig):                       # decode: split-KV
        splits = getattr(c, "num_splits", 1)
        bk = getattr(c, "block_k", 64)
        blocks = B * spec.kv_heads * splits
        keys = -(-spec.kv_len // splits)
        per_block = (-(-keys // bk)) * (bk * (D + DV) * 2 * 2 / 1.0e3 + 200) / clock
        waves = -(-blocks // (sms * 4))
        return waves * per_block + (3e-6 if splits > 1 else 0.0) + 4e-6
    bq, bk = c.block_q, c.block_k
    warps = c.num_warps
    try:
        smem = cuda.shared_memory_bytes(spec, c)
    except Exception:  # noqa: BLE001
        smem = 2 * (bq * max(D, DV) + c.num_stages * bk * (D + DV))
    try:
        regs = cuda.registers_estimate(spec, c) + 40
    except Exception:  # noqa: BLE001
        regs = 128
    per_sm = max(1, min(228 * 1024 // max(smem, 1), 65536 // max(warps * 32 * min(regs, 255), 1),
                        64 // warps, 32))
    resident_warps = per_sm * warps
    hide = min(1.0, 0.35 + 0.065 * resident_warps) * (0.8 + 0.1 * min(c.num_stages, 4) / 2)
    if not getattr(c, "q_in_registers", True):
        hide *= 0.92
    if getattr(c, "mma", "sync") == "wgmma":
        hide *= 1.3
    visited, full = key_blocks(spec, bq, bk)
    flops_tile = 2.0 * bq * bk * (D + DV)
    mma_s = flops_tile / (peak / sms * min(hide, 1.0))
    soft_s = bq * bk / (16 * 4 * clock) + bq * bk / (32 * clock)   # ex2 on the SFUs + the rest
    tile_s = mma_s + soft_s
    block_s = visited * tile_s + (visited - full) * bq * bk / (64 * clock) + 2e-6
    costs = np.sort(np.tile(block_s, B * H))[::-1]
    slots = sms * per_sm
    # heaviest-first greedy over the slots approximates the scheduler
    if costs.size <= slots:
        span = float(costs.max())
    else:
        loads = np.zeros(slots)
        for x in costs:
            i = int(np.argmin(loads))
            loads[i] += x
        span = float(loads.max())
    return span + 3e-6


# --------------------------------------------------------------------------- measuring


def sampler(built, spec, number: int = 5):
    """fn(n) -> n times (seconds, each the mean of ``number`` launches) by TVM's time_evaluator,
    on the arguments ``cuda.measure`` uses (tile maps, fp8 scales and captured inputs included)."""
    import tvm

    cuda = _target()
    if type(built.config) is not cuda.CudaConfig:   # another kernel (decode): time it the target's way
        return lambda n: [cuda.measure(built, spec, repeat=1, number=number) for _ in range(n)]
    dev = tvm.cuda(0)
    function, args = cuda.measure_args(built, spec, dev)
    mod = getattr(built.executable, "mod", built.executable)

    def run(n: int) -> list:
        timer = mod.time_evaluator(function, dev, number=number, repeat=n, min_repeat_ms=0)
        return [float(x) for x in timer(*args).results]

    return run


def load_built(spec, config, path: str, options: Optional[dict] = None, compile_seconds: float = 0.0):
    import tvm

    cuda = _target()
    return cuda.CudaKernel(spec, config, (options or {}).get("arch"), tvm.runtime.load_module(path),
                           compile_seconds)

