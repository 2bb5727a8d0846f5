"""The rows' key limits of a document mask (``spec.row_runs``, ``attncc.runtime._layouts``):
which masks are ``ids[q] == ids[kv]`` and a band, the limits against the mask evaluated on every
element, the table the Hopper kernels take, and (on a Hopper GPU) the kernels that mask partial
tiles by the limits against the reference -- with ids of one run each, ids that recur (the
flag off: the kernel reads the ids), and both in one call."""

import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attncc.compiler import compile_variant, verify
from attncc.lang import Tensor, attention, variant
from attncc.runtime._layouts import row_limit_columns, row_limits, with_row_limits
from attncc.targets.lowering import row_runs
from attncc.targets.spec import RowRuns

from conftest import hopper_gpu_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = os.path.join(ROOT, "benchmarks", "gpu", "variants.py")
H100 = {"arch": "sm_90a"}
needs_hopper = pytest.mark.skipif(not hopper_gpu_available(), reason="no Hopper (sm_90a) CUDA device")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


def _masked(mask, cap_type=Tensor["S", "i32"], n_caps=1):
    if n_caps == 1:
        def f(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"],
              doc: cap_type):
            return attention(q, k, v, mask_mod=lambda b, h, i, j: mask(b, h, i, j, doc))
    else:
        def f(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"],
              doc: cap_type, other: cap_type):
            return attention(q, k, v, mask_mod=lambda b, h, i, j: mask(b, h, i, j, doc, other))
    return compile_variant(variant(f, name="m"), target="cpu", shapes=dict(B=1, H=2, S=96, D=8), build=False)


def _runs(k):
    return row_runs(k.flash_op.region("mask"), k.env)


# --------------------------------------------------------------------------- which masks


@pytest.mark.parametrize("mask,expected", [
    (lambda b, h, i, j, d: d[i] == d[j], RowRuns(0)),
    (lambda b, h, i, j, d: d[j] == d[i], RowRuns(0)),
    (lambda b, h, i, j, d: (d[i] == d[j]) & (j <= i), RowRuns(0, None, 0)),
    (lambda b, h, i, j, d: (j <= i) & (d[i] == d[j]) & (i - j < 40), RowRuns(0, -39, 0)),
    (lambda b, h, i, j, d: (d[i] == d[j]) & (j >= i - 8) & (j < i + 3), RowRuns(0, -8, 2)),
])
def test_document_masks_and_bands_are_row_runs(mask, expected):
    k = _masked(mask)
    assert _runs(k) == expected
    assert k.spec.row_runs == expected


@pytest.mark.parametrize("mask,cap_type,n_caps", [
    (lambda b, h, i, j, d: (d[i] == d[j]) | (j < 4), Tensor["S", "i32"], 1),          # a global column
    (lambda b, h, i, j, d: d[i] != d[j], Tensor["S", "i32"], 1),
    (lambda b, h, i, j, d: d[i + 1] == d[j], Tensor["S", "i32"], 1),                  # not the row itself
    (lambda b, h, i, j, d: d[i] == d[i], Tensor["S", "i32"], 1),
    (lambda b, h, i, j, d: (d[i] == d[j]) & (j % 7 != 3), Tensor["S", "i32"], 1),      # no band
    (lambda b, h, i, j, d: (d[i] == d[j]) & (2 * j <= i), Tensor["S", "i32"], 1),      # slope 2
    (lambda b, h, i, j, d: d[i] == d[j], Tensor["S", "f32"], 1),                       # float ids (NaN)
    (lambda b, h, i, j, d: d[b, i] == d[b, j], Tensor["B", "S", "i32"], 1),            # per batch row
    (lambda b, h, i, j, d, e: d[i] == e[j], Tensor["S", "i32"], 2),                     # two arrays
    (lambda b, h, i, j, d, e: (d[i] == d[j]) & (e[i] == e[j]), Tensor["S", "i32"], 2),  # two runs
])
def test_other_masks_are_not(mask, cap_type, n_caps):
    assert _runs(_masked(mask, cap_type, n_caps)) is None


def test_masks_without_ids_are_not():
    k = compile_variant(os.path.join(ROOT, "examples", "causal_mha.py"), target="cpu", build=False)
    assert k.spec.row_runs is None


# --------------------------------------------------------------------------- the limits


def _keep(k, ids):
    S = k.spec.q_len
    i = np.arange(S)[:, None]
    j = np.arange(k.spec.kv_len)[None, :]
    return np.broadcast_to(k.spec.mask_numpy(0, 0, i, j, ids), (S, k.spec.kv_len))


MASKS = {"doc": lambda b, h, i, j, d: d[i] == d[j],
         "causal": lambda b, h, i, j, d: (d[i] == d[j]) & (j <= i),
         "window": lambda b, h, i, j, d: (d[i] == d[j]) & (i - j < 11) & (j <= i + 2)}
