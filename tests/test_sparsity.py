"""prune-sparsity: the proven tile classification against brute force, and sparse
kernels (compile-time tables, runtime block masks) against the reference on CPU."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attncc.compiler import compile_variant, verify
from attncc.lang import Tensor, attention, variant
from attncc.passes import run_pipeline
from attncc.passes.prune_sparsity import (EMPTY, FULL, analyze_mask, brute_force_tiles, classify_tiles,
                                          density)
from attncc.reference import _Interp

SMALL = {"block_q": 16, "block_k": 16, "micro_vectors": 1}
PIPE = "canonicalize,fuse-attention,canonicalize,tile-online-softmax,prune-sparsity"


def _flash(fn, **shapes):
    v = variant(fn, name="m")
    f = run_pipeline(v.trace(), PIPE).func
    return next(op for op in f.ops if op.name == "attn.flash")


def _element_mask(op, env, S, T, captures=()):
    it = _Interp(env, "float64")
    keep = it.region(op.region("mask"), [np.int64(0), np.int64(0), np.arange(S).reshape(-1, 1),
                                         np.arange(T).reshape(1, -1)] + list(captures))
    return np.broadcast_to(keep, (S, T))


# ---------------------------------------------------------------------------------------------
# random affine masks: and/or/not of a*q_idx + b*kv_idx + c REL d (c may be T - S)

ATOM = st.tuples(st.integers(-2, 2), st.integers(-2, 2), st.integers(-40, 40), st.booleans(),
                 st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))


# chunked atoms: a*(q_idx // C) + b*(kv_idx // C) REL c
FATOM = st.tuples(st.integers(1, 9), st.integers(-2, 2), st.integers(-2, 2), st.integers(-3, 3),
                  st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))


def formula(depth):
    leaf = st.one_of(ATOM.map(lambda a: ("atom",) + a), FATOM.map(lambda a: ("fatom",) + a))
    if depth == 0:
        return leaf
    sub = formula(depth - 1)
    return st.one_of(leaf, st.tuples(st.sampled_from(["and", "or"]), sub, sub), st.tuples(st.just("not"), sub))


def build(node, i, j, offset):
    kind = node[0]
    if kind == "atom":
        _, a, b, c, use_offset, rel = node
        lhs = i * a + j * b
        rhs = c + offset if use_offset else c
        return {"<": lhs < rhs, "<=": lhs <= rhs, ">": lhs > rhs, ">=": lhs >= rhs, "==": lhs == rhs,
                "!=": lhs != rhs}[rel]
    if kind == "fatom":
        _, C, a, b, c, rel = node
        lhs = (i // C) * a + (j // C) * b
        return {"<": lhs < c, "<=": lhs <= c, ">": lhs > c, ">=": lhs >= c, "==": lhs == c, "!=": lhs != c}[rel]
    if kind == "not":
        return ~build(node[1], i, j, offset)
    x, y = build(node[1], i, j, offset), build(node[2], i, j, offset)
    return (x & y) if kind == "and" else (x | y)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(tree=formula(2), S=st.integers(1, 70), T=st.integers(1, 70), bq=st.sampled_from([1, 3, 8, 16, 32]),
       bk=st.sampled_from([1, 4, 5, 16, 32]))
def test_affine_classification_equals_brute_force(tree, S, T, bq, bk):
    def fn(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "T", "D"], v: Tensor["B", "H", "T", "D"]):
        Sd, Td = q.shape[2], k.shape[2]
        return attention(q, k, v, mask_mod=lambda b, h, i, j: build(tree, i, j, Td - Sd))
    op = _flash(fn)
    env = {"S": S, "T": T, "B": 1, "H": 1, "D": 4}
    node = analyze_mask(op.region("mask"))
    assert node is not None and node.decided(), node
    proven = classify_tiles(node, S, T, bq, bk, env)
    brute = brute_force_tiles(_element_mask(op, env, S, T), bq, bk)
    np.testing.assert_array_equal(proven, brute)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(stride=st.integers(2, 7), S=st.integers(1, 60), bq=st.sampled_from([4, 16]), bk=st.sampled_from([4, 16]))
def test_non_affine_parts_stay_sound(stride, S, bq, bk):
    """Strided (Sparse Transformer) masks use %: not affine, so only the causal part is
    proven; whatever is proven full or empty must be so element by element."""
    def fn(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
        return attention(q, k, v, mask_mod=lambda b, h, i, j: (j <= i) & (((i - j) % stride == 0) | (i - j < stride)))
    op = _flash(fn)
    assert op.attrs["sparsity"] == "bounded"
    env = {"S": S, "B": 1, "H": 1, "D": 4}
    proven = classify_tiles(analyze_mask(op.region("mask")), S, S, bq, bk, env)
    brute = brute_force_tiles(_element_mask(op, env, S, S), bq, bk)
    assert np.all(brute[proven == EMPTY] == EMPTY)
    assert np.all(brute[proven == FULL] == FULL)
    # the causal part is proven: everything above the diagonal blocks is empty
    for a in range(proven.shape[0]):
        for c in range(proven.shape[1]):
            if c * bk > min((a + 1) * bq, S) - 1:
                assert proven[a, c] == EMPTY


def test_sliding_window_density_is_the_band():
    def fn(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
        return attention(q, k, v, mask_mod=lambda b, h, i, j: (j <= i) & (i - j < 256))
    op = _flash(fn)
    tiles = classify_tiles(analyze_mask(op.region("mask")), 4096, 4096, 64, 64, {"S": 4096})
    # each 64-row block touches the 256-key window: 5 key blocks (4 full-ish + diagonal)
    assert tiles.shape == (64, 64)
    assert 4 / 64 < density(tiles) < 6 / 64


# ---------------------------------------------------------------------------------------------
# kernels

def _check(kernel, **kw):
    rep = verify(kernel, **kw)
    assert np.isfinite(rep.max_error)
    assert rep.passed, (rep.max_error, rep.tolerance, rep.lse_error, rep.lse_tolerance)
    return rep


@pytest.mark.parametrize("shape", [dict(B=1, H=2, S=200, D=16), dict(B=1, H=2, S=203, D=8)])
def test_prefix_lm_uses_the_block_table(shape):
    k = compile_variant("examples/prefix_lm.py", target="cpu", shapes=shape, config=SMALL)
    from attncc.targets.cpu import use_block_table
    assert use_block_table(k.spec)
    t = k.tiles()
    assert (t == EMPTY).any() and (t == FULL).any()
    _check(k)


def test_local_global_longformer():
    def fn(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"]):
        # local window of 16 both ways, plus 4 global tokens that see and are seen by all
        return attention(q, k, v, mask_mod=lambda b, h, i, j: ((i - j < 16) & (j - i < 16)) | (i < 4) | (j < 4))
    k = compile_variant(variant(fn, name="longformer"), target="cpu", shapes=dict(B=1, H=2, S=150, D=8),
                        config=SMALL)
    assert k.flash_op.attrs["sparsity"] == "affine"
    assert (k.tiles() == EMPTY).any()
    _check(k)


@pytest.mark.parametrize("S", [64, 131])
def test_document_mask_runtime_blocks(S):
    k = compile_variant("examples/document_mask.py", target="cpu", shapes=dict(B=1, H=2, S=S, D=16),
                        config=SMALL)
    rng = np.random.default_rng(S)
    inputs = k.random_inputs(seed=1)
    # contiguous documents: whole tiles are empty or full, and the per-call map says so
    inputs["doc"] = np.sort(rng.integers(0, 5, S)).astype(np.int32)
    tiles = k.spec.runtime_tile_map([inputs["doc"]], 16, 16)
    brute = brute_force_tiles(_element_mask(k.flash_op, k.env, S, S, [inputs["doc"]]), 16, 16)
    np.testing.assert_array_equal(tiles, brute)
    assert (tiles == EMPTY).any()
    _check(k, inputs=inputs)
    # random ids (tiles mostly partial) and a second call with other ids (no stale map)
    inputs["doc"] = rng.integers(0, 3, S).astype(np.int32)
    _check(k, inputs=inputs)


def _bigbird_layout(nb, rng, window=1, n_global=1, n_random=2):
    """BigBird's block pattern: a window of blocks around the diagonal, global first blocks
    (row and column), and n_random random blocks per row."""
    lay = np.zeros((nb, nb), np.int32)
    for r in range(nb):
        lay[r, max(0, r - window):r + window + 1] = 1
        lay[r, rng.choice(nb, size=min(n_random, nb), replace=False)] = 1
    lay[:n_global, :] = 1
    lay[:, :n_global] = 1
    return lay


@pytest.mark.parametrize("S", [512, 333])
def test_block_layout_runtime_blocks(S):
    """A user-given block layout (examples/block_sparse.py: 64 x 64 blocks, BigBird's pattern)
    read by the kernel as a runtime input: the per-call map of the kernel's own tiles (16 x 16
    here, not the layout's 64) equals the element-wise one, has empty tiles that the layout
    leaves out, and the kernel matches the reference; a second layout is not served a stale map."""
    k = compile_variant("examples/block_sparse.py", target="cpu", shapes=dict(B=1, H=2, S=S, D=16), config=SMALL)
    rng = np.random.default_rng(S)
    inputs = k.random_inputs(seed=2)
    for _ in range(2):
        full = np.zeros((64, 64), np.int32)
        nb = -(-S // 64)
        full[:nb, :nb] = _bigbird_layout(nb, rng)
        inputs["layout"] = full
        tiles = k.spec.runtime_tile_map([full], 16, 16)
        brute = brute_force_tiles(_element_mask(k.flash_op, k.env, S, S, [full]), 16, 16)
        np.testing.assert_array_equal(tiles, brute)
        # every 16 x 16 tile lies in one 64 x 64 block: empty or full, as the layout says
        # (partial only where the ragged end cuts a tile)
        want = np.repeat(np.repeat(full[:nb, :nb], 4, 0), 4, 1)[:tiles.shape[0], :tiles.shape[1]]
        assert ((tiles != EMPTY) == (want > 0)).all()
        assert 0.2 < (tiles != EMPTY).mean() < 0.9
        _check(k, inputs=inputs)


def test_document_mask_wrong_capture_shape_is_a_clear_error():
    from attncc.errors import ShapeError
    k = compile_variant("examples/document_mask.py", target="cpu", shapes=dict(B=1, H=1, S=32, D=8))
    x = k.random_inputs()
    with pytest.raises(ShapeError, match="doc"):
        k(x["q"], x["k"], x["v"], np.zeros(31, np.int32))
