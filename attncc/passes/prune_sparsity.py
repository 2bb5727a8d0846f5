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
    """a·i + Σ a_C·⌊i/C⌋ + b·u + c  REL  0 with u = j (jdiv = 1) or u = ⌊j/jdiv⌋; REL in
    {le, ge, eq} after normalisation (integers).  ⌊·/C⌋ terms cover chunked
    (block-local) masks such as q_idx // 64 == kv_idx // 64."""
    a: int
    b: int
    c: sympy.Expr
    rel: str
    i_floors: tuple = ()      # ((a_C, C), ...)
    jdiv: int = 1


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
    u = _J if a.jdiv == 1 else _floor_sym(_J, a.jdiv)
    lhs = sympy.expand(a.a * _I + a.b * u + a.c + sum(k * _floor_sym(_I, C) for k, C in a.i_floors))
    return f"{lhs} {'<=' if a.rel == 'le' else '>=' if a.rel == 'ge' else '=='} 0"


def _floor_sym(base: sympy.Symbol, C: int) -> sympy.Symbol:
    return sympy.Symbol(f"{base.name}//{C}", integer=True)


def _floor_of(sym: sympy.Symbol):
    """(base, C) for a ⌊base/C⌋ symbol, else None."""
    if "//" in sym.name:
        base, C = sym.name.split("//")
        return (_I if base == _I.name else _J), int(C)
    return None


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
    if n == "floordiv" and sub[0] in (_I, _J) and sub[1].is_Integer and int(sub[1]) > 0:
        return sub[0] if int(sub[1]) == 1 else _floor_sym(sub[0], int(sub[1]))
    return None


def _index_syms(e) -> list:
    return [s for s in e.free_symbols if s in (_I, _J) or _floor_of(s) is not None]


def _is_affine(e) -> bool:
    e = sympy.expand(e)
    syms = _index_syms(e)
    for s in syms:
        c = e.coeff(s)
        if c.free_symbols or not c.is_Integer:
            return False
    rest = e - sum(e.coeff(s) * s for s in syms)
    return not (set(syms) & rest.free_symbols)


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
            syms = _index_syms(d)
            coef = {sym: int(d.coeff(sym)) for sym in syms}
            c = sympy.expand(d - sum(k * sym for sym, k in coef.items()))
            a = coef.get(_I, 0)
            i_floors = tuple(sorted((k, _floor_of(sym)[1]) for sym, k in coef.items()
                                    if _floor_of(sym) is not None and _floor_of(sym)[0] is _I and k))
            j_terms = [(sym, k) for sym, k in coef.items() if k and (sym is _J or (
                _floor_of(sym) is not None and _floor_of(sym)[0] is _J))]
            if len(j_terms) > 1:
                return Node("unknown")        # j twice (j and j // C): not an interval per row
            b, jdiv = 0, 1
            if j_terms:
                sym, b = j_terms[0]
                jdiv = 1 if sym is _J else _floor_of(sym)[1]
            mk = lambda cc, rel: Node("atom", atom=Atom(a, b, cc, rel, i_floors, jdiv))  # noqa: E731
            if n == "lt":                    # d < 0  <=>  d + 1 <= 0
                return mk(c + 1, "le")
            if n == "gt":                    # d > 0  <=>  d - 1 >= 0
                return mk(c - 1, "ge")
            if n == "ne":
                return Node("not", (mk(c, "eq"),))
            return mk(c, n)
        return Node("unknown")

    return conv(mask.results[0])


# ---------------------------------------------------------------------------------------------
# rows as interval lists over [0, T)

def _atom_interval(at: Atom, i: int, T: int, env: dict) -> list:
    c = at.c
    if isinstance(c, sympy.Expr) and c.free_symbols:
        c = c.subs({s: env[s.name] for s in c.free_symbols if s.name in env})
    c = int(c)
    r = at.a * i + c + sum(k * (i // C) for k, C in at.i_floors)     # b·u + r REL 0
    b = at.b
    if b == 0:
        ok = r <= 0 if at.rel == "le" else r >= 0 if at.rel == "ge" else r == 0
        return [(0, T - 1)] if ok and T > 0 else []
    U = T if at.jdiv == 1 else (T - 1) // at.jdiv + 1     # u ranges over [0, U)
    if at.rel == "eq":
        if r % b:
            return []
        lo = hi = -r // b
    else:
        le = at.rel == "le"
        if b < 0:
            b, r, le = -b, -r, not le
        # b·u <= -r  <=>  u <= floor(-r / b);   b·u >= -r  <=>  u >= ceil(-r / b)
        lo, hi = (0, (-r) // b) if le else (-(r // b), U - 1)
    lo, hi = max(lo, 0), min(hi, U - 1)
    if lo > hi:
        return []
    if at.jdiv == 1:
        return [(lo, hi)]
    return [(lo * at.jdiv, min(hi * at.jdiv + at.jdiv - 1, T - 1))]


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
        if n.kind == "atom" and n.atom.b != 0 and n.atom.rel in ("le", "ge") and n.atom.jdiv == 1 \
                and not n.atom.i_floors:
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
