"""Hopper (sm_90a) prefill kernel on the in-order schedule: chained query blocks, and tile maps
with one warpgroup.

cuda.py picks this module over ``_cuda_wgmma.py`` when the config chains query blocks
(``query_blocks`` > 1) or iterates a tile map with one warpgroup (no ping-pong partner).  It is
the wgmma kernel as it stood before ``_cuda_wgmma.py`` gained the ping-pong schedule and the
L2-friendly grid order (it has the grid order since).  Table mode, captured tensors and fp8
run on the ping-pong kernel for two warpgroups and more; this one keeps its own table mode and
fp8 path for one warpgroup and for chained blocks (the row compaction, the fp8 rules, the fp8 V
loader and the K/V loaders are ``_cuda_wgmma``'s, shared).  Folding chaining into
``_cuda_wgmma.py`` was tried and measured slower (benchmarks/gpu/RESULTS.md); the two share the
descriptor/layout scheme below.

The original description follows.

Hopper (sm_90a) prefill kernel: the two matrix products on ``wgmma.mma_async``.

Selected by ``CudaConfig(mma="wgmma")`` (cuda.py dispatches here); the ``mma.sync``
kernel of cuda.py stays the default and the only path before Hopper.  Same interface,
semantics and arguments as that kernel ``(q, k, v, out, lse)``; what differs:

* a thread block is ``num_warps // 4`` warpgroups of 128 threads; each warpgroup owns 64
  query rows (``block_q = 64 * warpgroups``), and within it warp ``w`` owns rows
  ``16 w .. 16 w + 15`` -- the wgmma accumulator layout, which per warp is the
  ``mma.sync`` m16n8 layout repeated along N, so the online softmax is the same code.
* shared memory holds every tile in the layout wgmma reads through a matrix descriptor
  with the 128-byte swizzle: a tile of ``rows x d`` 16-bit elements is ``d / 64`` column
  blocks of ``rows x 64`` (128 bytes per row), 16-byte chunk ``c`` of row ``r`` stored at
  chunk ``c ^ (r % 8)``.  Every tile starts on a 1024-byte boundary (the swizzle is a
  function of address bits 4-9): the kernel aligns the dynamic shared memory base at run
  time and asks for 1 KB more.  Q, K and V tiles arrive by ``cp.async`` (16 bytes a
  thread), ``num_stages`` slots of (K, V), loads ``num_stages - 1`` key blocks ahead;
  ``fence.proxy.async.shared::cta`` before the barrier makes them visible to the tensor
  cores (the async proxy).
* S = Q Kᵀ: ``wgmma m64n{block_k}k16`` with both operands in shared memory (K-major
  descriptors; the k16 step moves the start address 32 bytes inside the swizzle atom).
* O += P V: ``wgmma m64n{head_dim_v}k16`` with P from registers (the A fragment layout
  is ``mma.sync``'s, so P is the converted S accumulator as it stands) and V from shared
  memory, read transposed (MN-major descriptor: leading byte offset = one 64-column
  block, stride byte offset = 8 key rows).
* each product is one wgmma group, waited for before its result is used (no overlap
  inside a warpgroup; the warpgroups of a block and the cp.async loads overlap).

Sparsity (table mode, ``use_block_table``): masks that are no single band (prefix-LM,
strided, local + global, chunked, document ids) take the tile map ``int32 [NQB, NKB]``
(0 empty, 1 partial, 2 full; prune-sparsity's proof or the per-call map of captured
tensors) as the argument after ``lse``.  Warp 0 compacts its query block's row into a
shared list of the non-empty key blocks (``__ballot_sync`` + ``popc``) and the key loop
walks only that list; full tiles skip the element mask.  Captured tensors (document ids)
are kernel arguments after the scales, read by the mask/score expressions.

FP8 (the quantize pass, ``spec.quant_dtype`` e4m3 or e5m2): q and k arrive as fp8 with f32
scales (arguments after the table); S = Q Kᵀ is ``wgmma m64n{block_k}k32.f32.e4m3.e4m3``
(both operands K-major, rows of ``head_dim`` bytes), and the dequantization (q scale per row,
k scale per (batch, head) folded into the exponent's factor; a per-key k scale multiplies the
scores) is fused.  With ``quant_pv`` v is fp8 too and O += P V is ``wgmma m64n{d_v}k32`` with
P converted to e4m3 in registers (times 2^8 so small probabilities stay normal numbers; l
and O carry the same factor).  fp8 wgmma takes B K-major only, so **the host prologue
transposes V** to ``[batch, kv_heads, d_v, kv_len rounded up to 32]`` and permutes the keys
inside each group of 32 so that the S accumulator fragment *is* the fp8 A fragment of P
(``fp8_v_layout``: no shuffles in the kernel).
"""

from __future__ import annotations


from attncc.errors import ConfigError, ShapeError
from attncc.targets.spec import FlashKernelSpec

_PTX_TYPE = {"float16": "f16", "bfloat16": "bf16"}
_LN2 = 0.6931471805599453
ALIGN_BYTES = 1024
# experiment switches ("lazy_rescale"; build.py sets them before lower()); empty = the defaults
_OPTIONS: dict = {}


def chained(config) -> int:
    """Query blocks a thread block runs one after another (``CudaConfig.query_blocks``)."""
    return int(getattr(config, "query_blocks", 1) or 1)


def takes_row_limits(spec: FlashKernelSpec, config) -> bool:
    """Whether this kernel's table carries the rows' key limits of a document mask (as
    ``_cuda_wgmma``'s; not with chained query blocks)."""
    return chained(config) <= 1 and row_limits_on(spec)


