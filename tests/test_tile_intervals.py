"""The per-call tile map of a data-dependent mask, decided by interval arithmetic over whole
tiles (attncc/targets/tile_intervals.py), is the map of evaluating the mask on every element."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attncc.compiler import compile_variant
from attncc.lang import Tensor, attention, cast, tanh, variant, where
from attncc.passes.prune_sparsity import EMPTY, FULL, PARTIAL
from attncc.targets.lowering import runtime_tiles
from attncc.targets.tile_intervals import UNDECIDED, classify


def _doc_window(b, h, i, j, doc):
    return (doc[i] == doc[j]) & (j <= i) & (i - j < 40)


def _doc_batch(b, h, i, j, doc2):
    # ids per batch row, read through b; the mask also reads h
    return (doc2[b, i] != doc2[b, j] + 0) == (h > 7)


def _weights(b, h, i, j, w):
    # float capture, arithmetic, select, abs, floordiv, cast
    s = where(i % 5 < 4, w[j] * 2.0 - 1.0, abs(w[i // 2]) - 0.5)
    return (s > 0.25) | (cast(-(j // 7), "f32") > -1.5)


def _periodic(b, h, i, j, off):
    return ((i + off[0]) % 5 < 4) & (j % 7 != 3) & (i - j >= -(off[1] % 9)) | (i + j < 40 + off[1])


def _layout(b, h, i, j, layout):
    return ~(layout[i // 24, j // 24] == 0) & (layout[j // 24, i // 24] >= 0)


MASKS = {"doc_window": (_doc_window, "doc", lambda S, rng: np.sort(rng.integers(0, 3, S)).astype(np.int32)),
         "doc_batch": (_doc_batch, "doc2", lambda S, rng: rng.integers(0, 3, (2, S)).astype(np.int32)),
         "weights": (_weights, "w", lambda S, rng: rng.standard_normal(S).astype(np.float32)),
         "periodic": (_periodic, "off", lambda S, rng: rng.integers(0, 50, 2).astype(np.int32)),
         "layout": (_layout, "layout", lambda S, rng: rng.integers(-1, 2, (16, 16)).astype(np.int32))}


def _kernel(name: str, S: int):
    fn, arg, _ = MASKS[name]
    cap_type = {"doc": Tensor["S", "i32"], "doc2": Tensor["B", "S", "i32"], "w": Tensor["S", "f32"],
                "off": Tensor[2, "i32"], "layout": Tensor[16, 16, "i32"]}[arg]

    def f(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"],
          cap: cap_type):
        return attention(q, k, v, mask_mod=lambda b, h, i, j: fn(b, h, i, j, cap))
    return compile_variant(variant(f, name=name), target="cpu", shapes=dict(B=2, H=16, S=S, D=8), build=False)


def _maps(k, arrays, bq, bk):
    S = k.spec.q_len
    mask = k.flash_op.region("mask")
    fast = runtime_tiles(mask, arrays, S, S, 2, 16, bq, bk, dict(k.env))
    slow = runtime_tiles(mask, arrays, S, S, 2, 16, bq, bk, dict(k.env), decide=False)
    return fast, slow


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(MASKS)), S=st.integers(1, 300), bq=st.sampled_from([1, 3, 8, 16, 32, 64]),
       bk=st.sampled_from([1, 5, 8, 16, 32, 64, 128]), seed=st.integers(0, 2 ** 16))
def test_decided_map_is_the_element_map(name, S, bq, bk, seed):
    k = _kernel(name, S)
    arrays = [MASKS[name][2](S, np.random.default_rng(seed))]
    fast, slow = _maps(k, arrays, bq, bk)
    np.testing.assert_array_equal(fast, slow)
    decided = classify(k.flash_op.region("mask"), arrays, S, S, 2, 16, bq, bk, dict(k.env))
    assert decided is not None           # every op of these masks has an interval rule
    # what it decides agrees with the elements; what it leaves is evaluated
    sure = decided != UNDECIDED
    np.testing.assert_array_equal(decided[sure], slow[sure])


def test_sorted_document_ids_leave_only_partial_tiles_undecided():
    """Contiguous documents: intervals decide every tile that is not partial, so elements are
    evaluated only in the partial ones."""
    k = compile_variant("examples/document_mask.py", target="cpu", shapes=dict(B=1, H=2, S=4096, D=16),
                        build=False)
    doc = np.sort(np.random.default_rng(3).integers(0, 12, 4096)).astype(np.int32)
    decided = classify(k.flash_op.region("mask"), [doc], 4096, 4096, 1, 2, 128, 64, dict(k.env))
    tiles = np.asarray(k.spec.runtime_tile_map([doc], 128, 64))
    assert ((decided == UNDECIDED) == (tiles == PARTIAL)).all()
    assert (tiles == EMPTY).sum() > 1000 and (tiles == FULL).any()


def test_an_op_without_a_rule_evaluates_every_element():
    def f(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"],
          w: Tensor["S", "f32"]):
        return attention(q, k, v, mask_mod=lambda b, h, i, j: tanh(w[j]) > 0.0)
    k = compile_variant(variant(f, name="tanh_mask"), target="cpu", shapes=dict(B=2, H=16, S=100, D=8), build=False)
    w = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    assert classify(k.flash_op.region("mask"), [w], 100, 100, 2, 16, 16, 16, dict(k.env)) is None
    fast, slow = _maps(k, [w], 16, 16)
    np.testing.assert_array_equal(fast, slow)
    assert (fast == PARTIAL).any()


def test_nan_in_a_float_capture_evaluates_every_element():
    k = _kernel("weights", 64)
    w = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    w[5] = np.nan
    assert classify(k.flash_op.region("mask"), [w], 64, 64, 2, 16, 16, 16, dict(k.env)) is None
    fast, slow = _maps(k, [w], 16, 16)
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("S", [16384])
def test_long_sequences_are_decided_without_the_elements(S):
    """At S=16k the element-by-element map took 0.18-0.24 s a call on this machine; the
    decided map evaluates only the partial tiles (the diagonal and the document ends)."""
    k = compile_variant("examples/document_mask.py", target="cpu", shapes=dict(B=1, H=2, S=S, D=16),
                        build=False)
    doc = np.sort(np.random.default_rng(4).integers(0, 16, S)).astype(np.int32)
    decided = classify(k.flash_op.region("mask"), [doc], S, S, 1, 2, 128, 128, dict(k.env))
    undecided = int((decided == UNDECIDED).sum())
    tiles = np.asarray(k.spec.runtime_tile_map([doc], 128, 128))
    assert undecided == int((tiles == PARTIAL).sum())       # the diagonal and the document ends
    assert undecided / decided.size < 0.03


def test_block_map_benchmark_runs_and_checks_both_maps(capsys):
    """benchmarks/block_map.py at a small length: both maps agree (it exits 1 otherwise) and it
    prints a row per mask."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("block_map", REPO / "benchmarks" / "block_map.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--S", "512", "--repeat", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.split()[:1] and
            line.split()[0] in ("documents=4", "documents=16", "documents=64", "bigbird")]
    assert len(rows) == 4 and all(line.split()[1] == "512" for line in rows)


def test_float32_arithmetic_rounds_as_the_reference():
    """Two float32 captures added round in float32, as the element evaluation rounds them:
    1 + 2^-24 is 1.0 there, so `w[i] + w[j] <= 1.0` keeps the pair (an interval computed in
    float64 would call that tile empty)."""
    def f(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"],
          w: Tensor["S", "f32"]):
        return attention(q, k, v, mask_mod=lambda b, h, i, j: w[i] + w[j] <= 1.0)
    k = compile_variant(variant(f, name="f32_sum"), target="cpu", shapes=dict(B=1, H=1, S=4, D=8), build=False)
    w = np.array([1.0, 2.0 ** -24, 3.0, 3.0], np.float32)
    fast, slow = _maps(k, [w], 1, 1)
    np.testing.assert_array_equal(fast, slow)
    assert slow[0, 1] == FULL
