"""A cycle-counting simulator of a TPU-like accelerator that computes real values.

Units
-----
* **systolic array** R x C (``AcceleratorConfig.rows/cols``), bf16 inputs, fp32
  accumulation, weight-stationary (``ws``) or output-stationary (``os``);
* **vector unit** with ``vector_lanes`` fp32 lanes (exp/max/sum/scale/select ...);
* **DMA engine** between off-chip memory and the on-chip memories, ``dma_bytes_per_cycle``
  with ``dma_latency_cycles`` per transfer;
* **scratchpad** (bf16 operand tiles) and **accumulator** (fp32 results) memories of
  fixed capacity: every buffer is allocated up front and an allocation beyond a
  capacity is refused (the target's ``validate_config`` rejects such schedules first,
  with the buffer and byte counts, so a run never gets here).

Values are computed with numpy as the hardware would: operands are bf16 (``ml_dtypes``),
products are exact in fp32 and accumulate in fp32; the vector unit computes in fp32.

Matmul cycle model (C[M,N] = A[M,K] · B[K,N] on an R x C array)
---------------------------------------------------------------

Weight-stationary (B is the stationary operand, A streams in one row per cycle)::

    folds  F_ws = ceil(K / R) * ceil(N / C)
    cycles      = R                    fill: the first R x C weight tile shifts in, one row per cycle
                + F_ws * max(M, R)     one cycle per streamed row per fold; the next fold's weights
                                       shift into the PEs' shadow registers meanwhile, which takes
                                       R cycles, so a fold lasts at least R cycles
                + (R + C - 2)          drain: the last row's partial sums travel R-1 PEs down and
                                       C-1 PEs across (the skew of the wavefront)

Output-stationary (each PE owns one element of an R x C output tile; A enters from
the left, B from the top, one K step per cycle)::

    folds  F_os = ceil(M / R) * ceil(N / C)
    cycles      = (R + C - 2)          fill: the skewed operands reach the far corner PE
                + F_os * max(K, R)     one cycle per K step per fold; the previous fold's R rows of
                                       outputs shift out through shadow registers meanwhile (R cycles)
                + R                    drain: the last tile's R rows shift out

``utilization = M*K*N / (R*C*cycles)``; :func:`matmul_cycles` is the formula and a
matmul on an idle array takes exactly that long from start to result.  Consecutive
matmuls pipeline: the array is occupied for fill + folds and the drain is latency, so the
next matmul's fill overlaps the previous one's drain (its busy cycles exclude the drain).

Vector unit: an op over ``n`` fp32 elements costs ``ceil(n / lanes) * c`` cycles with
``c = vector_alu_cycles`` (add, mul, max, compare, select, convert),
``vector_transcendental_cycles`` (exp, log, tanh, sigmoid, sqrt) or
``vector_reduce_cycles`` (a row reduction, per input vector).

DMA: a transfer of ``b`` bytes occupies the engine for ``ceil(b / dma_bytes_per_cycle)``
cycles and its data is ready ``dma_latency_cycles`` later (transfers are pipelined: the
latency of one overlaps the next; busy cycles count the occupancy).

Overlap (the event schedule)
----------------------------
Each unit executes its operations in program order, one at a time (a decoupled
access/execute machine with one queue per unit).  An operation starts when its unit
is free and its data hazards are resolved:

* RAW: every buffer it reads has been written (``ready``),
* WAW/WAR: every buffer it writes has been written and read by all earlier readers.

``start = max(unit_free, ready(reads), ready(writes), last_read(writes))``,
``end = start + cycles + latency`` (latency: the DMA's memory latency, the array's
drain); the unit is free again at ``start + cycles``, when it has also finished reading
its operands (``last_read``).  Busy cycles (occupancy) are summed per unit; the total
is the last end (the critical path).  With one buffer per operand the hazards
serialise DMA, array and vector; with two (double buffering, chosen by the schedule)
the loads of the next tile and its Q·Kᵀ overlap the softmax of the current one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from attncc.targets.systolic.config import AcceleratorConfig

UNITS = ("array", "vector", "dma")

TRANSCENDENTAL = frozenset({"exp", "log", "tanh", "sigmoid", "sqrt"})
FREE = frozenset({"constant", "yield"})


def bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def matmul_cycles(M: int, K: int, N: int, rows: int, cols: int, dataflow: str) -> int:
    """Cycles of C[M,N] = A[M,K]·B[K,N] on a rows x cols array (see the module docstring)."""
    R, C = rows, cols
    if dataflow == "ws":
        folds = math.ceil(K / R) * math.ceil(N / C)
        return R + folds * max(M, R) + (R + C - 2)
    if dataflow == "os":
        folds = math.ceil(M / R) * math.ceil(N / C)
        return (R + C - 2) + folds * max(K, R) + R
    raise ValueError(f"dataflow must be 'ws' or 'os', got {dataflow!r}")


def matmul_drain(rows: int, cols: int, dataflow: str) -> int:
    """The drain term of :func:`matmul_cycles`: cycles after the last input enters until
    the last result leaves the array.  The array accepts the next matmul's fill meanwhile
    (the drain is latency, not occupancy)."""
    return rows + cols - 2 if dataflow == "ws" else rows


class CapacityError(RuntimeError):
    """An allocation beyond a memory's capacity (validate_config should have refused it)."""


