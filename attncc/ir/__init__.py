"""The attncc IR: types, ops, functions, the verifier and the text form."""

from attncc.ir.core import OPS, Function, Module, Op, Region, Value, make_op  # noqa: F401
from attncc.ir.parser import parse, parse_function  # noqa: F401
from attncc.ir.printer import print_ir  # noqa: F401
from attncc.ir.types import DType, TensorType, parse_dtype, sym  # noqa: F401
