"""Issue 4's low-density work on the Hopper kernel, checked without a GPU: chained query blocks
(``CudaConfig.query_blocks``: one thread block runs several query blocks as one stream of key
tiles, the next block's Q and K/V loaded under the current block's last tile and write-out)
and eager mask logic (conditions that gather from captured tensors are evaluated without
``&&`` branches).  The GPU tests skip cleanly without a Hopper device; the GPU machine runs
the same kernels through benchmarks/gpu/attention.py (build.py --only lowdensity)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

tvm = pytest.importorskip("tvm")

from conftest import hopper_gpu_available  # noqa: E402

from attncc.compiler import compile_variant, verify  # noqa: E402
from attncc.errors import ConfigError  # noqa: E402
from attncc.targets import _cuda_wgmma_sparse as sparse, cuda  # noqa: E402
from attncc.targets._gpu_flash import eager_logic  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = os.path.join(ROOT, "benchmarks", "gpu", "variants.py")
H100 = {"arch": "sm_90a"}
CHAIN = dict(mma="wgmma", block_q=128, num_warps=8, block_k=128, num_stages=2)

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


needs_hopper = pytest.mark.skipif(not hopper_gpu_available(), reason="no Hopper (sm_90a) CUDA device")


def _compile(name, shapes, path=VARIANTS, build=True, **cfg):
    return compile_variant(path, variant_name=name if path == VARIANTS else None, target="cuda", dtype="bf16",
                           shapes=shapes, config=dict(CHAIN, **cfg), target_options=H100, build=build)


# --------------------------------------------------------------------------- eager mask logic


def test_eager_logic_rewrites_only_conditions_that_load():
    from tvm import tirx

    doc = tirx.decl_buffer((16,), "int32", "doc")
    i, j = tirx.Var("i", "int32"), tirx.Var("j", "int32")
    plain = tirx.And(j <= i, j >= i - 4)
    assert eager_logic(plain).same_as(plain)          # no loads: unchanged (nvcc predicates it)
    text = str(eager_logic(tirx.And(j <= i, tirx.Or(doc[i] == doc[j], tirx.Not(doc[j] == 0)))))
    assert " and " not in text and " or " not in text and "not " not in text
    assert "&" in text and "|" in text and text.count("doc[") == 3


def test_document_mask_gathers_are_not_behind_branches():
    k = compile_variant(VARIANTS, variant_name="doc_causal", target="cuda", dtype="bf16",
                        shapes={"S": 1024, "H": 2}, target_options=H100, build=False)
    tir = cuda.lower(k.spec, k.config).script()
    # every condition that reads the document ids is combined with & (both sides evaluated),
    # never with `and` (CUDA's &&: a branch per element in front of each gather)
    lines = [ln for ln in tir.splitlines() if "doc[" in ln and ("if " in ln or "Select" in ln)]
    assert lines, "the masked tiles read the document ids"
    for ln in lines:
        assert " and " not in ln, ln


def test_captures_indexed_by_a_row_or_key_in_range_are_read_unclamped():
    """Where the blocks divide the lengths, every row and key the wgmma kernels mask is real,
    so document ids indexed by q_idx or kv_idx are loaded without the clamp (loads at
    constant offsets); a ragged length, or any other index expression, keeps it."""
    def gathers(name, S, cfg=None, **opts):
        from attncc.targets import _cuda_wgmma

        k = compile_variant(VARIANTS, variant_name=name, target="cuda", dtype="bf16", shapes={"S": S, "H": 2},
                            config=dict(CHAIN, **(cfg or {})), target_options=H100, build=False)
        _cuda_wgmma._OPTIONS.update(opts)
        try:
            tir = cuda.lower(k.spec, k.config).script()
        finally:
            _cuda_wgmma._OPTIONS.clear()
        return set(re.findall(r"doc\[[^\]]*\]", tir))

    for name in ("doc_mask", "doc_causal"):
        exact = gathers(name, 1024)
        assert exact and not any("T.min(" in g or "T.max(" in g for g in exact), exact
        assert "doc[r0 + lane // 4 + e // 2 * 8]" in exact
        for g in gathers(name, 1000) | gathers(name, 1024, unclamped=False):
            assert g.startswith("doc[T.max(T.min("), g
    # the in-order kernel (64 x 32 tile maps) too; its chained blocks keep the clamps
    small = dict(block_q=64, num_warps=4, block_k=32)
    assert not any("T.min(" in g for g in gathers("doc_mask", 1024, cfg=small))
    assert all(g.startswith("doc[T.max(T.min(") for g in gathers("doc_mask", 1000, cfg=small))
    assert all(g.startswith("doc[T.max(T.min(") for g in gathers("doc_mask", 1024, cfg=dict(query_blocks=2)))


def test_only_an_index_proven_in_range_skips_the_clamp():
    """lowering.with_indices (the CPU and the wgmma kernels' one mechanism): a gather's clamp goes
    where the index is proven in range from the kernel's row / key ranges, and stays otherwise."""
    from tvm import tirx

    from attncc.targets.lowering import with_indices

    # the mask_mod builder of examples/document_mask.py: (doc[q] == doc[kv]) & (kv <= q)
    k = compile_variant(os.path.join(ROOT, "examples", "document_mask.py"), target="cuda", dtype="bf16",
                        shapes={"S": 256}, config=CHAIN, target_options=H100, build=False)
    doc = tirx.decl_buffer((256,), "int32", "doc")
    i, j = tirx.Var("i", "int32"), tirx.Var("j", "int32")
    b, h = tirx.const(0, "int32"), tirx.const(0, "int32")

    def text(q_len=None, kv_len=None, fn=k.spec.mask_mod):
        return str(with_indices(fn, (b, h), i, j, (doc,), q_len, kv_len))

    assert text().count("T.min(") == 2                                # both indices clamped
    assert text(kv_len=256).count("T.min(") == 1                       # the key's dropped
    assert "doc[j]" in text(kv_len=256)
    shifted = lambda b_, h_, q, kv, d: d[tirx.max(tirx.min(kv + 1, 255), 0)]   # noqa: E731
    assert text(256, 256, fn=shifted).count("T.min(") == 1             # another expression: kept
    assert text(256, 257).count("T.min(") == 1                         # range past the dimension: kept
    assert text(256, 256).count("T.min(") == 0


# --------------------------------------------------------------------------- chained query blocks


def test_chained_configs_are_checked():
    with pytest.raises(ConfigError, match="num_stages must be 2"):
        _compile("sw_256", {"S": 1100, "H": 4}, build=False, query_blocks=2, num_stages=3)
    with pytest.raises(ConfigError, match="needs mma='wgmma'"):
        compile_variant(VARIANTS, variant_name="sw_256", target="cuda", dtype="bf16", shapes={"S": 1100, "H": 4},
                        config=dict(mma="sync", block_q=128, num_warps=4, block_k=64, query_blocks=2),
                        target_options=H100, build=False)
    with pytest.raises(ConfigError, match="query_blocks must be a positive integer"):
        _compile("sw_256", {"S": 1100, "H": 4}, build=False, query_blocks=0)
    with pytest.raises(ConfigError, match="fp8"):
        compile_variant(VARIANTS, variant_name="causal", target="cuda", dtype="bf16", shapes={"B": 1, "S": 700},
                        config=dict(CHAIN, query_blocks=2), target_options=H100, build=False,
                        quantize={"dtype": "fp8"})


def test_chained_bands_run_the_sparse_module_with_two_q_tiles():
    one = _compile("sw_256", {"S": 1100, "H": 4}, build=False)
    two = _compile("sw_256", {"S": 1100, "H": 4}, build=False, query_blocks=2)
    assert cuda._wgmma_for(one.spec, one.config) is not sparse      # the ping-pong kernel
    assert cuda._wgmma_for(two.spec, two.config) is sparse
    assert cuda.kernel_revision(two.spec, two.config) == cuda.KERNEL_REVISIONS["wgmma_sparse"]
    q_tile = 128 * 128 * 2
    assert cuda.shared_memory_bytes(two.spec, two.config) - sparse.shared_memory_bytes(
        two.spec, dict_config(two.config, query_blocks=1)) == q_tile + sparse.ALIGN_BYTES
    tir = cuda.lower(two.spec, two.config).script()
    # one stream of tiles per thread block: ceil(9 / 2) = 5 blocks along the query axis, the
    # prefetch loads the next block's Q into the other Q tile
    assert re.search(r"T.thread_binding\(5, thread=\"blockIdx.x\"\)", tir)
    assert "for t in range(cur[3])" in tir


def dict_config(config, **kw):
    import dataclasses
    return dataclasses.replace(config, **kw)


@needs_nvcc
@pytest.mark.parametrize("name,shapes,path,qc", [
    ("sw_256", {"S": 1100, "H": 4}, VARIANTS, 4),
    ("late_keys", {}, VARIANTS, 3),
    ("doc_causal", {"S": 700}, VARIANTS, 2),
    (None, {"S": 700}, os.path.join(ROOT, "examples", "local_global.py"), 3),
])
def test_chained_kernels_compile_without_spills(tmp_path, name, shapes, path, qc):
    k = _compile(name, shapes, path=path, query_blocks=qc)
    src = tmp_path / "k.cu"
    src.write_text(k.source())
    p = subprocess.run(["nvcc", "-cubin", "-gencode=arch=compute_90a,code=sm_90a", "-O3", "-Xptxas", "-v",
                        str(src), "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "0 bytes spill stores" in p.stdout + p.stderr


def test_chained_blocks_are_a_config_knob_not_a_tuning_dimension():
    from attncc.schedules.space import SearchSpace, config_dict

    k = compile_variant(VARIANTS, variant_name="sw_256", target="cuda", dtype="bf16", shapes={"S": 4096, "H": 4},
                        target_options=H100, build=False)
    space = SearchSpace("cuda", k.spec, options=H100)
    assert "query_blocks" not in space.names() and all(c.query_blocks == 1 for c in space.valid_configs())
    # records and candidate names leave the knob out at its default, so older records still match
    assert "query_blocks" not in config_dict(k.config)
    assert config_dict(dict_config(k.config, query_blocks=2, num_stages=2))["query_blocks"] == 2


# --------------------------------------------------------------------------- on a Hopper GPU


@needs_hopper
@pytest.mark.parametrize("name,shapes,path,qc", [
    ("sw_256", {"S": 1100, "H": 4}, VARIANTS, 4),
    ("late_keys", {}, VARIANTS, 3),                   # query blocks without key blocks: zeros, lse -inf
    ("doc_causal", {"S": 700}, VARIANTS, 2),
    (None, {"S": 700}, os.path.join(ROOT, "examples", "document_mask.py"), 2),
])
def test_chained_kernels_match_the_reference(name, shapes, path, qc):
    k = _compile(name, shapes, path=path, query_blocks=qc)
    rep = verify(k, seed=0)
    assert rep.passed, (rep.max_error, rep.tolerance)


# --------------------------------------------------------------------------- band masks


@pytest.mark.parametrize("mma", ["wgmma", "sync"])
def test_an_exact_band_masks_with_its_two_comparisons_only(mma):
    cfg = dict(CHAIN) if mma == "wgmma" else dict(mma="sync", block_q=128, block_k=64, num_warps=4)
    k = compile_variant(VARIANTS, variant_name="sw_256", target="cuda", dtype="bf16", shapes={"S": 1100, "H": 4},
                        config=cfg, target_options=H100, build=False)
    assert k.spec.key_bounds.exact
    tir = cuda.lower(k.spec, k.config).script()
    # the variant's mask is (kv <= q) & (q - kv < 256): the band j in [i - 255, i] says the same,
    # so a masked score compares against the band's two ends (and the ragged key end) only; on
    # wgmma those ends are each row's first and last kept key, set once a tile (next test)
    selects = [ln for ln in tir.splitlines() if "T.Select(" in ln and 'T.float32("-inf")' in ln
               and "s_acc" in ln.split("=")[0]]
    assert selects
    ends = [ln for ln in tir.splitlines() if re.match(r"\s*lim\[", ln)] if mma == "wgmma" else selects
    assert ends
    for ln in selects:
        cond = ln.split("T.Select(", 1)[1]
        assert cond.count(" and ") <= (1 if mma == "wgmma" else 2), ln   # < 1100, >= i - 255, <= i
    assert any("-255" in ln for ln in ends)
    for ln in ends:
        assert "< 256" not in ln and "q_idx" not in ln, ln


def _band_tir(name, shapes, cfg=None, **options):
    from attncc.targets import _cuda_wgmma

    k = compile_variant(VARIANTS, variant_name=name, target="cuda", dtype="bf16", shapes=shapes,
                        config=dict(CHAIN, **(cfg or {})), target_options=H100, build=False)
    _cuda_wgmma._OPTIONS.update(options)
    try:
        return k, cuda.lower(k.spec, k.config).script()
    finally:
        _cuda_wgmma._OPTIONS.clear()


def test_band_partial_tiles_compare_each_score_with_its_rows_limits():
    """A band's partial tile on the ping-pong kernel: each row's first and last kept key are set
    once a tile as offsets from the thread's first key (the ragged key end folded into the last),
    and each score compares its own offset (an immediate once unrolled) with them -- both limits
    only where both band sides cut the warp's rows, one where one does.  (H200: 1-4 % on bands,
    benchmarks/gpu/RESULTS.md; GPU-verified by build.py --only edges.)"""
    both = r"T\.Select\(lim\[e // 2\] <= nt \* 8 \+ e % 2 and nt \* 8 \+ e % 2 <= lim\[2 \+ e // 2\], "
    lower = r"T\.Select\(lim\[e // 2\] <= nt \* 8 \+ e % 2, "
    upper = r"T\.Select\(nt \* 8 \+ e % 2 <= lim\[2 \+ e // 2\], "
    # a window ending 184 keys past the query, 517 keys: both sides, and the key end 516 in the last key
    k, tir = _band_tir("band_offset", {})
    assert k.spec.kv_len % 128 and k.spec.key_bounds.exact
    assert re.search(r"lim = T\.alloc_local\(\(4,\), \"int32\"\)", tir)
    assert re.search(r"lim\[r\] = r0 \+ lane // 4 \+ r \* 8 \+ -115 - ", tir)
    assert re.search(r"lim\[2 \+ r\] = T\.min\(r0 \+ lane // 4 \+ r \* 8 \+ 184, 516\) - ", tir)
    for form in (both, lower, upper):
        assert re.search(form, tir), form
    masks = [ln for ln in tir.splitlines() if "T.Select(" in ln and 'T.float32("-inf")' in ln
             and ln.strip().startswith("s_acc")]
    assert masks and all("lane" not in ln and "kb" not in ln and " j" not in ln for ln in masks)
    # causal, keys a multiple of the block: the upper side only, no min
    k, tir = _band_tir("causal", {"B": 1, "S": 1024})
    assert re.search(upper, tir) and not re.search(lower, tir) and "T.min(r0" not in tir
    # tile maps keep the mask_mod per score (a document mask: unless its rows' key limits are on,
    # tests/test_row_limits.py); the old per-score band compares stay an option
    _, tir = _band_tir("doc_mask", {"S": 1024}, row_limits=False)
    assert not re.search(r"\blim\[", tir)
    _, tir = _band_tir("chunk_512", {"S": 1024})
    assert not re.search(r"\blim\[", tir)
    _, tir = _band_tir("doc_mask", {"S": 1024})
    assert re.search(r"lim\[r\] = ent\[5 \+ r\] - ", tir) and re.search(both, tir)
    _, tir = _band_tir("band_offset", {}, band_edges=False)
    assert not re.search(r"\blim\[", tir)
    assert re.search(r"T\.Select\(kb_lo \* 128 \+ nt \* 8 \+ lane % 4 \* 2 \+ e % 2 < 517 and ", tir)


def test_sparse_compile_time_masks_default_to_four_blocks_an_sm():
    def kernel(name, S):
        return compile_variant(VARIANTS, variant_name=name, target="cuda", dtype="bf16", shapes={"S": S},
                               target_options=H100, build=False, tuning_db=False)

    # at most 4 % of the 128 x 128 tiles non-empty: window 256 and 512-token chunks at 16k
    for name in ("sw_256", "chunk_512"):
        k = kernel(name, 16384)
        c = k.config
        assert (c.block_q, c.block_k, c.num_warps, c.num_stages) == (64, 32, 4, 2), name
        # four thread blocks share an SM (shared memory; 4 x 128 threads x <= 128 registers fit too)
        assert cuda.shared_memory_bytes(k.spec, c) * 4 <= 228 * 1024 - 4 * 1024
    # denser masks keep the 128 x 128 default: window 1024 and 2048-token chunks (6-7 %), window
    # 256 at 4k (9 %), causal; and document masks, whose density is known only per call
    for name, S in (("sw_1024", 16384), ("chunk_2048", 16384), ("sw_256", 4096), ("causal", 16384),
                    ("doc_mask", 16384)):
        assert kernel(name, S).config.block_q == 128, name


# --------------------------------------------------------------------------- small tiles per call


def _docs(S, length):
    """Sorted document ids of documents of ``length`` tokens."""
    import numpy as np

    return (np.arange(S) // length).astype("int32")


def test_runtime_block_masks_get_a_small_tile_kernel_by_default():
    k = compile_variant(VARIANTS, variant_name="doc_mask", target="cuda", dtype="bf16", shapes={"S": 4096, "H": 2},
                        target_options=H100, build=False)
    assert k.config.small_below is None and (k.config.block_q, k.config.block_k) == (128, 128)
    assert cuda.small_below(k.spec, k.config) == cuda.SMALL_BELOW
    # compile-time maps pick their tile shape when compiling; fp8 stays on one kernel
    chunked = compile_variant(os.path.join(ROOT, "examples", "chunked.py"), target="cuda", dtype="bf16",
                              shapes={"S": 4096}, target_options=H100, build=False)
    assert cuda.small_below(chunked.spec, chunked.config) == 0
    fp8 = compile_variant(VARIANTS, variant_name="doc_mask", target="cuda", dtype="bf16", shapes={"S": 4096, "H": 2},
                          target_options=H100, build=False, quantize={"dtype": "fp8"})
    assert cuda.small_below(fp8.spec, fp8.config) == 0
    # records and candidate names leave the knob out at its default; a tuned record (a config
    # without the knob) keeps the per-call choice, --config small_below=0 turns it off
    from attncc.schedules.space import config_dict
    assert "small_below" not in config_dict(k.config)
    tuned = _compile("doc_mask", {"S": 4096, "H": 2}, build=False, num_stages=3)
    assert cuda.small_below(tuned.spec, tuned.config) == cuda.SMALL_BELOW
    off = _compile("doc_mask", {"S": 4096, "H": 2}, build=False, small_below=0)
    assert cuda.small_below(off.spec, off.config) == 0
    small = _compile("doc_mask", {"S": 4096, "H": 2}, build=False, block_q=64, num_warps=4, block_k=32)
    assert cuda.small_below(small.spec, small.config) == 0        # already the small tiles


def test_small_below_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="small_below"):
        _compile("sw_256", {"S": 1024}, build=False, small_below=0.05)           # no runtime block mask
    with pytest.raises(ConfigError, match="small_below must be a fraction"):
        _compile("doc_mask", {"S": 1024}, build=False, small_below=1.5)
    with pytest.raises(ConfigError, match="small_below"):
        _compile("doc_mask", {"S": 1024}, build=False, small_below=0.05, query_blocks=2)


def test_the_call_picks_the_kernel_from_the_density_of_its_map():
    k = compile_variant(VARIANTS, variant_name="doc_mask", target="cuda", dtype="bf16", shapes={"S": 4096, "H": 2},
                        target_options=H100, build=False)
    spec, cfg = k.spec, k.config
    fn, (tiles,) = cuda.runtime_tables(spec, cfg, [_docs(4096, 2048)])     # 2 documents: density 0.5
    # (the persistent kernel's walk order in column 32, its schedule -- 64 + 1 offsets and 64 tiles
    # in 5 columns -- then the rows' key limits: 1 + 2 x 128)
    assert fn == "main" and tiles.shape == (32, 33 + 5 + 257)
    fn, (tiles,) = cuda.runtime_tables(spec, cfg, [_docs(4096, 64)])       # 64 documents: the diagonal
    # (no walk order; the launch order, one column per batch x head; the limits: 1 + 2 x 64)
    assert fn == "main_small" and tiles.shape == (64, 128 + 2 + 129)
    assert (tiles[:, :128] != 0).sum() == 64 * 2                            # each 64-row block: two 32-key tiles


@needs_nvcc
def test_the_module_holds_both_kernels_and_the_export_names_the_second(tmp_path):
    import json

    from attncc.export import export as export_kernel

    k = compile_variant(VARIANTS, variant_name="doc_mask", target="cuda", dtype="bf16", shapes={"S": 2048, "H": 2},
                        target_options=H100)
    src = k.source()
    assert re.search(r"void __launch_bounds__\(384, 1\) main_kernel", src)   # the persistent kernel: 3 warpgroups
    assert re.search(r"void __launch_bounds__\(128\) main_small_kernel", src)
    assert "wgmma.mma_async.sync.aligned.m64n32k16" in src and "m64n128k16" in src
    export_kernel(k, str(tmp_path / "doc"))
    m = json.loads((tmp_path / "doc" / "manifest.json").read_text())
    small = m["block_map"]["small"]
    assert (small["function"], small["below"], small["block_q"], small["block_k"]) == \
        ("main_small", cuda.SMALL_BELOW, 64, 32)


def test_the_runtime_calls_the_small_kernel_for_sparse_maps():
    """attncc.runtime's Kernel (the exported kernel's loader) makes the same choice as the
    compiler: a function table and a host tile map, checked with stand-in functions."""
    import numpy as np

    from attncc.runtime import Kernel
    from attncc.runtime._kernel import _Arg

    k = compile_variant(VARIANTS, variant_name="doc_mask", target="cuda", dtype="bf16", shapes={"S": 4096, "H": 2},
                        target_options=H100, build=False)
    from attncc.export import build_manifest
    man = build_manifest(k)
    calls = []
    rt = Kernel(man, lambda *a: calls.append("main"), runtime_tile_map=k.spec.runtime_tile_map,
                functions={"main_small": lambda *a: calls.append("main_small")})
    table = [a for a in rt.kernel_args if a.role == "table"]
    for docs, want, shape in ((_docs(4096, 64), "main_small", (64, 128 + 2 + 129)),   # (+ the launch order)
                              (_docs(4096, 2048), "main", (32, 33 + 5 + 257))):     # (+ the schedule)
        ops = [a if a.role != "capture" else docs for a in rt.kernel_args]
        args, fn = rt._fill_tables(list(rt.kernel_args), ops, (1, 0))
        fn()
        assert calls[-1] == want
        t = [x for x in args if not isinstance(x, _Arg)]
        assert len(t) == 1 and np.asarray(t[0]).shape == shape
        np.testing.assert_array_equal(np.asarray(t[0]), cuda.runtime_tables(k.spec, k.config, [docs])[1][0])
    assert table and man["block_map"]["small"]["below"] == cuda.SMALL_BELOW
    with pytest.raises(Exception, match="main_small"):
        Kernel(man, lambda *a: None, runtime_tile_map=k.spec.runtime_tile_map)


def test_one_warpgroup_tile_maps_run_in_order_bands_ping_pong():
    """64 x 32 tiles have one warpgroup, so no ping-pong partner: a tile map runs on the in-order
    kernel (measured 3-6 % faster), a band stays on the ping-pong kernel (the same speed)."""
    small = dict(block_q=64, num_warps=4, block_k=32)
    doc = _compile("doc_mask", {"S": 1024}, build=False, **small)
    assert cuda._wgmma_for(doc.spec, doc.config) is cuda._wgmma_sparse
    band = _compile("sw_256", {"S": 1024}, build=False, **small)
    assert cuda._wgmma_for(band.spec, band.config) is cuda._wgmma_dense
    big = _compile("doc_mask", {"S": 1024}, build=False)
    assert cuda._wgmma_for(big.spec, big.config) is cuda._wgmma_dense
    # the per-call small kernel of a runtime map is the in-order one
    assert cuda._wgmma_for(doc.spec, cuda.small_config(big.config)) is cuda._wgmma_sparse


def test_measure_and_the_tuner_pass_tables_scales_and_captures():
    """cuda.measure and the tuner's sampler launch a kernel with every argument it takes (the
    sampler passed q, k, v, out, lse only: tuning a tile-map or document-mask kernel failed)."""
    dev = tvm.cpu(0)                      # the argument list, built on the host (no GPU here)
    cases = ((VARIANTS, "doc_mask", {"S": 1024, "H": 2}, None, ["tile_map", "doc"]),
             (os.path.join(ROOT, "examples", "chunked.py"), None, {"S": 1024}, None, ["tile_map"]),
             (VARIANTS, "causal", {"B": 1, "S": 517}, {"dtype": "fp8"}, ["q_scale", "k_scale"]),
             (VARIANTS, "sw_256", {"S": 1024}, None, []))
    for path, name, shapes, quant, extra in cases:
        k = compile_variant(path, variant_name=name, target="cuda", dtype="bf16", shapes=shapes,
                            target_options=H100, build=False, quantize=quant)
        built = cuda.CudaKernel(k.spec, k.config, "sm_90a", None, 0.0)     # as the tuner loads it
        function, args = cuda.measure_args(built, k.spec, dev)
        assert function == "main"
        assert len(args) == 5 + len(extra), (name, len(args))
        if "tile_map" in extra:
            assert tuple(args[5].shape) == tuple(k.spec.tile_map(k.config.block_q, k.config.block_k).shape) \
                if k.spec.runtime_tile_map is None else args[5].dtype == "int32"


@needs_nvcc
def test_compile_report_says_which_calls_run_the_small_kernel(capsys):
    from attncc.cli import main

    assert main(["compile", os.path.join(ROOT, "examples", "document_mask.py"), "--target", "cuda",
                 "--arch", "sm_90a", "--shape", "S=512"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"per call +a call whose 128x128 tile map is at most 6% non-empty runs a second kernel "
                     r"of 64x32 tiles", out)
    assert main(["compile", os.path.join(ROOT, "examples", "document_mask.py"), "--target", "cuda",
                 "--arch", "sm_90a", "--shape", "S=512", "--config",
                 "mma=wgmma,block_q=128,num_warps=8,block_k=128,small_below=0"]) == 0
    assert "per call" not in capsys.readouterr().out


# --------------------------------------------------------------------------- lazy rescaling


def test_o_is_rescaled_only_when_a_row_max_grows_past_the_threshold():
    """Lazy rescaling (both wgmma kernels): a row keeps its reference max unless a block raises
    it by more than LAZY_TAU (log2 units), and O is multiplied only when some alpha != 1; fp8 P·V
    (P already scaled by 2^8 into e4m3's range) keeps the eager rescale."""
    from attncc.targets import _cuda_wgmma

    tau = f"{_cuda_wgmma.LAZY_TAU}"
    for name, shapes, cfg, quant, lazy in (
            ("causal", {"B": 1, "S": 517}, None, None, True),                           # ping-pong
            ("doc_mask", {"S": 1024}, dict(block_q=64, num_warps=4, block_k=32), None, True),   # in order
            ("causal", {"B": 1, "S": 517}, None, {"dtype": "fp8"}, True),               # fp8 Q.K only
            ("causal", {"B": 1, "S": 517}, None, {"dtype": "fp8", "pv": True}, False)):  # fp8 P.V
        k = compile_variant(VARIANTS, variant_name=name, target="cuda", dtype="bf16", shapes=shapes,
                            config=None if cfg is None else dict(CHAIN, **cfg), target_options=H100, build=False,
                            quantize=quant)
        tir = cuda.lower(k.spec, k.config).script()
        kept = re.search(r"T\.Select\(red\[r\] > m_run\[r\] \+ T\.float32\(" + re.escape(tau) + r"\), red\[r\], m_run\[r\]\)",
                         tir)
        gated = re.search(r"if (alpha|m_run)\[0\] != T\.float32\(1\.0\) or (alpha|m_run)\[1\] != T\.float32\(1\.0\)", tir)
        assert bool(kept) == lazy and bool(gated) == lazy, (name, quant)


# --------------------------------------------------------------------------- K/V loads


@pytest.mark.parametrize("name,shapes,cfg,quant", [
    ("causal", {"B": 1, "S": 1024}, None, None),                                   # ping-pong
    ("doc_mask", {"S": 1024}, dict(block_q=64, num_warps=4, block_k=32), None),   # in order, 64 x 32
    ("causal", {"B": 1, "S": 1024}, None, {"dtype": "fp8"}),                      # fp8 Q.K
])
def test_whole_key_blocks_load_at_immediate_offsets(name, shapes, cfg, quant):
    """Keys a multiple of block_k: each thread's K and V copies of a tile share one address pair,
    the iterations at constant offsets ([base+imm] operands), with no clamp and no zero fill; a
    ragged key length keeps the clamped, zero-filling copies (and its results: the GPU checks)."""
    def tir_of(s):
        k = compile_variant(VARIANTS, variant_name=name, target="cuda", dtype="bf16", shapes=dict(shapes, S=s),
                            config=None if cfg is None else dict(CHAIN, **cfg), target_options=H100, build=False,
                            quantize=quant)
        return k, cuda.lower(k.spec, k.config).script()

    k, tir = tir_of(1024)
    assert k.spec.kv_len % k.config.block_k == 0
    for x in ("k", "v"):
        assert f"T.ptx.addr(T.address_of({x}[" in tir, x
        assert not re.search(r"T\.address_of\(" + x + r"\[[^\]]*T\.min\(", tir), x   # no clamp
    assert ", 16, 0)" not in tir.split("T.ptx.addr(T.address_of(k[")[1].split("\n")[0]   # no src-size
    k2, ragged = tir_of(1000)
    assert k2.spec.kv_len % k2.config.block_k != 0
    assert "T.ptx.addr(T.address_of(k[" not in ragged
    assert re.search(r"T\.address_of\(k\[b, hk, T\.min\(", ragged)


# --------------------------------------------------------------------------- the write-out


def test_each_warp_writes_its_rows_out_by_bulk_copies():
    """The ping-pong kernel's write-out: a warp stages its 16 output rows in padded rows of shared
    memory (row stride d_v + 8: its 2-byte stores hit 32 banks), fences them for the async proxy,
    syncs the warp and copies them out one 2*d_v-byte bulk copy per lane -- no block barrier, no
    shared loads, no vector stores (H200: benchmarks/gpu/RESULTS.md).  A block without key blocks
    still waits for every thread's Q copies first; ``bulk_store`` False keeps the staged copy-out."""
    from attncc.targets import _cuda_wgmma

    def tir(name, shapes, cfg=None, **opts):
        k = compile_variant(VARIANTS, variant_name=name, target="cuda", dtype="bf16", shapes=shapes,
                            config=dict(CHAIN, **(cfg or {})), target_options=H100, build=False)
        _cuda_wgmma._OPTIONS.update(opts)
        try:
            return cuda.lower(k.spec, k.config).script()
        finally:
            _cuda_wgmma._OPTIONS.clear()

    for name, shapes, cfg in (("full", {"B": 1, "S": 1000}, None), ("doc_mask", {"S": 1100, "H": 4}, None),
                              ("late_keys", {}, None),
                              ("sw_256", {"S": 1100, "H": 4}, dict(block_q=64, num_warps=4, block_k=32))):
        one_wg = cfg is not None
        t = tir(name, shapes, cfg, **({"bulk_store": True} if one_wg else {}))
        if one_wg:       # one warpgroup: the staged copy-out by default (measured faster there)
            d = tir(name, shapes, cfg)
            assert '"bulk"' not in d[d.rindex('T.ptx.cp(0, "async", "wait_group", "")'):]
        epi = t[t.rindex('T.ptx.cp(0, "async", "wait_group", "")'):]
        assert re.search(r'T\.ptx\.cp\(T\.address_of\(out\[b, h, r0 \+ lane, 0\]\), T\.cuda\.cvta_generic_to_shared\('
                         r'T\.address_of\(smem\[\(warp \* 16 \+ lane\) \* 136\]\)\), T\.uint32\(256\), "async", "bulk"', epi), name
        assert re.search(r"smem\[\(warp \* 16 \+ lane // 4 \+ e // 2 \* 8\) \* 136 \+ nd \* 8 \+ lane % 4 \* 2 \+ e % 2\]", epi)
        assert epi.index('T.ptx.fence("proxy", "async", "shared::cta"') < epi.index("T.cuda.warp_sync()") \
            < epi.index("if lane < 16:")
        assert re.search(r'if lane < 16:\s*\n\s*if r0 \+ lane < \d+:', epi), name
        assert '"bulk", "wait_group", "read"' in epi
        assert "T.vectorized(8)" not in epi, name
        # one barrier, and only where the block ran no key loop
        assert epi.count("T.tvm_storage_sync") == 1, name
        assert re.search(r"if kb_hi <= kb_lo:\s*\n\s*T\.tvm_storage_sync", epi) or re.search(
            r"if cnt\[0\] <= 0:\s*\n\s*T\.tvm_storage_sync", epi), name
        old = tir(name, shapes, cfg, bulk_store=False)
        old_epi = old[old.rindex('T.ptx.cp(0, "async", "wait_group", "")'):]
        assert '"bulk"' not in old_epi and "T.vectorized(8)" in old_epi and old_epi.count("T.tvm_storage_sync") == 2


# --------------------------------------------------------------------------- the profile reader


def test_ncu_blocks_splits_block_code_from_the_key_loop(tmp_path, capsys):
    """benchmarks/gpu/ncu_blocks.py on a synthetic SASS page: 4 blocks x 8 warps, so the first
    instruction runs 32 times; instructions run at most that often are block code, the rest the
    key loop; samples are reported per block and the loop per step (tiles - 1 steps)."""
    import csv
    import gzip
    import importlib.util

    spec = importlib.util.spec_from_file_location("ncu_blocks", os.path.join(ROOT, "benchmarks", "gpu", "ncu_blocks.py"))
    nb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nb)
    hdr = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed", "stall_wait",
           "stall_barrier", "stall_wait (Not Issued)"]
    rows = [("0x10", "LDC R1, c[0x0][0x28]", 40, 32, 30, 10, 0),        # prologue: block code
            ("0x20", "HGMMA.64x128x16.F32.BF16 R24", 200, 96, 150, 50, 0),   # loop: 3 steps a block-warp
            ("0x30", "@P0 BRA 0x20", 20, 96, 0, 20, 0),
            ("0x40", "STG.E.128 [R2.64], R4", 20, 32, 5, 15, 0)]          # write-out: block code
    path = tmp_path / "k.sass.csv.gz"
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Kernel Name", "main_kernel"])
        w.writerow(hdr)
        w.writerows(rows)
    k = nb.analyse(str(path), 4.0)
    assert k["per_bw"] == 32 and k["samples"] == 280
    assert [(sg["block"], sg["s"]) for sg in k["segs"]] == [(True, 40), (False, 220), (True, 20)]
    assert k["why"]["wait"] == 185 and k["why"]["barrier"] == 95
    assert nb.main([f"{path}:4", f"{path}:4"]) == 0
    out = capsys.readouterr().out
    assert "70.00 a block" in out                    # 280 samples / 4 blocks
    assert "block code: 15.00 samples a block (21.4%); key loop: 18.333 a step" in out
    assert "loop step 1.00 x its step" in out