@dataclass
class Buffer:
    name: str
    memory: str                   # "scratchpad" | "accumulator"
    data: np.ndarray
    ready: int = 0                # cycle its last write ends
    last_read: int = 0            # cycle its last read ends


@dataclass
class Stats:
    busy: dict = field(default_factory=lambda: {u: 0 for u in UNITS})
    ops: dict = field(default_factory=lambda: {u: 0 for u in UNITS})
    total_cycles: int = 0
    macs: int = 0                 # multiply-accumulates issued to the array
    bytes_loaded: int = 0
    bytes_stored: int = 0
    vector_elements: int = 0      # element-operations done by the vector unit


class Simulator:
    """One accelerator: memories, units, the event schedule and its statistics."""

    def __init__(self, hw: AcceleratorConfig, dataflow: str = "ws"):
        if dataflow not in ("ws", "os"):
            raise ValueError(f"dataflow must be 'ws' or 'os', got {dataflow!r}")
        self.hw = hw
        self.dataflow = dataflow
        self.dram: dict = {}                    # off-chip tensors by name
        self.buffers: dict = {}
        self.used = {"scratchpad": 0, "accumulator": 0}
        self.capacity = {"scratchpad": hw.scratchpad_bytes, "accumulator": hw.accumulator_bytes}
        self.unit_free = {u: 0 for u in UNITS}
        self.stats = Stats()
        self.trace: Optional[list] = None       # (unit, name, start, end) when tracing

    # ---------------------------------------------------------------- memories
    def alloc(self, name: str, memory: str, shape: tuple, dtype) -> Buffer:
        data = np.zeros(shape, dtype=dtype)
        if self.used[memory] + data.nbytes > self.capacity[memory]:
            raise CapacityError(f"{memory}: buffer {name} needs {data.nbytes} bytes, "
                                f"{self.capacity[memory] - self.used[memory]} of {self.capacity[memory]} left")
        self.used[memory] += data.nbytes
        buf = Buffer(name, memory, data)
        self.buffers[name] = buf
        return buf

    def bind(self, name: str, array: np.ndarray) -> None:
        """Place a tensor in off-chip memory (the host's copy to the device: not counted)."""
        self.dram[name] = array

    # ---------------------------------------------------------------- the event schedule
    def issue(self, unit: str, cycles: int, reads=(), writes=(), label: str = "", latency: int = 0) -> tuple:
        """Schedule one operation that occupies ``unit`` for ``cycles`` and whose results
        are ready ``latency`` cycles after that (a pipelined unit: the DMA engine keeps
        several transfers in flight); returns (start, end)."""
        start = self.unit_free[unit]
        for b in reads:
            start = max(start, b.ready)
        for b in writes:
            start = max(start, b.ready, b.last_read)
        self.unit_free[unit] = start + int(cycles)
        end = start + int(cycles) + int(latency)
        for b in reads:                 # operands are consumed while the unit is occupied
            b.last_read = max(b.last_read, start + int(cycles))
        for b in writes:
            b.ready = end
        self.stats.busy[unit] += int(cycles)
        self.stats.ops[unit] += 1
        self.stats.total_cycles = max(self.stats.total_cycles, end)
        if self.trace is not None:
            self.trace.append((unit, label, start, end))
        return start, end

    # ---------------------------------------------------------------- DMA
    def dma_cycles(self, nbytes: int) -> int:
        """Cycles the engine is occupied by a transfer of ``nbytes`` (latency not included)."""
        return math.ceil(nbytes / self.hw.dma_bytes_per_cycle)

    def dma_load(self, dst: Buffer, src: np.ndarray) -> None:
        """Copy ``src`` (a block of off-chip rows, possibly fewer than the buffer holds)
        into ``dst``; the rest of ``dst`` is zeroed.  Cost: the bytes of ``src``."""
        rows = src.shape[0]
        dst.data[:rows] = src
        if rows < dst.data.shape[0]:
            dst.data[rows:] = 0
        nbytes = int(src.size) * dst.data.dtype.itemsize
        self.stats.bytes_loaded += nbytes
        self.issue("dma", self.dma_cycles(nbytes), writes=(dst,), label=f"load {dst.name}",
                   latency=self.hw.dma_latency_cycles)

    def dma_store(self, src: Buffer, dst: np.ndarray, values: np.ndarray) -> None:
        """Write ``values`` (computed from ``src``) into off-chip ``dst``."""
        dst[...] = values
        nbytes = int(values.size) * dst.dtype.itemsize
        self.stats.bytes_stored += nbytes
        self.issue("dma", self.dma_cycles(nbytes), reads=(src,), label=f"store {src.name}",
                   latency=self.hw.dma_latency_cycles)

    # ---------------------------------------------------------------- the array
    def matmul(self, a: Buffer, b: Buffer, c: Buffer, transpose_b: bool = False,
               accumulate: bool = False) -> int:
        """c (fp32, accumulator) = [c +] a · b (or a · bᵀ); a, b bf16 (scratchpad).
        Returns the cycles charged."""
        A = a.data.astype(np.float32)
        B = b.data.astype(np.float32)
        if transpose_b:
            B = B.T
        M, K = A.shape
        K2, N = B.shape
        if K != K2 or c.data.shape != (M, N):
            raise ValueError(f"matmul shapes {a.name}{A.shape} x {b.name}{B.shape} -> {c.name}{c.data.shape}")
        if a.data.dtype != bf16() or b.data.dtype != bf16() or c.data.dtype != np.float32:
            raise ValueError("the array takes bf16 operands and accumulates into fp32")
        prod = A @ B
        if accumulate:
            c.data += prod
        else:
            c.data[...] = prod
        cycles = matmul_cycles(M, K, N, self.hw.rows, self.hw.cols, self.dataflow)
        drain = matmul_drain(self.hw.rows, self.hw.cols, self.dataflow)
        self.stats.macs += M * K * N
        self.issue("array", cycles - drain, reads=(a, b) + ((c,) if accumulate else ()), writes=(c,),
                   label=f"matmul {c.name}", latency=drain)
        return cycles

    # ---------------------------------------------------------------- the vector unit
    def vector_op_cycles(self, kind: str, elements: int) -> int:
        hw = self.hw
        per = {"alu": hw.vector_alu_cycles, "transcendental": hw.vector_transcendental_cycles,
               "reduce": hw.vector_reduce_cycles}[kind]
        return math.ceil(elements / hw.vector_lanes) * per

    def region_cycles(self, op_names, elements: int) -> int:
        """Cycles of an elementwise region (score_mod / mask_mod) over ``elements``."""
        total = 0
        for name in op_names:
            if name in FREE:
                continue
            total += self.vector_op_cycles("transcendental" if name in TRANSCENDENTAL else "alu", elements)
        return total

    def vector(self, cycles: int, reads=(), writes=(), label: str = "", elements: int = 0) -> None:
        """Charge a vector-unit operation whose values the caller computed."""
        self.stats.vector_elements += elements
        self.issue("vector", cycles, reads=reads, writes=writes, label=label)

    # ---------------------------------------------------------------- results
    def report(self) -> dict:
        s, hw = self.stats, self.hw
        total = max(s.total_cycles, 1)
        return {
            "accelerator": hw.name,
            "array": f"{hw.rows}x{hw.cols}",
            "dataflow": self.dataflow,
            "clock_hz": hw.clock_hz,
            "total_cycles": s.total_cycles,
            "seconds": s.total_cycles / hw.clock_hz,
            "busy_cycles": dict(s.busy),
            "ops": dict(s.ops),
            "macs": s.macs,
            "array_utilization": s.macs / (hw.rows * hw.cols * total),
            "array_busy_fraction": s.busy["array"] / total,
            "vector_cycles": s.busy["vector"],
            "dma_cycles": s.busy["dma"],
            "bytes_loaded": s.bytes_loaded,
            "bytes_stored": s.bytes_stored,
            "scratchpad_used": self.used["scratchpad"],
            "accumulator_used": self.used["accumulator"],
        }
