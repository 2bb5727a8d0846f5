"""A target's search space for one kernel: the product of its knobs' values, less the
configs that cannot fit (rejected before any build, the reasons counted)."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Optional

from attncc.errors import ConfigError, DTypeError, ShapeError


@dataclass(frozen=True)
class Knob:
    name: str
    values: tuple
    doc: str = ""


def config_dict(config) -> dict:
    """A config's knob values as a dict (tuning records, candidate names): fields marked
    ``omit_default`` in their metadata are left out while at their default (knobs added after
    records were written: the old records keep matching)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("omit_default") and value == f.default:
            continue
        out[f.name] = value
    return out


def reason_of(exc: ConfigError) -> str:
    """The rejection reason of a ConfigError as a countable class: without the config's
    repr and with numbers replaced by N ("block_k (N) must be a multiple of ...")."""
    msg = getattr(exc, "message", None) or str(exc)
    msg = re.sub(r"^[\w ]*?config \w+\(.*?\):\s*", "", msg)
    msg = msg.split(": lower ")[0].split(" (limit ")[0]
    return re.sub(r"(?<![\w.])-?\d+(\.\d+)?(?![\w])", "N", msg).strip()


class SearchSpace:
    """The configs of ``target`` for ``spec``.

    ``options`` are the target's build options (``arch`` for cuda).  ``is_valid`` and
    ``valid_configs`` ask the family's ``validate`` (the target's ``validate_config``
    plus the family's own checks) and count each distinct rejected config's reason in
    ``rejected``.
    """

    def __init__(self, target: str, spec, options: Optional[dict] = None, knobs: Optional[list] = None):
        from attncc.schedules import get_family
        from attncc.targets import get_target

        self.target_name = target
        self.target = get_target(target)
        self.family = get_family(target)
        self.spec = spec
        self.options = dict(options or {})
        self.knobs: list[Knob] = list(knobs if knobs is not None else self.family.knobs(spec, self.options))
        self.rejected: Counter = Counter()
        self._example: dict = {}                  # reason -> the first error's own text
        self._verdict: dict = {}          # config -> None (valid) or reason
        self._valid: Optional[list] = None

    # ---- sizes
    @property
    def size(self) -> int:
        n = 1
        for k in self.knobs:
            n *= len(k.values)
        return n

    def names(self) -> list[str]:
        return [k.name for k in self.knobs]

    # ---- configs
    def default(self):
        """The config ``compile`` uses without tuning (given the arch when the target's
        default_config takes it, as attncc.compiler.make_config does)."""
        import inspect

        arch = self.options.get("arch")
        params = inspect.signature(self.target.default_config).parameters
        if arch and "arch" in params:
            return self.target.default_config(self.spec, arch=arch)
        if "options" in params:
            return self.target.default_config(self.spec, options=self.options)
        return self.target.default_config(self.spec)

    def make(self, values: dict):
        """A Config from knob values; knobs the space does not vary keep the default, except the
        opt-in knobs (fields marked ``omit_default``: chained blocks, the persistent kernel),
        which stay off -- the default may set one (a band's persistent kernel), and every
        candidate inheriting it would search that kernel's shapes only."""
        base = self.default()
        off = {f.name: f.default for f in dataclasses.fields(base)
               if f.metadata.get("omit_default") and f.name not in values}
        return dataclasses.replace(base, **off, **values)

    @staticmethod
    def as_dict(config) -> dict:
        return config_dict(config)

    def check(self, config) -> Optional[str]:
        """None if ``config`` can build this kernel, else the reason (counted once)."""
        if config in self._verdict:
            return self._verdict[config]
        try:
            self.family.validate(self.spec, config, self.options)
            searched = getattr(self.family, "searched", None)    # the family's own grid, if any
            if searched is not None:
                searched(self.spec, config, self.options)
            verdict = None
        except (ConfigError, ShapeError, DTypeError) as exc:
            # ShapeError / DTypeError: this config's kernel cannot take the shape or the inputs
            # (fp8 wgmma at head_dim 64, int8 on wgmma: the mma.sync configs take them)
            verdict = reason_of(exc)
            self.rejected[verdict] += 1
            self._example.setdefault(verdict, exc)
        self._verdict[config] = verdict
        return verdict

    def nothing_valid(self) -> Exception:
        """The error to raise when no config of the space can build the kernel: the most
        common rejection's own error (e.g. fp8 on sm_80: the DTypeError naming sm_89)."""
        if not self.rejected:
            return ConfigError(f"{self.target_name}: the search space is empty")
        reason, n = self.rejected.most_common(1)[0]
        exc = self._example[reason]
        return type(exc)(f"no config of the {self.target_name} search space can build this kernel "
                         f"({n} of {sum(self.rejected.values())} rejected for this reason): {exc.message}",
                         variant=exc.variant)

    def is_valid(self, config) -> bool:
        return self.check(config) is None

    def all_configs(self) -> Iterator:
        for values in itertools.product(*(k.values for k in self.knobs)):
            yield self.make(dict(zip(self.names(), values)))

    def valid_configs(self) -> list:
        """Every valid config, in enumeration order (the whole product is checked)."""
        if self._valid is None:
            self._valid = [c for c in self.all_configs() if self.is_valid(c)]
        return list(self._valid)

    @property
    def checked(self) -> int:
        return len(self._verdict)

    # ---- moves (for evolutionary search)
    def random_config(self, rng):
        return self.make({k.name: k.values[rng.integers(len(k.values))] for k in self.knobs})

    def mutate(self, config, rng, steps: int = 1):
        """Change ``steps`` random knobs, each to a neighbouring value (or any value, 1 in 4)."""
        values = self.as_dict(config)
        for _ in range(steps):
            k = self.knobs[rng.integers(len(self.knobs))]
            vals = list(k.values)
            cur = values.get(k.name)
            if cur in vals and rng.random() < 0.75 and len(vals) > 1:
                i = vals.index(cur) + (1 if rng.random() < 0.5 else -1)
                i = min(max(i, 0), len(vals) - 1)
                if vals[i] == cur:
                    i = vals.index(cur) - 1 if i == len(vals) - 1 else vals.index(cur) + 1
                values[k.name] = vals[i]
            else:
                values[k.name] = vals[rng.integers(len(vals))]
        return self.make({k.name: values[k.name] for k in self.knobs})

    def crossover(self, a, b, rng):
        da, db = self.as_dict(a), self.as_dict(b)
        return self.make({k.name: (da if rng.random() < 0.5 else db)[k.name] for k in self.knobs})

    def describe(self) -> str:
        return ", ".join(f"{k.name} in {{{', '.join(str(v) for v in k.values)}}}" for k in self.knobs)


