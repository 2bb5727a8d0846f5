"""The authoring front end: write an attention variant as a Python function.

Two styles trace into the same unfused IR:

High level::

    from attncc.lang import Tensor, attention, variant

    @variant(defaults=dict(B=1, H=8, S=1024, D=64))
    def causal(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
        return attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)

Tensor level::

    s = matmul(q, k, transpose_b=True) * (1 / sqrt(q.shape[-1]))
    b, h, i, j = indices(s)
    p = softmax(where(j <= i, s, -inf))
    return matmul(p, v)

``score_mod(score, b, h, q_idx, kv_idx)`` and ``mask_mod(b, h, q_idx, kv_idx)``
are plain Python functions; they are called once, on traced tensors, and
everything they compute becomes IR.  A variant never names a tile size.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import sympy

from attncc.errors import AttnccError, DTypeError, ShapeError, VariantError
from attncc.ir.core import Function, Op, Value, make_op
from attncc.ir.types import DType, TensorType, as_dim, dim_str, dims_equal, parse_dtype

inf = math.inf

_LANG_FILE = os.path.abspath(__file__)
_PKG_DIR = os.path.dirname(_LANG_FILE)


def _caller_line() -> Optional[int]:
    """The line of the variant's source that is being traced (first frame outside attncc)."""
    f = sys._getframe(1)
    while f is not None:
        fn = os.path.abspath(f.f_code.co_filename)
        if not fn.startswith(_PKG_DIR + os.sep):
            return f.f_lineno
        f = f.f_back
    return None


class _Trace:
    """The op list being built while a variant's function runs."""

    current: Optional["_Trace"] = None

    def __init__(self, variant_name: str):
        self.variant_name = variant_name
        self.ops: list[Op] = []

    def emit(self, name: str, operands: list[Value], attrs: dict | None = None) -> Value:
        line = _caller_line()
        try:
            op = make_op(name, operands, attrs or {}, line=line)
        except AttnccError as e:
            e.variant = e.variant or self.variant_name
            e.line = e.line if e.line is not None else line
            e.args = (e.format(),)
            raise
        self.ops.append(op)
        return op.results[0] if op.results else None


def _trace() -> _Trace:
    if _Trace.current is None:
        raise VariantError("attncc.lang operations can only be used inside a @variant function while it is traced")
    return _Trace.current


