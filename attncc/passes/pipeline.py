"""The pass manager: passes registered by name, pipelines parsed from text
(``canonicalize,tile-online-softmax{block_k=64}``), IR printed after each pass."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import ClassVar, Optional, TextIO

from attncc.errors import PassError
from attncc.ir.core import Function, Module
from attncc.ir.printer import print_ir
from attncc.ir.verify import verify

PASSES: dict[str, type] = {}


class Pass:
    """A pass is a small frozen dataclass: ``name`` is its command-line name,
    its fields are its typed options, ``apply`` maps a Function to a Function."""

    name: ClassVar[str] = ""

    def apply(self, func: Function) -> Function:  # pragma: no cover - interface
        raise NotImplementedError

    def spec(self) -> str:
        opts = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default]
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def register_pass(cls):
    if not cls.name:
        raise ValueError(f"pass {cls.__name__} has no name")
    PASSES[cls.name] = cls
    return cls


_ITEM = re.compile(r"\s*([a-z][a-z0-9-]*)\s*(?:\{([^}]*)\})?\s*(?:,|$)")


def _coerce(field: dataclasses.Field, text: str, pass_name: str):
    t = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    try:
        if "int" in t and "Optional" not in t or t == "int":
            return int(text)
        if "Optional[int]" in t or "int | None" in t:
            return None if text in ("none", "None") else int(text)
        if "bool" in t:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if "float" in t:
            return float(text)
    except ValueError:
        raise PassError(f"pass {pass_name}: option {field.name} expects {t}, got '{text}'") from None
    return text


def parse_pipeline(text: str) -> list[Pass]:
    """``a,b{opt=1},c`` -> pass instances.  Unknown names and options are PassErrors."""
    from attncc.passes import load_all
    load_all()
    out: list[Pass] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise PassError(f"cannot parse pass pipeline '{text}' at '{text[pos:]}'")
        name, opts = m.group(1), m.group(2)
        if name not in PASSES:
            raise PassError(f"unknown pass '{name}' (known: {', '.join(sorted(PASSES))})")
        cls = PASSES[name]
        kwargs = {}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for item in filter(None, (s.strip() for s in (opts or "").split(","))):
            if "=" not in item:
                raise PassError(f"pass {name}: option '{item}' must be key=value")
            k, v = (s.strip() for s in item.split("=", 1))
            if k not in fields:
                raise PassError(f"pass {name} has no option '{k}' (options: {', '.join(fields) or 'none'})")
            kwargs[k] = _coerce(fields[k], v, name)
        out.append(cls(**kwargs))
        pos = m.end()
    return out


DEFAULT_PIPELINE = "canonicalize,fuse-attention,canonicalize,tile-online-softmax,prune-sparsity"


@dataclass
class PipelineResult:
    func: Function
    applied: list[str]


def run_pipeline(func: Function, passes: "str | list[Pass]" = DEFAULT_PIPELINE,
                 print_after_all: Optional[TextIO] = None) -> PipelineResult:
    """Run passes in order, verifying after each; optionally print the IR after each."""
    if isinstance(passes, str):
        passes = parse_pipeline(passes)
    verify(func)
    applied = []
    for p in passes:
        func = p.apply(func)
        try:
            verify(func)
        except Exception as e:  # a pass produced bad IR: that is a compiler bug, say which pass
            raise AssertionError(f"pass {p.name} produced invalid IR: {e}") from e
        applied.append(p.spec())
        if print_after_all is not None:
            print_after_all.write(f"// -----// IR after {p.spec()} //----- //\n")
            print_after_all.write(print_ir(func))
            print_after_all.write("\n")
    return PipelineResult(func, applied)


def run_on_module(mod: Module, passes, print_after_all=None) -> Module:
    if isinstance(passes, str):
        passes = parse_pipeline(passes)
    return Module([run_pipeline(f, passes, print_after_all).func for f in mod.functions])
