"""Argument layouts a kernel reads that differ from the variant's own (host-side prologue
steps, without TVM): the fp8 P·V kernel of the Hopper target reads V transposed and
key-permuted so that the Q·Kᵀ accumulator fragment *is* the fp8 A fragment of P (no
shuffles in the kernel; attncc/targets/_cuda_wgmma_sparse.py describes the fragments)."""

from __future__ import annotations

import numpy as np

FP8_V = "fp8_v_transposed"     # the manifest's name of the layout below


def padded_kv_len(kv_len: int) -> int:
    """Keys of the transposed fp8 V (a multiple of 32)."""
    return -(-kv_len // 32) * 32


def v_key_permutation(kv_len: int) -> np.ndarray:
    """Position p of the transposed fp8 V holds key ``perm[p]``: inside each group of 32,
    position 16 hi + 4 c + e holds key 8 (2 hi + e // 2) + 2 c + e % 2 -- the key that the
    wgmma accumulator puts at byte e of register hi of lane-in-quad c (see the P fragment)."""
    p = np.arange(padded_kv_len(kv_len))
    g, r = p // 32, p % 32
    hi, c, e = r // 16, r % 16 // 4, r % 4
    return g * 32 + 8 * (2 * hi + e // 2) + 2 * c + e % 2


def fp8_v_layout(v) -> np.ndarray:
    """v [B, H, T, Dv] -> [B, H, Dv, T32] (T rounded up to 32, zero padded), keys permuted by
    ``v_key_permutation``: numpy arrays (ml_dtypes fp8) or, on the tensor's device, torch tensors."""
    if type(v).__module__.startswith("torch"):
        import torch

        T = v.shape[2]
        T32 = padded_kv_len(T)
        if T32 != T:
            v = torch.cat([v, v.new_zeros(v.shape[:2] + (T32 - T, v.shape[3]))], dim=2)
        idx = torch.as_tensor(v_key_permutation(T), device=v.device)
        # (fp8 tensors take index_select through a uint8 view)
        u = v.view(torch.uint8).index_select(2, idx).transpose(2, 3).contiguous()
        return u.view(v.dtype)
    v = np.asarray(v)
    T = v.shape[2]
    T32 = padded_kv_len(T)
    if T32 != T:
        pad = np.zeros(v.shape[:2] + (T32 - T, v.shape[3]), dtype=v.dtype)
        v = np.concatenate([v, pad], axis=2)
    return np.ascontiguousarray(np.swapaxes(v[:, :, v_key_permutation(T), :], 2, 3))


# The ranking is kept where the key blocks that the query blocks running at once read stay within
# this factor of the plain order's (H200, benchmarks/gpu/RESULTS.md, twelfth pass: documents, whose
# blocks cost alike within a document, ran 3-9 % faster ranked; causal documents and chunks, whose
# ranking interleaves documents at 2.7-4x the key blocks, ran 5-10 % slower ranked)
ROW_ORDER_SPREAD = 2.0


def rank_rows(cost) -> np.ndarray:
    """Row indices by ``cost`` descending, ties the later row first."""
    cost = np.asarray(cost)
    return np.lexsort((-np.arange(len(cost)), -cost)).astype(np.int32)


def key_spread(tiles, order, window: int) -> float:
    """The mean number of key blocks that ``window`` consecutive query blocks of ``order`` read
    together: the K/V working set of the tiles a persistent kernel runs at once."""
    nz = np.asarray(tiles) != 0
    order = np.asarray(order)
    window = max(1, int(window))
    return float(np.mean([nz[order[i:i + window]].any(axis=0).sum() for i in range(0, len(order), window)]))


def row_order(tiles, window: int = 1) -> np.ndarray:
    """The query blocks in the order the persistent Hopper kernel walks them ("sorted" order):
    ranked by their non-empty key blocks, heaviest first (ties: the later block) -- unless that
    ranking scatters the ``window`` blocks running at once (B x H tiles each) over more than
    ``ROW_ORDER_SPREAD`` times the key blocks of the plain order, last block first, which keeps
    a document's blocks together (causal documents, chunks): then the plain order."""
    t = np.asarray(tiles)
    ranked = rank_rows((t != 0).sum(axis=1))
    plain = np.arange(t.shape[0] - 1, -1, -1, dtype=np.int32)
    if key_spread(t, ranked, window) > ROW_ORDER_SPREAD * key_spread(t, plain, window):
        return plain
    return ranked


def with_row_order(tiles, window: int = 1, schedule=None) -> np.ndarray:
    """The tile map [NQB, NKB] with column NKB = ``row_order``: the table of the persistent
    Hopper kernel in table mode, which walks the query blocks in that order (computed once per
    map on the host, where the map itself is computed).  ``schedule`` = (thread blocks, batch x
    heads): ``schedule_columns`` more columns after it, ``tile_schedule`` over that order."""
    t = np.asarray(tiles, dtype=np.int32)
    if t.ndim != 2:
        raise ValueError(f"a tile map is [query blocks, key blocks], got shape {t.shape}")
    order = row_order(t, window)
    parts = [t, order[:, None]]
    if schedule is not None:
        grid, bhn = (int(x) for x in schedule)
        flat = tile_schedule((t != 0).sum(axis=1), order, bhn, grid)
        cols = schedule_columns(t.shape[0], bhn, grid)
        parts.append(np.concatenate([flat, np.zeros(t.shape[0] * cols - flat.size, np.int32)])
                     .reshape(t.shape[0], cols))
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


# ------------------------------------------------------------------ the persistent kernel's schedule

# What a work tile costs the persistent kernel beyond its key blocks, in key blocks: its Q load,
# the first and last steps that do one product each, the write-out (~2-2.5 dense steps, H200,
# benchmarks/gpu/RESULTS.md thirteenth pass).  Only the assignment below depends on it, and
# barely: 1 and 2 give the busiest block within 0.5 % of each other on every benchmark mask.
TILE_FIXED_COST = 2.0


def schedule_length(nqb: int, bhn: int, grid: int) -> int:
    """Entries of ``tile_schedule``: grid + 1 offsets (grid clamped to the tiles) and one code a
    work tile."""
    return min(int(grid), int(nqb) * int(bhn)) + 1 + int(nqb) * int(bhn)


def schedule_columns(nqb: int, bhn: int, grid: int) -> int:
    """The table's columns that hold ``tile_schedule`` (row-major over the NQB rows)."""
    return -(-schedule_length(nqb, bhn, grid) // int(nqb))


def tile_schedule(row_cost, order, bhn: int, grid: int, fixed: float = TILE_FIXED_COST) -> np.ndarray:
    """Which work tiles each thread block of the persistent kernel runs, in what order: the
    tiles (query block ``order[r]`` of each of the ``bhn`` batch x heads, rank r by rank r) dealt
    greedily, a rank at a time, to the blocks least loaded so far -- the list scheduling a
    dynamic tile counter would do, simulated on the host with a tile of query block qb costing
    ``row_cost[qb] + fixed``.  The blocks running at once thus keep to neighbouring ranks (the
    order's locality: a document's key blocks stay in L2) while every block's total comes out
    near the mean even where cost rises and falls along the order (chunks, causal documents),
    which a fixed snake over the ranks cannot do.

    Returns int32 [grid + 1 + len(order) * bhn]: entries 0..grid are offsets into the array
    (block c runs entries off[c] .. off[c + 1] - 1), then the tiles' codes, ``qb * bhn + bh``."""
    cost = np.asarray(row_cost, dtype=np.float64) + float(fixed)
    order = np.asarray(order, dtype=np.int64)
    bhn, grid = int(bhn), int(grid)
    if bhn < 1 or grid < 1:
        raise ValueError(f"a schedule needs at least one head and one thread block, got {bhn} and {grid}")
    if sorted(order.tolist()) != list(range(len(cost))):
        raise ValueError("the order must be a permutation of the query blocks")
    ntiles = len(order) * bhn
    grid = min(grid, ntiles)
    load = np.zeros(grid)
    owner = np.empty(ntiles, dtype=np.int64)
    k = 0
    for qb in order:
        left = bhn
        while left:
            take = min(left, grid)
            least = np.argpartition(load, take - 1)[:take] if take < grid else np.arange(grid)
            least = least[np.lexsort((least, load[least]))]
            owner[k:k + take] = least
            load[least] += cost[qb]
            k += take
            left -= take
    codes = np.repeat(order, bhn) * bhn + np.tile(np.arange(bhn), len(order))
    by = np.argsort(owner, kind="stable")
    off = np.searchsorted(owner[by], np.arange(grid + 1)) + grid + 1
    return np.concatenate([off, codes[by]]).astype(np.int32)


# ------------------------------------------------------------------ the one-block-a-tile kernel's launch order

# The in-order wgmma kernel of 64-row tiles (the 64 x 32 kernel of sparse calls) runs one thread
# block a query block of a head, four an SM: 528 at once on an H100/H200's 132 SMs.  The
# hardware starts the blocks in launch order as slots free up, so the call ends when the blocks
# launched last do; where a heavy block comes late (the long documents of the last head) the
# other slots idle meanwhile.  Sorting the last LAUNCH_TAIL_WAVES x LAUNCH_SLOTS blocks of the
# launch order heaviest first ends the call on light blocks, the longest-processing-time rule
# on the tail only: the blocks before it keep the head-major order whose waves share K/V in L2.
# 1.5 waves measured best on the H200 (benchmarks/gpu/RESULTS.md, fifteenth pass: 1 to 2 waves
# within 1-2 % of each other, 3-4 waves slower, the whole launch sorted 10-50 % slower -- a sorted
# wave reads the K/V of many heads at once).  The slots are the H100/H200's (SXM: 132 SMs); on a
# GPU of 114 SMs (H100 PCIe) the same tail is 1.7 of its waves, inside the 1-2 waves measured
# alike, so the table need not know the device (the host fills it before any device is chosen).
LAUNCH_SLOTS = 528
LAUNCH_TAIL_WAVES = 1.5


def launch_columns(bhn: int) -> int:
    """The table's columns that hold ``launch_order`` (one code a thread block, NQB x bhn of them,
    row-major over the NQB rows)."""
    return int(bhn)


def launch_order(row_cost, bhn: int, slots=None, tail_waves=None) -> np.ndarray:
    """The work tile each thread block of the one-block-a-tile kernel runs, in launch order
    (``blockIdx.y * gridDim.x + blockIdx.x``): codes ``qb * bhn + bh``.  Head-major with each head's
    query blocks last first (the launch order without a table), except that the last
    ``tail_waves * slots`` are sorted by ``row_cost`` (the query block's non-empty key blocks),
    heaviest first, ties in that order (None: LAUNCH_SLOTS, LAUNCH_TAIL_WAVES)."""
    slots = LAUNCH_SLOTS if slots is None else int(slots)
    tail_waves = LAUNCH_TAIL_WAVES if tail_waves is None else float(tail_waves)
    cost = np.asarray(row_cost)
    nqb, bhn = len(cost), int(bhn)
    if bhn < 1 or nqb < 1:
        raise ValueError(f"a launch order needs at least one query block and one head, got {nqb} and {bhn}")
    qb = np.tile(np.arange(nqb - 1, -1, -1, dtype=np.int64), bhn)
    bh = np.repeat(np.arange(bhn, dtype=np.int64), nqb)
    return sort_tail(qb, bh, bhn, cost, int(round(tail_waves * slots)))


def sort_tail(qb, bh, bhn: int, cost, tail: int) -> np.ndarray:
    """Codes ``qb * bhn + bh`` of a launch order given as query blocks ``qb`` and batch x heads
    ``bh`` (int64 arrays, sorted in place), its last ``tail`` entries sorted by ``cost[qb]``
    heaviest first, ties in their order."""
    tail = min(len(qb), max(0, int(tail)))
    if tail:
        start = len(qb) - tail
        by = np.argsort(-np.asarray(cost)[qb[start:]], kind="stable") + start
        qb[start:], bh[start:] = qb[by], bh[by]
    return (qb * int(bhn) + bh).astype(np.int32)


def with_launch_order(tiles, bhn: int, slots=None, tail_waves=None) -> np.ndarray:
    """The tile map [NQB, NKB] with ``launch_columns`` more columns after it: ``launch_order`` of
    the map's rows' non-empty key blocks."""
    t = np.asarray(tiles, dtype=np.int32)
    if t.ndim != 2:
        raise ValueError(f"a tile map is [query blocks, key blocks], got shape {t.shape}")
    codes = launch_order((t != 0).sum(axis=1), bhn, slots, tail_waves)
    return np.ascontiguousarray(np.concatenate([t, codes.reshape(t.shape[0], launch_columns(bhn))], axis=1))


# ------------------------------------------------------------------ row limits of a document mask

ROW_LIMITS_EMPTY = (0, -1)          # (first, last) of a row that keeps no key


def row_limits(ids, q_len: int, kv_len: int, lower_offset=None, upper_offset=None):
    """Per query row i of a document mask ``ids[i] == ids[j]`` (indices clamped into ``ids``, as
    gathers are) and the band ``i + lower_offset <= j <= i + upper_offset`` (None: unbounded):
    ``(first, last, exact)``, int32 arrays of q_len -- the first and last key the row keeps (first
    > last: none), and whether the row keeps exactly the keys in between, true where every key
    of the row's id lies in one contiguous run (packed documents; an id that recurs after
    another breaks the runs of the rows holding it)."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size == 0:
        raise ValueError("row limits of an empty id array")
    n = ids.size
    qd = ids[np.clip(np.arange(q_len), 0, n - 1)]
    kd = ids[np.clip(np.arange(kv_len), 0, n - 1)]
    values, inverse = np.unique(kd, return_inverse=True)
    pos = np.arange(kv_len)
    first = np.full(len(values), kv_len, dtype=np.int64)
    last = np.full(len(values), -1, dtype=np.int64)
    np.minimum.at(first, inverse, pos)
    np.maximum.at(last, inverse, pos)
    count = np.bincount(inverse, minlength=len(values))
    runs = last - first + 1 == count
    at = np.searchsorted(values, qd)
    found = (at < len(values)) & (values[np.minimum(at, len(values) - 1)] == qd)
    at = np.minimum(at, len(values) - 1)
    lo = np.where(found, first[at], ROW_LIMITS_EMPTY[0])
    hi = np.where(found, last[at], ROW_LIMITS_EMPTY[1])
    exact = np.where(found, runs[at], True)
    rows = np.arange(q_len)
    if lower_offset is not None:
        lo = np.maximum(lo, rows + int(lower_offset))
    if upper_offset is not None:
        hi = np.minimum(hi, rows + int(upper_offset))
    lo = np.clip(lo, 0, kv_len)
    hi = np.clip(hi, -1, kv_len - 1)
    empty = lo > hi
    lo = np.where(empty, ROW_LIMITS_EMPTY[0], lo)
    hi = np.where(empty, ROW_LIMITS_EMPTY[1], hi)
    return lo.astype(np.int32), hi.astype(np.int32), exact


def row_limit_columns(block_q: int) -> int:
    """The columns ``with_row_limits`` appends to a kernel's table."""
    return 1 + 2 * block_q


def with_row_limits(table, ids, q_len: int, kv_len: int, block_q: int, lower_offset=None,
                    upper_offset=None) -> np.ndarray:
    """The kernel's table [NQB, C] with ``row_limit_columns(block_q)`` columns appended for each
    query block: a flag (1: every row of the block keeps exactly its interval, so the kernel may
    mask the block's partial tiles by the limits; 0: it evaluates the mask), then the first key
    of each of its block_q rows, then the last (rows past q_len keep none)."""
    t = np.asarray(table, dtype=np.int32)
    nqb = -(-q_len // block_q)
    if t.ndim != 2 or t.shape[0] != nqb:
        raise ValueError(f"a table of {nqb} query blocks is [{nqb}, columns], got shape {t.shape}")
    lo, hi, exact = row_limits(ids, q_len, kv_len, lower_offset, upper_offset)
    pad = nqb * block_q - q_len
    lo = np.concatenate([lo, np.full(pad, ROW_LIMITS_EMPTY[0], np.int32)]).reshape(nqb, block_q)
    hi = np.concatenate([hi, np.full(pad, ROW_LIMITS_EMPTY[1], np.int32)]).reshape(nqb, block_q)
    flag = np.concatenate([exact, np.ones(pad, bool)]).reshape(nqb, block_q).all(axis=1)
    return np.ascontiguousarray(np.concatenate([t, flag[:, None].astype(np.int32), lo, hi], axis=1))
