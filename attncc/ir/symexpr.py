"""A small, non-evaluating parser for shape expressions.

``sympy.sympify`` calls ``eval``; textual IR must be parsed without executing
anything, so dimensions are parsed here: integers, names, ``+ - *``, ``^`` with
``/``, ``^`` (rational exponents), ``sqrt(...)``, decimals and parentheses
-- enough for shapes and for scalar constants such as ``1/sqrt(D)``.
"""

from __future__ import annotations

import re

import sympy

from attncc.errors import ParseError

_TOKEN = re.compile(r"\s*(?:(\d+\.\d*(?:[eE][-+]?\d+)?|\d+)|([A-Za-z_][A-Za-z_0-9]*)|(\*\*|[-+*/^(),]))")


def parse_dim(text: str) -> sympy.Expr:
    tokens = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ParseError(f"bad dimension expression '{text}' at '{text[pos:]}'")
        tokens.append(m.group(1) or m.group(2) or m.group(3))
        pos = m.end()
    tokens = ["^" if t == "**" else t for t in tokens]
    p = _P(tokens, text)
    e = p.expr()
    if p.i != len(tokens):
        raise ParseError(f"bad dimension expression '{text}'")
    return e


class _P:
    def __init__(self, toks, text):
        self.t, self.i, self.text = toks, 0, text

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self):
        tok = self.peek()
        if tok is None:
            raise ParseError(f"bad dimension expression '{self.text}': unexpected end")
        self.i += 1
        return tok

    def expr(self):
        e = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            r = self.term()
            e = e + r if op == "+" else e - r
        return e

    def term(self):
        e = self.power()
        while self.peek() in ("*", "/"):
            op = self.take()
            r = self.power()
            e = e * r if op == "*" else e / r
        return e

    def power(self):
        e = self.unary()
        if self.peek() == "^":
            self.take()
            exp = self.unary()
            if not exp.is_Rational:
                raise ParseError(f"bad dimension expression '{self.text}': exponent must be a rational number")
            e = e ** exp
        return e

    def unary(self):
        if self.peek() == "-":
            self.take()
            return -self.unary()
        return self.atom()

    def atom(self):
        tok = self.take()
        if tok == "(":
            e = self.expr()
            if self.take() != ")":
                raise ParseError(f"bad dimension expression '{self.text}': missing ')'")
            return e
        if tok.isdigit():
            return sympy.Integer(int(tok))
        if tok[0].isdigit():
            return sympy.Float(tok)
        if tok == "sqrt":
            if self.take() != "(":
                raise ParseError(f"bad dimension expression '{self.text}': sqrt needs '('")
            e = self.expr()
            if self.take() != ")":
                raise ParseError(f"bad dimension expression '{self.text}': missing ')'")
            return sympy.sqrt(e)
        if tok[0].isalpha() or tok[0] == "_":
            return sympy.Symbol(tok, integer=True, positive=True)
        raise ParseError(f"bad dimension expression '{self.text}' at '{tok}'")
