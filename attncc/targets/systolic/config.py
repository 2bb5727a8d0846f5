"""The simulated accelerator's hardware: one frozen dataclass, presets, JSON files.

An :class:`AcceleratorConfig` describes the machine the systolic target schedules for
(the *schedule* -- tile sizes, dataflow, double buffering -- is the target's
``SystolicConfig``).  Presets:

``default`` -- a 128x128 array like one TPU v4 MXU core (128x128 bf16 MXU, 8x128-lane
    vector unit): 1 GHz, 16 MiB scratchpad (v4's vector memory is 16 MiB/core),
    4 MiB accumulator, DMA 128 B/cycle (128 GB/s: a core's share of HBM) with 500
    cycles latency.
``tpu_v1`` -- the ISCA'17 TPU: a 256x256 weight-stationary array at 700 MHz, 24 MiB
    unified buffer, 4 MiB accumulators (4096 x 256 x 32 bit), DDR3 at 34 GB/s =
    48 B/cycle.  Its activation unit works on one 256-wide row per cycle: 256 lanes.
    (TPU v1 computes int8; the simulator's array takes bf16 in / fp32 accumulate for
    every preset, and int8 in / int32 accumulate for ``--quantize int8`` kernels -- at
    the same MACs per cycle, which is TPU v1's int8 rate; fp8 is emulated in bf16.)
``gemmini`` -- Gemmini's default: a 16x16 array at 1 GHz, 256 KiB scratchpad, 64 KiB
    accumulator, a 128-bit (16 B/cycle) system bus with ~80 cycles to memory, a
    16-lane vector path.

A JSON file (``--systolic-config my.json``) holds the same fields; missing fields take
the ``default`` preset's values, unknown fields are an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from functools import lru_cache

from attncc.errors import ConfigError

KiB = 1024
MiB = 1024 * 1024


@dataclass(frozen=True)
class AcceleratorConfig:
    """One simulated accelerator.

    rows, cols                    the systolic array (R x C processing elements, bf16 x bf16 -> fp32,
                                  or int8 x int8 -> int32 at the same rate for quantized kernels)
    clock_hz                      cycles per second (simulated time = cycles / clock_hz)
    scratchpad_bytes              on-chip SRAM for operand tiles (Q, K, V, P: bf16, or int8 when quantized)
    accumulator_bytes             on-chip SRAM for fp32 results (S, the output accumulator, row stats)
    dma_bytes_per_cycle           off-chip bandwidth of the DMA engine
    dma_latency_cycles            fixed cost of one DMA transfer (descriptor + memory latency)
    vector_lanes                  fp32 lanes of the vector unit
    vector_alu_cycles             cycles per vector of add/mul/max/compare/select/convert
    vector_transcendental_cycles  cycles per vector of exp/log/tanh/sigmoid/sqrt
    vector_reduce_cycles          cycles per vector of a row reduction (max, sum), tree included
    """

    name: str = "default"
    rows: int = 128
    cols: int = 128
    clock_hz: float = 1.0e9
    scratchpad_bytes: int = 16 * MiB
    accumulator_bytes: int = 4 * MiB
    dma_bytes_per_cycle: float = 128.0
    dma_latency_cycles: int = 500
    vector_lanes: int = 1024
    vector_alu_cycles: int = 1
    vector_transcendental_cycles: int = 4
    vector_reduce_cycles: int = 2

    def describe(self) -> str:
        return (f"{self.name}: {self.rows}x{self.cols} array at {self.clock_hz / 1e6:.0f} MHz, "
                f"scratchpad {_size(self.scratchpad_bytes)}, accumulator {_size(self.accumulator_bytes)}, "
                f"DMA {self.dma_bytes_per_cycle:g} B/cycle + {self.dma_latency_cycles} cycles, "
                f"vector {self.vector_lanes} lanes")


PRESETS = {
    "default": AcceleratorConfig(),
    "tpu_v1": AcceleratorConfig(
        name="tpu_v1", rows=256, cols=256, clock_hz=700e6, scratchpad_bytes=24 * MiB,
        accumulator_bytes=4 * MiB, dma_bytes_per_cycle=48.0, dma_latency_cycles=500, vector_lanes=256),
    "gemmini": AcceleratorConfig(
        name="gemmini", rows=16, cols=16, clock_hz=1.0e9, scratchpad_bytes=256 * KiB,
        accumulator_bytes=64 * KiB, dma_bytes_per_cycle=16.0, dma_latency_cycles=80, vector_lanes=16),
}


def _size(n: int) -> str:
    if n % MiB == 0:
        return f"{n // MiB} MiB"
    if n % KiB == 0:
        return f"{n // KiB} KiB"
    return f"{n} B"


def resolve(name_or_path) -> AcceleratorConfig:
    """A preset by name, a JSON file by path, or an AcceleratorConfig as it is."""
    if isinstance(name_or_path, AcceleratorConfig):
        return name_or_path
    text = str(name_or_path or "default")
    if text in PRESETS:
        return PRESETS[text]
    if text.endswith(".json") or os.path.sep in text:
        path = os.path.abspath(os.path.expanduser(text))
        try:
            mtime = os.path.getmtime(path)
        except OSError:
            raise ConfigError(f"systolic config file {text} does not exist") from None
        return _load_json(path, mtime)
    raise ConfigError(f"unknown systolic config '{text}' (presets: {', '.join(PRESETS)}; "
                      "or a .json file with AcceleratorConfig fields)")


@lru_cache(maxsize=32)
def _load_json(path: str, mtime: float) -> AcceleratorConfig:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"systolic config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"systolic config file {path}: expected a JSON object of AcceleratorConfig fields")
    fields = {f.name: f for f in dataclasses.fields(AcceleratorConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"systolic config file {path}: unknown field(s) {', '.join(unknown)} "
                          f"(fields: {', '.join(fields)})")
    base = PRESETS.get(data.get("preset", "default"), PRESETS["default"]) if "preset" in fields else PRESETS["default"]
    values = {}
    for k, v in data.items():
        want = fields[k].type
        if want == "str":
            ok = isinstance(v, str)
        elif want == "int":
            ok = isinstance(v, int) and not isinstance(v, bool) and v > 0
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
        if not ok:
            raise ConfigError(f"systolic config file {path}: field {k} must be a positive {want}, got {v!r}")
        values[k] = v
    values.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return dataclasses.replace(base, **values)
