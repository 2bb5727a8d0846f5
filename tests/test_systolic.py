"""The systolic target (issue 8): every example verified on the simulated accelerator, the
simulator's matmul cycle model against its written formula, memory capacity checks,
pruned tiles costing nothing, the cycle report, and tuning by simulated cycles.

Shapes are small (the simulator computes real values in numpy); tiles of 64x32 give
several query and key blocks, ragged ones at S=300/T=131."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import EXAMPLES, REPO, example_ids
from attncc.compiler import compile_variant, verify
from attncc.errors import AttnccError, ConfigError
from attncc.targets import available, get_target
from attncc.targets.systolic import sim as simmod
from attncc.targets.systolic.config import PRESETS, AcceleratorConfig, resolve

SHAPES = {
    "aligned": dict(B=1, H=2, Hq=4, Hkv=2, S=128, T=64, D=32),
    "ragged": dict(B=2, H=1, Hq=6, Hkv=2, S=300, T=131, D=16),
}
SMALL_TILES = {"block_q": 64, "block_k": 32}


def build(path, shape="aligned", config=SMALL_TILES, options=None, shapes=None):
    from attncc.lang import load_variant
    symbols = load_variant(str(path)).trace().symbols()
    dims = {k: v for k, v in (shapes or SHAPES[shape]).items() if k in symbols}
    return compile_variant(str(path), target="systolic", shapes=dims, config=dict(config) if config else None,
                           target_options=options, tuning_db=False)


def example(name):
    return next(p for p in EXAMPLES if p.stem == name)


def test_registered():
    assert "systolic" in available()
    t = get_target("systolic")
    assert t.NAME == "systolic"


# --------------------------------------------------------------------------- every example


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("path", EXAMPLES, ids=example_ids(EXAMPLES))
def test_example_on_systolic(path, shape):
    kernel = build(path, shape)
    assert kernel.spec.dtype == "bfloat16"            # the array takes bf16 operands
    report = verify(kernel, seed=11)
    assert math.isfinite(report.max_error) and math.isfinite(report.lse_error), report
    assert report.passed, report
    rep = kernel.built.last_report
    assert rep["total_cycles"] > 0 and rep["macs"] > 0


def test_verify_catches_a_wrong_kernel():
    kernel = build(example("causal_mha"), "ragged")
    other = build(example("sdpa"), "ragged")
    kernel.source_ir = other.source_ir
    assert not verify(kernel, seed=11).passed


@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("double_buffer", [True, False])
def test_schedules_compute_the_same(dataflow, double_buffer):
    cfg = dict(SMALL_TILES, dataflow=dataflow, double_buffer=double_buffer)
    kernel = build(example("softcap"), "ragged", cfg)
    assert verify(kernel, seed=5).passed


@pytest.mark.parametrize("preset", ["tpu_v1", "gemmini"])
def test_presets_verify(preset):
    kernel = build(example("causal_gqa"), "ragged", config=None, options={"systolic_config": preset})
    assert kernel.config.accelerator == preset
    assert verify(kernel, seed=2).passed
    assert kernel.built.last_report["accelerator"] == preset


# --------------------------------------------------------------------------- the matmul cycle model


def _formula(M, K, N, R, C, dataflow):
    """The docstring's formula, written out again."""
    if dataflow == "ws":
        return R + math.ceil(K / R) * math.ceil(N / C) * max(M, R) + R + C - 2
    return R + C - 2 + math.ceil(M / R) * math.ceil(N / C) * max(K, R) + R


GEMMS = [(128, 128, 128), (512, 64, 128), (300, 131, 77), (16, 256, 512), (1024, 96, 40), (1, 1, 1)]


@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("array", [(128, 128), (16, 16), (32, 8)])
@pytest.mark.parametrize("gemm", GEMMS, ids=lambda g: "x".join(map(str, g)))
def test_matmul_cycles_match_the_formula(gemm, array, dataflow):
    M, K, N = gemm
    R, C = array
    hw = AcceleratorConfig(name="t", rows=R, cols=C)
    s = simmod.Simulator(hw, dataflow)
    rng = np.random.default_rng(0)
    a = s.alloc("a", "scratchpad", (M, K), simmod.bf16())
    b = s.alloc("b", "scratchpad", (K, N), simmod.bf16())
    c = s.alloc("c", "accumulator", (M, N), np.float32)
    a.data[...] = rng.standard_normal((M, K)).astype(simmod.bf16())
    b.data[...] = rng.standard_normal((K, N)).astype(simmod.bf16())
    cycles = s.matmul(a, b, c)
    want = _formula(M, K, N, R, C, dataflow)
    assert cycles == want == simmod.matmul_cycles(M, K, N, R, C, dataflow)
    assert s.stats.total_cycles == want                     # alone on an idle array: start to result
    assert s.stats.busy["array"] == want - simmod.matmul_drain(R, C, dataflow)
    # real values: bf16 products, fp32 accumulation
    ref = a.data.astype(np.float64) @ b.data.astype(np.float64)
    assert np.allclose(c.data, ref, rtol=1e-5, atol=1e-4 * math.sqrt(K))
    assert s.report()["array_utilization"] <= 1.0