def key_blocks(spec, bq: int, bk: int, tables: bool = False):
    """(visited, full) key blocks per query block, as numpy arrays: the blocks a kernel
    walks inside ``spec.key_bounds`` (or, with ``tables``, the non-empty tiles of the tile
    map), and those of them that need no element mask.  For cost models."""
    import numpy as np

    S, TK = spec.q_len, spec.kv_len
    nqb, nkb = -(-S // bq), -(-TK // bk)
    tp = nkb * bk
    if tables:
        if spec.tile_map is not None:
            t = np.asarray(spec.tile_map(bq, bk))
            visited = (t != 0).sum(axis=1)
            full = (t == 2)
            if tp != TK:
                full[:, -1] = False
            return visited.astype(float), full.sum(axis=1).astype(float)
        return np.full(nqb, float(nkb)), np.zeros(nqb)      # runtime block map: assume dense
    kb = spec.key_bounds
    lo_off, hi_off = kb.lower_offset, kb.upper_offset
    if hi_off is not None and hi_off >= TK - 1:
        hi_off = None
    if lo_off is not None and lo_off <= -(S - 1):
        lo_off = None
    band_is_mask = spec.mask_mod is None or kb.exact
    q0 = np.arange(nqb) * bq
    q_last = np.minimum(q0 + bq - 1, S - 1)
    lo = np.zeros(nqb, dtype=np.int64) if lo_off is None else np.maximum(q0 + lo_off, 0) // bk
    hi = (np.full(nqb, nkb, dtype=np.int64) if hi_off is None
          else np.maximum(np.minimum(q_last + hi_off, TK - 1) // bk + 1, lo))
    visited = (hi - lo).astype(float)
    if not band_is_mask:
        return visited, np.zeros(nqb)
    f_lo = lo.copy()
    f_hi = hi - 1
    if tp != TK:
        f_hi = np.minimum(f_hi, (TK - bk) // bk)
    if lo_off is not None:
        f_lo = np.maximum(f_lo, -(-(q_last + lo_off) // bk))
    if hi_off is not None:
        f_hi = np.minimum(f_hi, np.floor_divide(q0 + hi_off - bk + 1, bk))
    full = np.maximum(f_hi - f_lo + 1, 0).astype(float)
    return visited, np.minimum(full, visited)
