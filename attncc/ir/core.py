"""Values, ops, regions, functions and modules, and the op definitions.

The IR is SSA: every :class:`Value` is a function argument, a region argument
or one result of one :class:`Op`.  Ops are registered in ``OPS`` by name with
a type-inference rule; :func:`make_op` infers result types, and the verifier
(``attncc.ir.verify``) re-checks a whole function.  Dataflow queries use a
networkx graph built on demand (:meth:`Function.graph`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import networkx as nx
import sympy

from attncc.errors import DTypeError, ShapeError, VerifyError
from attncc.ir.types import DType, TensorType, broadcast_shapes, dims_equal, dim_str


class Value:
    """An SSA value: its type, an optional name hint, and who defines it."""

    __slots__ = ("type", "hint", "owner", "index")

    def __init__(self, type: TensorType, hint: str | None = None, owner=None, index: int = 0):
        self.type = type
        self.hint = hint
        self.owner = owner      # Op, or None for a function/region argument
        self.index = index

    def __repr__(self) -> str:
        return f"Value({self.hint or '?'}: {self.type})"


class Region:
    """A block of scalar ops with arguments, ended by ``attn.yield``."""

    def __init__(self, name: str, args: list[Value], ops: list["Op"]):
        self.name = name
        self.args = args
        self.ops = ops

    @property
    def results(self) -> list[Value]:
        return self.ops[-1].operands if self.ops and self.ops[-1].name == "attn.yield" else []


class Op:
    __slots__ = ("name", "operands", "attrs", "results", "regions", "line")

    def __init__(self, name: str, operands: list[Value], attrs: dict, result_types: list[TensorType],
                 regions: list[Region] | None = None, line: int | None = None):
        self.name = name
        self.operands = list(operands)
        self.attrs = dict(attrs)
        self.regions = list(regions or [])
        self.results = [Value(t, None, self, i) for i, t in enumerate(result_types)]
        self.line = line

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise VerifyError(f"{self.name} has {len(self.results)} results, not one", op=self.name)
        return self.results[0]

    @property
    def short(self) -> str:
        return self.name.split(".", 1)[-1]

    def region(self, name: str) -> Optional[Region]:
        for r in self.regions:
            if r.name == name:
                return r
        return None

    def __repr__(self) -> str:
        return f"Op({self.name})"


@dataclass
class Function:
    name: str
    args: list[Value]
    ops: list[Op]                      # the last op is attn.return
    attrs: dict = field(default_factory=dict)

    @property
    def results(self) -> list[Value]:
        return self.ops[-1].operands

    @property
    def result_types(self) -> list[TensorType]:
        return [v.type for v in self.results]

    def arg(self, name: str) -> Value:
        for a in self.args:
            if a.hint == name:
                return a
        raise KeyError(name)

    def users(self) -> dict:
        """Value -> list of ops using it (top level only)."""
        out: dict = {}
        for op in self.ops:
            for v in op.operands:
                out.setdefault(v, []).append(op)
        return out

    def graph(self) -> nx.DiGraph:
        """The dataflow graph: nodes are ops and argument values, edges point to users."""
        g = nx.DiGraph()
        for a in self.args:
            g.add_node(a)
        for op in self.ops:
            g.add_node(op)
            for v in op.operands:
                g.add_edge(v.owner if v.owner is not None else v, op)
        return g

    def symbols(self) -> list[str]:
        names: list[str] = []
        for a in self.args:
            for d in a.type.shape:
                for s in sorted(d.free_symbols, key=lambda s: s.name):
                    if s.name not in names:
                        names.append(s.name)
        return names


@dataclass
class Module:
    functions: list[Function]

    def function(self, name: str | None = None) -> Function:
        if name is None:
            if len(self.functions) != 1:
                raise VerifyError(f"module has {len(self.functions)} functions; name one")
            return self.functions[0]
        for f in self.functions:
            if f.name == name:
                return f
        raise VerifyError(f"no function @{name} in module")


# --------------------------------------------------------------------------------------------
# Op definitions: name -> (infer(operand types, attrs, regions) -> list of result types)

@dataclass(frozen=True)
class OpDef:
    name: str
    infer: Callable
    num_operands: Optional[int]             # None: variadic
    doc: str = ""
    terminator: bool = False
    pure: bool = True


OPS: dict[str, OpDef] = {}


def _register(name: str, num_operands, doc: str = "", terminator=False, pure=True):
    def deco(fn):
        OPS["attn." + name] = OpDef("attn." + name, fn, num_operands, doc, terminator, pure)
        return fn
    return deco


BINARY_ARITH = ("add", "sub", "mul", "div", "max", "min")
INT_ARITH = ("floordiv", "mod")
UNARY_FLOAT = ("exp", "log", "tanh", "sigmoid", "sqrt")
UNARY_ANY = ("neg", "abs")
COMPARE = ("lt", "le", "gt", "ge", "eq", "ne")
LOGICAL = ("and", "or")


def _err(opname, msg, cls=ShapeError):
    raise cls(msg, op="attn." + opname)


def _same_dtype(opname, types):
    dts = {t.dtype for t in types}
    if len(dts) != 1:
        _err(opname, "operand dtypes differ: " + ", ".join(str(t.dtype) for t in types)
             + " (insert attn.cast)", DTypeError)
    return types[0].dtype


def _bcast(opname, types):
    try:
        return broadcast_shapes(*[t.shape for t in types])
    except ShapeError as e:
        _err(opname, e.message)


for _n in BINARY_ARITH:
    def _f(types, attrs, regions, _n=_n):
        dt = _same_dtype(_n, types)
        if dt.is_bool:
            _err(_n, "arithmetic on i1 values", DTypeError)
        return [TensorType(_bcast(_n, types), dt)]
    _register(_n, 2, f"elementwise {_n} with numpy broadcasting")(_f)

for _n in INT_ARITH:
    def _f(types, attrs, regions, _n=_n):
        dt = _same_dtype(_n, types)
        if not dt.is_int:
            _err(_n, f"needs integer operands, got {dt}", DTypeError)
        return [TensorType(_bcast(_n, types), dt)]
    _register(_n, 2, f"integer {_n} (floor semantics)")(_f)

for _n in UNARY_FLOAT:
    def _f(types, attrs, regions, _n=_n):
        if not types[0].dtype.is_float:
            _err(_n, f"needs a float operand, got {types[0].dtype}", DTypeError)
        return [types[0]]
    _register(_n, 1, f"elementwise {_n}")(_f)

for _n in UNARY_ANY:
    def _f(types, attrs, regions, _n=_n):
        if types[0].dtype.is_bool:
            _err(_n, "needs a numeric operand, got i1", DTypeError)
        return [types[0]]
    _register(_n, 1, f"elementwise {_n}")(_f)

for _n in COMPARE:
    def _f(types, attrs, regions, _n=_n):
        _same_dtype(_n, types)
        return [TensorType(_bcast(_n, types), DType.i1)]
    _register(_n, 2, f"comparison {_n}, result i1")(_f)

for _n in LOGICAL:
    def _f(types, attrs, regions, _n=_n):
        for t in types:
            if not t.dtype.is_bool:
                _err(_n, f"needs i1 operands, got {t.dtype}", DTypeError)
        return [TensorType(_bcast(_n, types), DType.i1)]
    _register(_n, 2, f"logical {_n} of i1 values")(_f)


@_register("not", 1, "logical not")
def _not(types, attrs, regions):
    if not types[0].dtype.is_bool:
        _err("not", f"needs an i1 operand, got {types[0].dtype}", DTypeError)
    return [types[0]]


@_register("select", 3, "select(cond, a, b): a where cond else b")
def _select(types, attrs, regions):
    c, a, b = types
    if not c.dtype.is_bool:
        _err("select", f"condition must be i1, got {c.dtype}", DTypeError)
    dt = _same_dtype("select", [a, b])
    return [TensorType(_bcast("select", types), dt)]


@_register("cast", 1, "convert to attrs['to']")
def _cast(types, attrs, regions):
    to = attrs.get("to")
    if not isinstance(to, DType):
        _err("cast", "needs a dtype attribute 'to'", DTypeError)
    return [types[0].with_dtype(to)]


@_register("constant", 0, "a scalar constant attrs['value'] of attrs['dtype']")
def _constant(types, attrs, regions):
    if "value" not in attrs or "dtype" not in attrs:
        _err("constant", "needs 'value' and 'dtype' attributes", VerifyError)
    dt = attrs["dtype"]
    v = attrs["value"]
    if not isinstance(dt, DType):
        _err("constant", "dtype attribute must be a dtype", DTypeError)
    if dt.is_bool and not isinstance(v, bool):
        _err("constant", f"i1 constant must be true or false, got {v}", DTypeError)
    if isinstance(v, sympy.Expr) and not dt.is_bool:
        return [TensorType((), dt)]       # a value known once the dims are: 1/sqrt(D), T - S
    if dt.is_int and (isinstance(v, bool) or not isinstance(v, int)):
        _err("constant", f"integer constant must be an integer, got {v}", DTypeError)
    if dt.is_float and (isinstance(v, bool) or not isinstance(v, (int, float))):
        _err("constant", f"float constant must be a number, got {v}", DTypeError)
    return [TensorType((), dt)]


IOTA_DIMS = {0: "batch", 1: "head", 2: "query", 3: "key"}


@_register("iota", 0, "index along attrs['dim'] of attrs['shape'] (i32); dims 0..3 are batch, head, query, key")
def _iota(types, attrs, regions):
    shape = attrs.get("shape")
    dim = attrs.get("dim")
    if not isinstance(shape, list) or not isinstance(dim, int) or not 0 <= dim < len(shape):
        _err("iota", "needs 'shape' (a list of dims) and 'dim' (an index into it)", VerifyError)
    return [TensorType(tuple(shape), DType.i32)]


@_register("matmul", 2, "batched matmul over the last two dims; attrs transpose_b; heads (dim -3) of b may divide those of a (GQA)")
def _matmul(types, attrs, regions):
    a, b = types
    if a.rank != b.rank or a.rank < 2:
        _err("matmul", f"operands must have the same rank >= 2, got {a} and {b}")
    if a.dtype != b.dtype:
        _err("matmul", f"operand dtypes differ: {a.dtype} vs {b.dtype} (cast one operand, e.g. cast(p, v.dtype): matmul results are f32 accumulators)", DTypeError)
    if a.dtype.is_bool:
        _err("matmul", "matmul of i1 values", DTypeError)
    tb = bool(attrs.get("transpose_b", False))
    m, k = a.shape[-2], a.shape[-1]
    kb, n = (b.shape[-1], b.shape[-2]) if tb else (b.shape[-2], b.shape[-1])
    if not dims_equal(k, kb):
        _err("matmul", f"contraction dims differ: {dim_str(k)} vs {dim_str(kb)} ({a} x {b}"
             + (" transposed" if tb else "") + ")")
    batch = []
    for i, (da, db) in enumerate(zip(a.shape[:-2], b.shape[:-2])):
        if dims_equal(da, db) or db == 1:
            batch.append(da)
            continue
        if i == a.rank - 3:     # the head dim: b's heads may be a divisor (GQA / MQA)
            q = sympy.simplify(da / db)
            if q.is_integer is not False and not (q.is_Number and not q.is_Integer):
                batch.append(da)
                continue
            _err("matmul", f"query heads {dim_str(da)} are not a multiple of kv heads {dim_str(db)}")
        _err("matmul", f"batch dims differ: {dim_str(da)} vs {dim_str(db)}")
    acc = DType.f32 if a.dtype.is_float else DType.i32
    out_dtype = attrs.get("acc", acc)
    return [TensorType(tuple(batch) + (m, n), out_dtype)]


def _axis(opname, t, attrs):
    axis = attrs.get("axis", -1)
    if not isinstance(axis, int) or not -t.rank <= axis < t.rank:
        _err(opname, f"axis {axis} out of range for {t}")
    return axis % t.rank


@_register("reduce", 1, "reduce attrs['kind'] in {max, sum} over attrs['axis'], keeping the dim")
def _reduce(types, attrs, regions):
    t = types[0]
    ax = _axis("reduce", t, attrs)
    if attrs.get("kind") not in ("max", "sum"):
        _err("reduce", f"kind must be max or sum, got {attrs.get('kind')}", VerifyError)
    if not t.dtype.is_float:
        _err("reduce", f"needs a float operand, got {t.dtype}", DTypeError)
    shape = list(t.shape)
    shape[ax] = sympy.Integer(1)
    return [t.with_shape(shape)]


@_register("softmax", 1, "softmax over attrs['axis']; rows of all -inf give zeros")
def _softmax(types, attrs, regions):
    t = types[0]
    _axis("softmax", t, attrs)
    if not t.dtype.is_float:
        _err("softmax", f"needs a float operand, got {t.dtype}", DTypeError)
    return [t]


def _check_region(opname, region, arg_types, result_type):
    if region is None:
        return
    got = [a.type for a in region.args]
    if got != arg_types:
        _err(opname, f"region '{region.name}' arguments must be ("
             + ", ".join(map(str, arg_types)) + "), got (" + ", ".join(map(str, got)) + ")", VerifyError)
    res = region.results
    if len(res) != 1 or res[0].type != result_type:
        _err(opname, f"region '{region.name}' must yield one {result_type}", VerifyError)


@_register("flash", None, "fused attention: flash(q, k, v, captures...) with optional 'score' and 'mask' "
          "regions; captured tensors (e.g. document ids) are trailing region arguments read with attn.gather")
def _flash(types, attrs, regions):
    if len(types) < 3:
        _err("flash", f"needs q, k, v operands, got {len(types)}", VerifyError)
    q, k, v = types[:3]
    quant = attrs.get("quant")
    n_scales = flash_scale_count(attrs)
    if len(types) < 3 + n_scales:
        _err("flash", f"a quantized flash needs {n_scales} scale operand(s) after q, k, v", VerifyError)
    scales = list(types[3:3 + n_scales])
    captures = list(types[3 + n_scales:])
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.rank != 4:
            _err("flash", f"{name} must have rank 4 [batch, heads, seq, dim], got {t}")
    if quant is not None:
        if not isinstance(quant, dict) or not isinstance(quant.get("dtype"), DType):
            _err("flash", "attribute quant must be {dtype = <i8|f8e4m3|f8e5m2>, pv = <bool>}", VerifyError)
        qd = quant["dtype"]
        if q.dtype != qd or k.dtype != qd:
            _err("flash", f"quantized q and k must be {qd}, got {q.dtype} and {k.dtype}", DTypeError)
        if quant.get("pv", False) and v.dtype != qd:
            _err("flash", f"with pv quantized, v must be {qd}, got {v.dtype}", DTypeError)
        for t in scales:
            if t.dtype != DType.f32 or t.rank != 4:
                _err("flash", f"scales must be rank-4 f32 tensors, got {t}", DTypeError)
    elif not (q.dtype == k.dtype == v.dtype):
        _err("flash", f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}", DTypeError)
    if not dims_equal(q.shape[3], k.shape[3]):
        _err("flash", f"q and k head dims differ: {dim_str(q.shape[3])} vs {dim_str(k.shape[3])}")
    if not dims_equal(k.shape[2], v.shape[2]) or not dims_equal(k.shape[1], v.shape[1]):
        _err("flash", f"k and v disagree: {k} vs {v}")
    if not dims_equal(q.shape[0], k.shape[0]):
        _err("flash", f"batch dims differ: {dim_str(q.shape[0])} vs {dim_str(k.shape[0])}")
    i32, f32 = TensorType((), DType.i32), TensorType((), DType.f32)
    names = [r.name for r in regions]
    for r in regions:
        if r.name not in ("score", "mask"):
            _err("flash", f"unknown region '{r.name}' (expected score, mask)", VerifyError)
    if len(set(names)) != len(names):
        _err("flash", "duplicate regions", VerifyError)
    by = {r.name: r for r in regions}
    _check_region("flash", by.get("score"), [f32, i32, i32, i32, i32] + captures, f32)
    _check_region("flash", by.get("mask"), [i32, i32, i32, i32] + captures, TensorType((), DType.i1))
    out_dtype = quant.get("out", DType.f32) if quant is not None else q.dtype
    out = TensorType((q.shape[0], q.shape[1], q.shape[2], v.shape[3]), out_dtype)
    if attrs.get("lse", False):
        return [out, TensorType(q.shape[:3], DType.f32)]
    return [out]


@_register("gather", None, "gather(src, idx_0, ..., idx_{r-1}): src at the broadcast index tensors "
          "(indices are clamped into range)")
def _gather(types, attrs, regions):
    if not types:
        _err("gather", "needs a source tensor", VerifyError)
    src, idx = types[0], types[1:]
    if len(idx) != src.rank:
        _err("gather", f"a rank-{src.rank} source needs {src.rank} index operand(s), got {len(idx)}")
    for t in idx:
        if t.dtype != DType.i32:
            _err("gather", f"indices must be i32, got {t.dtype}", DTypeError)
    return [TensorType(_bcast("gather", idx) if idx else (), src.dtype)]


def flash_scale_count(attrs: dict) -> int:
    """Scale operands of a flash op after q, k, v: q and k scales, and v's when P·V is quantized."""
    quant = attrs.get("quant")
    if quant is None:
        return 0
    return 3 if quant.get("pv", False) else 2