class Tensor:
    """A traced tensor.  ``Tensor["B", "H", "S", "D"]`` (optionally with a dtype last)
    declares a variant input in a type annotation."""

    __slots__ = ("value",)

    def __init__(self, value: Value):
        self.value = value

    def __class_getitem__(cls, dims):
        if not isinstance(dims, tuple):
            dims = (dims,)
        dtype = None
        if dims and isinstance(dims[-1], (str, DType)) and _is_dtype_name(dims[-1]):
            dtype, dims = parse_dtype(dims[-1]), dims[:-1]
        return InputSpec(tuple(as_dim(d) for d in dims), dtype)

    # -- introspection -----------------------------------------------------------------
    @property
    def type(self) -> TensorType:
        return self.value.type

    @property
    def shape(self) -> tuple:
        return self.value.type.shape

    @property
    def dtype(self) -> DType:
        return self.value.type.dtype

    @property
    def ndim(self) -> int:
        return self.value.type.rank

    def __repr__(self) -> str:
        return f"Tensor({self.type})"

    def __bool__(self):
        raise VariantError("a traced tensor has no Python truth value: use where(cond, a, b), "
                           "& | ~ instead of and/or/not, and no 'if' on tensor values", line=_caller_line())

    __hash__ = object.__hash__

    # -- arithmetic ---------------------------------------------------------------------
    def __add__(self, o): return _binary("attn.add", self, o)
    def __radd__(self, o): return _binary("attn.add", o, self)
    def __sub__(self, o): return _binary("attn.sub", self, o)
    def __rsub__(self, o): return _binary("attn.sub", o, self)
    def __mul__(self, o): return _binary("attn.mul", self, o)
    def __rmul__(self, o): return _binary("attn.mul", o, self)
    def __truediv__(self, o): return _binary("attn.div", self, o, floats=True)
    def __rtruediv__(self, o): return _binary("attn.div", o, self, floats=True)
    def __floordiv__(self, o): return _binary("attn.floordiv", self, o, ints=True)
    def __rfloordiv__(self, o): return _binary("attn.floordiv", o, self, ints=True)
    def __mod__(self, o): return _binary("attn.mod", self, o, ints=True)
    def __rmod__(self, o): return _binary("attn.mod", o, self, ints=True)
    def __neg__(self): return Tensor(_trace().emit("attn.neg", [self.value]))
    def __abs__(self): return Tensor(_trace().emit("attn.abs", [self.value]))

    def __pow__(self, o):
        if isinstance(o, int) and not isinstance(o, bool) and o >= 1:
            out = self
            for _ in range(o - 1):
                out = out * self
            return out
        if o == 0.5:
            return sqrt(self)
        raise VariantError(f"x ** {o!r}: only positive integer powers and 0.5 are supported on tensors",
                           line=_caller_line())

    def __rpow__(self, base):
        if isinstance(base, (int, float)) and not isinstance(base, bool) and base > 0:
            return exp(self * math.log(base))
        raise VariantError(f"{base!r} ** tensor: the base must be a positive number", line=_caller_line())

    def __getitem__(self, idx):
        """``doc[q_idx]``: read this tensor at traced indices (a gather; indices are
        clamped into range).  Used by masks over runtime data such as document ids."""
        if not isinstance(idx, tuple):
            idx = (idx,)
        if len(idx) != self.ndim:
            raise ShapeError(f"indexing a rank-{self.ndim} tensor needs {self.ndim} index(es), got {len(idx)}",
                             line=_caller_line())
        ts = []
        for i in idx:
            if isinstance(i, slice):
                raise VariantError("slicing traced tensors is not supported; index with q_idx, kv_idx, ...",
                                   line=_caller_line())
            t = _lift(i, DType.i32)
            if not t.dtype.is_int:
                raise DTypeError(f"indices must be integers, got {t.dtype}", line=_caller_line())
            ts.append(cast(t, DType.i32))
        return Tensor(_trace().emit("attn.gather", [self.value] + [t.value for t in ts]))

    # -- comparisons and logic ------------------------------------------------------------
    def __lt__(self, o): return _binary("attn.lt", self, o)
    def __le__(self, o): return _binary("attn.le", self, o)
    def __gt__(self, o): return _binary("attn.gt", self, o)
    def __ge__(self, o): return _binary("attn.ge", self, o)
    def __eq__(self, o): return _binary("attn.eq", self, o)  # type: ignore[override]
    def __ne__(self, o): return _binary("attn.ne", self, o)  # type: ignore[override]
    def __and__(self, o): return _logical("attn.and", self, o)
    def __rand__(self, o): return _logical("attn.and", o, self)
    def __or__(self, o): return _logical("attn.or", self, o)
    def __ror__(self, o): return _logical("attn.or", o, self)

    def __invert__(self):
        if not self.dtype.is_bool:
            raise DTypeError(f"~ needs a boolean (i1) tensor, got {self.dtype}", line=_caller_line())
        return Tensor(_trace().emit("attn.not", [self.value]))


def _is_dtype_name(x) -> bool:
    if isinstance(x, DType):
        return True
    try:
        parse_dtype(x)
        return True
    except AttnccError:
        return False


def constant(value, dtype: DType) -> Tensor:
    if isinstance(value, sympy.Expr) and value.is_Number:
        value = int(value) if value.is_Integer else float(value)
    return Tensor(_trace().emit("attn.constant", [], {"value": value, "dtype": dtype}))


