"""The quantize pass on the systolic target: INT8 q/k on the array (int32 accumulation,
scales applied to the scores in the vector unit), FP8 (e4m3, e5m2) emulated as bf16 by
the DMA, v quantized with --quantize-pv; checked against the quantized reference
(tolerance rule) and within a stated bound of the unquantized one; DMA bytes of the
1-byte operands; pruned tiles still skipped; the cycle report and the CLI."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from conftest import REPO
from attncc.compiler import compile_variant, verify
from attncc.errors import AttnccError, DTypeError, ShapeError, TargetError
from attncc.targets import systolic
from attncc.targets.systolic import sim as simmod
from attncc.targets.systolic.config import AcceleratorConfig

SHAPE = dict(B=1, Hq=4, Hkv=2, S=75, D=16)
# several query and key blocks, a ragged last one of each, double-buffered
TILES = {"block_q": 32, "block_k": 16}
# stated bounds on the max error vs the unquantized float64 reference for N(0, 1) inputs at
# SHAPE (causal GQA); measured ~0.02-0.03 (int8), ~0.08-0.15 (e4m3), ~0.14-0.21 (e5m2)
BOUND = {"int8": 0.1, "fp8": 0.3, "fp8_e5m2": 0.5}
DTYPES = ["int8", "fp8", "fp8_e5m2"]


def quant(dtype, granularity="head", pv=False, block=16):
    q = {"dtype": dtype, "granularity": granularity, "pv": pv}
    if granularity == "block":
        q["block"] = block
    return q


def build(path="examples/causal_gqa.py", shapes=SHAPE, q=None, config=TILES):
    return compile_variant(str(REPO / path), target="systolic", shapes=shapes, quantize=q,
                           config=dict(config) if config else None, tuning_db=False)


@pytest.mark.parametrize("pv", [False, True], ids=["qk", "qk+pv"])
@pytest.mark.parametrize("granularity", ["head", "tensor", "block"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantized_kernel(dtype, granularity, pv):
    k = build(q=quant(dtype, granularity, pv))
    assert k.quantized and k.spec.quant_dtype is not None
    rep = verify(k, seed=2)
    assert rep.passed, (rep.max_error, rep.tolerance, rep.lse_error, rep.lse_tolerance)
    assert rep.unquantized_error is not None and 0 < rep.unquantized_error < BOUND[dtype]
    r = k.built.last_report
    # the array computed in the format the operands say
    if dtype == "int8":
        assert r["macs_by_format"].get("int8", 0) == r["macs"] // 2          # Q·Kᵀ
        assert ("bf16 x int8" if pv else "bf16") in r["macs_by_format"]      # P·V
        assert "int8 q, k" in r["operands"] and "emulated" not in r["operands"]
        assert not r["emulated"]
    else:
        assert set(r["macs_by_format"]) == {"bf16"}
        assert "emulated" in r["operands"] and r["emulated"]
    assert ("v emulated" in r["operands"] or "int8 v" in r["operands"]) == pv


def test_quantized_differs_from_bf16():
    """The kernel really computes with the quantized operands (not the bf16 ones): its
    output differs from the bf16 kernel's by about the quantization error."""
    kb = build()
    kq = build(q=quant("fp8_e5m2", "tensor", True))
    x = kb.random_inputs(5)
    ob, _ = kb(*x.values())
    oq, _ = kq(*x.values())
    d = np.max(np.abs(np.asarray(ob, np.float32) - np.asarray(oq, np.float32)))
    assert 0.01 < d < BOUND["fp8_e5m2"]