QUANT_GRANULARITY = ("tensor", "head", "block")


@_register("quantize", 1, "quantize(x) -> (xq, scale): scale = amax / dtype max over attrs['granularity'] "
          "(tensor, head, or blocks of attrs['block'] rows), xq = round(x / scale) in attrs['dtype']")
def _quantize(types, attrs, regions):
    t = types[0]
    dt = attrs.get("dtype")
    if dt not in (DType.i8, DType.f8e4m3, DType.f8e5m2):
        _err("quantize", f"dtype must be i8, f8e4m3 or f8e5m2, got {dt}", DTypeError)
    if not t.dtype.is_float:
        _err("quantize", f"needs a float tensor, got {t.dtype}", DTypeError)
    if t.rank != 4:
        _err("quantize", f"needs a rank-4 [batch, heads, seq, dim] tensor, got {t}")
    g = attrs.get("granularity", "tensor")
    if g not in QUANT_GRANULARITY:
        _err("quantize", f"granularity must be one of {', '.join(QUANT_GRANULARITY)}, got {g}", VerifyError)
    if g == "block" and (not isinstance(attrs.get("block"), int) or attrs["block"] <= 0):
        _err("quantize", "block granularity needs a positive 'block' (rows per scale)", VerifyError)
    one = sympy.Integer(1)
    shape = {"tensor": (one, one, one, one), "head": (t.shape[0], t.shape[1], one, one),
             "block": (t.shape[0], t.shape[1], t.shape[2], one)}[g]
    return [t.with_dtype(dt), TensorType(shape, DType.f32)]


