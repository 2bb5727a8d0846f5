"""Hopper (sm_90a) prefill kernel: the two matrix products on ``wgmma.mma_async``.

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
  thread), ``num_stages`` slots of K and of V; K is loaded ``num_stages - 1`` key blocks
  ahead and V one block later (P·V of block j runs one step after Q·K_jᵀ);
  ``fence.proxy.async.shared::cta`` before the barrier makes them visible to the tensor
  cores (the async proxy).  Where the key length is a multiple of block_k, K and V copies
  need no clamp and no zero fill, and a thread's copies of a tile share one address pair
  (``[base+imm]`` operands): ~200 fewer instructions in the key loop, 4-9 % faster on H200.
* S = Q Kᵀ: ``wgmma m64n{block_k}k16`` with both operands in shared memory (K-major
  descriptors; the k16 step moves the start address 32 bytes inside the swizzle atom).
* O += P V: ``wgmma m64n{head_dim_v}k16`` with P from registers (the A fragment layout
  is ``mma.sync``'s, so P is the converted S accumulator as it stands) and V from shared
  memory, read transposed (MN-major descriptor: leading byte offset = one 64-column
  block, stride byte offset = 8 key rows).
* ping-pong between the warpgroups (FlashAttention-3's inter-warpgroup overlap, on the
  one block-wide barrier a key block): an even warpgroup issues S_j = Q K_jᵀ and
  O += P_{j-1} V_{j-1} and then runs the softmax of S_j (starting as soon as S_j is done,
  under its own P·V); an odd warpgroup first runs the softmax of S_{j-1}, then issues the
  same two products.  So a warpgroup's softmax runs while the other's products hold the
  tensor cores.  The first and the last step are peeled off the loop, and the products are
  issued outside the branches on the warpgroup, so that ptxas never serialises the wgmma.
* table mode (``use_block_table``: masks that are no single band -- prefix-LM, strided,
  local + global, chunked, document ids): the tile map ``int32 [NQB, NKB]`` (0 empty, 1
  partial, 2 full; prune-sparsity's proof, or per call from captured tensors) is the argument
  after ``lse``, the captured tensors follow it.  Warp 0 compacts its query block's row into
  a shared list of the non-empty key blocks (``compact_row_macro``, shared with
  ``_cuda_wgmma_sparse``) while Q is in flight; the key loop walks list positions, each
  step reading the key blocks of its loads and of its softmax from the list, and full tiles
  skip the element mask.  (Before: the sparse kernel's in-order schedule; ping-pong measured
  4-7 % faster on document masks at 128 x 128, benchmarks/gpu/RESULTS.md.)
* a band's partial tiles (no tile map) set each row's first and last kept key once a tile and
  compare each score's key offset (an immediate) with the side(s) that cut the warp's rows;
  captured tensors whose index is proven in range are read unclamped where the blocks
  divide the lengths (document ids: loads at constant offsets).
* the write-out (two warpgroups and more): each warp stages its 16 rows of O in padded rows of
  shared memory and copies them out with ``cp.async.bulk``, one row a lane, no block barrier.
* fp8 (the quantize pass, ``spec.quant_dtype`` e4m3 or e5m2): q and k arrive as fp8 with f32
  scales (arguments after the tile map, before the captured tensors).  The fp8 tiles are the
  16-bit scheme's with rows of ``head_dim`` bytes, so the descriptors, swizzle and loads are
  unchanged; S = Q Kᵀ is ``wgmma m64n{block_k}k32.f32.e4m3.e4m3`` (32 bytes a k step), and the
  dequantization is fused (q scale per row and k scale per head folded into the exponent's
  factor ``row_fold``; a per-key k scale multiplies the scores).  With ``quant_pv`` v is fp8
  too: O += P V is ``wgmma m64n{d_v}k32`` with P converted to e4m3 in registers (times 2^8,
  ``P_SHIFT``; no lazy rescaling then), V read K-major from the host prologue's transposed,
  key-permuted layout (``fp8_v_layout``: the S accumulator fragment is the fp8 A fragment).
  Before, fp8 ran on ``_cuda_wgmma_sparse``'s in-order schedule: ping-pong is 1.13-1.19x faster
  on Q·Kᵀ and 1.07-1.16x on Q·Kᵀ + P·V (H200, benchmarks/gpu/RESULTS.md).
* the persistent, warp-specialised variant (``CudaConfig.persistent`` = N thread blocks; 16-bit
  inputs, 8 consumer warps, 2 stages): FlashAttention-3's structure on the same steps.  A thread
  block has three warpgroups and walks the work tiles (query block, batch x head) round robin,
  heavy-first inside a head.  Warpgroup 0, the producer, drops to 40 registers: lane 0 of its
  warp 0 issues every Q, K and V tile with the bulk tensor copy engine (TMA; tensor maps with the
  128-byte swizzle, encoded on the host per call, passed as ``__grid_constant__`` parameters),
  each completing on an mbarrier; in table mode its warp 1 compacts each tile's key-block list
  a tile ahead (``st.shared``/``ld.shared``, which TVM's barrier insertion does not see; the
  list's mbarrier orders it).  Warpgroups 1 and 2 (232 registers) run ``step``'s ping-pong
  without loads, in step on a named barrier of their 256 threads, returning K/V slots by
  mbarrier arrivals.  Q has two buffers and K three slots where shared memory holds them (V
  two), all counted across tiles, so a tile's Q and first K/V land under the previous tile's
  last steps and write-out; each warp writes its 16 rows of O into its rows of the Q buffer and
  stores them by TMA.  H200, S=16k: window 1024 0.298 ms vs 0.312 for the one-block-a-tile
  kernel (density bar 1.19 vs 1.24), window 2048 0.521 vs 0.535; tile maps 2-20 % slower,
  causal 30 % (the static round robin), dense the same (benchmarks/gpu/RESULTS.md, "The
  persistent kernel").
"""

from __future__ import annotations

import numpy as np

from attncc.errors import ConfigError, ShapeError
from attncc.runtime._layouts import (padded_kv_len, rank_rows, row_limit_columns, row_order, schedule_columns,
                                     schedule_length, tile_schedule)
from attncc.targets.spec import FlashKernelSpec
from attncc.targets import _gpu_flash as _gpu
# target-neutral pieces of table mode and fp8 dequantization, shared with rocm.py (_gpu_flash.py)
from attncc.targets._gpu_flash import row_list_macro, scale_reader, use_block_table  # noqa: F401

_PTX_TYPE = {"float16": "f16", "bfloat16": "bf16"}
_LN2 = 0.6931471805599453
ALIGN_BYTES = 1024
LAZY_TAU = 8.0          # lazy rescaling's threshold, log2 units (P <= 256)
# switches of the schedule for experiment builds ("split", "pingpong", "qb_fast"; a build
# sets them before lower(): benchmarks/gpu/RESULTS.md, run 4); empty = the measured defaults
_OPTIONS: dict = {}


FP8_PTX = {"float8_e4m3fn": "e4m3", "float8_e5m2": "e5m2"}
P_SHIFT = 8.0                     # fp8 P is 2^8 * exp2(s - m): in (2^-9, 2^8], never subnormal for kept keys
_LOG2E = 1.4426950408889634


def persistent(config) -> int:
    """Thread blocks of the persistent, warp-specialised kernel (``CudaConfig.persistent``; 0: the
    one-block-a-tile kernel)."""
    return int(getattr(config, "persistent", 0) or 0)


WS_ORDERS = ("cost", "head", "sorted", "scheduled")


