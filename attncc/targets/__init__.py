"""Targets: one module per target, found by name.

A target module defines ``NAME``, a frozen ``Config`` dataclass (its tunable
knobs), and ``default_config(spec)``, ``validate_config(spec, config)``,
``lower(spec, config) -> tvm.IRModule``, ``build(spec, config)``,
``run(built, q, k, v)`` and ``measure(built, spec)``.  Adding a target is adding
a module here; nothing else is edited.
"""

from __future__ import annotations

import importlib
import pkgutil

from attncc.errors import TargetError

_NOT_TARGETS = {"spec", "lowering"}


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name not in _NOT_TARGETS)


def get_target(name: str):
    if name not in available():
        raise TargetError(f"unknown target '{name}' (available: {', '.join(available())})")
    mod = importlib.import_module(f"{__name__}.{name}")
    for attr in ("NAME", "Config", "default_config", "validate_config", "lower", "build", "run", "measure"):
        if not hasattr(mod, attr):
            raise TargetError(f"target '{name}' is incomplete: it lacks {attr}")
    return mod
