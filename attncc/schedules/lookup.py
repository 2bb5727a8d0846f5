"""Which config ``compile`` uses: the best tuned record for this variant, shape bucket,
dtype, target and device, looked up in order in

1. the database given (``attncc compile --db``, ``compile_variant(tuning_db=)``),
2. the user's database: ``$ATTNCC_TUNING_DB``, else ``$XDG_CACHE_HOME/attncc/tuning.jsonl``
   (``~/.cache/attncc/tuning.jsonl``), where ``attncc tune`` writes by default,
3. the packaged defaults (``attncc/schedules/defaults.jsonl``, shipped with attncc),

the first that has a record whose config is valid for this kernel (and, where the target
names kernel revisions -- cuda's ``kernel_revision`` -- whose record was measured on the
revision that config runs now, or says nothing about it); else the target's
default config.  The device is the local GPU's name when it is the architecture asked for,
else the architecture's usual GPU (cuda: ``--arch sm_90a`` -> 'NVIDIA H100'); records of
that device come first, then records of a device on the same chip (the family's
``equivalent_devices``; cuda: H100, H200, GH200 and H800 are one GH100 chip with the same SMs
and clocks), and ``config_source`` names the device that measured the record used.  The reason is returned with the config so that ``compile`` can say
which one it used and why.  A lookup never makes a compile fail.
"""

from __future__ import annotations

import os
from typing import Optional

from attncc.schedules.db import TuningDB, make_key

_DBS: dict = {}


def user_db_path() -> str:
    env = os.environ.get("ATTNCC_TUNING_DB")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "attncc", "tuning.jsonl")


def packaged_db_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.jsonl")


def open_db(path: str) -> TuningDB:
    """A TuningDB for ``path``, shared per path (its parsed records are cached until the
    file changes)."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    db = _DBS.get(path)
    if db is None:
        db = _DBS[path] = TuningDB(path)
    return db


def sources(db=None) -> list:
    """[(label, path)] in lookup order, without repeats."""
    out, seen = [], set()
    for label, path in (("given", db), ("user", user_db_path()), ("packaged", packaged_db_path())):
        if not path:
            continue
        path = os.path.abspath(os.path.expanduser(str(getattr(path, "path", path))))
        if path not in seen:
            seen.add(path)
            out.append((label, path))
    return out


def _fmt_time(s: float) -> str:
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def find_record(target: str, spec, func, target_options: Optional[dict] = None, db=None,
                skipped: Optional[list] = None):
    """(record, path, key) of the best valid tuned record, or (None, None, key).  Records passed
    over because a new kernel became the default since they were tuned go into ``skipped``."""
    import dataclasses

    from attncc.compiler import make_config
    from attncc.errors import ConfigError
    from attncc.schedules import get_family
    from attncc.targets import get_target

    family = get_family(target)
    tgt = get_target(target)
    options = dict(target_options or {})
    key = make_key(func, spec, target, family.device_name(options))
    base = tgt.default_config(spec)                 # the kernel's config class (cuda: prefill or decode)
    fields = {f.name for f in dataclasses.fields(base)}
    revision = getattr(tgt, "kernel_revision", None)
    # the kernel compile runs without a record, on the arch the record was tuned for: a record
    # tuned while another kernel was the default never met this one (it became the default
    # since, as the persistent kernel did for causal), so it is not used -- it may well be
    # slower than what compile does without it.  A changed default config of the same kernel
    # (a stage count) keeps the record: the search covered that config.
    default_kernels: dict = {}

    def default_kernel_now(arch):
        if arch not in default_kernels:
            try:
                default_kernels[arch] = revision(spec, make_config(tgt, spec, None, arch, options))
            except Exception:  # noqa: BLE001 - no default to compare with: the record stands
                default_kernels[arch] = None
        return default_kernels[arch]

    def tuned_against_another_kernel(rec) -> bool:
        then = rec.extra.get("default_config")
        if then is None or revision is None:
            return False                   # records from before default_config was written
        try:
            kernel_then = revision(spec, dataclasses.replace(base, **then))
        except (TypeError, ValueError):
            return False
        now = default_kernel_now(rec.extra.get("arch") or options.get("arch"))
        return now is not None and kernel_then != now

    devices = [key.device] + list(getattr(family, "equivalent_devices", lambda d: [])(key.device))
    for device in devices:                           # the device itself first, then the same chip
        dkey = dataclasses.replace(key, device=device)
        for _, path in sources(db):
            if not os.path.exists(path):
                continue
            for rec in open_db(path).ranked(dkey):     # fastest first; skip what no longer fits
                if set(rec.config) - fields:
                    continue
                try:
                    cfg = dataclasses.replace(base, **rec.config)
                    family.validate(spec, cfg, options)
                except (ConfigError, TypeError, ValueError):
                    continue
                if tuned_against_another_kernel(rec):
                    if skipped is not None:        # tuned before a new kernel became the default
                        skipped.append((rec, path))
                    continue
                measured_on = rec.extra.get("kernel_revision")
                if measured_on is not None and revision is not None and measured_on != revision(spec, cfg):
                    continue                       # measured on another revision of the kernel
                return rec, path, dkey
    return None, None, key


def tuned_config(target: str, spec, func, target_options: Optional[dict] = None, db=None):
    """(config overrides or None, why) for ``compile``."""
    skipped: list = []
    try:
        rec, path, key = find_record(target, spec, func, target_options, db, skipped)
    except Exception as exc:  # no knobs declared for the target, an unreadable file, ...
        text = str(exc).strip().splitlines()
        return None, f"target default (no tuning lookup: {text[0] if text else type(exc).__name__})"
    if rec is None and skipped:
        old, where = skipped[0]
        return None, (f"target default (the tuned record in {where} for {key.bucket} {key.dtype} on "
                      f"{old.key.device}, measured {old.date[:10]}, was tuned while another kernel was the "
                      f"default: it never met this one; `attncc tune` measures both)")
    if rec is None:
        return None, f"target default (no tuned record for this variant at {key.bucket} {key.dtype} on {key.device})"
    which = ("packaged defaults" if path == packaged_db_path() else
             "your tuning database" if path == user_db_path() else "--db")
    spread = f" (IQR {rec.spread * 100:.1f}%)" if rec.spread is not None else ""
    wanted = _device_wanted(target, target_options)
    same = (f" (a record of the same chip: none of {wanted} itself)"
            if wanted is not None and wanted != key.device else "")
    return dict(rec.config), (f"tuned record from {path} ({which}): {_fmt_time(rec.time_s)}{spread} at "
                              f"{key.bucket} on {key.device}{same}, measured {rec.date[:10]} by attncc {rec.attncc}")


def _device_wanted(target: str, target_options: Optional[dict]) -> Optional[str]:
    try:
        from attncc.schedules import get_family

        return get_family(target).device_name(dict(target_options or {}))
    except Exception:  # noqa: BLE001
        return None
