"""The tiles a data-dependent mask surely keeps or surely drops, by interval arithmetic over
whole tiles, from the captured arrays of one call.

``lowering.runtime_tiles`` classifies the tiles of a mask that reads kernel inputs (document
ids, a block layout) once per distinct input.  Evaluating the mask on every element is
O(S x T) numpy work: 0.23 s for document ids at S = 16k on this machine, against a kernel of
well under a millisecond on a GPU.  Here every value of the mask region is instead an interval
``[lo, hi]`` per (query block, key block) pair -- q_idx ranging over the block's rows, kv_idx
over its keys, b and h over every batch and head -- and a comparison is true for every element
of a tile, false for every element, or undecided.  A gather takes the min and max of the array
over the index intervals (a sparse table along each axis).  Decided tiles are full or empty;
``runtime_tiles`` evaluates elements only in the undecided ones, so the map it returns is the
same as before (tests/test_tile_intervals.py checks it against the element-by-element map),
at the cost of the partial tiles and of tiles the rules below cannot decide.

Each rule is sound for the reference interpreter's semantics (``attncc.reference._Interp``):
integer and float arithmetic with the interval's corners (rounding is monotone, so the
corners bound every element), gathers clipped into the array as the interpreter clips them.
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


def classify(mask, arrays: list, S: int, T: int, B: int, H: int, block_q: int, block_k: int,
             env: dict) -> Optional[np.ndarray]:
    """int8 [ceil(S / block_q), ceil(T / block_k)]: FULL where every element of the tile (and
    every batch and head) is kept, EMPTY where none is, UNDECIDED (-1) elsewhere; None when
    the mask has an operation without an interval rule."""
    from attncc.passes.prune_sparsity import EMPTY, FULL

    arrays = [np.asarray(a) for a in arrays]
    if any(a.dtype.kind == "f" and np.isnan(a).any() for a in arrays):
        return None
    nq, nk = -(-S // block_q), -(-T // block_k)
    q0 = np.arange(nq, dtype=np.int64).reshape(-1, 1) * block_q
    k0 = np.arange(nk, dtype=np.int64).reshape(1, -1) * block_k
    args = [(np.zeros((1, 1), np.int64), np.full((1, 1), B - 1, np.int64)),
            (np.zeros((1, 1), np.int64), np.full((1, 1), H - 1, np.int64)),
            (q0, np.minimum(q0 + block_q, S) - 1),
            (k0, np.minimum(k0 + block_k, T) - 1)] + arrays
    vals = dict(zip(mask.args, args))
    try:
        with np.errstate(all="ignore"):
            for op in mask.ops:
                if op.name in ("attn.return", "attn.yield"):
                    lo, hi = vals[op.operands[0]]
                    break
                vals[op.results[0]] = _rule(op, [vals[v] for v in op.operands], env)
            else:
                return None
    except _NoRule:
        return None
    lo = np.broadcast_to(lo, (nq, nk))
    hi = np.broadcast_to(hi, (nq, nk))
    out = np.full((nq, nk), UNDECIDED, dtype=np.int8)
    out[lo >= 1] = FULL
    out[hi <= 0] = EMPTY
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


def _rule(op, a: list, env: dict):
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
        else:
            f = lambda x: np.divide(x, c)  # noqa: E731
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
        return _gather(a[0], a[1:])
    raise _NoRule(n)


def _gather(src, idx: list):
    """min and max of ``src`` over the box of (clipped) index intervals, per tile."""
    src = np.asarray(src)
    if src.dtype == bool:
        src = src.astype(np.int64)
    if len(idx) != src.ndim or any(not isinstance(x, tuple) for x in idx):
        raise _NoRule("gather")
    if src.dtype.kind not in "iuf":
        raise _NoRule("gather")
    lo_arr = src.astype(np.float64 if src.dtype.kind == "f" else np.int64)
    hi_arr = lo_arr
    tile = (1, 1)              # the tile axes (broadcast) in front of the data axes left
    lo_arr = lo_arr.reshape((1, 1) + lo_arr.shape)
    hi_arr = hi_arr.reshape((1, 1) + hi_arr.shape)
    for (ilo, ihi), d in zip(idx, src.shape):
        ilo = np.clip(np.asarray(ilo), 0, d - 1).astype(np.int64)
        ihi = np.clip(np.asarray(ihi), 0, d - 1).astype(np.int64)
        tile = (max(tile[0], ilo.shape[0], ihi.shape[0]), max(tile[1], ilo.shape[1], ihi.shape[1]))
        lo_arr = _range_reduce(lo_arr, ilo, ihi, tile, np.minimum)
        hi_arr = _range_reduce(hi_arr, ilo, ihi, tile, np.maximum)
    return lo_arr, hi_arr


def _range_reduce(arr, ilo, ihi, tile, f):
    """arr [tq, tk, n, rest...] reduced by f over [ilo, ihi] of axis 2, per tile: [TQ, TK, rest...]."""
    n = arr.shape[2]
    levels = [arr]
    span = 1
    while span * 2 <= n:
        prev = levels[-1]
        levels.append(f(prev[:, :, :n - 2 * span + 1], prev[:, :, span:n - span + 1]))
        span *= 2
    if sum(x.size for x in levels) > TABLE_LIMIT:
        raise _NoRule("gather")
    ilo = np.broadcast_to(ilo, tile)
    ihi = np.broadcast_to(ihi, tile)
    length = ihi - ilo + 1
    k = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
    out = None
    tq = np.arange(tile[0]).reshape(-1, 1) if arr.shape[0] > 1 else np.zeros((1, 1), np.int64)
    tk = np.arange(tile[1]).reshape(1, -1) if arr.shape[1] > 1 else np.zeros((1, 1), np.int64)
    for lv in np.unique(k):
        table = levels[int(lv)]
        sel = k == lv
        a = table[tq, tk, np.where(sel, ilo, 0)]
        b = table[tq, tk, np.where(sel, ihi - (1 << int(lv)) + 1, 0)]
        part = f(a, b)
        out = part if out is None else np.where(sel.reshape(sel.shape + (1,) * (part.ndim - 2)), part, out)
    return np.broadcast_to(out, tile + out.shape[2:])