def test_consecutive_matmuls_pipeline():
    hw = AcceleratorConfig(name="t", rows=16, cols=16)
    s = simmod.Simulator(hw, "ws")
    bufs = [s.alloc(n, "scratchpad", (64, 16), simmod.bf16()) for n in "ab"]
    w = s.alloc("w", "scratchpad", (16, 16), simmod.bf16())
    outs = [s.alloc(f"c{i}", "accumulator", (64, 16), np.float32) for i in range(2)]
    s.matmul(bufs[0], w, outs[0])
    s.matmul(bufs[1], w, outs[1])
    one = simmod.matmul_cycles(64, 16, 16, 16, 16, "ws")
    drain = simmod.matmul_drain(16, 16, "ws")
    assert s.stats.total_cycles == 2 * one - drain           # the first drain hides under the second fill


def test_dma_cost_and_latency():
    hw = AcceleratorConfig(name="t", dma_bytes_per_cycle=64, dma_latency_cycles=100)
    s = simmod.Simulator(hw)
    buf = s.alloc("x", "scratchpad", (64, 64), simmod.bf16())
    s.dma_load(buf, np.ones((40, 64), simmod.bf16()))     # a ragged block: 40 rows of 64
    assert s.stats.bytes_loaded == 40 * 64 * 2
    assert s.stats.busy["dma"] == 40 * 64 * 2 // 64
    assert s.stats.total_cycles == 40 * 64 * 2 // 64 + 100
    assert (buf.data[40:] == 0).all()


def test_memories_refuse_overflow():
    hw = AcceleratorConfig(name="t", scratchpad_bytes=1024)
    s = simmod.Simulator(hw)
    s.alloc("a", "scratchpad", (16, 16), simmod.bf16())      # 512 B
    with pytest.raises(simmod.CapacityError):
        s.alloc("b", "scratchpad", (16, 17), simmod.bf16())


# --------------------------------------------------------------------------- configs


def test_config_that_does_not_fit_is_rejected_with_the_reason():
    t = get_target("systolic")
    kernel = build(example("sdpa"), shapes=dict(B=1, H=1, S=2048, D=128), config=None,
                   options={"systolic_config": "gemmini"})
    spec = kernel.spec
    too_big = t.SystolicConfig("gemmini", 1024, 1024, "ws", True)
    with pytest.raises(ConfigError) as info:
        t.validate_config(spec, too_big)
    msg = str(info.value)
    assert "gemmini" in msg and "scratchpad" in msg and "bytes" in msg and "holds 262144 bytes" in msg
    need = sum(b for _, b in t.memory_plan(spec, too_big)["scratchpad"])
    assert f"need {need} bytes" in msg
    # the accumulator is checked too
    acc = t.SystolicConfig("gemmini", 128, 128, "ws", False)
    with pytest.raises(ConfigError, match="accumulator"):
        t.validate_config(spec, acc)
    # the default config always fits, and through compile_variant the error is an AttnccError
    t.validate_config(spec, kernel.config)
    with pytest.raises(AttnccError, match="do not fit"):
        build(example("sdpa"), shapes=dict(B=1, H=1, S=2048, D=128), config={"block_q": 1024, "block_k": 1024},
              options={"systolic_config": "gemmini"})


def test_unknown_preset_and_json_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown systolic config 'tpu_v9'.*presets: default, tpu_v1, gemmini"):
        resolve("tpu_v9")
    f = tmp_path / "tiny.json"
    f.write_text(json.dumps({"rows": 8, "cols": 8, "scratchpad_bytes": 65536, "accumulator_bytes": 32768}))
    hw = resolve(str(f))
    assert (hw.rows, hw.cols, hw.name) == (8, 8, "tiny")
    assert hw.vector_lanes == PRESETS["default"].vector_lanes
    kernel = build(example("causal_mha"), "aligned", config=None, options={"systolic_config": str(f)})
    assert verify(kernel, seed=1).passed
    assert kernel.built.last_report["array"] == "8x8"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rowz": 8}))
    with pytest.raises(ConfigError, match="unknown field"):
        resolve(str(bad))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "attncc.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_cli_user_errors_are_one_line():
    r = _cli("compile", "examples/causal_gqa.py", "--target", "systolic", "--systolic-config", "nope", "--no-run")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("attncc: error:") and "unknown systolic config 'nope'" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("compile", "examples/sdpa.py", "--target", "systolic", "--systolic-config", "gemmini",
             "--config", "block_q=1024,block_k=1024", "--no-run")
    assert r.returncode == 2 and "do not fit" in r.stderr and "Traceback" not in r.stderr