def launch_order_on(spec: FlashKernelSpec, config) -> bool:
    """Whether this kernel's table carries the launch order of its thread blocks
    (``attncc.runtime._layouts.with_launch_order``, right after the tile map): table mode without
    chained query blocks.  Each thread block reads which (query block, batch x head) it runs from
    it, so the host can end the call on light blocks (``_OPTIONS["launch_order"]``, default on)."""
    return use_block_table(spec) and chained(config) <= 1 and _OPTIONS.get("launch_order", True)


def launch_bhn(spec: FlashKernelSpec, config) -> int:
    """Batch x heads of the launch order (its columns), 0 without one."""
    return spec.batch * spec.q_heads if launch_order_on(spec, config) else 0


def shared_memory_bytes(spec: FlashKernelSpec, config) -> int:
    qk, vb = _elem_bytes(spec)
    qc = chained(config)
    q_tile = config.block_q * max(spec.head_dim * qk, spec.head_dim_v * 2)
    q_tile = 2 * q_tile + ALIGN_BYTES if qc > 1 else q_tile
    kv = config.num_stages * config.block_k * (spec.head_dim * qk + spec.head_dim_v * vb)
    nkb = -(-spec.kv_len // config.block_k)
    table = 4 * (nkb + 1) * qc if use_block_table(spec) else 0
    return q_tile + kv + ALIGN_BYTES + table


# the fp8 V layout is a runtime step too (exported kernels apply it without TVM): one definition
from attncc.runtime._layouts import (fp8_v_layout, launch_columns, padded_kv_len,  # noqa: E402,F401
                                     row_limit_columns, v_key_permutation)


# the tile rules, register estimate, resource checks, table mode and its row compaction are _cuda_wgmma's
from attncc.targets._cuda_wgmma import (P_SHIFT, _LOG2E,  # noqa: E402,F401
                                        band_part_on, check_fp8, check_resources, check_tiles, compact_row_macro,
                                        elem_bytes as _elem_bytes, fp8_v_loader_macro, operand_types,
                                        registers_estimate, row_fold_macro, row_limits_on, scale_reader,
                                        score_functions, score_mask_macros, row_list_macro, staged_store_macro,
                                        tile_loader_macro, use_block_table)


def validate_config(spec: FlashKernelSpec, config, arch, smem_limit: int) -> None:
    c = config

    def bad(msg):
        raise ConfigError(f"cuda config {c}: {msg}", variant=spec.name or None)

    check_tiles(spec, c, arch)
    if chained(c) > 1:
        if c.num_stages != 2:
            bad(f"query_blocks={chained(c)} chains query blocks through one key pipeline that loads one "
                "block ahead: num_stages must be 2")
        if spec.quant_dtype is not None:
            bad("query_blocks > 1 does not take fp8 inputs yet: use query_blocks=1")
    check_fp8(spec, c)
    check_resources(spec, c, smem_limit, shared_memory_bytes(spec, c))


# the key range, score_mod and element mask, shared with cuda.py and rocm.py
from attncc.targets._gpu_flash import FlashIndexing  # noqa: E402


def lower(spec: FlashKernelSpec, config):
    """The wgmma kernel as a ``tvm.IRModule`` whose ``main`` takes ``(q, k, v, out, lse)``."""
    import tvm
    from tvm import tirx
    from tvm.script import tirx as T

    B, H, KVH = spec.batch, spec.q_heads, spec.kv_heads
    S, TK, D, DV = spec.q_len, spec.kv_len, spec.head_dim, spec.head_dim_v
    G = spec.group
    dtype = spec.dtype
    ptx_t = _PTX_TYPE[dtype]
    scale = float(spec.scale)

    BQ, BK = config.block_q, config.block_k
    NW, NS = config.num_warps, config.num_stages
    NT = NW * 32
    # fp8 (quantize pass): q, k in QK_DT (and v when PV8); scales and captures are arguments
    # (QB, VB: bytes per element of q/k and of v; TKP: keys of the transposed fp8 V)
    QUANT, PV8, QK_DT, V_DT, qk_t, v_t, QB, VB, TKP = operand_types(spec)
    NKT = BK // 8                     # n8 column groups of S
    KD = D * QB // 32                 # k steps of Q·Kᵀ (k16 for 16-bit, k32 for fp8: 32 bytes each)
    KK = BK // (32 if PV8 else 16)    # k steps of P·V
    NDV = DV // 8                     # n8 column groups of O
    NSA = BK // 2                     # S accumulator registers per thread
    NOA = DV // 2                     # O accumulator registers per thread
    NQB = (S + BQ - 1) // BQ
    NKB = (TK + BK - 1) // BK
    CQ, CV = D * QB // 16, DV // 8    # 16-byte chunks per row of Q/K and of the output
    EQ = 16 // QB                     # q/k elements per 16-byte chunk
    # V tile in shared memory: [block_k keys, d_v] (16-bit), or [d_v, block_k keys] (fp8, transposed)
    V_ROWS, CVL = (DV, BK // 16) if PV8 else (BK, DV // 8)

    # shared memory map, in 16-bit units from the 1024-byte aligned base
    Q_ELEMS = BQ * max(D * QB, DV * 2) // 2
    QC = chained(config)              # query blocks chained per thread block (query_blocks)
    CHAIN = QC > 1
    NQG = -(-NQB // QC)               # thread blocks along the query axis
    # chained: two Q tiles (the next block's loads early) and 1 KB above them (the O staging)
    K_BASE = Q_ELEMS * 2 + ALIGN_BYTES // 2 if CHAIN else Q_ELEMS
    K_ELEMS = BK * D * QB // 2
    V_BASE = K_BASE + NS * K_ELEMS
    V_ELEMS = BK * DV * VB // 2
    LIST_BASE = V_BASE + NS * V_ELEMS + ALIGN_BYTES // 2     # table mode: the key-block list (int32)
    LS = NKB + 1                      # one key-block list (entries, then the count) per chained block
    SMEM_ELEMS = LIST_BASE + (2 * LS * QC if use_block_table(spec) else 0)

    Q_ITERS, K_ITERS, V_ITERS = (-(-(BQ * CQ) // NT), -(-(BK * CQ) // NT), -(-(V_ROWS * CVL) // NT))

    # table mode: the tile map [NQB, NKB] is an argument; captured tensors and scales too
    USE_TABLE = use_block_table(spec)
    # (with the rows' key limits, takes_row_limits: 1 + 2 BQ more columns, as _cuda_wgmma's)
    ROW_LIMITS = USE_TABLE and takes_row_limits(spec, config)
    # (with the launch order, launch_order_on: B x H columns after the map, before the limits)
    LAUNCH = launch_order_on(spec, config)
    BHN = B * H
    LIM0 = NKB + (launch_columns(BHN) if LAUNCH else 0)
    TILE_MAP = (tirx.decl_buffer((NQB, LIM0 + (row_limit_columns(BQ) if ROW_LIMITS else 0)), "int32", "tile_map")
                if USE_TABLE else None)
    SCALE_BUFFERS = [tirx.decl_buffer(tuple(int(x) for x in shape), "float32", name)
                     for name, shape in spec.scales]
    CAPTURE_BUFFERS = [tirx.decl_buffer(tuple(int(x) for x in shape), cdt, name)
                       for name, shape, cdt in spec.captures]
    K_PER_KEY = QUANT and int(SCALE_BUFFERS[1].shape[2]) > 1

    kb_lower = spec.key_bounds.lower_offset
    kb_upper = spec.key_bounds.upper_offset
    if kb_upper is not None and kb_upper >= TK - 1:
        kb_upper = None
    if kb_lower is not None and kb_lower <= -(S - 1):
        kb_lower = None
    band_is_mask = spec.mask_mod is None or spec.key_bounds.exact
    score_mod = spec.score_mod
    fold_scale = score_mod is None
    SHIFT = P_SHIFT if PV8 else 0.0

    f32 = "float32"
    NEG_INF = tirx.const(float("-inf"), f32)
    FULL_MASK = tirx.const(0xFFFFFFFF, "uint32")
    u64 = "uint64"

    def i32(x):
        return tirx.const(x, "int32")

    def U(x):
        return tirx.const(x, u64)

    # descriptor fields (bytes >> 4): 128-byte swizzle (mode 1, bits 62-63), stride byte
    # offset 1024 (8 rows of 128 bytes), leading byte offset 16 for K-major operands
    # (unused under the swizzle) and one 64-column block of V for the MN-major V.
    DESC_K = (1 << 62) | ((1024 >> 4) << 32) | (1 << 16)
    DESC_V = (1 << 62) | ((1024 >> 4) << 32) | (((BK * 128) >> 4) << 16)

    # num_stages 2: loads one key block ahead, the two products of a block in sequence.
    # num_stages >= 3: loads num_stages - 2 blocks ahead, and P·V of block j (still in flight)
    # overlaps Q·Kᵀ and the softmax of block j + 1 (FlashAttention-3's intra-warpgroup overlap);
    # its V slot is overwritten only two iterations later, after every warpgroup waited for it.
    OVERLAP = NS >= 3
    # lazy rescaling (see _cuda_wgmma.LAZY); not with fp8 P (2^8-scaled already: e4m3 would saturate)
    LAZY = _OPTIONS.get("lazy_rescale", score_mod is None) and not PV8
    from attncc.targets._cuda_wgmma import LAZY_TAU, p_fragments_macro, rescale_o_macro
    rescale_o = rescale_o_macro(NDV, LAZY)
    to_p = p_fragments_macro(KK, PV8, ptx_t)
    AHEAD = NS - 2 if OVERLAP else NS - 1

    def v_desc(sb, slot, kk):
        """Descriptor of V rows 16 kk .. 16 kk + 15 of slot ``slot`` (MN-major B of P·V); fp8:
        32-byte column step kk of the transposed V tile (K-major B, like K)."""
        if PV8:
            return (sb >> U(4)) + tirx.Cast(u64, (V_BASE + slot * V_ELEMS) // 8 + (kk // 4) * (DV * 8)
                                            + (kk % 4) * 2) + U(DESC_K)
        return (sb >> U(4)) + tirx.Cast(u64, (V_BASE + slot * V_ELEMS) // 8 + kk * (16 * 8)) + U(DESC_V)

    def block_at(ent, which, pos):
        """The key block at loop position ``pos``: itself, or (table mode) the compacted list's
        entry, copied to the register ent[which] (a shared load cannot sit in a condition)."""
        if USE_TABLE:
            return tirx.shift_right(ent[which], 1)
        return pos

    scale_at = scale_reader(SCALE_BUFFERS)
    set_row_fold = row_fold_macro(scale_at, K_PER_KEY, scale * _LOG2E if fold_scale else 1.0)

    def tile_off(base, rows, row, chunk):
        """Element offset of 16-byte chunk ``chunk`` of row ``row`` in a swizzled tile."""
        return (base + tirx.floordiv(chunk, 8) * (rows * 64) + row * 64
                + tirx.bitwise_xor(tirx.floormod(chunk, 8), tirx.floormod(row, 8)) * 8)

    def q_off(row, chunk):
        return tile_off(0, BQ, row, chunk)

    def o_off(row, chunk):
        return tile_off(0, BQ, row, chunk)

    def k_off(slot, row, chunk):
        return tile_off(K_BASE + slot * K_ELEMS, BK, row, chunk)

    def v_off(slot, row, chunk):
        return tile_off(V_BASE + slot * V_ELEMS, V_ROWS, row, chunk)

    # score_mod, scale folding, element mask and fp8 dequantization: _cuda_wgmma's, with its
    # unclamped row/key gathers where the blocks divide the lengths (not for chained blocks,
    # whose stream may name query blocks past the last)
    UNCLAMPED = _OPTIONS.get("unclamped", True) and QC == 1
    ix = FlashIndexing(spec, BQ, BK, 16, tuple(CAPTURE_BUFFERS), rows_in_range=UNCLAMPED and S % BQ == 0,
                       keys_in_range=UNCLAMPED and TK % BK == 0)
    scaled, to_log2, exp_arg, masked = score_functions(ix, QUANT, PV8, K_PER_KEY, scale_at, G)

    def block_lo(q0):
        if USE_TABLE:
            return i32(0)               # positions in the compacted list
        if kb_lower is None:
            return i32(0)
        return tirx.floordiv(tirx.max(q0 + kb_lower, 0), BK)

    def block_hi(q0, count=None):
        if USE_TABLE:
            return count[0]             # the count of non-empty key blocks
        q_last = tirx.min(q0 + (BQ - 1), S - 1)
        if kb_upper is None:
            return i32(NKB)
        return tirx.max(tirx.floordiv(tirx.min(q_last + kb_upper, TK - 1), BK) + 1, block_lo(q0))

    def tile_is_full(r0, kb, kv_list=None):
        """No element of warp rows r0 .. r0+15 x key block kb needs the element mask."""
        if USE_TABLE:           # the tile map says full (2) for the whole query block
            return ix.entry_is_full(kv_list[0], kb)
        if not band_is_mask:
            return tirx.const(False, "bool")
        r_last = r0 + 15
        j0 = kb * BK
        conds = []
        if NKB * BK != TK:
            conds.append(j0 + BK <= TK)
        if kb_lower is not None:
            conds.append(j0 >= r_last + kb_lower)
        if kb_upper is not None:
            conds.append(j0 + (BK - 1) <= r0 + kb_upper)
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

    wg_s = f"wgmma.mma_async.sync.aligned.m64n{BK}k{32 if QUANT else 16}.f32.{qk_t}.{qk_t}"
    wg_o = f"wgmma.mma_async.sync.aligned.m64n{DV}k{32 if PV8 else 16}.f32.e4m3.{v_t}" if PV8 else \
        f"wgmma.mma_async.sync.aligned.m64n{DV}k16.f32.{ptx_t}.{ptx_t}"
    TRANS_S = () if QUANT else (0, 0)     # fp8 wgmma has no transpose immediates (K-major only)
    TRANS_O = () if PV8 else (1,)
    cpa = "cp.async.cg.shared.global"
    # every key block whole (fp8 P·V: in the padded, transposed V too): loads without clamp or zero
    # fill (_cuda_wgmma.KEYS_EXACT)
    KEYS_EXACT = _OPTIONS.get("keys_exact", TK % BK == 0 and TKP % BK == 0)

    load_k = tile_loader_macro(NT, BK, TK, KEYS_EXACT, k_off, CQ, K_ITERS, EQ, D * QB)
    load_v = (fp8_v_loader_macro(NT, BK, TKP, KEYS_EXACT, v_off, V_ROWS, CVL, V_ITERS) if PV8 else
              tile_loader_macro(NT, BK, TK, KEYS_EXACT, v_off, CVL, V_ITERS, 8, DV * 2))
    ex2 = "ex2.approx.ftz.f32"

    V_SHAPE = (B, KVH, DV, TKP) if PV8 else (B, KVH, TK, DV)
    # grid order as _cuda_wgmma's: the query blocks of one (batch, head) are neighbours in the
    # launch order, so a wave of blocks reads the keys and values of few heads (L2 hits);
    # blockIdx.y holds batch x heads, at most 65535
    QB_FAST = B * H <= 65535
    compact_row, MAP_BATCH = compact_row_macro(TILE_MAP, NKB) if USE_TABLE else (None, 1)
    row_list = row_list_macro(compact_row, NKB) if USE_TABLE else None

    @T.macro
    def load_q(q_buf, q0, smem, q, pe, tx, b, h):
        for it in T.unroll(Q_ITERS):
            if within(BQ * CQ, it * NT + tx):
                T.ptx[cpa](
                    T.address_of(smem[pe + q_buf * Q_ELEMS + q_off((it * NT + tx) // CQ, (it * NT + tx) % CQ)]),
                    T.address_of(q[b, h, T.min(q0 + (it * NT + tx) // CQ, S - 1), (it * NT + tx) % CQ * EQ]),
                    16,
                    T.Cast("uint32", T.Select(q0 + (it * NT + tx) // CQ < S, 16, 0)))

    @T.macro
    def load_kv(blk, slot, smem, k, v, pe, tx, b, hk):
        load_k(blk, slot, smem, k, pe, tx, b, hk)
        load_v(blk, slot, smem, v, pe, tx, b, hk)

    store_out = staged_store_macro(dtype, NDV, BQ, CV, NT, S, o_off, within)

    @T.macro
    def qk_product(q_buf, slot, s_acc, sbase, wg):
        """S = Q Kᵀ: one wgmma group of D/16 (fp8: D/32) k steps, committed, not waited for;
        ``q_buf`` the Q tile (chained mode: 0 or 1), ``slot`` the K slot."""
        T.ptx["wgmma.fence.sync.aligned"]()
        for kd in T.unroll(KD):
            T.ptx[wg_s](
                *[s_acc[i] for i in range(NSA)],
                (sbase >> U(4)) + T.Cast(u64, q_buf * (Q_ELEMS // 8) + (kd // 4) * (BQ * 8) + wg * (64 * 8)
                                         + (kd % 4) * 2) + U(DESC_K),
                (sbase >> U(4)) + T.Cast(u64, (K_BASE + slot * K_ELEMS) // 8 + (kd // 4) * (BK * 8) + (kd % 4) * 2)
                + U(DESC_K),
                kd > 0, 1, 1, *TRANS_S)
        T.ptx["wgmma.commit_group.sync.aligned"]()

    # (ROW_LIMITS: a flagged block's partial tiles masked by its rows' key limits, ent[2:7])
    # (band_part_on: partial tiles the band alone decides masked by the band's compares; not
    # with chained query blocks, which were not run with it)
    scaled_scores, mask_partial, load_row_limits = score_mask_macros(
        NKT, BK, BQ, scaled, masked, TILE_MAP if ROW_LIMITS else None, LIM0, 2,
        spec.band_part if band_part_on(spec) and not ROW_LIMITS and chained(config) == 1 else None, TK)

    @T.macro
    def softmax_p(kbv, is_full, pv_pending, s_acc, o_acc, p_frag, p16, red, m_run, m_use, l_run, row_fold,
                  b, h, r0, lane, ent):
        """S of key block ``kbv`` -> score_mod, mask (unless ``is_full``), online softmax (m, l and
        O rescaled; with OVERLAP after waiting for the P·V in flight when ``pv_pending``), and P
        as the A fragments of P·V."""
        # ---- score_mod, mask (partial tiles only), log2 domain
        if is_full:
            scaled_scores(kbv, s_acc, r0, lane, b, h, row_fold)
        else:
            mask_partial(kbv, s_acc, r0, lane, b, h, row_fold, ent)
        # ---- online softmax
        for r in T.unroll(2):
            red[r] = NEG_INF
        for nt in T.unroll(NKT):
            for e in T.unroll(4):
                red[e // 2] = T.max(red[e // 2], s_acc[nt * 4 + e])
        for r in T.unroll(2):
            red[r] = T.max(red[r], T.cuda.__shfl_xor_sync(FULL_MASK, red[r], 1, 32))
            red[r] = T.max(red[r], T.cuda.__shfl_xor_sync(FULL_MASK, red[r], 2, 32))
            red[r] = T.max(m_run[r], to_log2(red[r], r, row_fold))   # new running max
            if LAZY:
                red[r] = T.Select(red[r] > m_run[r] + T.float32(LAZY_TAU), red[r], m_run[r])
            m_use[r] = T.Select(red[r] == NEG_INF, T.float32(0), red[r])
            T.ptx[ex2](m_run[r], m_run[r] - m_use[r])          # alpha (m_run reused)
            l_run[r] = l_run[r] * m_run[r]
        if not OVERLAP:
            rescale_o(o_acc, m_run)
        for nt in T.unroll(NKT):
            for e in T.unroll(4):
                T.ptx[ex2](s_acc[nt * 4 + e], exp_arg(s_acc[nt * 4 + e], m_use[e // 2], e // 2, row_fold))
                l_run[e // 2] = l_run[e // 2] + s_acc[nt * 4 + e]
        if OVERLAP:
            if pv_pending:
                T.ptx["wgmma.wait_group.sync.aligned"](0)
            for nd in T.unroll(NDV):
                for e in T.unroll(4):
                    o_acc[nd * 4 + e] = o_acc[nd * 4 + e] * m_run[e // 2]
        for r in T.unroll(2):
            m_run[r] = red[r]
        # ---- P (16-bit or e4m3, in registers): the A fragments of P·V
        to_p(p_frag, s_acc, p16)

    @T.macro
    def pv_product(slot, o_acc, p_frag, sbase, kb):
        """O += P V of the V tile in ``slot``: one wgmma group, waited for."""
        T.ptx["wgmma.fence.sync.aligned"]()
        for kk in T.unroll(KK):
            T.ptx[wg_o](
                *[o_acc[i] for i in range(NOA)],
                p_frag[kk, 0], p_frag[kk, 1], p_frag[kk, 2], p_frag[kk, 3],
                v_desc(sbase, slot, kk),
                kb >= 0, 1, 1, *TRANS_O)
        T.ptx["wgmma.commit_group.sync.aligned"]()
        T.ptx["wgmma.wait_group.sync.aligned"](0)

    @T.prim_func(check_well_formed=False)
    def main(q: T.Buffer((B, H, S, D), QK_DT), k: T.Buffer((B, KVH, TK, D), QK_DT),
             v: T.Buffer(V_SHAPE, V_DT), out: T.Buffer((B, H, S, DV), dtype),
             lse: T.Buffer((B, H, S), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for qb_rev in T.thread_binding(NQB, thread="blockIdx.x" if QB_FAST else "blockIdx.y"):
            for bh in T.thread_binding(B * H, thread="blockIdx.y" if QB_FAST else "blockIdx.x"):
                for tx in T.thread_binding(NT, thread="threadIdx.x"):
                    smem = T.decl_buffer((SMEM_ELEMS,), dtype, scope="shared.dyn")
                    p_frag = T.decl_buffer((KK, 4), "uint32", scope="local")
                    s_acc = T.decl_buffer((NSA,), "float32", scope="local")
                    o_acc = T.decl_buffer((NOA,), "float32", scope="local")
                    m_run = T.decl_buffer((2,), "float32", scope="local")
                    l_run = T.decl_buffer((2,), "float32", scope="local")
                    m_use = T.decl_buffer((2,), "float32", scope="local")
                    red = T.decl_buffer((2,), "float32", scope="local")
                    saddr = T.decl_buffer((1,), "uint64", scope="local")
                    # table mode: [0, count) the non-empty key blocks (kb * 2 + full), [NKB] the count
                    # (inside smem's allocation, past the tiles and the alignment slack: TVM's merge of
                    # dynamic shared buffers would alias a second one with the tiles it sees only
                    # through address_of)
                    kv_list = T.decl_buffer((NKB + 1,), "int32", data=smem.data, elem_offset=LIST_BASE // 2,
                                            scope="shared.dyn")
                    cnt = T.decl_buffer((1,), "int32", scope="local")
                    tvs = T.decl_buffer((MAP_BATCH,), "int32", scope="local")     # tile-map entries (table mode)
                    # list entries (table mode); with ROW_LIMITS [2:7] the block's flag, the rows' key limits
                    ent = T.decl_buffer((7 if ROW_LIMITS else 2,), "int32", scope="local")
                    row_fold = T.decl_buffer((2,), "float32", scope="local")   # fp8 dequantization per row
                    p16 = T.decl_buffer((2,), "uint16", scope="local")         # fp8 P, two pairs
                    T.ptx["cvta.to.shared.u64"](saddr[0], T.address_of(smem[0]))
                    # align the tiles to 1024 bytes (the 128-byte swizzle's period)
                    pad = T.Cast("int32", (U(ALIGN_BYTES) - (saddr[0] & U(ALIGN_BYTES - 1))) & U(ALIGN_BYTES - 1))
                    sbase = saddr[0] + T.Cast(u64, pad)
                    pe = pad // 2                          # aligned base, in elements
                    if LAUNCH:     # this block's tile: entry blockIdx.y * gridDim.x + blockIdx.x of the order
                        if QB_FAST:
                            code = TILE_MAP[(bh * NQB + qb_rev) // BHN, NKB + (bh * NQB + qb_rev) % BHN]
                        else:
                            code = TILE_MAP[qb_rev, NKB + bh]
                        b = code % BHN // H
                        h = code % BHN % H
                        qb = code // BHN
                    else:
                        b = bh // H
                        h = bh % H
                        qb = NQB - 1 - qb_rev
                    hk = h // G
                    q0 = qb * BQ
                    wg = tx // 128
                    warp = tx // 32
                    lane = tx % 32
                    r0 = q0 + warp * 16                    # first query row of this warp
                    # ---- prologue: Q tile (then the key-block list), then the first key blocks
                    load_q(0, q0, smem, q, pe, tx, b, h)
                    # (the tile-map row is read while the Q tile is in flight)
                    if USE_TABLE:      # the key-block list of this query block
                        row_list(qb, cnt, tvs, kv_list, warp, lane)
                    load_row_limits(ent, qb, warp, lane)
                    if QUANT:
                        set_row_fold(row_fold, b, h, hk, r0, lane)
                    kb_lo = block_lo(q0)
                    kb_hi = block_hi(q0, cnt)
                    for st in T.unroll(AHEAD):
                        if kb_lo + st < kb_hi:
                            if USE_TABLE:
                                ent[1] = kv_list[kb_lo + st]
                            load_kv(block_at(ent, 1, kb_lo + st), st, smem, k, v, pe, tx, b, hk)
                        T.ptx["cp.async.commit_group"]()
                    # ---- running state
                    for r in T.unroll(2):
                        m_run[r] = NEG_INF
                        l_run[r] = T.float32(0)
                    for e in T.unroll(NOA):
                        o_acc[e] = T.float32(0)
                    # ---- the key loop
                    for kb in T.serial(kb_lo, kb_hi):
                        T.ptx["cp.async.wait_group"](AHEAD - 1)
                        T.ptx["fence.proxy.async.shared::cta"]()
                        T.tvm_storage_sync("shared")
                        if USE_TABLE:
                            ent[0] = kv_list[kb]
                        # prefetch key block kb + AHEAD into the slot of block kb + AHEAD - NS, whose
                        # products every warpgroup waited for before the barrier
                        if kb + AHEAD < kb_hi:
                            if USE_TABLE:
                                ent[1] = kv_list[kb + AHEAD]
                            load_kv(block_at(ent, 1, kb + AHEAD), (kb - kb_lo + AHEAD) % NS, smem, k, v, pe, tx, b, hk)
                        T.ptx["cp.async.commit_group"]()
                        # ---- S = Q Kᵀ (one wgmma group: D/16 k steps)
                        qk_product(0, (kb - kb_lo) % NS, s_acc, sbase, wg)
                        if OVERLAP:
                            # O += P V of the previous block runs under this block's softmax
                            if kb > kb_lo:
                                for kk in T.unroll(KK):
                                    T.ptx[wg_o](
                                        *[o_acc[i] for i in range(NOA)],
                                        p_frag[kk, 0], p_frag[kk, 1], p_frag[kk, 2], p_frag[kk, 3],
                                        v_desc(sbase, (kb - 1 - kb_lo) % NS, kk),
                                        kb >= 0, 1, 1, *TRANS_O)
                                T.ptx["wgmma.commit_group.sync.aligned"]()
                                T.ptx["wgmma.wait_group.sync.aligned"](1)
                            else:
                                T.ptx["wgmma.wait_group.sync.aligned"](0)
                        else:
                            T.ptx["wgmma.wait_group.sync.aligned"](0)
                        softmax_p(block_at(ent, 0, kb), tile_is_full(r0, block_at(ent, 0, kb), ent), kb > kb_lo,
                                  s_acc, o_acc, p_frag, p16, red, m_run, m_use, l_run, row_fold, b, h, r0, lane,
                                  ent)
                        # ---- O += P V (one wgmma group: block_k/16 k steps)
                        if not OVERLAP:
                            pv_product((kb - kb_lo) % NS, o_acc, p_frag, sbase, kb)
                    if OVERLAP:
                        # P V of the last key block
                        if kb_hi > kb_lo:
                            T.ptx["wgmma.fence.sync.aligned"]()
                            for kk in T.unroll(KK):
                                T.ptx[wg_o](
                                    *[o_acc[i] for i in range(NOA)],
                                    p_frag[kk, 0], p_frag[kk, 1], p_frag[kk, 2], p_frag[kk, 3],
                                    v_desc(sbase, (kb_hi - 1 - kb_lo) % NS, kk),
                                    kb_hi >= 0, 1, 1, *TRANS_O)
                            T.ptx["wgmma.commit_group.sync.aligned"]()
                            T.ptx["wgmma.wait_group.sync.aligned"](0)
                    # ---- epilogue
                    T.ptx["cp.async.wait_group"](0)
                    T.tvm_storage_sync("shared")
                    for r in T.unroll(2):
                        l_run[r] = l_run[r] + T.cuda.__shfl_xor_sync(FULL_MASK, l_run[r], 1, 32)
                        l_run[r] = l_run[r] + T.cuda.__shfl_xor_sync(FULL_MASK, l_run[r], 2, 32)
                        red[r] = T.Select(l_run[r] > T.float32(0), T.float32(1) / l_run[r], T.float32(0))
                        if PV8:
                            red[r] = red[r] * scale_at(2, b, hk, 0)
                    for hf in T.unroll(2):
                        if both(lane % 4 == 0, r0 + hf * 8 + lane // 4 < S):
                            lse[b, h, r0 + hf * 8 + lane // 4] = T.Select(
                                l_run[hf] > T.float32(0),
                                (m_run[hf] + T.log2(l_run[hf]) - T.float32(SHIFT)) * T.float32(_LN2),
                                NEG_INF)
                    # (the output tile needs no alignment: it is staged from the unaligned base)
                    store_out(0, q0, smem, out, o_acc, red, tx, warp, lane, b, h)

    # ------------------------------------------------------------------ chained query blocks
    # query_blocks = QC > 1: thread block g runs the query blocks g QC .. g QC + QC - 1 (in the
    # launch's heavy-first order) as ONE stream of key tiles.  The cp.async pipeline prefetches
    # across the boundary: the last tile of block i loads the first K/V tile of block i + 1 and
    # its Q tile (into the other of two Q buffers), and block i's write-out runs while they are
    # in flight -- the start and the write-out of a query block no longer stall the SM (at low
    # density they cost as much as two tiles).  Needs num_stages 2 (one tile ahead, both products
    # waited for within the step).  A query block without key blocks takes one tile, masked
    # entirely (the table and the band are exact), so it still writes zeros and lse = -inf.
    def chained_kernel():
        def item_q0(g_rev, item):
            return (NQB - 1 - (g_rev * QC + item)) * BQ

        def item_count(g_rev, item, kv_list):
            """Key tiles of chained block ``item`` (>= 1), a local-register-safe expression."""
            if USE_TABLE:
                return tirx.max(kv_list[item * LS + NKB], 1)
            q0 = item_q0(g_rev, item)
            return tirx.max(block_hi(q0) - block_lo(q0), 1)

        def item_entry(g_rev, item, pos, kv_list):
            """(key block << 1) | full of tile ``pos`` of chained block ``item`` (0: key block 0,
            masked, for a block without key blocks)."""
            if USE_TABLE:
                return tirx.if_then_else(kv_list[item * LS + NKB] > 0, kv_list[item * LS + pos], 0)
            q0 = item_q0(g_rev, item)
            return tirx.if_then_else(block_hi(q0) > block_lo(q0), (block_lo(q0) + pos) * 2, 0)

        def entry_full(entv, r0):
            if USE_TABLE:
                return ix.entry_is_full(entv, tirx.shift_right(entv, 1))
            return tile_is_full(r0, tirx.shift_right(entv, 1))

        @T.prim_func(check_well_formed=False)
        def main_chain(q: T.Buffer((B, H, S, D), QK_DT), k: T.Buffer((B, KVH, TK, D), QK_DT),
                       v: T.Buffer(V_SHAPE, V_DT), out: T.Buffer((B, H, S, DV), dtype),
                       lse: T.Buffer((B, H, S), "float32")):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            for g_rev in T.thread_binding(NQG, thread="blockIdx.x" if QB_FAST else "blockIdx.y"):
                for bh in T.thread_binding(B * H, thread="blockIdx.y" if QB_FAST else "blockIdx.x"):
                    for tx in T.thread_binding(NT, thread="threadIdx.x"):
                        smem = T.decl_buffer((SMEM_ELEMS,), dtype, scope="shared.dyn")
                        p_frag = T.decl_buffer((KK, 4), "uint32", scope="local")
                        s_acc = T.decl_buffer((NSA,), "float32", scope="local")
                        o_acc = T.decl_buffer((NOA,), "float32", scope="local")
                        m_run = T.decl_buffer((2,), "float32", scope="local")
                        l_run = T.decl_buffer((2,), "float32", scope="local")
                        m_use = T.decl_buffer((2,), "float32", scope="local")
                        red = T.decl_buffer((2,), "float32", scope="local")
                        saddr = T.decl_buffer((1,), "uint64", scope="local")
                        # table mode: one list per chained block, LS ints apart (entries, then the count)
                        kv_list = T.decl_buffer((LS * QC,), "int32", data=smem.data, elem_offset=LIST_BASE // 2,
                                                scope="shared.dyn")
                        cnt = T.decl_buffer((1,), "int32", scope="local")
                        tvs = T.decl_buffer((MAP_BATCH,), "int32", scope="local")
                        ent = T.decl_buffer((2,), "int32", scope="local")
                        # the stream position: [0] block, [1] tile within it, [2] its tile count, [3] all tiles
                        cur = T.decl_buffer((4,), "int32", scope="local")
                        nxt = T.decl_buffer((2,), "int32", scope="local")          # the prefetched tile's block, tile
                        row_fold = T.decl_buffer((2,), "float32", scope="local")   # (fp8 only; not chained)
                        p16 = T.decl_buffer((2,), "uint16", scope="local")
                        T.ptx["cvta.to.shared.u64"](saddr[0], T.address_of(smem[0]))
                        pad = T.Cast("int32", (U(ALIGN_BYTES) - (saddr[0] & U(ALIGN_BYTES - 1))) & U(ALIGN_BYTES - 1))
                        sbase = saddr[0] + T.Cast(u64, pad)
                        pe = pad // 2
                        b = bh // H
                        h = bh % H
                        hk = h // G
                        wg = tx // 128
                        warp = tx // 32
                        lane = tx % 32
                        n_items = T.min(QC, NQB - g_rev * QC)
                        # ---- prologue: Q of the first block; the lists of all blocks (warp w: block w, w + NW, ..)
                        load_q(0, item_q0(g_rev, 0), smem, q, pe, tx, b, h)
                        if USE_TABLE:
                            for wi in T.serial((QC + NW - 1) // NW):
                                if wi * NW + warp < n_items:
                                    compact_row(NQB - 1 - (g_rev * QC + wi * NW + warp), (wi * NW + warp) * LS,
                                                cnt, tvs, kv_list, lane)
                            T.tvm_storage_sync("shared")
                        cur[3] = 0
                        for it in T.serial(n_items):
                            cur[3] = cur[3] + item_count(g_rev, it, kv_list)
                        cur[0] = 0
                        cur[1] = 0
                        cur[2] = item_count(g_rev, 0, kv_list)
                        ent[1] = item_entry(g_rev, 0, 0, kv_list)
                        load_kv(tirx.shift_right(ent[1], 1), 0, smem, k, v, pe, tx, b, hk)
                        T.ptx["cp.async.commit_group"]()
                        for r in T.unroll(2):
                            m_run[r] = NEG_INF
                            l_run[r] = T.float32(0)
                        for e in T.unroll(NOA):
                            o_acc[e] = T.float32(0)
                        # ---- the tile stream
                        for t in T.serial(cur[3]):
                            T.ptx["cp.async.wait_group"](0)
                            T.ptx["fence.proxy.async.shared::cta"]()
                            T.tvm_storage_sync("shared")
                            ent[0] = item_entry(g_rev, cur[0], cur[1], kv_list)
                            # prefetch tile t + 1 (and, when it starts the next block, that block's Q)
                            if t + 1 < cur[3]:
                                if cur[1] + 1 < cur[2]:
                                    nxt[0] = cur[0]
                                    nxt[1] = cur[1] + 1
                                else:
                                    nxt[0] = cur[0] + 1
                                    nxt[1] = 0
                                    load_q((cur[0] + 1) % 2, item_q0(g_rev, cur[0] + 1), smem, q, pe, tx, b, h)
                                ent[1] = item_entry(g_rev, nxt[0], nxt[1], kv_list)
                                load_kv(tirx.shift_right(ent[1], 1), (t + 1) % 2, smem, k, v, pe, tx, b, hk)
                            T.ptx["cp.async.commit_group"]()
                            qk_product(cur[0] % 2, t % 2, s_acc, sbase, wg)
                            T.ptx["wgmma.wait_group.sync.aligned"](0)
                            softmax_p(tirx.shift_right(ent[0], 1),
                                      entry_full(ent[0], item_q0(g_rev, cur[0]) + warp * 16), t > 0,
                                      s_acc, o_acc, p_frag, p16, red, m_run, m_use, l_run, row_fold, b, h,
                                      item_q0(g_rev, cur[0]) + warp * 16, lane, ent)
                            pv_product(t % 2, o_acc, p_frag, sbase, t)
                            if cur[1] + 1 == cur[2]:
                                # ---- write-out of this block (the next block's loads are in flight)
                                for r in T.unroll(2):
                                    l_run[r] = l_run[r] + T.cuda.__shfl_xor_sync(FULL_MASK, l_run[r], 1, 32)
                                    l_run[r] = l_run[r] + T.cuda.__shfl_xor_sync(FULL_MASK, l_run[r], 2, 32)
                                    red[r] = T.Select(l_run[r] > T.float32(0), T.float32(1) / l_run[r], T.float32(0))
                                for hf in T.unroll(2):
                                    if both(lane % 4 == 0, item_q0(g_rev, cur[0]) + warp * 16 + hf * 8 + lane // 4 < S):
                                        lse[b, h, item_q0(g_rev, cur[0]) + warp * 16 + hf * 8 + lane // 4] = T.Select(
                                            l_run[hf] > T.float32(0),
                                            (m_run[hf] + T.log2(l_run[hf])) * T.float32(_LN2), NEG_INF)
                                # staged at a static offset (so the O store vectorizes), after every
                                # warpgroup's last read of Q: the slack below Q tile 0 and tile 0 itself, or
                                # tile 1 and the 1 KB above it -- never the next block's Q tile
                                T.tvm_storage_sync("shared")
                                if cur[0] % 2 == 0:
                                    store_out(0, item_q0(g_rev, cur[0]), smem, out, o_acc, red, tx, warp, lane, b, h)
                                else:
                                    store_out(Q_ELEMS + ALIGN_BYTES // 2, item_q0(g_rev, cur[0]), smem, out, o_acc,
                                              red, tx, warp, lane, b, h)
                                for r in T.unroll(2):
                                    m_run[r] = NEG_INF
                                    l_run[r] = T.float32(0)
                                for e in T.unroll(NOA):
                                    o_acc[e] = T.float32(0)
                                cur[0] = cur[0] + 1
                                cur[1] = 0
                                if cur[0] < n_items:
                                    cur[2] = item_count(g_rev, cur[0], kv_list)
                            else:
                                cur[1] = cur[1] + 1
                        T.ptx["cp.async.wait_group"](0)
        return main_chain

    if CHAIN:
        main = chained_kernel()
    extra = ([TILE_MAP] if USE_TABLE else []) + SCALE_BUFFERS + CAPTURE_BUFFERS
    if extra:
        # in TVM 0.27 a buffer is itself a (buffer-typed) Var and can be a parameter
        main = tirx.PrimFunc(list(main.params) + extra, main.body, main.ret_type, main.attrs)
    tvm.tirx.analysis.verify_well_formed(main)
    return tvm.IRModule({"main": main})
