"""Issue 4's quantization on the CUDA mma.sync kernel (the kernel every arch before Hopper runs):
INT8 Q·Kᵀ on m16n8k32 s8 tensor cores (sm_80 and newer), FP8 (e4m3 / e5m2) Q·Kᵀ on m16n8k32 f8
tensor cores (sm_89 and newer) and fp8 P·V (e4m3 P, V transposed and key-permuted on the host,
as the Hopper kernel).  Checked without a GPU: the instructions and argument types in the
generated CUDA, ptxas for the arch (no spills), the clear errors, and the 8-bit fragment
loading emulated in numpy.  On a GPU (skipped cleanly without one) the kernels are checked
against the quantized reference; the GPU machine runs the wider set through
benchmarks/gpu/attention.py (build.py --only quantsync)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from conftest import hopper_gpu_available  # noqa: E402

from attncc.compiler import compile_variant, verify  # noqa: E402
from attncc.errors import DTypeError, ShapeError  # noqa: E402
from attncc.targets import cuda  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "examples")
VARIANTS = os.path.join(ROOT, "benchmarks", "gpu", "variants.py")
SYNC = dict(mma="sync", block_q=128, block_k=64, num_warps=4, num_stages=2, q_in_registers=False)

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
needs_hopper = pytest.mark.skipif(not hopper_gpu_available(), reason="no Hopper (sm_90a) CUDA device")


def _k(quant, arch="sm_80", path="causal_gqa.py", **kw):
    return compile_variant(os.path.join(EX, path), target="cuda", dtype="bf16", target_options={"arch": arch},
                           quantize=quant, **kw)


def _ptxas(tmp_path, src, arch):
    f = tmp_path / "k.cu"
    f.write_text(src)
    p = subprocess.run(["nvcc", "-cubin", f"-gencode=arch=compute_{arch[3:]},code={arch}", "-O3", "-Xptxas", "-v",
                        str(f), "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    log = p.stdout + p.stderr
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", log)]
    assert spills and max(spills) == 0, log[-1500:]


@needs_nvcc
def test_int8_qk_runs_on_s8_tensor_cores(tmp_path):
    k = _k({"dtype": "int8"})
    assert k.config.mma == "sync"
    src = k.source()
    assert "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32" in src              # Q·Kᵀ, int32 accumulate
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in src          # P·V stays bf16
    assert re.search(r"(signed char|int8_t)\* __restrict__ q_ptr", src)
    assert re.search(r"float\* __restrict__ q_scale_ptr", src) and re.search(r"float\* __restrict__ k_scale_ptr", src)
    _ptxas(tmp_path, src, "sm_80")


@needs_nvcc
@pytest.mark.parametrize("dtype,ptx", [("fp8", "e4m3"), ("fp8_e5m2", "e5m2")])
def test_fp8_qk_runs_on_f8_tensor_cores_from_sm89(tmp_path, dtype, ptx):
    k = _k({"dtype": dtype, "granularity": "block", "block": 16}, arch="sm_89")
    src = k.source()
    assert f"mma.sync.aligned.m16n8k32.row.col.f32.{ptx}.{ptx}.f32" in src
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in src
    assert "cvt.rn.satfinite.e4m3x2.f32" not in src                             # P stays bf16
    _ptxas(tmp_path, src, "sm_89")


@needs_nvcc
def test_fp8_pv_reads_v_transposed(tmp_path):
    k = _k({"dtype": "fp8", "pv": True}, arch="sm_89", path="document_mask.py")
    src = k.source()
    assert "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32" in src
    assert "mma.sync.aligned.m16n8k16" not in src                               # both products 8-bit
    assert "cvt.rn.satfinite.e4m3x2.f32" in src                                 # P in e4m3
    assert "ldmatrix.sync.aligned.m8n8.x4.trans" not in src                     # V read as K is
    assert cuda.fp8_v_transposed(k.spec, k.config)
    v = np.zeros((k.spec.batch, k.spec.kv_heads, k.spec.kv_len, k.spec.head_dim_v), np.float32)
    assert cuda.kernel_v(k.spec, k.config, v).shape[2:] == (k.spec.head_dim_v, -(-k.spec.kv_len // 32) * 32)
    assert cuda.use_block_table(k.spec, k.config)                                # still pruned per call
    _ptxas(tmp_path, src, "sm_89")


@needs_nvcc
@pytest.mark.parametrize("quant,arch", [({"dtype": "int8"}, "sm_80"), ({"dtype": "fp8", "pv": True}, "sm_89")])
def test_export_declares_quantized_inputs_and_scales(tmp_path, quant, arch):
    """An exported quantized mma.sync kernel: q/k (and v) in their 8-bit type, the scales after the
    tile map, fp8 P·V's v in the transposed layout attncc.runtime applies (as for Hopper)."""
    import json

    from attncc.export import export as export_kernel
    from attncc.runtime import _layouts

    k = _k(quant, arch=arch, path="document_mask.py", shapes={"S": 300})
    export_kernel(k, str(tmp_path / "x"))
    m = json.loads((tmp_path / "x" / "manifest.json").read_text())
    args = {a["name"]: a for a in m["kernel_args"]}
    assert [a["role"] for a in m["kernel_args"]][:5] == ["input"] * 3 + ["output"] * 2
    assert args["q"]["dtype"] == args["k"]["dtype"] == k.spec.quant_dtype
    assert [a["name"] for a in m["kernel_args"]][5:] == ["tile_map"] + [n for n, _ in k.spec.scales] + ["doc"]
    if quant.get("pv"):
        assert args["v"]["source"]["layout"] == _layouts.FP8_V
        assert args["v"]["shape"][2:] == [k.spec.head_dim_v, _layouts.padded_kv_len(k.spec.kv_len)]
    else:
        assert args["v"]["dtype"] == "bfloat16" and "layout" not in (args["v"].get("source") or {})