@pytest.mark.parametrize("dtype,pv", [("int8", False), ("int8", True), ("fp8", True)])
def test_dma_bytes_drop_to_one_byte_per_element(dtype, pv):
    shapes = dict(B=1, H=2, S=128, D=32)
    cfg = {"block_q": 64, "block_k": 32}
    base = build("examples/sdpa.py", shapes, None, cfg)
    k = build("examples/sdpa.py", shapes, quant(dtype, "head", pv), cfg)
    rb, rq = base.target.report(base.built), k.target.report(k.built)
    assert rb["tiles_run"] == rq["tiles_run"] == 2 * 2 * 4
    heads, D = 2, 32
    # every Q block once per head, K and V once per tile run
    assert rb["bytes_loaded_by"]["q"] == heads * 128 * D * 2
    assert rq["bytes_loaded_by"]["q"] == heads * 128 * D * 1
    assert rq["bytes_loaded_by"]["k"] == rq["tiles_run"] * 32 * D * 1 == rb["bytes_loaded_by"]["k"] // 2
    assert rq["bytes_loaded_by"]["v"] == rq["tiles_run"] * 32 * D * (1 if pv else 2)
    # one fp32 scale per loaded tile (head granularity), counted apart
    assert rq["bytes_loaded_by"]["q_scale"] == heads * 2 * 4
    assert rq["bytes_loaded_by"]["k_scale"] == rq["tiles_run"] * 4
    assert ("v_scale" in rq["bytes_loaded_by"]) == pv
    assert rq["bytes_loaded"] == sum(rq["bytes_loaded_by"].values())
    assert rq["bytes_loaded"] < 0.8 * rb["bytes_loaded"]
    assert rq["busy_cycles"]["dma"] < rb["busy_cycles"]["dma"]
    # the same matmuls at the same rate (the int8 rate assumption: bf16's MACs per cycle)
    assert rq["busy_cycles"]["array"] == rb["busy_cycles"]["array"] and rq["macs"] == rb["macs"]
    # on chip: int8 tiles take 1 byte, fp8 ones are bf16 after the DMA's conversion
    plan = {n.split()[0]: b for n, b in systolic.memory_plan(k.spec, k.config)["scratchpad"]}
    plan_b = {n.split()[0]: b for n, b in systolic.memory_plan(base.spec, base.config)["scratchpad"]}
    assert plan["Q"] == plan_b["Q"] // (2 if dtype == "int8" else 1)
    assert plan["V"] == plan_b["V"] // (2 if dtype == "int8" and pv else 1)
    assert rq["scratchpad_used"] == sum(plan.values())


@pytest.mark.parametrize("dtype", ["int8", "fp8"])
def test_sparse_mask_with_quantization_skips_empty_tiles(dtype):
    shapes = dict(B=1, H=1, S=256, D=32)
    cfg = {"block_q": 32, "block_k": 32}
    causal = build("examples/causal_mha.py", shapes, quant(dtype, "block", True), cfg)
    full = build("examples/sdpa.py", shapes, quant(dtype, "block", True), cfg)
    assert verify(causal, seed=1).passed
    rc = causal.built.last_report
    rf = full.target.report(full.built)
    n = 256 // 32
    assert rf["tiles_run"] == n * n and rc["tiles_run"] == n * (n + 1) // 2
    assert rc["macs"] * rf["tiles_run"] == rf["macs"] * rc["tiles_run"]
    assert rc["total_cycles"] < 0.7 * rf["total_cycles"]
    # a mask that reads data (document ids): the per-call block map skips across documents
    doc = build("examples/document_mask.py", shapes, quant(dtype, "head", False), cfg)
    inputs = doc.random_inputs(4)
    inputs["doc"] = np.repeat(np.arange(4, dtype=np.int32), 64)
    assert verify(doc, inputs=inputs).passed
    assert doc.built.last_report["tiles_run"] == 4 * 3


@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("double_buffer", [True, False])
def test_quantized_schedules_compute_the_same(dataflow, double_buffer):
    q = quant("int8", "block", True)
    ref = build(q=q)
    k = build(q=q, config={**TILES, "dataflow": dataflow, "double_buffer": double_buffer})
    x = ref.random_inputs(7)
    a, la = ref(*x.values())
    b, lb = k(*x.values())
    assert np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    assert np.array_equal(la, lb)


def test_presets_run_quantized():
    for preset in ("gemmini", "tpu_v1"):
        k = compile_variant(str(REPO / "examples/causal_gqa.py"), target="systolic", shapes=SHAPE,
                            quantize=quant("int8"), target_options={"systolic_config": preset}, tuning_db=False)
        assert verify(k, seed=3).passed, preset
        assert k.built.last_report["accelerator"] == preset


def test_per_block_v_scales_round_p_once():
    """Row 0 of causal attention keeps key 0 only: out = v_0 · sv_0 exactly, rounded once to
    bf16.  Folding sv_j into P naively (bf16(1 · sv_0), then the output rounding) would round
    twice; the kernel divides by the scale of the row's largest score so P_00 = 1 stays exact."""
    k = build(q=quant("int8", "block", True))
    x = k.random_inputs(0)
    out, _ = k(*x.values())
    ops = k.flash_operands(x)
    v, sv = ops[2], ops[5]
    want = (v[:, :, 0].astype(np.float32) * sv[:, :, 0]).astype(ml_dtypes.bfloat16)
    got = np.asarray(out)[:, :, 0]                  # q head h reads kv head h // 2
    assert np.array_equal(got.astype(np.float32), np.repeat(want, 2, axis=1).astype(np.float32))


