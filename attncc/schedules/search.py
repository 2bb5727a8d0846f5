"""Search strategies: which configs to measure next.

A strategy is asked for the next candidates (``propose(n)``) and told each result
(``observe(config, seconds or None)``; None: the candidate failed).  The tuner owns
measuring; a strategy never builds anything, so the same strategy can also be
replayed on a table of times measured beforehand (benchmarks/tuning.py does that to
count trials-to-within-5%-of-best).

* :class:`Exhaustive`  every valid config once, in the order the cost model ranks them
  (so a budget cut short still measured the most promising ones first).
* :class:`RandomSearch` valid configs in a random order (the baseline).
* :class:`Guided`      cost-model-guided: an analytic model of the kernel (the family's
  ``cost_model``), multiplied by a correction learned from the measurements so far
  (ridge regression of log(measured / predicted) on one-hot knob values and pairs of
  them).  Candidates come from an evolutionary search over the corrected model
  (mutation and crossover of the best predicted and measured configs); when the
  space is small enough to score whole (``enumerate_limit`` valid configs) every
  config is scored instead, which is what the evolution converges to.  Each batch
  measures the best predicted unmeasured configs, plus, with probability
  ``explore``, one drawn at random from the top quarter (so a wrong model is found out).
  ``transfer``: measurements of *other* kernels on the same device, as (knob values,
  log(measured / predicted) centred per kernel) pairs: the correction is fitted on them
  too (weight ``transfer_weight``), from the first proposal on, so what the model got
  wrong on earlier kernels (e.g. that three warpgroups beat one on Hopper) is known before
  this kernel's first measurement (transfer learning, as AutoTVM's).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Optional

import numpy as np


class Strategy:
    name = "strategy"

    def __init__(self, space, seed: int = 0):
        self.space = space
        self.rng = np.random.default_rng(seed)
        self.measured: dict = {}        # config -> seconds (inf when it failed)

    def propose(self, n: int) -> list:
        raise NotImplementedError

    def observe(self, config, seconds: Optional[float]) -> None:
        self.measured[config] = math.inf if seconds is None else float(seconds)

    def exhausted(self) -> bool:
        return False


class _Ordered(Strategy):
    """Walk a fixed order of the valid configs."""

    def __init__(self, space, seed: int = 0, first: Optional[list] = None):
        super().__init__(space, seed)
        self.order = list(first or []) + [c for c in self._order() if c not in (first or [])]
        self.pos = 0

    def _order(self) -> list:
        raise NotImplementedError

    def propose(self, n: int) -> list:
        out = []
        while len(out) < n and self.pos < len(self.order):
            c = self.order[self.pos]
            self.pos += 1
            if c not in self.measured:
                out.append(c)
        return out

    def exhausted(self) -> bool:
        return all(c in self.measured for c in self.order[self.pos:])


class Exhaustive(_Ordered):
    name = "exhaustive"

    def __init__(self, space, seed: int = 0, first: Optional[list] = None, model: Optional[Callable] = None):
        self.model = model
        super().__init__(space, seed, first)

    def _order(self) -> list:
        configs = self.space.valid_configs()
        if self.model is None:
            return configs
        return [c for _, _, c in sorted((self.model(c), i, c) for i, c in enumerate(configs))]


class RandomSearch(_Ordered):
    name = "random"

    def _order(self) -> list:
        configs = self.space.valid_configs()
        return [configs[i] for i in self.rng.permutation(len(configs))]


class Guided(Strategy):
    name = "guided"

    def __init__(self, space, model: Callable, seed: int = 0, first: Optional[list] = None,
                 explore: float = 0.15, enumerate_limit: int = 5000, population: int = 64,
                 generations: int = 6, ridge: float = 1.0, pairs: bool = True,
                 transfer: Optional[list] = None, transfer_weight: float = 0.5):
        super().__init__(space, seed)
        self.transfer = list(transfer or [])
        self.transfer_weight = transfer_weight
        self.model = model
        self.first = list(first or [])
        self.explore = explore
        self.population = population
        self.generations = generations
        self.ridge = ridge
        self.pairs = pairs
        self._prior: dict = {}                  # config -> log(analytic prediction)
        self._weights = None                    # learned correction
        self._features: dict = {}
        self._feature_index = self._make_feature_index()
        self.pool: list = []                    # candidates scored so far
        if space.size <= enumerate_limit * 4 and len(space.valid_configs()) <= enumerate_limit:
            self.pool = space.valid_configs()
            self.enumerated = True
        else:
            self.enumerated = False
            self.pool = self._seed_population()
        self.evaluations = 0                    # analytic model calls (cheap)

    # ---- the model
    def _make_feature_index(self) -> dict:
        idx: dict = {}
        for k in self.space.knobs:
            for v in k.values:
                idx[(k.name, v)] = len(idx)
        if self.pairs:
            for a, b in itertools.combinations(self.space.knobs, 2):
                for va in a.values:
                    for vb in b.values:
                        idx[(a.name, va, b.name, vb)] = len(idx)
        return idx

    def _phi(self, config) -> np.ndarray:
        f = self._features.get(config)
        if f is None:
            f = self._features[config] = self._phi_values(self.space.as_dict(config))
        return f

    def _phi_values(self, d: dict) -> np.ndarray:
        """One-hot features of knob values (and pairs of them); values not in this space count nothing."""
        f = np.zeros(len(self._feature_index))
        for k in self.space.knobs:
            i = self._feature_index.get((k.name, d.get(k.name)))
            if i is not None:
                f[i] = 1.0
        if self.pairs:
            for a, b in itertools.combinations(self.space.knobs, 2):
                i = self._feature_index.get((a.name, d.get(a.name), b.name, d.get(b.name)))
                if i is not None:
                    f[i] = 1.0
        return f

    def prior(self, config) -> float:
        p = self._prior.get(config)
        if p is None:
            self.evaluations += 1
            p = math.log(max(self.model(config), 1e-12))
            self._prior[config] = p
        return p

    def predict(self, config) -> float:
        """log predicted seconds (analytic model times the learned correction)."""
        p = self.prior(config)
        if self._weights is not None:
            b0, w = self._weights
            p += b0 + float(self._phi(config) @ w)
        return p

    def _refit(self) -> None:
        ok = [(c, t) for c, t in self.measured.items() if math.isfinite(t)]
        if len(ok) < 3 and not self.transfer:
            self._weights = None
            return
        rows = [self._phi(c) for c, _ in ok]
        y = [math.log(t) - self.prior(c) for c, t in ok]
        b0 = float(np.median(y)) if y else 0.0
        r = [v - b0 for v in y]
        wts = [1.0] * len(r)
        for values, resid in self.transfer:          # other kernels' residuals, already centred
            rows.append(self._phi_values(values))
            r.append(float(resid))
            wts.append(self.transfer_weight)
        sw = np.sqrt(np.array(wts))
        X = np.array(rows) * sw[:, None]
        r = np.array(r) * sw
        # ridge: w = (XᵀX + λI)⁻¹ Xᵀ r  (solved in the smaller of the two dimensions)
        n, m = X.shape
        if n < m:
            w = X.T @ np.linalg.solve(X @ X.T + self.ridge * np.eye(n), r)
        else:
            w = np.linalg.solve(X.T @ X + self.ridge * np.eye(m), X.T @ r)
        self._weights = (b0, w)

    # ---- evolution over the model (for spaces too large to score whole)
    def _seed_population(self) -> list:
        out, seen = [], set()
        tries = 0
        while len(out) < self.population and tries < self.population * 50:
            tries += 1
            c = self.space.random_config(self.rng)
            if c not in seen and self.space.is_valid(c):
                seen.add(c)
                out.append(c)
        for c in self.first:
            if c not in seen and self.space.is_valid(c):
                out.append(c)
        return out

    def _evolve(self) -> None:
        known = set(self.pool)
        parents = sorted(self.pool, key=self.predict)[: self.population]
        best_measured = sorted((c for c, t in self.measured.items() if math.isfinite(t)),
                               key=lambda c: self.measured[c])[:8]
        for _ in range(self.generations):
            breed = parents + best_measured
            children = []
            for _ in range(self.population * 2):
                if self.rng.random() < 0.3 and len(breed) > 1:
                    a, b = (breed[i] for i in self.rng.choice(len(breed), 2, replace=False))
                    child = self.space.crossover(a, b, self.rng)
                    if self.rng.random() < 0.5:
                        child = self.space.mutate(child, self.rng)
                else:
                    # tournament of 3: the best predicted parent breeds
                    picks = [breed[i] for i in self.rng.choice(len(breed), min(3, len(breed)), replace=False)]
                    child = self.space.mutate(min(picks, key=self.predict), self.rng,
                                              steps=1 + int(self.rng.random() < 0.3))
                if child not in known and self.space.is_valid(child):
                    known.add(child)
                    children.append(child)
            self.pool.extend(children)
            parents = sorted(set(parents + children), key=self.predict)[: self.population]
        # fresh blood: a few random valid configs each round
        self.pool.extend(c for c in self._seed_population()[:8] if c not in known)

    # ---- the strategy
    def propose(self, n: int) -> list:
        out = [c for c in self.first if c not in self.measured][:n]
        self.first = [c for c in self.first if c not in out and c not in self.measured]
        if len(out) >= n:
            return out
        self._refit()
        if not self.enumerated:
            self._evolve()
        ranked = sorted((c for c in self.pool if c not in self.measured and c not in out), key=self.predict)
        if not ranked:
            return out
        want = n - len(out)
        explore = want > 0 and len(ranked) > want and self.rng.random() < self.explore
        take = ranked[: want - 1] if explore else ranked[:want]
        out += take
        if explore:
            rest = ranked[len(take): max(len(take) + 1, len(ranked) // 4)]
            out.append(rest[self.rng.integers(len(rest))])
        return out

    def exhausted(self) -> bool:
        return self.enumerated and all(c in self.measured for c in self.pool)


def transfer_from_records(records, knob_names, exclude=None) -> list:
    """Transfer rows for :class:`Guided` from tuning records of other kernels: for each key
    (but ``exclude``) whose configs have exactly ``knob_names`` and whose records carry the
    cost model's prediction (extra ``predicted_s``), each config's log(median measured time /
    predicted), less the key's median, so that only what the model gets wrong *relative to
    other configs* transfers, not its absolute error on that kernel."""
    import statistics

    names = set(knob_names)
    by_key: dict = {}
    for r in records:
        if not r.ok or r.key == exclude or set(r.config) != names:
            continue
        pred = r.extra.get("predicted_s")
        if not isinstance(pred, (int, float)) or not pred > 0:
            continue
        by_key.setdefault(r.key, {}).setdefault(r.config_id(), (r.config, pred, []))[2].append(r.time_s)
    rows = []
    for configs in by_key.values():
        if len(configs) < 4:                      # too few configs to say anything relative
            continue
        res = [(cfg, math.log(statistics.median(ts) / pred)) for cfg, pred, ts in configs.values()]
        mid = statistics.median(v for _, v in res)
        rows += [(dict(cfg), v - mid) for cfg, v in res]
    return rows


STRATEGIES = {"exhaustive": Exhaustive, "random": RandomSearch, "guided": Guided}


def make_strategy(name: str, space, model: Callable, seed: int = 0, first: Optional[list] = None, **kw):
    if name == "guided":
        return Guided(space, model, seed=seed, first=first, **kw)
    if name == "exhaustive":
        return Exhaustive(space, seed=seed, first=first, model=model)
    if name == "random":
        return RandomSearch(space, seed=seed, first=first)
    from attncc.errors import AttnccError

    raise AttnccError(f"unknown search strategy '{name}' (choose: auto, {', '.join(STRATEGIES)})")
