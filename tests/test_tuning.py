"""Autotuning: the search space and its rejections, the tuning database (round trip,
damaged lines, two writers at once), the tuner end to end on a small CPU space (failed
and hung candidates included), and compile picking the tuned record."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import warnings

import pytest

from conftest import REPO
from attncc.errors import AttnccError
from attncc.schedules.space import config_dict  # noqa: E402
from attncc.schedules import get_family
from attncc.schedules.db import (TuningDB, TuningDBWarning, TuningKey, config_medians, record_for,
                                 shape_bucket)

SDPA = str(REPO / "examples" / "sdpa.py")
CAUSAL = str(REPO / "examples" / "causal_mha.py")
TINY = {"S": 64, "H": 1}


def _key(**kw) -> TuningKey:
    base = dict(fingerprint="f" * 16, bucket="B=1,Hq=1,Hkv=1,S<=64,T<=64,D=64,Dv=64", dtype="float32",
                target="cpu", device="test cpu")
    base.update(kw)
    return TuningKey(**base)


def _cfg(bq=64, bk=64):
    return {"block_q": bq, "block_k": bk, "vector_width": 16, "micro_rows": 4, "micro_vectors": 4}


def _host_vw() -> int:
    from attncc.targets import cpu

    return cpu.host_vector_width()


def _small_knobs() -> dict:
    vw = _host_vw()
    return {"block_q": (16, 32), "block_k": (64, 128), "vector_width": (vw,), "micro_rows": (2, 4),
            "micro_vectors": (64 // vw // 2 or 1,)}


# --------------------------------------------------------------------------- database


def test_db_round_trip(tmp_path):
    db = TuningDB(tmp_path / "t.jsonl")
    k1, k2 = _key(), _key(bucket="other")
    recs = [record_for(k1, _cfg(64), 2e-3, spread=0.01, runs=10, extra={"variant": "sdpa"}),
            record_for(k1, _cfg(32), 1e-3, spread=0.02, runs=10),
            record_for(k1, _cfg(16), None, status="timeout", error="build did not finish"),
            record_for(k2, _cfg(64), 5e-3, runs=3)]
    for r in recs:
        db.append(r)
    back = TuningDB(db.path).records()
    assert [r.to_json() for r in back] == [r.to_json() for r in recs]
    assert back[0].extra["variant"] == "sdpa" and back[0].attncc and back[0].date
    assert back[2].status == "timeout" and back[2].time_s is None and not back[2].ok
    assert set(db.keys()) == {k1, k2}
    best = db.best(k1)
    assert best.config == _cfg(32) and best.time_s == 1e-3
    assert db.best(_key(device="another cpu")) is None
    assert {r.key for r in db.best_records()} == {k1, k2}


def test_best_ranks_configs_by_their_median_record(tmp_path):
    db = TuningDB(tmp_path / "t.jsonl")
    k = _key()
    # config A: one lucky 0.9 ms among slow runs; config B: steadily 1.0 ms
    for t in (0.9e-3, 1.5e-3, 1.6e-3):
        db.append(record_for(k, _cfg(32), t))
    for t in (1.0e-3, 1.01e-3):
        db.append(record_for(k, _cfg(64), t))
    assert db.best(k).config == _cfg(64)
    # records of another attncc version count only when the current one has none
    old = record_for(k, _cfg(16), 0.1e-3)
    old.attncc = "0.0.1"
    db.append(old)
    assert db.best(k).config == _cfg(64)
    assert db.best(k, version="0.0.1").config == _cfg(16)


def test_damaged_lines_are_skipped_with_a_warning(tmp_path):
    path = tmp_path / "t.jsonl"
    good = record_for(_key(), _cfg(64), 1e-3)
    with open(path, "w") as f:
        f.write(good.to_json() + "\n")
        f.write("this is not json\n")
        f.write('{"fingerprint": "x"}\n')                            # missing fields
        f.write(good.to_json().replace('"time_s":0.001', '"time_s":-1') + "\n")   # impossible time
        f.write(good.to_json()[:57])                                  # a writer died mid-line
    with pytest.warns(TuningDBWarning) as caught:
        recs = TuningDB(path).records()
    assert len(recs) == 1 and recs[0].config == _cfg(64)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 4 and any("truncated" in m and ":5:" in m for m in msgs), msgs
    # the next append starts on a fresh line: the torn line stays one damaged line
    db = TuningDB(path)
    db.append(record_for(_key(), _cfg(32), 0.5e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningDBWarning)
        recs = TuningDB(path).records()
        assert [r.config for r in recs] == [_cfg(64), _cfg(32)]
        assert TuningDB(path).best(_key()).config == _cfg(32)


_WRITER = r"""
import sys, time
sys.path.insert(0, sys.argv[4])
from attncc.schedules.db import TuningDB, TuningKey, record_for
db = TuningDB(sys.argv[1]); who = sys.argv[2]; n = int(sys.argv[3])
key = TuningKey("f" * 16, "b", "float32", "cpu", "test cpu")
while time.time() < float(sys.argv[5]):
    pass
for i in range(n):
    # records of different lengths, so that interleaved partial writes would show
    db.append(record_for(key, {"block_q": i, "writer": who, "pad": "x" * (i % 97)}, 1e-3 + i * 1e-6,
                         extra={"payload": "y" * (4000 if i % 10 == 0 else 10)}))
