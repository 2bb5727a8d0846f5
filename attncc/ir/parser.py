"""Parser of the textual IR.  It evaluates nothing: numbers, names and shape
expressions are read by hand (see ``symexpr``), so untrusted ``.attn`` text is
safe to parse.  Result types written in the text are checked against the
types the op definitions infer."""

from __future__ import annotations

import re

import sympy

from attncc.errors import AttnccError, ParseError
from attncc.ir.core import OPS, Function, Module, Op, Region, Value, infer_types
from attncc.ir.symexpr import parse_dim
from attncc.ir.types import DType, TensorType

_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9.]*")
_VALUE = re.compile(r"%[A-Za-z_0-9]+")
_NUMBER = re.compile(r"-?(?:inf|nan|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")
_DTYPES = {d.value: d for d in DType}


class _Parser:
    def __init__(self, text: str, filename: str = "<ir>"):
        self.s = text
        self.i = 0
        self.filename = filename

    # -- lexing helpers -------------------------------------------------------------
    @property
    def line(self) -> int:
        return self.s.count("\n", 0, self.i) + 1

    def error(self, msg: str):
        col = self.i - (self.s.rfind("\n", 0, self.i) + 1) + 1
        snippet = self.s[self.i:self.i + 30].split("\n")[0]
        raise ParseError(f"{self.filename}:{self.line}:{col}: {msg} (at '{snippet}')")

    def ws(self):
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r\n":
                self.i += 1
            elif c == "/" and self.s.startswith("//", self.i) or c == "#":
                j = self.s.find("\n", self.i)
                self.i = len(self.s) if j < 0 else j
            else:
                break

    def peek(self, tok: str) -> bool:
        self.ws()
        return self.s.startswith(tok, self.i)

    def accept(self, tok: str) -> bool:
        if self.peek(tok):
            self.i += len(tok)
            return True
        return False

    def expect(self, tok: str):
        if not self.accept(tok):
            self.error(f"expected '{tok}'")

    def regex(self, rx, what: str) -> str:
        self.ws()
        m = rx.match(self.s, self.i)
        if not m:
            self.error(f"expected {what}")
        self.i = m.end()
        return m.group(0)

    def ident(self) -> str:
        return self.regex(_IDENT, "a name")

    # -- types -------------------------------------------------------------------------
    def dtype(self) -> DType:
        name = self.ident()
        if name not in _DTYPES:
            self.error(f"unknown dtype '{name}'")
        return _DTYPES[name]

    def type(self) -> TensorType:
        self.ws()
        if self.accept("tensor<"):
            self.expect("[")
            dims = []
            if not self.peek("]"):
                while True:
                    dims.append(self.dim_text())
                    if not self.accept(","):
                        break
            self.expect("]")
            dt = self.dtype()
            self.expect(">")
            return TensorType(tuple(dims), dt)
        return TensorType((), self.dtype())

    def dim_text(self) -> sympy.Expr:
        self.ws()
        depth, j = 0, self.i
        while j < len(self.s):
            c = self.s[j]
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            elif c in ",]" and depth == 0:
                break
            elif c == "\n":
                break
            j += 1
        text = self.s[self.i:j]
        try:
            d = parse_dim(text)
        except ParseError as e:
            self.error(e.message)
        if d.has(sympy.Float) or (d.is_Number and (not d.is_Integer or d < 0)):
            self.error(f"bad dimension '{text.strip()}': a dimension is a non-negative integer or an "
                       "expression of dimension names")
        self.i = j
        return d

    # -- attributes --------------------------------------------------------------------
    def attr_dict(self) -> dict:
        self.expect("{")
        out: dict = {}
        if self.accept("}"):
            return out
        while True:
            key = self.ident()
            self.expect("=")
            if key in out:
                self.error(f"duplicate attribute '{key}'")
            out[key] = self.attr_value()
            if self.accept("}"):
                return out
            self.expect(",")

    def attr_value(self):
        self.ws()
        c = self.s[self.i:self.i + 1]
        if c == "{":
            return self.attr_dict()
        if c == "[":
            self.i += 1
            items = []
            if self.accept("]"):
                return items
            while True:
                items.append(self.attr_value())
                if self.accept("]"):
                    return items
                self.expect(",")
        if c == '"':
            j = self.i + 1
            buf = []
            while j < len(self.s) and self.s[j] != '"':
                if self.s[j] == "\\":
                    j += 1
                buf.append(self.s[j])
                j += 1
            if j >= len(self.s):
                self.error("unterminated string")
            self.i = j + 1
            return "".join(buf)
        if c == "(":
            self.i += 1
            depth, j = 1, self.i
            while j < len(self.s) and depth:
                depth += {"(": 1, ")": -1}.get(self.s[j], 0)
                j += 1
            text = self.s[self.i:j - 1]
            try:
                e = parse_dim(text)
            except ParseError as err:
                self.error(err.message)
            self.i = j
            return e
        if c == "-" or c.isdigit():
            m = _NUMBER.match(self.s, self.i)
            if not m:
                self.error("bad number")
            text = m.group(0)
            self.i = m.end()
            if text.lstrip("-") in ("inf", "nan") or any(ch in text for ch in ".eE"):
                return float(text)
            return int(text)
        name = self.ident()
        if name == "true":
            return True
        if name == "false":
            return False
        if name in ("inf", "nan"):
            return float(name)
        if name in _DTYPES:
            return _DTYPES[name]
        return sympy.Symbol(name, integer=True, positive=True)

    # -- ops ---------------------------------------------------------------------------
    def value_name(self) -> str:
        return self.regex(_VALUE, "a value (%name)")[1:]

    def use(self, scope: dict) -> Value:
        name = self.value_name()
        if name not in scope:
            self.i -= len(name) + 1
            self.error(f"use of undefined value '%{name}'")
        return scope[name]

    def define(self, scope: dict, name: str, v: Value):
        if name in scope:
            self.error(f"value '%{name}' defined twice")
        scope[name] = v

    def op(self, scope: dict) -> Op:
        line = self.line
        results = []
        if self.peek("%"):
            results.append(self.value_name())
            while self.accept(","):
                results.append(self.value_name())
            self.expect("=")
            for r in results:
                if r in scope:
                    raise ParseError(f"{self.filename}:{line}: value '%{r}' defined twice")
        name = self.ident()
        if name not in OPS:
            self.i -= len(name)
            self.error(f"unknown op '{name}'")
        operands = []
        if self.peek("%"):
            operands.append(self.use(scope))
            while self.accept(","):
                operands.append(self.use(scope))
        attrs = self.attr_dict() if self.peek("{") else {}
        types = []
        if self.accept(":"):
            types.append(self.type())
            while self.accept(","):
                types.append(self.type())
        regions = []
        while True:
            self.ws()
            m = _IDENT.match(self.s, self.i)
            if m and m.group(0) in ("score", "mask") and self.s.startswith("(", m.end()):
                regions.append(self.region())
            else:
                break
        try:
            inferred = infer_types(name, operands, attrs, regions, line)
        except AttnccError as e:
            raise ParseError(f"{self.filename}:{line}: {e.message}", op=name) from None
        if len(results) != len(inferred) or len(types) != len(inferred):
            raise ParseError(f"{self.filename}:{line}: {name} has {len(inferred)} result(s); the text names "
                             f"{len(results)} value(s) and {len(types)} type(s)", op=name)
        for t_text, t_inf in zip(types, inferred):
            if t_text != t_inf:
                raise ParseError(f"{self.filename}:{line}: {name} result type is written {t_text} "
                                 f"but the operands give {t_inf}", op=name)
        op = Op(name, operands, attrs, inferred, regions, line)
        for r, v in zip(results, op.results):
            self.define(scope, r, v)
        return op

    def region(self) -> Region:
        name = self.ident()
        scope: dict = {}
        args = self.arg_list(scope)
        ops = self.body(scope, "attn.yield")
        return Region(name, args, ops)

    def arg_list(self, scope: dict) -> list[Value]:
        self.expect("(")
        args = []
        if not self.accept(")"):
            while True:
                n = self.value_name()
                self.expect(":")
                v = Value(self.type(), n)
                self.define(scope, n, v)
                args.append(v)
                if self.accept(")"):
                    break
                self.expect(",")
        return args

    def body(self, scope: dict, terminator: str) -> list[Op]:
        self.expect("{")
        ops = []
        while not self.accept("}"):
            if self.i >= len(self.s):
                self.error("unexpected end of input: missing '}'")
            ops.append(self.op(scope))
        if not ops or ops[-1].name != terminator:
            self.error(f"block must end with {terminator}")
        for o in ops[:-1]:
            if OPS[o.name].terminator:
                raise ParseError(f"{self.filename}:{o.line}: {o.name} in the middle of a block", op=o.name)
        return ops

    def function(self) -> Function:
        self.expect("attn.func")
        self.expect("@")
        name = self.regex(re.compile(r"[A-Za-z_][A-Za-z_0-9]*"), "a function name")
        scope: dict = {}
        args = self.arg_list(scope)
        self.expect("->")
        self.expect("(")
        rtypes = []
        if not self.accept(")"):
            while True:
                rtypes.append(self.type())
                if self.accept(")"):
                    break
                self.expect(",")
        attrs = {}
        if self.accept("attributes"):
            attrs = self.attr_dict()
        ops = self.body(scope, "attn.return")
        got = [v.type for v in ops[-1].operands]
        if got != rtypes:
            raise ParseError(f"{self.filename}:{ops[-1].line}: @{name} declares results ({', '.join(map(str, rtypes))}) "
                             f"but returns ({', '.join(map(str, got))})")
        return Function(name, args, ops, attrs)

    def module(self) -> Module:
        funcs = []
        self.ws()
        while self.i < len(self.s):
            funcs.append(self.function())
            self.ws()
        if not funcs:
            raise ParseError(f"{self.filename}: no attn.func in input")
        return Module(funcs)


def parse(text: str, filename: str = "<ir>") -> Module:
    """Parse textual IR into a Module (raises ParseError with file:line:col)."""
    return _Parser(text, filename).module()


def parse_function(text: str, filename: str = "<ir>") -> Function:
    return parse(text, filename).function()
