"""The systolic target's kernel: a TensorIR control program whose body calls the
simulator's operations as packed functions, and the runtime side of those calls.

The program (one ``main(kv_count, kv_index, kv_kind, batch, q_heads, group, block_q,
block_k)``, built with ``tvm.compile`` for the host) walks the fused, tiled attention exactly as a sequencer on the accelerator
would: for every (batch, head, query block) it loads the Q tile, then for each
*non-empty* key block listed in the block table (``kv_index[qb, :kv_count[qb]]``,
prune-sparsity's tile map; ``kv_kind`` is 1 partial / 2 full) it loads K and V,
computes ``S = Q·Kᵀ`` on the array, applies scale, score_mod and (partial tiles only)
the mask on the vector unit, does the online-softmax update there (P written back to
the scratchpad as bf16), and ``O += P·V`` on the array; then ``out = O / l`` and
``lse = m + log l`` and two stores.  Empty tiles are not in the table: they issue no
operation and cost nothing.

With double buffering the body is software-pipelined: the loads and the Q·Kᵀ of key
block t+1 are issued (into the other buffers) before the softmax of block t, and P·V of
block t goes to its own accumulator buffer that the vector unit merges into O
(``O = O·alpha + PV``) after the softmax of block t+1 -- so the softmax never waits for
the array, and the simulator's event schedule overlaps DMA, array and vector unit.
Without it every tile runs load → Q·Kᵀ → softmax (which rescales O) → P·V (accumulating
into O) on one set of buffers.

Packed functions (``tvm_ffi.register_global_func``), all arguments integers:

    attncc.systolic.dma_load(tensor, b, head, row0, buffer)
    attncc.systolic.matmul(a, b, c, transpose_b, accumulate)
    attncc.systolic.vector_init()
    attncc.systolic.vector_score(s, b, h, q0, k0, kind)
    attncc.systolic.vector_softmax(s, p, alpha_slot)
    attncc.systolic.vector_merge(pv, alpha_slot)
    attncc.systolic.vector_finalize()
    attncc.systolic.dma_store(tensor, b, h, row0)

They act on the simulator of the run in progress (``active``); the host places q, k, v
in the simulator's off-chip memory before the call and reads out and lse after it.
"""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np

from attncc.targets.systolic.sim import Simulator, bf16

# tensors in off-chip memory
Q_T, K_T, V_T, OUT_T, LSE_T = range(5)
TENSOR_NAMES = ("q", "k", "v", "out", "lse")
# on-chip buffers
Q_B, K_B, V_B, P_B, S_B, O_B, PV_B = 0, 1, 3, 5, 7, 9, 10    # K, V, P, S, PV have two slots each

PARTIAL, FULL = 1, 2

_LOCAL = threading.local()


def active() -> "AttentionRun":
    run = getattr(_LOCAL, "run", None)
    if run is None:
        raise RuntimeError("a systolic kernel was called outside attncc.targets.systolic.run")
    return run


def operand_formats(spec) -> dict:
    """The on-chip (scratchpad) numpy dtype of the q, k and v tiles: int8 for INT8
    operands (the array computes int8), bf16 otherwise (bf16 kernels, and FP8 operands,
    which the DMA converts to bf16 on the way in: the emulation)."""
    int8 = np.dtype(np.int8)
    qk = int8 if spec.quant_dtype == "int8" else bf16()
    v = int8 if spec.quant_dtype == "int8" and spec.quant_pv else bf16()
    return {"q": qk, "k": qk, "v": v}


def scale_rows(shape) -> bool:
    """True when a scale of ``shape`` [B or 1, H or 1, rows or 1, 1] varies by row (block
    granularity); False for one value per (batch, head) or per tensor."""
    return int(shape[2]) > 1