def test_fp8_zero_and_subnormals_are_exact():
    """Every e4m3 value (zeros and subnormals included) reaches the array exactly."""
    k = compile_variant(str(REPO / "examples/sdpa.py"), target="systolic", shapes=dict(B=1, H=2, S=40, D=16),
                        quantize={"dtype": "fp8", "granularity": "tensor", "pv": True}, config=TILES,
                        tuning_db=False)
    x = k.random_inputs(seed=3)
    x["q"][..., ::2] = 0.0
    x["q"][0, 0, 0, 0] = 60.0
    x["k"][..., 1::2] *= 1e-2
    x["k"][0, 0, 1, 2] = 60.0
    x["v"][..., 1::3] *= 1e-3
    x["v"][0, 0, 0, 0] = 80.0
    rep = verify(k, inputs=x)
    assert rep.passed, (rep.max_error, rep.tolerance, rep.lse_error, rep.lse_tolerance)
    # the DMA's conversion is exact for all 256 codes of both formats
    hw = AcceleratorConfig(name="t", rows=4, cols=4)
    s = simmod.Simulator(hw)
    for fmt in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2):
        codes = np.arange(256, dtype=np.uint8).view(fmt).reshape(16, 16)
        buf = s.alloc(f"x{fmt.__name__}", "scratchpad", (16, 16), simmod.bf16())
        s.dma_load(buf, codes, what="x")
        f = codes.astype(np.float32)
        got = buf.data.astype(np.float32)
        assert np.array_equal(np.isnan(got), np.isnan(f))
        assert np.array_equal(got[~np.isnan(f)], f[~np.isnan(f)])
        assert np.array_equal(np.signbit(got), np.signbit(f))
    assert s.stats.bytes_loaded_by["x"] == 2 * 256          # 1 byte per element


def test_int8_matmul_is_exact_int32_at_the_bf16_rate():
    hw = AcceleratorConfig(name="t", rows=8, cols=8)
    s = simmod.Simulator(hw)
    rng = np.random.default_rng(0)
    a = s.alloc("A", "scratchpad", (16, 40), np.int8)
    b = s.alloc("B", "scratchpad", (24, 40), np.int8)
    c = s.alloc("C", "accumulator", (16, 24), np.float32)
    a.data[...] = rng.integers(-128, 128, a.data.shape)
    b.data[...] = rng.integers(-128, 128, b.data.shape)
    a.data[0] = -128
    b.data[0] = -128
    cycles = s.matmul(a, b, c, transpose_b=True)
    want = a.data.astype(np.int64) @ b.data.astype(np.int64).T
    assert c.holds == "int32"
    assert np.array_equal(c.data.view(np.int32), want)         # exact, beyond fp32's 2^24
    assert want[0, 0] == 128 * 128 * 40
    assert cycles == simmod.matmul_cycles(16, 40, 24, 8, 8, "ws")
    assert s.stats.macs_by_format == {"int8": 16 * 40 * 24}
    # int8 activations with bf16 weights are not an array format
    p = s.alloc("P", "scratchpad", (16, 24), simmod.bf16())
    o = s.alloc("O", "accumulator", (16, 40), np.float32)
    with pytest.raises(ValueError, match="operands"):
        s.matmul(b, p.__class__("x", "scratchpad", np.zeros((24, 40), simmod.bf16())), o)
    # bf16 P x int8 V: the int8 weights widened to bf16 (exact)
    s.matmul(p, b, o)
    assert s.stats.macs_by_format["bf16 x int8"] == 16 * 24 * 40


def test_unsupported_quantization_is_one_clear_error():
    k = build(q=quant("int8", "head", True))
    bad = dataclasses.replace(k.spec, quant_dtype="int4")
    with pytest.raises(DTypeError, match="int4"):
        systolic.build(bad, k.config)
    bad = dataclasses.replace(k.spec, scales=k.spec.scales[:2])
    with pytest.raises(TargetError, match="3 scales"):
        systolic.build(bad, k.config)
    bad = dataclasses.replace(k.spec, scales=(("q_scale", (1, 4, 3, 1)),) + k.spec.scales[1:])
    with pytest.raises(TargetError, match="q_scale of shape"):
        systolic.build(bad, k.config)
    ops = k.flash_operands(k.random_inputs(0))
    with pytest.raises(ShapeError, match="k_scale"):
        systolic.run(k.built, *ops[:4], np.ones((1, 1, 5, 1), np.float32), ops[5])
    with pytest.raises(TargetError, match="v_scale"):
        systolic.run(k.built, *ops[:5])
    assert issubclass(DTypeError, AttnccError)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "attncc.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.mark.parametrize("dtype,word", [("int8", "int8 q, k"), ("fp8", "emulated")])
def test_cli_quantized_verify_and_report(dtype, word):
    r = _cli("compile", "examples/causal_gqa.py", "--target", "systolic", "--shape", "S=128,Hq=4,Hkv=2",
             "--quantize", dtype, "--quantize-pv", "--quantize-granularity", "block:16", "--verify", "--report")
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout and "operands" in r.stdout and word in r.stdout, r.stdout
    assert "Traceback" not in r.stderr
