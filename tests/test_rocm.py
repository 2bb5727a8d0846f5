"""The ROCm target: AMD GPU code objects built here, run only where a ROCm device exists.

CI checks: every example builds for gfx90a and gfx942 (f16 and bf16; gfx1100 for a few)
through the compiler driver; each code object is an ELF for amdgcn-amd-amdhsa whose
disassembly (llvm-objdump) holds MFMA (WMMA on gfx11) instructions and whose metadata
(llvm-readelf --notes) keeps LDS within the architecture's limit, with no spills; the
argument marshalling of the run path matches the kernel's signature; the CLI never claims a
run that did not happen.

The build needs ``ld.lld`` >= 17 and ROCm's device bitcode, the checks ``llvm-objdump`` and
``llvm-readelf`` >= 17 (Debian: ``apt-get install lld-19 llvm-19 rocm-device-libs``; .ci/run
installs them).  Without them the building tests skip with that message on a developer's
machine (like GPU tests without a GPU: the README's test command works on a fresh machine),
and FAIL with it where ``ATTNCC_REQUIRE_ROCM_TOOLCHAIN=1`` -- .ci/run sets it, so CI cannot
pass without building and disassembling code objects.  ``ATTNCC_SKIP_ROCM_BUILD=1`` skips
the building tests on purpose (the others still run).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from attncc import cli  # noqa: E402
from attncc.compiler import compile_variant  # noqa: E402
from attncc.errors import ConfigError, DTypeError, ShapeError, TargetError  # noqa: E402
from attncc.targets import get_target, rocm  # noqa: E402
from attncc.targets.spec import FlashKernelSpec  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))
NAMES = [os.path.basename(p) for p in EXAMPLES]


def _spec(**kw):
    base = dict(name="t", batch=1, q_heads=4, kv_heads=2, q_len=200, kv_len=300, head_dim=64,
                head_dim_v=64, dtype="float16", scale=0.125)
    base.update(kw)
    return FlashKernelSpec(**base)


def _tool(name: str) -> str:
    """The newest ``name-NN`` (NN >= 17) on PATH, else ``name`` itself if it is LLVM >= 17."""
    found = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        for path in glob.glob(os.path.join(d, f"{name}-*")):
            m = re.fullmatch(rf"{re.escape(name)}-(\d+)", os.path.basename(path))
            if m and int(m.group(1)) >= 17:
                found.append((int(m.group(1)), path))
    if found:
        return max(found)[1]
    plain = shutil.which(name)
    if plain:
        out = subprocess.run([plain, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"LLVM version (\d+)", out)
        if m and int(m.group(1)) >= 17:
            return plain
    _missing(f"{name} of LLVM 17 or newer not found (it knows gfx942); on Debian/Ubuntu: "
             "apt-get install llvm-19")


def _missing(why: str):
    """A missing build tool: fail in CI (ATTNCC_REQUIRE_ROCM_TOOLCHAIN=1), skip elsewhere."""
    if os.environ.get("ATTNCC_REQUIRE_ROCM_TOOLCHAIN") == "1":
        pytest.fail(why, pytrace=False)
    pytest.skip(why + " (set ATTNCC_REQUIRE_ROCM_TOOLCHAIN=1 to make this a failure)")


def _needs_toolchain():
    if os.environ.get("ATTNCC_SKIP_ROCM_BUILD"):
        pytest.skip("ATTNCC_SKIP_ROCM_BUILD is set")
    try:
        rocm.toolchain()
        return
    except TargetError as exc:
        why = str(exc)
    _missing(why)


@functools.lru_cache(maxsize=None)
def _build(name: str, arch: str, dtype: str):
    """compile_variant for rocm, cached across tests (a build is a few seconds)."""
    return compile_variant(os.path.join(ROOT, "examples", name), target="rocm", dtype=dtype,
                           target_options={"arch": arch}, tuning_db=False)


@functools.lru_cache(maxsize=None)
def _code_object(name: str, arch: str, dtype: str, tmp: str) -> str:
    k = _build(name, arch, dtype)
    path = os.path.join(tmp, f"{name[:-3]}-{arch}-{dtype}.hsaco")
    k.export_library(path)
    return path


@pytest.fixture(scope="module")
def hsaco_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hsaco"))


# --------------------------------------------------------------------------- registry / config


def test_registered_as_a_target():
    mod = get_target("rocm")
    assert mod.NAME == "rocm"
    cfg = mod.default_config(_spec())
    assert hash(cfg) == hash(dataclasses.replace(cfg))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.block_q = 1  # type: ignore[misc]
    assert mod.SUPPORTED_DTYPES == ("f16", "bf16") and mod.DEFAULT_DTYPE == "bf16"


@pytest.mark.parametrize("arch", ["gfx90a", "gfx942", "gfx1100"])
@pytest.mark.parametrize("head_dim,q_len", [(64, 1), (64, 1000), (128, 1000), (256, 1000)])
def test_default_config_is_valid(head_dim, q_len, arch):
    spec = _spec(head_dim=head_dim, head_dim_v=head_dim, q_len=q_len)
    rocm.validate_config(spec, rocm.default_config(spec, arch), arch)


@pytest.mark.parametrize("change,reason", [
    (dict(block_q=96, num_waves=4), "multiple of 16 \\* num_waves"),
    (dict(block_k=24), "multiple of 16"),
    (dict(num_waves=3), "num_waves"),
    (dict(block_k=256), "LDS"),
    (dict(block_q=512, num_waves=4), "registers"),
])
def test_bad_configs_are_refused(change, reason):
    spec = _spec(head_dim=128, head_dim_v=128)
    with pytest.raises(ConfigError, match=reason):
        rocm.validate_config(spec, dataclasses.replace(rocm.RocmConfig(), **change), "gfx942")


def test_lds_limit_is_the_architectures():
    spec = _spec(head_dim=256, head_dim_v=256)
    cfg = rocm.RocmConfig(block_q=64, block_k=64, num_waves=4)
    assert rocm.lds_bytes(spec, cfg) > 64 * 1024
    for arch in ("gfx90a", "gfx942", "gfx1100"):
        with pytest.raises(ConfigError, match=f"LDS per work-group, over the 65536 of {arch}"):
            rocm.validate_config(spec, cfg, arch)


def test_float32_and_unknown_archs_are_refused():
    with pytest.raises(DTypeError, match="matrix cores"):
        rocm.lower(_spec(dtype="float32"), rocm.RocmConfig())
    with pytest.raises(TargetError, match="gfx906.*not supported"):
        rocm.build(_spec(), None, arch="gfx906")


def test_missing_toolchain_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("ROCM_PATH", str(tmp_path / "no-rocm"))
    with pytest.raises(TargetError) as info:
        rocm.toolchain()
    text = str(info.value)
    assert "ld.lld of LLVM 17 or newer" in text and "bitcode" in text
    assert "apt-get install lld-19 rocm-device-libs" in text


def test_f32_variants_trace_in_bf16():
    k = compile_variant(os.path.join(ROOT, "examples", "sdpa.py"), target="rocm", build=False, tuning_db=False)
    assert k.spec.dtype == "bfloat16"


# --------------------------------------------------------------------------- TIR


def test_tir_is_wave64_mfma_on_cdna_and_wave32_wmma_on_gfx11():
    spec = _spec()
    cfg = rocm.RocmConfig(block_q=64, block_k=32, num_waves=4)
    cdna = rocm.lower(spec, cfg, "gfx942").script()
    rdna = rocm.lower(spec, cfg, "gfx1100").script()
    assert "llvm.amdgcn.mfma.f32.16x16x16f16" in cdna and "wmma" not in cdna
    assert 'T.thread_binding(256, thread="threadIdx.x")' in cdna           # 4 waves of 64
    assert "llvm.amdgcn.wmma.f32.16x16x16.f16" in rdna and "mfma" not in rdna
    assert 'T.thread_binding(128, thread="threadIdx.x")' in rdna           # 4 waves of 32
    assert "llvm.amdgcn.ds.bpermute" in cdna and "cp.async" not in cdna
    bf = rocm.lower(_spec(dtype="bfloat16"), cfg, "gfx90a").script()
    assert "llvm.amdgcn.mfma.f32.16x16x16bf16.1k" in bf


def test_gqa_reads_the_shared_kv_head():
    script = rocm.lower(_spec(q_heads=8, kv_heads=2), rocm.RocmConfig(64, 32, 4), "gfx942").script()
    assert "hk: T.int32 = h // 4" in script and "k16[b, hk," in script and "v16[b, hk," in script


def test_key_bounds_bound_the_key_loop_and_mask_only_partial_tiles():
    """The shared GPU tiling (_gpu_flash.py): the same key-block bounds and full-tile test as cuda."""
    from attncc.targets.spec import KeyBounds

    causal = _spec(q_len=1000, kv_len=1000, mask_mod=lambda b, h, i, j: j <= i,
                   key_bounds=KeyBounds(None, 0, True))
    window = _spec(q_len=1000, kv_len=1000, mask_mod=lambda b, h, i, j: (j <= i) & (i - j < 256),
                   key_bounds=KeyBounds(-255, 0, True))
    full = _spec(q_len=1024, kv_len=1024)
    cfg = rocm.RocmConfig(block_q=128, block_k=64, num_waves=4)
    ct, wt, ft = (rocm.lower(s, cfg, "gfx942").script() for s in (causal, window, full))
    assert "kb_hi: T.int32 = T.max(T.min(T.min(q0 + 127, 999), 999) // 64 + 1, 0)" in ct
    assert "kb_lo: T.int32 = 0" in ct
    assert "kb_lo: T.int32 = T.max(q0 + -255, 0) // 64" in wt
    assert "if kb * 64 + 64 <= 1000 and kb * 64 + 63 <= r0:" in ct
    assert "kb_hi: T.int32 = 16" in ft
    assert 'T.float32("-inf"))' not in ft.split("m_use")[0]


def test_score_mod_is_lowered_into_the_kernel():
    k = compile_variant(os.path.join(ROOT, "examples", "softcap.py"), target="rocm", build=False,
                        tuning_db=False)
    assert "T.tanh" in k.target.lower(k.spec, k.config, "gfx942").script()


# --------------------------------------------------------------------------- fragment layouts
# No AMD GPU here, so the lane bookkeeping is checked in numpy: the kernel's layouts
# (rocm.LAYOUTS, the functions lower() indexes with) fed through the instructions as they are
# defined elsewhere -- MFMA by TVM's tensor intrinsics, WMMA by AMD's RDNA3 documentation --
# must compose to attention: Sᵀ = K·Qᵀ, row max/sum across row_xor lanes, Pᵀ as the B
# operand (on gfx11 half from the partner lane, as the kernel exchanges it), Oᵀ = Vᵀ·Pᵀ.


@functools.lru_cache(maxsize=None)
def _tvm_mfma_layouts():
    """The MFMA 16x16x16 lane layouts as TVM's rocm tensor intrinsics define them, read from
    tvm/s_tir/tensor_intrin/rocm.py (importing that module parses every intrinsic: a minute)."""
    import ast

    path = os.path.join(os.path.dirname(tvm.__file__), "s_tir", "tensor_intrin", "rocm.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    wanted = {f"shared_16x16_to_local_64x4_layout_{x}" for x in "ABC"}
    funcs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    assert len(funcs) == 3, "TVM's MFMA layout functions moved"
    namespace = {"convert": lambda x: x}
    exec(compile(ast.Module(body=funcs, type_ignores=[]), path, "exec"), namespace)
    return namespace


def _instruction_maps(matrix):
    """(A, B, C) maps: (row, col) of the 16x16 tile -> [(lane, element), ...] holding it."""
    if matrix == "mfma":
        intrin = _tvm_mfma_layouts()
        return (lambda i, k: [intrin["shared_16x16_to_local_64x4_layout_A"](i, k)],
                lambda k, j: [intrin["shared_16x16_to_local_64x4_layout_B"](k, j)],
                lambda i, j: [intrin["shared_16x16_to_local_64x4_layout_C"](i, j)])
    return (lambda i, k: [(i, k), (i + 16, k)],          # 16-bit A: lane = row, both half-waves
            lambda k, j: [(j, k), (j + 16, k)],          # 16-bit B: lane = column
            lambda i, j: [(j + 16 * (i % 2), i // 2)])   # f32 C/D: element = row // 2


@functools.lru_cache(maxsize=None)
def _index_arrays(matrix):
    """For A, B and C: (lanes, elements) index arrays [copies, 16, 16] of each tile element."""
    out = []
    for fmap in _instruction_maps(matrix):
        places = [[fmap(r, c) for c in range(16)] for r in range(16)]
        copies = len(places[0][0])
        lanes = np.array([[[int(places[r][c][n][0]) for c in range(16)] for r in range(16)] for n in range(copies)])
        elems = np.array([[[int(places[r][c][n][1]) for c in range(16)] for r in range(16)] for n in range(copies)])
        out.append((lanes, elems))
    return out


def _emulate(matrix, a_frag, b_frag, c_frag):
    """One 16x16x16 instruction on per-lane fragments [wave, elements]."""
    (la, ea), (lb, eb), (lc, ec) = _index_arrays(matrix)
    a, b = a_frag[la, ea], b_frag[lb, eb]
    assert (a == a[0]).all() and (b == b[0]).all(), "the half-waves disagree on a WMMA operand"
    d = a[0] @ b[0] + c_frag[lc[0], ec[0]]
    out = np.full_like(c_frag, np.nan)
    out[lc[0], ec[0]] = d
    assert not np.isnan(out).any()            # C's map covers every accumulator element
    return out


@pytest.mark.parametrize("matrix", ["mfma", "wmma"])
def test_fragment_layouts_compose_to_attention(matrix):
    lay = rocm.LAYOUTS[matrix]
    W, OPE, ACE = lay.wave, lay.operand_elems, lay.acc_elems
    rng = np.random.default_rng(1)
    D, DV, TK, BK = 32, 48, 64, 32
    q, k, v = rng.standard_normal((16, D)), rng.standard_normal((TK, D)), rng.standard_normal((TK, DV))
    keep = lambda i, j: j <= i + 20                     # noqa: E731  (partial tiles, a skipped tail)
    lane = np.arange(W)
    q_frag = [np.array([[q[l % 16, kd * 16 + lay.k0(l) + e] for e in range(OPE)] for l in lane])
              for kd in range(D // 16)]
    m, l_sum = np.full(W, -np.inf), np.zeros(W)
    o = [np.zeros((W, ACE)) for _ in range(DV // 16)]
    for kb in range(TK // BK):
        s = []
        for nt in range(BK // 16):
            acc = np.zeros((W, ACE))
            for kd in range(D // 16):
                k_frag = np.array([[k[kb * BK + nt * 16 + l % 16, kd * 16 + lay.k0(l) + e] for e in range(OPE)]
                                   for l in lane])
                acc = _emulate(matrix, k_frag, q_frag[kd], acc)
            key = np.array([[kb * BK + nt * 16 + lay.acc_row(l, e) for e in range(ACE)] for l in lane])
            s.append(np.where(keep((lane % 16)[:, None], key), acc, -np.inf))
        red = np.max([x.max(axis=1) for x in s], axis=0)
        for x in lay.row_xor:
            red = np.maximum(red, red[lane ^ x])
        new_m = np.maximum(m, red)
        m_use = np.where(new_m == -np.inf, 0.0, new_m)
        alpha = np.exp(m - m_use)
        l_sum, o, m = l_sum * alpha, [x * alpha[:, None] for x in o], new_m
        p = [np.exp(x - m_use[:, None]) for x in s]
        l_sum = l_sum + sum(x.sum(axis=1) for x in p)
        for kk in range(BK // 16):
            if matrix == "wmma":       # the kernel's exchange: keys of the other parity from lane ^ 16
                other = p[kk][lane ^ 16]
                lo = (lane < 16)[:, None]
                p_frag = np.empty((W, OPE))
                p_frag[:, 0::2] = np.where(lo, p[kk], other)
                p_frag[:, 1::2] = np.where(lo, other, p[kk])
            else:
                p_frag = p[kk]
            for nd in range(DV // 16):
                v_frag = np.array([[v[kb * BK + kk * 16 + lay.k0(l) + e, nd * 16 + l % 16] for e in range(OPE)]
                                   for l in lane])
                o[nd] = _emulate(matrix, v_frag, p_frag, o[nd])
    for x in lay.row_xor:
        l_sum = l_sum + l_sum[lane ^ x]
    out = np.full((16, DV), np.nan)
    for nd in range(DV // 16):
        for l in lane:
            for e in range(ACE):
                col = nd * 16 + lay.acc_row(l, e)
                val = o[nd][l, e] / l_sum[l]
                assert np.isnan(out[l % 16, col]) or out[l % 16, col] == val
                out[l % 16, col] = val
    scores = np.where(keep(np.arange(16)[:, None], np.arange(TK)[None, :]), q @ k.T, -np.inf)
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(out, probs / probs.sum(axis=1, keepdims=True) @ v, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- code objects


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("arch", ["gfx90a", "gfx942"])
@pytest.mark.parametrize("name", NAMES)
def test_every_example_builds_a_code_object(name, arch, dtype, hsaco_dir):
    _needs_toolchain()
    path = _code_object(name, arch, dtype, hsaco_dir)
    k = _build(name, arch, dtype)
    # an ELF for amdgcn-amd-amdhsa
    header = subprocess.run(["readelf", "-h", path], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Class:\s+ELF64", header)
    assert re.search(r"OS/ABI:\s+AMD HSA", header)
    assert re.search(r"Machine:\s+AMD GPU", header)
    # the disassembly holds the matrix instructions of the dtype
    dis = subprocess.run([_tool("llvm-objdump"), "-d", f"--mcpu={arch}", path], capture_output=True,
                         text=True, check=True).stdout
    t = "f16" if dtype == "f16" else "bf16"
    # gfx90a spells them v_mfma_f32_16x16x16f16 / ..bf16_1k, gfx942 v_mfma_f32_16x16x16_f16 / _bf16
    assert re.search(rf"v_mfma_f32_16x16x16_?{t}(_1k)?\b", dis), f"no MFMA {t} in {name} for {arch}"
    assert "<main_kernel>:" in dis
    # the metadata: LDS within the architecture's limit, as the lowering computed; no spills
    notes = subprocess.run([_tool("llvm-readelf"), "--notes", path], capture_output=True, text=True,
                           check=True).stdout
    meta = rocm.parse_metadata(notes)
    assert meta["target"].endswith(arch)
    assert 0 < meta["group_segment_fixed_size"] <= rocm.lds_bytes(k.spec, k.config) <= rocm.ARCHS[arch].lds_bytes
    assert meta["wavefront_size"] == 64
    assert meta["vgpr_spill_count"] == 0 and meta["sgpr_spill_count"] == 0
    assert meta["private_segment_fixed_size"] == 0
    assert meta == rocm.kernel_metadata(k.built) | {"target": meta["target"]}
    assert sorted(meta["args"]) == sorted(n for n, _, _ in rocm.argument_specs(k.spec, k.config))
    assert ("tile_map" in meta["args"]) == rocm.use_block_table(k.spec)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("name", ["causal_gqa.py", "softcap.py", "document_mask.py"])
def test_gfx1100_builds_wave32_wmma(name, dtype, hsaco_dir):
    _needs_toolchain()
    path = _code_object(name, "gfx1100", dtype, hsaco_dir)
    dis = subprocess.run([_tool("llvm-objdump"), "-d", "--mcpu=gfx1100", path], capture_output=True,
                         text=True, check=True).stdout
    assert re.search(rf"v_wmma_f32_16x16x16_{dtype}\b", dis)
    assert "v_mfma" not in dis
    meta = rocm.parse_metadata(subprocess.run([_tool("llvm-readelf"), "--notes", path], capture_output=True,
                                              text=True, check=True).stdout)
    assert meta["wavefront_size"] == 32 and meta["vgpr_spill_count"] == 0
    assert meta["group_segment_fixed_size"] <= rocm.ARCHS["gfx1100"].lds_bytes


def test_head_dim_128_and_256_build_within_lds(hsaco_dir):
    _needs_toolchain()
    for d in (128, 256):
        k = compile_variant(os.path.join(ROOT, "examples", "causal_gqa.py"), target="rocm",
                            shapes={"D": d, "S": 1024}, target_options={"arch": "gfx942"}, tuning_db=False)
        meta = rocm.kernel_metadata(k.built)
        assert meta["group_segment_fixed_size"] <= 64 * 1024
        assert meta["vgpr_spill_count"] == 0, (d, meta)


# --------------------------------------------------------------------------- run path (no device here)


def _signature(mod):
    """(name, shape, dtype) of each parameter of ``main`` as TVM sees it."""
    # in TVM 0.27 a buffer parameter is itself a (buffer-typed) Var
    return [(p.name, tuple(int(x) for x in p.shape), str(p.dtype)) for p in mod["main"].params]


@pytest.mark.parametrize("name,dtype", [("causal_gqa.py", "bf16"), ("alibi.py", "f16"),
                                        ("document_mask.py", "bf16")])
def test_run_arguments_match_the_kernel_signature(name, dtype):
    """The arrays ``run`` hands the kernel (order, shapes, dtypes) are what ``main`` declares."""
    k = compile_variant(os.path.join(ROOT, "examples", name), target="rocm", dtype=dtype, build=False,
                        tuning_db=False)
    inputs = k.random_inputs(0)
    args = rocm.kernel_arguments(k.spec, *k.flash_operands(inputs), config=k.config)
    sig = _signature(rocm.lower(k.spec, k.config, "gfx942"))
    assert len(args) == len(sig)
    for arr, (pname, shape, dt) in zip(args, sig):
        assert arr.shape == shape, pname
        assert str(arr.dtype) == dt, pname
        assert arr.flags["C_CONTIGUOUS"]
    assert [n for n, _, _ in rocm.argument_specs(k.spec, k.config)] == [n for n, _, _ in sig]
    assert np.isnan(args[3].astype(np.float32)).all() and np.isnan(args[4]).all()
    # inputs arrive in the kernel's dtype, values kept
    q = inputs[k.source_ir.args[0].hint]
    np.testing.assert_allclose(args[0].astype(np.float32), q.astype(args[0].dtype).astype(np.float32))
    with pytest.raises(ShapeError, match="kernel expects"):
        rocm.kernel_arguments(k.spec, q[..., :-1], *k.flash_operands(inputs)[1:], config=k.config)


def test_without_a_device_nothing_runs():
    _needs_toolchain()
    k = _build("causal_gqa.py", "gfx942", "bf16")
    why = k.not_runnable()
    if rocm._rocm_device() is not None:
        pytest.skip("a ROCm device is present")
    assert why == "compiled for gfx942; not executed: no ROCm device"
    with pytest.raises(TargetError, match="not executed: no ROCm device"):
        k(*[v for v in k.random_inputs(0).values()])


def test_cli_compiles_without_running_and_never_says_pass(tmp_path, capsys):
    _needs_toolchain()
    if rocm._rocm_device() is not None:
        pytest.skip("a ROCm device is present")
    out = tmp_path / "causal_gqa.hsaco"
    example = os.path.join(ROOT, "examples", "causal_gqa.py")
    assert cli.main(["compile", example, "--target", "rocm", "--arch", "gfx942", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "compiled for gfx942; not executed: no ROCm device" in text
    assert "PASS" not in text
    assert out.read_bytes()[:4] == b"\x7fELF"
    assert "pointer args in this order: k, lse, out, q, v" in text
    assert cli.main(["compile", example, "--target", "rocm", "--arch", "gfx942", "--verify"]) == 2
    captured = capsys.readouterr()
    assert "PASS" not in captured.out and "FAIL" not in captured.out
    assert "--verify needs a device" in captured.err and "no ROCm device" in captured.err
    assert cli.main(["compile", example, "--target", "rocm", "--arch", "gfx942", "--emit", "asm"]) == 0
    asm = capsys.readouterr().out
    assert '.amdgcn_target "amdgcn-amd-amdhsa-hcc-gfx942"' in asm and "v_mfma_f32_16x16x16_bf16" in asm


def test_cli_module_entry_point_writes_the_code_object(tmp_path):
    """The command of issue 7, as a user types it (python -m attncc.cli)."""
    _needs_toolchain()
    out = tmp_path / "causal_gqa.hsaco"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "attncc.cli", "compile", os.path.join(ROOT, "examples", "causal_gqa.py"),
                          "--target", "rocm", "--arch", "gfx90a", "-o", str(out)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stderr and "Traceback" not in res.stderr
    assert out.stat().st_size > 1000


def test_export_refuses_rocm_with_the_way_out(tmp_path, capsys):
    _needs_toolchain()
    example = os.path.join(ROOT, "examples", "causal_gqa.py")
    assert cli.main(["export", example, "--target", "rocm", "--arch", "gfx942", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "export --target rocm: the rocm target cannot be exported: not supported yet" in err and "-o k.hsaco" in err
