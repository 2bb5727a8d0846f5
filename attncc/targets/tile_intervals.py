"""The tiles a data-dependent mask surely keeps or surely drops, by interval arithmetic over
whole tiles, from the captured arrays of one call.

``lowering.runtime_tiles`` classifies the tiles of a mask that reads kernel inputs (document
ids, a block layout) once per distinct input.  Evaluating the mask on every element is
O(S x T) numpy work: 0.23 s for document ids at S = 16k on this machine, against a kernel of
well under a millisecond on a GPU.  Here every value of the mask region is instead an interval
``[lo, hi]`` per (query block, key block) pair -- q_idx ranging over the block's rows, kv_idx
over its keys, b and h over every batch and head -- and a comparison is true for every element
of a tile, false for every element, or undecided.  A gather takes the min and max of the array
over the index intervals (a sparse table along each axis).  Decided tiles are full or empty.
``decide`` cuts each undecided tile into sub-boxes decided the same way: a tile with a kept
sub-box and a dropped one is partial without any element evaluated (a document end, the
causal diagonal); only sub-boxes of at most 64 pairs that intervals cannot settle are
evaluated element by element.  So the map is the same as before (tests/test_tile_intervals.py
checks it against the element-by-element map), at a fraction of the work: 1.3-3.5 ms instead of
0.22 s for document ids at S = 16k here (benchmarks/block_map.py).

Each rule is sound for the reference interpreter's semantics (``attncc.reference._Interp``):
integer and float arithmetic with the interval's corners in the dtypes the interpreter uses
(rounding is monotone, so the corners bound every element), gathers clipped into the array as
the interpreter clips them.
An operation without a rule here (a transcendental function, a division by a non-constant,
a float array holding NaN) makes ``classify`` return None: every tile is then evaluated.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# the most elements a gather's sparse table may hold (beyond it: evaluate every element)
TABLE_LIMIT = 1 << 24
UNDECIDED = -1


class _NoRule(Exception):
    """An operation the interval rules do not cover."""


def _boxes(mask, arrays: list, B: int, H: int, qlo, qhi, klo, khi, env: dict, tables: dict):
    """(lo, hi) of the mask over boxes of rows [qlo, qhi] x keys [klo, khi] (arrays of shape
    (n, 1), or (nq, 1) and (1, nk) for a grid), every batch and head; None without a rule.
    ``tables`` keeps the sparse tables of the captured arrays across calls on the same arrays."""
    args = [(np.zeros((1, 1), np.int64), np.full((1, 1), B - 1, np.int64)),
            (np.zeros((1, 1), np.int64), np.full((1, 1), H - 1, np.int64)),
            (qlo, qhi), (klo, khi)] + arrays
    vals = dict(zip(mask.args, args))
    try:
        with np.errstate(all="ignore"):
            for op in mask.ops:
                if op.name in ("attn.return", "attn.yield"):
                    return vals[op.operands[0]]
                vals[op.results[0]] = _rule(op, [vals[v] for v in op.operands], env, tables)
    except _NoRule:
        return None
    return None


def _usable(arrays: list) -> Optional[list]:
    arrays = [np.asarray(a) for a in arrays]
    if any(a.dtype.kind == "f" and np.isnan(a).any() for a in arrays):
        return None
    return arrays


def classify(mask, arrays: list, S: int, T: int, B: int, H: int, block_q: int, block_k: int,
             env: dict) -> Optional[np.ndarray]:
    """int8 [ceil(S / block_q), ceil(T / block_k)]: FULL where every element of the tile (and
    every batch and head) is kept, EMPTY where none is, UNDECIDED (-1) elsewhere; None when
    the mask has an operation without an interval rule."""
    arrays = _usable(arrays)
    return None if arrays is None else _grid(mask, arrays, S, T, B, H, block_q, block_k, env, {})


def _grid(mask, arrays: list, S: int, T: int, B: int, H: int, block_q: int, block_k: int, env: dict,
          tables: dict) -> Optional[np.ndarray]:
    from attncc.passes.prune_sparsity import EMPTY, FULL

    nq, nk = -(-S // block_q), -(-T // block_k)
    q0 = np.arange(nq, dtype=np.int64).reshape(-1, 1) * block_q
    k0 = np.arange(nk, dtype=np.int64).reshape(1, -1) * block_k
    r = _boxes(mask, arrays, B, H, q0, np.minimum(q0 + block_q, S) - 1, k0, np.minimum(k0 + block_k, T) - 1, env,
               tables)
    if r is None:
        return None
    lo = np.broadcast_to(r[0], (nq, nk))
    hi = np.broadcast_to(r[1], (nq, nk))
    out = np.full((nq, nk), UNDECIDED, dtype=np.int8)
    out[lo >= 1] = FULL
    out[hi <= 0] = EMPTY
    return out


SPLIT = 4           # sub-boxes a side when a tile (or sub-box) is undecided
ELEMENTS_BELOW = 64  # a sub-box of at most this many (q, kv) pairs is evaluated element by element


def _split(qlo, qhi, klo, khi, parent):
    """Each box cut into up to SPLIT x SPLIT sub-boxes (flat arrays)."""
    def cuts(lo, hi):
        step = -(-(hi - lo + 1) // SPLIT)
        a = lo[:, None] + np.arange(SPLIT)[None, :] * step[:, None]
        return a, np.minimum(a + step[:, None] - 1, hi[:, None])
    qa, qb = cuts(qlo, qhi)
    ka, kb = cuts(klo, khi)
    shape = (len(qlo), SPLIT, SPLIT)
    qa, qb = np.broadcast_to(qa[:, :, None], shape), np.broadcast_to(qb[:, :, None], shape)
    ka, kb = np.broadcast_to(ka[:, None, :], shape), np.broadcast_to(kb[:, None, :], shape)
    par = np.broadcast_to(parent[:, None, None], shape)
    ok = (qa <= qb) & (ka <= kb)
    return qa[ok], qb[ok], ka[ok], kb[ok], par[ok]


def decide(mask, arrays: list, S: int, T: int, B: int, H: int, block_q: int, block_k: int, env: dict,
           elements) -> Optional[np.ndarray]:
    """The exact tile map: classify's, with each undecided tile cut into sub-boxes decided the
    same way (a tile with a kept and a dropped sub-box is partial, no element evaluated), down
    to sub-boxes of at most ELEMENTS_BELOW pairs, which ``elements(qlo, qhi, klo, khi)`` (flat
    arrays) evaluates: (any kept, all kept) per box.  None when the mask has an operation
    without an interval rule."""
    from attncc.passes.prune_sparsity import EMPTY, FULL, PARTIAL

    arrays = _usable(arrays)
    if arrays is None:
        return None
    tables: dict = {}
    out = _grid(mask, arrays, S, T, B, H, block_q, block_k, env, tables)
    if out is None:
        return None
    todo = np.argwhere(out == UNDECIDED)
    if not len(todo):
        return out
    m = len(todo)
    kept = np.zeros(m, bool)           # some element of the tile is kept
    dropped = np.zeros(m, bool)        # some element is dropped
    qlo = todo[:, 0] * block_q
    qhi = np.minimum(qlo + block_q, S) - 1
    klo = todo[:, 1] * block_k
    khi = np.minimum(klo + block_k, T) - 1
    parent = np.arange(m)

    def by_elements(sel):
        any_, all_ = elements(qlo[sel], qhi[sel], klo[sel], khi[sel])
        kept[parent[sel][any_]] = True
        dropped[parent[sel][~all_]] = True

    while len(parent):
        qlo, qhi, klo, khi, parent = _split(qlo, qhi, klo, khi, parent)
        r = _boxes(mask, arrays, B, H, qlo[:, None], qhi[:, None], klo[:, None], khi[:, None], env, tables)
        if r is None:
            # (a gather's table over this many boxes is over TABLE_LIMIT: their elements instead)
            for c in range(0, len(parent), 1024):
                by_elements(slice(c, c + 1024))
            break
        lo = np.broadcast_to(r[0], (len(parent), 1))[:, 0]
        hi = np.broadcast_to(r[1], (len(parent), 1))[:, 0]
        kept[parent[lo >= 1]] = True
        dropped[parent[hi <= 0]] = True
        open_ = (lo < 1) & (hi > 0) & ~(kept & dropped)[parent]
        qlo, qhi, klo, khi, parent = qlo[open_], qhi[open_], klo[open_], khi[open_], parent[open_]
        small = (qhi - qlo + 1) * (khi - klo + 1) <= ELEMENTS_BELOW
        if small.any():
            by_elements(small)
            qlo, qhi, klo, khi, parent = qlo[~small], qhi[~small], klo[~small], khi[~small], parent[~small]
    out[todo[:, 0], todo[:, 1]] = np.where(kept & dropped, PARTIAL, np.where(kept, FULL, EMPTY))
    return out


def _const(x):
    a = np.asarray(x).reshape(1, 1)
    return a, a


def _is_const(v) -> bool:
    lo, hi = v
    return lo.size == 1 and hi.size == 1 and lo.item() == hi.item()


def _corners(f, a, b):
    c = [f(x, y) for x in a for y in b]
    return np.minimum(np.minimum(c[0], c[1]), np.minimum(c[2], c[3])), \
        np.maximum(np.maximum(c[0], c[1]), np.maximum(c[2], c[3]))


def _truth(lo_true, hi_true):
    """A boolean interval: lo 1 where surely true, hi 0 where surely false."""
    return lo_true.astype(np.int64), hi_true.astype(np.int64)


def _rule(op, a: list, env: dict, tables: dict):
    from attncc.reference import eval_scalar

    n = op.short
    if n == "constant":
        v = eval_scalar(op.attrs["value"], env)
        dt = op.attrs["dtype"]
        if dt.is_bool:
            return _const(np.int64(bool(v)))
        return _const(np.float64(v) if dt.is_float else np.int64(int(v)))
    if any(not isinstance(x, tuple) for x in (a[1:] if n == "gather" else a)):
        raise _NoRule(n)           # a captured array used whole, not through a gather
    if n == "add":
        return a[0][0] + a[1][0], a[0][1] + a[1][1]
    if n == "sub":
        return a[0][0] - a[1][1], a[0][1] - a[1][0]
    if n == "mul":
        return _corners(np.multiply, a[0], a[1])
    if n in ("max", "min"):
        f = np.maximum if n == "max" else np.minimum
        return f(a[0][0], a[1][0]), f(a[0][1], a[1][1])
    if n == "neg":
        return -a[0][1], -a[0][0]
    if n == "abs":
        lo, hi = a[0]
        return (np.where(lo >= 0, lo, np.where(hi <= 0, -hi, 0)),
                np.maximum(np.abs(lo), np.abs(hi)))
    if n in ("div", "floordiv", "mod"):
        if not _is_const(a[1]):
            raise _NoRule(n)
        c = a[1][0].item()
        lo, hi = a[0]
        if n == "mod":
            if not (isinstance(c, (int, np.integer)) and c > 0):
                raise _NoRule(n)
            same = np.floor_divide(lo, c) == np.floor_divide(hi, c)
            return np.where(same, np.mod(lo, c), 0), np.where(same, np.mod(hi, c), c - 1)
        if c == 0:
            raise _NoRule(n)
        if n == "floordiv":
            f = lambda x: np.floor_divide(x, c)  # noqa: E731
        elif op.results[0].type.dtype.is_int:
            f = lambda x: np.trunc(np.asarray(x, np.float64) / c).astype(np.int64)  # noqa: E731
        else:                   # (by the constant's array, as the element evaluation divides)
            f = lambda x: np.divide(x, a[1][0])  # noqa: E731
        # monotone in x: increasing for c > 0, decreasing for c < 0
        return (f(lo), f(hi)) if c > 0 else (f(hi), f(lo))
    if n in ("lt", "le", "gt", "ge"):
        (alo, ahi), (blo, bhi) = a
        if n in ("gt", "ge"):                       # a > b is b < a
            (alo, ahi), (blo, bhi) = (blo, bhi), (alo, ahi)
        if n in ("lt", "gt"):
            return _truth(ahi < blo, alo < bhi)
        return _truth(ahi <= blo, alo <= bhi)
    if n in ("eq", "ne"):
        (alo, ahi), (blo, bhi) = a
        single = (alo == ahi) & (blo == bhi) & (alo == blo)
        apart = (ahi < blo) | (bhi < alo)
        return _truth(single, ~apart) if n == "eq" else _truth(apart, ~single)
    if n == "and":
        return np.minimum(a[0][0], a[1][0]), np.minimum(a[0][1], a[1][1])
    if n == "or":
        return np.maximum(a[0][0], a[1][0]), np.maximum(a[0][1], a[1][1])
    if n == "not":
        return 1 - a[0][1], 1 - a[0][0]
    if n == "select":
        (clo, chi), x, y = a
        lo = np.where(clo >= 1, x[0], np.where(chi <= 0, y[0], np.minimum(x[0], y[0])))
        hi = np.where(clo >= 1, x[1], np.where(chi <= 0, y[1], np.maximum(x[1], y[1])))
        return lo, hi
    if n == "cast":
        to = op.attrs["to"]
        lo, hi = a[0]
        if to.is_bool:
            return _truth((lo > 0) | (hi < 0), ~((lo == 0) & (hi == 0)))
        if to.is_float:
            return lo.astype(np.float64), hi.astype(np.float64)
        if lo.dtype.kind == "f":                     # truncation toward zero is monotone
            return np.trunc(lo).astype(np.int64), np.trunc(hi).astype(np.int64)
        return lo, hi
    if n == "gather":
        return _gather(a[0], a[1:], tables)
    raise _NoRule(n)


def _gather(src, idx: list, tables: dict):
    """min and max of ``src`` over the box of (clipped) index intervals, per tile."""
    owner = src
    key = id(src)
    src = np.asarray(src)
    if src.dtype == bool:
        src = src.astype(np.int64)
    if len(idx) != src.ndim or any(not isinstance(x, tuple) for x in idx):
        raise _NoRule("gather")
    if src.dtype.kind not in "iuf":
        raise _NoRule("gather")
    # floats keep their dtype: the element evaluation computes in it (float32 + float32 rounds
    # to float32), and the corners must round the same way to bound every element
    lo_arr = src if src.dtype.kind == "f" else src.astype(np.int64)
    # the index intervals clipped into the array, as the element evaluation clips the indices
    idx = [(np.clip(np.asarray(a), 0, d - 1).astype(np.int64), np.clip(np.asarray(b), 0, d - 1).astype(np.int64))
           for (a, b), d in zip(idx, src.shape)]
    if src.ndim == 2:
        # a 2-D array (a block layout): one 2-D sparse table, four lookups a box; no per-box
        # rows of the array (over many sub-boxes, those would outgrow TABLE_LIMIT)
        try:
            return (_range_2d(lo_arr, idx, np.minimum, tables, (key, "min2"), owner),
                    _range_2d(lo_arr, idx, np.maximum, tables, (key, "max2"), owner))
        except _NoRule:
            pass                # over TABLE_LIMIT: one axis at a time, below
    hi_arr = lo_arr
    tile = (1, 1)              # the tile axes (broadcast) in front of the data axes left
    lo_arr = lo_arr.reshape((1, 1) + lo_arr.shape)
    hi_arr = hi_arr.reshape((1, 1) + hi_arr.shape)
    for ilo, ihi in idx:
        tile = (max(tile[0], ilo.shape[0], ihi.shape[0]), max(tile[1], ilo.shape[1], ihi.shape[1]))
        # (the first axis's tables are the array's own: kept for the other gathers of it)
        first = lo_arr.shape[:2] == (1, 1) and lo_arr.ndim == src.ndim + 2
        lo_arr = _range_reduce(lo_arr, ilo, ihi, tile, np.minimum, tables, (key, "min") if first else None, owner)
        hi_arr = _range_reduce(hi_arr, ilo, ihi, tile, np.maximum, tables, (key, "max") if first else None, owner)
    return lo_arr, hi_arr


def _range_reduce(arr, ilo, ihi, tile, f, tables: dict, key, owner=None):
    """arr [tq, tk, n, rest...] reduced by f over [ilo, ihi] of axis 2, per tile: [TQ, TK, rest...]
    (a sparse table: level l holds f over 2^l consecutive entries)."""
    n = arr.shape[2]
    hit = tables.get(key) if key is not None else None
    # (the entry holds the array it was built from: its id cannot be reused while it lives)
    levels = hit[1] if hit is not None and hit[0] is owner else None
    if levels is None:
        levels = [arr]
        span = 1
        while span * 2 <= n:
            prev = levels[-1]
            levels.append(f(prev[:, :, :n - 2 * span + 1], prev[:, :, span:n - span + 1]))
            span *= 2
        if sum(x.size for x in levels) > TABLE_LIMIT:
            raise _NoRule("gather")
        if key is not None:
            tables[key] = (owner, levels)
    ilo = np.broadcast_to(ilo, tile)
    ihi = np.broadcast_to(ihi, tile)
    length = ihi - ilo + 1
    k = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
    out = None
    tq = np.arange(tile[0]).reshape(-1, 1) if arr.shape[0] > 1 else np.zeros((1, 1), np.int64)
    tk = np.arange(tile[1]).reshape(1, -1) if arr.shape[1] > 1 else np.zeros((1, 1), np.int64)
    for lv in range(int(k.min()), int(k.max()) + 1):
        sel = k == lv
        if not sel.any():
            continue
        table = levels[lv]
        a = table[tq, tk, np.where(sel, ilo, 0)]
        b = table[tq, tk, np.where(sel, ihi - (1 << lv) + 1, 0)]
        part = f(a, b)
        out = part if out is None else np.where(sel.reshape(sel.shape + (1,) * (part.ndim - 2)), part, out)
    return np.broadcast_to(out, tile + out.shape[2:])


def _range_2d(arr, idx, f, tables: dict, key, owner):
    """f of ``arr`` [n0, n1] over the boxes [ilo0, ihi0] x [ilo1, ihi1] (broadcast shapes):
    level (a, b) of the table holds f over 2^a rows x 2^b columns, built on demand."""
    (lo0, hi0), (lo1, hi1) = idx
    shape = np.broadcast_shapes(lo0.shape, hi0.shape, lo1.shape, hi1.shape)
    lo0, hi0, lo1, hi1 = (np.broadcast_to(x, shape) for x in (lo0, hi0, lo1, hi1))
    hit = tables.get(key)
    levels = hit[1] if hit is not None and hit[0] is owner else None
    if levels is None:
        levels = {(0, 0): arr, "size": arr.size}
        tables[key] = (owner, levels)

    def level(a, b):
        t = levels.get((a, b))
        if t is None:
            if b > 0:
                prev, span = level(a, b - 1), 1 << (b - 1)
                t = f(prev[:, :prev.shape[1] - span], prev[:, span:])
            else:
                prev, span = level(a - 1, 0), 1 << (a - 1)
                t = f(prev[:prev.shape[0] - span], prev[span:])
            levels["size"] += t.size
            if levels["size"] > TABLE_LIMIT:
                raise _NoRule("gather")
            levels[(a, b)] = t
        return t

    k0 = np.floor(np.log2(hi0 - lo0 + 1)).astype(np.int64)
    k1 = np.floor(np.log2(hi1 - lo1 + 1)).astype(np.int64)
    out = np.empty(shape, dtype=arr.dtype)
    code = k0 * 64 + k1                  # (levels below 64: arrays of < 2^64 entries a side)
    for c in np.flatnonzero(np.bincount(code.ravel())):
        a, b = divmod(int(c), 64)
        sel = code == c
        t = level(int(a), int(b))
        r0, r1 = lo0[sel], hi0[sel] - (1 << int(a)) + 1
        c0, c1 = lo1[sel], hi1[sel] - (1 << int(b)) + 1
        out[sel] = f(f(t[r0, c0], t[r0, c1]), f(t[r1, c0], t[r1, c1]))
    return out
