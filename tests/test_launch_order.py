"""The in-order wgmma kernel's launch order (``attncc.runtime._layouts.launch_order``): in table
mode each thread block reads which (query block, batch x head) it runs from the table, so the
host can sort the last waves of the launch heaviest first and end the call on light blocks.
Host-side checks run everywhere; the GPU checks skip cleanly without a Hopper device."""

from __future__ import annotations

import heapq
import os

import numpy as np
import pytest

from attncc.runtime import _layouts
from attncc.runtime._layouts import launch_columns, launch_order, with_launch_order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = os.path.join(ROOT, "benchmarks", "gpu", "variants.py")
H100 = {"arch": "sm_90a"}
SMALL = dict(mma="wgmma", block_q=64, block_k=32, num_warps=4, num_stages=2)


def _grid_order(nqb, bhn):
    """The launch order without a table: blockIdx.x = qb_rev (fastest), blockIdx.y = bh."""
    return np.array([(nqb - 1 - r) * bhn + bh for bh in range(bhn) for r in range(nqb)], dtype=np.int32)


def _docs(S, n, seed=0):
    """n contiguous documents of random lengths: the GPU benchmark's (benchmarks/gpu/attention.py,
    loaded from its file: that folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_attention", os.path.join(ROOT, "benchmarks", "gpu",
                                                                               "attention.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._doc_ids(S, n, seed)


def test_without_a_tail_the_order_is_the_grid_order():
    cost = np.random.default_rng(0).integers(0, 9, 37)
    np.testing.assert_array_equal(launch_order(cost, 5, slots=8, tail_waves=0), _grid_order(37, 5))


@pytest.mark.parametrize("nqb,bhn,slots,waves", [(37, 5, 8, 2), (16, 3, 100, 2), (64, 1, 4, 3), (1, 1, 528, 2),
                                                 (40, 4, 10, 1.5)])
def test_the_tail_runs_heaviest_first_and_the_rest_keeps_its_order(nqb, bhn, slots, waves):
    cost = np.random.default_rng(nqb).integers(0, 20, nqb)
    base, got = _grid_order(nqb, bhn), launch_order(cost, bhn, slots=slots, tail_waves=waves)
    assert sorted(got.tolist()) == list(range(nqb * bhn))            # every tile once
    start = max(0, nqb * bhn - int(slots * waves))
    np.testing.assert_array_equal(got[:start], base[:start])          # the head-major waves untouched
    assert sorted(got[start:].tolist()) == sorted(base[start:].tolist())
    tail_cost = cost[got[start:] // bhn]
    assert np.all(np.diff(tail_cost) <= 0)                            # heaviest first
    for c in set(tail_cost.tolist()):                                 # ties in the grid order
        same = got[start:][tail_cost == c]
        pos = {int(x): i for i, x in enumerate(base)}
        assert [pos[int(x)] for x in same] == sorted(pos[int(x)] for x in same)


def test_the_table_holds_it_row_major_after_the_map():
    tiles = np.random.default_rng(3).integers(0, 3, (6, 9)).astype(np.int32)
    t = with_launch_order(tiles, 4, slots=2, tail_waves=3)
    assert t.shape == (6, 9 + launch_columns(4))
    np.testing.assert_array_equal(t[:, :9], tiles)
    np.testing.assert_array_equal(t[:, 9:].reshape(-1), launch_order((tiles != 0).sum(axis=1), 4, 2, 3))
    with pytest.raises(ValueError, match="query blocks"):
        with_launch_order(tiles[0], 4)


def _finish(order, cost, slots, fixed=3.0):
    """When the last of ``order``'s blocks ends, each block starting in launch order on the first
    of ``slots`` to free up (the hardware's block dispatch), a block costing its key blocks + fixed."""
    free = [0.0] * slots
    for c in cost[np.asarray(order) // 16]:
        heapq.heappush(free, heapq.heappop(free) + c + fixed)
    return max(free)


@pytest.mark.parametrize("n,causal", [(32, False), (64, False), (16, True), (32, True)])
def test_the_sorted_tail_ends_a_modelled_call_sooner(n, causal):
    """The reason for the order, on the benchmark's document masks (S=16k, 16 heads, 64 x 32
    tiles, four blocks on each of 132 SMs): in the slot model the grid order's call ends 15-18 %
    after the mean slot's work, the sorted tail's 3-5 %."""
    S, bq, bk = 16384, 64, 32
    ids = _docs(S, n)
    first = np.searchsorted(ids, ids, side="left")
    last = np.searchsorted(ids, ids, side="right") - 1
    cost = np.array([len({j // bk for r in range(q, q + bq) for j in (first[r], r if causal else last[r])}
                         | set(range(first[q] // bk, (q + bq - 1 if causal else last[q + bq - 1]) // bk + 1)))
                     for q in range(0, S, bq)], dtype=np.float64)
    mean = (cost.sum() + 3.0 * len(cost)) * 16 / _layouts.LAUNCH_SLOTS
    plain = _finish(_grid_order(len(cost), 16), cost, _layouts.LAUNCH_SLOTS) / mean
    tail = _finish(launch_order(cost, 16), cost, _layouts.LAUNCH_SLOTS) / mean
    assert plain >= 1.12 and tail <= 1.07, (plain, tail)


# --------------------------------------------------------------------------- the kernel and its table

tvm = pytest.importorskip("tvm")

from conftest import hopper_gpu_available  # noqa: E402

from attncc.compiler import compile_variant, verify  # noqa: E402
from attncc.targets import _cuda_wgmma_sparse as sparse, cuda  # noqa: E402

needs_hopper = pytest.mark.skipif(not hopper_gpu_available(), reason="no Hopper (sm_90a) CUDA device")


def _compile(name, shapes, build=False, **cfg):
    return compile_variant(VARIANTS, variant_name=name, target="cuda", dtype="bf16", shapes=shapes,
                           config=dict(SMALL, **cfg), target_options=H100, build=build)


def test_the_in_order_kernel_reads_its_tile_from_the_table():
    k = _compile("doc_mask", {"B": 2, "S": 1024, "H": 3})
    ids = [_docs(1024, 8)]
    assert cuda.launch_order(k.spec, k.config) == 6
    fn, (table,) = cuda.runtime_tables(k.spec, k.config, ids)
    nkb = 1024 // 32
    tiles = k.spec.runtime_tile_map(ids, 64, 32)
    np.testing.assert_array_equal(table[:, :nkb], tiles)
    np.testing.assert_array_equal(table[:, nkb:nkb + 6].reshape(-1), launch_order((tiles != 0).sum(axis=1), 6))
    tir = cuda.lower(k.spec, k.config).script()
    assert "code: T.int32 = tile_map[" in tir
    # the kernel's table shape is what the host builds
    assert f"tile_map: T.Buffer(({table.shape[0]}, {table.shape[1]})" in tir or \
        f"({table.shape[0]}, {table.shape[1]}), \"int32\"" in tir


def test_without_the_option_neither_side_has_the_columns():
    k = _compile("chunk_512", {"S": 2048, "H": 2})
    with_lo = cuda.block_tables(k.spec, k.config)[0]
    sparse._OPTIONS["launch_order"] = False
    try:
        assert cuda.launch_order(k.spec, k.config) == 0
        without = cuda.block_tables(k.spec, k.config)[0]
        tir = cuda.lower(k.spec, k.config).script()
    finally:
        sparse._OPTIONS.clear()
    assert without.shape[1] + 2 == with_lo.shape[1] and "code: T.int32" not in tir
    np.testing.assert_array_equal(with_lo[:, :without.shape[1]], without)


def test_chained_query_blocks_and_the_persistent_kernel_take_no_launch_order():
    k = compile_variant(VARIANTS, variant_name="doc_mask", target="cuda", dtype="bf16", shapes={"S": 2048, "H": 2},
                        config=dict(mma="wgmma", block_q=128, block_k=128, num_warps=8, num_stages=2,
                                    query_blocks=2), target_options=H100, build=False)
    assert cuda.launch_order(k.spec, k.config) == 0
    k = compile_variant(VARIANTS, variant_name="doc_mask", target="cuda", dtype="bf16", shapes={"S": 4096, "H": 2},
                        target_options=H100, build=False)
    assert cuda.launch_order(k.spec, k.config) == 0                                  # main: persistent
    assert cuda.launch_order(k.spec, cuda.small_config(k.config)) == 2               # main_small


def test_the_manifest_says_where_the_launch_order_is():
    from attncc.export import build_manifest

    k = compile_variant(VARIANTS, variant_name="doc_mask", target="cuda", dtype="bf16", shapes={"S": 4096, "H": 2},
                        target_options=H100, build=False)
    small = build_manifest(k)["block_map"]["small"]
    assert small["launch_order"]["bhn"] == 2 and small["launch_order"]["column"] == 4096 // 32
    assert small["launch_order"]["slots"] == _layouts.LAUNCH_SLOTS
    man = build_manifest(_compile("chunk_512", {"S": 2048, "H": 2}))
    assert man["block_map"]["launch_order"]["column"] == 2048 // 32
    assert [a["shape"] for a in man["kernel_args"] if a["role"] == "table"] == [[2048 // 64, 2048 // 32 + 2]]


@needs_hopper
@pytest.mark.parametrize("name,shapes", [("doc_mask", {"B": 2, "S": 2048, "H": 3}),
                                         ("doc_causal", {"S": 1100, "H": 4}),
                                         ("chunk_512", {"B": 2, "S": 2048, "H": 3})])
@pytest.mark.parametrize("slots", [16, 528])
def test_the_kernel_runs_each_tile_once_in_any_launch_order(monkeypatch, name, shapes, slots):
    """16 slots: the tail (32 blocks) shorter than the grid, sorted; 528: the whole grid sorted."""
    monkeypatch.setattr(_layouts, "LAUNCH_SLOTS", slots)
    k = _compile(name, shapes, build=True)
    for seed in (0, 1):
        rep = verify(k, seed=seed)
        assert rep.passed, (seed, rep.max_error, rep.tolerance)