def ws_tile_order(order, ntiles, grid, bhn, nqb, select=lambda c, x, y: x if c else y, const=int, qb_at=None,
                  sched_at=None):
    """The persistent kernel's static tile order: ``(tiles_of, tile_of, tile_bh, tile_qb)``, thread
    block ``cta`` running tiles ``tile_of(cta, n)`` for ``n < tiles_of(cta)``, tile ``t`` being
    query block ``tile_qb(t)`` of batch x head ``tile_bh(t)``.  Python ints by default; the kernel
    passes TIR's Select to build the same arithmetic as expressions.

    "cost": tile t is query block nqb - 1 - t // bhn of head t % bhn, so the tiles
    run heaviest-first across all heads where cost grows with the query block (causal), and the
    thread blocks take them in a snake (odd rounds walk the blocks backwards), so
    that each block's sum of costs comes out near the mean.  "head": head-major round robin (tile
    cta + n grid, the query blocks of one head in a row), which on causal hands one block only
    heavy tiles and another only light ones: 1.57x the mean cost on the busiest block at 128 query
    blocks, 16 heads, 132 blocks, against 1.00x for "cost" (tests/test_cuda_persistent.py).
    "sorted": "cost"'s walk over the query blocks ranked by their actual cost, rank r being query
    block ``qb_at(r)`` (the kernel reads it from the tile map's extra column,
    ``attncc.runtime._layouts.with_row_order``; table mode only): document masks and chunks,
    whose cost is not monotone in the query block, balance as causal does in "cost".
    "scheduled": no fixed walk; block ``cta`` runs the tiles the host's ``_layouts.tile_schedule``
    dealt it (the table's schedule columns, entry p read by ``sched_at(p)``: grid + 1 offsets, then
    tile codes ``qb * bhn + bh``; table mode only).
    ``ws_default_order`` picks one per kernel."""
    if order not in WS_ORDERS:
        raise ValueError(f"ws_order must be one of {', '.join(map(repr, WS_ORDERS))}, got {order!r}")
    if order == "sorted" and qb_at is None:
        raise ValueError("the 'sorted' tile order needs the query block of each rank (qb_at)")
    if order == "scheduled":
        if sched_at is None:
            raise ValueError("the 'scheduled' tile order needs the table's schedule (sched_at)")
        return (lambda cta: sched_at(cta + 1) - sched_at(cta), lambda cta, n: sched_at(sched_at(cta) + n),
                lambda t: t % bhn, lambda t: t // bhn)
    snake = order != "head"

    def tiles_of(cta):
        if not snake:
            return (ntiles - cta + grid - 1) // grid
        full, rem = ntiles // grid, ntiles % grid
        if rem == 0:
            return const(full)
        last = cta if full % 2 == 0 else grid - 1 - cta
        return full + select(last < rem, 1, 0)

    def tile_of(cta, n):
        if not snake:
            return cta + n * grid
        return n * grid + select(n % 2 == 0, cta, grid - 1 - cta)

    def tile_bh(t):
        return t % bhn if snake else t // nqb

    def tile_qb(t):
        if order == "sorted":
            return qb_at(t // bhn)
        return nqb - 1 - (t // bhn if snake else t % nqb)

    return tiles_of, tile_of, tile_bh, tile_qb


def ws_busiest_block(order, row_cost, bhn, grid, ranks=None) -> float:
    """The busiest thread block's cost over the mean under ``order`` (ws_tile_order's arithmetic,
    vectorised), a tile of query block qb costing ``row_cost[qb]`` key blocks plus one for its Q
    load and write-out; "sorted" walks ``ranks`` (the table's column; default: by cost alone)."""
    if order not in WS_ORDERS:
        raise ValueError(f"ws_order must be one of {', '.join(map(repr, WS_ORDERS))}, got {order!r}")
    row_cost = np.asarray(row_cost, dtype=np.float64)
    nqb = len(row_cost)
    t = np.arange(nqb * bhn)
    grid = min(grid, len(t))
    if order == "scheduled":      # the host's assignment over the table's order column
        f = tile_schedule(row_cost, rank_rows(row_cost) if ranks is None else ranks, bhn, grid)
        owner = np.repeat(np.arange(grid), np.diff(f[:grid + 1]))
        loads = np.bincount(owner, weights=row_cost[f[grid + 1:] // bhn] + 1.0, minlength=grid)
        return float(loads.max() / loads.mean())
    n, j = np.divmod(t, grid)
    if order != "head":
        cta = np.where(n % 2 == 0, j, grid - 1 - j)
        qb = nqb - 1 - t // bhn
        if order == "sorted":     # with_row_order's ranking (ties: the later block first)
            qb = (rank_rows(row_cost) if ranks is None else np.asarray(ranks))[t // bhn]
    else:
        cta, qb = j, nqb - 1 - t % nqb
    loads = np.bincount(cta, weights=row_cost[qb] + 1.0, minlength=grid)
    return float(loads.max() / loads.mean())


def ws_default_order(spec: FlashKernelSpec, config) -> str:
    """The tile order the persistent kernel takes unless ``_OPTIONS["ws_order"]`` says: with a
    compile-time tile map, whichever of "cost" and "head" the map's per-query-block key blocks
    balance better ("head", which keeps a head's tiles together, unless "cost" is 2 % better):
    causal takes "cost" (busiest block 1.00x the mean against 1.56x at S=16k, 16 heads), chunks
    of 2048 keys "head" (1.19x against 1.59x: a chunk's cost rises and falls 8 times over the
    query blocks), window 1024 "cost" (1.01x against 1.06x: its first blocks are lighter;
    measured equal), dense "head".  Table mode (a mask that is no band: documents, chunks,
    prefix-LM, ...) reads the query blocks' order from the table's extra column
    (``ws_row_order_column``; ranked by cost, or last first where the ranking would scatter
    documents: ``_layouts.row_order``): a per-call map takes "sorted" (that column), a
    compile-time map "sorted" or "head" by the same 2 % rule (chunks of 2048: "head").

    Since the fourteenth pass the table also carries the host's assignment of the tiles to the
    thread blocks (``ws_schedule``), and table mode takes "scheduled": the greedy deal over the
    order column balances chunks and causal documents (busiest block 1.19x and 1.10x the mean
    in the best fixed walk, ~1.02x and ~1.01x dealt) without scattering their key blocks."""
    if ws_schedule(spec, config) is not None:
        return "scheduled"
    rows = ws_row_cost(spec, config)
    if rows is None:
        return "head"
    grid, bhn = persistent(config), spec.batch * spec.q_heads
    ranks = ws_static_ranks(spec, config)
    first = "cost" if ranks is None else "sorted"
    best, head = (ws_busiest_block(o, rows, bhn, grid, ranks) for o in (first, "head"))
    return first if best < 0.98 * head else "head"


def ws_static_ranks(spec: FlashKernelSpec, config):
    """The table's order column of a compile-time tile map (``_layouts.row_order``), or None: no
    column (not the persistent kernel in table mode) or a map per call."""
    if not ws_row_order_column(spec, config) or spec.runtime_tile_map is not None:
        return None
    return row_order(spec.tile_map(config.block_q, config.block_k), ws_row_window(spec, config))


def ws_row_window(spec: FlashKernelSpec, config) -> int:
    """Query blocks a persistent kernel runs at once: its thread blocks over batch x heads."""
    nqb = -(-spec.q_len // config.block_q)
    bhn = spec.batch * spec.q_heads
    return max(1, -(-min(persistent(config), nqb * bhn) // bhn))


def ws_schedule(spec: FlashKernelSpec, config):
    """(thread blocks, batch x heads) of the persistent kernel's schedule in its table
    (``_layouts.tile_schedule`` over the order column, ``schedule_columns`` columns after it), or
    None: no order column.  Like the column, a function of (spec, config) alone."""
    if not ws_row_order_column(spec, config):
        return None
    nqb = -(-spec.q_len // config.block_q)
    bhn = spec.batch * spec.q_heads
    return min(persistent(config), nqb * bhn), bhn


def ws_schedule_columns(spec: FlashKernelSpec, config) -> int:
    """The table's columns holding the schedule (0 without one)."""
    sched = ws_schedule(spec, config)
    return 0 if sched is None else schedule_columns(-(-spec.q_len // config.block_q), sched[1], sched[0])


def ws_row_order_column(spec: FlashKernelSpec, config) -> bool:
    """Whether the kernel's tile map has the extra column NKB, the query blocks in the order the
    kernel walks them (``attncc.runtime._layouts.with_row_order``): the persistent kernel in
    table mode.  A
    function of (spec, config) alone -- never of ``_OPTIONS`` -- so that whoever fills the table
    (cuda.block_tables, the export runtime from the manifest) agrees with the kernel."""
    return bool(persistent(config)) and use_block_table(spec)


def row_limits_on(spec: FlashKernelSpec) -> bool:
    """Whether this module's kernel takes the rows' key limits in its table (``RowRuns``: a
    document mask and a band, per call): the partial tiles of a query block whose rows each keep
    one run of keys compare each score with its row's first and last key, as a band's do, instead
    of reading the ids (``_layouts.with_row_limits``)."""
    return (spec.row_runs is not None and use_block_table(spec) and spec.runtime_tile_map is not None
            and _OPTIONS.get("row_limits", True))


def band_part_on(spec: FlashKernelSpec) -> bool:
    """Whether the wgmma kernels mask the partial tiles of a band or'ed with affine comparisons
    (``spec.band_part``) by the band alone where the rest is false on the tile
    (``_OPTIONS["band_part"]``, default on)."""
    return spec.band_part is not None and _OPTIONS.get("band_part", True)


def table_columns(spec: FlashKernelSpec, config) -> int:
    """Columns of the kernel's table: the tile map's, the row order's and the schedule's
    (persistent), the rows' key limits (row_limits_on)."""
    nkb = -(-spec.kv_len // config.block_k)
    return (nkb + int(ws_row_order_column(spec, config)) + ws_schedule_columns(spec, config)
            + (row_limit_columns(config.block_q) if row_limits_on(spec) else 0))


def ws_row_cost(spec: FlashKernelSpec, config):
    """Each query block's non-empty key blocks from the compile-time tile map (None without one,
    or when the map is computed per call)."""
    if spec.tile_map is None or spec.runtime_tile_map is not None:
        return None
    return (np.asarray(spec.tile_map(config.block_q, config.block_k)) != 0).sum(axis=1)


def ws_k_slots(spec: FlashKernelSpec, config, smem_limit: int = 227 * 1024) -> int:
    """K slots of the persistent kernel: num_stages, or one more (K loaded two blocks ahead, V one)
    where shared memory holds it beside the two Q buffers."""
    ns = config.num_stages
    if not persistent(config) or not _OPTIONS.get("ws_k3", True):
        return ns
    qk, vb = elem_bytes(spec)
    q_tile = config.block_q * max(spec.head_dim * qk, spec.head_dim_v * 2)
    k_tile, v_tile = config.block_k * spec.head_dim * qk, config.block_k * spec.head_dim_v * vb
    table = 4 * (-(-spec.kv_len // config.block_k) + 1) if use_block_table(spec) else 0
    need = 2 * q_tile + (ns + 1) * k_tile + ns * v_tile + ALIGN_BYTES + 2 * table + 8 * (4 + 4 * (ns + 1))
    return ns + 1 if need <= smem_limit else ns


def elem_bytes(spec: FlashKernelSpec):
    """Bytes per element of q/k and of v in the kernel (fp8: 1, else 2)."""
    qk = 1 if spec.quant_dtype else 2
    return qk, (1 if spec.quant_dtype and spec.quant_pv else 2)


def operand_types(spec: FlashKernelSpec):
    """The operand types of both wgmma kernels: (quant, pv8, qk_dtype, v_dtype, qk_ptx, v_ptx,
    qk_bytes, v_bytes, v_keys) -- fp8 q/k (the quantize pass) and with quant_pv fp8 v, whose
    transposed layout has ``v_keys`` keys (the key length rounded up to 32); else the 16-bit
    dtype throughout."""
    quant = spec.quant_dtype is not None
    pv8 = quant and spec.quant_pv
    qk_dt = spec.quant_dtype if quant else spec.dtype
    v_dt = spec.quant_dtype if pv8 else spec.dtype
    ptx_t = _PTX_TYPE[spec.dtype]
    qb, vb = elem_bytes(spec)
    return (quant, pv8, qk_dt, v_dt, FP8_PTX[qk_dt] if quant else ptx_t, FP8_PTX[v_dt] if pv8 else ptx_t,
            qb, vb, padded_kv_len(spec.kv_len) if pv8 else spec.kv_len)


def shared_memory_bytes(spec: FlashKernelSpec, config) -> int:
    qk, vb = elem_bytes(spec)
    q_tile = config.block_q * max(spec.head_dim * qk, spec.head_dim_v * 2)      # Q, then the O staging
    kv = config.num_stages * config.block_k * (spec.head_dim * qk + spec.head_dim_v * vb)
    table = 4 * (-(-spec.kv_len // config.block_k) + 1) if use_block_table(spec) else 0
    if persistent(config):      # two Q buffers, two key-block lists, maybe a K slot more
        kv += (ws_k_slots(spec, config) - config.num_stages) * config.block_k * spec.head_dim * qk
        return 2 * q_tile + kv + ALIGN_BYTES + 2 * table
    return q_tile + kv + ALIGN_BYTES + table


def check_fp8(spec: FlashKernelSpec, config) -> None:
    """The fp8 rules of both wgmma kernels (q and k fp8; with quant_pv v too, read transposed)."""
    if spec.quant_dtype is None:
        return
    from attncc.errors import DTypeError
    if spec.quant_dtype not in FP8_PTX:
        raise DTypeError(f"cuda target: --quantize {spec.quant_dtype} is not supported by the wgmma kernels "
                         "(they take fp8 e4m3/e5m2; int8 runs on the mma.sync kernel, mma='sync')",
                         variant=spec.name or None)
    if spec.head_dim % 128:
        raise ShapeError(f"cuda target, fp8: head_dim ({spec.head_dim}) must be a multiple of 128 (fp8 rows "
                         "of the 128-byte swizzled Q/K tiles)", variant=spec.name or None)
    if spec.quant_pv:
        if config.block_k % 128:
            _bad(spec, config, "fp8 P·V reads V transposed in rows of block_k bytes: block_k must be 128 or 256")
        if any(int(sh[2]) > 1 for name, sh in spec.scales if name.startswith("v")):
            raise ShapeError("cuda target, fp8 P·V: per-block V scales are not supported (the V scale must be "
                             "per tensor or per head: --quantize-granularity tensor|head)",
                             variant=spec.name or None)


def rescale_o_macro(ndv: int, lazy: bool):
    """The ``rescale_o(o_acc, alpha)`` macro of both wgmma kernels: O *= alpha, row by row (alpha[0]
    and alpha[1]: the thread's two rows; ``ndv`` n8 column groups of O); with lazy rescaling only
    when some alpha != 1 (a row's reference max moved)."""
    from tvm.script import tirx as T

    NDV = ndv
    LAZY = lazy

    @T.macro
    def rescale_o(o_acc, alpha):
        if LAZY:
            if T.Or(alpha[0] != T.float32(1), alpha[1] != T.float32(1)):
                for nd in T.unroll(NDV):
                    for e in T.unroll(4):
                        o_acc[nd * 4 + e] = o_acc[nd * 4 + e] * alpha[e // 2]
        else:
            for nd in T.unroll(NDV):
                for e in T.unroll(4):
                    o_acc[nd * 4 + e] = o_acc[nd * 4 + e] * alpha[e // 2]

    return rescale_o


def compact_row_macro(tile_map, nkb: int, put=None):
    """Table mode's ``compact_row(row, base, cnt, tvs, kv_list, lane)`` macro (both wgmma
    kernels) and the size of its ``tvs`` register buffer.

    One warp turns row ``row`` of the tile map (int32 [NQB, NKB]: 0 empty, 1 partial, 2 full)
    into the list of its non-empty key blocks at ``kv_list[base:]`` (entries key block * 2 +
    full, in key order; ``__ballot_sync`` + ``popc``), their count at ``kv_list[base + NKB]``.
    The row is loaded ``MAP_BATCH`` chunks of 32 at a time, all loads issued before the first
    ballot (one memory latency per batch, not per chunk).  ``put(kv_list, index, value)``: the
    store (a macro; default a buffer store; the persistent kernel's stores are ``st.shared``,
    which TVM's barrier insertion does not see: its list is handed over by mbarriers)."""
    from tvm import tirx
    from tvm.script import tirx as T

    FULL_MASK = tirx.const(0xFFFFFFFF, "uint32")
    NKB = nkb
    TILE_MAP = tile_map
    NKC = -(-NKB // 32)              # warp-sized chunks of a tile-map row
    MAP_BATCH = min(NKC, 8)          # chunks loaded together
    NKC_OUTER = -(-NKC // MAP_BATCH)

    if put is None:
        @T.macro
        def put(kv_list, index, value):
            kv_list[index] = value

    @T.macro
    def compact_row(row, base, cnt, tvs, kv_list, lane):
        cnt[0] = 0
        for c0 in T.serial(NKC_OUTER):
            for c1 in T.unroll(MAP_BATCH):
                tvs[c1] = T.if_then_else((c0 * MAP_BATCH + c1) * 32 + lane < NKB,
                                         TILE_MAP[row, T.min((c0 * MAP_BATCH + c1) * 32 + lane, NKB - 1)], 0)
            for c1 in T.unroll(MAP_BATCH):
                ballot = T.cuda.ballot_sync(FULL_MASK, tvs[c1] != 0)
                if tvs[c1] != 0:
                    put(kv_list, base + cnt[0] + T.popcount(ballot & ((T.shift_left(T.uint32(1), T.Cast("uint32", lane)))
                                                                       - T.uint32(1))),
                        ((c0 * MAP_BATCH + c1) * 32 + lane) * 2 + T.Select(tvs[c1] == 2, 1, 0))
                cnt[0] = cnt[0] + T.popcount(ballot)
        if lane == 0:
            put(kv_list, base + NKB, cnt[0])

    return compact_row, MAP_BATCH


def score_functions(ix, quant: bool, pv8: bool, k_per_key: bool, scale_at, group: int):
    """``(scaled, to_log2, exp_arg, masked)`` of both wgmma kernels: ``_gpu_flash.score_functions``
    (FlashIndexing's score_mod, scale folding and element mask plus the dequantization) with fp8
    P's shift by 2^P_SHIFT where P·V is fp8."""
    return _gpu.score_functions(ix, quant, k_per_key, scale_at, group, p_shift=P_SHIFT if pv8 else None)


def score_mask_macros(nkt: int, bk: int, bq: int, scaled, masked, tile_map=None, col0: int = 0, at: int = 0,
                      band=None, kv_len: int = 0):
    """``(scaled_scores, mask_partial, load_limits)`` of both wgmma kernels' softmax: a full tile's
    scores (score_mod, scale), a partial tile's (and the element mask), and -- with ``tile_map``,
    whose columns from ``col0`` on hold the rows' key limits of a document mask
    (``_layouts.with_row_limits``) -- the limits read once a tile into ``ent[at]`` (the query
    block's flag), ``ent[at + 1 + r]`` and ``ent[at + 3 + r]`` (the first and last key kept by the
    thread's row r).  ``mask_partial`` masks a flagged block's partial tiles by those two limits
    (offsets from the thread's first key, against immediates once unrolled), else by the mask.
    ``band`` (``spec.band_part``: the mask is a band or'ed with affine comparisons; without
    ``tile_map``): a partial tile on whose box -- the warp's 16 rows, the tile's keys -- the other
    comparisons are false everywhere is masked by the band's two compares a score the same way
    (keys below ``kv_len``), any other by the mask."""
    from tvm import tirx
    from tvm.script import tirx as T

    from attncc.targets.spec import rest_holds

    NEG_INF = tirx.const(float("-inf"), "float32")

    def row(r0, lane, e):
        return r0 + lane // 4 + e // 2 * 8

    def key(kb, lane, nt, e):
        return kb * bk + nt * 8 + lane % 4 * 2 + e % 2

    def each_score(fn):
        @T.macro
        def scores(kb, s_acc, r0, lane, b, h, row_fold):
            for nt in T.unroll(nkt):
                for e in T.unroll(4):
                    s_acc[nt * 4 + e] = fn(s_acc[nt * 4 + e], b, h, row(r0, lane, e), key(kb, lane, nt, e),
                                           e // 2, row_fold)
        return scores

    scaled_scores, masked_scores = each_score(scaled), each_score(masked)

    def within(lim, r, c, lo_on):
        hi = c <= lim[2 + r]
        return T.And(lim[r] <= c, hi) if lo_on else hi

    @T.macro
    def keep_within(kb, s_acc, r0, lane, b, h, row_fold, lim, lo_on):
        # a score is kept where its key offset c from the thread's first key (an immediate once
        # unrolled) lies in [lim[r], lim[2 + r]] of its row r (the lower side only if lo_on)
        for nt in T.unroll(nkt):
            for e in T.unroll(4):
                s_acc[nt * 4 + e] = T.Select(
                    within(lim, e // 2, nt * 8 + e % 2, lo_on),
                    scaled(s_acc[nt * 4 + e], b, h, row(r0, lane, e), key(kb, lane, nt, e), e // 2, row_fold),
                    NEG_INF)

    @T.macro
    def limit_scores(kb, s_acc, r0, lane, b, h, row_fold, ent):
        lim = T.decl_buffer((4,), "int32", scope="local")
        for r in T.unroll(2):
            lim[r] = ent[at + 1 + r] - (kb * bk + lane % 4 * 2)
            lim[2 + r] = ent[at + 3 + r] - (kb * bk + lane % 4 * 2)
        keep_within(kb, s_acc, r0, lane, b, h, row_fold, lim, True)

    BAND_LO = None if band is None else band.lower_offset
    BAND_HI = None if band is None else band.upper_offset

    def band_decides(r0, kb):
        return rest_holds(band.rest, False, r0, r0 + 15, kb * bk, kb * bk + bk - 1, tirx.And, tirx.Or)

    @T.macro
    def band_scores(kb, s_acc, r0, lane, b, h, row_fold):
        lim = T.decl_buffer((4,), "int32", scope="local")
        for r in T.unroll(2):
            if BAND_LO is not None:
                lim[r] = r0 + lane // 4 + r * 8 + BAND_LO - (kb * bk + lane % 4 * 2)
            if BAND_HI is not None:
                lim[2 + r] = (T.min(r0 + lane // 4 + r * 8 + BAND_HI, kv_len - 1)
                              - (kb * bk + lane % 4 * 2))
            else:
                lim[2 + r] = kv_len - 1 - (kb * bk + lane % 4 * 2)
        keep_within(kb, s_acc, r0, lane, b, h, row_fold, lim, BAND_LO is not None)

    @T.macro
    def mask_partial(kb, s_acc, r0, lane, b, h, row_fold, ent):
        if tile_map is not None:
            if ent[at] != 0:
                limit_scores(kb, s_acc, r0, lane, b, h, row_fold, ent)
            else:
                masked_scores(kb, s_acc, r0, lane, b, h, row_fold)
        elif band is not None:
            if band_decides(r0, kb):
                band_scores(kb, s_acc, r0, lane, b, h, row_fold)
            else:
                masked_scores(kb, s_acc, r0, lane, b, h, row_fold)
        else:
            masked_scores(kb, s_acc, r0, lane, b, h, row_fold)

    @T.macro
    def load_limits(ent, qb, warp, lane):
        if tile_map is not None:
            ent[at] = tile_map[qb, col0]
            for r in T.unroll(2):
                ent[at + 1 + r] = tile_map[qb, col0 + 1 + warp * 16 + lane // 4 + r * 8]
                ent[at + 3 + r] = tile_map[qb, col0 + 1 + bq + warp * 16 + lane // 4 + r * 8]

    return scaled_scores, mask_partial, load_limits


def copies_at_offsets(exact: bool, threads: int, chunks: int, rows: int) -> bool:
    """Whether ``threads`` threads copy a tile of ``rows`` rows of ``chunks`` 16-byte chunks (in
    the 128-byte swizzle) as one row pattern repeated ``threads / chunks`` rows down, a multiple of
    the swizzle's 8 rows -- so a thread's copies share one address pair at immediate offsets --
    with every row in bounds (``exact``: no clamp, no zero fill)."""
    return (exact and threads % chunks == 0 and (threads // chunks) % 8 == 0
            and (rows * chunks) % threads == 0)


def tile_loader_macro(NT: int, BK: int, TK: int, exact: bool, off, chunks: int, iters: int, per_chunk: int,
                      row_bytes: int):
    """The K (or V) tile load of the wgmma kernels: ``load(blk, slot, smem, src, pe, tx, b, hk)``
    copies key block ``blk`` of ``src`` [B, KVH, TK, ...] into slot ``slot`` of the swizzled tile
    ``off(slot, row, chunk)`` (16-bit units from the aligned base ``pe``) with ``cp.async``, 16
    bytes (``per_chunk`` elements) a copy, ``chunks`` copies a row (``row_bytes`` a row of src),
    ``iters`` copies a thread.  ``exact`` (every key block whole): no clamp, no zero fill, and where
    ``copies_at_offsets`` holds a thread's copies share one address pair at immediate offsets;
    else each row is clamped to the last key and zero-filled past it."""
    from tvm import tirx
    from tvm.script import tirx as T

    cpa = "cp.async.cg.shared.global"
    FAST = copies_at_offsets(exact, NT, chunks, BK)
    STEP = NT // chunks                 # rows between a thread's copies (fast path)

    def within(index):
        return tirx.const(True, "bool") if (BK * chunks) % NT == 0 else index < BK * chunks

    @T.macro
    def load_rows(blk, slot, smem, src, pe, tx, b, hk):
        for it in T.unroll(iters):
            if within(it * NT + tx):
                if exact:      # every row of every key block exists: no clamp, no zero fill
                    T.ptx[cpa](
                        T.address_of(smem[pe + off(slot, (it * NT + tx) // chunks, (it * NT + tx) % chunks)]),
                        T.address_of(src[b, hk, blk * BK + (it * NT + tx) // chunks,
                                         (it * NT + tx) % chunks * per_chunk]),
                        16)
                else:
                    T.ptx[cpa](
                        T.address_of(smem[pe + off(slot, (it * NT + tx) // chunks, (it * NT + tx) % chunks)]),
                        T.address_of(src[b, hk, T.min(blk * BK + (it * NT + tx) // chunks, TK - 1),
                                         (it * NT + tx) % chunks * per_chunk]),
                        16,
                        T.Cast("uint32", T.Select(blk * BK + (it * NT + tx) // chunks < TK, 16, 0)))

    @T.macro
    def load(blk, slot, smem, src, pe, tx, b, hk):
        if FAST:
            # each iteration copies the same chunk of a row STEP rows further down (a multiple of
            # 8: the same swizzle): one address pair a tile, the iterations at immediate offsets
            for it in T.unroll(iters):
                T.ptx[cpa](
                    T.ptx.addr(T.address_of(smem[pe + off(slot, tx // chunks, tx % chunks)]), it * STEP * 128),
                    T.ptx.addr(T.address_of(src[b, hk, blk * BK + tx // chunks, tx % chunks * per_chunk]),
                               it * STEP * row_bytes),
                    16)
        else:
            load_rows(blk, slot, smem, src, pe, tx, b, hk)

    return load


def staged_store_macro(dtype: str, ndv: int, bq: int, cv: int, nt: int, s_len: int, o_off, within):
    """``store_out(off, q0, smem, out, o_acc, red, tx, warp, lane, b, h)`` of both wgmma kernels:
    O times ``red`` (1 / l) staged in the swizzled tile at ``off`` (a block barrier), then copied
    out 16 bytes a thread, rows below ``s_len`` only (the ping-pong kernel's write-out with one
    warpgroup or ``bulk_store`` off, and the in-order kernel's)."""
    from tvm.script import tirx as T

    from attncc.targets._gpu_flash import copy_out_macro

    NDV = ndv
    copy_out = copy_out_macro(bq, cv, nt, s_len, o_off, within)

    @T.macro
    def store_out(off, q0, smem, out, o_acc, red, tx, warp, lane, b, h):
        for nd in T.unroll(NDV):
            for e in T.unroll(4):
                smem[off + o_off(warp * 16 + lane // 4 + e // 2 * 8, nd) + lane % 4 * 2 + e % 2] = \
                    T.Cast(dtype, o_acc[nd * 4 + e] * red[e // 2])
        T.tvm_storage_sync("shared")
        copy_out(off, q0, smem, out, tx, b, h)

    return store_out


def p_fragments_macro(kk_steps: int, pv8: bool, ptx_t: str):
    """``to_p(p_frag, s_acc, p16)`` of both wgmma kernels: the probabilities in the S accumulator
    (f32) as the register A fragments of P·V -- 16-bit pairs (``cvt.rn.{ptx_t}x2``), or with fp8
    P·V (``pv8``) e4m3 quadruples: register e of k32 step kk holds row half e % 2, keys of n8
    groups 4 kk + 2 (e // 2) + {0, 1} (the host prologue permutes V's keys to match, so no
    shuffles)."""
    from tvm.script import tirx as T

    KK = kk_steps
    cvt = f"cvt.rn.{ptx_t}x2.f32"
    cvt8 = "cvt.rn.satfinite.e4m3x2.f32"

    @T.macro
    def to_p(p_frag, s_acc, p16):
        if pv8:
            for kk in T.unroll(KK):
                for e in T.unroll(4):
                    for g in T.unroll(2):
                        T.ptx[cvt8](p16[g],
                                    s_acc[(kk * 4 + e // 2 * 2 + g) * 4 + e % 2 * 2 + 1],
                                    s_acc[(kk * 4 + e // 2 * 2 + g) * 4 + e % 2 * 2])
                    p_frag[kk, e] = T.Cast("uint32", p16[0]) | T.shift_left(
                        T.Cast("uint32", p16[1]), T.uint32(16))
        else:
            for kk in T.unroll(KK):
                for e in T.unroll(4):
                    T.ptx[cvt](p_frag[kk, e],
                               s_acc[(kk * 2 + e // 2) * 4 + e % 2 * 2 + 1],
                               s_acc[(kk * 2 + e // 2) * 4 + e % 2 * 2])

    return to_p


def row_fold_macro(scale_at, k_per_key: bool, factor: float, m_tiles: int = 1):
    """``set_row_fold(row_fold, b, h, hk, r0, lane)`` of the CUDA kernels with quantized inputs
    (both wgmma kernels; the mma.sync kernel with ``m_tiles`` m16 row tiles a warp): the
    dequantization of the thread's rows (two an m16 tile, ``row_fold[2 mt + r]``) -- q scale of
    the row x the k scale of the kv head (unless k is scaled per key) x ``factor`` (scale * log2 e
    where it folds into the exponent)."""
    from tvm.script import tirx as T

    @T.macro
    def set_row_fold(row_fold, b, h, hk, r0, lane):
        for mt in T.unroll(m_tiles):
            for r in T.unroll(2):
                row_fold[mt * 2 + r] = scale_at(0, b, h, r0 + mt * 16 + lane // 4 + r * 8) * (
                    T.float32(1) if k_per_key else scale_at(1, b, hk, 0)) * T.float32(factor)

    return set_row_fold


def fp8_v_loader_macro(NT: int, BK: int, TKP: int, exact: bool, off, rows: int, chunks: int, iters: int):
    """The transposed fp8 V tile load of both wgmma kernels (fp8 P·V): ``load(blk, slot, smem, src,
    pe, tx, b, hk)`` copies keys ``blk * BK ..`` of ``src`` [B, KVH, d_v, TKP] (``rows`` = d_v rows of
    ``chunks`` 16-key chunks) into slot ``slot`` of the swizzled tile ``off(slot, row, chunk)``;
    ``exact`` (TKP a multiple of BK): no clamp, no zero fill."""
    from tvm import tirx
    from tvm.script import tirx as T

    cpa = "cp.async.cg.shared.global"

    def within(index):
        return tirx.const(True, "bool") if (rows * chunks) % NT == 0 else index < rows * chunks

    def src_args(vbuf, bi, hk, blk, idx):
        row, chunk = idx // chunks, idx % chunks
        key = blk * BK + chunk * 16
        if exact:
            return (T.address_of(vbuf[bi, hk, row, key]), 16)
        return (T.address_of(vbuf[bi, hk, row, tirx.min(key, TKP - 16)]), 16,
                tirx.Cast("uint32", tirx.Select(key < TKP, 16, 0)))

    @T.macro
    def load(blk, slot, smem, src, pe, tx, b, hk):
        for it in T.unroll(iters):
            if within(it * NT + tx):
                T.ptx[cpa](T.address_of(smem[pe + off(slot, (it * NT + tx) // chunks, (it * NT + tx) % chunks)]),
                           *src_args(src, b, hk, blk, it * NT + tx))

    return load


def registers_estimate(spec: FlashKernelSpec, config) -> int:
    return spec.head_dim_v // 2 + config.block_k // 2 + config.block_k // 4 + 16


def validate_config(spec: FlashKernelSpec, config, arch, smem_limit: int) -> None:
    check_tiles(spec, config, arch)
    check_fp8(spec, config)
    if persistent(config):
        if config.num_warps != 8:
            _bad(spec, config, "persistent: the warp-specialised kernel has two consumer warpgroups: "
                 "num_warps must be 8 (block_q 128)")
        if spec.quant_dtype is not None:
            _bad(spec, config, "persistent does not take fp8 inputs yet: use persistent=0")
        if config.num_stages != 2:
            _bad(spec, config, "persistent: two Q buffers leave room for 2 K/V stages: num_stages must be 2")
    check_resources(spec, config, smem_limit, shared_memory_bytes(spec, config))


def _bad(spec: FlashKernelSpec, c, msg: str):
    raise ConfigError(f"cuda config {c}: {msg}", variant=spec.name or None)


def check_tiles(spec: FlashKernelSpec, config, arch) -> None:
    """The wgmma kernels' arch, warpgroup, tile and head-dim rules (also _cuda_wgmma_sparse's)."""
    c = config

    def bad(msg):
        _bad(spec, c, msg)

    if arch is not None and arch != "sm_90a":
        bad(f"mma='wgmma' needs Hopper (arch sm_90a), not {arch}")
    if c.num_warps not in (4, 8, 12):
        bad(f"mma='wgmma' takes 1, 2 or 3 warpgroups: num_warps 4, 8 or 12, got {c.num_warps}")
    if c.block_q != 16 * c.num_warps:
        bad(f"mma='wgmma': each warpgroup owns 64 query rows, so block_q must be "
            f"16 * num_warps = {16 * c.num_warps}, got {c.block_q}")
    if c.block_k % 16 or not 16 <= c.block_k <= 256:
        bad(f"mma='wgmma': block_k must be a multiple of 16 in [16, 256] (wgmma n and k), got {c.block_k}")
    if c.num_stages < 2 or c.num_stages > 4:
        bad(f"num_stages must be 2, 3 or 4 (cp.async pipeline depth), got {c.num_stages}")
    for name in ("head_dim", "head_dim_v"):
        d = getattr(spec, name)
        if d % 64:
            raise ShapeError(f"cuda target, mma='wgmma': {name} ({d}) must be a multiple of 64 "
                             "(128-byte swizzled tiles); use mma='sync'", variant=spec.name or None)
    if spec.head_dim_v > 256:
        bad(f"mma='wgmma': head_dim_v ({spec.head_dim_v}) over 256 (wgmma n)")


def check_resources(spec: FlashKernelSpec, config, smem_limit: int, smem: int) -> None:
    """Shared memory (``smem`` bytes, the kernel module's own count) and fragment registers."""
    if smem > smem_limit:
        _bad(spec, config, f"needs {smem} bytes of shared memory per block, over the {smem_limit}: lower block_k "
             "or num_stages")
    if registers_estimate(spec, config) > 200:
        _bad(spec, config, f"holds about {registers_estimate(spec, config)} registers of fragments per thread: "
             "lower block_k")


def _heavy_score_mod(spec: FlashKernelSpec) -> bool:
    """Whether ``spec``'s score_mod calls a function (tanh, exp, log, sigmoid, ...) on the
    score: a softmax phase too long for the ping-pong schedule."""
    if spec.score_mod is None:
        return False
    from tvm import tirx
    from tvm.ir.expr import Call

    score = tirx.Var("score", "float32")
    idx = [tirx.Var(n, "int32") for n in ("b", "h", "q_idx", "kv_idx")]
    expr = spec.score_mod(score, *idx)

    def children(node):
        for name in ("a", "b", "value", "condition", "true_value", "false_value"):
            child = getattr(node, name, None)
            if child is not None and not isinstance(child, (int, float, str)):
                yield child
        yield from getattr(node, "args", ()) or ()

    def uses_score(node):
        return (isinstance(node, tirx.Var) and node.same_as(score)) or any(uses_score(c) for c in children(node))

    def heavy(node):
        if isinstance(node, Call) and uses_score(node):
            return True
        return any(heavy(c) for c in children(node))

    return heavy(expr) if not isinstance(expr, (int, float)) else False


# key range, score_mod and element mask, shared with cuda.py and rocm.py
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
    # fp8 (the quantize pass): q and k (and with quant_pv v) arrive in QK_DT / V_DT with f32 scales
    # (arguments after the tile map); the tiles are the 16-bit scheme's with rows of D bytes
    # (QB, VB: bytes per element of q/k and of v; TKP: keys of the transposed fp8 V)
    QUANT, PV8, QK_DT, V_DT, qk_t, v_t, QB, VB, TKP = operand_types(spec)

    BQ, BK = config.block_q, config.block_k
    NW, NS = config.num_warps, config.num_stages
    NT = NW * 32
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

    # shared memory map, in 16-bit units from the 1024-byte aligned base (Q, then the O staging)
    Q_ELEMS = BQ * max(D * QB, DV * 2) // 2
    # persistent (warp-specialised) kernel: two Q buffers (the next work tile's Q lands under this one)
    WS = persistent(config)
    K_BASE = Q_ELEMS * (2 if WS else 1)
    NSK = ws_k_slots(spec, config)          # K slots (the persistent kernel may hold one more than V)
    K_ELEMS = BK * D * QB // 2
    V_BASE = K_BASE + NSK * K_ELEMS
    V_ELEMS = BK * DV * VB // 2
    # table mode: the key-block list (int32), past the tiles and the alignment slack
    LIST_BASE = V_BASE + NS * V_ELEMS + ALIGN_BYTES // 2
    USE_TABLE = use_block_table(spec)
    SMEM_ELEMS = LIST_BASE + ((4 if WS else 2) * (NKB + 1) if USE_TABLE else 0)
    # table mode: the tile map [NQB, NKB] is the argument after lse; captured tensors (document
    # ids) follow it, read by the mask / score_mod expressions
    # (the persistent kernel's table has one more column: the query blocks in the order it walks
    # them, ws_row_order_column)
    # (and with row_limits_on, 1 + 2 BQ more: a flag, then each row's first and last kept key)
    TILE_MAP = (tirx.decl_buffer((NQB, table_columns(spec, config)), "int32", "tile_map")
                if USE_TABLE else None)
    ROW_LIMITS = USE_TABLE and row_limits_on(spec)
    LIM0 = NKB + int(ws_row_order_column(spec, config)) + ws_schedule_columns(spec, config)
    CAPTURE_BUFFERS = [tirx.decl_buffer(tuple(int(x) for x in shape), cdt, name)
                       for name, shape, cdt in spec.captures]
    SCALE_BUFFERS = [tirx.decl_buffer(tuple(int(x) for x in shape), "float32", name)
                     for name, shape in spec.scales]
    K_PER_KEY = QUANT and int(SCALE_BUFFERS[1].shape[2]) > 1
    compact_row, MAP_BATCH = compact_row_macro(TILE_MAP, NKB) if USE_TABLE else (None, 1)
    row_list = row_list_macro(compact_row, NKB) if USE_TABLE else None

    Q_ITERS, K_ITERS, V_ITERS = (-(-(BQ * CQ) // NT), -(-(BK * CQ) // NT), -(-(V_ROWS * CVL) // NT))

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

    # The schedule (FlashAttention-3's ping-pong, kept on a block-wide barrier): the odd
    # warpgroups run half a key block behind the even ones.  At key block j an even warpgroup
    # issues S_j = Q K_j^T and O += P_{j-1} V_{j-1} (one GEMM phase) and then runs the softmax
    # of S_j; an odd warpgroup first runs the softmax of S_{j-1} (kept from its previous
    # iteration), then issues the same two products.  So one warpgroup's softmax runs while
    # the other's products occupy the tensor cores.  Every warpgroup waits for its products
    # before the next barrier.  Loads: at block j, K_{j+AHEAD} and V_{j+AHEAD-1} (K is needed
    # one block before V), AHEAD = num_stages - 1 blocks ahead, into the slots of K_{j-1} and
    # V_{j-2}, which the products before the barrier were the last to read.
    AHEAD = NS - 1
    SPLIT = _OPTIONS.get("split", True)   # even warpgroups: softmax as soon as S_j is done
    # ping-pong pays when the softmax is short beside the products; a score_mod with a
    # transcendental call (softcap's tanh) makes it long, and then the warpgroups in step
    # (sharing the issue slots of one softmax phase) win: 255 vs 188 TFLOP/s on H200 (RESULTS.md)
    PINGPONG = _OPTIONS.get("pingpong", not _heavy_score_mod(spec))
    # grid order: query blocks of one (batch, head) are neighbours in the launch order, so a
    # wave of blocks reads the keys and values of a few heads (from L2) instead of all of
    # them (from HBM); blockIdx.y holds batch x heads, at most 65535
    QB_FAST = _OPTIONS.get("qb_fast", B * H <= 65535)
    # lazy rescaling (FlashAttention-4's): a row keeps its running max until a block raises it by
    # more than LAZY_TAU (log2 units), so O is rescaled only on such blocks (probabilities of the
    # others are at most 2^LAZY_TAU, exact in f32 and as 16-bit P); l and O share the reference.
    # H200, same runs: dense / causal / GQA / sliding window 3-9 % faster, 64 x 32 tiles 2-4 %,
    # tile maps at 128 x 128 the same; ALiBi and softcap (a score_mod) 2-3 % slower: off there
    # (not with fp8 P: it is 2^8-scaled already, and e4m3 would saturate)
    LAZY = _OPTIONS.get("lazy_rescale", score_mod is None) and not PV8

    def is_odd(wg):
        return wg % 2 == 1 if PINGPONG else wg < 0

    def is_even(wg):
        return wg % 2 == 0 if PINGPONG else wg >= 0

    def v_desc(sb, slot, kk):
        """Descriptor of V rows 16 kk .. 16 kk + 15 of slot ``slot`` (MN-major B of P·V); fp8:
        32-byte column step kk of the transposed V tile (K-major B, like K)."""
        if PV8:
            return (sb >> U(4)) + tirx.Cast(u64, (V_BASE + slot * V_ELEMS) // 8 + (kk // 4) * (DV * 8)
                                            + (kk % 4) * 2) + U(DESC_K)
        return (sb >> U(4)) + tirx.Cast(u64, (V_BASE + slot * V_ELEMS) // 8 + kk * (16 * 8)) + U(DESC_V)

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

    # the write-out (BULK_STORE): O staged a warp's 16 rows at a time, rows padded by 16 bytes
    # (O_ROW elements: the 2-byte stores of a warp hit 32 different banks), and copied to global
    # memory by cp.async.bulk, one row a lane.  The staging (from the unaligned base) covers Q
    # and the first K slot, dead once the last step has begun (its barrier is past every S
    # product; a block without key blocks has a barrier first); the V slots, still read by the
    # other warpgroup's last P·V, lie beyond it.
    # H200, same run against the staged copy-out: 1-3 % faster with two warpgroups and more (full
    # S=1k/4k, sliding window S=4k, windows 1024/4096, documents=8), 2.7 % slower with one
    # (window 256 at 64 x 32, four thread blocks an SM): off there
    O_ROW = DV + 8
    BULK_STORE = (_OPTIONS.get("bulk_store", NW >= 8) and BQ * O_ROW <= V_BASE and DV % 8 == 0)

    # score_mod (log2 units), the element mask and the scale folding: shared with cuda.py and rocm.py;
    # fp8 adds the dequantization: row_fold[r] = q scale of the thread's row r (x the k scale per
    # head, x scale * log2 e when folded), a per-key k scale multiplies each score, and fp8 P is
    # shifted by 2^SHIFT
    # every row of every query block is below S (every key of every key block below TK) where the
    # blocks divide the lengths: captured tensors indexed by the row (key) itself need no clamp
    # (H200, document masks: benchmarks/gpu/RESULTS.md)
    UNCLAMPED = _OPTIONS.get("unclamped", True)
    ix = FlashIndexing(spec, BQ, BK, 16, tuple(CAPTURE_BUFFERS), rows_in_range=UNCLAMPED and S % BQ == 0,
                       keys_in_range=UNCLAMPED and TK % BK == 0)
    scaled, to_log2, exp_arg, masked = score_functions(ix, QUANT, PV8, K_PER_KEY, scale_at, G)

    def block_lo(q0):
        if USE_TABLE or kb_lower is None:     # table mode: positions in the compacted list
            return i32(0)
        return tirx.floordiv(tirx.max(q0 + kb_lower, 0), BK)

    def block_hi(q0, cnt):
        if USE_TABLE:
            return cnt[0]                       # the count of non-empty key blocks
        q_last = tirx.min(q0 + (BQ - 1), S - 1)
        if kb_upper is None:
            return i32(NKB)
        return tirx.max(tirx.floordiv(tirx.min(q_last + kb_upper, TK - 1), BK) + 1, block_lo(q0))

    def key_block(ent, which, pos):
        """The key block at loop position ``pos``: itself, or (table mode) that of the list
        entry copied to the register ent[which] (key block * 2 + full)."""
        if USE_TABLE:
            return tirx.shift_right(ent[which], 1)
        return pos

    def tile_is_full(r0, kb, ent=None, which=0):
        """No element of warp rows r0 .. r0+15 x key block kb needs the element mask (table
        mode: the tile map says full for the whole query block)."""
        if USE_TABLE:
            return ix.entry_is_full(ent[which], kb)
        if not band_is_mask:
            return tirx.const(False, "bool")
        conds = [c for c in band_keeps_all(r0, kb) if c is not None]
        if not conds:
            return tirx.const(True, "bool")
        out = conds[0]
        for cnd in conds[1:]:
            out = tirx.And(out, cnd)
        return out

    def band_keeps_all(r0, kb):
        """(key end, lower side, upper side): each the condition that it keeps every key of block
        kb for warp rows r0 .. r0+15, None where the band has no such bound."""
        j0 = kb * BK
        return (j0 + BK <= TK if NKB * BK != TK else None,
                j0 >= r0 + 15 + kb_lower if kb_lower is not None else None,
                j0 + (BK - 1) <= r0 + kb_upper if kb_upper is not None else None)

    def cuts(cond):
        """The negation of one of band_keeps_all's comparisons (the side drops some key)."""
        return tirx.LT(cond.a, cond.b) if isinstance(cond, tirx.GE) else tirx.GT(cond.a, cond.b)

    # a band's partial tiles (no tile map, the band is the whole mask): each row's first and last
    # kept key set once a tile, one immediate compare a score per side that cuts the warp's rows
    LO_SIDE = kb_lower is not None
    HI_SIDE = kb_upper is not None or NKB * BK != TK
    BAND_EDGES = (_OPTIONS.get("band_edges", True) and not USE_TABLE and band_is_mask
                  and (LO_SIDE or HI_SIDE))

    def hi_key(i):
        """The last key row i keeps (the upper side and the key length)."""
        if kb_upper is None:
            return i32(TK - 1)
        return tirx.min(i + kb_upper, TK - 1) if NKB * BK != TK else i + kb_upper

    def hi_cuts(r0, kb):
        """The upper side (or the key length) drops keys of warp rows r0 .. r0+15 in block kb."""
        edge, _, upper = band_keeps_all(r0, kb)
        conds = [cuts(c) for c in (upper, edge) if c is not None]
        return conds[0] if len(conds) == 1 else tirx.Or(conds[0], conds[1])

    def band_cond(lim, r, c, lo_on, hi_on):
        conds = ([lim[r] <= c] if lo_on else []) + ([c <= lim[2 + r]] if hi_on else [])
        return conds[0] if len(conds) == 1 else tirx.And(conds[0], conds[1])

    # table mode: each step reads the list entries j and j + AHEAD only; the entries j - 1 and
    # j - 1 + AHEAD are the previous step's, kept in registers (two shared loads and their
    # clamps a step fewer)
    LIST_REGS = _OPTIONS.get("list_regs", True)

    def within(count, index):
        if count % NT == 0:
            return tirx.const(True, "bool")
        return index < count

    def both(a, c):
        return tirx.And(a, c)

    store_out = staged_store_macro(dtype, NDV, BQ, CV, NT, S, o_off, within)

    V_SHAPE = (B, KVH, DV, TKP) if PV8 else (B, KVH, TK, DV)
    wg_s = f"wgmma.mma_async.sync.aligned.m64n{BK}k{32 if QUANT else 16}.f32.{qk_t}.{qk_t}"
    wg_o = (f"wgmma.mma_async.sync.aligned.m64n{DV}k32.f32.e4m3.{v_t}" if PV8 else
            f"wgmma.mma_async.sync.aligned.m64n{DV}k16.f32.{ptx_t}.{ptx_t}")
    TRANS_S = () if QUANT else (0, 0)     # fp8 wgmma has no transpose immediates (K-major only)
    TRANS_O = () if PV8 else (1,)
    cpa = "cp.async.cg.shared.global"
    # the key length a multiple of block_k: K/V tile loads need no clamp and no zero fill, so each
    # 16-byte copy is one instruction at a constant offset from the tile's base (the clamp and the
    # src-size select cost ~5 instructions a copy, 16 copies a thread a key block: ncu on H200 found
    # these kernels issue-bound, time tracking executed instructions; benchmarks/gpu/RESULTS.md)
    KEYS_EXACT = _OPTIONS.get("keys_exact", TK % BK == 0 and TKP % BK == 0)

    ex2 = "ex2.approx.ftz.f32"

    load_k = tile_loader_macro(NT, BK, TK, KEYS_EXACT, k_off, CQ, K_ITERS, EQ, D * QB)
    load_v = (fp8_v_loader_macro(NT, BK, TKP, KEYS_EXACT, v_off, V_ROWS, CVL, V_ITERS) if PV8 else
              tile_loader_macro(NT, BK, TK, KEYS_EXACT, v_off, CV, V_ITERS, 8, DV * 2))

    @T.macro
    def loads(j, has_qk, kb_lo, kb_hi, smem, k, v, pe, tx, b, hk, kv_list, ent):
        # K of block j + AHEAD into the slot of K_{j-1}, V of block j + AHEAD - 1 into that of
        # V_{j-2}: every warpgroup waited for the products that read them before this barrier.
        # One commit group a step, empty or not (the waits count groups).  Table mode: the key
        # blocks at those list positions (copied to registers: a shared load cannot sit in a
        # condition).
        if has_qk:
            if USE_TABLE:
                if LIST_REGS:      # the previous step's entry j - 1 + AHEAD is this step's second
                    ent[3] = ent[2]
                    ent[2] = kv_list[T.min(j + AHEAD, NKB)]
                else:
                    ent[2] = kv_list[T.min(j + AHEAD, NKB)]
                    ent[3] = kv_list[T.min(j + AHEAD - 1, NKB)]
            if j + AHEAD < kb_hi:
                load_k(key_block(ent, 2, j + AHEAD), (j + AHEAD - kb_lo) % NS, smem, k, pe, tx, b, hk)
            if AHEAD == 1:
                load_v(key_block(ent, 3, j), (j - kb_lo) % NS, smem, v, pe, tx, b, hk)
            elif j + AHEAD - 1 < kb_hi:
                load_v(key_block(ent, 3, j + AHEAD - 1), (j + AHEAD - 1 - kb_lo) % NS, smem, v, pe, tx, b, hk)
        T.ptx["cp.async.commit_group"]()

    @T.macro
    def band_keep(kb, s_acc, r0, lane, b, h, row_fold, lim, lo_on, hi_on):
        # a band's partial tile: lim[r] <= c (lo_on) and/or c <= lim[2 + r] (hi_on) per score,
        # c = 8 nt + e % 2 its key offset from the thread's first key (an immediate)
        for nt in T.unroll(NKT):
            for e in T.unroll(4):
                s_acc[nt * 4 + e] = T.Select(
                    band_cond(lim, e // 2, nt * 8 + e % 2, lo_on, hi_on),
                    scaled(s_acc[nt * 4 + e], b, h, r0 + lane // 4 + e // 2 * 8,
                           kb * BK + nt * 8 + lane % 4 * 2 + e % 2, e // 2, row_fold),
                    NEG_INF)

    # The element mask of a band's partial tile (BAND_EDGES): per row, the first and the last key
    # kept, as offsets from the thread's first key of the tile (the key length folded into the
    # last), set once a tile; each score then compares one immediate per side that cuts this
    # warp's rows.  (Before: both sides, with j and i rebuilt per score; ncu on H200, window 1024:
    # ISETP + VIADD a masked score 2.6 -> 1.4, the kernel 1 % faster, sliding window S=4k 4 %:
    # benchmarks/gpu/RESULTS.md.)
    @T.macro
    def band_mask(kb, s_acc, r0, lane, b, h, row_fold):
        lim = T.decl_buffer((4,), "int32", scope="local")
        for r in T.unroll(2):
            if LO_SIDE:
                lim[r] = r0 + lane // 4 + r * 8 + kb_lower - (kb * BK + lane % 4 * 2)
            if HI_SIDE:
                lim[2 + r] = hi_key(r0 + lane // 4 + r * 8) - (kb * BK + lane % 4 * 2)
        if LO_SIDE and HI_SIDE:
            if cuts(band_keeps_all(r0, kb)[1]):         # the lower side cuts these rows
                if hi_cuts(r0, kb):
                    band_keep(kb, s_acc, r0, lane, b, h, row_fold, lim, True, True)
                else:
                    band_keep(kb, s_acc, r0, lane, b, h, row_fold, lim, True, False)
            else:
                band_keep(kb, s_acc, r0, lane, b, h, row_fold, lim, False, True)
        else:
            band_keep(kb, s_acc, r0, lane, b, h, row_fold, lim, LO_SIDE, HI_SIDE)

    # A partial tile of a document mask whose rows each keep one run of keys (ROW_LIMITS, the
    # query block's flag set): the band's compares against the row's first and last key, from
    # the table (ent[4:9]), instead of the mask's two id loads a score (ncu, documents=16 on the
    # H200: the id compares stalled on their loads, ~6 % of the kernel's samples; thirteenth
    # pass: documents 1-6 % faster, benchmarks/gpu/RESULTS.md)
    # A partial tile of a band or'ed with affine comparisons (global keys, a prefix) where those
    # are false on the warp's rows and the tile's keys: the band's compares (band_part_on)
    scaled_scores, mask_partial, load_row_limits = score_mask_macros(
        NKT, BK, BQ, scaled, masked, TILE_MAP if ROW_LIMITS else None, LIM0, 4,
        spec.band_part if band_part_on(spec) and not ROW_LIMITS else None, TK)

    @T.macro
    def softmax(kb, is_full, s_acc, red, m_run, m_use, alpha, l_run, r0, lane, b, h, row_fold, ent):
        """S_kb (the accumulator) -> unnormalised probabilities in place; alpha, l, m updated."""
        # ---- score_mod, mask (partial tiles only), log2 domain
        if is_full:
            scaled_scores(kb, s_acc, r0, lane, b, h, row_fold)
        elif BAND_EDGES:
            band_mask(kb, s_acc, r0, lane, b, h, row_fold)
        else:
            mask_partial(kb, s_acc, r0, lane, b, h, row_fold, ent)
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
            T.ptx[ex2](alpha[r], m_run[r] - m_use[r])
            l_run[r] = l_run[r] * alpha[r]
            m_run[r] = red[r]
        for nt in T.unroll(NKT):
            for e in T.unroll(4):
                T.ptx[ex2](s_acc[nt * 4 + e], exp_arg(s_acc[nt * 4 + e], m_use[e // 2], e // 2, row_fold))
                l_run[e // 2] = l_run[e // 2] + s_acc[nt * 4 + e]

    rescale_o = rescale_o_macro(NDV, LAZY)
    to_p = p_fragments_macro(KK, PV8, ptx_t)

    @T.macro
    def rescale_convert(o_acc, alpha, p_frag, s_acc, p16):
        """O *= alpha (no product in flight), then P (16-bit or e4m3, in registers): the A
        fragments of P·V."""
        rescale_o(o_acc, alpha)
        to_p(p_frag, s_acc, p16)

    @T.macro
    def gemms(j, has_qk, has_pv, kb_lo, s_acc, o_acc, p_frag, sbase, wg, qu):
        # S_j = Q K_jᵀ (one wgmma group: D/16 k steps)
        if has_qk:
            T.ptx["wgmma.fence.sync.aligned"]()
            for kd in T.unroll(KD):
                T.ptx[wg_s](
                    *[s_acc[i] for i in range(NSA)],
                    (sbase >> U(4)) + T.Cast(u64, qu + (kd // 4) * (BQ * 8) + wg * (64 * 8) + (kd % 4) * 2)
                    + U(DESC_K),
                    (sbase >> U(4)) + T.Cast(u64, (K_BASE + ((j - kb_lo) % NSK) * K_ELEMS) // 8
                                             + (kd // 4) * (BK * 8) + (kd % 4) * 2)
                    + U(DESC_K),
                    kd > 0, 1, 1, *TRANS_S)
            T.ptx["wgmma.commit_group.sync.aligned"]()
        # O += P_{j-1} V_{j-1} (one wgmma group: block_k/16 k steps; O was rescaled by
        # alpha_{j-1} when no product was in flight)
        if has_pv:
            T.ptx["wgmma.fence.sync.aligned"]()
            for kk in T.unroll(KK):
                T.ptx[wg_o](
                    *[o_acc[i] for i in range(NOA)],
                    p_frag[kk, 0], p_frag[kk, 1], p_frag[kk, 2], p_frag[kk, 3],
                    v_desc(sbase, (j - 1 - kb_lo) % NS, kk),
                    j >= 0, 1, 1, *TRANS_O)
            T.ptx["wgmma.commit_group.sync.aligned"]()

    @T.macro
    def step_end(j, has_qk, has_pv, wg, r0, lane, b, h, s_acc, o_acc, p_frag, red, m_run, m_use, alpha,
                 l_run, ent, row_fold, p16):
        """A step's end (both kernels): an even warpgroup runs the softmax of S_j as soon as it is
        done (under its P·V) and converts P; every warpgroup waits for its products."""
        if is_even(wg):
            if has_qk:
                if SPLIT and has_pv:
                    T.ptx["wgmma.wait_group.sync.aligned"](1)
                    softmax(key_block(ent, 0, j), tile_is_full(r0, key_block(ent, 0, j), ent, 0),
                            s_acc, red, m_run, m_use, alpha, l_run, r0, lane, b, h, row_fold, ent)
                    T.ptx["wgmma.wait_group.sync.aligned"](0)
                else:
                    T.ptx["wgmma.wait_group.sync.aligned"](0)
                    softmax(key_block(ent, 0, j), tile_is_full(r0, key_block(ent, 0, j), ent, 0),
                            s_acc, red, m_run, m_use, alpha, l_run, r0, lane, b, h, row_fold, ent)
                rescale_convert(o_acc, alpha, p_frag, s_acc, p16)
            else:
                T.ptx["wgmma.wait_group.sync.aligned"](0)
        else:
            T.ptx["wgmma.wait_group.sync.aligned"](0)

    @T.macro
    def step(j, has_qk, has_pv, kb_lo, kb_hi, smem, k, v, pe, tx, b, h, hk, wg, r0, lane, sbase,
             s_acc, o_acc, p_frag, red, m_run, m_use, alpha, l_run, kv_list, ent, row_fold, p16):
        """Key block j: the softmax of S_j (even warpgroups) or S_{j-1} (odd ones) and the
        products S_j = Q K_jᵀ (has_qk) and O += P_{j-1} V_{j-1} (has_pv).  The first and the
        last step are peeled off the loop (has_pv / has_qk False) so that no wgmma or wait
        sits under a condition that ptxas cannot follow (it would serialise every wgmma)."""
        T.ptx["cp.async.wait_group"](AHEAD - 1)     # K_j and V_{j-1} have landed
        T.ptx["fence.proxy.async.shared::cta"]()
        T.tvm_storage_sync("shared")
        if USE_TABLE:      # the key blocks of S_j and S_{j-1}
            if LIST_REGS:      # (j <= kb_hi <= NKB: in the list or its count slot)
                ent[1] = ent[0]
                ent[0] = kv_list[j]
            else:
                ent[0] = kv_list[T.min(j, NKB)]
                ent[1] = kv_list[T.max(j - 1, 0)]
        if is_odd(wg):
            loads(j, has_qk, kb_lo, kb_hi, smem, k, v, pe, tx, b, hk, kv_list, ent)
            if has_pv:
                softmax(key_block(ent, 1, j - 1), tile_is_full(r0, key_block(ent, 1, j - 1), ent, 1),
                        s_acc, red, m_run, m_use, alpha, l_run, r0, lane, b, h, row_fold, ent)
                rescale_convert(o_acc, alpha, p_frag, s_acc, p16)
        # (the products outside the branches: ptxas cannot tell that a branch on the warpgroup
        # goes the same way at every step, and serialises wgmma under one that it cannot follow)
        gemms(j, has_qk, has_pv, kb_lo, s_acc, o_acc, p_frag, sbase, wg, 0)
        if is_even(wg):
            loads(j, has_qk, kb_lo, kb_hi, smem, k, v, pe, tx, b, hk, kv_list, ent)
        step_end(j, has_qk, has_pv, wg, r0, lane, b, h, s_acc, o_acc, p_frag, red, m_run, m_use, alpha, l_run,
                 ent, row_fold, p16)

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
                    alpha = T.decl_buffer((2,), "float32", scope="local")
                    red = T.decl_buffer((2,), "float32", scope="local")
                    saddr = T.decl_buffer((1,), "uint64", scope="local")
                    # table mode: [0, count) the non-empty key blocks (kb * 2 + full), [NKB] the count
                    # (inside smem's allocation: TVM's merge of dynamic shared buffers would alias a
                    # second one with the tiles it sees only through address_of)
                    kv_list = T.decl_buffer((NKB + 1,), "int32", data=smem.data, elem_offset=LIST_BASE // 2,
                                            scope="shared.dyn")
                    cnt = T.decl_buffer((1,), "int32", scope="local")
                    tvs = T.decl_buffer((MAP_BATCH,), "int32", scope="local")     # tile-map entries
                    # list entries; with ROW_LIMITS [4:9] the block's flag and the rows' key limits
                    ent = T.decl_buffer((9 if ROW_LIMITS else 4,), "int32", scope="local")
                    row_fold = T.decl_buffer((2,), "float32", scope="local")     # fp8 dequantization per row
                    p16 = T.decl_buffer((2,), "uint16", scope="local")           # fp8 P, two pairs
                    T.ptx["cvta.to.shared.u64"](saddr[0], T.address_of(smem[0]))
                    # align the tiles to 1024 bytes (the 128-byte swizzle's period)
                    pad = T.Cast("int32", (U(ALIGN_BYTES) - (saddr[0] & U(ALIGN_BYTES - 1))) & U(ALIGN_BYTES - 1))
                    sbase = saddr[0] + T.Cast(u64, pad)
                    pe = pad // 2                          # aligned base, in elements
                    b = bh // H
                    h = bh % H
                    hk = h // G
                    qb = NQB - 1 - qb_rev
                    q0 = qb * BQ
                    # the warpgroup, through a shuffle from lane 0 so that ptxas sees it warp-uniform
                    # (branches on it hold wgmma: a divergent-looking path serialises them)
                    wg = T.cuda.__shfl_sync(FULL_MASK, tx // 128, 0, 32)
                    warp = tx // 32
                    lane = tx % 32
                    r0 = q0 + warp * 16                    # first query row of this warp
                    # ---- prologue: the Q tile, (table mode) the key-block list, K of the first key block
                    for it in T.unroll(Q_ITERS):
                        if within(BQ * CQ, it * NT + tx):
                            T.ptx[cpa](
                                T.address_of(smem[pe + q_off((it * NT + tx) // CQ, (it * NT + tx) % CQ)]),
                                T.address_of(q[b, h, T.min(q0 + (it * NT + tx) // CQ, S - 1),
                                               (it * NT + tx) % CQ * EQ]),
                                16,
                                T.Cast("uint32", T.Select(q0 + (it * NT + tx) // CQ < S, 16, 0)))
                    if USE_TABLE:      # the key-block list of this query block (Q in flight)
                        row_list(qb, cnt, tvs, kv_list, warp, lane)
                    load_row_limits(ent, qb, warp, lane)
                    if QUANT:
                        set_row_fold(row_fold, b, h, hk, r0, lane)
                    kb_lo = block_lo(q0)
                    kb_hi = block_hi(q0, cnt)
                    if USE_TABLE:
                        ent[0] = 0
                    # (AHEAD commit groups: group g holds K_{lo+g} and V_{lo+g-1})
                    for g in T.unroll(AHEAD):
                        if USE_TABLE:
                            ent[2] = kv_list[T.min(kb_lo + g, NKB)]
                            ent[3] = kv_list[T.max(kb_lo + g - 1, 0)]
                        if kb_lo + g < kb_hi:
                            load_k(key_block(ent, 2, kb_lo + g), g, smem, k, pe, tx, b, hk)
                        if g > 0:
                            if kb_lo + g - 1 < kb_hi:
                                load_v(key_block(ent, 3, kb_lo + g - 1), g - 1, smem, v, pe, tx, b, hk)
                        T.ptx["cp.async.commit_group"]()
                    # ---- running state
                    for r in T.unroll(2):
                        m_run[r] = NEG_INF
                        l_run[r] = T.float32(0)
                        alpha[r] = T.float32(1)
                    for e in T.unroll(NOA):
                        o_acc[e] = T.float32(0)
                    # ---- the key loop: the first block (no P·V yet), the middle, one step past
                    # the last block (its P·V only)
                    if kb_lo < kb_hi:
                        step(kb_lo, True, False, kb_lo, kb_hi, smem, k, v, pe, tx, b, h, hk, wg, r0, lane,
                             sbase, s_acc, o_acc, p_frag, red, m_run, m_use, alpha, l_run, kv_list, ent,
                             row_fold, p16)
                        for j in T.serial(kb_lo + 1, kb_hi):
                            step(j, True, True, kb_lo, kb_hi, smem, k, v, pe, tx, b, h, hk, wg, r0, lane,
                                 sbase, s_acc, o_acc, p_frag, red, m_run, m_use, alpha, l_run, kv_list, ent,
                             row_fold, p16)
                        step(kb_hi, False, True, kb_lo, kb_hi, smem, k, v, pe, tx, b, h, hk, wg, r0, lane,
                             sbase, s_acc, o_acc, p_frag, red, m_run, m_use, alpha, l_run, kv_list, ent,
                             row_fold, p16)
                    T.ptx["wgmma.wait_group.sync.aligned"](0)
                    # ---- epilogue
                    T.ptx["cp.async.wait_group"](0)
                    if not BULK_STORE:
                        T.tvm_storage_sync("shared")
                    elif kb_hi <= kb_lo:      # no key loop, no barrier yet: other threads' Q copies may still land
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
                    if BULK_STORE:
                        # each warp stages its 16 rows (padded: conflict-free 2-byte stores), hands
                        # them to the async proxy and copies them out a row per lane (bulk copies):
                        # no block barrier, no shared loads, no global stores in the warps
                        for nd in T.unroll(NDV):
                            for e in T.unroll(4):
                                smem[(warp * 16 + lane // 4 + e // 2 * 8) * O_ROW + nd * 8 + lane % 4 * 2 + e % 2] = \
                                    T.Cast(dtype, o_acc[nd * 4 + e] * red[e // 2])
                        T.ptx["fence.proxy.async.shared::cta"]()
                        T.cuda.warp_sync()
                        if lane < 16:
                            if r0 + lane < S:
                                T.ptx["cp.async.bulk.global.shared::cta.bulk_group"](
                                    T.address_of(out[b, h, r0 + lane, 0]), T.address_of(smem[(warp * 16 + lane) * O_ROW]),
                                    T.uint32(DV * 2))
                            T.ptx["cp.async.bulk.commit_group"]()
                            T.ptx["cp.async.bulk.wait_group.read"](0)
                    else:
                        # (the output tile needs no alignment: it is staged from the unaligned base)
                        store_out(0, q0, smem, out, o_acc, red, tx, warp, lane, b, h)

    if WS:
        # ---- the persistent, warp-specialised kernel (FlashAttention-3's structure): GRID thread
        # blocks of three warpgroups walk the work tiles (query block, batch x head) in a static
        # order (ws_tile_order; ws_default_order picks it from the tile map; in table mode the
        # query blocks ranked by cost come in the table's last column, filled per map on the host).
        # Warpgroup 0 is the producer: its warp 1 builds each tile's key-block list (table mode)
        # and its lane 0 issues every Q, K and V tile by the bulk tensor copy engine (TMA, tensor
        # maps encoded on the host per call), completing on mbarriers; it drops to 40 registers.
        # Warpgroups 1 and 2 are the consumers (64 query rows each, 232 registers): the ping-pong
        # steps above without any load, on a named barrier of their 256 threads.  Q has two
        # buffers and K/V NS slots each, counted across tiles, so the next tile's Q and first K/V
        # land under this tile's last steps and write-out.
        GRID = min(WS, NQB * B * H)
        NTILES = NQB * B * H
        WS_ORDER = _OPTIONS.get("ws_order") or ws_default_order(spec, config)
        # "scheduled": the host's deal of the tiles over the thread blocks, in the table's schedule
        # columns (row-major from column NKB + 1; ws_schedule), entry p clamped into the schedule
        SCHED = WS_ORDER == "scheduled"
        SCH_X = ws_schedule_columns(spec, config)
        SCH_LEN = schedule_length(NQB, B * H, GRID)

        def sched_at(p):
            p = T.min(p, SCH_LEN - 1)
            return TILE_MAP[p // SCH_X, NKB + 1 + p % SCH_X]

        tiles_of, tile_of, tile_bh, tile_qb = ws_tile_order(
            WS_ORDER, NTILES, GRID, B * H, NQB,
            lambda c, x, y: tirx.Select(c, x, y), i32, (lambda r: TILE_MAP[r, NKB]) if USE_TABLE else None,
            sched_at if SCH_X else None)
        # ("scheduled") the producer and the consumers read the next tile's code a tile ahead, in
        # code[0], so that no table load sits between two tiles; code[1] is this tile's
        @T.macro
        def code_start(code, cta):
            if SCHED:
                code[0] = tile_of(cta, 0)

        @T.macro
        def code_next(code, cta, n):
            if SCHED:
                code[1] = code[0]
                code[0] = tile_of(cta, n + 1)

        def this_tile(code, cta, n):
            return code[1] if SCHED else tile_of(cta, n)

        NTW = NT + 128                                  # the producer warpgroup besides the consumers
        # q_full[2], q_empty[2], k full/empty [NSK], v full/empty [NS], list_full[2]
        NBAR = 6 + 2 * NSK + 2 * NS
        QF, QE, KF, KE, VF, VE = 0, 2, 4, 4 + NSK, 4 + 2 * NSK, 4 + 2 * NSK + NS
        LF = 4 + 2 * NSK + 2 * NS
        # table mode: the producer's second warp builds each tile's key-block list as soon as its
        # buffer is free (a tile ahead), so the loads of a tile never wait for the tile-map row
        LIST_WARP = USE_TABLE and _OPTIONS.get("ws_list_warp", True)
        # the write-out's staging: two 16-bit values a 32-bit shared store (cvt.rn.*x2)
        PACK_STORE = _OPTIONS.get("ws_pack_store", True)
        # the write-out: each warp stages its 16 rows of O in its rows of the Q buffer (the
        # 128-byte swizzled layout) and one lane stores them by TMA; else two 16-bit stores a
        # thread straight from the accumulators
        TMA_STORE = _OPTIONS.get("ws_tma_store", True)
        # the write-out's wait for the copy engine to have read the staged O (and the Q buffer's
        # release that follows it) moved from the tile's end to after the next tile's first step,
        # off the consumers' path between tiles (1-4 % on documents, chunks, windows and causal at
        # S=16k on the H200, benchmarks/gpu/RESULTS.md, twelfth pass)
        DEFER_STORE = TMA_STORE and _OPTIONS.get("ws_defer_store", True)
        Q_BYTES, K_BYTES, V_BYTES = BQ * D * 2, BK * D * 2, BK * DV * 2
        LIST_N = NKB + 1
        swz = 3                                         # CU_TENSOR_MAP_SWIZZLE_128B
        # registers a thread: 128 x producer + 256 x consumer <= 64K (at 24 the producer spills)
        REG_PRODUCER, REG_CONSUMER = _OPTIONS.get("ws_regs", (40, 232))

        def bar_at(bars, i):
            return T.cuda.cvta_generic_to_shared(T.address_of(bars[i]))

        # the key-block lists pass from the producer to the consumers through mbarriers, which
        # TVM's barrier insertion does not know: their stores are st.shared, which it does not
        # see (so it inserts no __syncthreads inside the role branches, which it cannot); the
        # loads are plain (after an mbarrier wait, whose asm is a compiler barrier), or with
        # ``ws_list_plain`` False ld.shared too (asm volatile: a compiler barrier at each read)
        LIST_PLAIN = _OPTIONS.get("ws_list_plain", True)

        @T.macro
        def list_put(kv_list, index, value):
            T.ptx["st.shared.s32"](T.cuda.cvta_generic_to_shared(T.address_of(kv_list[index])), value)

        @T.macro
        def list_get(dst, i, kv_list, index):
            if LIST_PLAIN:
                dst[i] = kv_list[index]
            else:
                T.ptx["ld.shared.s32"](dst[i], T.cuda.cvta_generic_to_shared(T.address_of(kv_list[index])))

        ws_compact_row = compact_row_macro(TILE_MAP, NKB, list_put)[0] if USE_TABLE else None

        @T.macro
        def store_read(n, lane, bars):
            """(DEFER_STORE) tile n - 1's write-out read out of its Q buffer: the buffer back."""
            if DEFER_STORE and n > 0:
                if lane == 0:
                    T.ptx["cp.async.bulk.wait_group.read"](0)
                    T.ptx.mbarrier.arrive.shared.b64(bar_at(bars, QE + (n - 1) % 2), T.uint32(1))

        @T.macro
        def tma_tile(tmap, dst_elem, rows, ncb, row0, bh_, bar, sb_elems):
            for cb in T.unroll(ncb):
                T.ptx["cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"](
                    T.Cast("uint32", sb_elems + (dst_elem + cb * rows * 64) * 2), T.address_of(tmap),
                    cb * 64, row0, bh_, bar)

        @T.macro
        def ws_step(j, has_qk, has_pv, kb_lo, lb, pos, bars, kv_list, wg, c, ct, r0, lane, b, h, sbase, buf,
                    s_acc, o_acc, p_frag, red, m_run, m_use, alpha, l_run, ent, row_fold, p16):
            """step() of the persistent kernel: no loads; the consumers' named barrier, then
            K_{j-1} (and V_{j-2}) back to the producer and waits on K_j and V_{j-1}; slots and
            parities by the position pos + j - kb_lo, counted across the thread block's tiles."""
            T.ptx["bar.sync"](T.uint32(1), T.uint32(NT))
            if ct == 0:
                if has_pv:     # every consumer's S_{j-1} and P_{j-2} V_{j-2} are done
                    T.ptx.mbarrier.arrive.shared.b64(bar_at(bars, KE + (pos[0] + j - 1 - kb_lo) % NSK), T.uint32(1))
                    if j - 2 >= kb_lo:
                        T.ptx.mbarrier.arrive.shared.b64(bar_at(bars, VE + (pos[0] + j - 2 - kb_lo) % NS),
                                                         T.uint32(1))
            if USE_TABLE:
                ent[1] = ent[0]
                list_get(ent, 0, kv_list, lb + T.min(j, NKB))
            if is_odd(c):
                if has_pv:
                    softmax(key_block(ent, 1, j - 1), tile_is_full(r0, key_block(ent, 1, j - 1), ent, 1),
                            s_acc, red, m_run, m_use, alpha, l_run, r0, lane, b, h, row_fold, ent)
                    rescale_convert(o_acc, alpha, p_frag, s_acc, p16)
            if has_qk:
                T.cuda.mbarrier_wait(T.address_of(bars[KF + (pos[0] + j - kb_lo) % NSK]), (pos[0] + j - kb_lo) // NSK % 2)
            if has_pv:
                T.cuda.mbarrier_wait(T.address_of(bars[VF + (pos[0] + j - 1 - kb_lo) % NS]),
                                     (pos[0] + j - 1 - kb_lo) // NS % 2)
            gemms(j, has_qk, has_pv, kb_lo - pos[0], s_acc, o_acc, p_frag, sbase, c, buf * (Q_ELEMS // 8))
            step_end(j, has_qk, has_pv, c, r0, lane, b, h, s_acc, o_acc, p_frag, red, m_run, m_use, alpha, l_run,
                     ent, row_fold, p16)

        @T.prim_func(check_well_formed=False)
        def main(q: T.Buffer((B, H, S, D), QK_DT), k: T.Buffer((B, KVH, TK, D), QK_DT),
                 v: T.Buffer(V_SHAPE, V_DT), out: T.Buffer((B, H, S, DV), dtype),
                 lse: T.Buffer((B, H, S), "float32")):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            q_map = T.Var("q_tmap", ty=T.handle("tensormap").ty)
            k_map = T.Var("k_tmap", ty=T.handle("tensormap").ty)
            v_map = T.Var("v_tmap", ty=T.handle("tensormap").ty)
            T.Bind(T.tvm_stack_alloca("tensormap", 1), var=q_map)
            T.Bind(T.tvm_stack_alloca("tensormap", 1), var=k_map)
            T.Bind(T.tvm_stack_alloca("tensormap", 1), var=v_map)
            T.tensormap_encode_tiled(q_map, q.data, D, S, B * H, D * 2, S * D * 2, 64, BQ, 1, 1, 1, 1,
                                     descriptor_dtype=dtype, rank=3, swizzle=swz, l2_promotion=2)
            T.tensormap_encode_tiled(k_map, k.data, D, TK, B * KVH, D * 2, TK * D * 2, 64, BK, 1, 1, 1, 1,
                                     descriptor_dtype=dtype, rank=3, swizzle=swz, l2_promotion=2)
            T.tensormap_encode_tiled(v_map, v.data, DV, TK, B * KVH, DV * 2, TK * DV * 2, 64, BK, 1, 1, 1, 1,
                                     descriptor_dtype=dtype, rank=3, swizzle=swz, l2_promotion=2)
            o_map = T.Var("o_tmap", ty=T.handle("tensormap").ty)
            T.Bind(T.tvm_stack_alloca("tensormap", 1), var=o_map)
            T.tensormap_encode_tiled(o_map, out.data, DV, S, B * H, DV * 2, S * DV * 2, 64, 16, 1, 1, 1, 1,
                                     descriptor_dtype=dtype, rank=3, swizzle=swz, l2_promotion=2)
            for cta in T.thread_binding(GRID, thread="blockIdx.x"):
                with T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", 1):
                    for tx in T.thread_binding(NTW, thread="threadIdx.x"):
                        smem = T.decl_buffer((SMEM_ELEMS,), dtype, scope="shared.dyn")
                        bars = T.decl_buffer((NBAR,), "uint64", scope="shared")
                        p_frag = T.decl_buffer((KK, 4), "uint32", scope="local")
                        s_acc = T.decl_buffer((NSA,), "float32", scope="local")
                        o_acc = T.decl_buffer((NOA,), "float32", scope="local")
                        m_run = T.decl_buffer((2,), "float32", scope="local")
                        l_run = T.decl_buffer((2,), "float32", scope="local")
                        m_use = T.decl_buffer((2,), "float32", scope="local")
                        alpha = T.decl_buffer((2,), "float32", scope="local")
                        red = T.decl_buffer((2,), "float32", scope="local")
                        saddr = T.decl_buffer((1,), "uint64", scope="local")
                        kv_list = T.decl_buffer((2 * LIST_N,), "int32", data=smem.data,
                                                elem_offset=LIST_BASE // 2, scope="shared.dyn")
                        cnt = T.decl_buffer((1,), "int32", scope="local")
                        tvs = T.decl_buffer((MAP_BATCH,), "int32", scope="local")
                        ent = T.decl_buffer((9 if ROW_LIMITS else 4,), "int32", scope="local")
                        row_fold = T.decl_buffer((2,), "float32", scope="local")
                        p16 = T.decl_buffer((2,), "uint16", scope="local")
                        pos = T.decl_buffer((1,), "int32", scope="local")    # K/V positions so far
                        code = T.decl_buffer((2,), "int32", scope="local")   # (scheduled) next, this tile
                        pk = T.decl_buffer((1,), "uint32", scope="local")    # two packed 16-bit values
                        T.ptx["cvta.to.shared.u64"](saddr[0], T.address_of(smem[0]))
                        pad = T.Cast("int32", (U(ALIGN_BYTES) - (saddr[0] & U(ALIGN_BYTES - 1))) & U(ALIGN_BYTES - 1))
                        sbase = saddr[0] + T.Cast(u64, pad)
                        sb32 = T.Cast("uint32", sbase)
                        wg = T.cuda.__shfl_sync(FULL_MASK, tx // 128, 0, 32)
                        lane = tx % 32
                        if tx == 0:
                            for i in T.unroll(2):
                                T.ptx.mbarrier.init.shared.b64(bar_at(bars, QF + i), T.uint32(1 if LIST_WARP else 32))
                                T.ptx.mbarrier.init.shared.b64(bar_at(bars, LF + i), T.uint32(32))
                                T.ptx.mbarrier.init.shared.b64(bar_at(bars, QE + i), T.uint32(NT // 32))
                            for i in T.unroll(NSK):
                                T.ptx.mbarrier.init.shared.b64(bar_at(bars, KF + i), T.uint32(1))
                                T.ptx.mbarrier.init.shared.b64(bar_at(bars, KE + i), T.uint32(1))
                            for i in T.unroll(NS):
                                T.ptx.mbarrier.init.shared.b64(bar_at(bars, VF + i), T.uint32(1))
                                T.ptx.mbarrier.init.shared.b64(bar_at(bars, VE + i), T.uint32(1))
                            T.ptx["fence.mbarrier_init.release.cluster"]()
                        T.tvm_storage_sync("shared")
                        pos[0] = 0
                        if wg == 0:
                            # ---------------- producer
                            T.ptx["setmaxnreg.dec.sync.aligned.u32"](REG_PRODUCER)
                            if tx < 32:
                                n_tiles = tiles_of(cta)
                                code_start(code, cta)
                                for n in T.serial(n_tiles):
                                    code_next(code, cta, n)
                                    t = this_tile(code, cta, n)
                                    bh = tile_bh(t)
                                    qb = tile_qb(t)
                                    b = bh // H
                                    hk = bh % H // G
                                    buf = n % 2
                                    T.cuda.mbarrier_wait(T.address_of(bars[QE + buf]), (n // 2) % 2 ^ 1)
                                    if USE_TABLE and not LIST_WARP:
                                        ws_compact_row(qb, buf * LIST_N, cnt, tvs, kv_list, lane)
                                        T.cuda.warp_sync()
                                    if lane == 0:
                                        T.ptx.mbarrier.arrive.expect_tx.shared.b64(bar_at(bars, QF + buf), T.uint32(Q_BYTES))
                                        tma_tile(q_map, buf * Q_ELEMS, BQ, D // 64, qb * BQ, bh, bar_at(bars, QF + buf), sb32)
                                        if LIST_WARP:
                                            T.cuda.mbarrier_wait(T.address_of(bars[LF + buf]), (n // 2) % 2)
                                            list_get(cnt, 0, kv_list, buf * LIST_N + NKB)
                                    elif not LIST_WARP:
                                        T.ptx.mbarrier.arrive.shared.b64(bar_at(bars, QF + buf), T.uint32(1))
                                    if lane == 0:
                                        # K of block j, then V of block j - 1 (V is needed a step after K;
                                        # with a third K slot, K runs two blocks ahead of its use)
                                        for j in T.serial(block_lo(qb * BQ), block_hi(qb * BQ, cnt) + 1):
                                            if USE_TABLE:
                                                ent[1] = ent[0]
                                            if j < block_hi(qb * BQ, cnt):
                                                if USE_TABLE:
                                                    list_get(ent, 0, kv_list, buf * LIST_N + j)
                                                T.cuda.mbarrier_wait(T.address_of(bars[KE + pos[0] % NSK]),
                                                                     (pos[0] // NSK) % 2 ^ 1)
                                                T.ptx.mbarrier.arrive.expect_tx.shared.b64(bar_at(bars, KF + pos[0] % NSK),
                                                                                           T.uint32(K_BYTES))
                                                tma_tile(k_map, K_BASE + pos[0] % NSK * K_ELEMS, BK, D // 64,
                                                         key_block(ent, 0, j) * BK, b * KVH + hk,
                                                         bar_at(bars, KF + pos[0] % NSK), sb32)
                                            if j > block_lo(qb * BQ):
                                                T.cuda.mbarrier_wait(T.address_of(bars[VE + (pos[0] - 1) % NS]),
                                                                     ((pos[0] - 1) // NS) % 2 ^ 1)
                                                T.ptx.mbarrier.arrive.expect_tx.shared.b64(bar_at(bars, VF + (pos[0] - 1) % NS),
                                                                                           T.uint32(V_BYTES))
                                                tma_tile(v_map, V_BASE + (pos[0] - 1) % NS * V_ELEMS, BK, DV // 64,
                                                         key_block(ent, 1, j - 1) * BK, b * KVH + hk,
                                                         bar_at(bars, VF + (pos[0] - 1) % NS), sb32)
                                            if j < block_hi(qb * BQ, cnt):
                                                pos[0] = pos[0] + 1
                            elif LIST_WARP and tx < 64:
                                # the list warp: tile n's list into buffer n % 2 once the consumers are
                                # done with tile n - 2 (its Q buffer's release)
                                n_tiles = tiles_of(cta)
                                for n in T.serial(n_tiles):
                                    T.cuda.mbarrier_wait(T.address_of(bars[QE + n % 2]), (n // 2) % 2 ^ 1)
                                    ws_compact_row(tile_qb(tile_of(cta, n)), n % 2 * LIST_N, cnt, tvs,
                                                   kv_list, lane)
                                    T.ptx.mbarrier.arrive.shared.b64(bar_at(bars, LF + n % 2), T.uint32(1))
                        else:
                            # ---------------- consumers
                            T.ptx["setmaxnreg.inc.sync.aligned.u32"](REG_CONSUMER)
                            ct = tx - 128
                            c = wg - 1
                            warp = ct // 32
                            n_tiles = tiles_of(cta)
                            code_start(code, cta)
                            for n in T.serial(n_tiles):
                                code_next(code, cta, n)
                                t = this_tile(code, cta, n)
                                bh = tile_bh(t)
                                qb = tile_qb(t)
                                b = bh // H
                                h = bh % H
                                q0 = qb * BQ
                                r0 = q0 + warp * 16
                                buf = n % 2
                                lb = buf * LIST_N
                                load_row_limits(ent, qb, warp, lane)      # (its loads under the wait)
                                T.cuda.mbarrier_wait(T.address_of(bars[QF + buf]), (n // 2) % 2)
                                if LIST_WARP:
                                    T.cuda.mbarrier_wait(T.address_of(bars[LF + buf]), (n // 2) % 2)
                                if USE_TABLE:
                                    list_get(cnt, 0, kv_list, lb + NKB)
                                    ent[0] = 0
                                kb_lo = block_lo(q0)
                                kb_hi = block_hi(q0, cnt)
                                for r in T.unroll(2):
                                    m_run[r] = NEG_INF
                                    l_run[r] = T.float32(0)
                                    alpha[r] = T.float32(1)
                                for e in T.unroll(NOA):
                                    o_acc[e] = T.float32(0)
                                if kb_lo < kb_hi:
                                    ws_step(kb_lo, True, False, kb_lo, lb, pos, bars, kv_list, wg, c, ct, r0, lane, b, h,
                                            sbase, buf, s_acc, o_acc, p_frag, red, m_run, m_use, alpha, l_run, ent,
                                            row_fold, p16)
                                    store_read(n, lane, bars)
                                    for j in T.serial(kb_lo + 1, kb_hi):
                                        ws_step(j, True, True, kb_lo, lb, pos, bars, kv_list, wg, c, ct, r0, lane, b, h,
                                                sbase, buf, s_acc, o_acc, p_frag, red, m_run, m_use, alpha, l_run, ent,
                                                row_fold, p16)
                                    ws_step(kb_hi, False, True, kb_lo, lb, pos, bars, kv_list, wg, c, ct, r0, lane, b, h,
                                            sbase, buf, s_acc, o_acc, p_frag, red, m_run, m_use, alpha, l_run, ent,
                                            row_fold, p16)
                                if kb_hi <= kb_lo:
                                    store_read(n, lane, bars)
                                T.ptx["wgmma.wait_group.sync.aligned"](0)
                                # every consumer is past this tile's last products: its last V slot
                                # and its Q buffer (and key-block list) go back to the producer
                                T.ptx["bar.sync"](T.uint32(1), T.uint32(NT))
                                if ct == 0:
                                    if kb_lo < kb_hi:
                                        T.ptx.mbarrier.arrive.shared.b64(
                                            bar_at(bars, VE + (pos[0] + kb_hi - kb_lo - 1) % NS), T.uint32(1))
                                if not TMA_STORE:
                                    if lane == 0:     # the Q buffer (and list) back, a warp at a time
                                        T.ptx.mbarrier.arrive.shared.b64(bar_at(bars, QE + buf), T.uint32(1))
                                pos[0] = pos[0] + T.max(kb_hi - kb_lo, 0)
                                for r in T.unroll(2):
                                    l_run[r] = l_run[r] + T.cuda.__shfl_xor_sync(FULL_MASK, l_run[r], 1, 32)
                                    l_run[r] = l_run[r] + T.cuda.__shfl_xor_sync(FULL_MASK, l_run[r], 2, 32)
                                    red[r] = T.Select(l_run[r] > T.float32(0), T.float32(1) / l_run[r], T.float32(0))
                                for hf in T.unroll(2):
                                    if both(lane % 4 == 0, r0 + hf * 8 + lane // 4 < S):
                                        lse[b, h, r0 + hf * 8 + lane // 4] = T.Select(
                                            l_run[hf] > T.float32(0),
                                            (m_run[hf] + T.log2(l_run[hf])) * T.float32(_LN2), NEG_INF)
                                if TMA_STORE:
                                    # the warp's 16 rows into its rows of the Q buffer (every S product of
                                    # this warpgroup is done), as the swizzled tile TMA reads; rows past S
                                    # are clipped by the copy engine
                                    for hf in T.unroll(2):
                                        for nd in T.unroll(NDV):
                                            if PACK_STORE:
                                                T.ptx[f"cvt.rn.{ptx_t}x2.f32"](pk[0], o_acc[nd * 4 + hf * 2 + 1] * red[hf],
                                                                               o_acc[nd * 4 + hf * 2] * red[hf])
                                                T.ptx["st.shared.b32"](
                                                    sb32 + T.Cast("uint32", (buf * Q_ELEMS + (nd // 8) * (BQ * 64)
                                                                             + (warp * 16 + hf * 8 + lane // 4) * 64
                                                                             + T.bitwise_xor(nd % 8, lane // 4) * 8
                                                                             + lane % 4 * 2) * 2), pk[0])
                                            else:
                                                for e in T.unroll(2):
                                                    smem[pad // 2 + buf * Q_ELEMS + (nd // 8) * (BQ * 64)
                                                         + (warp * 16 + hf * 8 + lane // 4) * 64
                                                         + T.bitwise_xor(nd % 8, (hf * 8 + lane // 4) % 8) * 8
                                                         + lane % 4 * 2 + e] = T.Cast(dtype, o_acc[nd * 4 + hf * 2 + e] * red[hf])
                                    T.ptx["fence.proxy.async.shared::cta"]()
                                    T.cuda.warp_sync()
                                    if lane == 0:
                                        for cb in T.unroll(DV // 64):
                                            T.ptx["cp.async.bulk.tensor.3d.global.shared::cta.tile.bulk_group"](
                                                T.address_of(o_map), cb * 64, r0, bh,
                                                T.Cast("uint32", sb32 + (buf * Q_ELEMS + cb * (BQ * 64) + warp * 16 * 64) * 2))
                                        T.ptx["cp.async.bulk.commit_group"]()
                                        if not DEFER_STORE:
                                            T.ptx["cp.async.bulk.wait_group.read"](0)
                                            T.ptx.mbarrier.arrive.shared.b64(bar_at(bars, QE + buf), T.uint32(1))
                                else:
                                    # O straight from the accumulators: two 16-bit values a store
                                    for hf in T.unroll(2):
                                        if r0 + hf * 8 + lane // 4 < S:
                                            for nd in T.unroll(NDV):
                                                for e in T.unroll(2):
                                                    out[b, h, r0 + hf * 8 + lane // 4, nd * 8 + lane % 4 * 2 + e] = \
                                                        T.Cast(dtype, o_acc[nd * 4 + hf * 2 + e] * red[hf])
                            if DEFER_STORE:     # the last tile's write-out read before the block ends
                                if lane == 0:
                                    T.ptx["cp.async.bulk.wait_group.read"](0)

    extra = ([TILE_MAP] if USE_TABLE else []) + SCALE_BUFFERS + CAPTURE_BUFFERS
    if extra:
        # in TVM 0.27 a buffer is itself a (buffer-typed) Var and can be a parameter
        main = tirx.PrimFunc(list(main.params) + extra, main.body, main.ret_type, main.attrs)
    tvm.tirx.analysis.verify_well_formed(main)
    return tvm.IRModule({"main": main})
