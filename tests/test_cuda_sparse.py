"""Issue 4 on the CUDA target (the Hopper wgmma kernel), checked without a GPU: table mode
(the tile map of masks that are no band, compile-time or per call from captured tensors such
as document ids) and fp8 (e4m3/e5m2) Q·Kᵀ and P·V compile for sm_90a; the generated source
holds the tile-map loop and the fp8 wgmma instructions; what the kernels cannot take is one
clear error; the fp8 P·V layout (V transposed and key-permuted by the host prologue) matches
the wgmma fragments, emulated in numpy.  GPU tests skip cleanly without a device; the GPU
machine runs the same checks through benchmarks/gpu/attention.py (build.py --only sparse)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import ml_dtypes
import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from conftest import hopper_gpu_available  # noqa: E402

from attncc.compiler import compile_variant, verify  # noqa: E402
from attncc.errors import AttnccError, DTypeError, ShapeError, TargetError  # noqa: E402
from attncc.targets import _cuda_wgmma_sparse as _cuda_wgmma, cuda  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = os.path.join(ROOT, "benchmarks", "gpu", "variants.py")
WGMMA = dict(mma="wgmma", block_q=128, num_warps=8, block_k=128, num_stages=2)
H100 = {"arch": "sm_90a"}

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


needs_hopper = pytest.mark.skipif(not hopper_gpu_available(), reason="no Hopper (sm_90a) CUDA device")


def _nvcc(tmp_path, text):
    src = tmp_path / "k.cu"
    src.write_text(text)
    p = subprocess.run(["nvcc", "-cubin", "-gencode=arch=compute_90a,code=sm_90a", "-O3", "-Xptxas", "-v",
                        str(src), "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    log = p.stdout + p.stderr
    assert "0 bytes spill stores" in log
    assert "C7515" not in log          # "wgmma serialized" performance warning
    return log


# --------------------------------------------------------------------------- table mode

TABLE_EXAMPLES = ["document_mask.py", "chunked.py", "prefix_lm.py", "strided.py", "local_global.py"]


@pytest.mark.parametrize("path", TABLE_EXAMPLES)
def test_table_mode_kernels_compile_for_hopper(path):
    k = compile_variant(os.path.join(ROOT, "examples", path), target="cuda", dtype="bf16", shapes={"S": 333},
                        target_options=H100)
    assert k.config.mma == "wgmma"
    assert cuda.use_block_table(k.spec, k.config)
    src = k.source()
    # the kernel takes the tile map and compacts its row into the list of non-empty key blocks
    assert re.search(r"int\* __restrict__ tile_map_ptr", src)
    assert "__ballot_sync" in src and "__popc" in src
    assert "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16" in src
    if path == "document_mask.py":                      # the captured document ids are an argument
        assert re.search(r"int\* __restrict__ doc_ptr", src)
        assert k.spec.runtime_tile_map is not None and k.built.tables is None
    else:                                               # compile-time table, kept with the kernel
        assert k.built.tables is not None and k.built.tables[0].shape == (3, 3)


def test_band_masks_take_no_table():
    k = compile_variant(os.path.join(ROOT, "examples", "sliding_window.py"), target="cuda", dtype="bf16",
                        shapes={"S": 333}, target_options=H100)
    assert not cuda.use_block_table(k.spec, k.config)
    assert "tile_map" not in k.source()


def test_the_key_loop_walks_the_compacted_list():
    k = compile_variant(os.path.join(ROOT, "examples", "chunked.py"), target="cuda", dtype="bf16",
                        shapes={"S": 1000}, target_options=H100, build=False)
    # table mode runs on the ping-pong kernel (fp8 and chained query blocks on the other one)
    assert cuda._wgmma_for(k.spec, k.config) is cuda._wgmma_dense
    tir = cuda.lower(k.spec, k.config).script()
    # the loop's extent is the count of non-empty key blocks (read once into a register) and
    # every key block comes from the list: list entry >> 1, full flag = entry & 1 -- for the
    # softmax of S_j (even warpgroups: ent[0]) and of S_{j-1} (odd ones: ent[1]), and for the
    # loads ahead (ent[2]: K, ent[3]: V)
    assert re.search(r"kb_hi: T.int32 = cnt", tir) and "for j in range(kb_lo + 1" in tir
    for e in range(2):
        assert f"ent[{e}] >> 1" in tir and f"ent[{e}] & 1 == 1" in tir
    assert "ent[2] >> 1" in tir and "ent[3] >> 1" in tir
    assert "ballot_sync" in tir and "popcount" in tir
    # a step reads entries j and j + AHEAD; j - 1 and j - 1 + AHEAD are the previous step's, kept
    # in registers (two shared loads a step fewer; H200: documents 1-2 % faster)
    assert "ent[1] = ent[0]" in tir and "ent[3] = ent[2]" in tir
    assert "ent[1] = kv_list[" not in tir and tir.count("ent[3] = kv_list[") == 1      # (the prologue's)
    from attncc.targets import _cuda_wgmma
    _cuda_wgmma._OPTIONS["list_regs"] = False
    try:
        old = cuda.lower(k.spec, k.config).script()
    finally:
        _cuda_wgmma._OPTIONS.clear()
    assert "ent[1] = ent[0]" not in old and re.search(r"ent\[1\] = kv_list\[T\.max\(", old)
    tiles = k.spec.tile_map(128, 128)
    assert (tiles == 0).any() and (tiles == 2).any()


def test_chained_blocks_keep_the_in_order_kernel_and_fp8_runs_ping_pong():
    k = compile_variant(os.path.join(ROOT, "examples", "document_mask.py"), target="cuda", dtype="bf16",
                        shapes={"S": 700}, target_options=H100, build=False)
    assert cuda._wgmma_for(k.spec, k.config) is cuda._wgmma_dense
    assert cuda._wgmma_for(k.spec, cuda.CudaConfig(**dict(WGMMA, query_blocks=2))) is cuda._wgmma_sparse
    q = compile_variant(VARIANTS, variant_name="doc_causal", target="cuda", dtype="bf16", shapes={"S": 700},
                        target_options=H100, build=False, quantize={"dtype": "fp8"})
    assert cuda._wgmma_for(q.spec, q.config) is cuda._wgmma_dense
    assert cuda.kernel_revision(q.spec, q.config) == cuda.KERNEL_REVISIONS["wgmma"]
    # one warpgroup with a tile map keeps the in-order schedule, fp8 or not
    assert cuda._wgmma_for(q.spec, cuda.CudaConfig(**dict(WGMMA, block_q=64, num_warps=4))) is cuda._wgmma_sparse
    # a tile map takes 2 stages by default (measured: 2 beat 3 up to density ~0.15, equal below)
    assert k.config.num_stages == 2 and k.config.block_q == 128 and q.config.num_stages == 2


def test_fp8_runs_the_ping_pong_schedule():
    """fp8 Q·Kᵀ (and P·V) on _cuda_wgmma: the warpgroup index through a shuffle (the ping-pong
    kernel's warp-uniform branch), S of block j issued beside P·V of block j - 1, and for a band
    2 stages for a band too (measured faster than 3 with fp8); the experiment route still builds the
    in-order kernel."""
    for quant in ({"dtype": "fp8"}, {"dtype": "fp8", "pv": True}):
        k = _fp8(quant=quant, build=False)
        assert k.config.num_stages == 2
        tir = cuda.lower(k.spec, k.config).script()
        assert "__shfl_sync" in tir and "is_odd" not in tir
        assert re.search(r"for j in range\(kb_lo \+ 1, ", tir)
        cuda._ROUTE["fp8"] = "inorder"
        try:
            assert cuda._wgmma_for(k.spec, k.config) is cuda._wgmma_sparse
            inorder = cuda.lower(k.spec, k.config).script()
        finally:
            cuda._ROUTE.clear()
        assert "for kb in range(kb_lo, " in inorder and "for j in range" not in inorder


@needs_nvcc
def test_document_mask_kernel_compiles_without_spills(tmp_path):
    k = compile_variant(os.path.join(ROOT, "examples", "document_mask.py"), target="cuda", dtype="bf16",
                        target_options=H100)
    _nvcc(tmp_path, k.source())


def test_the_mma_sync_kernel_walks_tile_maps_and_takes_captures():
    """Before Hopper (sm_80: mma.sync) a mask that is no band is sparse too: the tile map after
    lse, the document ids after it, the key loop over the compacted row of non-empty blocks."""
    k = compile_variant(os.path.join(ROOT, "examples", "document_mask.py"), target="cuda", dtype="bf16",
                        shapes={"S": 300}, target_options={"arch": "sm_80"}, build=False)
    assert k.config.mma == "sync" and cuda.use_block_table(k.spec, k.config)
    func = cuda.lower(k.spec, k.config)["main"]
    assert [p.name for p in func.params][5:] == ["tile_map", "doc"]
    tir = func.script()
    assert "ballot_sync" in tir and "ent[0] = kv_list[kb]" in tir
    # full tiles skip the element mask: the branch reads the list entry's full bit
    assert re.search(r"if ent\[0\] & 1 == 1 and \(ent\[0\] >> 1\) \* 64 \+ 64 <= 300:", tir)
    # a compile-time map (prefix-LM) the same way, its list from the map the host passes
    p = compile_variant(os.path.join(ROOT, "examples", "prefix_lm.py"), target="cuda", dtype="bf16",
                        shapes={"S": 300}, target_options={"arch": "sm_80"}, build=False)
    assert cuda.use_block_table(p.spec, p.config)
    assert cuda.shared_memory_bytes(p.spec, p.config) == 2 * (128 * 64 + 2 * 64 * 128) + 4 * (5 + 1)
    # bands keep their key range (no table)
    c = compile_variant(os.path.join(ROOT, "examples", "causal_mha.py"), target="cuda", dtype="bf16",
                        target_options={"arch": "sm_80"}, build=False)
    assert not cuda.use_block_table(c.spec, c.config)
    # the split-KV decode kernel (q_len <= 16) takes no captured tensors: one clear error
    with pytest.raises(TargetError, match=r"captured inputs need the prefill kernels \(q_len over 16\)"):
        compile_variant(os.path.join(ROOT, "examples", "document_mask.py"), target="cuda", dtype="bf16",
                        shapes={"S": 8}, target_options={"arch": "sm_80"}, build=False)


def test_runtime_tile_map_feeds_the_kernel_arguments():
    k = compile_variant(os.path.join(ROOT, "examples", "document_mask.py"), target="cuda", dtype="bf16",
                        shapes={"S": 300}, target_options=H100, build=False)
    doc = np.repeat(np.arange(3), 100).astype(np.int32)
    tiles = k.spec.runtime_tile_map([doc], k.config.block_q, k.config.block_k)
    (table,) = cuda.block_tables(k.spec, k.config, tiles, [doc])
    # the tile map, then (a document mask: cuda.row_limits) per query block a flag and each of its
    # 128 rows' first and last kept key (causal inside the document)
    assert cuda.row_limits(k.spec, k.config)
    assert table.dtype == np.int32 and table.shape == (3, 3 + 1 + 2 * 128)
    assert table[0, 2] == 0 and table[2, 0] == 0          # other documents: skipped
    assert (table[:, 3] == 1).all()
    rows = np.arange(3 * 128)
    first, last = table[:, 4:4 + 128].reshape(-1), table[:, 4 + 128:].reshape(-1)
    assert (first[:300] == rows[:300] // 100 * 100).all() and (last[:300] == rows[:300]).all()
    assert (first[300:] > last[300:]).all()               # rows past q_len keep nothing
    with pytest.raises(TargetError, match="needs the captured inputs"):
        cuda.block_tables(k.spec, k.config, tiles)
    # an id that recurs after another document: those rows' keys are no single run, the flag is off
    doc2 = np.array([0] * 100 + [1] * 100 + [0] * 100, np.int32)
    (table2,) = cuda.block_tables(k.spec, k.config, k.spec.runtime_tile_map([doc2], 128, 128), [doc2])
    assert table2[:, 3].tolist() == [0, 0, 0]


@needs_nvcc
def test_export_carries_the_tile_map_and_the_captures(tmp_path):
    """The exported wgmma kernel takes the tile map and the document ids the way the CPU
    target's export does (attncc.runtime computes the map per call); the mma.sync kernel carries
    a compile-time map as tile_map.npy."""
    import json

    from attncc.export import export as export_kernel

    k = compile_variant(os.path.join(ROOT, "examples", "document_mask.py"), target="cuda", dtype="bf16",
                        shapes={"S": 300}, target_options=H100)
    export_kernel(k, str(tmp_path / "doc"))
    m = json.loads((tmp_path / "doc" / "manifest.json").read_text())
    assert [a["role"] for a in m["kernel_args"]] == ["input"] * 3 + ["output"] * 2 + ["table", "capture"]
    assert m["block_map"]["mode"] == "runtime"
    k = compile_variant(os.path.join(ROOT, "examples", "prefix_lm.py"), target="cuda", dtype="bf16",
                        shapes={"S": 300}, target_options={"arch": "sm_80"})
    export_kernel(k, str(tmp_path / "pl"))
    m = json.loads((tmp_path / "pl" / "manifest.json").read_text())
    assert m["block_map"]["mode"] == "static" and (tmp_path / "pl" / "tile_map.npy").exists()
    assert [a["role"] for a in m["kernel_args"]][5:] == ["table"]


# --------------------------------------------------------------------------- fp8


def _fp8(name="causal", shapes=None, quant=None, **kw):
    return compile_variant(VARIANTS, variant_name=name, target="cuda", dtype="bf16",
                           shapes=shapes or {"B": 1, "S": 517}, target_options=H100,
                           quantize=quant or {"dtype": "fp8"}, **kw)


@needs_nvcc
def test_fp8_qk_uses_e4m3_wgmma(tmp_path):
    k = _fp8()
    src = k.source()
    assert "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3" in src        # Q·Kᵀ
    assert "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16" in src        # P·V stays bf16
    assert re.search(r"__nv_fp8_e4m3\* __restrict__ q_ptr", src)
    assert re.search(r"float\* __restrict__ q_scale_ptr", src) and re.search(r"float\* __restrict__ k_scale_ptr", src)
    _nvcc(tmp_path, src)


@needs_nvcc
def test_fp8_pv_uses_e4m3_wgmma_with_p_in_registers(tmp_path):
    k = _fp8(quant={"dtype": "fp8", "pv": True, "granularity": "tensor"})
    src = k.source()
    assert src.count("wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3") == 2   # Q·Kᵀ and P·V
    assert "cvt.rn.satfinite.e4m3x2.f32" in src
    assert "bf16.bf16" not in src
    assert re.search(r"float\* __restrict__ v_scale_ptr", src)
    _nvcc(tmp_path, src)


def test_fp8_e5m2_and_per_block_scales_compile():
    src = _fp8(quant={"dtype": "fp8_e5m2", "pv": True}).source()
    assert "m64n128k32.f32.e5m2.e5m2" in src and "m64n128k32.f32.e4m3.e5m2" in src   # P stays e4m3
    k = _fp8(quant={"dtype": "fp8", "granularity": "block", "block": 64})
    assert k.spec.scales[1][1][2] == 517                                             # a k scale per key
    assert "m64n128k32.f32.e4m3.e4m3" in k.source()


def test_fp8_with_a_runtime_block_mask_compiles():
    k = compile_variant(VARIANTS, variant_name="doc_causal", target="cuda", dtype="bf16", shapes={"S": 700},
                        target_options=H100, quantize={"dtype": "fp8", "pv": True})
    src = k.source()
    assert "__ballot_sync" in src and src.count("m64n128k32.f32.e4m3.e4m3") == 2


def test_fp8_pv_export_declares_the_v_layout_the_runtime_applies():
    from attncc.export import build_manifest
    from attncc.runtime import _kernel, _layouts

    k = _fp8(quant={"dtype": "fp8", "pv": True}, build=False)
    man = build_manifest(k)
    v = [a for a in man["kernel_args"] if a["name"] == "v"][0]
    spec = k.spec
    assert v["source"]["layout"] == _layouts.FP8_V and v["dtype"] == spec.quant_dtype
    assert v["shape"] == [spec.batch, spec.kv_heads, spec.head_dim_v, _layouts.padded_kv_len(spec.kv_len)]
    # the runtime's layout (numpy path) is the one the kernel was verified with on the GPU
    x = np.random.default_rng(0).standard_normal((1, 2, 45, 8)).astype(ml_dtypes.float8_e4m3fn)
    got = _kernel._layout(x, _layouts.FP8_V, "numpy")
    want = _cuda_wgmma.fp8_v_layout(x)
    assert got.shape == (1, 2, 8, 64) and got.dtype == x.dtype
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8))
    with pytest.raises(AttnccError, match="layout 'nope'"):
        _kernel._layout(x, "nope", "numpy")


def test_fp8_v_layout_in_torch_equals_numpy():
    torch = pytest.importorskip("torch")
    from attncc.runtime import _layouts

    x = np.random.default_rng(1).standard_normal((2, 1, 70, 16)).astype(ml_dtypes.float8_e4m3fn)
    t = torch.from_numpy(x.view(np.uint8)).view(torch.float8_e4m3fn)
    got = _layouts.fp8_v_layout(t)
    assert tuple(got.shape) == (2, 1, 16, 96) and got.dtype == torch.float8_e4m3fn
    assert np.array_equal(got.view(torch.uint8).numpy(), _layouts.fp8_v_layout(x).view(np.uint8))


def test_int8_on_the_wgmma_kernel_is_one_clear_error():
    # (int8 runs on the mma.sync kernel: tests/test_cuda_quant_sync.py)
    with pytest.raises(DTypeError, match="int8 inputs run on the mma.sync kernel"):
        _fp8(quant={"dtype": "int8"}, config=WGMMA)


def test_fp8_needs_sm89_and_the_wgmma_kernel_128_wide_heads():
    with pytest.raises(DTypeError, match="need sm_89 or newer"):
        compile_variant(VARIANTS, variant_name="causal", target="cuda", dtype="bf16", shapes={"B": 1, "S": 517},
                        target_options={"arch": "sm_80"}, quantize={"dtype": "fp8"})
    with pytest.raises(AttnccError, match="multiple of 128"):
        compile_variant(os.path.join(ROOT, "examples", "causal_mha.py"), target="cuda", dtype="bf16",
                        target_options=H100, quantize={"dtype": "fp8"}, config=WGMMA)


def test_fp8_pv_with_per_block_v_scales_is_refused():
    with pytest.raises(ShapeError, match="per-block V scales"):
        _fp8(quant={"dtype": "fp8", "pv": True, "granularity": "block", "block": 64})


def test_v_layout_matches_the_wgmma_fragments():
    """Emulate one warp's k32 step of P·V: the S accumulator (wgmma/mma.sync C layout) packed
    into the e4m3 A fragment as the kernel packs it, against V transposed and key-permuted by
    the host prologue, gives P @ V."""
    rng = np.random.default_rng(0)
    P = rng.standard_normal((16, 32))          # 16 rows of one warp, keys of one k32 step
    V = rng.standard_normal((32, 8))
    # C layout: lane l, n8 group nt, element e -> row l//4 + 8 (e//2), key 8 nt + 2 (l%4) + e%2
    acc = np.zeros((32, 4, 4))
    for lane in range(32):
        for nt in range(4):
            for e in range(4):
                acc[lane, nt, e] = P[lane // 4 + 8 * (e // 2), 8 * nt + 2 * (lane % 4) + e % 2]
    # the kernel: register r, byte x <- acc[lane, 2 (r//2) + x//2, 2 (r%2) + x%2]
    # the A fragment (8-bit, k32): register r, byte x of lane l is A[l//4 + 8 (r%2), 16 (r//2) + 4 (l%4) + x]
    A = np.full((16, 32), np.nan)
    for lane in range(32):
        for r in range(4):
            for x in range(4):
                A[lane // 4 + 8 * (r % 2), 16 * (r // 2) + 4 * (lane % 4) + x] = \
                    acc[lane, 2 * (r // 2) + x // 2, 2 * (r % 2) + x % 2]
    Vt = _cuda_wgmma.fp8_v_layout(V[None, None])[0, 0]           # [d, keys (permuted)]
    np.testing.assert_allclose(A @ Vt.T, P @ V, rtol=1e-12, atol=1e-12)


def test_v_layout_pads_and_permutes_within_groups_of_32():
    perm = _cuda_wgmma.v_key_permutation(70)
    assert perm.shape == (96,)
    assert sorted(perm.tolist()) == list(range(96))
    assert all(set(perm[g * 32:(g + 1) * 32]) == set(range(g * 32, g * 32 + 32)) for g in range(3))
    v = np.arange(2 * 70 * 8, dtype=np.float32).reshape(1, 2, 70, 8)
    vt = _cuda_wgmma.fp8_v_layout(v)
    assert vt.shape == (1, 2, 8, 96)
    assert (vt[..., perm >= 70] == 0).all()
    np.testing.assert_array_equal(vt[:, :, :, np.argsort(perm)[:70]], np.swapaxes(v, 2, 3))


def test_reference_with_fp8_p_is_close_to_the_exact_one():
    from attncc.reference import evaluate

    k = compile_variant(os.path.join(ROOT, "examples", "causal_gqa.py"), target="cpu",
                        shapes=dict(B=1, Hq=4, Hkv=2, S=75, D=16), quantize={"dtype": "fp8", "pv": True})
    x = k.random_inputs(0)
    ref = evaluate(k.ir, x, "float64", k.env)
    p8 = evaluate(k.ir, x, "native", k.env, p_round=ml_dtypes.float8_e4m3fn)
    err = np.abs(p8.outputs[0].astype(np.float64) - ref.outputs[0]).max()
    assert 1e-4 < err < 0.1                                       # e4m3 P: about 2^-4 relative
    np.testing.assert_allclose(p8.lse[0], ref.lse[0], atol=1e-4)  # l sums P before rounding


# --------------------------------------------------------------------------- on a Hopper GPU


@needs_hopper
@pytest.mark.parametrize("path", TABLE_EXAMPLES)
@pytest.mark.parametrize("mma", ["wgmma", "sync"])
def test_table_mode_matches_the_reference(path, mma):
    """Both CUDA kernels in table mode (the mma.sync one is the default before Hopper; it runs on
    Hopper too, so the GPU machine checks it)."""
    cfg = None if mma == "wgmma" else dict(mma="sync", block_q=128, block_k=64, num_warps=4, num_stages=2)
    k = compile_variant(os.path.join(ROOT, "examples", path), target="cuda", dtype="bf16", shapes={"S": 333},
                        config=cfg)
    assert cuda.use_block_table(k.spec, k.config)
    assert verify(k, seed=0).passed


@needs_hopper
@pytest.mark.parametrize("quant", [{"dtype": "fp8"}, {"dtype": "fp8", "pv": True}])
def test_fp8_matches_the_quantized_reference(quant):
    k = compile_variant(VARIANTS, variant_name="causal", target="cuda", dtype="bf16", shapes={"B": 1, "S": 517},
                        quantize=quant)
    rep = verify(k, seed=0)
    assert rep.passed, (rep.max_error, rep.tolerance)
