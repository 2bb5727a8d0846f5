"""CUDA decode kernel: flash-decoding (split-KV) for a few query tokens against a long KV cache.

``attncc/targets/cuda.py`` dispatches here when ``spec.q_len`` is small (its
``default_config`` returns a :class:`DecodeConfig`; ``lower``/``validate_config`` dispatch on
the config's type).  The kernel takes the same arguments as the prefill kernel,
``(q, k, v, out, lse)``, and is one TIR function that launches two CUDA kernels:

* **split** — grid ``B * kv_heads * row_blocks * num_splits``: one thread block per (batch,
  kv head, block of packed query rows, key range).  GQA-aware: the rows of a block are the
  ``group * q_len`` (query head, query) pairs that share the kv head, packed into m16 tiles
  (row ``r`` is query head ``hk * group + r // q_len``, query ``r % q_len``; padding rows
  are zero), so each K/V tile is read from memory once for the whole group.  The block's
  key range is its ``1 / num_splits`` share of the keys any row can see (``key_bounds``:
  a sliding window reads only the window).  K/V tiles of ``block_k`` keys arrive by
  ``cp.async`` (16 bytes per thread and instruction) ``num_stages - 1`` tiles ahead; each
  warp takes ``block_k / num_warps`` keys of every tile and runs the prefill kernel's math
  on them: Q·Kᵀ and P·V on ``mma.sync.m16n8k16`` (fp32 accumulation; the tensor cores idle
  most of the time here, the kernel is bound by memory), online softmax in registers,
  score_mod / element mask only where a tile needs it.  At the end the warps' (m, l, acc)
  are merged through shared memory (reusing the K/V slots) and the block writes a partial
  ``out`` (fp32, normalised) and partial ``lse`` (log2 units) to a workspace.
* **merge** — one warp per (batch, query head, query): ``lse = log sum_s exp(lse_s)``,
  ``out = sum_s exp(lse_s - lse) out_s``; fully masked rows give 0 and -inf.

The workspace (``num_splits`` partial rows per output row, fp32) is allocated by TVM's
runtime workspace pool inside the function; nothing changes for callers.  With one split
(the default when ``batch * kv_heads`` already gives every SM a block) the split kernel
writes ``out``/``lse`` itself and there is no merge kernel and no workspace.

Measured on an H100 (benchmarks/gpu/RESULTS.md; bf16, B=16, 32/8 heads, D=128, one query):
2.64 TB/s at 4k keys, 3.09 TB/s at 32k — 0.88x and 1.03x a device-to-device copy, 1.00x and
1.01x torch SDPA (cuDNN).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from attncc.errors import ConfigError, ShapeError
from attncc.targets.spec import FlashKernelSpec

# q_len at or under which cuda.default_config picks this kernel
DECODE_MAX_Q_LEN = 16
# streaming multiprocessors assumed when choosing num_splits (H100 SXM: 132)
DEFAULT_NUM_SMS = 132

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


@dataclass(frozen=True)
class DecodeConfig:
    """The knobs of the decode kernel (frozen and hashable).

    block_k      keys per pipelined K/V tile, shared by the block's warps
    num_warps    warps per block; each takes block_k / num_warps keys (a multiple of 16) of a tile
    num_stages   shared-memory slots of (K, V) tiles; loads run num_stages - 1 tiles ahead
    num_splits   key ranges per (batch, kv head): thread blocks that each write a partial result
    block_rows   packed (query head, query) rows per thread block (multiple of 16)
    """

    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 3
    num_splits: int = 2
    block_rows: int = 16


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _bounds(spec: FlashKernelSpec):
    """(lower_offset, upper_offset, k_lo, k_hi): the key bounds after dropping those no
    (query, key) pair reaches, and the key range [k_lo, k_hi) that any row can see."""
    S, TK = spec.q_len, spec.kv_len
    lo = spec.key_bounds.lower_offset
    up = spec.key_bounds.upper_offset
    if up is not None and up >= TK - 1:
        up = None
    if lo is not None and lo <= -(S - 1):
        lo = None
    k_lo = 0 if lo is None else min(max(lo, 0), TK)
    k_hi = TK if up is None else max(min(S - 1 + up + 1, TK), 0)
    return lo, up, k_lo, max(k_hi, k_lo)


def rows(spec: FlashKernelSpec) -> int:
    """Packed query rows per kv head: group * q_len."""
    return spec.group * spec.q_len


def shared_memory_bytes(spec: FlashKernelSpec, config: DecodeConfig) -> int:
    d = spec.head_dim
    tiles = 2 * (config.block_rows * d + config.num_stages * config.block_k * (d + spec.head_dim_v))
    merge = 4 * config.num_warps * config.block_rows * (spec.head_dim_v + 4 + 2)
    return max(tiles, merge)


def _q_in_registers(spec: FlashKernelSpec, config: DecodeConfig) -> bool:
    mt = config.block_rows // 16
    return mt * (spec.head_dim // 16) * 4 + mt * (spec.head_dim_v // 8) * 4 <= 160


def registers_estimate(spec: FlashKernelSpec, config: DecodeConfig) -> int:
    mt = config.block_rows // 16
    kw = config.block_k // config.num_warps
    acc = mt * (spec.head_dim_v // 8) * 4
    scores = mt * (kw // 8) * 4
    probs = mt * (kw // 16) * 4
    q = mt * (spec.head_dim // 16) * 4 if _q_in_registers(spec, config) else 4
    return acc + scores + probs + q + 8 * mt


def default_num_splits(spec: FlashKernelSpec, config: DecodeConfig, num_sms: int = DEFAULT_NUM_SMS,
                       blocks_per_sm: int = 2) -> int:
    """Enough blocks for one full wave (``blocks_per_sm`` resident per SM), no more splits
    than key tiles."""
    _, _, k_lo, k_hi = _bounds(spec)
    tiles = max(1, -(-(k_hi - k_lo) // config.block_k))
    row_blocks = -(-rows(spec) // config.block_rows)
    per_split = spec.batch * spec.kv_heads * row_blocks
    if per_split * 10 >= num_sms * 9:
        # a block per SM already (B=16 x 8 kv heads on 132 SMs): splitting measured no faster
        # (H100, 32k keys: 1 split 699 us, 2 splits 709, 16 splits 717) and one split skips
        # the merge kernel
        return 1
    return max(1, min(tiles, (num_sms * blocks_per_sm) // per_split))


def default_config(spec: FlashKernelSpec) -> DecodeConfig:
    d = max(spec.head_dim, spec.head_dim_v)
    block_rows = min(_round_up(rows(spec), 16), 32)
    block_k = 64 if d <= 128 else 32
    num_warps = 4 if d <= 128 else 2
    cfg = DecodeConfig(block_k=block_k, num_warps=num_warps, num_stages=3, num_splits=1,
                       block_rows=block_rows)
    if registers_estimate(spec, cfg) > 200:
        cfg = dataclasses.replace(cfg, block_rows=16)
    return dataclasses.replace(cfg, num_splits=default_num_splits(spec, cfg))


def validate_config(spec: FlashKernelSpec, config: DecodeConfig, arch: Optional[str] = None,
                    smem_limit: int = 227 * 1024) -> None:
    c = config

    def bad(msg):
        raise ConfigError(f"cuda decode config {c}: {msg}", variant=spec.name or None)

    for name in ("block_k", "num_warps", "num_stages", "num_splits", "block_rows"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            bad(f"{name} must be a positive integer, got {value!r}")
    if c.num_warps not in (1, 2, 4, 8):
        bad(f"num_warps must be 1, 2, 4 or 8, got {c.num_warps}")
    if c.block_k % (16 * c.num_warps):
        bad(f"block_k ({c.block_k}) must be a multiple of 16 * num_warps ({16 * c.num_warps}): "
            "each warp takes whole k16 steps of P·V")
    if c.block_rows % 16:
        bad(f"block_rows ({c.block_rows}) must be a multiple of 16 (m16 row tiles)")
    if c.num_stages < 2 or c.num_stages > 6:
        bad(f"num_stages must be 2 to 6, got {c.num_stages}")
    for name in ("head_dim", "head_dim_v"):
        d = getattr(spec, name)
        if d % 16:
            raise ShapeError(f"cuda target: {name} ({d}) must be a multiple of 16 (mma k step)",
                             variant=spec.name or None)
    smem = shared_memory_bytes(spec, c)
    if smem > smem_limit:
        bad(f"needs {smem} bytes of shared memory per block, over the {smem_limit} of "
            f"{arch or 'the largest supported GPU'}: lower block_k or num_stages")
    regs = registers_estimate(spec, c)
    if regs > 240:
        bad(f"holds about {regs} registers of fragments per thread: lower block_rows or block_k")


# --------------------------------------------------------------------------- lowering


def lower_decode(spec: FlashKernelSpec, config: DecodeConfig):
    """The decode kernels as a ``tvm.IRModule`` whose ``main`` takes ``(q, k, v, out, lse)``:
    one PrimFunc launching the split kernel, then the merge kernel."""
    import tvm
    from tvm import tirx
    from tvm.script import tirx as T

    from attncc.targets.cuda import _PTX_TYPE, _as_bool, _as_f32, _swizzle_width, _validate_spec

    _validate_spec(spec)
    validate_config(spec, config)

    B, H, KVH = spec.batch, spec.q_heads, spec.kv_heads
    S, TK, D, DV = spec.q_len, spec.kv_len, spec.head_dim, spec.head_dim_v
    G = spec.group
    R = G * S                          # packed rows per kv head
    dtype = spec.dtype
    ptx_t = _PTX_TYPE[dtype]
    scale = float(spec.scale)

    BK, NW, NS = config.block_k, config.num_warps, config.num_stages
    RB = config.block_rows
    NRB = -(-R // RB)                  # row blocks per kv head
    NSPLIT = config.num_splits
    NT = NW * 32
    KW = BK // NW                      # keys per warp per tile
    MT = RB // 16                      # m16 tiles (every warp holds all rows of the block)
    NKT = KW // 8                      # n8 tiles of S per warp
    KD = D // 16
    KK = KW // 16
    NDV = DV // 8
    Q_IN_REGS = _q_in_registers(spec, config)
    SWQ, SWV = _swizzle_width(D), _swizzle_width(DV)
    CQ, CV = D // 8, DV // 8

    lo_off, up_off, K_LO, K_HI = _bounds(spec)
    n_tiles_total = max(1, -(-(K_HI - K_LO) // BK))
    CH = -(-n_tiles_total // NSPLIT) * BK          # keys per split (whole tiles)
    band_is_mask = spec.mask_mod is None or spec.key_bounds.exact
    score_mod, mask_mod = spec.score_mod, spec.mask_mod
    fold_scale = score_mod is None

    # shared memory (16-bit elements): Q tile, NS slots of K and V; after the loop the same
    # bytes hold the warps' fp32 (acc, m, l) for the block's merge
    Q_ELEMS = RB * D
    K_BASE = Q_ELEMS
    K_ELEMS = BK * D
    V_BASE = K_BASE + NS * K_ELEMS
    V_ELEMS = BK * DV
    SMEM_BYTES = shared_memory_bytes(spec, config)
    SMEM_ELEMS = SMEM_BYTES // 2
    OSTRIDE = DV + 4                                # fp32 row stride of the merge area
    M_BASE = NW * RB * OSTRIDE                      # fp32 index of m[w, r], then l[w, r]
    L_BASE = M_BASE + NW * RB

    Q_ITERS = -(-(RB * CQ) // NT)
    K_ITERS, V_ITERS = -(-(BK * CQ) // NT), -(-(BK * CV) // NT)
    E_ITERS = -(-(RB * DV) // NT)

    NROWS = B * H * S                               # output rows
    NBLK = B * KVH * NRB * NSPLIT
    MERGE_WARPS = 4
    MERGE_NT = MERGE_WARPS * 32
    NMB = -(-NROWS // MERGE_WARPS)
    DV_LANES = -(-DV // 32)
    # workspace of the partial results (a placeholder element when one split writes out directly)
    WS_OUT = NROWS * NSPLIT * DV if NSPLIT > 1 else 1
    WS_LSE = NROWS * NSPLIT if NSPLIT > 1 else 1

    f32 = "float32"
    NEG_INF = tirx.const(float("-inf"), f32)
    FULL_MASK = tirx.const(0xFFFFFFFF, "uint32")

    def sw(row, chunk, width):
        if width == 1:
            return chunk
        return tirx.bitwise_xor(chunk, tirx.floormod(row, width))

    def q_off(row, chunk):
        return row * D + sw(row, chunk, SWQ) * 8

    def k_off(slot, row, chunk):
        return K_BASE + slot * K_ELEMS + row * D + sw(row, chunk, SWQ) * 8

    def v_off(slot, row, chunk):
        return V_BASE + slot * V_ELEMS + row * DV + sw(row, chunk, SWV) * 8

    def head_of(hk, r):
        """Query head of packed row r (padding rows clamp to the group's last head)."""
        return hk * G + tirx.min(tirx.floordiv(r, S), G - 1)

    def query_of(r):
        return tirx.floormod(r, S)

    def scaled(acc, b, hk, r, j):
        if fold_scale:
            return acc
        s = _as_f32(score_mod(acc * tirx.const(scale, f32), b, head_of(hk, r), query_of(r), j))
        return s * tirx.const(_LOG2E, f32)

    def to_log2(x):
        if fold_scale:
            return x * tirx.const(scale * _LOG2E, f32)
        return x

    def exp_arg(s, m):
        if fold_scale:
            return s * tirx.const(scale * _LOG2E, f32) - m
        return s - m

    def keep(b, hk, r, j):
        i = query_of(r)
        conds = []
        if K_HI < TK or -(-(K_HI - K_LO) // BK) * BK != K_HI - K_LO:
            conds.append(j < K_HI)
        if lo_off is not None:
            conds.append(j >= i + lo_off)
        if up_off is not None:
            conds.append(j <= i + up_off)
        if mask_mod is not None:
            conds.append(_as_bool(mask_mod(b, head_of(hk, r), i, j)))
        if not conds:
            return tirx.const(True, "bool")
        out = conds[0]
        for cnd in conds[1:]:
            out = tirx.And(out, cnd)
        return out

    def masked(acc, b, hk, r, j):
        return tirx.Select(keep(b, hk, r, j), scaled(acc, b, hk, r, j), NEG_INF)

    def tile_is_full(j0):
        """No element of key tile [j0, j0 + BK) needs the element mask for any row."""
        if not band_is_mask:
            return tirx.const(False, "bool")
        conds = []
        if K_HI < TK or n_tiles_total * BK != K_HI - K_LO:
            conds.append(j0 + BK <= K_HI)
        if lo_off is not None:
            conds.append(j0 >= (S - 1) + lo_off)
        if up_off is not None:
            conds.append(j0 + (BK - 1) <= up_off)
        if not conds:
            return tirx.const(True, "bool")
        out = conds[0]
        for cnd in conds[1:]:
            out = tirx.And(out, cnd)
        return out

    def within(count, index):
        if count % NT == 0:
            return tirx.const(True, "bool")
        return index < count

    def both(a, c):
        return tirx.And(a, c)

    def qk(kd):
        return kd if Q_IN_REGS else 0

    mma = f"mma.sync.aligned.m16n8k16.row.col.f32.{ptx_t}.{ptx_t}.f32"
    cvt = f"cvt.rn.{ptx_t}x2.f32"
    ldm = "ldmatrix.sync.aligned.m8n8.x4.shared.b16"
    ldm_t = "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"
    cpa = "cp.async.cg.shared.global"
    ex2 = "ex2.approx.ftz.f32"

    @T.prim_func
    def main(q: T.Buffer((B, H, S, D), dtype), k: T.Buffer((B, KVH, TK, D), dtype),
             v: T.Buffer((B, KVH, TK, DV), dtype), out: T.Buffer((B, H, S, DV), dtype),
             lse: T.Buffer((B, H, S), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        part_out = T.decl_buffer((WS_OUT,), "float32", scope="global")
        part_lse = T.decl_buffer((WS_LSE,), "float32", scope="global")
        # ================================================================ split kernel
        for bx in T.thread_binding(NBLK, thread="blockIdx.x"):
            for tx in T.thread_binding(NT, thread="threadIdx.x"):
                smem = T.decl_buffer((SMEM_ELEMS,), dtype, scope="shared.dyn")
                red = T.decl_buffer((SMEM_BYTES // 4,), "float32", data=smem.data, scope="shared.dyn")
                q_frag = T.decl_buffer((MT, KD if Q_IN_REGS else 1, 4), "uint32", scope="local")
                k_frag = T.decl_buffer((4,), "uint32", scope="local")
                v_frag = T.decl_buffer((4,), "uint32", scope="local")
                p_frag = T.decl_buffer((MT, KK, 4), "uint32", scope="local")
                s_acc = T.decl_buffer((MT, NKT, 4), "float32", scope="local")
                o_acc = T.decl_buffer((MT, NDV, 4), "float32", scope="local")
                m_run = T.decl_buffer((MT * 2,), "float32", scope="local")
                l_run = T.decl_buffer((MT * 2,), "float32", scope="local")
                m_use = T.decl_buffer((MT * 2,), "float32", scope="local")
                rmax = T.decl_buffer((MT * 2,), "float32", scope="local")
                mrg = T.decl_buffer((4,), "float32", scope="local")
                sp = bx % NSPLIT
                rb = bx // NSPLIT % NRB
                hk = bx // (NSPLIT * NRB) % KVH
                b = bx // (NSPLIT * NRB * KVH)
                warp = tx // 32
                lane = tx % 32
                r_base = rb * RB                          # first packed row of the block
                j_begin = K_LO + sp * CH
                n_tiles = T.max(T.min(K_HI - j_begin, CH) + (BK - 1), 0) // BK
                # ---- prologue: Q rows of the block, then the first NS - 1 tiles
                for it in T.unroll(Q_ITERS):
                    if within(RB * CQ, it * NT + tx):
                        T.ptx[cpa](
                            T.address_of(smem[q_off((it * NT + tx) // CQ, (it * NT + tx) % CQ)]),
                            T.address_of(q[b, head_of(hk, r_base + (it * NT + tx) // CQ),
                                           query_of(r_base + (it * NT + tx) // CQ),
                                           (it * NT + tx) % CQ * 8]),
                            16,
                            T.Cast("uint32", T.Select(r_base + (it * NT + tx) // CQ < R, 16, 0)))
                for st in T.unroll(NS - 1):
                    if st < n_tiles:
                        for it in T.unroll(K_ITERS):
                            if within(BK * CQ, it * NT + tx):
                                T.ptx[cpa](
                                    T.address_of(smem[k_off(st, (it * NT + tx) // CQ, (it * NT + tx) % CQ)]),
                                    T.address_of(k[b, hk, T.min(j_begin + st * BK + (it * NT + tx) // CQ, TK - 1),
                                                   (it * NT + tx) % CQ * 8]),
                                    16,
                                    T.Cast("uint32", T.Select(
                                        j_begin + st * BK + (it * NT + tx) // CQ < K_HI, 16, 0)))
                        for it in T.unroll(V_ITERS):
                            if within(BK * CV, it * NT + tx):
                                T.ptx[cpa](
                                    T.address_of(smem[v_off(st, (it * NT + tx) // CV, (it * NT + tx) % CV)]),
                                    T.address_of(v[b, hk, T.min(j_begin + st * BK + (it * NT + tx) // CV, TK - 1),
                                                   (it * NT + tx) % CV * 8]),
                                    16,
                                    T.Cast("uint32", T.Select(
                                        j_begin + st * BK + (it * NT + tx) // CV < K_HI, 16, 0)))
                    T.ptx["cp.async.commit_group"]()
                # ---- running state (per warp: its keys of every tile)
                for r in T.unroll(MT * 2):
                    m_run[r] = NEG_INF
                    l_run[r] = T.float32(0)
                for mt in T.unroll(MT):
                    for nd in T.unroll(NDV):
                        for e in T.unroll(4):
                            o_acc[mt, nd, e] = T.float32(0)
                # ---- the key loop
                for t in T.serial(n_tiles):
                    T.ptx["cp.async.wait_group"](NS - 2)
                    T.tvm_storage_sync("shared")
                    if Q_IN_REGS:
                        if t == 0:
                            for mt in T.unroll(MT):
                                for kd in T.unroll(KD):
                                    T.ptx[ldm](q_frag[mt, kd, 0], q_frag[mt, kd, 1], q_frag[mt, kd, 2],
                                               q_frag[mt, kd, 3],
                                               T.address_of(smem[q_off(mt * 16 + lane % 16, kd * 2 + lane // 16)]))
                    if t + (NS - 1) < n_tiles:
                        for it in T.unroll(K_ITERS):
                            if within(BK * CQ, it * NT + tx):
                                T.ptx[cpa](
                                    T.address_of(smem[k_off((t + NS - 1) % NS,
                                                            (it * NT + tx) // CQ, (it * NT + tx) % CQ)]),
                                    T.address_of(k[b, hk, T.min(j_begin + (t + NS - 1) * BK + (it * NT + tx) // CQ,
                                                                TK - 1),
                                                   (it * NT + tx) % CQ * 8]),
                                    16,
                                    T.Cast("uint32", T.Select(
                                        j_begin + (t + NS - 1) * BK + (it * NT + tx) // CQ < K_HI, 16, 0)))
                        for it in T.unroll(V_ITERS):
                            if within(BK * CV, it * NT + tx):
                                T.ptx[cpa](
                                    T.address_of(smem[v_off((t + NS - 1) % NS,
                                                            (it * NT + tx) // CV, (it * NT + tx) % CV)]),
                                    T.address_of(v[b, hk, T.min(j_begin + (t + NS - 1) * BK + (it * NT + tx) // CV,
                                                                TK - 1),
                                                   (it * NT + tx) % CV * 8]),
                                    16,
                                    T.Cast("uint32", T.Select(
                                        j_begin + (t + NS - 1) * BK + (it * NT + tx) // CV < K_HI, 16, 0)))
                    T.ptx["cp.async.commit_group"]()
                    # ---- S = Q Kᵀ on this warp's KW keys of the tile
                    for mt in T.unroll(MT):
                        for nt in T.unroll(NKT):
                            for e in T.unroll(4):
                                s_acc[mt, nt, e] = T.float32(0)
                    for kd in T.unroll(KD):
                        if not Q_IN_REGS:
                            for mt in T.unroll(MT):
                                T.ptx[ldm](q_frag[mt, 0, 0], q_frag[mt, 0, 1], q_frag[mt, 0, 2], q_frag[mt, 0, 3],
                                           T.address_of(smem[q_off(mt * 16 + lane % 16, kd * 2 + lane // 16)]))
                        for np_ in T.unroll(NKT // 2):
                            T.ptx[ldm](k_frag[0], k_frag[1], k_frag[2], k_frag[3],
                                       T.address_of(smem[k_off(t % NS,
                                                               warp * KW + np_ * 16 + lane // 16 * 8 + lane % 8,
                                                               kd * 2 + lane // 8 % 2)]))
                            for mt in T.unroll(MT):
                                for half in T.unroll(2):
                                    T.ptx[mma](
                                        s_acc[mt, np_ * 2 + half, 0], s_acc[mt, np_ * 2 + half, 1],
                                        s_acc[mt, np_ * 2 + half, 2], s_acc[mt, np_ * 2 + half, 3],
                                        q_frag[mt, qk(kd), 0], q_frag[mt, qk(kd), 1],
                                        q_frag[mt, qk(kd), 2], q_frag[mt, qk(kd), 3],
                                        k_frag[half * 2], k_frag[half * 2 + 1],
                                        s_acc[mt, np_ * 2 + half, 0], s_acc[mt, np_ * 2 + half, 1],
                                        s_acc[mt, np_ * 2 + half, 2], s_acc[mt, np_ * 2 + half, 3])
                    # ---- score_mod, mask (partial tiles only), log2 domain
                    if tile_is_full(j_begin + t * BK):
                        for mt in T.unroll(MT):
                            for nt in T.unroll(NKT):
                                for e in T.unroll(4):
                                    s_acc[mt, nt, e] = scaled(
                                        s_acc[mt, nt, e], b, hk, r_base + mt * 16 + lane // 4 + e // 2 * 8,
                                        j_begin + t * BK + warp * KW + nt * 8 + lane % 4 * 2 + e % 2)
                    else:
                        for mt in T.unroll(MT):
                            for nt in T.unroll(NKT):
                                for e in T.unroll(4):
                                    s_acc[mt, nt, e] = masked(
                                        s_acc[mt, nt, e], b, hk, r_base + mt * 16 + lane // 4 + e // 2 * 8,
                                        j_begin + t * BK + warp * KW + nt * 8 + lane % 4 * 2 + e % 2)
                    # ---- online softmax
                    for r in T.unroll(MT * 2):
                        rmax[r] = NEG_INF
                    for mt in T.unroll(MT):
                        for nt in T.unroll(NKT):
                            for e in T.unroll(4):
                                rmax[mt * 2 + e // 2] = T.max(rmax[mt * 2 + e // 2], s_acc[mt, nt, e])
                    for r in T.unroll(MT * 2):
                        rmax[r] = T.max(rmax[r], T.cuda.__shfl_xor_sync(FULL_MASK, rmax[r], 1, 32))
                        rmax[r] = T.max(rmax[r], T.cuda.__shfl_xor_sync(FULL_MASK, rmax[r], 2, 32))
                        rmax[r] = T.max(m_run[r], to_log2(rmax[r]))
                        m_use[r] = T.Select(rmax[r] == NEG_INF, T.float32(0), rmax[r])
                        T.ptx[ex2](m_run[r], m_run[r] - m_use[r])
                        l_run[r] = l_run[r] * m_run[r]
                    for mt in T.unroll(MT):
                        for nd in T.unroll(NDV):
                            for e in T.unroll(4):
                                o_acc[mt, nd, e] = o_acc[mt, nd, e] * m_run[mt * 2 + e // 2]
                    for r in T.unroll(MT * 2):
                        m_run[r] = rmax[r]
                    for mt in T.unroll(MT):
                        for nt in T.unroll(NKT):
                            for e in T.unroll(4):
                                T.ptx[ex2](s_acc[mt, nt, e], exp_arg(s_acc[mt, nt, e], m_use[mt * 2 + e // 2]))
                                l_run[mt * 2 + e // 2] = l_run[mt * 2 + e // 2] + s_acc[mt, nt, e]
                    for mt in T.unroll(MT):
                        for kk in T.unroll(KK):
                            for e in T.unroll(4):
                                T.ptx[cvt](p_frag[mt, kk, e],
                                           s_acc[mt, kk * 2 + e // 2, e % 2 * 2 + 1],
                                           s_acc[mt, kk * 2 + e // 2, e % 2 * 2])
                    # ---- O += P V
                    for kk in T.unroll(KK):
                        for dp in T.unroll(NDV // 2):
                            T.ptx[ldm_t](v_frag[0], v_frag[1], v_frag[2], v_frag[3],
                                         T.address_of(smem[v_off(t % NS,
                                                                 warp * KW + kk * 16 + lane // 8 % 2 * 8 + lane % 8,
                                                                 dp * 2 + lane // 16)]))
                            for mt in T.unroll(MT):
                                for half in T.unroll(2):
                                    T.ptx[mma](
                                        o_acc[mt, dp * 2 + half, 0], o_acc[mt, dp * 2 + half, 1],
                                        o_acc[mt, dp * 2 + half, 2], o_acc[mt, dp * 2 + half, 3],
                                        p_frag[mt, kk, 0], p_frag[mt, kk, 1],
                                        p_frag[mt, kk, 2], p_frag[mt, kk, 3],
                                        v_frag[half * 2], v_frag[half * 2 + 1],
                                        o_acc[mt, dp * 2 + half, 0], o_acc[mt, dp * 2 + half, 1],
                                        o_acc[mt, dp * 2 + half, 2], o_acc[mt, dp * 2 + half, 3])
                # ---- merge the warps through shared memory (fp32, over the K/V slots)
                T.ptx["cp.async.wait_group"](0)
                T.tvm_storage_sync("shared")
                for r in T.unroll(MT * 2):
                    l_run[r] = l_run[r] + T.cuda.__shfl_xor_sync(FULL_MASK, l_run[r], 1, 32)
                    l_run[r] = l_run[r] + T.cuda.__shfl_xor_sync(FULL_MASK, l_run[r], 2, 32)
                for mt in T.unroll(MT):
                    for hf in T.unroll(2):
                        if lane % 4 == 0:
                            red[M_BASE + warp * RB + mt * 16 + hf * 8 + lane // 4] = m_run[mt * 2 + hf]
                            red[L_BASE + warp * RB + mt * 16 + hf * 8 + lane // 4] = l_run[mt * 2 + hf]
                for mt in T.unroll(MT):
                    for nd in T.unroll(NDV):
                        for e in T.unroll(4):
                            red[(warp * RB + mt * 16 + lane // 4 + e // 2 * 8) * OSTRIDE
                                + nd * 8 + lane % 4 * 2 + e % 2] = o_acc[mt, nd, e]
                T.tvm_storage_sync("shared")
                for it in T.serial(E_ITERS):
                    if within(RB * DV, it * NT + tx):
                        if r_base + (it * NT + tx) // DV < R:
                            # mrg: 0 max m, 1 sum l, 2 sum acc, 3 weight
                            mrg[0] = NEG_INF
                            for w in T.unroll(NW):
                                mrg[0] = T.max(mrg[0], red[M_BASE + w * RB + (it * NT + tx) // DV])
                            mrg[0] = T.Select(mrg[0] == NEG_INF, T.float32(0), mrg[0])
                            mrg[1] = T.float32(0)
                            mrg[2] = T.float32(0)
                            for w in T.unroll(NW):
                                mrg[3] = T.exp2(red[M_BASE + w * RB + (it * NT + tx) // DV] - mrg[0])
                                mrg[1] = mrg[1] + red[L_BASE + w * RB + (it * NT + tx) // DV] * mrg[3]
                                mrg[2] = mrg[2] + red[(w * RB + (it * NT + tx) // DV) * OSTRIDE
                                                      + (it * NT + tx) % DV] * mrg[3]
                            if NSPLIT == 1:
                                # one split: the block's result is final (no merge kernel)
                                out[b, head_of(hk, r_base + (it * NT + tx) // DV),
                                    query_of(r_base + (it * NT + tx) // DV), (it * NT + tx) % DV] = T.Cast(
                                    dtype, T.Select(mrg[1] > T.float32(0), mrg[2] / mrg[1], T.float32(0)))
                                if (it * NT + tx) % DV == 0:
                                    lse[b, head_of(hk, r_base + (it * NT + tx) // DV),
                                        query_of(r_base + (it * NT + tx) // DV)] = T.Select(
                                        mrg[1] > T.float32(0), (mrg[0] + T.log2(mrg[1])) * T.float32(_LN2),
                                        NEG_INF)
                            else:
                                part_out[(((b * H + head_of(hk, r_base + (it * NT + tx) // DV)) * S
                                           + query_of(r_base + (it * NT + tx) // DV)) * NSPLIT + sp) * DV
                                         + (it * NT + tx) % DV] = T.Select(
                                    mrg[1] > T.float32(0), mrg[2] / mrg[1], T.float32(0))
                                if (it * NT + tx) % DV == 0:
                                    part_lse[((b * H + head_of(hk, r_base + (it * NT + tx) // DV)) * S
                                              + query_of(r_base + (it * NT + tx) // DV)) * NSPLIT + sp] = T.Select(
                                        mrg[1] > T.float32(0), mrg[0] + T.log2(mrg[1]), NEG_INF)
        # ================================================================ merge kernel
        if NSPLIT > 1:
            for mb in T.thread_binding(NMB, thread="blockIdx.x"):
                for mtx in T.thread_binding(MERGE_NT, thread="threadIdx.x"):
                    acc = T.decl_buffer((DV_LANES,), "float32", scope="local")
                    st = T.decl_buffer((3,), "float32", scope="local")      # max, sum, weight
                    row = mb * MERGE_WARPS + mtx // 32
                    ml = mtx % 32
                    if row < NROWS:
                        st[0] = NEG_INF
                        for s in T.serial(NSPLIT):
                            st[0] = T.max(st[0], part_lse[row * NSPLIT + s])
                        st[0] = T.Select(st[0] == NEG_INF, T.float32(0), st[0])
                        st[1] = T.float32(0)
                        for c in T.unroll(DV_LANES):
                            acc[c] = T.float32(0)
                        for s in T.serial(NSPLIT):
                            st[2] = T.exp2(part_lse[row * NSPLIT + s] - st[0])
                            st[1] = st[1] + st[2]
                            for c in T.unroll(DV_LANES):
                                if c * 32 + ml < DV:
                                    acc[c] = acc[c] + st[2] * part_out[(row * NSPLIT + s) * DV + c * 32 + ml]
                        for c in T.unroll(DV_LANES):
                            if c * 32 + ml < DV:
                                out[row // (H * S), row // S % H, row % S, c * 32 + ml] = T.Cast(
                                    dtype, T.Select(st[1] > T.float32(0), acc[c] / st[1], T.float32(0)))
                        if ml == 0:
                            lse[row // (H * S), row // S % H, row % S] = T.Select(
                                st[1] > T.float32(0), (st[0] + T.log2(st[1])) * T.float32(_LN2), NEG_INF)

    return tvm.IRModule({"main": main})
