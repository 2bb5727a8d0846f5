"""A band or'ed with affine comparisons (``spec.band_part``): global keys or queries (Longformer),
a prefix (prefix-LM).  Which masks are one, the soundness of the box test that lets a partial
tile take the band's compares, the kernels that use it, and (on a Hopper GPU) their outputs."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attncc.compiler import compile_variant, verify
from attncc.lang import Tensor, attention, variant
from attncc.targets.lowering import band_part
from attncc.targets.spec import BandPart, rest_holds

from conftest import hopper_gpu_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = os.path.join(ROOT, "benchmarks", "gpu", "variants.py")
EXAMPLES = os.path.join(ROOT, "examples")
H100 = {"arch": "sm_90a"}
needs_hopper = pytest.mark.skipif(not hopper_gpu_available(), reason="no Hopper (sm_90a) CUDA device")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


def _part(mask):
    def f(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
        return attention(q, k, v, mask_mod=mask)
    k = compile_variant(variant(f, name="m"), target="cpu", shapes=dict(B=1, H=2, S=96, D=8), build=False)
    return band_part(k.flash_op.region("mask"), k.env)


@pytest.mark.parametrize("mask,expected", [
    (lambda b, h, i, j: ((j <= i) & (i - j < 64)) | (j < 8),
     BandPart(-63, 0, ("cmp", 0, 1, -8, "lt"))),
    (lambda b, h, i, j: (j < 8) | ((j <= i) & (i - j < 64)),                   # either side of the or
     BandPart(-63, 0, ("cmp", 0, 1, -8, "lt"))),
    (lambda b, h, i, j: (j <= i) | (j < 16),                                   # prefix-LM
     BandPart(None, 0, ("cmp", 0, 1, -16, "lt"))),
    (lambda b, h, i, j: ((j - i <= 4) & (i - j <= 4)) | (j < 8) | (i < 8),     # global keys and queries
     BandPart(-4, 4, ("or", (("cmp", 0, 1, -8, "lt"), ("cmp", 1, 0, -8, "lt"))))),
])
def test_a_band_or_affine_comparisons_is_a_band_part(mask, expected):
    got = _part(mask)
    assert got is not None and (got.lower_offset, got.upper_offset) == (expected.lower_offset, expected.upper_offset)
    if expected.rest[0] == "or":                 # (the order of the or's operands is the IR's)
        assert got.rest[0] == "or" and sorted(got.rest[1]) == sorted(expected.rest[1])
    else:
        assert got.rest == expected.rest


@pytest.mark.parametrize("mask", [
    lambda b, h, i, j: (j <= i) & (i - j < 64),               # a band alone: key_bounds does it
    lambda b, h, i, j: ((j <= i) & (i - j < 64)) & (j >= 8),  # no or
    lambda b, h, i, j: (j <= i) | (j % 2 == 0),               # the rest is not affine
    lambda b, h, i, j: (j < 8) | (i < 8),                     # no band among the disjuncts
    lambda b, h, i, j: (i // 32 == j // 32) | (j < 4),        # chunks are no band
    lambda b, h, i, j: (2 * j <= i) | (j < 4),                # slope 2: no band side
])
def test_other_masks_are_not(mask):
    assert _part(mask) is None


_cmp = st.tuples(st.just("cmp"), st.integers(-2, 2), st.integers(-2, 2), st.integers(-40, 40),
                 st.sampled_from(["lt", "le", "gt", "ge"]))
_tree = st.recursive(_cmp, lambda t: st.one_of(
    st.tuples(st.sampled_from(["and", "or"]), st.lists(t, min_size=1, max_size=3).map(tuple)),
    st.tuples(st.just("not"), t)), max_leaves=5)


def _eval(tree, i, j):
    if tree[0] == "not":
        return ~_eval(tree[1], i, j)
    if tree[0] in ("and", "or"):
        parts = [_eval(t, i, j) for t in tree[1]]
        return np.logical_and.reduce(parts) if tree[0] == "and" else np.logical_or.reduce(parts)
    _, ci, cj, c0, rel = tree
    d = ci * i + cj * j + c0
    return {"lt": d < 0, "le": d <= 0, "gt": d > 0, "ge": d >= 0}[rel]


@settings(max_examples=300, deadline=None)
@given(_tree, st.integers(-20, 20), st.integers(0, 6), st.integers(-20, 20), st.integers(0, 6), st.booleans())
def test_the_box_test_is_sound(tree, i0, di, j0, dj, value):
    """Where rest_holds says the tree is ``value`` on the box, it is, at every point of it."""
    i, j = np.meshgrid(np.arange(i0, i0 + di + 1), np.arange(j0, j0 + dj + 1), indexing="ij")
    if rest_holds(tree, value, i0, i0 + di, j0, j0 + dj):
        assert (_eval(tree, i, j) == value).all()


def test_the_box_test_finds_the_global_keys_false_past_them():
    rest = ("cmp", 0, 1, -128, "lt")                          # kv < 128
    assert rest_holds(rest, False, 0, 15, 128, 255)
    assert not rest_holds(rest, False, 0, 15, 0, 127)
    both = ("or", (rest, ("cmp", 1, 0, -64, "lt")))           # kv < 128 | q < 64
    assert not rest_holds(both, False, 48, 63, 128, 255) and rest_holds(both, False, 64, 79, 128, 255)


def _compile(path, name, shapes, config=None, build=False):
    cfg = None if config is None else {**dict(mma="wgmma", block_q=128, num_warps=8, block_k=128, num_stages=2),
                                       **config}
    return compile_variant(path, variant_name=name, target="cuda", dtype="bf16", shapes=shapes, config=cfg,
                           target_options=H100, build=build, tuning_db=False)


KERNELS = {"compile's pick": None, "persistent": {"persistent": 3, "small_below": 0},
           "64x32": {"block_q": 64, "block_k": 32, "num_warps": 4}}
CASES = [(VARIANTS, "local_global", {"B": 1, "S": 3000, "H": 2}),
         (os.path.join(EXAMPLES, "local_global.py"), None, {"S": 1100}),
         (VARIANTS, "prefix_2048", {"B": 1, "S": 2500, "H": 2})]


def test_the_kernels_take_the_band_where_the_rest_is_false():
    """Local + global on the persistent kernel: a partial tile branches on the box test (key
    block >= 1: keys past the 128 global ones) to the band's compares; ``_OPTIONS["band_part"]``
    off, every partial tile evaluates the whole mask."""
    from attncc.targets import _cuda_wgmma as wgmma, cuda

    k = _compile(VARIANTS, "local_global", {"B": 1, "S": 16384})
    assert k.config.persistent and k.spec.band_part is not None
    on = cuda.lower(k.spec, k.config).script()
    assert "if -128 + (ent[0] >> 1) * 128 >= 0:" in on
    assert "T.min(r0 + lane // 4 + r * 8, 16383)" in on      # the band's upper side, clamped to the keys
    wgmma._OPTIONS.update(band_part=False)
    try:
        off = cuda.lower(k.spec, k.config).script()
    finally:
        wgmma._OPTIONS.clear()
    assert "(ent[0] >> 1) * 128 >= 0" not in off
    small = cuda.lower(k.spec, cuda.small_config(k.config)).script()
    assert ">= 0:" in small and "T.min(r0 + lane // 4 + r * 8, 16383)" in small
    import dataclasses
    chained = cuda.lower(k.spec, dataclasses.replace(cuda.small_config(k.config), query_blocks=2)).script()
    assert "T.min(r0 + lane // 4 + r * 8, 16383)" not in chained       # (not run with chained blocks)


def test_the_cli_names_the_band_part():
    from types import SimpleNamespace

    from attncc.targets import cuda

    k = _compile(VARIANTS, "local_global", {"B": 1, "S": 4096, "H": 2})
    notes = cuda.kernel_notes(SimpleNamespace(spec=k.spec, config=k.config))
    assert any(n.startswith("band part: the mask is the band kv - q >= -1023 and kv - q <= 0") for n in notes), notes
    sw = _compile(VARIANTS, "sw_1024", {"B": 1, "S": 4096, "H": 2})
    assert not any(n.startswith("band part") for n in cuda.kernel_notes(SimpleNamespace(spec=sw.spec,
                                                                                      config=sw.config)))


@needs_nvcc
def test_the_kernels_with_a_band_part_build():
    for config in KERNELS.values():
        k = _compile(VARIANTS, "local_global", {"B": 1, "S": 3000, "H": 2}, config, build=True)
        assert "__global__" in k.source()


@needs_hopper
@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_kernels_with_a_band_part_match_the_reference(kernel, case):
    path, name, shapes = CASES[case]
    k = _compile(path, name, shapes, KERNELS[kernel], build=True)
    assert k.spec.band_part is not None
    rep = verify(k, seed=0)
    assert rep.passed, (rep.max_error, rep.tolerance)
