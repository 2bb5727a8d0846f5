"""The ROCm kernel's table mode (masks that are no band) and quantized inputs (issue 4).

Nothing here runs on an AMD GPU (there is none): kernels are built to code objects and their
TIR, assembly and metadata inspected; the index math of the list compaction and the fp8 decode
are checked in numpy (the decode also as the TIR expression the kernel uses, constant-folded).
The building tests skip or fail as tests/test_rocm.py's do (ATTNCC_REQUIRE_ROCM_TOOLCHAIN).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from attncc import cli  # noqa: E402
from attncc.compiler import compile_variant  # noqa: E402
from attncc.errors import DTypeError, ShapeError, TargetError  # noqa: E402
from attncc.targets import rocm  # noqa: E402
from tests.test_rocm import _needs_toolchain, _tool  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE_EXAMPLES = ["prefix_lm.py", "document_mask.py", "chunked.py", "strided.py", "local_global.py"]
BAND_EXAMPLES = ["causal_gqa.py", "sliding_window.py"]


def _example(name):
    return os.path.join(ROOT, "examples", name)


@functools.lru_cache(maxsize=None)
def _kernel(name: str, arch: str, quant=None, build=True, shapes=None):
    q = None
    if quant is not None:
        dtype, gran, pv = quant
        q = {"dtype": dtype, "pv": pv, "granularity": gran}
    return compile_variant(_example(name), target="rocm", target_options={"arch": arch}, tuning_db=False,
                           quantize=q, build=build, shapes=dict(shapes) if shapes else None)


def _params(k, arch):
    return [p.name for p in rocm.lower(k.spec, k.config, arch)["main"].params]


# --------------------------------------------------------------------------- table mode: TIR


def _branches_on_list_entry(script: str):
    """(then, else) texts of the key loop's ``if ent & 1 == 1:`` (the full-tile test) in the TIR
    script, by indentation (TVM 0.27's Python API has no TIR statement visitor)."""
    lines = script.splitlines()
    heads = [n for n, line in enumerate(lines) if line.strip() == "if ent & 1 == 1:"]
    assert len(heads) == 1, f"expected one full-tile branch on the list entry, found {len(heads)}"
    n = heads[0]
    ind = len(lines[n]) - len(lines[n].lstrip())

    def block(start):
        out = []
        for line in lines[start:]:
            if line.strip() and len(line) - len(line.lstrip()) <= ind:
                break
            out.append(line)
        return out

    then = block(n + 1)
    nxt = n + 1 + len(then)
    assert lines[nxt].strip() == "else:" and len(lines[nxt]) - len(lines[nxt].lstrip()) == ind
    return "\n".join(then), "\n".join(block(nxt + 1))


def _comparisons(text: str) -> int:
    return len(re.findall(r"<=|>=|==|!=|(?<![<>-])[<>](?![<>=])", text))


@pytest.mark.parametrize("name", TABLE_EXAMPLES)
def test_non_band_masks_lower_to_table_mode(name):
    k = _kernel(name, "gfx942", build=False)
    assert rocm.use_block_table(k.spec)
    func = rocm.lower(k.spec, k.config, "gfx942")["main"]
    names = [p.name for p in func.params]
    assert names[:6] == ["q", "k", "v", "out", "lse", "tile_map"]
    assert names[6:] == [c[0] for c in k.spec.captures]
    nqb, nkb = -(-k.spec.q_len // k.config.block_q), -(-k.spec.kv_len // k.config.block_k)
    assert tuple(int(x) for x in func.params[5].shape) == (nqb, nkb)
    script = func.script()
    assert "llvm.amdgcn.ballot" in script and "llvm.amdgcn.mbcnt.lo" in script and "llvm.amdgcn.mbcnt.hi" in script
    assert "for pos in range(kb_lo, kb_lo + (kb_hi - kb_lo))" in script and "kb_lo: T.int32 = 0" in script
    assert "kb: T.int32 = ent >> 1" in script
    # the element mask (comparisons of indices, -inf) only under the partial branch
    full, partial = _branches_on_list_entry(script)
    assert "s_acc[mt, nt, e] =" in full and "s_acc[mt, nt, e] =" in partial
    assert _comparisons(full) == 0, "a full tile evaluates comparisons (the element mask)"
    assert _comparisons(partial) > 0
    assert "-inf" not in full and "-inf" in partial
    # the LDS list is counted
    assert rocm.lds_bytes(k.spec, k.config) == 2 * k.config.block_k * (
        k.spec.head_dim + k.spec.head_dim_v + 2 * rocm.LDS_PAD) + 4 * (nkb + 1)


def test_wave32_compaction_has_no_high_half():
    k = _kernel("prefix_lm.py", "gfx1100", build=False)
    script = rocm.lower(k.spec, k.config, "gfx1100").script()
    assert 'T.call_llvm_intrin("uint32", "llvm.amdgcn.ballot"' in script
    assert "llvm.amdgcn.mbcnt.lo" in script and "llvm.amdgcn.mbcnt.hi" not in script


@pytest.mark.parametrize("name", BAND_EXAMPLES)
def test_band_masks_keep_the_range_walk(name):
    k = _kernel(name, "gfx942", build=False)
    assert not rocm.use_block_table(k.spec)
    script = rocm.lower(k.spec, k.config, "gfx942").script()
    assert "tile_map" not in script and "ballot" not in script and "kv_list" not in script.split("for pos")[1]
    assert "kb: T.int32 = pos" in script
    assert [n for n, _, _ in rocm.argument_specs(k.spec, k.config)] == ["q", "k", "v", "out", "lse"]


def test_prefix_lm_walks_fewer_blocks_than_the_band():
    """Pruning: the list holds only the non-empty tiles of prune-sparsity's map."""
    k = _kernel("prefix_lm.py", "gfx942", build=False)
    tiles = np.asarray(k.spec.tile_map(k.config.block_q, k.config.block_k))
    assert (tiles == 0).any() and (tiles == 2).any() and (tiles == 1).any()
    args = rocm.measure_arguments(k.spec, k.config)
    np.testing.assert_array_equal(args[5], tiles.astype(np.int32))


# --------------------------------------------------------------------------- table mode: code objects


@pytest.mark.parametrize("arch", ["gfx90a", "gfx942", "gfx1100"])
@pytest.mark.parametrize("name", TABLE_EXAMPLES)
def test_table_mode_code_objects(name, arch, tmp_path):
    _needs_toolchain()
    k = _kernel(name, arch)
    path = str(tmp_path / "k.hsaco")
    k.export_library(path)
    header = subprocess.run(["readelf", "-h", path], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Machine:\s+AMD GPU", header)
    dis = subprocess.run([_tool("llvm-objdump"), "-d", f"--mcpu={arch}", path], capture_output=True, text=True,
                         check=True).stdout
    wave = rocm.ARCHS[arch].wave
    assert "v_mbcnt_lo_u32_b32" in dis
    assert ("v_mbcnt_hi_u32_b32" in dis) == (wave == 64)
    assert f"s_bcnt1_i32_b{wave}" in dis                     # the ballot's popcount, on the scalar unit
    assert "v_readfirstlane_b32" in dis                      # count and entries made scalar
    assert re.search(r"v_(mfma|wmma)_f32_16x16x16", dis)
    meta = rocm.kernel_metadata(k.built)
    assert "tile_map" in meta["args"]
    assert meta["vgpr_spill_count"] == 0 and meta["sgpr_spill_count"] == 0
    assert 0 < meta["group_segment_fixed_size"] <= rocm.lds_bytes(k.spec, k.config) <= rocm.ARCHS[arch].lds_bytes


@pytest.mark.parametrize("arch", ["gfx942", "gfx1100"])
def test_compaction_issues_a_batch_of_loads_before_its_first_ballot(arch):
    """A long row (NKB = 256: 4 chunks of 64 lanes, 8 of 32): every tile-map load of the batch is
    issued before the first prefix count (one memory latency, not one per chunk)."""
    _needs_toolchain()
    k = _kernel("document_mask.py", arch, shapes=(("S", 16384),))
    lines = [line.strip() for line in rocm.assembly(k.built).splitlines()]
    chunks = -(-(-(-16384 // k.config.block_k)) // rocm.ARCHS[arch].wave)
    first = next(i for i, line in enumerate(lines) if line.startswith("v_mbcnt_lo"))
    loads = [line for line in lines[:first] if line.startswith("global_load")]
    assert sum(line.startswith("v_mbcnt_lo") for line in lines) == chunks      # one per chunk, unrolled
    # the chunks' dword loads (besides Q's) all precede the first mbcnt
    assert len([line for line in loads if re.match(r"global_load_(dword|b32)\b", line)]) >= chunks


# --------------------------------------------------------------------------- table mode: arguments


def test_kernel_arguments_compute_the_tile_map_from_the_document_ids():
    k = _kernel("document_mask.py", "gfx942", build=False)
    inputs = k.random_inputs(0)
    ops = k.flash_operands(inputs)
    spec, cfg = k.spec, k.config
    S = spec.q_len
    for doc in (np.repeat(np.arange(4), S // 4).astype(np.int32), np.sort(np.random.default_rng(3).integers(0, 9, S)).astype(np.int32)):
        args = rocm.kernel_arguments(spec, *ops[:3], doc, config=cfg)
        want = np.asarray(spec.runtime_tile_map([doc], cfg.block_q, cfg.block_k), dtype=np.int32)
        assert args[5].dtype == np.int32 and args[5].flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(args[5], want)
        np.testing.assert_array_equal(args[6], doc)
    # different documents: a different map (the map follows the data, per call)
    a = rocm.kernel_arguments(spec, *ops[:3], np.zeros(S, np.int32), config=cfg)[5]
    b = rocm.kernel_arguments(spec, *ops[:3], np.arange(S, dtype=np.int32), config=cfg)[5]
    assert (a != b).any() and (b == 1).sum() > 0
    sig = [(p.name, tuple(int(x) for x in p.shape), str(p.dtype)) for p in rocm.lower(spec, cfg, "gfx942")["main"].params]
    args = rocm.kernel_arguments(spec, *ops[:3], ops[3], config=cfg)
    assert [(n, a.shape, str(a.dtype)) for (n, _, _), a in zip(sig, args)] == sig
    with pytest.raises(ShapeError, match=r"doc has shape \(2047,\)"):
        rocm.kernel_arguments(spec, *ops[:3], np.zeros(S - 1, np.int32), config=cfg)
    with pytest.raises(ShapeError, match="takes 1 input"):
        rocm.kernel_arguments(spec, *ops[:3], config=cfg)
    with pytest.raises(TargetError, match="config"):
        rocm.argument_specs(spec)
    with pytest.raises(TargetError, match="tile map has shape"):
        rocm.kernel_arguments(spec, *ops[:3], ops[3], config=cfg, tiles=np.zeros((2, 2)))


# --------------------------------------------------------------------------- compaction, emulated


def _mbcnt(mask: int, lane: int, wave: int) -> int:
    """v_mbcnt_lo(mask[31:0], 0) then (wave64) v_mbcnt_hi(mask[63:32], .) as the ISA defines them:
    ThreadMask = (1 << lane) - 1 over 64 bits; lo counts mask[31:0] & ThreadMask[31:0], hi
    mask[63:32] & ThreadMask[63:32]."""
    thread_mask = (1 << lane) - 1
    lo = bin(mask & 0xFFFFFFFF & thread_mask).count("1")
    if wave == 32:
        return lo
    return lo + bin((mask >> 32) & (thread_mask >> 32) & 0xFFFFFFFF).count("1")


def _compact_emulated(row, wave):
    """compact_row_macro's loop as the kernel runs it, lane by lane."""
    nkb = len(row)
    nkc = -(-nkb // wave)
    batch = min(nkc, 8)
    kv_list = np.full(nkb + 1, -1, dtype=np.int64)
    cnt = 0
    for c0 in range(-(-nkc // batch)):
        tvs = [[row[min((c0 * batch + c1) * wave + lane, nkb - 1)] if (c0 * batch + c1) * wave + lane < nkb else 0
                for lane in range(wave)] for c1 in range(batch)]            # all loads first
        for c1 in range(batch):
            mask = sum(1 << lane for lane in range(wave) if tvs[c1][lane] != 0)
            for lane in range(wave):
                if tvs[c1][lane] != 0:
                    kv_list[cnt + _mbcnt(mask, lane, wave)] = ((c0 * batch + c1) * wave + lane) * 2 + (tvs[c1][lane] == 2)
            cnt += bin(mask).count("1")
    kv_list[nkb] = cnt
    return kv_list


@pytest.mark.parametrize("wave", [64, 32])
def test_compaction_lists_the_non_empty_blocks_in_order(wave):
    rng = np.random.default_rng(7)
    for nkb in (1, 5, 31, 32, 63, 64, 65, 200, 700):
        for density in (0.0, 0.1, 0.5, 1.0):
            row = np.where(rng.random(nkb) < density, rng.integers(1, 3, nkb), 0)
            got = _compact_emulated(row, wave)
            nz = np.flatnonzero(row)
            assert got[nkb] == len(nz)
            np.testing.assert_array_equal(got[:len(nz)], nz * 2 + (row[nz] == 2))
            assert (got[len(nz):nkb] == -1).all()          # nothing written past the count


# --------------------------------------------------------------------------- fp8 / int8 decode


FP8 = ["float8_e4m3fn", "float8_e5m2"]


@pytest.mark.parametrize("dst", ["float16", "bfloat16"])
@pytest.mark.parametrize("fmt", FP8)
def test_fp8_decode_is_exact_on_all_256_codes(fmt, dst):
    import ml_dtypes

    codes = np.arange(256)
    ref = codes.astype(np.uint8).view(getattr(ml_dtypes, fmt)).astype(np.float32)
    npd = np.dtype(np.float16) if dst == "float16" else np.dtype(ml_dtypes.bfloat16)
    bits = np.asarray(rocm.fp8_to_16_bits(codes, fmt, dst)).astype(np.uint16)
    got = bits.view(npd).astype(np.float32)
    assert (np.isnan(got) == np.isnan(ref)).all()
    fin = ~np.isnan(ref)
    np.testing.assert_array_equal(got[fin], ref[fin])
    assert (np.signbit(got[fin]) == np.signbit(ref[fin])).all()          # -0 stays -0
    # the kernel's TIR expression (rocm._widen: the same formula on tirx.Select), compiled for
    # the host CPU and run on every code
    np.testing.assert_array_equal(_host_widen(fmt, dst), bits)


def _host_widen(src: str, dst: str):
    """rocm._widen over all 256 codes of ``src``, as a TIR kernel compiled for the host (llvm)."""
    from tvm.script import tirx as T

    view = "int8" if src == "int8" else "uint8"

    def widen(x):
        return rocm._widen(x, src, dst)

    @T.prim_func
    def f(a: T.Buffer((256,), view), o: T.Buffer((256,), "int16")):
        for i in range(256):
            o[i] = widen(a[i])

    ex = tvm.compile(tvm.IRModule({"main": f}), target="llvm")
    out = tvm.runtime.tensor(np.zeros(256, np.int16))
    ex["main"](tvm.runtime.tensor(np.arange(256).astype(np.uint8).view(view)), out)
    return out.numpy().view(np.uint16)


@pytest.mark.parametrize("dst", ["float16", "bfloat16"])
def test_int8_widens_exactly(dst):
    import ml_dtypes

    npd = np.dtype(np.float16) if dst == "float16" else np.dtype(ml_dtypes.bfloat16)
    codes = np.arange(256).astype(np.uint8).view(np.int8).astype(np.int64)
    got = _host_widen("int8", dst).view(npd).astype(np.float64)
    np.testing.assert_array_equal(got, codes)


# --------------------------------------------------------------------------- quantized kernels


QUANTS = [(d, g, pv) for d in ("int8", "fp8", "fp8_e5m2") for g in ("tensor", "head", "block") for pv in (False, True)]
SMALL = (("S", 256),)


@pytest.mark.parametrize("quant", QUANTS, ids=lambda q: f"{q[0]}-{q[1]}-{'pv' if q[2] else 'qk'}")
def test_quantized_tir_and_arguments(quant):
    k = _kernel("causal_gqa.py", "gfx942", quant, build=False, shapes=SMALL)
    spec = k.spec
    qdt = {"int8": "int8", "fp8": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}[quant[0]]
    assert spec.quant_dtype == qdt
    func = rocm.lower(spec, k.config, "gfx942")["main"]
    sig = [(p.name, str(p.dtype)) for p in func.params]
    want = [("q", qdt), ("k", qdt), ("v", qdt if quant[2] else spec.dtype), ("out", spec.dtype), ("lse", "float32"),
            ("q_scale", "float32"), ("k_scale", "float32")] + ([("v_scale", "float32")] if quant[2] else [])
    assert sig == want
    script = func.script()
    assert "row_fold" in script
    if quant[0] != "int8":
        assert "T.Select(" in script.split("k_lds[")[1] or "T.Select(" in script     # the bit decode
    # the arguments run() passes: the quantized arrays and scales of the host prologue
    inputs = k.random_inputs(0)
    ops = k.flash_operands(inputs)
    args = rocm.kernel_arguments(spec, *ops, config=k.config)
    assert [(n, str(a.dtype)) for (n, _), a in zip(sig, args)] == [(n, str(rocm._np_dtype(d))) for n, d in sig]
    for (pname, _), a, p in zip(sig, args, func.params):
        assert a.shape == tuple(int(x) for x in p.shape), pname
    np.testing.assert_array_equal(args[0].view(np.uint8), np.asarray(ops[0]).view(np.uint8))
    with pytest.raises(DTypeError, match="must arrive quantized"):
        rocm.kernel_arguments(spec, inputs["q"], *ops[1:], config=k.config)


def test_per_key_scales_are_read_per_key():
    k = _kernel("causal_gqa.py", "gfx942", ("fp8", "block", True), build=False, shapes=SMALL)
    script = rocm.lower(k.spec, k.config, "gfx942").script()
    # (batch 1: index 0; GQA: k's head is h // group)
    assert re.search(r"k_scale\[0, h // 4, T\.min\(kb \* \d+ \+ nt \* 16", script)   # per key, in the scores
    assert re.search(r"v_scale\[0, hk, T\.min\(kb \* \d+ \+ nt \* 16", script)       # per key, into P
    k = _kernel("causal_gqa.py", "gfx942", ("fp8", "head", True), build=False, shapes=SMALL)
    script = rocm.lower(k.spec, k.config, "gfx942").script()
    assert "v_scale[0, hk, 0, 0]" in script.split("for mt in T.unroll")[-1]         # on the output
    assert "v_scale" not in script.split("for mt in T.unroll")[-2]


@pytest.mark.parametrize("arch", ["gfx942", "gfx1100"])
@pytest.mark.parametrize("quant", QUANTS, ids=lambda q: f"{q[0]}-{q[1]}-{'pv' if q[2] else 'qk'}")
def test_quantized_code_objects(quant, arch, tmp_path):
    _needs_toolchain()
    k = _kernel("causal_gqa.py", arch, quant, shapes=SMALL)
    path = str(tmp_path / "k.hsaco")
    k.export_library(path)
    with open(path, "rb") as f:
        assert f.read(4) == b"\x7fELF"
    dis = subprocess.run([_tool("llvm-objdump"), "-d", f"--mcpu={arch}", path], capture_output=True, text=True,
                         check=True).stdout
    if arch == "gfx942":
        assert re.search(r"v_mfma_f32_16x16x16_bf16\b", dis)
    else:
        assert re.search(r"v_wmma_f32_16x16x16_bf16\b", dis) and "v_mfma" not in dis
    assert not re.search(r"v_mfma\w*(fp8|bf8|i8)", dis)             # widened: no 8-bit matrix instruction
    meta = rocm.kernel_metadata(k.built)
    scales = ["q_scale", "k_scale"] + (["v_scale"] if quant[2] else [])
    assert sorted(meta["args"]) == sorted(["q", "k", "v", "out", "lse"] + scales)
    assert meta["vgpr_spill_count"] == 0 and meta["sgpr_spill_count"] == 0
    assert meta["private_segment_fixed_size"] == 0
    assert meta["group_segment_fixed_size"] <= rocm.lds_bytes(k.spec, k.config)


def test_table_mode_and_quantization_together():
    _needs_toolchain()
    k = _kernel("document_mask.py", "gfx942", ("fp8", "head", True))
    names = _params(k, "gfx942")
    assert names == ["q", "k", "v", "out", "lse", "tile_map", "q_scale", "k_scale", "v_scale", "doc"]
    asm = rocm.assembly(k.built)
    assert "v_mbcnt_hi_u32_b32" in asm and "v_mfma_f32_16x16x16_bf16" in asm
    ops = k.flash_operands(k.random_inputs(0))
    args = rocm.kernel_arguments(k.spec, *ops, config=k.config)
    np.testing.assert_array_equal(args[5], k.spec.runtime_tile_map([ops[-1]], k.config.block_q, k.config.block_k))
    assert len(rocm.measure_arguments(k.spec, k.config)) == len(names)


# --------------------------------------------------------------------------- CLI


def test_cli_table_mode_and_int8(tmp_path, capsys):
    _needs_toolchain()
    if rocm._rocm_device() is not None:
        pytest.skip("a ROCm device is present")
    assert cli.main(["compile", _example("document_mask.py"), "--target", "rocm", "--arch", "gfx942",
                     "--emit", "ir"]) == 0
    assert "attn.flash" in capsys.readouterr().out
    out = tmp_path / "x.hsaco"
    assert cli.main(["compile", _example("causal_gqa.py"), "--target", "rocm", "--arch", "gfx942", "--quantize",
                     "int8", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "widened to bf16 for 16-bit MFMA" in text and "not native int8/fp8 MFMA" in text
    assert "pointer args in this order: k, k_scale, lse, out, q, q_scale, v" in text
    assert "compiled for gfx942; not executed: no ROCm device" in text and "PASS" not in text
    assert out.read_bytes()[:4] == b"\x7fELF"
    assert cli.main(["compile", _example("document_mask.py"), "--target", "rocm", "--arch", "gfx1100",
                     "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "table mode: tile map int32 [NQB, NKB] after lse (computed per call from doc)" in text
    assert "doc, k, lse, out, q, tile_map, v" in text and "PASS" not in text