def test_cli_verify_and_report():
    r = _cli("compile", "examples/causal_gqa.py", "--target", "systolic", "--shape", "S=256,Hq=4,Hkv=2",
             "--systolic-config", "tpu_v1", "--report", "--verify")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for field in ("total", "utilization", "vector", "dma", "loaded", "stored", "tile density", "PASS"):
        assert field in out, out


# --------------------------------------------------------------------------- sparsity and the report


def test_pruned_tiles_cost_nothing():
    shapes = dict(B=1, H=1, S=512, D=64)
    cfg = {"block_q": 64, "block_k": 64}
    causal = build(example("causal_mha"), shapes=shapes, config=cfg)
    full = build(example("sdpa"), shapes=shapes, config=cfg)
    rc = causal.target.report(causal.built)
    rf = full.target.report(full.built)
    n = 512 // 64
    assert rf["tiles_run"] == n * n and rc["tiles_run"] == n * (n + 1) // 2
    # every tile runs the same two matmuls: array cycles scale exactly with the tiles run
    assert rc["busy_cycles"]["array"] * rf["tiles_run"] == rf["busy_cycles"]["array"] * rc["tiles_run"]
    assert rc["macs"] * rf["tiles_run"] == rf["macs"] * rc["tiles_run"]
    assert 0.5 <= rc["busy_cycles"]["array"] / rf["busy_cycles"]["array"] <= 0.6     # causal ~ half
    assert rc["total_cycles"] < 0.7 * rf["total_cycles"]
    assert rc["bytes_loaded"] < rf["bytes_loaded"]


def test_report_fields_are_consistent():
    kernel = build(example("sliding_window"), shapes=dict(B=1, H=2, S=512, D=64),
                   config={"block_q": 64, "block_k": 64})
    rep = kernel.target.report(kernel.built)
    spec = kernel.spec
    total = rep["total_cycles"]
    assert 0 < rep["array_utilization"] <= rep["array_busy_fraction"] <= 1
    for unit, busy in rep["busy_cycles"].items():
        assert 0 < busy <= total, unit
    assert rep["seconds"] == pytest.approx(total / rep["clock_hz"])
    assert kernel.measure() == pytest.approx(rep["seconds"])
    # bytes: every Q block once per head, K and V once per tile run, out (bf16) and lse (fp32) once
    nqb = 512 // 64
    D = spec.head_dim
    heads = spec.batch * spec.q_heads
    assert rep["bytes_loaded"] == heads * nqb * 64 * D * 2 + rep["tiles_run"] * 64 * D * 2 * 2
    assert rep["bytes_stored"] == heads * 512 * (D * 2 + 4)
    assert rep["tiles_run"] == rep["tiles_full"] + rep["tiles_partial"]
    assert rep["tiles_run"] / rep["tiles_total"] == pytest.approx(rep["tile_density"])
    assert rep["tile_density"] < 1
    assert rep["scratchpad_used"] <= PRESETS["default"].scratchpad_bytes


def test_double_buffering_overlaps():
    shapes = dict(B=1, H=1, S=512, D=64)
    on = build(example("sdpa"), shapes=shapes, config={"block_q": 128, "block_k": 128, "double_buffer": True})
    off = build(example("sdpa"), shapes=shapes, config={"block_q": 128, "block_k": 128, "double_buffer": False})
    r_on, r_off = on.target.report(on.built), off.target.report(off.built)
    # the same array and DMA work (the vector unit merges each P·V result into O: a little more) ...
    for unit in ("array", "dma"):
        assert r_on["busy_cycles"][unit] == r_off["busy_cycles"][unit]
    assert r_off["busy_cycles"]["vector"] <= r_on["busy_cycles"]["vector"] < 1.1 * r_off["busy_cycles"]["vector"]
    # ... overlapped (at these small tiles the 500-cycle DMA latency stays partly exposed: the
    # prefetch distance is one tile)
    assert r_on["total_cycles"] < 0.8 * r_off["total_cycles"]
    out_on, _ = on(*on.random_inputs(3).values())
    out_off, _ = off(*off.random_inputs(3).values())
    assert np.array_equal(np.asarray(out_on, np.float32), np.asarray(out_off, np.float32))