def _lift(x, like: Optional[DType]) -> Tensor:
    """A Python number / sympy dim / traced tensor as a tensor."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, bool):
        return constant(x, DType.i1)
    if isinstance(x, int):
        return constant(x, like if like is not None and not like.is_bool else DType.i32)
    if isinstance(x, float):
        return constant(x, like if like is not None and like.is_float else DType.f32)
    if isinstance(x, sympy.Expr):
        is_int = x.is_integer is True
        dt = like if like is not None and not like.is_bool and (is_int or like.is_float) else (
            DType.i32 if is_int else DType.f32)
        return constant(x, dt)
    raise VariantError(f"cannot use a {type(x).__name__} ({x!r}) in a traced expression", line=_caller_line())


def cast(x: Tensor, dtype) -> Tensor:
    dt = parse_dtype(dtype)
    x = _lift(x, None)
    if x.dtype == dt:
        return x
    return Tensor(_trace().emit("attn.cast", [x.value], {"to": dt}))


def _promote(a: Tensor, b: Tensor, floats: bool = False) -> tuple[Tensor, Tensor]:
    da, db = a.dtype, b.dtype
    if floats and not da.is_float and not db.is_float:
        return cast(a, DType.f32), cast(b, DType.f32)
    if da == db:
        return a, b
    if da.is_float and not db.is_float:
        return a, cast(b, da)
    if db.is_float and not da.is_float:
        return cast(a, db), b
    if da.is_float and db.is_float:      # mixed floats compute in f32
        return cast(a, DType.f32), cast(b, DType.f32)
    if da.is_bool or db.is_bool:
        raise DTypeError(f"cannot mix {da} and {db}", line=_caller_line())
    return cast(a, DType.i32), cast(b, DType.i32)


def _binary(name: str, a, b, floats: bool = False, ints: bool = False) -> Tensor:
    like = a.dtype if isinstance(a, Tensor) else (b.dtype if isinstance(b, Tensor) else None)
    if floats and like is not None and not like.is_float and isinstance(a, Tensor) != isinstance(b, Tensor):
        like = DType.f32
    ta, tb = _lift(a, like), _lift(b, like)
    if ints:
        if not ta.dtype.is_int or not tb.dtype.is_int:
            raise DTypeError(f"{name.split('.')[1]} needs integer operands, got {ta.dtype} and {tb.dtype}",
                             line=_caller_line())
    ta, tb = _promote(ta, tb, floats)
    return Tensor(_trace().emit(name, [ta.value, tb.value]))


def _logical(name: str, a, b) -> Tensor:
    ta, tb = _lift(a, DType.i1), _lift(b, DType.i1)
    if not ta.dtype.is_bool or not tb.dtype.is_bool:
        raise DTypeError(f"& and | need boolean (i1) operands, got {ta.dtype} and {tb.dtype}",
                         line=_caller_line())
    return Tensor(_trace().emit(name, [ta.value, tb.value]))


def _unary(name: str, x) -> Tensor:
    t = _lift(x, DType.f32)
    if name in ("attn.exp", "attn.log", "attn.tanh", "attn.sigmoid", "attn.sqrt") and not t.dtype.is_float:
        t = cast(t, DType.f32)
    return Tensor(_trace().emit(name, [t.value]))


def exp(x): return _unary("attn.exp", x)
def log(x): return _unary("attn.log", x)
def tanh(x): return _unary("attn.tanh", x)
def sigmoid(x): return _unary("attn.sigmoid", x)
def sqrt(x):
    if isinstance(x, (sympy.Expr, int)) and not isinstance(x, Tensor):
        return sympy.sqrt(x)
    return _unary("attn.sqrt", x)
def abs_(x): return _unary("attn.abs", x)


def maximum(a, b) -> Tensor: return _binary("attn.max", a, b)
def minimum(a, b) -> Tensor: return _binary("attn.min", a, b)


def where(cond, a, b) -> Tensor:
    c = _lift(cond, DType.i1)
    if not c.dtype.is_bool:
        raise DTypeError(f"where's condition must be boolean (i1), got {c.dtype}", line=_caller_line())
    like = a.dtype if isinstance(a, Tensor) else (b.dtype if isinstance(b, Tensor) else None)
    ta, tb = _promote(_lift(a, like), _lift(b, like))
    return Tensor(_trace().emit("attn.select", [c.value, ta.value, tb.value]))


def matmul(a: Tensor, b: Tensor, transpose_b: bool = False) -> Tensor:
    """Batched matmul; accumulates in f32 (i32 for integers).  The head dim of ``b``
    may divide that of ``a`` (GQA/MQA: a head mapping, not a copy)."""
    for n, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor):
            raise VariantError(f"matmul operand {n} must be a tensor", line=_caller_line())
    return Tensor(_trace().emit("attn.matmul", [a.value, b.value], {"transpose_b": bool(transpose_b)}))


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    return Tensor(_trace().emit("attn.softmax", [x.value], {"axis": axis}))


def reduce_max(x: Tensor, axis: int = -1) -> Tensor:
    return Tensor(_trace().emit("attn.reduce", [x.value], {"kind": "max", "axis": axis}))


def reduce_sum(x: Tensor, axis: int = -1) -> Tensor:
    return Tensor(_trace().emit("attn.reduce", [x.value], {"kind": "sum", "axis": axis}))


def iota(shape, dim: int) -> Tensor:
    return Tensor(_trace().emit("attn.iota", [], {"shape": [as_dim(d) for d in shape], "dim": dim}))


def indices(scores: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(b, h, q_idx, kv_idx) for a [B, H, S, T] score tensor, each shaped to broadcast."""
    if scores.ndim != 4:
        raise ShapeError(f"indices() needs a rank-4 [batch, heads, queries, keys] tensor, got {scores.type}",
                         line=_caller_line())
    out = []
    for d in range(4):
        shape = [1, 1, 1, 1]
        shape[d] = scores.shape[d]
        out.append(iota(shape, d))
    return tuple(out)  # type: ignore[return-value]


