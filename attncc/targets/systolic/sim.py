"""A cycle-counting simulator of a TPU-like accelerator that computes real values.

Units
-----
* **systolic array** R x C (``AcceleratorConfig.rows/cols``), bf16 inputs with fp32
  accumulation or int8 inputs with int32 accumulation (quantized kernels),
  weight-stationary (``ws``) or output-stationary (``os``);
* **vector unit** with ``vector_lanes`` fp32 lanes (exp/max/sum/scale/select ...);
* **DMA engine** between off-chip memory and the on-chip memories, ``dma_bytes_per_cycle``
  with ``dma_latency_cycles`` per transfer;
* **scratchpad** (bf16 operand tiles) and **accumulator** (fp32 results) memories of
  fixed capacity: every buffer is allocated up front and an allocation beyond a
  capacity is refused (the target's ``validate_config`` rejects such schedules first,
  with the buffer and byte counts, so a run never gets here).

Values are computed with numpy as the hardware would: operands are bf16 (``ml_dtypes``),
products are exact in fp32 and accumulate in fp32; the vector unit computes in fp32.

Operand formats of the array (:meth:`Simulator.matmul`):

* bf16 x bf16 -> fp32 (the default);
* int8 x int8 -> int32 (quantized Q·Kᵀ, like TPU v1's int8 array): products and sums are
  exact integers (computed in float64, exact below 2^53, and stored as int32 in the
  accumulator's 32-bit words); the vector unit converts them to fp32 when it applies the
  scales;
* bf16 x int8 -> fp32 (P·V with int8 V): the int8 weights are widened to bf16 as they
  enter the PEs (every int8 value is exact in bf16), so the products are those of bf16 x
  bf16.

**Int8 rate (an assumption):** an int8 matmul takes the same cycles as a bf16 one of the
same shape (one MAC per PE per cycle: TPU v1's 256x256 array does one int8 MAC per PE per
cycle, and nothing here packs two int8 MACs into a bf16 PE), so quantization saves DMA
bytes, scratchpad space and nothing on the array.  FP8 (e4m3, e5m2) is *emulated*: the
DMA engine converts each 1-byte element to bf16 (exactly: every e4m3/e5m2 value is a bf16
value; ``ml_dtypes`` does the conversion) on its way into the scratchpad, at line rate
(no extra cycles), and the array computes bf16 x bf16.

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

DMA: a transfer of ``b`` bytes (counted in the off-chip element size: 1 byte for int8 and
fp8 operands, 2 for bf16, 4 for fp32 scales and lse) occupies the engine for ``ceil(b / dma_bytes_per_cycle)``
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
    # what a 32-bit accumulator buffer holds now: "fp32", or "int32" after an int8 matmul
    # (the same words, read through ``data.view(np.int32)``)
    holds: str = "fp32"


@dataclass
class Stats:
    busy: dict = field(default_factory=lambda: {u: 0 for u in UNITS})
    ops: dict = field(default_factory=lambda: {u: 0 for u in UNITS})
    total_cycles: int = 0
    macs: int = 0                 # multiply-accumulates issued to the array
    macs_by_format: dict = field(default_factory=dict)    # "bf16" / "int8" / "bf16 x int8" -> MACs
    bytes_loaded: int = 0
    bytes_loaded_by: dict = field(default_factory=dict)   # what was loaded ("q", "k", "q_scale" ...) -> bytes
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

    def dma_load(self, dst: Buffer, src: np.ndarray, what: str = "", broadcast: bool = False) -> None:
        """Copy ``src`` (a block of off-chip rows, possibly fewer than the buffer holds)
        into ``dst``; the rest of ``dst`` is zeroed.  Cost: the bytes of ``src`` in its
        off-chip element size.  An fp8 source bound for a bf16 buffer is converted on the
        way (exactly; the FP8 emulation); otherwise the types must match.  ``broadcast``:
        ``src`` is one value written to every element of ``dst`` (a scalar scale)."""
        src = np.asarray(src)
        fp8_to_bf16 = src.dtype.name.startswith("float8") and dst.data.dtype == bf16()
        if src.dtype != dst.data.dtype and not fp8_to_bf16:
            raise ValueError(f"DMA of {src.dtype} into {dst.name} ({dst.data.dtype}): the DMA converts only "
                             "fp8 to bf16")
        if broadcast:
            if src.size != 1:
                raise ValueError(f"a broadcast DMA into {dst.name} takes one value, got {src.size}")
            dst.data[...] = src.reshape(()).astype(dst.data.dtype)
        else:
            rows = src.shape[0]
            dst.data[:rows] = src.astype(dst.data.dtype, copy=False)
            if rows < dst.data.shape[0]:
                dst.data[rows:] = 0
        nbytes = int(src.size) * src.dtype.itemsize
        self.stats.bytes_loaded += nbytes
        if what:
            self.stats.bytes_loaded_by[what] = self.stats.bytes_loaded_by.get(what, 0) + nbytes
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
        """c (32-bit words, accumulator) = [c +] a · b (or a · bᵀ), a and b in the
        scratchpad: bf16 x bf16 -> fp32, int8 x int8 -> int32, or bf16 x int8 -> fp32
        (the int8 weights widened to bf16, exactly).  Returns the cycles charged."""
        ta, tb = a.data.dtype, b.data.dtype
        i8 = np.dtype(np.int8)
        if c.data.dtype != np.float32:
            raise ValueError(f"the array accumulates into 32-bit accumulator words, not {c.data.dtype} ({c.name})")
        if ta == i8 and tb == i8:
            fmt = "int8"
            A, B = a.data.astype(np.float64), b.data.astype(np.float64)      # exact integers below 2^53
        elif ta == bf16() and tb in (bf16(), i8):
            fmt = "bf16" if tb == bf16() else "bf16 x int8"
            A, B = a.data.astype(np.float32), b.data.astype(np.float32)
        else:
            raise ValueError(f"the array takes bf16 x bf16, int8 x int8 or bf16 x int8 operands, "
                             f"not {ta} x {tb} ({a.name} x {b.name})")
        if transpose_b:
            B = B.T
        M, K = A.shape
        K2, N = B.shape
        if K != K2 or c.data.shape != (M, N):
            raise ValueError(f"matmul shapes {a.name}{A.shape} x {b.name}{B.shape} -> {c.name}{c.data.shape}")
        prod = A @ B
        if fmt == "int8":
            acc = c.data.view(np.int32)
            if accumulate and c.holds != "int32":
                raise ValueError(f"int32 accumulation into {c.name}, which holds fp32")
            if accumulate:
                prod = prod + acc
            if np.abs(prod).max(initial=0) >= 2.0 ** 31:
                raise ValueError(f"int32 accumulator overflow in {c.name}")
            acc[...] = prod.astype(np.int32)
            c.holds = "int32"
        else:
            if accumulate and c.holds != "fp32":
                raise ValueError(f"fp32 accumulation into {c.name}, which holds int32")
            if accumulate:
                c.data += prod
            else:
                c.data[...] = prod
            c.holds = "fp32"
        cycles = matmul_cycles(M, K, N, self.hw.rows, self.hw.cols, self.dataflow)
        drain = matmul_drain(self.hw.rows, self.hw.cols, self.dataflow)
        self.stats.macs += M * K * N
        self.stats.macs_by_format[fmt] = self.stats.macs_by_format.get(fmt, 0) + M * K * N
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
            "macs_by_format": dict(s.macs_by_format),
            "array_utilization": s.macs / (hw.rows * hw.cols * total),
            "array_busy_fraction": s.busy["array"] / total,
            "vector_cycles": s.busy["vector"],
            "dma_cycles": s.busy["dma"],
            "bytes_loaded": s.bytes_loaded,
            "bytes_loaded_by": dict(s.bytes_loaded_by),
            "bytes_stored": s.bytes_stored,
            "scratchpad_used": self.used["scratchpad"],
            "accumulator_used": self.used["accumulator"],
        }
