"""Types of the IR: element dtypes and tensor types with symbolic shapes.

Shapes are tuples of sympy expressions (integers, symbols such as ``S``, and
polynomials of them).  A rank-0 tensor is a scalar; it prints as its bare
dtype (``f32``), a ranked tensor as ``tensor<[B, H, S, D] f32>``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable

import ml_dtypes
import numpy as np
import sympy

from attncc.errors import DTypeError, ShapeError


class DType(enum.Enum):
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    f8e4m3 = "f8e4m3"
    f8e5m2 = "f8e5m2"
    i8 = "i8"
    i32 = "i32"
    i1 = "i1"

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def is_int(self) -> bool:
        return self in (DType.i8, DType.i32)

    @property
    def is_bool(self) -> bool:
        return self is DType.i1

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(_NUMPY[self])

    @property
    def tvm(self) -> str:
        return _TVM[self]

    @property
    def bits(self) -> int:
        return _BITS[self]

    def __str__(self) -> str:
        return self.value


_FLOATS = {DType.f32, DType.f16, DType.bf16, DType.f8e4m3, DType.f8e5m2}
_NUMPY = {
    DType.f32: np.float32, DType.f16: np.float16, DType.bf16: ml_dtypes.bfloat16,
    DType.f8e4m3: ml_dtypes.float8_e4m3fn, DType.f8e5m2: ml_dtypes.float8_e5m2,
    DType.i8: np.int8, DType.i32: np.int32, DType.i1: np.bool_,
}
_TVM = {
    DType.f32: "float32", DType.f16: "float16", DType.bf16: "bfloat16",
    DType.f8e4m3: "float8_e4m3fn", DType.f8e5m2: "float8_e5m2",
    DType.i8: "int8", DType.i32: "int32", DType.i1: "bool",
}
_BITS = {DType.f32: 32, DType.f16: 16, DType.bf16: 16, DType.f8e4m3: 8, DType.f8e5m2: 8,
         DType.i8: 8, DType.i32: 32, DType.i1: 1}
_ALIASES = {
    "float32": DType.f32, "fp32": DType.f32, "float16": DType.f16, "fp16": DType.f16, "half": DType.f16,
    "bfloat16": DType.bf16, "fp8": DType.f8e4m3, "fp8_e4m3": DType.f8e4m3, "e4m3": DType.f8e4m3,
    "float8_e4m3fn": DType.f8e4m3, "fp8_e5m2": DType.f8e5m2, "e5m2": DType.f8e5m2,
    "float8_e5m2": DType.f8e5m2, "int8": DType.i8, "int32": DType.i32, "bool": DType.i1,
}


def parse_dtype(name: "str | DType") -> DType:
    """Accepts ``f32``, ``fp32``, ``float32``, ``bf16`` ... and returns the DType."""
    if isinstance(name, DType):
        return name
    key = str(name).strip().lower()
    try:
        return DType(key)
    except ValueError:
        pass
    if key in _ALIASES:
        return _ALIASES[key]
    known = ", ".join(d.value for d in DType)
    raise DTypeError(f"unknown dtype '{name}' (known: {known})")


Dim = sympy.Expr


def as_dim(d) -> sympy.Expr:
    """A dimension from an int, a symbol name or a sympy expression."""
    if isinstance(d, sympy.Expr):
        return d
    if isinstance(d, bool):
        raise ShapeError(f"bad dimension {d!r}")
    if isinstance(d, (int, np.integer)):
        if d < 0:
            raise ShapeError(f"negative dimension {d}")
        return sympy.Integer(int(d))
    if isinstance(d, str):
        from attncc.ir.symexpr import parse_dim
        return parse_dim(d)
    raise ShapeError(f"bad dimension {d!r}: expected an int, a name or a sympy expression")


def dim_str(d: sympy.Expr) -> str:
    return str(d).replace("**", "^")


@dataclass(frozen=True)
class TensorType:
    shape: tuple
    dtype: DType

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(as_dim(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_scalar(self) -> bool:
        return not self.shape

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(self.shape, dtype)

    def with_shape(self, shape: Iterable) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def symbols(self) -> set:
        out = set()
        for d in self.shape:
            out |= {s.name for s in d.free_symbols}
        return out

    def concrete(self, env: dict) -> tuple:
        """The shape with every symbol replaced from ``env`` (name -> int)."""
        out = []
        for d in self.shape:
            v = d.subs({s: env[s.name] for s in d.free_symbols if s.name in env})
            if not v.is_Integer:
                missing = sorted(s.name for s in v.free_symbols)
                raise ShapeError(f"no value for dimension(s) {', '.join(missing)} of {self}")
            out.append(int(v))
        return tuple(out)

    def __str__(self) -> str:
        if self.is_scalar:
            return str(self.dtype)
        return "tensor<[" + ", ".join(dim_str(d) for d in self.shape) + "] " + str(self.dtype) + ">"


def sym(name: str) -> sympy.Symbol:
    """The one symbol for a dimension name (positive integer, so sympy can reason)."""
    return sympy.Symbol(name, integer=True, positive=True)


def dims_equal(a: sympy.Expr, b: sympy.Expr) -> bool:
    return sympy.simplify(a - b) == 0


def broadcast_shapes(*shapes: tuple) -> tuple:
    """Numpy broadcasting over symbolic shapes; raises ShapeError when dims differ."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dim = sympy.Integer(1)
        for s in shapes:
            k = i - (rank - len(s))
            if k < 0:
                continue
            d = s[k]
            if d == 1:
                continue
            if dim == 1:
                dim = d
            elif not dims_equal(dim, d):
                raise ShapeError(
                    "shapes [" + ", ".join(map(dim_str, shapes[0])) + "] and ["
                    + ", ".join(dim_str(x) for x in s) + f"] do not broadcast: {dim_str(dim)} vs {dim_str(d)}")
        out.append(dim)
    return tuple(out)