def test_bf16_kernels_take_no_scales():
    k = _k(None, build=False)
    assert not k.spec.scales and not cuda.fp8_v_transposed(k.spec, k.config)


def test_kernel_choice_for_quantized_inputs():
    spec = lambda q, D=128, **kw: _k(dict(dtype=q, **kw), arch="sm_90a", path="causal_mha.py",     # noqa: E731
                                     shapes={"D": D}, build=False)
    assert spec("int8").config.mma == "sync"                # int8: mma.sync, also on Hopper
    assert spec("fp8").config.mma == "wgmma"                # fp8 at D=128: the Hopper kernel
    assert spec("fp8", D=64).config.mma == "sync"           # ... which needs D % 128: mma.sync instead
    assert _k({"dtype": "int8"}, build=False).config.mma == "sync"


def test_quantized_shared_memory_counts_bytes():
    cfg = cuda.CudaConfig(**SYNC)
    k = _k({"dtype": "fp8", "pv": True}, arch="sm_89", build=False, config=SYNC)
    b = _k(None, arch="sm_89", build=False, config=SYNC)
    D, DV = k.spec.head_dim, k.spec.head_dim_v
    # K and V tiles at one byte an element; the Q slot stays 16-bit wide (it stages the output)
    assert cuda.shared_memory_bytes(b.spec, cfg) == 128 * 2 * max(D, DV) + 2 * 64 * 2 * (D + DV)
    assert cuda.shared_memory_bytes(k.spec, cfg) == 128 * 2 * DV + 2 * 64 * (D + DV)


def test_errors_name_what_the_kernel_cannot_take():
    with pytest.raises(DTypeError, match="fp8 .* need sm_89 or newer"):
        _k({"dtype": "fp8"}, arch="sm_80")
    with pytest.raises(DTypeError, match="--quantize-pv with int8 is not supported"):
        _k({"dtype": "int8", "pv": True}, build=False)
    with pytest.raises(DTypeError, match="int8 inputs run on the mma.sync kernel"):
        _k({"dtype": "int8"}, arch="sm_90a", build=False,
           config=dict(mma="wgmma", block_q=128, num_warps=8, block_k=128, num_stages=2))
    with pytest.raises(ShapeError, match="per-block V scales"):
        _k({"dtype": "fp8", "pv": True, "granularity": "block", "block": 16}, arch="sm_89", build=False)
    with pytest.raises(ShapeError, match="multiple of 32"):
        _k({"dtype": "int8"}, shapes={"D": 48}, build=False)
    with pytest.raises(DTypeError, match="decode kernel does not take them"):
        _k({"dtype": "int8"}, shapes={"S": 1}, build=False)