_KERNELS: dict = {}


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(MASKS)), runs=st.lists(st.integers(1, 40), min_size=1, max_size=8),
       shuffle=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_the_limits_are_the_mask_row_by_row(name, runs, shuffle, seed):
    """Every row flagged exact keeps exactly the keys between its limits; every row keeps none
    outside them; with ids in runs (packed documents) every row is exact."""
    k = _KERNELS.get(name) or _KERNELS.setdefault(name, _masked(MASKS[name]))
    S = k.spec.q_len
    rng = np.random.default_rng(seed)
    values = rng.permutation(len(runs)) if not shuffle else rng.integers(0, max(1, len(runs) // 2 + 1), len(runs))
    ids = np.resize(np.repeat(values, runs), S).astype(np.int32)       # (np.resize repeats: ids recur)
    keep = _keep(k, ids)
    rr = k.spec.row_runs
    first, last, exact = row_limits(ids, S, k.spec.kv_len, rr.lower_offset, rr.upper_offset)
    j = np.arange(k.spec.kv_len)[None, :]
    inside = (j >= first[:, None]) & (j <= last[:, None])
    assert not (keep & ~inside).any()
    np.testing.assert_array_equal(keep[exact], inside[exact])
    if sum(runs) >= S and not shuffle:
        assert exact.all()


def test_an_id_that_recurs_breaks_only_its_rows():
    ids = np.array([3] * 10 + [5] * 10 + [3] * 10 + [7] * 10, np.int32)
    first, last, exact = row_limits(ids, 40, 40)
    assert exact.tolist() == [False] * 10 + [True] * 10 + [False] * 10 + [True] * 10
    assert (first[10:20] == 10).all() and (last[10:20] == 19).all()
    assert (first[:10] == 0).all() and (last[:10] == 29).all()         # the hull: a sound bound


def test_the_table_columns_per_query_block():
    ids = np.repeat(np.arange(5), 20).astype(np.int32)                  # 100 rows, 4 blocks of 32
    tiles = np.ones((4, 2), np.int32)
    t = with_row_limits(tiles, ids, 100, 100, 32, None, 0)
    assert t.shape == (4, 2 + row_limit_columns(32)) == (4, 2 + 65)
    assert (t[:, 2] == 1).all()
    first, last = t[:, 3:35].reshape(-1), t[:, 35:].reshape(-1)
    rows = np.arange(100)
    np.testing.assert_array_equal(first[:100], rows // 20 * 20)
    np.testing.assert_array_equal(last[:100], rows)                     # causal: the row itself
    assert (first[100:] > last[100:]).all()                             # the padding rows keep none
    with pytest.raises(ValueError, match="4 query blocks"):
        with_row_limits(tiles[:3], ids, 100, 100, 32)


# --------------------------------------------------------------------------- the kernels


def _compile(name, config, build=True):
    return compile_variant(VARIANTS, variant_name=name, target="cuda", dtype="bf16", shapes={"S": 1100, "H": 4},
                           config={**dict(mma="wgmma", block_q=128, num_warps=8, block_k=128, num_stages=2,
                                          small_below=0), **config},
                           target_options=H100, build=build, tuning_db=False)


def test_the_limits_are_a_switch():
    from types import SimpleNamespace

    from attncc.targets import _cuda_wgmma as wgmma, cuda

    k = _compile("doc_causal", {"persistent": 3}, build=False)
    assert cuda.row_limits(k.spec, k.config)
    notes = cuda.kernel_notes(SimpleNamespace(spec=k.spec, config=k.config))
    assert any(n.startswith("row limits: partial tiles of the document mask on 'doc'") for n in notes)
    assert "ent[4] != 0" in cuda.lower(k.spec, k.config).script()
    wgmma._OPTIONS.update(row_limits=False)
    try:
        assert not cuda.row_limits(k.spec, k.config)
        doc = np.repeat(np.arange(4), 275).astype(np.int32)
        assert cuda.runtime_tables(k.spec, k.config, [doc])[1][0].shape == (
            9, 10 + wgmma.ws_schedule_columns(k.spec, k.config))
        assert "ent[4]" not in cuda.lower(k.spec, k.config).script()
        assert not any(n.startswith("row limits") for n in cuda.kernel_notes(SimpleNamespace(spec=k.spec,
                                                                                            config=k.config)))
    finally:
        wgmma._OPTIONS.clear()


def _ids(kind, S, rng):
    if kind == "runs":          # packed documents of random lengths: every block flagged
        return np.sort(rng.integers(0, 9, S)).astype(np.int32)
    if kind == "recurring":     # two ids taking turns every 100 rows: every block masked by the ids
        return (np.arange(S) // 100 % 2).astype(np.int32)
    # blocks of both kinds in one call: runs, then ids that alternate every 50 rows
    return np.concatenate([np.repeat(np.arange(4), 150), 10 + np.arange(S - 600) // 50 % 2]).astype(np.int32)


# the persistent kernel (3 thread blocks: tiles wrap), the one-block-a-tile ping-pong kernel, the
# in-order kernel of 64 x 32 tiles (one warpgroup: what a sparse call runs)
KERNELS = {"persistent": {"persistent": 3}, "one-tile": {},
           "64x32": {"block_q": 64, "block_k": 32, "num_warps": 4}}


@needs_hopper
@pytest.mark.parametrize("name", ["doc_mask", "doc_causal"])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("kind", ["runs", "recurring", "mixed"])
def test_kernels_with_row_limits_match_the_reference(name, kernel, kind):
    from attncc.targets import cuda

    k = _compile(name, KERNELS[kernel])
    assert cuda.row_limits(k.spec, k.config)
    inputs = k.random_inputs(0)
    inputs["doc"] = _ids(kind, 1100, np.random.default_rng(1))
    flags = cuda.runtime_tables(k.spec, k.config, [inputs["doc"]])[1][0][:, -row_limit_columns(k.config.block_q)]
    assert {"runs": {1}, "recurring": {0}, "mixed": {0, 1}}[kind] == set(flags.tolist())
    rep = verify(k, seed=0, inputs=inputs)
    assert rep.passed, (rep.max_error, rep.tolerance)


@needs_nvcc
def test_kernels_with_row_limits_build():
    """The three kernels build with the limits (ptxas accepts them; no GPU needed)."""
    for config in KERNELS.values():
        k = _compile("doc_causal", config)
        assert "tile_map" in k.source()