class AttentionRun:
    """One call of the kernel: the simulator plus what the vector unit needs from the spec.

    Quantized kernels (``spec.quant_dtype``): q, k (and v with ``quant_pv``) are int8 or
    fp8 in off-chip memory, with f32 ``scales`` (q's, k's and v's, each [B or 1, H or 1,
    rows or 1, 1]).  A load of a Q, K or V tile also loads the tile's scales (one value,
    or one per row) into a fp32 scale buffer beside it (accumulator memory, which the
    vector unit reads); the vector unit applies them: ``S = dot(q_i, k_j) · sq_i · sk_j ·
    scale``, and for v either ``out = O · sv / l`` (one sv per head or tensor: exact after
    P·V) or ``P_ij · sv_j`` before P·V (per-block scales vary by key row)."""

    def __init__(self, spec, config, hw, q, k, v, captures=(), scales=()):
        self.spec = spec
        self.config = config
        self.sim = Simulator(hw, config.dataflow)
        BQ, BK = config.block_q, config.block_k
        D, DV = spec.head_dim, spec.head_dim_v
        slots = 2 if config.double_buffer else 1
        sp, acc = "scratchpad", "accumulator"
        s = self.sim
        fmt = operand_formats(spec)
        b = {}
        b[Q_B] = s.alloc("Q", sp, (BQ, D), fmt["q"])
        for i in range(slots):
            b[K_B + i] = s.alloc(f"K{i}", sp, (BK, D), fmt["k"])
            b[V_B + i] = s.alloc(f"V{i}", sp, (BK, DV), fmt["v"])
            b[P_B + i] = s.alloc(f"P{i}", sp, (BQ, BK), bf16())
            b[S_B + i] = s.alloc(f"S{i}", acc, (BQ, BK), np.float32)
        b[O_B] = s.alloc("O", acc, (BQ, DV), np.float32)
        if config.double_buffer:                 # P·V results, merged into O one tile later
            for i in range(slots):
                b[PV_B + i] = s.alloc(f"PV{i}", acc, (BQ, DV), np.float32)
        self.out_tile = s.alloc("out", sp, (BQ, DV), bf16())
        self.scales = list(scales)
        # m, l, lse, alpha x2 (and r, the reference v scale of each row, with per-block v scales)
        self.v_row_scales = bool(spec.quant_pv and self.scales and scale_rows(self.scales[2].shape))
        self.row_stats = s.alloc("stats", acc, (6 if self.v_row_scales else 5, BQ), np.float32)
        # the scales of quantized operands: buffer id of the tile -> (off-chip name, scale buffer)
        self.scale_of: dict = {}
        if spec.quant_dtype is not None:
            names = ("q", "k", "v")[:len(self.scales)]
            for name, arr in zip(names, self.scales):
                s.bind(f"{name}_scale", arr)
            self.scale_of[Q_B] = ("q_scale", s.alloc("Q scale", acc, (BQ,), np.float32))
            for i in range(slots):
                self.scale_of[K_B + i] = ("k_scale", s.alloc(f"K{i} scale", acc, (BK,), np.float32))
                if spec.quant_pv:
                    self.scale_of[V_B + i] = ("v_scale", s.alloc(f"V{i} scale", acc, (BK,), np.float32))
        self.buffers = b
        s.bind("q", q)
        s.bind("k", k)
        s.bind("v", v)
        s.bind("out", np.zeros((spec.batch, spec.q_heads, spec.q_len, DV), dtype=bf16()))
        s.bind("lse", np.zeros((spec.batch, spec.q_heads, spec.q_len), dtype=np.float32))
        self.captures = list(captures)
        self.rows_i = np.arange(BQ, dtype=np.int64).reshape(-1, 1)
        self.cols_j = np.arange(BK, dtype=np.int64).reshape(1, -1)
        self.tiles = {PARTIAL: 0, FULL: 0}
        self.error: Optional[BaseException] = None

    def buffer(self, bid: int):
        try:
            return self.buffers[bid]
        except KeyError:
            raise RuntimeError(f"buffer {bid} is not allocated (double_buffer={self.config.double_buffer})") from None

    # ---------------------------------------------------------------- DMA
    def dma_load(self, tensor: int, b: int, head: int, row0: int, bid: int) -> None:
        """A tile of q, k or v into buffer ``bid``; for a quantized operand its scales
        follow (a second, small transfer into the tile's scale buffer)."""
        buf = self.buffer(bid)
        name = TENSOR_NAMES[tensor]
        src = self.sim.dram[name]
        rows = buf.data.shape[0]
        self.sim.dma_load(buf, src[b, head, row0:row0 + rows], what=name)
        if bid in self.scale_of:
            sname, sbuf = self.scale_of[bid]
            scale = self.sim.dram[sname]
            bi = b if scale.shape[0] > 1 else 0
            hi = head if scale.shape[1] > 1 else 0
            if scale_rows(scale.shape):
                self.sim.dma_load(sbuf, scale[bi, hi, row0:row0 + rows, 0], what=sname)
            else:
                self.sim.dma_load(sbuf, scale[bi, hi, 0:1, 0], what=sname, broadcast=True)

    def dma_store(self, tensor: int, b: int, h: int, row0: int) -> None:
        rows = min(self.config.block_q, self.spec.q_len - row0)
        if tensor == OUT_T:
            dst = self.sim.dram["out"][b, h, row0:row0 + rows]
            self.sim.dma_store(self.out_tile, dst, self.out_tile.data[:rows])
        elif tensor == LSE_T:
            dst = self.sim.dram["lse"][b, h, row0:row0 + rows]
            self.sim.dma_store(self.row_stats, dst, self.row_stats.data[2, :rows])
        else:
            raise RuntimeError(f"tensor {tensor} cannot be stored")

    # ---------------------------------------------------------------- the array
    def matmul(self, a: int, b: int, c: int, transpose_b: int, accumulate: int) -> None:
        self.sim.matmul(self.buffer(a), self.buffer(b), self.buffer(c), bool(transpose_b), bool(accumulate))

    # ---------------------------------------------------------------- the vector unit
    def vector_init(self) -> None:
        sim, O, st = self.sim, self.buffers[O_B], self.row_stats
        O.data[...] = 0
        st.data[0] = -np.inf
        st.data[1] = 0
        k = 2
        if self.v_row_scales:
            st.data[5] = 1
            k = 3
        cycles = sim.vector_op_cycles("alu", O.data.size) + sim.vector_op_cycles("alu", k * st.data.shape[1])
        sim.vector(cycles, writes=(O, st), label="init", elements=O.data.size + k * st.data.shape[1])

    def vector_score(self, s: int, b: int, h: int, q0: int, k0: int, kind: int) -> None:
        """S = score_mod(scale * S); on partial tiles S = -inf where the mask (or the key
        padding) drops the pair.  The regions are evaluated for real, in fp32."""
        sim, spec = self.sim, self.spec
        S = self.buffer(s)
        x = S.data
        n = x.size
        reads = (S,)
        cycles = 0
        if S.holds == "int32":                    # int8 Q·Kᵀ: the int32 scores to fp32
            x[...] = x.view(np.int32).astype(np.float32)
            S.holds = "fp32"
            cycles += sim.vector_op_cycles("alu", n)
        if Q_B in self.scale_of:
            # dequantization fused in: S_ij = dot(q_i, k_j) · sq_i · sk_j · scale
            qs = self.scale_of[Q_B][1]
            ks = self.scale_of[K_B + (s - S_B)][1]
            reads = (S, qs, ks)
            if scale_rows(self.scales[0].shape) or scale_rows(self.scales[1].shape):
                row = (qs.data * np.float32(spec.scale)).astype(np.float32)
                x *= row[:, None]
                x *= ks.data[None, :]
                cycles += sim.vector_op_cycles("alu", x.shape[0]) + 2 * sim.vector_op_cycles("alu", n)
            else:                                 # one scalar: sq · sk · scale
                x *= np.float32(qs.data[0]) * np.float32(ks.data[0]) * np.float32(spec.scale)
                cycles += sim.vector_op_cycles("alu", n)
        else:
            x *= np.float32(spec.scale)
            cycles += sim.vector_op_cycles("alu", n)
        bb, hh = np.int64(b), np.int64(h)
        i = self.rows_i + q0
        j = self.cols_j + k0
        with np.errstate(all="ignore"):
            if spec.score_numpy is not None:
                y = spec.score_numpy(x, bb, hh, i, j, *self.captures)
                x[...] = np.broadcast_to(np.asarray(y, dtype=np.float32), x.shape)
                cycles += sim.region_cycles(spec.score_numpy.op_names, n)
            if kind == PARTIAL:
                keep = j < spec.kv_len
                cycles += sim.vector_op_cycles("alu", n)
                if spec.mask_numpy is not None:
                    keep = keep & np.asarray(spec.mask_numpy(bb, hh, i, j, *self.captures), dtype=bool)
                    cycles += sim.region_cycles(spec.mask_numpy.op_names, n) + sim.vector_op_cycles("alu", n)
                x[...] = np.where(np.broadcast_to(keep, x.shape), x, np.float32(-np.inf))
                cycles += sim.vector_op_cycles("alu", n)
        self.tiles[kind] = self.tiles.get(kind, 0) + 1
        sim.vector(cycles, reads=reads, writes=(S,), label="score", elements=n)

    def vector_softmax(self, s: int, p: int, alpha_slot: int) -> None:
        """The online-softmax update of one key block (natural-log units):
        m' = max(m, rowmax S), P = exp(S - m'), l = l·exp(m - m') + rowsum P, and
        O *= exp(m - m') (``alpha_slot`` < 0), or keep alpha = exp(m - m') in slot
        ``alpha_slot`` for :meth:`vector_merge` (double buffering: O is not touched, so
        this does not wait for the previous tile's P·V).

        Per-block v scales (``--quantize-pv`` with block granularity) vary by key row, so
        they are folded into P: ``P_ij = e_ij · sv_j / r_i``, where ``r_i`` is the scale of
        the row's largest score in this tile, so that the element e = 1 of the running
        max stays exact in bf16 (as in a bf16 kernel) and only the other elements round
        once.  O is kept in units of the row's current ``r``: the rescale of O (or the
        merge's alpha) includes ``r_old / r`` and ``out = O · r / l``."""
        sim = self.sim
        S, P, O, st = self.buffer(s), self.buffer(p), self.buffers[O_B], self.row_stats
        defer = alpha_slot >= 0
        x = S.data
        n, rows = x.size, x.shape[0]
        m, l = st.data[0], st.data[1]
        with np.errstate(all="ignore"):
            m_new = np.maximum(m, x.max(axis=1))
            m_safe = np.where(m_new == -np.inf, np.float32(0), m_new).astype(np.float32)
            alpha = np.exp(m - m_safe).astype(np.float32)
            e = np.exp(x - m_safe[:, None]).astype(np.float32)
            l[...] = l * alpha + e.sum(axis=1, dtype=np.float32)
            m[...] = m_new
            vs = self._v_row_scale(p)
            o_alpha = alpha
            if vs is not None:                    # per-block v scales: P_ij = e_ij · sv_j / r_i
                r_old = st.data[5]
                row_max = x.max(axis=1)
                r = np.where(row_max == -np.inf, r_old, vs.data[x.argmax(axis=1)]).astype(np.float32)
                o_alpha = (alpha * (r_old / r)).astype(np.float32)
                st.data[5] = r
                P.data[...] = (e * (vs.data[None, :] / r[:, None])).astype(bf16())
            else:
                P.data[...] = e.astype(bf16())
            if defer:
                st.data[3 + alpha_slot] = o_alpha
            else:
                O.data *= o_alpha[:, None]
        cycles = (sim.vector_op_cycles("reduce", n)            # rowmax
                  + sim.vector_op_cycles("alu", 2 * rows)      # m', finite m'
                  + sim.vector_op_cycles("transcendental", rows)   # alpha
                  + sim.vector_op_cycles("alu", n)             # S - m'
                  + sim.vector_op_cycles("transcendental", n)  # exp
                  + sim.vector_op_cycles("reduce", n)          # rowsum
                  + sim.vector_op_cycles("alu", 2 * rows)      # l
                  + (0 if defer else sim.vector_op_cycles("alu", O.data.size))   # O *= alpha
                  + sim.vector_op_cycles("alu", n)             # P -> bf16
                  # per-block v scales: the argmax (with the rowmax), sv_j / r_i, P · that,
                  # r and the alpha of O
                  + (3 * sim.vector_op_cycles("alu", n) + 3 * sim.vector_op_cycles("alu", rows)
                     if vs is not None else 0))
        extra = (vs,) if vs is not None else ()
        if defer:
            sim.vector(cycles, reads=(S, st) + extra, writes=(P, st), label="softmax", elements=5 * n)
        else:
            sim.vector(cycles, reads=(S, st, O) + extra, writes=(P, st, O), label="softmax", elements=5 * n)

    def _v_row_scale(self, p: int):
        """The scale buffer of the V tile that P buffer ``p`` multiplies, when v's scales
        vary by key row (block granularity); None otherwise."""
        if not self.v_row_scales:
            return None
        return self.scale_of[V_B + (p - P_B)][1]

    def _v_scalar_scale(self):
        """The scale buffer holding v's one scale for this (batch, head) (per-head or
        per-tensor granularity; the same in every V slot), or None."""
        if not self.spec.quant_pv or scale_rows(self.scales[2].shape):
            return None
        return self.scale_of[V_B][1]

    def vector_merge(self, pv: int, alpha_slot: int) -> None:
        """O = O · alpha + PV: a P·V result merged into the output accumulator."""
        sim, O, st = self.sim, self.buffers[O_B], self.row_stats
        PV = self.buffer(pv)
        O.data *= st.data[3 + alpha_slot][:, None]
        O.data += PV.data
        cycles = 2 * sim.vector_op_cycles("alu", O.data.size)
        sim.vector(cycles, reads=(PV, O, st), writes=(O,), label="merge", elements=2 * O.data.size)

    def vector_finalize(self) -> None:
        """out = O / l (0 on rows without a kept key), lse = m + log l (-inf there); with
        v quantized, out = O · sv / l (one v scale) or O · r / l (per-block v scales)."""
        sim, O, st, out = self.sim, self.buffers[O_B], self.row_stats, self.out_tile
        m, l = st.data[0], st.data[1]
        rows = O.data.shape[0]
        vs = self._v_scalar_scale()
        with np.errstate(all="ignore"):
            empty = m == -np.inf
            inv = np.where(empty, np.float32(0), np.float32(1) / l).astype(np.float32)
            if vs is not None:                    # v's one scale, exact after P·V: out = O · sv / l
                inv = (inv * vs.data[0]).astype(np.float32)
            elif self.v_row_scales:               # O is in units of the row's r
                inv = (inv * st.data[5]).astype(np.float32)
            out.data[...] = (O.data * inv[:, None]).astype(bf16())
            st.data[2] = np.where(empty, np.float32(-np.inf), m + np.log(l)).astype(np.float32)
        cycles = (sim.vector_op_cycles("transcendental", 2 * rows) + sim.vector_op_cycles("alu", 2 * rows)
                  + sim.vector_op_cycles("alu", 2 * O.data.size)
                  + (sim.vector_op_cycles("alu", rows) if vs is not None or self.v_row_scales else 0))
        reads = (O, st) + ((vs,) if vs is not None else ())
        sim.vector(cycles, reads=reads, writes=(out, st), label="finalize", elements=2 * O.data.size)


