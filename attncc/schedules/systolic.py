"""Schedule family of the systolic target (``attncc/targets/systolic``).

Knobs (``SystolicConfig``) and the values searched:

    block_q        16 .. 1024   query rows per tile: the rows streamed through the array
                                per fold (amortises the array's fill and drain) and the
                                reuse of every K/V tile loaded
    block_k        16 .. 1024   keys per tile: the folds per matmul and the vector work
                                per online-softmax step
    dataflow       ws, os       weight- or output-stationary array
    double_buffer  on, off      K/V/S/P in two buffers: loads and Q·Kᵀ of the next tile
                                overlap the softmax of this one (costs the memory twice)
    accelerator    one value    the target option ``systolic_config`` (not searched)

Block sizes stop at the next power of two of the lengths; a config whose tiles do not
fit the scratchpad or accumulator is rejected by the target's ``validate_config``.

The measure is the simulator's cycle count divided by the clock: deterministic, so a
config is simulated once (``sampler`` repeats that number) and the tuner's repeated
timing costs nothing.  ``cost_model`` evaluates the same cycle formulas per tile
without running the data (used by the guided search to rank candidates).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from attncc.errors import ConfigError
from attncc.schedules.space import Knob

TARGET = "systolic"
OVERLAP_BUILDS = False

BLOCK = (16, 32, 64, 128, 256, 512, 1024)


def _target():
    from attncc.targets import systolic

    return systolic


def _pow2_ceil(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def knobs(spec, options: Optional[dict] = None) -> list:
    t = _target()
    name = t._accelerator(options)
    q_cap = max(BLOCK[0], _pow2_ceil(spec.q_len))
    k_cap = max(BLOCK[0], _pow2_ceil(spec.kv_len))
    return [
        Knob("accelerator", (name,), "the simulated accelerator (target option systolic_config)"),
        Knob("block_q", tuple(v for v in BLOCK if v <= q_cap), "query rows per tile"),
        Knob("block_k", tuple(v for v in BLOCK if v <= k_cap), "keys per tile"),
        Knob("dataflow", ("ws", "os"), "weight- or output-stationary array"),
        Knob("double_buffer", (True, False), "overlap the next tile's loads and Q·Kᵀ with the softmax"),
    ]


def validate(spec, config, options: Optional[dict] = None) -> None:
    """The target's validate_config, plus: the accelerator is the one asked for."""
    t = _target()
    t.validate_config(spec, config)
    want = t._accelerator(options)
    if t.resolve(config.accelerator) != t.resolve(want):
        raise ConfigError(f"systolic config {config}: it is for accelerator {config.accelerator}, "
                          f"not {want}", variant=spec.name or None)


def device_name(options: Optional[dict] = None) -> str:
    """'systolic simulator: <the accelerator's description>'."""
    t = _target()
    return "systolic simulator " + t.resolve(t._accelerator(options)).describe()


def cost_model(spec, config, options: Optional[dict] = None) -> float:
    """Predicted seconds: per (query block, key block) tile run, the array's two matmuls
    (the simulator's formula, occupancy only), the vector unit's score and softmax work
    and the DMA of K and V; per tile the slowest of array, vector + P·V (their
    dependency chain) and DMA with double buffering, their sum without; plus the Q
    load, epilogue and stores per query block."""
    t = _target()
    from attncc.targets.systolic.sim import matmul_cycles, matmul_drain

    hw = t.resolve(config.accelerator)
    BQ, BK, D, DV = config.block_q, config.block_k, spec.head_dim, spec.head_dim_v
    R, C, df = hw.rows, hw.cols, config.dataflow
    drain = matmul_drain(R, C, df)
    qk = matmul_cycles(BQ, D, BK, R, C, df) - drain
    pv = matmul_cycles(BQ, BK, DV, R, C, df) - drain
    lanes = hw.vector_lanes
    n = BQ * BK
    vec = math.ceil(n / lanes) * (2 * hw.vector_reduce_cycles + 4 * hw.vector_alu_cycles
                                  + hw.vector_transcendental_cycles) + math.ceil(BQ * DV / lanes)
    q_bytes, k_bytes, v_bytes = t.operand_bytes(spec)        # 1 for int8/fp8 operands, 2 for bf16
    dma = math.ceil(BK * (D * k_bytes + DV * v_bytes) / hw.dma_bytes_per_cycle)
    if spec.mask_mod is None or spec.runtime_tile_map is None:
        kinds = t.tile_kinds(spec, BQ, BK)
    else:                                       # a runtime block map: assume the compile-time proof
        kinds = (np.asarray(spec.tile_map(BQ, BK), np.int8) if spec.tile_map is not None
                 else np.ones((-(-spec.q_len // BQ), -(-spec.kv_len // BK)), np.int8))
    partial = int((kinds == 1).sum())
    tiles = int((kinds != 0).sum())
    mask = math.ceil(n / lanes) * 4 * hw.vector_alu_cycles
    if config.double_buffer:
        merge = 2 * math.ceil(BQ * DV / lanes) * hw.vector_alu_cycles
        per_tile = max(qk + pv, vec + merge, dma)
    else:
        per_tile = qk + pv + vec + dma + 2 * drain + hw.dma_latency_cycles
    nqb = kinds.shape[0]
    per_qblock = math.ceil(BQ * D * q_bytes / hw.dma_bytes_per_cycle) + hw.dma_latency_cycles + math.ceil(
        BQ * DV * 2 / hw.dma_bytes_per_cycle) + 4 * math.ceil(BQ * DV / lanes)
    cycles = spec.batch * spec.q_heads * (tiles * per_tile + partial * mask + nqb * per_qblock)
    return cycles / hw.clock_hz


def sampler(built, spec):
    """fn(n) -> n copies of the simulated seconds (deterministic: simulated once)."""
    t = _target()
    seconds = t.measure(built, spec)
    return lambda n: [seconds] * n
