"""The CUDA target: builds without a GPU (CI), runs only where a CUDA device exists.

CI checks: every example compiles for sm_80 and sm_90a through the compiler driver; the
generated CUDA C++ holds the tensor-core, ldmatrix and cp.async instructions; the TIR has
the tiling the config asks for; bad configs are refused with a reason.  GPU tests compare
with the float64 reference (DESIGN.md's tolerance) and skip cleanly without a device.
The GPU machine (no TVM) runs the same checks through benchmarks/gpu/attention.py.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from attncc.compiler import compile_variant, verify  # noqa: E402
from attncc.errors import AttnccError, ConfigError, DTypeError, TargetError  # noqa: E402
from attncc.targets import cuda, get_target  # noqa: E402
from attncc.targets.spec import FlashKernelSpec, KeyBounds  # noqa: E402
from tvm import tirx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


def _has_gpu() -> bool:
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


needs_gpu = pytest.mark.skipif(not _has_gpu(), reason="no CUDA device")


def _spec(**kw):
    base = dict(name="t", batch=1, q_heads=4, kv_heads=2, q_len=200, kv_len=300, head_dim=64,
                head_dim_v=64, dtype="float16", scale=0.125)
    base.update(kw)
    return FlashKernelSpec(**base)


def _compile(path, dtype, arch, **kw):
    """compile_variant for the CUDA target; every example must trace, pass and build (no
    expected failures: the kernels take every example since the Hopper and table-mode work)."""
    options = {"arch": arch} if arch else {}
    return compile_variant(path, target="cuda", dtype=dtype, target_options=options, **kw)


# --------------------------------------------------------------------------- registry / config


def test_registered_as_a_target():
    mod = get_target("cuda")
    assert mod.NAME == "cuda"
    cfg = mod.default_config(_spec())
    assert hash(cfg) == hash(dataclasses.replace(cfg))


def test_config_is_frozen():
    cfg = cuda.CudaConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.block_q = 1  # type: ignore[misc]


@pytest.mark.parametrize("head_dim,q_len", [(64, 1), (64, 1000), (128, 1000), (128, 7), (256, 1000)])
def test_default_config_is_valid(head_dim, q_len):
    spec = _spec(head_dim=head_dim, head_dim_v=head_dim, q_len=q_len)
    cuda.validate_config(spec, cuda.default_config(spec), "sm_90a")


@pytest.mark.parametrize("change,reason", [
    (dict(block_q=96, num_warps=4), "multiple of 16 \\* num_warps"),
    (dict(block_k=24), "multiple of 16"),
    (dict(num_stages=1), "num_stages"),
    (dict(num_warps=3), "num_warps"),
    (dict(block_q=256, num_warps=4, q_in_registers=True), "registers"),
])
def test_bad_configs_are_refused(change, reason):
    spec = _spec()
    with pytest.raises(ConfigError, match=reason):
        cuda.validate_config(spec, dataclasses.replace(cuda.CudaConfig(), **change))


def test_shared_memory_limit_depends_on_arch():
    spec = _spec(head_dim=256, head_dim_v=256)
    cfg = cuda.CudaConfig(block_q=128, block_k=64, num_warps=8, num_stages=3, q_in_registers=False)
    assert cuda.shared_memory_bytes(spec, cfg) > 163 * 1024
    with pytest.raises(ConfigError, match="shared memory"):
        cuda.validate_config(spec, cfg, "sm_80")


def test_float32_is_refused():
    with pytest.raises(DTypeError, match="tensor cores"):
        cuda.lower(_spec(dtype="float32"), cuda.CudaConfig())


def test_arch_is_required_without_a_gpu():
    if _has_gpu():
        pytest.skip("a GPU is present: the arch defaults to it")
    with pytest.raises(TargetError, match="arch"):
        cuda.build(_spec(), None)


def test_old_arch_is_refused():
    with pytest.raises(TargetError, match="sm_80"):
        cuda.build(_spec(), None, arch="sm_75")


# --------------------------------------------------------------------------- TIR structure


def _tir(spec, cfg):
    return cuda.lower(spec, cfg).script()


def _count(text, needle):
    return len(re.findall(re.escape(needle), text))


@pytest.mark.parametrize("cfg", [
    cuda.CudaConfig(block_q=128, block_k=64, num_warps=4, num_stages=2, q_in_registers=False),
    cuda.CudaConfig(block_q=64, block_k=32, num_warps=4, num_stages=3, q_in_registers=True),
])
def test_tir_tiling_follows_the_config(cfg):
    spec = _spec(q_len=1000, kv_len=1000)
    text = _tir(spec, cfg)
    nqb = -(-spec.q_len // cfg.block_q)
    # one thread block per (batch, head, query block); num_warps * 32 threads
    assert f'T.thread_binding({nqb}, thread="blockIdx.y")' in text
    assert f'T.thread_binding({spec.batch * spec.q_heads}, thread="blockIdx.x")' in text
    assert f'T.thread_binding({cfg.num_warps * 32}, thread="threadIdx.x")' in text
    # register fragments: S accumulators (m tiles per warp, block_k / 8, 4), O (.., head_dim_v / 8, 4)
    m_tiles = cfg.block_q // cfg.num_warps // 16
    assert f"s_acc = T.alloc_local(({m_tiles}, {cfg.block_k // 8}, 4))" in text
    assert f"o_acc = T.alloc_local(({m_tiles}, {spec.head_dim_v // 8}, 4))" in text
    q_slots = spec.head_dim // 16 if cfg.q_in_registers else 1
    assert f"q_frag = T.alloc_local(({m_tiles}, {q_slots}, 4)" in text
    # shared memory: the Q tile and num_stages (K, V) slots, one dynamic buffer
    smem = cfg.block_q * spec.head_dim + cfg.num_stages * cfg.block_k * (spec.head_dim + spec.head_dim_v)
    assert f'smem = T.alloc_buffer(({smem},), "float16", scope="shared.dyn")' in text
    # the pipeline: the wait in the key loop leaves num_stages - 2 groups in flight
    assert f'T.ptx.cp({cfg.num_stages - 2}, "async", "wait_group"' in text
    # two mma sites (Q·Kᵀ and P·V), unrolled later
    assert _count(text, "T.ptx.mma(") == 2
    assert _count(text, "T.ptx.ldmatrix(") == (2 if cfg.q_in_registers else 2) + 1


def test_gqa_reads_the_shared_kv_head():
    text = _tir(_spec(q_heads=8, kv_heads=2), cuda.CudaConfig(block_q=64, num_warps=4))
    assert "hk: T.int32 = h // 4" in text


def test_key_bounds_bound_the_key_loop_and_mask_only_partial_tiles():
    causal = _spec(q_len=1000, kv_len=1000, mask_mod=lambda b, h, i, j: j <= i,
                   key_bounds=KeyBounds(None, 0, True))
    window = _spec(q_len=1000, kv_len=1000, mask_mod=lambda b, h, i, j: (j <= i) & (i - j < 256),
                   key_bounds=KeyBounds(-255, 0, True))
    full = _spec(q_len=1024, kv_len=1024)
    cfg = cuda.CudaConfig(block_q=128, block_k=64, num_warps=4, q_in_registers=False)
    ct, wt, ft = (_tir(s, cfg) for s in (causal, window, full))
    # causal: the key loop ends at the diagonal block; no lower bound
    assert "kb_hi: T.int32 = T.max(T.min(T.min(q0 + 127, 999), 999) // 64 + 1, 0)" in ct
    assert "kb_lo: T.int32 = 0" in ct
    # sliding window: it starts at the window's first block
    assert "kb_lo: T.int32 = T.max(q0 + -255, 0) // 64" in wt
    # a tile wholly under the diagonal skips the element mask (a runtime branch per warp)
    assert "if kb * 64 + 64 <= 1000 and kb * 64 + 63 <= r0:" in ct
    # no mask, no ragged keys: no element mask at all
    assert "kb_hi: T.int32 = 16" in ft
    assert 'T.Select(kb' not in ft and "T.float32(\"-inf\"))" not in ft.split("m_use")[0]


def test_score_mod_is_lowered_into_the_kernel():
    spec = _spec(score_mod=lambda s, b, h, i, j: 30.0 * tirx.tanh(s / 30.0))
    text = _tir(spec, cuda.CudaConfig(block_q=64, num_warps=4))
    assert "T.tanh(" in text


# --------------------------------------------------------------------------- CUDA source (nvcc here)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_every_example_compiles(path, dtype, arch):
    k = _compile(path, dtype, arch)
    src = k.source()
    ptx_t = "bf16" if dtype == "bf16" else "f16"
    if k.config.mma == "wgmma":   # Hopper's default (every example's head dim is a multiple of 64)
        assert arch == "sm_90a"
        assert f"wgmma.mma_async.sync.aligned.m64n128k16.f32.{ptx_t}.{ptx_t}" in src
    else:
        assert arch == "sm_80"
        assert f"mma.sync.aligned.m16n8k16.row.col.f32.{ptx_t}.{ptx_t}.f32" in src
        assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in src
        assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in src
    assert "cp.async.cg.shared.global" in src
    assert "__global__" in src


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
def test_nvcc_compiles_the_source_without_spills(tmp_path, arch):
    """tvm.compile keeps CUDA source (compiled at load): run nvcc on it here."""
    import subprocess

    path = os.path.join(ROOT, "examples", "causal_gqa.py")
    k = _compile(path, "bf16", arch, shapes={"S": 333})
    src = tmp_path / "k.cu"
    src.write_text(k.source())
    p = subprocess.run(["nvcc", "-cubin", f"-arch={arch}", "-O3", "-Xptxas", "-v", str(src),
                        "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "0 bytes spill stores" in p.stdout + p.stderr


def test_export_library_writes_a_module(tmp_path):
    k = _compile(os.path.join(ROOT, "examples", "sdpa.py"), "f16", "sm_90a")
    out = tmp_path / "k.so"
    k.export_library(str(out))
    assert out.exists() and out.stat().st_size > 0


# --------------------------------------------------------------------------- on a GPU


@needs_gpu
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
@pytest.mark.parametrize("ragged", [False, True])
def test_every_example_matches_the_reference(path, dtype, ragged):
    shapes = None
    if ragged:
        probe = compile_variant(path, target="cuda", dtype=dtype, build=False)
        shapes = {d: v for d, v in {"S": 333, "T": 517}.items() if d in probe.env}
    k = _compile(path, dtype, None, shapes=shapes)
    report = verify(k, seed=1)
    assert report.passed, report


@needs_gpu
def test_fully_masked_rows_give_zero_and_minus_inf():
    spec = _spec(q_len=70, kv_len=70, mask_mod=lambda b, h, i, j: i >= 64,
                 key_bounds=KeyBounds(None, None, False))
    k = cuda.build(spec)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 70, 64)).astype(np.float16)
    kk = rng.standard_normal((1, 2, 70, 64)).astype(np.float16)
    v = rng.standard_normal((1, 2, 70, 64)).astype(np.float16)
    out, lse = cuda.run(k, q, kk, v)
    assert np.all(out[:, :, :64] == 0) and np.all(np.isneginf(lse[:, :, :64]))
    assert np.all(np.isfinite(out[:, :, 64:])) and np.all(np.isfinite(lse[:, :, 64:]))


# --------------------------------------------------------------------------- Hopper wgmma kernel

WGMMA = dict(mma="wgmma", block_q=128, num_warps=8, block_k=128, num_stages=2)


@pytest.mark.parametrize("change,reason", [
    (dict(block_q=64), "16 \\* num_warps"),
    (dict(num_warps=2, block_q=32), "warpgroups"),
    (dict(block_k=24), "multiple of 16"),
    (dict(mma="tcgen05"), "mma must be"),
])
def test_bad_wgmma_configs_are_refused(change, reason):
    with pytest.raises(ConfigError, match=reason):
        cuda.validate_config(_spec(), dataclasses.replace(cuda.CudaConfig(**WGMMA), **change), "sm_90a")


def test_hopper_default_is_wgmma_where_it_fits():
    assert cuda.default_config(_spec(), "sm_90a").mma == "wgmma"
    # a band: K two blocks ahead (3 stages); no mask: 2 (with lazy rescaling, measured faster)
    from attncc.targets.spec import KeyBounds
    causal = _spec(q_len=300, key_bounds=KeyBounds(upper_offset=0, exact=True))
    assert cuda.default_config(causal, "sm_90a").num_stages == 3
    assert cuda.default_config(_spec(), "sm_90a").num_stages == 2
    assert cuda.default_config(_spec(score_mod=lambda s, b, h, i, j: s * 0.5), "sm_90a").num_stages == 2
    assert cuda.default_config(_spec(head_dim=256, head_dim_v=256), "sm_90a").block_k == 64
    assert cuda.default_config(_spec(head_dim=96, head_dim_v=96), "sm_90a").mma == "sync"
    assert cuda.default_config(_spec(), "sm_80").mma == "sync"
    assert cuda.default_config(_spec()).mma == "sync"


def test_wgmma_needs_hopper_and_64_wide_heads():
    with pytest.raises(ConfigError, match="sm_90a"):
        cuda.validate_config(_spec(), cuda.CudaConfig(**WGMMA), "sm_80")
    with pytest.raises(AttnccError, match="multiple of 64"):
        cuda.validate_config(_spec(head_dim=96, head_dim_v=96), cuda.CudaConfig(**WGMMA), "sm_90a")


@needs_nvcc
@pytest.mark.parametrize("path", ["causal_gqa.py", "alibi.py", "sliding_window.py"])
def test_wgmma_kernel_compiles_without_spills(tmp_path, path):
    """The wgmma path: both products on wgmma.mma_async (ss for Q·Kᵀ, rs for P·V), sm_90a."""
    import subprocess

    k = _compile(os.path.join(ROOT, "examples", path), "bf16", "sm_90a", shapes={"S": 333}, config=WGMMA)
    text = k.source()
    assert re.search(r"wgmma\.mma_async\.sync\.aligned\.m64n128k16\.f32\.bf16\.bf16", text)
    assert "fence.proxy.async.shared::cta" in text and "wgmma.wait_group.sync.aligned" in text
    assert "mma.sync" not in text
    src = tmp_path / "k.cu"
    src.write_text(text)
    p = subprocess.run(["nvcc", "-cubin", "-gencode=arch=compute_90a,code=sm_90a", "-O3", "-Xptxas", "-v",
                        str(src), "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "0 bytes spill stores" in p.stdout + p.stderr
    # "wgmma serialized" performance warnings (C7510-C7519: divergent path, accumulator
    # registers touched in flight, too few registers, ...)
    assert not re.search(r"C751\d", p.stdout + p.stderr), p.stdout + p.stderr


# --------------------------------------------------------------------------- decode (split-KV)

VARIANTS = os.path.join(ROOT, "benchmarks", "gpu", "variants.py")


def _decode_spec(**kw):
    base = dict(name="d", batch=2, q_heads=32, kv_heads=8, q_len=1, kv_len=4096, head_dim=128,
                head_dim_v=128, dtype="bfloat16", scale=0.088)
    base.update(kw)
    return FlashKernelSpec(**base)


@pytest.mark.parametrize("q_len,decode", [(1, True), (16, True), (17, False), (1000, False)])
def test_small_q_len_dispatches_to_the_decode_kernel(q_len, decode):
    spec = _decode_spec(q_len=q_len)
    cfg = cuda.default_config(spec)
    assert isinstance(cfg, cuda.DecodeConfig) == decode
    cuda.validate_config(spec, cfg, "sm_90a")
    text = cuda.lower(spec, cfg).script()
    # decode: one block per (batch, kv head, row block, split); prefill: per (batch, q head, query block)
    if decode:
        row_blocks = -(-4 * q_len // cfg.block_rows)
        assert f'T.thread_binding({2 * 8 * row_blocks * cfg.num_splits}, thread="blockIdx.x")' in text
    else:
        assert f'T.thread_binding({2 * 32}, thread="blockIdx.x")' in text


def test_decode_default_splits_fill_the_gpu():
    # B=16 x 8 kv heads is already a block per SM: one split, no merge kernel
    assert cuda.default_config(_decode_spec(batch=16)).num_splits == 1
    # B=1: the keys are split across the SMs (bounded by the number of key tiles)
    assert cuda.default_config(_decode_spec(batch=1)).num_splits == 33
    assert cuda.default_config(_decode_spec(batch=1, kv_len=200)).num_splits == 4


def test_decode_tir_reads_each_kv_head_once_per_group():
    spec = _decode_spec()
    cfg = cuda.DecodeConfig(block_k=64, num_warps=4, num_stages=3, num_splits=4, block_rows=16)
    text = cuda.lower(spec, cfg).script()
    # the split kernel: B * kv_heads * row blocks * splits blocks; the merge kernel: 4 rows per block
    assert 'T.thread_binding(64, thread="blockIdx.x")' in text
    assert 'T.thread_binding(16, thread="blockIdx.x")' in text          # 2 * 32 rows / 4
    # K is indexed by the kv head of the block (never by a query head), Q by the packed row's head
    assert re.search(r"k\[b, hk, ", text) and not re.search(r"k\[b, h[^k]", text)
    assert "q[b, hk * 4 + T.min(" in text
    # partial results in a workspace: num_splits per output row
    assert f"part_out = T.alloc_buffer(({2 * 32 * 1 * 4 * 128},))" in text
    assert f"part_lse = T.alloc_buffer(({2 * 32 * 1 * 4},))" in text
    # tensor cores on both products; the pipeline keeps num_stages - 2 groups in flight
    assert _count(text, "T.ptx.mma(") == 2
    assert f'T.ptx.cp({cfg.num_stages - 2}, "async", "wait_group"' in text


def test_decode_with_one_split_writes_the_output_directly():
    spec = _decode_spec()
    text = cuda.lower(spec, dataclasses.replace(cuda.default_config(spec), num_splits=1)).script()
    assert _count(text, 'thread="blockIdx.x"') == 1
    assert "part_out[" not in text


def test_decode_window_reads_only_the_window():
    # queries at the end of a 4096-key cache, a 1000-key window: keys 3093 .. 4095 for 4 rows
    spec = _decode_spec(q_len=4, mask_mod=lambda b, h, i, j: (j <= i + 4092) & (j > i + 3092),
                        key_bounds=KeyBounds(3093, 4092, True))
    cfg = dataclasses.replace(cuda.default_config(spec), num_splits=2)
    text = cuda.lower(spec, cfg).script()
    # the split ranges start at the window's first key: 1003 keys -> 16 tiles -> 8 per split
    assert "j_begin: T.int32 = 3093 + sp * 512" in text


def test_decode_score_mod_sees_the_query_head_of_each_packed_row():
    spec = _decode_spec(q_len=2, score_mod=lambda s, b, h, i, j: s - tirx.Cast("float32", h) * 0.5)
    text = cuda.lower(spec, cuda.default_config(spec)).script()
    # row r of kv head hk is query head hk * group + r // q_len
    assert 'T.Cast("float32", hk * 4 + T.min((r_base + mt * 16 + lane // 4 + e // 2 * 8) // 2, 3))' in text


@pytest.mark.parametrize("change,reason", [
    (dict(block_k=48), "multiple of 16 \\* num_warps"),
    (dict(block_rows=24), "multiple of 16"),
    (dict(num_stages=1), "num_stages"),
    (dict(num_splits=0), "num_splits"),
    (dict(block_k=256, num_warps=4, num_stages=6), "shared memory"),
])
def test_bad_decode_configs_are_refused(change, reason):
    spec = _decode_spec()
    with pytest.raises(ConfigError, match=reason):
        cuda.validate_config(spec, dataclasses.replace(cuda.default_config(spec), **change), "sm_90a")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("name,dtype,shapes", [
    ("decode", "bf16", {"B": 2, "T": 4096}),
    ("decode", "f16", {"B": 3, "S": 3, "T": 3001, "D": 64}),
    ("decode_window", "bf16", {}),
    ("decode_alibi", "f16", {}),
    ("decode_softcap_strided", "bf16", {"D": 64, "T": 2500}),
])
def test_decode_variants_compile(name, dtype, shapes, arch):
    k = compile_variant(VARIANTS, target="cuda", dtype=dtype, variant_name=name, shapes=shapes,
                        target_options={"arch": arch})
    assert isinstance(k.config, cuda.DecodeConfig)
    src = k.source()
    ptx_t = "bf16" if dtype == "bf16" else "f16"
    assert f"mma.sync.aligned.m16n8k16.row.col.f32.{ptx_t}.{ptx_t}.f32" in src
    assert "cp.async.cg.shared.global" in src
    assert src.count("__global__ void") == (4 if k.config.num_splits > 1 else 2)   # declaration + definition


@needs_nvcc
def test_nvcc_compiles_the_decode_source_without_spills(tmp_path):
    import subprocess

    k = compile_variant(VARIANTS, target="cuda", dtype="bf16", variant_name="decode",
                        shapes={"B": 2, "S": 3, "T": 3001}, target_options={"arch": "sm_90a"})
    src = tmp_path / "k.cu"
    src.write_text(k.source())
    p = subprocess.run(["nvcc", "-cubin", "-arch=sm_90a", "-O3", "-Xptxas", "-v", str(src),
                        "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "spill stores" in p.stdout + p.stderr
    assert not re.search(r"[1-9]\d* bytes spill stores", p.stdout + p.stderr)


@needs_gpu
@pytest.mark.parametrize("name,dtype,shapes,config", [
    ("decode", "bf16", {"B": 2, "T": 4096}, None),
    ("decode", "f16", {"B": 3, "S": 3, "T": 3001, "D": 64}, None),
    ("decode", "bf16", {"B": 2, "S": 2, "T": 3001}, {"num_splits": 1}),
    ("decode", "bf16", {"B": 1, "Hq": 32, "Hkv": 2, "S": 3, "T": 1500, "D": 64}, None),
    ("decode_window", "bf16", {}, None),
    ("decode_alibi", "f16", {"T": 3333}, None),
    ("decode_softcap_strided", "f16", {}, None),
    ("decode_causal_topleft", "bf16", {}, None),
    ("decode_empty_rows", "bf16", {}, None),
])
def test_decode_matches_the_reference(name, dtype, shapes, config):
    k = compile_variant(VARIANTS, target="cuda", dtype=dtype, variant_name=name, shapes=shapes, config=config)
    report = verify(k, seed=1)
    assert report.passed, report


# --------------------------------------------------------------------------- CLI without a GPU


@pytest.mark.skipif(_has_gpu(), reason="checks the behaviour on a machine without a CUDA device")
def test_cli_compile_without_gpu_writes_the_module_and_says_it_did_not_run(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "causal_gqa.so"
    # the command: a variant declared in f32 is traced in bf16 for the tensor cores
    r = subprocess.run([sys.executable, "-m", "attncc.cli", "compile", "examples/causal_gqa.py", "--target", "cuda",
                        "--arch", "sm_90a", "-o", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 0
    assert "bfloat16" in r.stdout
    assert "kernel     not run: no CUDA device here (compiled for sm_90a)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "attncc.cli", "compile", "examples/causal_gqa.py", "--target", "cuda",
                        "--arch", "sm_90a", "--verify"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "PASS" not in r.stdout and "verify     not run" in r.stdout
    assert "--verify needs a device" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "attncc.cli", "compile", "examples/causal_gqa.py", "--target", "cuda",
                        "--emit", "source"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "--arch sm_90a" in r.stderr and "Traceback" not in r.stderr