# ------------------------------------------------------------------------- packed functions


def _guard(fn):
    def call(*args):
        run = active()
        try:
            fn(run, *(int(a) for a in args))
        except BaseException as exc:           # kept so that run() re-raises the real error
            if run.error is None:
                run.error = exc
            raise
    return call


_PACKED = {
    "attncc.systolic.dma_load": AttentionRun.dma_load,
    "attncc.systolic.dma_store": AttentionRun.dma_store,
    "attncc.systolic.matmul": AttentionRun.matmul,
    "attncc.systolic.vector_init": AttentionRun.vector_init,
    "attncc.systolic.vector_score": AttentionRun.vector_score,
    "attncc.systolic.vector_softmax": AttentionRun.vector_softmax,
    "attncc.systolic.vector_merge": AttentionRun.vector_merge,
    "attncc.systolic.vector_finalize": AttentionRun.vector_finalize,
}

_registered = False


def register() -> None:
    """Register the packed functions with tvm-ffi (once per process)."""
    global _registered
    if _registered:
        return
    import tvm_ffi

    for name, fn in _PACKED.items():
        tvm_ffi.register_global_func(name, _guard(fn), override=True)
    _registered = True


def execute(executable, tables, scalars, run: AttentionRun) -> None:
    """Call the built program on the block tables and the shape scalars (batch, q_heads,
    group, block_q, block_k) with ``run`` as the active simulator."""
    import tvm

    register()
    prev = getattr(_LOCAL, "run", None)
    _LOCAL.run = run
    try:
        executable["main"](*[tvm.runtime.tensor(np.ascontiguousarray(t, dtype=np.int32)) for t in tables],
                           *[int(x) for x in scalars])
    except BaseException as exc:
        if run.error is not None and run.error is not exc:
            raise run.error from None
        raise
    finally:
        _LOCAL.run = prev