def attention(q: Tensor, k: Tensor, v: Tensor, *, score_mod: Optional[Callable] = None,
              mask_mod: Optional[Callable] = None, scale=None, kv_heads=None) -> Tensor:
    """softmax(score_mod(scale * q kᵀ) masked by mask_mod) v, traced into unfused IR.

    q: [B, Hq, S, D], k: [B, Hkv, T, D], v: [B, Hkv, T, Dv]; Hq must be a multiple of
    Hkv.  ``scale`` defaults to 1/sqrt(D)."""
    line = _caller_line()
    for n, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise VariantError(f"attention(): {n} must be a traced tensor, got {type(t).__name__}", line=line)
        if t.ndim != 4:
            raise ShapeError(f"attention(): {n} must have rank 4 [batch, heads, seq, head_dim], "
                             f"got rank {t.ndim} ({t.type})", line=line)
    if not dims_equal(q.shape[3], k.shape[3]):
        raise ShapeError(f"attention(): head dims of q and k differ: {dim_str(q.shape[3])} vs "
                         f"{dim_str(k.shape[3])}", line=line)
    if not dims_equal(k.shape[2], v.shape[2]) or not dims_equal(k.shape[1], v.shape[1]):
        raise ShapeError(f"attention(): k {k.type} and v {v.type} must agree in heads and length", line=line)
    if kv_heads is not None and not dims_equal(as_dim(kv_heads), k.shape[1]):
        raise ShapeError(f"attention(): kv_heads={kv_heads} but k has {dim_str(k.shape[1])} heads", line=line)
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise DTypeError(f"attention(): q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}", line=line)
    s = matmul(q, k, transpose_b=True)
    if scale is None:
        scale = 1 / sympy.sqrt(q.shape[3])
    if not (isinstance(scale, (int, float)) and scale == 1):
        s = s * scale
    b, h, i, j = indices(s)
    if score_mod is not None:
        scores = s
        s = _lift(score_mod(s, b, h, i, j), DType.f32)
        if not s.dtype.is_float:
            raise DTypeError(f"score_mod must return a float score, got {s.dtype}", line=line)
        s = cast(s, DType.f32)
        if s.shape != scores.shape:     # it ignored the score (a bias of indices, a constant): one per pair
            s = where(True, s, scores)
    if mask_mod is not None:
        m = mask_mod(b, h, i, j)
        if m is True:
            pass
        else:
            m = _lift(m, DType.i1)
            if not m.dtype.is_bool:
                raise DTypeError(f"mask_mod must return a boolean, got {m.dtype}", line=line)
            s = where(m, s, -inf)
    p = softmax(s)
    if v.dtype != p.dtype:
        p = cast(p, v.dtype)
    out = matmul(p, v)
    return cast(out, v.dtype)


# ------------------------------------------------------------------------------------------
# Variants

@dataclass(frozen=True)
class InputSpec:
    shape: tuple
    dtype: Optional[DType] = None