"""


def test_two_processes_appending_at_once_lose_nothing(tmp_path):
    path = tmp_path / "t.jsonl"
    n = 400
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), who, str(n), str(REPO), str(start)])
             for who in ("a", "b")]
    for p in procs:
        assert p.wait(120) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningDBWarning)      # not one damaged line
        recs = TuningDB(path).records()
    assert len(recs) == 2 * n
    for who in ("a", "b"):
        assert [r.config["block_q"] for r in recs if r.config["writer"] == who] == list(range(n))
    # the two writers really did interleave (else this test would prove nothing)
    writers = [r.config["writer"] for r in recs]
    assert sum(1 for x, y in zip(writers, writers[1:]) if x != y) > 2


def test_shape_bucket_rounds_lengths_up():
    from attncc.compiler import compile_variant

    a = compile_variant(SDPA, shapes={"S": 3000}, build=False, tuning_db=False).spec
    b = compile_variant(SDPA, shapes={"S": 4096}, build=False, tuning_db=False).spec
    c = compile_variant(SDPA, shapes={"S": 4097}, build=False, tuning_db=False).spec
    assert shape_bucket(a) == shape_bucket(b) != shape_bucket(c)
    assert "S<=4096" in shape_bucket(a) and "D=64" in shape_bucket(a)


# --------------------------------------------------------------------------- search space


def _spec(path=SDPA, **kw):
    from attncc.compiler import compile_variant

    return compile_variant(path, shapes=kw.pop("shapes", {"S": 1024}), build=False, tuning_db=False, **kw).spec


def test_cpu_space_rejects_impossible_configs_before_building(monkeypatch):
    from attncc.schedules.space import SearchSpace
    from attncc.targets import cpu

    builds = []
    monkeypatch.setattr(cpu, "build", lambda *a, **k: builds.append(a))
    space = SearchSpace("cpu", _spec())
    valid = space.valid_configs()
    assert 0 < len(valid) < space.size
    assert sum(space.rejected.values()) == space.size - len(valid)
    assert any("must be a multiple of micro_vectors*vector_width" in r for r in space.rejected)
    bad = dataclasses.replace(space.default(), block_k=32, vector_width=16, micro_vectors=4)
    reason = space.check(bad)
    assert reason and "block_k" in reason and "multiple" in reason
    too_wide = dataclasses.replace(space.default(), vector_width=32)
    assert "vector_width" in space.check(too_wide)
    assert not builds


def test_cuda_space_rejects_what_does_not_fit_in_shared_memory_or_registers():
    from attncc.schedules.space import SearchSpace

    spec = _spec(CAUSAL, shapes={"S": 4096, "D": 128}, dtype="bf16", target="cuda",
                 target_options={"arch": "sm_80"})
    space = SearchSpace("cuda", spec, {"arch": "sm_80"})
    valid = space.valid_configs()
    assert valid and len(valid) < space.size
    reasons = " | ".join(space.rejected)
    assert "shared memory" in reasons and "registers" in reasons, reasons
    assert get_family("cuda").device_name({"arch": "sm_90a"}).startswith("NVIDIA")


def test_guided_search_needs_fewer_trials_than_random_search():
    """On a synthetic table (the cost model, distorted by a hidden per-knob factor and
    noise) the guided search reaches within 5% of the best in fewer trials on average."""
    import numpy as np

    from attncc.schedules.search import Guided, RandomSearch
    from attncc.schedules.space import SearchSpace

    spec = _spec(CAUSAL)
    space = SearchSpace("cpu", spec)
    fam = get_family("cpu")
    rng = np.random.default_rng(1)
    hidden = {(k.name, v): math.exp(rng.normal(0, 0.15)) for k in space.knobs for v in k.values}
    times = {}
    for c in space.valid_configs():
        d = space.as_dict(c)
        f = np.prod([hidden[(k.name, d[k.name])] for k in space.knobs])
        times[c] = fam.cost_model(spec, c) * f * math.exp(rng.normal(0, 0.03))
    target = min(times.values()) * 1.05

    def trials(strategy):
        n = 0
        while True:
            batch = strategy.propose(4)
            assert batch
            for c in batch:
                n += 1
                strategy.observe(c, times[c])
                if times[c] <= target:
                    return n

    rand = np.mean([trials(RandomSearch(space, seed=i)) for i in range(40)])
    guided = np.mean([trials(Guided(space, lambda c: fam.cost_model(spec, c), seed=i)) for i in range(4)])
    evo = trials(Guided(space, lambda c: fam.cost_model(spec, c), seed=0, enumerate_limit=0))
    assert guided * 3 < rand, (guided, rand)
    assert evo < rand, (evo, rand)


# --------------------------------------------------------------------------- the tuner


def fault_hook(config: dict, phase: str) -> None:
    """Runs in the tuning worker (TuneSettings.hook): one candidate's build hangs, one
    raises, one kernel crashes the process."""
    if phase == "build" and config["block_q"] == 16 and config["block_k"] == 64 and config["micro_rows"] == 2:
        time.sleep(600)
    if phase == "build" and config["block_q"] == 16 and config["block_k"] == 128 and config["micro_rows"] == 2:
        raise RuntimeError("injected build failure")
    if phase == "run" and config["block_q"] == 32 and config["block_k"] == 128 and config["micro_rows"] == 2:
        os._exit(3)


def _fast(**kw):
    from attncc.schedules.tuner import TuneSettings

    base = dict(knobs=_small_knobs(), warmup=1, min_runs=5, min_seconds=0.01, confirm=2, confirm_rounds=1,
                include_default=False)
    base.update(kw)
    return TuneSettings(**base)


def test_tune_small_cpu_space_end_to_end(tmp_path):
    from attncc.schedules.tuner import tune

    db = TuningDB(tmp_path / "t.jsonl")
    events = []
    knobs = dict(_small_knobs(), micro_rows=(4,))
    res = tune(SDPA, "cpu", TINY, db=db, settings=_fast(knobs=knobs),
               on_event=lambda kind, r, **kw: events.append(kind))
    assert res.strategy == "exhaustive" and res.stopped == "exhausted"
    assert res.valid == 4 and res.space_size == 4
    search = [t for t in res.trials if t.phase == "search"]
    assert len(search) == 4 and all(t.status == "ok" and t.time_s > 0 and t.runs >= 3 for t in search)
    assert {tuple(t.config.items()) for t in search} == {tuple(c.items()) for c in
                                                         (dataclasses.asdict(x) for x in _configs(res))}
    assert events[0] == "start" and events[-1] == "done" and events.count("trial") == len(res.trials)
    recs = db.records(res.key)
    assert len(recs) == len(res.trials)
    # the chosen config is the measured best of the records
    medians = config_medians(recs)
    assert json.dumps(res.best.config, sort_keys=True) == min(medians, key=medians.get)
    assert res.best.key == res.key and res.key.device == get_family("cpu").device_name()
    # a second session resumes: nothing measured again, the best stays
    res2 = tune(SDPA, "cpu", TINY, db=db, settings=_fast(knobs=knobs, confirm=0))
    assert res2.resumed == 4 and not res2.trials and res2.best.config == res.best.config


def test_tune_a_quantized_kernel_under_its_own_key(tmp_path):
    """--quantize int8: the quantized kernel is what is timed and recorded (its own key), and a
    quantized compile picks the record while the unquantized one does not."""
    from attncc.compiler import compile_variant
    from attncc.schedules.tuner import tune

    path = tmp_path / "q.jsonl"
    quant = {"dtype": "int8", "granularity": "head", "pv": False}
    knobs = dict(_small_knobs(), micro_rows=(4,), block_k=(128,))
    res = tune(SDPA, "cpu", TINY, db=TuningDB(path), settings=_fast(knobs=knobs), quantize=quant)
    assert res.best is not None and all(t.status == "ok" for t in res.trials)
    assert res.key.bucket.endswith(",quant=int8")
    from attncc.schedules.report import summary
    assert "quantized int8" in summary(res).splitlines()[0]
    got = compile_variant(SDPA, shapes=TINY, build=False, tuning_db=str(path), quantize=quant)
    assert got.quantized and got.config_source.startswith(f"tuned record from {path}")
    assert dataclasses.asdict(got.config) == res.best.config
    unq = compile_variant(SDPA, shapes=TINY, build=False, tuning_db=str(path))
    assert unq.config_source.startswith("target default")


def test_cli_tune_quantize_options_are_checked(tmp_path):
    p = _cli("tune", SDPA, "--quantize-pv")
    assert p.returncode == 2 and "need --quantize" in p.stderr, p.stderr[-500:]
    # the split flow exports the quantized kernel, in its own folder and under its own key
    p = _cli("tune", SDPA, "--target", "cuda", "--arch", "sm_90a", "--dtype", "bf16", "--quantize", "fp8",
             "--quantize-pv", "--export-candidates", str(tmp_path / "c"), "--dry-run")
    assert p.returncode == 0, p.stderr[-500:]
    assert "quantized fp8 (P·V too)" in p.stdout and "on the dequantized operands" in p.stdout
    m = _manifest(tmp_path / "c")
    assert m["key"]["bucket"].endswith(",quant=float8_e4m3fn+pv")
    assert next((tmp_path / "c").glob("*/manifest.json")).parent.name.endswith("-float8_e4m3fn+pv-sm_90a")
    # int8 on sm_90a: the wgmma configs are rejections with their reason, the mma.sync ones remain
    p = _cli("tune", SDPA, "--target", "cuda", "--arch", "sm_90a", "--dtype", "bf16", "--quantize", "int8",
             "--export-candidates", str(tmp_path / "i"), "--dry-run")
    assert p.returncode == 0, p.stderr[-500:]
    m = _manifest(tmp_path / "i")
    assert m["candidates"] and {c["config"]["mma"] for c in m["candidates"]} == {"sync"}
    assert any("int8 inputs run on the mma.sync kernel" in r for r in m["space"]["rejected"])
    # no config at all (fp8 before sm_89): one error naming why, nothing written
    p = _cli("tune", SDPA, "--target", "cuda", "--arch", "sm_80", "--dtype", "bf16", "--quantize", "fp8",
             "--export-candidates", str(tmp_path / "f"), "--dry-run")
    assert p.returncode == 2 and "no config of the cuda search space" in p.stderr and "sm_89" in p.stderr
    assert "Traceback" not in p.stderr and not list((tmp_path / "f").glob("*/manifest.json"))


def _configs(res):
    from attncc.schedules.space import SearchSpace, Knob
    from attncc.compiler import compile_variant

    spec = compile_variant(SDPA, shapes=TINY, build=False, tuning_db=False).spec
    return SearchSpace("cpu", spec, knobs=[Knob(k, tuple(v)) for k, v in res.knobs]).valid_configs()


def test_failed_hung_and_crashing_candidates_are_recorded_and_skipped(tmp_path):
    from attncc.schedules.tuner import tune

    db = TuningDB(tmp_path / "t.jsonl")
    knobs = dict(_small_knobs(), micro_rows=(2,))
    res = tune(SDPA, "cpu", TINY, db=db, settings=_fast(knobs=knobs, hook="test_tuning:fault_hook",
                                                        build_timeout_s=8, confirm=0))
    by = {(t.config["block_q"], t.config["block_k"], t.config["micro_rows"]): t for t in res.trials}
    assert by[(16, 64, 2)].status == "timeout" and "did not finish" in by[(16, 64, 2)].error
    assert by[(16, 128, 2)].status == "build-failed" and "injected build failure" in by[(16, 128, 2)].error
    assert by[(32, 128, 2)].status == "run-failed" and "died" in by[(32, 128, 2)].error
    ok = [t for t in res.trials if t.status == "ok"]
    assert len(ok) == 1 and len(res.trials) == 4
    statuses = sorted(r.status for r in db.records(res.key))
    assert statuses.count("ok") == 1 and {"timeout", "build-failed", "run-failed"} <= set(statuses)
    assert res.best is not None and res.best.status == "ok"


def test_overlapped_builds(tmp_path):
    from attncc.schedules.tuner import tune

    knobs = dict(_small_knobs(), block_q=(16,), micro_rows=(4,))
    res = tune(SDPA, "cpu", TINY, db=TuningDB(tmp_path / "t.jsonl"),
               settings=_fast(knobs=knobs, overlap=True, builders=1, confirm=0))
    assert res.overlap and len(res.trials) == 2 and all(t.status == "ok" for t in res.trials)
    assert all(t.build_s and t.build_s > 0 for t in res.trials)


def test_tune_in_process_for_a_variant_object(tmp_path):
    from attncc.lang import load_variant
    from attncc.schedules.tuner import tune

    knobs = dict(_small_knobs(), block_q=(32,), micro_rows=(4,))
    res = tune(load_variant(SDPA), "cpu", TINY, db=TuningDB(tmp_path / "t.jsonl"),
               settings=_fast(knobs=knobs, confirm=0))
    assert len(res.measured) == 2 and res.best is not None


def test_parse_duration():
    from attncc.schedules.tuner import parse_duration

    assert parse_duration("60s") == 60 and parse_duration("2m") == 120 and parse_duration("90") == 90
    with pytest.raises(AttnccError):
        parse_duration("soon")


# --------------------------------------------------------------------------- compile uses the records


def _record_for_sdpa(config: dict, time_s=1e-4, device=None):
    from attncc.compiler import compile_variant
    from attncc.schedules.db import make_key

    k = compile_variant(SDPA, shapes=TINY, build=False, tuning_db=False)
    key = make_key(k.source_ir, k.spec, "cpu", device or get_family("cpu").device_name())
    return record_for(key, config, time_s, spread=0.01, runs=10), k


def test_compile_picks_the_tuned_record(tmp_path, monkeypatch):
    from attncc.compiler import compile_variant

    monkeypatch.setenv("ATTNCC_TUNING_DB", str(tmp_path / "user.jsonl"))
    vw = _host_vw()
    tuned = {"block_q": 32, "block_k": 128, "vector_width": vw, "micro_rows": 2, "micro_vectors": 1}
    rec, k = _record_for_sdpa(tuned)
    path = tmp_path / "t.jsonl"
    db = TuningDB(path)
    db.append(rec)
    other, _ = _record_for_sdpa(dict(tuned, block_q=16), 1e-5, device="some other cpu")
    db.append(other)                                      # faster, but another device: not used
    got = compile_variant(SDPA, shapes=TINY, build=False, tuning_db=str(path))
    assert dataclasses.asdict(got.config) == tuned
    assert got.config_source.startswith(f"tuned record from {path}")
    # explicit overrides win; tuning_db=False and an empty database give the default
    assert compile_variant(SDPA, shapes=TINY, build=False, tuning_db=str(path), config={}).config == k.config
    assert compile_variant(SDPA, shapes=TINY, build=False, tuning_db=False).config == k.config
    dflt = compile_variant(SDPA, shapes=TINY, build=False, tuning_db=str(tmp_path / "none.jsonl"))
    assert dflt.config == k.config and dflt.config_source.startswith("target default")
    # the user's database is looked in without --db
    TuningDB(tmp_path / "user.jsonl").append(rec)
    got = compile_variant(SDPA, shapes=TINY, build=False)
    assert dataclasses.asdict(got.config) == tuned and "your tuning database" in got.config_source
    # a record whose config no longer fits is passed over
    bad, _ = _record_for_sdpa(dict(tuned, block_q=33), 1e-6)          # not a multiple of micro_rows
    TuningDB(tmp_path / "bad.jsonl").append(bad)
    got = compile_variant(SDPA, shapes=TINY, build=False, tuning_db=str(tmp_path / "bad.jsonl"))
    assert dataclasses.asdict(got.config) == tuned


@pytest.fixture
def no_gpu(monkeypatch):
    """These checks are of the arch rule with no CUDA device (--arch sm_90a names the H100): on
    the GPU machine the local H200 would answer instead, as it should there. TVM sees no device
    in this process."""
    import types

    import tvm

    monkeypatch.setattr(tvm, "cuda", lambda *a, **k: types.SimpleNamespace(exist=False))


def _cli(*args, env=None):
    e = dict(os.environ, **(env or {}))
    e["PYTHONPATH"] = f"{REPO}{os.pathsep}{e['PYTHONPATH']}" if e.get("PYTHONPATH") else str(REPO)
    return subprocess.run([sys.executable, "-m", "attncc", *args], cwd=REPO, env=e, capture_output=True,
                          text=True, timeout=600)


def test_cli_compile_says_which_config_it_used(tmp_path):
    vw = _host_vw()
    tuned = {"block_q": 32, "block_k": 128, "vector_width": vw, "micro_rows": 2, "micro_vectors": 1}
    rec, _ = _record_for_sdpa(tuned)
    path = tmp_path / "t.jsonl"
    TuningDB(path).append(rec)
    env = {"ATTNCC_TUNING_DB": str(tmp_path / "user.jsonl")}
    out = _cli("compile", SDPA, "--shape", "S=64,H=1", "--no-run", "--db", str(path), env=env)
    assert out.returncode == 0, out.stderr
    assert "block_q=32, block_k=128" in out.stdout and "config from tuned record from" in out.stdout
    out = _cli("compile", SDPA, "--shape", "S=64,H=1", "--no-run", "--db", str(path), "--config", "block_q=16",
               env=env)
    assert out.returncode == 0 and "block_q=16" in out.stdout and "target default + overrides" in out.stdout


def test_cli_tune_show_and_plot(tmp_path):
    db = tmp_path / "t.jsonl"
    plot = tmp_path / "tune.png"
    args = ["tune", SDPA, "--shape", "S=64,H=1", "--trials", "3", "--db", str(db), "--show", "-q"]
    try:
        import matplotlib  # noqa: F401
        args += ["--plot", str(plot)]
    except ImportError:
        plot = None
    out = _cli(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rejected before building" in out.stdout and "best " in out.stdout and "sdpa" in out.stdout
    assert "Traceback" not in out.stderr
    if plot is not None:
        assert plot.stat().st_size > 10_000
    shown = _cli("tune", "--show", "--db", str(db))
    assert shown.returncode == 0 and "sdpa" in shown.stdout and "S<=64" in shown.stdout
    empty = _cli("tune", "--show", "--db", str(tmp_path / "none.jsonl"))
    assert empty.returncode == 0 and "no tuning records" in empty.stdout
    none = _cli("tune")
    assert none.returncode == 2 and "give a variant file" in none.stderr


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch):
    from attncc.schedules import report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(AttnccError, match=r"pip install 'attncc\[plot\]'"):
        report.require_matplotlib()


# --------------------------------------------------------------------------- shipped defaults


def test_packaged_defaults_are_readable_and_used():
    from attncc.compiler import compile_variant
    from attncc.schedules.lookup import packaged_db_path

    path = packaged_db_path()
    assert os.path.exists(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningDBWarning)
        recs = TuningDB(path).records()
    assert recs and all(r.ok and r.key.target in ("cpu", "cuda") for r in recs)
    # the H200 records (split flow, benchmarks/tuning_results/): every GPU benchmark shape
    gpu = [r for r in recs if r.key.target == "cuda"]
    assert {r.key.device for r in gpu} == {"NVIDIA H200"} and len(gpu) == 9
    assert {r.extra["variant"] for r in gpu} == {"sdpa", "causal_mha", "causal_gqa", "decode"}
    k = compile_variant(SDPA, target="cuda", dtype="bf16", shapes={"B": 4, "H": 16, "S": 4096, "D": 128},
                        build=False, tuning_db=str(REPO / "nonexistent.jsonl"), target_options={"arch": "sm_90a"})
    if "your tuning database" not in k.config_source:
        assert "packaged defaults" in k.config_source and "on NVIDIA H200" in k.config_source, k.config_source
        assert k.config.mma == "wgmma" and k.config.block_q == 192
    device = get_family("cpu").device_name()
    if not any(r.key.device == device for r in recs):
        pytest.skip(f"no packaged records for this cpu ({device})")
    k = compile_variant(CAUSAL, shapes={"S": 2048}, build=False, tuning_db=str(REPO / "nonexistent.jsonl"))
    if "your tuning database" not in k.config_source:      # a developer's own records may come first
        assert "packaged defaults" in k.config_source, k.config_source


def test_a_record_tuned_before_a_new_default_kernel_is_not_used(tmp_path):
    """Causal at 16k keys on sm_90a now defaults to the persistent kernel (faster than the
    one-block-a-tile kernel the packaged H200 record was tuned against, benchmarks/gpu/RESULTS.md
    run 10): the record names the default it beat, which ran another kernel, so compile takes its
    own default. Dense attention's record, tuned against the same kernel, is still used; a
    record written before default_config was recorded is used as before."""
    from attncc.compiler import compile_variant
    from attncc.schedules.db import TuningDB
    from attncc.schedules.lookup import packaged_db_path
    from attncc.targets import cuda

    h200 = {"arch": "sm_90a"}
    causal = {"B": 1, "H": 16, "S": 16384, "D": 128}
    recs = [r for r in TuningDB(packaged_db_path()).records()
            if r.key.target == "cuda" and r.extra.get("variant") == "causal_mha" and r.extra["shape"] == causal]
    assert len(recs) == 1 and recs[0].extra["default_config"]["num_stages"] == 3
    nodb = str(REPO / "nonexistent.jsonl")
    k = compile_variant(CAUSAL, target="cuda", dtype="bf16", shapes=causal, build=False, tuning_db=nodb,
                        target_options=h200)
    if "your tuning database" not in k.config_source:      # a developer's own records may come first
        assert k.config.persistent == cuda.PERSISTENT_BLOCKS, (k.config, k.config_source)
        assert k.config_source.startswith("target default") and "another kernel was the default" in k.config_source
    dense = compile_variant(SDPA, target="cuda", dtype="bf16", shapes=causal, build=False, tuning_db=nodb,
                            target_options=h200)
    if "your tuning database" not in dense.config_source:
        assert "packaged defaults" in dense.config_source and dense.config.block_q == 192
    # the same causal record without default_config (an older file): used, as measured
    legacy = dataclasses.replace(recs[0], extra={k: v for k, v in recs[0].extra.items() if k != "default_config"})
    db = TuningDB(str(tmp_path / "legacy.jsonl"))
    db.append(legacy)
    k = compile_variant(CAUSAL, target="cuda", dtype="bf16", shapes=causal, build=False, tuning_db=db.path,
                        target_options=h200)
    assert (k.config.block_q, k.config.num_warps, k.config.persistent) == (192, 12, 0), k.config_source


def test_progress_bar_shows_the_best_so_far():
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from attncc.schedules.report import RichProgress
    from attncc.schedules.tuner import Trial

    buf = io.StringIO()
    bar = RichProgress(Console(file=buf, width=120, force_terminal=False))
    res = SimpleNamespace(variant="sdpa", strategy="guided", valid=880)
    bar("start", res, planned=3, budget_s=None, trials=3)
    for i, t in enumerate((2e-3, 1e-3, None), 1):
        trial = Trial(config={}, status="ok" if t else "timeout", time_s=t, index=i, elapsed_s=i)
        bar("trial", res, trial=trial, best=min(x for x in (2e-3, 1e-3)[:i] if x))
    bar("done", res)
    out = buf.getvalue()
    assert "tune sdpa" in out and "3/3" in out and "best 1.000 ms, 1 failed" in out


# --------------------------------------------------------------------------- the split flow (GPU without TVM)

RESULTS = REPO / "tests" / "data" / "tuning" / "h200_results.jsonl"     # what measure_candidates writes
SMALL_CUDA = ["--target", "cuda", "--arch", "sm_90a", "--dtype", "bf16", "--shape", "B=1,H=2,S=256,D=64"]
FIXTURE_BEST = {"block_q": 64, "block_k": 64, "num_warps": 4, "num_stages": 2, "q_in_registers": True,
                "mma": "wgmma"}


def _manifest(folder) -> dict:
    (mpath,) = list(folder.glob("*/manifest.json"))
    return json.loads(mpath.read_text())


def test_hopper_space_is_the_wgmma_and_mma_sync_grids():
    from attncc.compiler import compile_variant
    from attncc.schedules.space import SearchSpace

    k = compile_variant(CAUSAL, target="cuda", dtype="bf16", shapes={"B": 4, "H": 16, "S": 4096, "D": 128},
                        build=False, tuning_db=False, target_options={"arch": "sm_90a"})
    space = SearchSpace("cuda", k.spec, {"arch": "sm_90a"})
    valid = space.valid_configs()
    assert 20 <= len(valid) <= 48
    # the default (causal from 4k keys: the persistent kernel, no search knob) is measured beside
    # the grid: the tuner's first candidate, so a tuned record never loses to it unseen
    assert space.default().persistent == 132 and space.is_valid(space.default())
    assert dataclasses.replace(space.default(), persistent=0) in valid
    wg = [c for c in valid if c.mma == "wgmma"]
    assert {(c.block_q, c.num_warps) for c in wg} == {(64, 4), (128, 8), (192, 12)}
    assert {c.block_k for c in wg} == {64, 96, 128} and {c.num_stages for c in wg} == {2, 3}
    assert all(c.q_in_registers for c in wg)            # unused by the wgmma kernel: one value searched
    assert {c.block_q for c in valid if c.mma == "sync"} == {64, 128}
    reasons = " | ".join(space.rejected)
    assert "shared memory" in reasons and "registers" in reasons and "is searched with" in reasons


def test_export_candidates_writes_manifests_and_counts_rejections(tmp_path):
    import hashlib

    out = tmp_path / "cands"
    # a narrowed space: two wgmma candidates and the default are built (a few seconds of TVM each)
    r = _cli("tune", CAUSAL, *SMALL_CUDA, "--export-candidates", str(out), "--knobs",
             "mma=wgmma;block_k=64;num_stages=2;block_q=64|128", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    m = _manifest(out)
    assert m["format"] == "attncc-candidates/1" and m["arch"] == "sm_90a" and m["built"]
    assert m["key"]["target"] == "cuda" and m["key"]["dtype"] == "bfloat16" and m["key"]["bucket"].startswith("B=1,Hq=2")
    assert m["reference"] == {"kind": "sdpa", "causal": True, "scale": 0.125}
    assert m["input_shapes"]["q"] == [1, 2, 256, 64] and m["out_shape"] == [1, 2, 256, 64]
    ids = {c["id"] for c in m["candidates"]}
    # + the target's default config, which is always measured beside the candidates
    from attncc.compiler import compile_variant

    d = compile_variant(CAUSAL, target="cuda", dtype="bf16", shapes={"B": 1, "H": 2, "S": 256, "D": 64},
                        target_options={"arch": "sm_90a"}, build=False, tuning_db=False).config
    default_id = f"wgmma-q{d.block_q}-k{d.block_k}-w{d.num_warps}-s{d.num_stages}"
    assert d.mma == "wgmma" and default_id not in {"wgmma-q64-k64-w4-s2", "wgmma-q128-k64-w8-s2"}
    assert ids == {"wgmma-q64-k64-w4-s2", "wgmma-q128-k64-w8-s2", default_id}
    assert [c["id"] for c in m["candidates"] if c["default"]] == [default_id]
    assert {c["kernel_revision"] for c in m["candidates"]} == {"wgmma-2"}    # the ping-pong kernel measures them
    assert sum(c["default"] for c in m["candidates"]) == 1 and not m["build_failed"]
    for c in m["candidates"]:
        so = out / os.path.basename(os.path.dirname(next(out.glob("*/manifest.json")))) / c["file"]
        assert so.stat().st_size > 10_000
        src = (out / "src" / (c["source_sha256"] + ".cu")).read_text()
        assert hashlib.sha256(src.encode()).hexdigest() == c["source_sha256"] and "__global__" in src
        assert c["predicted_s"] > 0
    # block_q 64 with 8 warps or 128 with 4: impossible for wgmma, rejected with the reason, never built
    assert any("block_q must be" in reason for reason in m["space"]["rejected"])
    assert "Kernel" not in r.stdout and "rejected" in r.stdout


def test_export_candidates_dry_run_rejects_impossible_configs_with_reasons(tmp_path):
    out = tmp_path / "cands"
    r = _cli("tune", CAUSAL, "--target", "cuda", "--arch", "sm_90a", "--dtype", "bf16", "--shape",
             "B=1,H=2,S=256,D=256", "--export-candidates", str(out), "--dry-run")
    assert r.returncode == 0, r.stderr
    m = _manifest(out)
    assert not m["built"] and m["candidates"] and not list(out.glob("*/*.so"))
    rej = m["space"]["rejected"]
    assert sum(rej.values()) + m["space"]["valid"] == m["space"]["size"]
    assert any("shared memory" in r for r in rej) and any("registers" in r for r in rej)
    # every candidate listed is valid for the target
    from attncc.compiler import compile_variant
    from attncc.targets import cuda

    k = compile_variant(CAUSAL, target="cuda", dtype="bf16", shapes={"B": 1, "H": 2, "S": 256, "D": 256},
                        build=False, tuning_db=False, target_options={"arch": "sm_90a"})
    for c in m["candidates"]:
        cuda.validate_config(k.spec, cuda.CudaConfig(**c["config"]), "sm_90a")
    # a CPU target or no --arch is a clear error
    r = _cli("tune", CAUSAL, "--target", "cpu", "--export-candidates", str(out))
    assert r.returncode == 2 and "cuda" in r.stderr and "Traceback" not in r.stderr
    r = _cli("tune", CAUSAL, "--target", "cuda", "--dtype", "bf16", "--export-candidates", str(out))
    assert r.returncode == 2 and "--arch" in r.stderr


def test_ingest_results_makes_compile_for_sm90a_pick_the_record(tmp_path, no_gpu):
    from attncc.compiler import compile_variant
    from attncc.schedules.db import ingest

    db = tmp_path / "t.jsonl"
    with pytest.warns(TuningDBWarning, match=r"h200_results.jsonl:3: skipping a damaged tuning record"):
        res = ingest(str(RESULTS), str(db))
    assert res["added"] == 4                                   # 3 ok (one a timeout) + the sync one; corrupt skipped
    (info,) = res["keys"].values()
    assert info["ok"] == 3 and info["failed"] == 1 and info["best"].config == FIXTURE_BEST
    assert info["default_s"] == pytest.approx(9e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningDBWarning)
        assert ingest(str(RESULTS), str(db))["added"] == 0     # ingesting twice adds nothing
    # no GPU here: --arch sm_90a means 'NVIDIA H100'; the H200's record is the same chip
    k = compile_variant(CAUSAL, target="cuda", dtype="bf16", shapes={"B": 1, "H": 2, "S": 256, "D": 64},
                        build=False, tuning_db=str(db), target_options={"arch": "sm_90a"})
    assert config_dict(k.config) == FIXTURE_BEST             # (query_blocks at its default: left out)
    assert "on NVIDIA H200 (a record of the same chip: none of NVIDIA H100 itself)" in k.config_source
    # a record of the H100 itself wins over the H200's, even a slower one
    h100 = record_for(dataclasses.replace(info["best"].key, device="NVIDIA H100"),
                      dict(FIXTURE_BEST, block_k=128, block_q=128, num_warps=8), 2e-5)
    TuningDB(db).append(h100)
    k = compile_variant(CAUSAL, target="cuda", dtype="bf16", shapes={"B": 1, "H": 2, "S": 256, "D": 64},
                        build=False, tuning_db=str(db), target_options={"arch": "sm_90a"})
    assert k.config.block_k == 128 and "on NVIDIA H100, measured" in k.config_source
    # another arch (A100) does not use Hopper records
    k = compile_variant(CAUSAL, target="cuda", dtype="bf16", shapes={"B": 1, "H": 2, "S": 256, "D": 64},
                        build=False, tuning_db=str(tmp_path / "only_h200.jsonl"), target_options={"arch": "sm_80"})
    assert k.config_source.startswith("target default")


def test_records_of_another_kernel_revision_are_not_used(tmp_path):
    """A record measured on an older revision of the kernel its config runs (before a schedule
    change) is skipped; one of the current revision, or one that names none, is used."""
    from attncc.compiler import compile_variant
    from attncc.schedules.db import make_key
    from attncc.targets import cuda

    shapes = {"B": 1, "H": 2, "S": 256, "D": 64}
    probe = compile_variant(CAUSAL, target="cuda", dtype="bf16", shapes=shapes, build=False, tuning_db=False,
                            target_options={"arch": "sm_90a"})
    key = make_key(probe.source_ir, probe.spec, "cuda", "NVIDIA H100")
    cfg = dict(dataclasses.asdict(probe.config), block_q=64, num_warps=4, block_k=64, num_stages=2)
    current = cuda.kernel_revision(probe.spec, dataclasses.replace(probe.config, **cfg))
    assert current == "wgmma-2"
    db = tmp_path / "rev.jsonl"
    TuningDB(db).append(record_for(key, cfg, 1e-6, runs=5, extra={"kernel_revision": "wgmma-1"}))

    def pick():
        return compile_variant(CAUSAL, target="cuda", dtype="bf16", shapes=shapes, build=False,
                               tuning_db=str(db), target_options={"arch": "sm_90a"})

    k = pick()
    assert k.config_source.startswith("target default") and k.config == probe.config   # stale: the default
    TuningDB(db).append(record_for(key, dict(cfg, num_stages=3), 2e-6, runs=5, extra={"kernel_revision": current}))
    k = pick()
    assert k.config.block_q == 64 and k.config.num_stages == 3 and k.config_source.startswith("tuned record")


def test_cli_ingest_then_compile_with_arch(tmp_path):
    db = tmp_path / "t.jsonl"
    env = {"ATTNCC_TUNING_DB": str(tmp_path / "user.jsonl")}
    r = _cli("tune", "--ingest", str(RESULTS), "--db", str(db), env=env)
    assert r.returncode == 0, r.stderr
    assert "attncc: warning:" in r.stderr and "skipping a damaged tuning record" in r.stderr
    assert "Traceback" not in r.stderr
    assert "ingested   4 record(s)" in r.stdout and "3 config(s) measured, 1 failed" in r.stdout
    assert "tuned x1.38" in r.stdout                               # 9.0 us default / 6.5 us best
    r = _cli("compile", CAUSAL, *SMALL_CUDA, "--db", str(db), "--no-run", env=env)
    assert r.returncode == 0, r.stderr
    assert "block_q=64, block_k=64, num_warps=4" in r.stdout and "mma=wgmma" in r.stdout
    # the subprocess names the local GPU where it is the arch asked for (an H200: the record is
    # its own), else the arch's chip, the H100, which takes the H200's record as the same chip
    from attncc.schedules import cuda as fam

    if fam.device_name({"arch": "sm_90a"}) == "NVIDIA H200":
        assert "on NVIDIA H200, measured" in r.stdout
    else:
        assert "on NVIDIA H200 (a record of the same chip" in r.stdout


def test_measuring_side_imports_no_tvm():
    code = ("import sys, attncc.schedules.measure_candidates, attncc.schedules.candidates, "
            "attncc.schedules.db, attncc.schedules.cuda, attncc.runtime; "
            "assert 'tvm' not in sys.modules, 'tvm imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_device_names_and_same_chip_rule(no_gpu):
    from attncc.schedules import cuda as fam

    assert fam.normalize_device_name("NVIDIA H200") == "NVIDIA H200"
    assert fam.normalize_device_name("NVIDIA H100 80GB HBM3") == "NVIDIA H100"
    assert fam.device_name({"arch": "sm_90a"}) == "NVIDIA H100"
    assert fam.equivalent_devices("NVIDIA H100")[0] == "NVIDIA H200"
    assert "NVIDIA H100" in fam.equivalent_devices("NVIDIA H200")
    assert fam.equivalent_devices("NVIDIA L40S") == []


def test_guided_search_transfers_what_other_kernels_measured():
    """Replay over the committed H200 table (benchmarks/tuning_results/): the correction learned
    from the other kernels' measurements (leave this one out) finds a config within 5% of the
    best at once; without it the analytic model alone ranks the 3-warpgroup configs low."""
    from attncc.compiler import compile_variant
    from attncc.schedules.search import Guided, transfer_from_records
    from attncc.schedules.space import SearchSpace

    recs = TuningDB(REPO / "benchmarks" / "tuning_results" / "h200-2026-12-01.jsonl").records()
    k = compile_variant(SDPA, target="cuda", dtype="bf16", shapes={"B": 4, "H": 16, "S": 4096, "D": 128},
                        build=False, tuning_db=False, target_options={"arch": "sm_90a"})
    opts = {"arch": "sm_90a"}
    space = SearchSpace("cuda", k.spec, opts)
    mine = [r for r in recs if r.extra.get("variant") == "sdpa" and r.extra.get("shape", {}).get("S") == 4096
            and r.extra.get("phase") == "search"]
    table = {r.config_id(): r.time_s for r in mine}
    times = {c: table[json.dumps(space.as_dict(c), sort_keys=True)] for c in space.valid_configs()}
    target = min(times.values()) * 1.05
    transfer = transfer_from_records(recs, [kn.name for kn in space.knobs], exclude=mine[0].key)
    assert len(transfer) >= 6 * 35 - 10 and all(set(c) == set(space.names()) for c, _ in transfer)

    def trials(strategy):
        n = 0
        while True:
            for c in strategy.propose(4):
                n += 1
                strategy.observe(c, times[c])
                if times[c] <= target:
                    return n

    model = lambda c: get_family("cuda").cost_model(k.spec, c, opts)  # noqa: E731
    assert trials(Guided(space, model, seed=0, transfer=transfer)) <= 2
    assert trials(Guided(space, model, seed=0)) > 4


def _cpu_candidates(folder) -> None:
    """A candidates folder as --export-candidates writes it, but of CPU kernels, so that the
    measuring side (worker process, check, timing, failures, records) runs without a GPU."""
    from attncc.compiler import compile_variant
    from attncc.schedules.candidates import reference_of

    kdir = folder / "causal_mha-cpu"
    for sub in (kdir, folder / "src", folder / "fatbin"):
        sub.mkdir(parents=True, exist_ok=True)
    cands = []
    for i, cfg in enumerate((None, {"block_q": 32, "block_k": 64})):
        k = compile_variant(CAUSAL, shapes={"B": 1, "H": 2, "S": 128, "D": 64}, config=cfg, tuning_db=False)
        k.export_library(str(kdir / f"c{i}.so"))
        sha = f"{i:064d}"
        (folder / "fatbin" / f"{sha}.fatbin").write_bytes(b"")      # nothing for nvcc to do
        cands.append({"id": f"c{i}", "config": dataclasses.asdict(k.config), "file": f"c{i}.so",
                      "default": i == 0, "source_sha256": sha, "predicted_s": 1e-3})
    cands.append(dict(cands[1], id="gone", file="gone.so", default=False,
                      config=dict(cands[1]["config"], block_q=64)))      # its library is missing
    spec = k.spec
    man = {"format": "attncc-candidates/1", "arch": "sm_90a", "variant": k.variant, "env": k.env,
           "key": {"fingerprint": "f" * 16, "bucket": "b", "dtype": spec.dtype, "target": "cpu"},
           "dtype": spec.dtype, "inputs": ["q", "k", "v"],
           "input_shapes": {n: list(s) for n, s in k.input_shapes().items()},
           "out_shape": [1, 2, 128, 64], "lse_shape": [1, 2, 128], "reference": reference_of(spec),
           "candidates": cands, "build_failed": [{"id": "nobuild", "config": dict(cands[1]["config"], block_k=32),
                                                  "error": "TargetError: x"}]}
    (kdir / "manifest.json").write_text(json.dumps(man))


def _tvm_lib_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("tvm")
    return os.path.join(list(spec.submodule_search_locations)[0], "lib")


def test_measuring_side_end_to_end_without_a_gpu(tmp_path):
    pytest.importorskip("torch")
    _cpu_candidates(tmp_path / "cands")
    out = tmp_path / "results.jsonl"
    r = subprocess.run([sys.executable, "-m", "attncc.schedules.measure_candidates", str(tmp_path / "cands"),
                        "--out", str(out), "--lib-dir", _tvm_lib_dir(), "--device", "cpu", "--rep-ms", "20",
                        "--rounds", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "tvm imported: False" in r.stdout and "2/3 ok" in r.stdout
    recs = TuningDB(out).records()
    by = {(rec.extra["candidate"], rec.extra["phase"]): rec for rec in recs}
    assert by[("c0", "search")].ok and by[("c0", "search")].extra["default"]
    assert by[("c1", "search")].ok and by[("c1", "search")].extra["err"] <= by[("c1", "search")].extra["tol"]
    assert by[("gone", "search")].status == "run-failed" and "gone.so" in by[("gone", "search")].error
    assert by[("nobuild", "search")].status == "build-failed"
    assert sum(rec.extra["phase"] == "confirm" for rec in recs) == 4      # 2 configs x 2 rounds
    db = tmp_path / "db.jsonl"
    from attncc.schedules.db import ingest

    res = ingest(str(out), str(db))
    (info,) = res["keys"].values()
    assert res["added"] == len(recs) and info["ok"] == 2 and info["failed"] == 2


def _cpu_runtime_candidates(folder, example: str, shapes: dict, quantize: dict, name: str) -> None:
    """Like _cpu_candidates, for a kernel with more arguments than q, k, v: each candidate's
    runtime manifest and the kernel's captured inputs written by the build side's own
    functions; plus "allfull", candidate c1 told (by its manifest) that every tile is full --
    a wrong block map, which the check must catch."""
    import numpy as np

    from attncc.compiler import compile_variant
    from attncc.schedules.candidates import reference_of, write_captures, write_runtime_files

    kdir = folder / name
    for sub in (kdir, folder / "src", folder / "fatbin"):
        sub.mkdir(parents=True, exist_ok=True)
    cands = []
    for i, cfg in enumerate((None, {"block_q": 32, "block_k": 64})):
        k = compile_variant(str(REPO / "examples" / example), shapes=shapes, config=cfg, tuning_db=False,
                            quantize=quantize)
        k.export_library(str(kdir / f"c{i}.so"))
        sha = f"{i:064d}"
        (folder / "fatbin" / f"{sha}.fatbin").write_bytes(b"")
        cands.append({"id": f"c{i}", "config": dataclasses.asdict(k.config), "file": f"c{i}.so",
                      "default": i == 0, "source_sha256": sha, "predicted_s": 1e-3,
                      **write_runtime_files(k, str(kdir), f"c{i}")})
    spec = k.spec
    if spec.runtime_tile_map is not None:
        rm = json.loads((kdir / "c1.runtime.json").read_text())
        rm["block_map"]["mode"] = "static"
        np.save(kdir / "allfull.npy", np.full(rm["block_map"]["shape"], 2, np.int32))
        rm["files"]["tile_map"] = {"path": "allfull.npy"}
        (kdir / "allfull.runtime.json").write_text(json.dumps(rm))
        cands.append(dict(cands[1], id="allfull", runtime="allfull.runtime.json"))
    man = {"format": "attncc-candidates/1", "arch": "sm_90a", "variant": k.variant, "env": k.env,
           "key": {"fingerprint": "f" * 16, "bucket": "b", "dtype": spec.dtype, "target": "cpu"},
           "dtype": spec.dtype, "inputs": ["q", "k", "v"],
           "input_shapes": {n: list(s) for n, s in k.input_shapes().items()},
           "out_shape": [spec.batch, spec.q_heads, spec.q_len, spec.head_dim_v],
           "lse_shape": [spec.batch, spec.q_heads, spec.q_len], "reference": reference_of(spec),
           "captures": write_captures(spec, str(kdir)), "candidates": cands, "build_failed": []}
    (kdir / "manifest.json").write_text(json.dumps(man))


def test_measuring_side_runs_quantized_and_sparse_kernels_through_the_runtime(tmp_path):
    """The split flow on kernels that take more than q, k, v (CPU kernels standing in for the
    GPU's): an int8 document mask (quantize prologue, scales, document ids, a block map computed
    from them) checked against the default config, and an fp8 causal kernel with P·V quantized,
    checked against attention on its dequantized operands.  A candidate with a wrong block map
    is caught."""
    pytest.importorskip("torch")
    cands = tmp_path / "cands"
    _cpu_runtime_candidates(cands, "document_mask.py", {"S": 256}, {"dtype": "int8", "pv": False}, "doc-int8")
    _cpu_runtime_candidates(cands, "causal_mha.py", {"B": 1, "H": 2, "S": 192, "D": 64},
                            {"dtype": "fp8", "pv": True}, "causal-fp8pv")
    out = tmp_path / "results.jsonl"
    r = subprocess.run([sys.executable, "-m", "attncc.schedules.measure_candidates", str(cands),
                        "--out", str(out), "--lib-dir", _tvm_lib_dir(), "--device", "cpu", "--rep-ms", "20",
                        "--confirm", "0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "tvm imported: False" in r.stdout
    recs = {(rec.extra["variant"], rec.extra["candidate"]): rec for rec in TuningDB(out).records()}
    doc0, doc1, bad = (recs[("document_mask", c)] for c in ("c0", "c1", "allfull"))
    assert doc0.ok and doc1.ok and doc1.extra["err"] <= doc1.extra["tol"]
    assert doc1.extra["tol"] == pytest.approx(0.02 * doc1.extra["out_max"] + 1e-3, rel=1e-6)
    assert doc1.extra["lse_tol"] == 1e-3
    assert bad.status == "run-failed" and "wrong result" in bad.error and bad.extra["err"] > bad.extra["tol"]
    fp0, fp1 = recs[("causal_mha", "c0")], recs[("causal_mha", "c1")]
    for rec in (fp0, fp1):                     # both against the dequantized reference, not each other
        assert rec.ok and 0 < rec.extra["err"] <= rec.extra["tol"] < 0.5, rec.extra
    assert fp1.extra["vs_default"] > 0 and fp0.extra["lse_tol"] >= 2e-3


def test_a_hung_candidate_is_killed_and_recorded(tmp_path):
    pytest.importorskip("torch")
    _cpu_candidates(tmp_path / "cands")
    out = tmp_path / "results.jsonl"
    r = subprocess.run([sys.executable, "-m", "attncc.schedules.measure_candidates", str(tmp_path / "cands"),
                        "--out", str(out), "--lib-dir", _tvm_lib_dir(), "--device", "cpu", "--timeout", "0.001",
                        "--confirm", "0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr + r.stdout
    recs = [rec for rec in TuningDB(out).records() if rec.extra["candidate"] != "nobuild"]
    assert recs and all(rec.status == "timeout" and "killed" in rec.error for rec in recs)


def test_cuda_tuning_without_a_gpu_points_to_the_split_flow():
    from attncc.targets import cuda

    if cuda.local_arch() is not None:
        pytest.skip("a GPU is here: tuning measures in process")
    r = _cli("tune", CAUSAL, *SMALL_CUDA, "--trials", "2", "-q")
    assert r.returncode == 2 and "--export-candidates" in r.stderr and "Traceback" not in r.stderr


def test_export_candidates_describes_every_argument_of_sparse_and_quantized_kernels(tmp_path):
    """A document mask (runtime tile map, document ids) quantized to int8: each candidate gets
    the runtime manifest attncc export would write for its config, and the kernel the document
    ids it is measured on, so that the measuring side calls it through attncc.runtime."""
    import numpy as np

    out = tmp_path / "cands"
    r = _cli("tune", str(REPO / "examples" / "document_mask.py"), "--target", "cuda", "--arch", "sm_90a",
             "--dtype", "bf16", "--shape", "S=512", "--quantize", "int8", "--export-candidates", str(out),
             "--knobs", "mma=sync;block_q=128;block_k=32|64;num_warps=4;num_stages=2", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    m = _manifest(out)
    assert m["key"]["bucket"].endswith(",quant=int8") and m["quantize"]["dtype"] == "int8"
    assert m["reference"] == {"kind": "default", "scale": 0.125, "rel": 0.02,
                              "quant": {"dtype": "int8", "pv": False}}
    kdir = next(out.glob("*/manifest.json")).parent
    with np.load(kdir / m["captures"]) as z:
        doc = z["doc"]
    assert doc.shape == (512,) and (np.diff(doc) >= 0).all() and len(np.unique(doc)) > 1   # sorted ids
    assert len(m["candidates"]) >= 2 and not m["build_failed"]
    for c in m["candidates"]:
        rm = json.loads((kdir / c["runtime"]).read_text())
        assert rm["format"] == "attncc-export/1" and rm["files"]["kernel"]["path"] == c["file"]
        assert rm["config"]["block_q"] == c["config"]["block_q"] and rm["config"]["mma"] == c["config"]["mma"]
        roles = {a["name"]: a["role"] for a in rm["kernel_args"]}
        assert roles["tile_map"] == "table" and roles["doc"] == "capture" and roles["q_scale"] == "scale"
        assert rm["block_map"]["mode"] == "runtime" and rm["prologue"][0]["dtype"] == "int8"
        assert [a["name"] for a in rm["inputs"]] == ["q", "k", "v", "doc"]
