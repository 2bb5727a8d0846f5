"""The tuner: search a target's knobs for one kernel, measuring each candidate, and
append every result to the tuning database.

    from attncc.schedules.tuner import tune, TuneSettings
    result = tune("examples/causal_gqa.py", "cpu", shapes={"S": 4096},
                  settings=TuneSettings(budget_s=60), db="tuning.jsonl")
    result.best.config, result.best.time_s

Measuring.  Each candidate is built and timed in a worker process (spawned once,
reused; started again after a crash or a time limit), so a build or a kernel that
hangs (``build_timeout_s``, ``run_timeout_s``) or crashes is recorded as failed and
skipped, never fatal.  A measurement is ``warmup`` untimed calls, then timed calls
until there are ``min_runs`` of them and ``min_seconds`` of kernel time (at most
``max_runs``); the record keeps the median, the spread ((p75 - p25) / median) and the
count.  A candidate whose first timed call is over 3x the best so far is cut short
after 3 calls (it cannot win; its median is still recorded).  At the end the best
``confirm`` configs (and the default) are measured again, interleaved, so that the
choice does not rest on one lucky measurement: ``TuningDB.best`` ranks configs by the
median over all their records.

Overlap.  With ``overlap`` on, builds run in ``builders`` more processes while the
runner process times the previous candidate (the built library goes through a file:
the family's ``load_built``).  It is off by default on the CPU (``OVERLAP_BUILDS`` in
schedules/cpu.py): the kernel uses every core, and an LLVM build beside it would
distort the timings; on for GPU targets, whose timings do not share the host cores.

Search.  ``strategy="auto"`` measures every valid config (ordered by the cost model)
when there are at most ``exhaustive_limit`` of them and the trial budget allows it,
else runs the cost-model-guided search (schedules/search.py).  The default config is
measured first, so every session has its baseline.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

from attncc.errors import AttnccError
from attncc.schedules.db import OK, Record, TuningDB, TuningKey, make_key, record_for


# --------------------------------------------------------------------------- settings


def parse_duration(text) -> float:
    """'60s', '2m', '1.5h', '90' -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(ms|s|sec|m|min|h)?\s*", str(text))
    if not m:
        raise AttnccError(f"bad duration '{text}': expected e.g. 60s, 5m, 1h")
    mult = {"ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * mult


@dataclass
class TuneSettings:
    trials: Optional[int] = None          # candidates to measure; default 64 when no budget is given
    budget_s: Optional[float] = None      # wall-clock limit of the whole session
    strategy: str = "auto"                # auto | exhaustive | guided | random
    exhaustive_limit: int = 64            # auto: exhaustive when the valid space is at most this big
    enumerate_max: int = 200_000          # larger spaces are never enumerated (guided search samples them)
    overlap: Optional[bool] = None        # build while measuring; None: the family's OVERLAP_BUILDS
    builders: Optional[int] = None        # build processes when overlapping (default: cpus - 1, >= 1)
    isolation: str = "process"            # process | inline (in this process: no kill on a hang)
    build_timeout_s: float = 180.0
    run_timeout_s: float = 120.0
    start_timeout_s: float = 300.0        # a worker's start (importing TVM, tracing)
    warmup: int = 2
    min_runs: int = 10
    max_runs: int = 200
    min_seconds: float = 0.2
    quiet_wait_s: float = 0.0             # before timing, wait up to this long for other processes to
                                          # leave the CPUs (shared machines; Linux)
    confirm: int = 3                      # re-measure the best few at the end (0: no)
    confirm_rounds: int = 2
    batch: int = 4                        # candidates proposed at a time
    seed: int = 0
    include_default: bool = True
    resume: bool = True                   # configs this attncc version measured before (same key, same
                                          # database) are not measured again: the search starts from them
    guided_options: dict = field(default_factory=dict)
    knobs: Optional[dict] = None          # {knob: values} replacing the family's ranges for some knobs
    transfer: bool = True                 # guided: learn from this device's records of other kernels
    hook: Optional[str] = None            # "module:function(config, phase)" run in the worker before
                                          # each build ("build") and timing ("run"): fault injection in tests


@dataclass(frozen=True)
class Workload:
    """What a worker process needs to rebuild the kernel: the variant file and options
    (a spec holds Python callables and cannot be sent to another process)."""

    variant: str
    variant_name: Optional[str]
    target: str
    shapes: tuple
    dtype: Optional[str]
    passes: str
    options: tuple
    hook: Optional[str] = None
    quantize: tuple = ()                  # the quantize pass's options (a quantized kernel is another kernel)

    def compile(self):
        from attncc.compiler import compile_variant

        return compile_variant(self.variant, target=self.target, shapes=dict(self.shapes), dtype=self.dtype,
                               passes=self.passes, variant_name=self.variant_name, build=False,
                               target_options=dict(self.options) or None, tuning_db=False,
                               quantize=dict(self.quantize) or None)


@dataclass
class Plan:
    warmup: int
    min_runs: int
    max_runs: int
    min_seconds: float
    best_s: Optional[float] = None        # best so far: a candidate 3x slower is cut short
    quiet_wait_s: float = 0.0


@dataclass
class Outcome:
    config: dict
    status: str                           # ok | build-failed | run-failed | timeout
    time_s: Optional[float] = None
    spread: Optional[float] = None
    runs: int = 0
    min_s: Optional[float] = None
    build_s: Optional[float] = None
    error: Optional[str] = None
    others_cpu: Optional[float] = None    # CPUs other processes kept busy while this was timed


@dataclass
class Trial(Outcome):
    index: int = 0
    phase: str = "search"                 # search | confirm
    predicted_s: Optional[float] = None
    elapsed_s: float = 0.0
    default: bool = False


# --------------------------------------------------------------------------- measuring


def summarize(samples: list) -> tuple:
    """(median, (p75 - p25) / median, min) of per-call seconds."""
    xs = sorted(samples)
    med = statistics.median(xs)
    if len(xs) >= 4:
        q = statistics.quantiles(xs, n=4, method="inclusive")
        spread = (q[2] - q[0]) / med if med > 0 else 0.0
    else:
        spread = (xs[-1] - xs[0]) / med if med > 0 else 0.0
    return med, spread, xs[0]


def _busy_jiffies() -> Optional[tuple]:
    """(jiffies all CPUs were busy, jiffies this process used), Linux only."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            text = f.read()
        fields = text[text.rindex(")") + 2:].split()
        return sum(vals) - vals[3] - vals[4], int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def others_cpu(since: Optional[tuple], seconds: float) -> Optional[float]:
    """CPUs that other processes kept busy since ``since`` (a _busy_jiffies() reading)."""
    now = _busy_jiffies()
    if since is None or now is None or seconds <= 0:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return max(0.0, (now[0] - since[0]) - (now[1] - since[1])) / (hz * seconds)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.25, window: float = 0.3) -> Optional[float]:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold`` CPUs."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        j0 = _busy_jiffies()
        if j0 is None:
            return None
        time.sleep(window)
        busy = others_cpu(j0, window)
        if busy is None or busy <= threshold or time.perf_counter() >= deadline:
            return busy


def measure_samples(run: Callable, plan: Plan) -> list:
    """Warm up, then time calls until the plan is met (run(n) -> n per-call seconds)."""
    samples, _ = measure_with_load(run, plan)
    return samples


def measure_with_load(run: Callable, plan: Plan) -> tuple:
    """(per-call seconds, CPUs other processes used meanwhile or None)."""
    if plan.quiet_wait_s > 0:
        wait_for_quiet(plan.quiet_wait_s)
    if plan.warmup > 0:
        run(plan.warmup)
    j0, t0 = _busy_jiffies(), time.perf_counter()
    samples: list = []
    total = 0.0
    while len(samples) < plan.max_runs:
        if len(samples) >= plan.min_runs and total >= plan.min_seconds:
            break
        if plan.best_s and len(samples) >= 3 and samples[0] > 3 * plan.best_s:
            break                             # hopeless: 3x slower than the best so far
        s = run(1)
        samples += s
        total += sum(s)
    return samples, others_cpu(j0, time.perf_counter() - t0)


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    msg = lines[-1].strip() if lines else ""
    if isinstance(exc, AttnccError):
        msg = lines[0].strip() if lines else msg
    msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _resolve_hook(hook: Optional[str]):
    if not hook:
        return None
    import importlib

    mod, _, fn = hook.partition(":")
    return getattr(importlib.import_module(mod), fn)


class _Kernel:
    """One process's view of the workload: builds, loads and times configs."""

    def __init__(self, workload: Workload, kernel=None):
        from attncc.schedules import get_family
        from attncc.targets import get_target

        self.workload = workload
        self.kernel = kernel if kernel is not None else workload.compile()
        self.spec = self.kernel.spec
        self.target = get_target(workload.target)
        self.family = get_family(workload.target)
        self.options = dict(workload.options)
        self.hook = _resolve_hook(workload.hook)
        self.built: OrderedDict = OrderedDict()

    def config(self, values: dict):
        return dataclasses.replace(self.target.default_config(self.spec), **values)

    def _key(self, values: dict):
        return tuple(sorted(values.items()))

    def _keep(self, values, built):
        self.built[self._key(values)] = built
        while len(self.built) > 8:
            self.built.popitem(last=False)

    def build(self, values: dict) -> float:
        if self.hook:
            self.hook(values, "build")
        t0 = time.perf_counter()
        built = self.target.build(self.spec, self.config(values), **self.options)
        dt = time.perf_counter() - t0
        self._keep(values, built)
        return dt

    def has(self, values: dict) -> bool:
        return self._key(values) in self.built

    def ensure(self, values: dict) -> Optional[float]:
        """Build unless built already: the build's seconds, or None."""
        return None if self.has(values) else self.build(values)

    def export(self, values: dict, path: str) -> float:
        dt = self.build(values)
        self.target.export_library(self.built[self._key(values)], path)
        return dt

    def load(self, values: dict, path: str) -> None:
        self._keep(values, self.family.load_built(self.spec, self.config(values), path, self.options))

    def measure(self, values: dict, plan: Plan) -> list:
        if self._key(values) not in self.built:
            self.build(values)
        if self.hook:
            self.hook(values, "run")
        built = self.built[self._key(values)]
        return measure_with_load(self.family.sampler(built, self.spec), plan)


def _worker_main(conn) -> None:
    """A worker process: load the workload, then answer (op, args...) messages with
    ("ok", result) or ("error", text)."""
    import pickle

    try:
        workload = pickle.loads(conn.recv_bytes())
        state = _Kernel(workload)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", _error_text(exc)))
        return
    conn.send(("ok", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        try:
            result = getattr(state, msg[0])(*msg[1:])
            conn.send(("ok", result))
        except BaseException as exc:  # noqa: BLE001 - one candidate failed, the worker lives on
            conn.send(("error", _error_text(exc)))


class _Timeout(Exception):
    pass


class _Died(Exception):
    pass


class _Worker:
    """A worker process with a time limit on every call (killed and restarted when late).

    Started as ``python -m attncc.schedules.tuner --worker FD`` with one end of a socket
    pair (not multiprocessing's spawn, which would run the caller's main script again);
    messages are pickled over it.  Its stdout is discarded and its stderr kept in a file
    whose last line explains a crash."""

    def __init__(self, workload: Workload, start_timeout: float):
        self.workload = workload
        self.start_timeout = start_timeout
        self.proc = None
        self.conn = None
        self.log = None

    def _start(self) -> None:
        import pickle
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "attncc.schedules.tuner", "--worker",
                                      str(child.fileno())], pass_fds=[child.fileno()], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log)
        child.close()
        self.conn = Connection(parent.detach())
        try:
            self.conn.send_bytes(pickle.dumps(self.workload))
            status, value = self._wait(self.start_timeout)
        except (_Timeout, _Died, OSError) as exc:
            self.close(kill=True)
            raise AttnccError(f"the tuning worker process did not start: {exc}") from None
        if status != "ok":
            self.close(kill=True)
            raise AttnccError(f"the tuning worker could not load the variant: {value}")

    def _last_log_line(self) -> str:
        try:
            self.log.seek(0)
            lines = [ln.strip() for ln in self.log.read().decode(errors="replace").splitlines() if ln.strip()]
            return lines[-1][:200] if lines else ""
        except (OSError, ValueError, AttributeError):
            return ""

    def _wait(self, timeout: float):
        try:
            ready = self.conn.poll(timeout)
        except (EOFError, OSError):
            ready = True
        if not ready:
            raise _Timeout(f"no answer within {timeout:.0f} s")
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            try:
                code = self.proc.wait(2)
            except Exception:  # noqa: BLE001
                code = None
            why = self._last_log_line()
            raise _Died(f"the worker process died (exit code {code})" + (f": {why}" if why else "")) from None

    def call(self, timeout: float, *msg):
        """("ok", result) or ("error", text); raises _Timeout / _Died after killing the worker."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.conn.send(msg)
            return self._wait(timeout)
        except (_Timeout, _Died, BrokenPipeError, OSError) as exc:
            self.close(kill=True)
            if isinstance(exc, _Timeout):
                raise
            raise _Died(str(exc)) from None

    def close(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if not kill and self.proc.poll() is None:
            try:
                self.conn.send(("stop",))
                self.proc.wait(5)
            except Exception:  # noqa: BLE001
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except Exception:  # noqa: BLE001
                pass
        try:
            self.conn.close()
        except OSError:
            pass
        if self.log is not None:
            self.log.close()
        self.proc = self.conn = self.log = None


class _ProcessEvaluator:
    """Builds and times in worker processes (see the module docstring)."""

    def __init__(self, workload: Workload, settings: TuneSettings, overlap: bool):
        self.s = settings
        self.overlap = overlap
        self.runner = _Worker(workload, settings.start_timeout_s)
        self.builders: list = []
        self.pool = None
        self.tmp = None
        if overlap:
            n = settings.builders or max(1, (os.cpu_count() or 2) - 1)
            self.builders = [_Worker(workload, settings.start_timeout_s) for _ in range(n)]
            self.idle = list(self.builders)
            self.lock = threading.Condition()
            self.pool = ThreadPoolExecutor(max_workers=n)
            self.tmp = tempfile.TemporaryDirectory(prefix="attncc-tune-")
        self.runner._start()

    def _build_remote(self, values: dict):
        with self.lock:
            while not self.idle:
                self.lock.wait()
            w = self.idle.pop()
        path = os.path.join(self.tmp.name, f"{uuid.uuid4().hex}.so")
        try:
            status, value = w.call(self.s.build_timeout_s, "export", values, path)
            return (status, value, path)
        except _Timeout:
            return ("timeout", f"build did not finish in {self.s.build_timeout_s:.0f} s", None)
        except _Died as exc:
            return ("died", str(exc), None)
        finally:
            with self.lock:
                self.idle.append(w)
                self.lock.notify()

    def evaluate(self, configs: list, plan: Plan):
        """Yield an Outcome per config, in order."""
        futures = None
        if self.overlap:
            futures = []
            for c in configs:
                try:
                    cached = self.runner.call(self.s.run_timeout_s, "has", c) == ("ok", True)
                except (_Timeout, _Died):
                    cached = False
                futures.append(None if cached else self.pool.submit(self._build_remote, c))
        for i, values in enumerate(configs):
            build_s = None
            if futures is not None and futures[i] is not None:
                status, value, path = futures[i].result()
                if status != "ok":
                    yield Outcome(values, "timeout" if status == "timeout" else "build-failed", error=value)
                    continue
                build_s = value
                try:
                    status, value = self.runner.call(self.s.run_timeout_s, "load", values, path)
                finally:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                if status != "ok":
                    yield Outcome(values, "run-failed", build_s=build_s, error=f"loading the built library: {value}")
                    continue
            elif futures is None:
                try:
                    status, value = self.runner.call(self.s.build_timeout_s, "ensure", values)
                except _Timeout:
                    yield Outcome(values, "timeout", error=f"build did not finish in {self.s.build_timeout_s:.0f} s")
                    continue
                except _Died as exc:
                    yield Outcome(values, "build-failed", error=str(exc))
                    continue
                if status != "ok":
                    yield Outcome(values, "build-failed", error=value)
                    continue
                build_s = value
            try:
                status, value = self.runner.call(self.s.run_timeout_s, "measure", values, plan)
            except _Timeout:
                yield Outcome(values, "timeout", build_s=build_s,
                              error=f"timing did not finish in {self.s.run_timeout_s:.0f} s")
                continue
            except _Died as exc:
                yield Outcome(values, "run-failed", build_s=build_s, error=str(exc))
                continue
            if status != "ok" or not value or not value[0]:
                yield Outcome(values, "run-failed", build_s=build_s,
                              error=value if status != "ok" else "no timed call")
                continue
            samples, busy = value
            med, spread, mn = summarize(samples)
            yield Outcome(values, OK, med, spread, len(samples), mn, build_s, others_cpu=busy)

    def close(self) -> None:
        for w in [self.runner] + self.builders:
            w.close()
        if self.pool is not None:
            self.pool.shutdown(wait=False)
        if self.tmp is not None:
            self.tmp.cleanup()


class _InlineEvaluator:
    """Builds (in a thread, with a time limit: a hung build is abandoned, not killed) and
    times in this process.  For variants given as objects rather than files."""

    def __init__(self, kernel_state: _Kernel, settings: TuneSettings):
        self.state = kernel_state
        self.s = settings
        self.overlap = False

    def evaluate(self, configs: list, plan: Plan):
        for values in configs:
            box: dict = {}

            def work():
                try:
                    box["build_s"] = self.state.ensure(values)
                except BaseException as exc:  # noqa: BLE001
                    box["error"] = _error_text(exc)

            t = threading.Thread(target=work, daemon=True)
            t.start()
            t.join(self.s.build_timeout_s)
            if t.is_alive():
                yield Outcome(values, "timeout", error=f"build did not finish in {self.s.build_timeout_s:.0f} s")
                continue
            if "error" in box:
                yield Outcome(values, "build-failed", error=box["error"])
                continue
            try:
                samples, busy = self.state.measure(values, plan)
            except Exception as exc:  # noqa: BLE001
                yield Outcome(values, "run-failed", build_s=box["build_s"], error=_error_text(exc))
                continue
            if not samples:
                yield Outcome(values, "run-failed", build_s=box["build_s"], error="no timed call")
                continue
            med, spread, mn = summarize(samples)
            yield Outcome(values, OK, med, spread, len(samples), mn, box["build_s"], others_cpu=busy)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- the session


@dataclass
class TuneResult:
    key: TuningKey
    variant: str
    env: dict
    db_path: Optional[str]
    strategy: str
    overlap: bool
    space_size: int
    valid: int
    rejected: Counter
    knobs: list                           # [(name, values)]
    default_config: dict
    trials: list = field(default_factory=list)
    best: Optional[Record] = None         # the database's best record of the key after tuning
    wall_s: float = 0.0
    stopped: str = ""                     # trials | budget | exhausted | interrupted
    resumed: int = 0                      # configs known from earlier sessions (not measured again)
    model_evaluations: int = 0

    @property
    def measured(self) -> list:
        return [t for t in self.trials if t.status == OK]

    @property
    def failed(self) -> list:
        return [t for t in self.trials if t.status != OK]

    def default_time(self) -> Optional[float]:
        ts = [t.time_s for t in self.trials if t.status == OK and t.config == self.default_config]
        return statistics.median(ts) if ts else None

    def best_so_far(self, phase: str = "search") -> list:
        out, best = [], math.inf
        for t in self.trials:
            if t.phase != phase:
                continue
            if t.status == OK:
                best = min(best, t.time_s)
            out.append(best)
        return out


def _resume(strategy, space, tdb: TuningDB, key: TuningKey, configs: list) -> int:
    """Tell ``strategy`` what this attncc version measured before for ``key``."""
    import json

    from attncc import __version__

    prior: dict = {}
    for r in tdb.records(key):
        if r.attncc == __version__:
            prior.setdefault(json.dumps(r.config, sort_keys=True), []).append(r)
    n = 0
    for c in dict.fromkeys(configs):
        recs = prior.get(json.dumps(space.as_dict(c), sort_keys=True))
        if recs:
            ok = [r.time_s for r in recs if r.ok]
            strategy.observe(c, statistics.median(ok) if ok else None)
            n += 1
    return n


def tune(variant, target: str = "cpu", shapes: Optional[dict] = None, dtype=None, *,
         db=None, settings: Optional[TuneSettings] = None, variant_name: Optional[str] = None,
         passes: Optional[str] = None, target_options: Optional[dict] = None,
         on_event: Optional[Callable] = None, quantize: Optional[dict] = None) -> TuneResult:
    """Tune ``variant`` (a file path, or a Variant / Function: then in this process) for
    ``target`` at ``shapes``; append every result to ``db`` (a path or TuningDB; None:
    the user's database) and return the session's TuneResult.  ``quantize``: the quantize
    pass's options (as ``compile_variant``'s): the quantized kernel is tuned, under its own key.

    ``on_event(kind, result, **info)`` is called with kind "start" (planned=trials or
    None), "trial" (trial=Trial) and "done"."""
    from attncc.compiler import compile_variant
    from attncc.passes.pipeline import DEFAULT_PIPELINE
    from attncc.schedules.lookup import user_db_path
    from attncc.schedules.search import make_strategy
    from attncc.schedules.space import SearchSpace

    s = settings or TuneSettings()
    if s.trials is None and s.budget_s is None:
        s = dataclasses.replace(s, trials=64)
    passes = passes or DEFAULT_PIPELINE
    t_start = time.perf_counter()
    emit = on_event or (lambda *a, **k: None)
    options = dict(target_options or {})

    if isinstance(variant, str):
        variant = os.path.abspath(variant)
    kernel = compile_variant(variant, target=target, shapes=shapes, dtype=dtype, passes=passes,
                             variant_name=variant_name, build=False, target_options=options or None,
                             tuning_db=False, quantize=quantize)
    from attncc.schedules import get_family

    family = get_family(target)
    if "arch" in getattr(family, "REQUIRED_OPTIONS", ()) and not options.get("arch"):
        options["arch"] = family.default_arch(options)
    if getattr(family, "check_can_measure", None) is not None:
        family.check_can_measure(options)
    space = SearchSpace(target, kernel.spec, options)
    if s.knobs:
        from attncc.schedules.space import Knob

        unknown = set(s.knobs) - {k.name for k in space.knobs}
        if unknown:
            raise AttnccError(f"target {target} has no tunable knob(s) {', '.join(sorted(unknown))} "
                              f"(knobs: {', '.join(k.name for k in space.knobs)})")
        space = SearchSpace(target, kernel.spec, options,
                            [Knob(k.name, tuple(s.knobs.get(k.name, k.values)), k.doc) for k in space.knobs])
    key = make_key(kernel.source_ir, kernel.spec, target, family.device_name(options))
    if isinstance(db, TuningDB):
        tdb = db
    else:
        tdb = TuningDB(db or user_db_path())

    overlap = s.overlap if s.overlap is not None else bool(getattr(family, "OVERLAP_BUILDS", False))
    if overlap and (not hasattr(family, "load_built") or not isinstance(variant, str)):
        overlap = False
    default_cfg = space.default()
    default_values = space.as_dict(default_cfg)

    # a space too large to enumerate is only ever sampled (by the guided search's evolution)
    enumerable = space.size <= s.enumerate_max
    valid = space.valid_configs() if enumerable else []
    model = lambda c: family.cost_model(kernel.spec, c, options)  # noqa: E731
    first = [default_cfg] if s.include_default and space.is_valid(default_cfg) else []
    if enumerable and not valid and not first:
        raise space.nothing_valid()
    n_candidates = len(set(valid) | set(first)) if enumerable else space.size
    name = s.strategy
    if name == "auto":
        fits = s.trials is None or s.trials >= n_candidates
        name = "exhaustive" if n_candidates <= s.exhaustive_limit and fits else "guided"
    if name != "guided" and not enumerable:
        raise AttnccError(f"{name} search needs the space enumerated, and it has {space.size} configs "
                          f"(more than {s.enumerate_max}): use the guided search")
    guided_options = dict(s.guided_options) if name == "guided" else {}
    if name == "guided" and s.transfer and "transfer" not in guided_options:
        from attncc.schedules.search import transfer_from_records

        devices = {key.device, *getattr(family, "equivalent_devices", lambda d: [])(key.device)}
        others = [r for r in tdb.records() if r.key.target == target and r.key.device in devices]
        guided_options["transfer"] = transfer_from_records(others, [k.name for k in space.knobs], exclude=key)
    strategy = make_strategy(name, space, model, seed=s.seed, first=first, **guided_options)

    result = TuneResult(key=key, variant=kernel.variant, env=dict(kernel.env), db_path=tdb.path, strategy=name,
                        overlap=overlap, space_size=space.size, valid=len(valid), rejected=Counter(space.rejected),
                        knobs=[(k.name, k.values) for k in space.knobs], default_config=default_values)
    if s.resume:
        result.resumed = _resume(strategy, space, tdb, key, valid + first)
    left = max(n_candidates - result.resumed, 0)
    planned = min(s.trials, left) if s.trials is not None else left
    emit("start", result, planned=planned, budget_s=s.budget_s, trials=s.trials)

    session = uuid.uuid4().hex[:8]
    # the default this search measured against: lookup passes the record over once compile's
    # default runs another kernel (a new kernel became the default; the record never met it)
    base_extra = {"variant": kernel.variant, "shape": dict(kernel.env), "session": session,
                  "default_config": dict(default_values)}
    revision = getattr(kernel.target, "kernel_revision", None)
    if options.get("arch"):
        base_extra["arch"] = options["arch"]

    workload = None
    if isinstance(variant, str):
        workload = Workload(variant, variant_name, target, tuple(sorted((shapes or {}).items())),
                            None if dtype is None else str(dtype), passes, tuple(sorted(options.items())), s.hook,
                            tuple(sorted((quantize or {}).items())))
    evaluator = None
    try:
        if s.isolation == "process" and workload is not None:
            evaluator = _ProcessEvaluator(workload, s, overlap)
        else:
            evaluator = _InlineEvaluator(_Kernel(Workload("", None, target, (), None, passes,
                                                          tuple(sorted(options.items())), s.hook), kernel), s)
        plan = Plan(s.warmup, s.min_runs, s.max_runs, s.min_seconds, quiet_wait_s=s.quiet_wait_s)
        search_budget = None
        if s.budget_s is not None:
            search_budget = s.budget_s * (0.85 if s.confirm else 1.0)
        best = math.inf
        n = 0

        def record(out: Outcome, phase: str, predicted: Optional[float]) -> Trial:
            nonlocal best, n
            n += 1
            trial = Trial(**dataclasses.asdict(out), index=n, phase=phase, predicted_s=predicted,
                          elapsed_s=time.perf_counter() - t_start, default=out.config == default_values)
            result.trials.append(trial)
            extra = dict(base_extra, phase=phase, trial=n, strategy=name)
            for k in ("build_s", "min_s", "predicted_s", "others_cpu"):
                v = getattr(trial, k)
                if v is not None:
                    extra[k] = round(v, 9) if k != "others_cpu" else round(v, 2)
            if revision is not None:          # which kernel revision measured it (lookup checks it)
                try:
                    extra["kernel_revision"] = revision(kernel.spec, dataclasses.replace(
                        kernel.target.default_config(kernel.spec), **out.config))
                except Exception:  # noqa: BLE001 - a config the target cannot even build stays unstamped
                    pass
            tdb.append(record_for(key, out.config, out.time_s, spread=out.spread, runs=out.runs,
                                  status=out.status, error=out.error, extra=extra))
            if out.status == OK:
                best = min(best, out.time_s)
            emit("trial", result, trial=trial, best=best)
            return trial

        stopped = "exhausted"
        try:
            while True:
                done = len([t for t in result.trials if t.phase == "search"])
                if s.trials is not None and done >= s.trials:
                    stopped = "trials"
                    break
                if search_budget is not None and time.perf_counter() - t_start >= search_budget:
                    stopped = "budget"
                    break
                want = s.batch if s.trials is None else min(s.batch, s.trials - done)
                batch = strategy.propose(want)
                if not batch:
                    break
                plan.best_s = best if math.isfinite(best) else None
                configs = [space.as_dict(c) for c in batch]
                for cfg, out in zip(batch, evaluator.evaluate(configs, plan)):
                    try:
                        pred = float(model(cfg))
                    except Exception:  # noqa: BLE001 - a model bug must not stop tuning
                        pred = None
                    record(out, "search", pred)
                    strategy.observe(cfg, out.time_s if out.status == OK else None)
                    if search_budget is not None and time.perf_counter() - t_start >= search_budget:
                        break
            # confirmation: the best few (and the default), measured again, interleaved
            if s.confirm and result.measured:
                by_cfg: dict = {}
                for t in result.measured:
                    by_cfg.setdefault(tuple(t.config.items()), []).append(t.time_s)
                ranked = sorted(by_cfg, key=lambda k: statistics.median(by_cfg[k]))[: s.confirm]
                dkey = tuple(default_values.items())
                if dkey in by_cfg and dkey not in ranked:
                    ranked.append(dkey)
                if len(ranked) > 1:
                    plan.best_s = None
                    for _ in range(s.confirm_rounds):
                        if s.budget_s is not None and time.perf_counter() - t_start >= s.budget_s:
                            break
                        for out in evaluator.evaluate([dict(k) for k in ranked], plan):
                            record(out, "confirm", None)
        except KeyboardInterrupt:
            stopped = "interrupted"
        result.stopped = stopped
    finally:
        if evaluator is not None:
            evaluator.close()
    result.model_evaluations = getattr(strategy, "evaluations", 0)
    result.rejected = Counter(space.rejected)
    result.best = tdb.best(key)
    result.wall_s = time.perf_counter() - t_start
    emit("done", result)
    return result


if __name__ == "__main__":
    import sys as _sys

    if len(_sys.argv) == 3 and _sys.argv[1] == "--worker":
        from multiprocessing.connection import Connection as _Connection

        from attncc.schedules.tuner import _worker_main as _main   # the module's own classes, not __main__'s

        _main(_Connection(int(_sys.argv[2])))
    else:
        print("usage: python -m attncc.schedules.tuner --worker FD  (started by attncc tune)", file=_sys.stderr)
        _sys.exit(2)
