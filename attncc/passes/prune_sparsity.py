"""prune-sparsity: classify every (query block, key block) tile as empty, full or partial.

Masks built from comparisons that are affine in (q_idx, kv_idx) -- ``a·q_idx +
b·kv_idx + c REL 0`` with integer a, b and c a constant or a symbolic length such
as ``T - S`` -- and their and/or/not are decided exactly.  For one query row i an
atom keeps an interval of keys whose ends are affine in i (solved with sympy, so
they stay symbolic in S and T); and/or/not become set operations on interval
lists, so a row's kept keys are a union of intervals.  A tile is *full* when every
row keeps all its keys, *empty* when no row keeps any, else *partial*.  Atoms that
are not affine (``%``, ``//``, reads of runtime tensors) are unknown: a three-valued
(sure, maybe) pair keeps the classification sound -- such tiles become partial
unless the rest of the formula decides them.

The pass records on the flash op:
    sparsity = "affine"  (every atom decided) | "bounded" (some unknown) | "none"
    key_set  = the kept keys of row q_idx, as text (symbolic)
and ``classify_tiles`` gives the tile map for concrete shapes and block sizes, used
by the targets to skip empty tiles and drop the mask on full ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import sympy

from attncc.ir.core import Function, Region, Value
from attncc.ir.types import DType
from attncc.passes.pipeline import Pass, register_pass

EMPTY, PARTIAL, FULL = 0, 1, 2

_I, _J = sympy.Symbol("q_idx", integer=True), sympy.Symbol("kv_idx", integer=True)


# ---------------------------------------------------------------------------------------------
# the formula

@dataclass(frozen=True)
class Atom:
    """a·i + b·j + c  REL  0, REL in {le, ge, eq} after normalisation (integers)."""
    a: int
    b: int
    c: sympy.Expr
    rel: str


@dataclass(frozen=True)
class Node:
    kind: str                      # "atom" | "and" | "or" | "not" | "const" | "unknown"
    children: tuple = ()
    atom: Optional[Atom] = None
    value: bool = False

    def text(self) -> str:
        if self.kind == "atom":
            return _atom_text(self.atom)
        if self.kind == "const":
            return "true" if self.value else "false"
        if self.kind == "unknown":
            return "?"
        if self.kind == "not":
            return "!(" + self.children[0].text() + ")"
        op = " & " if self.kind == "and" else " | "
        return "(" + op.join(c.text() for c in self.children) + ")"

    def decided(self) -> bool:
        if self.kind == "unknown":
            return False
        return all(c.decided() for c in self.children)


def _atom_text(a: Atom) -> str:
    lhs = sympy.expand(a.a * _I + a.b * _J + a.c)
    return f"{lhs} {'<=' if a.rel == 'le' else '>=' if a.rel == 'ge' else '=='} 0"


def _affine(v: Value, args: dict):
    """v as an integer-affine sympy expression of q_idx, kv_idx (else None)."""
    op = v.owner
    if op is None:
        return args.get(v)
    n = op.short
    if n == "constant":
        val = op.attrs["value"]
        if isinstance(val, bool):
            return None
        if isinstance(val, sympy.Expr):
            return val if val.is_integer is not False else None
        if isinstance(val, float) and not val.is_integer():
            return None
        return sympy.Integer(int(val))
    if n == "cast" and op.attrs["to"] == DType.i32 and op.operands[0].type.dtype.is_int:
        return _affine(op.operands[0], args)
    sub = [_affine(w, args) for w in op.operands]
    if any(s is None for s in sub):
        return None
    if n == "add":
        return sub[0] + sub[1]
    if n == "sub":
        return sub[0] - sub[1]
    if n == "neg":
        return -sub[0]
    if n == "mul":
        e = sympy.expand(sub[0] * sub[1])
        return e if _is_affine(e) else None
    return None


def _is_affine(e) -> bool:
    e = sympy.expand(e)
    for s in (_I, _J):
        c = e.coeff(s)
        if c.free_symbols or not c.is_Integer:
            return False
    rest = e - e.coeff(_I) * _I - e.coeff(_J) * _J
    return not ({_I, _J} & rest.free_symbols)


def analyze_mask(mask: Optional[Region]) -> Optional[Node]:
    """The mask region as a formula over affine atoms (unknown where not affine)."""
    if mask is None:
        return None
    args = {mask.args[2]: _I, mask.args[3]: _J}

    def conv(v: Value) -> Node:
        op = v.owner
        if op is None:
            return Node("unknown")
        n = op.short
        if n == "constant" and isinstance(op.attrs["value"], bool):
            return Node("const", value=op.attrs["value"])
        if n in ("and", "or"):
            return Node(n, (conv(op.operands[0]), conv(op.operands[1])))
        if n == "not":
            return Node("not", (conv(op.operands[0]),))
        if n in ("lt", "le", "gt", "ge", "eq", "ne"):
            lhs, rhs = (_affine(w, args) for w in op.operands)
            if lhs is None or rhs is None:
                return Node("unknown")
            d = sympy.expand(lhs - rhs)
            a, b = d.coeff(_I), d.coeff(_J)
            c = sympy.expand(d - a * _I - b * _J)
            a, b = int(a), int(b)
            if n == "lt":                    # d < 0  <=>  d + 1 <= 0
                return Node("atom", atom=Atom(a, b, c + 1, "le"))
            if n == "gt":                    # d > 0  <=>  d - 1 >= 0
                return Node("atom", atom=Atom(a, b, c - 1, "ge"))
            if n == "ne":
                return Node("not", (Node("atom", atom=Atom(a, b, c, "eq")),))
            return Node("atom", atom=Atom(a, b, c, n))
        return Node("unknown")

    return conv(mask.results[0])


# ---------------------------------------------------------------------------------------------
# rows as interval lists over [0, T)

def _atom_interval(at: Atom, i: int, T: int, env: dict) -> list:
    c = at.c
    if isinstance(c, sympy.Expr) and c.free_symbols:
        c = c.subs({s: env[s.name] for s in c.free_symbols if s.name in env})
    c = int(c)
    r = at.a * i + c                      # b·j + r REL 0
    b = at.b
    if b == 0:
        ok = r <= 0 if at.rel == "le" else r >= 0 if at.rel == "ge" else r == 0
        return [(0, T - 1)] if ok else []
    if at.rel == "eq":
        if r % b:
            return []
        j = -r // b
        return [(j, j)] if 0 <= j < T else []
    # b·j REL -r
    le = at.rel == "le"
    if b < 0:
        b, r, le = -b, -r, not le
    # b·j <= -r  <=>  j <= floor(-r / b);   b·j >= -r  <=>  j >= ceil(-r / b)
    if le:
        hi = (-r) // b
        return [(0, min(hi, T - 1))] if hi >= 0 else []
    lo = -((r) // b)                       # ceil(-r/b)
    return [(max(lo, 0), T - 1)] if lo <= T - 1 else []


def _intersect(x: list, y: list) -> list:
    out, a, b = [], 0, 0
    while a < len(x) and b < len(y):
        lo, hi = max(x[a][0], y[b][0]), min(x[a][1], y[b][1])
        if lo <= hi:
            out.append((lo, hi))
        if x[a][1] < y[b][1]:
            a += 1
        else:
            b += 1
    return out


def _union(x: list, y: list) -> list:
    out = []
    for lo, hi in sorted(x + y):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _complement(x: list, T: int) -> list:
    out, cur = [], 0
    for lo, hi in x:
        if lo > cur:
            out.append((cur, lo - 1))
        cur = hi + 1
    if cur <= T - 1:
        out.append((cur, T - 1))
    return out


def row_sets(node: Node, i: int, T: int, env: dict) -> tuple[list, list]:
    """(sure, maybe): keys surely kept and keys possibly kept by row i."""
    k = node.kind
    if k == "atom":
        s = _atom_interval(node.atom, i, T, env)
        return s, s
    if k == "const":
        s = [(0, T - 1)] if node.value and T > 0 else []
        return s, s
    if k == "unknown":
        return [], [(0, T - 1)] if T > 0 else []
    if k == "not":
        s, m = row_sets(node.children[0], i, T, env)
        return _complement(m, T), _complement(s, T)
    (s1, m1), (s2, m2) = (row_sets(c, i, T, env) for c in node.children)
    if k == "and":
        return _intersect(s1, s2), _intersect(m1, m2)
    return _union(s1, s2), _union(m1, m2)


def classify_tiles(node: Optional[Node], S: int, T: int, block_q: int, block_k: int, env: dict) -> np.ndarray:
    """Tile map [ceil(S/BQ), ceil(T/BK)] of EMPTY / PARTIAL / FULL.  A tile at the
    sequence edge covers only the rows and keys that exist."""
    nq, nk = -(-S // block_q), -(-T // block_k)
    if node is None:
        return np.full((nq, nk), FULL, dtype=np.int8)
    full = np.ones((nq, nk), dtype=bool)
    any_ = np.zeros((nq, nk), dtype=bool)
    starts = np.arange(nk) * block_k
    ends = np.minimum(starts + block_k, T) - 1
    for i in range(S):
        qb = i // block_q
        sure, maybe = row_sets(node, i, T, env)
        row_full = np.zeros(nk, dtype=bool)
        for lo, hi in sure:
            row_full |= (starts >= lo) & (ends <= hi)
        full[qb] &= row_full
        for lo, hi in maybe:
            any_[qb] |= (starts <= hi) & (ends >= lo)
    out = np.full((nq, nk), PARTIAL, dtype=np.int8)
    out[~any_] = EMPTY
    out[full & any_] = FULL
    if S == 0 or T == 0:
        out[:] = EMPTY
    return out


def brute_force_tiles(keep: np.ndarray, block_q: int, block_k: int) -> np.ndarray:
    """The tile map from an element mask [S, T] (evaluating every element)."""
    S, T = keep.shape
    nq, nk = -(-S // block_q), -(-T // block_k)
    out = np.empty((nq, nk), dtype=np.int8)
    for a in range(nq):
        for c in range(nk):
            t = keep[a * block_q:(a + 1) * block_q, c * block_k:(c + 1) * block_k]
            out[a, c] = FULL if t.all() else EMPTY if not t.any() else PARTIAL
    return out


def key_set_text(node: Optional[Node], kv_len: str = "T") -> str:
    """The kept keys of row q_idx, symbolic (one interval when the mask is a band)."""
    if node is None:
        return "all"
    atoms = []

    def conj(n: Node) -> bool:
        if n.kind == "and":
            return all(conj(c) for c in n.children)
        if n.kind == "atom" and n.atom.b != 0 and n.atom.rel in ("le", "ge"):
            atoms.append(n.atom)
            return True
        return False

    if not conj(node):
        return node.text()
    lows, highs = [], []
    for at in atoms:
        bound = sympy.expand(-(at.a * _I + at.c) / at.b)
        le = (at.rel == "le") == (at.b > 0)
        (highs if le else lows).append(sympy.floor(bound) if le else sympy.ceiling(bound))
    lo = sympy.Max(0, *lows) if lows else sympy.Integer(0)
    hi = " , ".join(str(h) for h in highs)
    hi = f"min({hi}, {kv_len} - 1)" if highs else f"{kv_len} - 1"
    return f"[{lo}, {hi}]"


def density(tiles: np.ndarray) -> float:
    return float(np.mean(tiles != EMPTY)) if tiles.size else 0.0


@register_pass
@dataclass(frozen=True)
class PruneSparsity(Pass):
    name = "prune-sparsity"

    def apply(self, func: Function) -> Function:
        for op in func.ops:
            if op.name != "attn.flash":
                continue
            node = analyze_mask(op.region("mask"))
            if node is None:
                op.attrs["sparsity"] = "none"
                continue
            op.attrs["sparsity"] = "affine" if node.decided() else "bounded"
            op.attrs["key_set"] = key_set_text(node, str(op.operands[1].type.shape[2]))
        return func