# ------------------------------------------------------------------------- the TIR program


def program(double_buffer: bool):
    """The control program as a TIR PrimFunc
    ``main(kv_count, kv_index, kv_kind, batch, q_heads, group, block_q, block_k)``:
    the block tables are int32 buffers of symbolic shape ``[NQB]`` / ``[NQB, NKB]``, the
    rest int32 scalars, so one compiled program serves every shape (only double
    buffering changes its structure)."""
    from tvm.script import tirx as T

    DB = bool(double_buffer)
    LOAD, STORE, MM = "attncc.systolic.dma_load", "attncc.systolic.dma_store", "attncc.systolic.matmul"
    INIT, SCORE = "attncc.systolic.vector_init", "attncc.systolic.vector_score"
    SOFTMAX, FINAL = "attncc.systolic.vector_softmax", "attncc.systolic.vector_finalize"
    MERGE = "attncc.systolic.vector_merge"

    @T.prim_func(check_well_formed=False)
    def main(count_handle: T.handle, index_handle: T.handle, kind_handle: T.handle, B: T.int32, H: T.int32,
             G: T.int32, BQ: T.int32, BK: T.int32):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        NQB = T.int32()
        NKB = T.int32()
        kv_count = T.match_buffer(count_handle, (NQB,), "int32")
        kv_index = T.match_buffer(index_handle, (NQB, NKB), "int32")
        kv_kind = T.match_buffer(kind_handle, (NQB, NKB), "int32")
        for b in T.serial(B):
            for h in T.serial(H):
                for qb in T.serial(NQB):
                    T.evaluate(T.call_packed(LOAD, Q_T, b, h, qb * BQ, Q_B))
                    T.evaluate(T.call_packed(INIT))
                    if DB:
                        # prologue: block 0's loads and Q·Kᵀ
                        if kv_count[qb] > 0:
                            T.evaluate(T.call_packed(LOAD, K_T, b, h // G, kv_index[qb, 0] * BK, K_B))
                            T.evaluate(T.call_packed(LOAD, V_T, b, h // G, kv_index[qb, 0] * BK, V_B))
                            T.evaluate(T.call_packed(MM, Q_B, K_B, S_B, 1, 0))
                        for t in T.serial(kv_count[qb]):
                            # block t+1 into the other buffers, ahead of block t's softmax
                            if t + 1 < kv_count[qb]:
                                T.evaluate(T.call_packed(LOAD, K_T, b, h // G, kv_index[qb, t + 1] * BK,
                                                         K_B + T.floormod(t + 1, 2)))
                                T.evaluate(T.call_packed(LOAD, V_T, b, h // G, kv_index[qb, t + 1] * BK,
                                                         V_B + T.floormod(t + 1, 2)))
                                T.evaluate(T.call_packed(MM, Q_B, K_B + T.floormod(t + 1, 2),
                                                         S_B + T.floormod(t + 1, 2), 1, 0))
                            T.evaluate(T.call_packed(SCORE, S_B + T.floormod(t, 2), b, h, qb * BQ,
                                                     kv_index[qb, t] * BK, kv_kind[qb, t]))
                            T.evaluate(T.call_packed(SOFTMAX, S_B + T.floormod(t, 2), P_B + T.floormod(t, 2),
                                                     T.floormod(t, 2)))
                            T.evaluate(T.call_packed(MM, P_B + T.floormod(t, 2), V_B + T.floormod(t, 2),
                                                     PV_B + T.floormod(t, 2), 0, 0))
                            # block t-1's P·V, finished meanwhile, into O
                            if t > 0:
                                T.evaluate(T.call_packed(MERGE, PV_B + T.floormod(t - 1, 2), T.floormod(t - 1, 2)))
                        if kv_count[qb] > 0:
                            T.evaluate(T.call_packed(MERGE, PV_B + T.floormod(kv_count[qb] - 1, 2),
                                                     T.floormod(kv_count[qb] - 1, 2)))
                    else:
                        for t in T.serial(kv_count[qb]):
                            T.evaluate(T.call_packed(LOAD, K_T, b, h // G, kv_index[qb, t] * BK, K_B))
                            T.evaluate(T.call_packed(LOAD, V_T, b, h // G, kv_index[qb, t] * BK, V_B))
                            T.evaluate(T.call_packed(MM, Q_B, K_B, S_B, 1, 0))
                            T.evaluate(T.call_packed(SCORE, S_B, b, h, qb * BQ, kv_index[qb, t] * BK,
                                                     kv_kind[qb, t]))
                            T.evaluate(T.call_packed(SOFTMAX, S_B, P_B, -1))
                            T.evaluate(T.call_packed(MM, P_B, V_B, O_B, 0, 1))
                    T.evaluate(T.call_packed(FINAL))
                    T.evaluate(T.call_packed(STORE, OUT_T, b, h, qb * BQ))
                    T.evaluate(T.call_packed(STORE, LSE_T, b, h, qb * BQ))

    return main