@_register("dequantize", 2, "dequantize(xq, scale) = f32(xq) * scale (broadcast)")
def _dequantize(types, attrs, regions):
    x, s = types
    if s.dtype != DType.f32:
        _err("dequantize", f"scale must be f32, got {s.dtype}", DTypeError)
    return [TensorType(_bcast("dequantize", types), DType.f32)]


@_register("return", None, "function results", terminator=True, pure=False)
def _return(types, attrs, regions):
    return []


@_register("yield", None, "region results", terminator=True, pure=False)
def _yield(types, attrs, regions):
    return []


def infer_types(name: str, operands: list[Value], attrs: dict, regions: list[Region] | None = None,
                line: int | None = None) -> list[TensorType]:
    opdef = OPS.get(name)
    if opdef is None:
        raise VerifyError(f"unknown op '{name}'", op=name, line=line)
    if opdef.num_operands is not None and len(operands) != opdef.num_operands:
        raise VerifyError(f"expects {opdef.num_operands} operands, got {len(operands)}", op=name, line=line)
    try:
        return opdef.infer([v.type for v in operands], attrs, regions or [])
    except (ShapeError, DTypeError, VerifyError) as e:
        if e.line is None and line is not None:
            e.line = line
            e.args = (e.format(),)
        raise


def make_op(name: str, operands: list[Value], attrs: dict | None = None, regions: list[Region] | None = None,
            line: int | None = None) -> Op:
    attrs = attrs or {}
    return Op(name, operands, attrs, infer_types(name, operands, attrs, regions, line), regions, line)


def const_value(v: Value):
    """The Python value of a scalar constant, else None."""
    if v.owner is not None and v.owner.name == "attn.constant":
        return v.owner.attrs["value"]
    return None


def is_neg_inf(v: Value) -> bool:
    c = const_value(v)
    return isinstance(c, float) and math.isinf(c) and c < 0