def _ldmatrix_x4(tile16, addr_rows, addr_chunks):
    """ldmatrix .x4 .b16 as PTX defines it: lane l supplies the row address of row l % 8 of
    matrix l // 8; lane t receives, from each matrix i, the 32 bits at row t // 4, 16-bit
    columns 2 (t % 4) and 2 (t % 4) + 1 (here: 4 bytes)."""
    regs = np.zeros((32, 4, 4), tile16.dtype)
    for i in range(4):
        for t in range(32):
            src = 8 * i + t // 4
            row, chunk = addr_rows[src], addr_chunks[src]
            regs[t, i] = tile16[row, chunk * 16 + 4 * (t % 4): chunk * 16 + 4 * (t % 4) + 4]
    return regs


def test_8bit_fragments_of_the_qk_product():
    """The kernel's ldmatrix addresses on 8-bit Q and K tiles give m16n8k32's A and B fragments
    (PTX ISA: A register r, byte x of lane l = A[l // 4 + 8 (r % 2), 16 (r // 2) + 4 (l % 4) + x];
    B register r, byte x = B[k = 16 r + 4 (l % 4) + x, n = l // 4]): S = Q Kᵀ over a k32 step."""
    rng = np.random.default_rng(1)
    Q = rng.integers(-128, 128, (16, 64)).astype(np.int64)   # 16 rows, D = 64 bytes: two k32 steps
    K = rng.integers(-128, 128, (16, 64)).astype(np.int64)   # 16 keys (two n8 tiles)
    S = np.zeros((16, 16), np.int64)
    for kd in range(2):
        lanes = np.arange(32)
        # Q: row lane % 16, chunk kd * 2 + lane // 16 (cuda.py's Q ldmatrix)
        qa = _ldmatrix_x4(Q, lanes % 16, kd * 2 + lanes // 16)
        # K: key lane // 16 * 8 + lane % 8, chunk kd * 2 + lane // 8 % 2
        kb = _ldmatrix_x4(K, lanes // 16 * 8 + lanes % 8, kd * 2 + lanes // 8 % 2)
        A = np.zeros((16, 32), np.int64)
        for lane in range(32):
            for r in range(4):
                A[lane // 4 + 8 * (r % 2), 16 * (r // 2) + 4 * (lane % 4): 16 * (r // 2) + 4 * (lane % 4) + 4] = qa[lane, r]
        for half in range(2):                               # k_frag[half * 2], k_frag[half * 2 + 1]
            B = np.zeros((32, 8), np.int64)
            for lane in range(32):
                for r in range(2):
                    B[16 * r + 4 * (lane % 4): 16 * r + 4 * (lane % 4) + 4, lane // 4] = kb[lane, half * 2 + r]
            S[:, half * 8:(half + 1) * 8] += A @ B
    np.testing.assert_array_equal(S, Q @ K.T)


# --------------------------------------------------------------------------- on a GPU


@needs_hopper
@pytest.mark.parametrize("quant", [{"dtype": "int8"}, {"dtype": "int8", "granularity": "block", "block": 32},
                                   {"dtype": "fp8"}, {"dtype": "fp8", "pv": True},
                                   {"dtype": "fp8_e5m2", "granularity": "tensor", "pv": True}])
@pytest.mark.parametrize("path", ["causal_gqa.py", "document_mask.py"])
def test_sync_kernel_matches_the_quantized_reference(quant, path):
    k = compile_variant(os.path.join(EX, path), target="cuda", dtype="bf16", shapes={"S": 333}, config=SYNC,
                        quantize=quant)
    rep = verify(k, seed=0)
    assert rep.passed, (rep.max_error, rep.tolerance, rep.lse_error, rep.lse_tolerance)
    assert 0 < rep.unquantized_error < 0.5
