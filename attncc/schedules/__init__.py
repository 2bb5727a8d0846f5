"""Schedules: the knobs each target family exposes, their search spaces, the tuning
database and the tuner.

One module per target family (``cpu.py``, ``cuda.py``; a ``rocm.py`` or
``systolic.py`` is added the same way, nothing else edited), found by the target's
name.  A family module defines:

    TARGET                      the target name it describes
    OVERLAP_BUILDS              default of "build the next candidates while measuring"
    knobs(spec, options)        -> list[Knob]: each knob's name and candidate values
    validate(spec, config, options)   raises ConfigError with the reason (the
                                target's validate_config plus the family's own checks)
    device_name(options)        the device a record applies to
    cost_model(spec, config, options) -> predicted seconds (an analytic model)
    sampler(built, spec)        -> fn(n) -> n per-call times in seconds
    load_built(spec, config, path, options)   (optional) a built kernel from an
                                exported library: lets builds run in other processes

The rest of the package is target-independent:

    space.py    SearchSpace: enumerate, validate (rejections counted by reason), mutate
    search.py   exhaustive, random and cost-model-guided (evolutionary) search
    db.py       TuningDB: the JSON-lines database, keys, shape buckets
    tuner.py    tune(): measurement in worker processes with time limits
    lookup.py   which tuned record ``compile`` uses
    report.py   progress bar, --show table, --plot figure
    candidates.py        the split flow, build side: every candidate of a space built and
                         exported with a manifest (``attncc tune --export-candidates``)
    measure_candidates.py  the split flow, measuring side: runs on a GPU machine with only
                         TVM's runtime and tvm-ffi; writes results JSONL for ``--ingest``
"""

from __future__ import annotations

import importlib
import pkgutil

from attncc.errors import TargetError

_NOT_FAMILIES = {"space", "search", "db", "tuner", "lookup", "report", "candidates", "measure_candidates"}


def available() -> list[str]:
    """Targets that have a schedule family (knobs, search space, cost model)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name not in _NOT_FAMILIES)


def get_family(target: str):
    """The schedule family module of ``target``."""
    if target not in available():
        raise TargetError(f"target '{target}' has no tuning knobs declared in attncc/schedules/ "
                          f"(tunable: {', '.join(available())})")
    mod = importlib.import_module(f"{__name__}.{target}")
    for attr in ("TARGET", "knobs", "validate", "device_name", "cost_model", "sampler"):
        if not hasattr(mod, attr):
            raise TargetError(f"schedule family '{target}' is incomplete: it lacks {attr}")
    return mod