@dataclass
class Variant:
    fn: Callable
    name: str
    inputs: dict                       # name -> InputSpec
    defaults: dict                     # dim name -> int
    dtype: DType
    doc: str = ""
    source: Optional[str] = None

    def trace(self, dtype=None) -> Function:
        """Run the function on traced inputs and return the unfused IR."""
        dt = parse_dtype(dtype) if dtype is not None else self.dtype
        if _Trace.current is not None:
            raise VariantError("variants cannot be traced inside each other", variant=self.name)
        tr = _Trace(self.name)
        args = [Value(TensorType(spec.shape, spec.dtype or dt), name) for name, spec in self.inputs.items()]
        _Trace.current = tr
        try:
            try:
                result = self.fn(*[Tensor(a) for a in args])
            except AttnccError as e:
                e.variant = e.variant or self.name
                e.args = (e.format(),)
                raise
            except Exception as e:  # a bug in the user's function: name it, with its line
                tb = e.__traceback__
                line = None
                while tb is not None:
                    if os.path.abspath(tb.tb_frame.f_code.co_filename) != _LANG_FILE and not os.path.abspath(
                            tb.tb_frame.f_code.co_filename).startswith(_PKG_DIR + os.sep):
                        line = tb.tb_lineno
                    tb = tb.tb_next
                raise VariantError(f"{type(e).__name__} while tracing: {e}", variant=self.name, line=line) from e
            results = result if isinstance(result, (tuple, list)) else (result,)
            for r in results:
                if not isinstance(r, Tensor):
                    raise VariantError(f"must return traced tensors, got {type(r).__name__}", variant=self.name)
            tr.emit("attn.return", [r.value for r in results])
        finally:
            _Trace.current = None
        attrs = {"defaults": dict(self.defaults)} if self.defaults else {}
        return Function(self.name, args, tr.ops, attrs)


def variant(fn: Callable | None = None, *, name: str | None = None, defaults: dict | None = None,
            dtype="f32"):
    """Declare an attention variant.  Inputs come from the parameters' annotations
    (``Tensor["B", "H", "S", "D"]``); ``defaults`` gives default dim values."""
    def wrap(f: Callable) -> Variant:
        sig = inspect.signature(f)
        inputs = {}
        for pname, p in sig.parameters.items():
            ann = p.annotation
            if isinstance(ann, str):   # `from __future__ import annotations` in the variant file
                scope = dict(f.__globals__)
                if f.__closure__:
                    scope.update(zip(f.__code__.co_freevars, (c.cell_contents for c in f.__closure__)))
                try:
                    ann = eval(ann, scope)  # noqa: S307 - the variant file is Python run with the user's rights
                except Exception as e:
                    raise VariantError(f"cannot evaluate the annotation of parameter '{pname}' ({ann}): {e}",
                                       variant=name or f.__name__, line=f.__code__.co_firstlineno) from None
            if not isinstance(ann, InputSpec):
                raise VariantError(f"parameter '{pname}' needs a shape annotation such as "
                                   f"Tensor[\"B\", \"H\", \"S\", \"D\"]", variant=name or f.__name__,
                                   line=f.__code__.co_firstlineno)
            inputs[pname] = ann
        dflt = {}
        for k, v in (defaults or {}).items():
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise VariantError(f"default for dimension {k} must be a positive int, got {v!r}",
                                   variant=name or f.__name__)
            dflt[str(k)] = int(v)
        return Variant(f, name or f.__name__, inputs, dflt, parse_dtype(dtype), inspect.getdoc(f) or "")
    return wrap(fn) if fn is not None else wrap


def load_variants(path: str) -> list[Variant]:
    """Run a variant file (Python, with the user's rights) and return its variants."""
    if not os.path.exists(path):
        raise VariantError(f"no such file: {path}")
    modname = "attncc_variant_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise VariantError(f"cannot load {path} as Python")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except SyntaxError as e:
        err = VariantError(f"{path}:{e.lineno}: syntax error: {e.msg}")
        err.line = e.lineno         # kept for callers; the message already names file:line once
        raise err from None
    except AttnccError:
        raise
    except Exception as e:
        tb = e.__traceback__
        line = None
        while tb is not None:
            if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
                line = tb.tb_lineno
            tb = tb.tb_next
        raise VariantError(f"{path}: {type(e).__name__} while loading: {e}", line=line) from None
    found = [v for v in vars(mod).values() if isinstance(v, Variant)]
    for v in found:
        v.source = path
    if not found:
        raise VariantError(f"{path} defines no @variant function")
    return found


def load_variant(path: str, name: str | None = None) -> Variant:
    found = load_variants(path)
    if name is not None:
        for v in found:
            if v.name == name:
                return v
        raise VariantError(f"{path} has no variant '{name}' (it has: {', '.join(v.name for v in found)})")
    if len(found) > 1:
        raise VariantError(f"{path} defines {len(found)} variants ({', '.join(v.name for v in found)}); "
                           "choose one with --variant")
    return found[0]


__all__ = ["Tensor", "attention", "variant", "matmul", "softmax", "where", "exp", "log", "tanh", "sigmoid",
           "sqrt", "maximum", "minimum", "reduce_max", "reduce_sum", "indices", "iota", "cast", "inf",
           "load_variant", "load_variants", "Variant"]