def test_document_mask_uses_the_runtime_block_map():
    kernel = build(example("document_mask"), shapes=dict(B=1, H=1, S=256, D=32), config={"block_q": 32, "block_k": 32})
    inputs = kernel.random_inputs(4)
    doc = np.repeat(np.arange(4, dtype=np.int32), 64)           # four documents of 64 tokens
    inputs["doc"] = doc
    assert verify(kernel, inputs=inputs).passed
    rep = kernel.built.last_report
    assert rep["tiles_run"] == 4 * 3                             # per document: 2x2 blocks, causal -> 3
    assert rep["tile_density"] == pytest.approx(12 / 64)


# --------------------------------------------------------------------------- tuning


def test_tuning_space_and_deterministic_measure():
    from attncc.schedules import get_family
    from attncc.schedules.space import SearchSpace

    kernel = build(example("causal_mha"), shapes=dict(B=1, H=1, S=256, D=64), config=None,
                   options={"systolic_config": "gemmini"})
    space = SearchSpace("systolic", kernel.spec, {"systolic_config": "gemmini"})
    assert set(space.names()) == {"accelerator", "block_q", "block_k", "dataflow", "double_buffer"}
    valid = space.valid_configs()
    assert valid and all(c.accelerator == "gemmini" for c in valid)
    assert space.rejected and any("do not fit" in r for r in space.rejected)
    fam = get_family("systolic")
    assert fam.cost_model(kernel.spec, valid[0], {"systolic_config": "gemmini"}) > 0
    assert "gemmini" in fam.device_name({"systolic_config": "gemmini"})
    t = kernel.target
    built = t.build(kernel.spec, valid[0], systolic_config="gemmini")
    sample = fam.sampler(built, kernel.spec)
    xs = sample(3)
    assert len(set(xs)) == 1 and xs[0] == t.measure(built, kernel.spec)


def test_tune_inline(tmp_path):
    from attncc.schedules import tuner

    settings = tuner.TuneSettings(trials=4, isolation="inline", strategy="random", confirm=0, seed=1)
    result = tuner.tune(str(example("causal_mha")), "systolic", dict(B=1, H=1, S=256, D=64), None,
                        db=str(tmp_path / "db.jsonl"), settings=settings)
    assert result.best is not None
    assert result.best.time_s <= result.default_time()
    # the record is used by compile
    k = compile_variant(str(example("causal_mha")), target="systolic", shapes=dict(B=1, H=1, S=256, D=64),
                        tuning_db=str(tmp_path / "db.jsonl"))
    assert "tuned record" in k.config_source


def test_library_entry_point_and_no_export(tmp_path):
    import attncc
    from attncc.export import ExportError, export

    k = attncc.compile(str(example("causal_mha")), target="systolic", shapes=dict(B=1, H=1, S=64, D=16),
                       tuning_db=False)
    inputs = k.random_inputs(0)
    out, lse = k(*inputs.values())
    assert out.shape == (1, 1, 64, 16) and lse.shape == (1, 1, 64)
    with pytest.raises(ExportError, match="systolic target cannot be exported"):
        export(k, str(tmp_path / "x"))


@pytest.mark.parametrize("preset", ["gemmini", "default"])
def test_every_valid_schedule_fits_by_construction(preset):
    """validate_config's memory plan is what the runtime allocates: every config it accepts
    allocates without overflow, and each one it rejects for memory would overflow."""
    from attncc.schedules.space import SearchSpace
    from attncc.targets.systolic.kernel import AttentionRun

    t = get_target("systolic")
    kernel = build(example("cross_attention"), shapes=dict(B=1, H=1, S=1024, T=1024, D=128), config=None,
                   options={"systolic_config": preset})
    spec = kernel.spec
    hw = resolve(preset)
    zeros = [np.zeros(s, simmod.bf16()) for s in t._shapes(spec)]
    space = SearchSpace("systolic", spec, {"systolic_config": preset})
    accepted = rejected = 0
    for cfg in space.all_configs():
        plan = t.memory_plan(spec, cfg)
        fits = all(sum(b for _, b in plan[m]) <= cap
                   for m, cap in (("scratchpad", hw.scratchpad_bytes), ("accumulator", hw.accumulator_bytes)))
        if space.is_valid(cfg):
            run = AttentionRun(spec, cfg, hw, *zeros)
            assert run.sim.used["scratchpad"] == sum(b for _, b in plan["scratchpad"])
            assert run.sim.used["accumulator"] == sum(b for _, b in plan["accumulator"])
            accepted += 1
        else:
            assert not fits
            with pytest.raises(simmod.CapacityError):
                AttentionRun(spec, cfg, hw, *zeros)
            rejected += 1
    assert accepted and rejected
