"""Errors a user can cause.

Every error that a user's input can trigger is an :class:`AttnccError`; the CLI
prints its message (one line, naming the variant, op and line where known) and
exits with code 2.  Anything else reaching the user is a compiler bug.
"""

from __future__ import annotations


class AttnccError(Exception):
    """Base class of all user-facing errors."""

    def __init__(self, message: str, *, variant: str | None = None, op: str | None = None,
                 line: int | None = None):
        self.message = message
        self.variant = variant
        self.op = op
        self.line = line
        super().__init__(self.format())

    def format(self) -> str:
        where = []
        if self.variant:
            where.append(f"variant '{self.variant}'")
        if self.op:
            where.append(f"op {self.op}")
        if self.line is not None:
            where.append(f"line {self.line}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"{prefix}{self.message}"


class VariantError(AttnccError):
    """The variant file could not be loaded or traced (syntax error, bad declarations)."""


class ShapeError(AttnccError):
    """Shapes or ranks do not agree."""


class DTypeError(AttnccError):
    """A dtype is unknown or not supported where it is used."""


class ParseError(AttnccError):
    """The textual IR could not be parsed."""


class VerifyError(AttnccError):
    """The IR is malformed."""


class PassError(AttnccError):
    """A pass refused its input (for example: the graph is not attention)."""


class TargetError(AttnccError):
    """Unknown target, or a target that cannot build this kernel."""


class ConfigError(AttnccError):
    """A schedule configuration is invalid for the target."""
