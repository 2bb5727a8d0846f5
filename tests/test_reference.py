"""The numpy oracle (attncc.reference) against an independent naive attention, its
fully-masked-row rule, its tolerance helpers, and the passes' preservation of meaning:
evaluating the IR after each pass (flash op, online softmax by key blocks) gives what
evaluating the IR before the passes gives, for every example."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import EXAMPLES, example_ids
from attncc.errors import ShapeError
from attncc.ir import parse_function, print_ir
from attncc.lang import Tensor, attention, load_variant, tanh, variant
from attncc.passes.pipeline import DEFAULT_PIPELINE, parse_pipeline, run_pipeline
from attncc.reference import evaluate, max_error, random_inputs, tolerance

# ----------------------------------------------------------------------------- an independent oracle


def naive_attention(q, k, v, scale, score_mod=None, mask_mod=None):
    """softmax(score_mod(scale q kᵀ) masked) v in float64, written from the definition
    (DESIGN.md / targets/spec.py), sharing nothing with attncc.reference.
    Returns (out, lse); rows with no kept key give zeros and -inf."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, H, S, _ = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    out = np.zeros((B, H, S, v.shape[3]))
    lse = np.full((B, H, S), -np.inf)
    for b in range(B):
        for h in range(H):
            hk = h // (H // Hkv)
            for i in range(S):
                s = [scale * float(q[b, h, i] @ k[b, hk, j]) for j in range(T)]
                if score_mod is not None:
                    s = [score_mod(s[j], b, h, i, j) for j in range(T)]
                kept = [j for j in range(T) if mask_mod is None or mask_mod(b, h, i, j)]
                if not kept:
                    continue
                m = max(s[j] for j in kept)
                w = {j: math.exp(s[j] - m) for j in kept}
                total = sum(w.values())
                out[b, h, i] = sum(w[j] * v[b, hk, j] for j in kept) / total
                lse[b, h, i] = m + math.log(total)
    return out, lse


def _causal(b, h, i, j, x=None):
    return j <= i


# example name -> (dims, score_mod, mask_mod) in plain Python, written from the files' docstrings;
# the mods take the inputs too (x), for masks that read runtime data (document ids)
EXAMPLE_SEMANTICS = {
    "sdpa": (dict(B=2, H=2, S=9, D=8), None, None),
    "causal_mha": (dict(B=1, H=2, S=11, D=8), None, _causal),
    "causal_gqa": (dict(B=1, Hq=4, Hkv=2, S=10, D=8), None, _causal),
    "cross_attention": (dict(B=1, H=2, S=7, T=13, D=8), None, None),
    "sliding_window": (dict(B=1, H=1, S=262, D=4), None, lambda b, h, i, j, x: j <= i and i - j < 256),
    "prefix_lm": (dict(B=1, H=1, S=133, D=4), None, lambda b, h, i, j, x: j <= i or j < 128),
    "softcap": (dict(B=1, H=2, S=9, D=8), lambda s, b, h, i, j, x: 50.0 * math.tanh(s / 50.0), _causal),
    "alibi": (dict(B=1, S=9, D=8), lambda s, b, h, i, j, x: s - 2.0 ** (-8.0 * (h + 1) / 8) * (i - j), _causal),
    "masked_softmax": (dict(B=1, H=2, S=9, D=8), None, _causal),
    "chunked": (dict(B=1, H=1, S=300, D=4), None, lambda b, h, i, j, x: i // 256 == j // 256 and j <= i),
    "document_mask": (dict(B=1, H=2, S=12, D=8), None,
                      lambda b, h, i, j, x: x["doc"][i] == x["doc"][j] and j <= i),
    "strided": (dict(B=1, H=1, S=600, D=4), None,
                lambda b, h, i, j, x: j <= i and (i - j < 128 or j % 256 == 255)),
    "local_global": (dict(B=1, H=1, S=600, D=4), None,
                     lambda b, h, i, j, x: (i - j < 256 and j - i < 256) or i < 64 or j < 64),
    "block_sparse": (dict(B=1, H=2, S=200, D=4), None,
                     lambda b, h, i, j, x: x["layout"][i // 64, j // 64] > 0),
}


def _bind(mod, inputs):
    return None if mod is None else (lambda *args: mod(*args, inputs))


def test_every_example_has_semantics_here():
    assert sorted(EXAMPLE_SEMANTICS) == sorted(p.stem for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=example_ids(EXAMPLES))
def test_reference_matches_naive_attention(path):
    dims, score_mod, mask_mod = EXAMPLE_SEMANTICS[path.stem]
    func = load_variant(str(path)).trace()
    env = {s: dims[s] for s in func.symbols()}
    inputs = random_inputs(func, env, seed=1)
    got = evaluate(func, inputs)
    q, k, v = (inputs[n] for n in "qkv")
    want, want_lse = naive_attention(q, k, v, 1 / math.sqrt(q.shape[3]), _bind(score_mod, inputs),
                                     _bind(mask_mod, inputs))
    assert got.outputs[0].shape == want.shape
    np.testing.assert_allclose(got.outputs[0], want, rtol=1e-10, atol=1e-12)
    if got.lse:      # a softmax written by hand (masked_softmax) defines no lse
        np.testing.assert_allclose(got.lse[0], want_lse, rtol=1e-10, atol=1e-12)


def _variant(fn, **defaults):
    return variant(fn, defaults=defaults)


def test_reference_gqa_cross_lengths_and_value_dim():
    """q [B, 6, S, D], k [B, 2, T, D], v [B, 2, T, E]: head mapping h -> h // 3, S != T, E != D."""
    def gqa(q, k, v):
        return attention(q, k, v, score_mod=lambda s, b, h, i, j: s * (1 + h) + 0.1 * (j - i),
                         mask_mod=lambda b, h, i, j: (j <= i + 2) | (h == 5))
    gqa.__annotations__ = {"q": Tensor["B", 6, "S", "D"], "k": Tensor["B", 2, "T", "D"],
                           "v": Tensor["B", 2, "T", "E"]}
    func = _variant(gqa).trace()
    env = dict(B=2, S=5, T=9, D=4, E=3)
    inputs = random_inputs(func, env, seed=3)
    got = evaluate(func, inputs)
    want, want_lse = naive_attention(inputs["q"], inputs["k"], inputs["v"], 0.5,
                                     lambda s, b, h, i, j: s * (1 + h) + 0.1 * (j - i),
                                     lambda b, h, i, j: j <= i + 2 or h == 5)
    np.testing.assert_allclose(got.outputs[0], want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.lse[0], want_lse, rtol=1e-10, atol=1e-12)


def test_reference_float64_ignores_input_precision_but_native_rounds():
    """float64 mode is the exact oracle for bf16 inputs too; native mode rounds like a
    naive bf16 kernel (probabilities rounded before the value matmul)."""
    path = next(p for p in EXAMPLES if p.stem == "causal_mha")
    func = load_variant(str(path)).trace("bf16")
    env = dict(B=1, H=2, S=12, D=8)
    inputs = random_inputs(func, env, seed=2)
    exact = evaluate(func, inputs, "float64")
    native = evaluate(func, inputs, "native")
    q, k, v = (np.asarray(inputs[n], np.float64) for n in "qkv")
    want, _ = naive_attention(q, k, v, 1 / math.sqrt(8), None, _causal)
    np.testing.assert_allclose(exact.outputs[0], want, rtol=1e-10, atol=1e-12)
    err = max_error(native.outputs[0], exact.outputs[0])
    assert 1e-5 < err < 5e-2, err          # bf16 rounding is visible, and small


# ----------------------------------------------------------------------------- fully masked rows

def _rows_masked_variant():
    """Row i keeps keys j > i + 2 and, for head 1, nothing at all past query 3."""
    def rows_masked(q, k, v):
        return attention(q, k, v, score_mod=lambda s, b, h, i, j: tanh(s) * 3.0,
                         mask_mod=lambda b, h, i, j: (j > i + 2) & ((h == 0) | (i < 3)))
    rows_masked.__annotations__ = {n: Tensor["B", "H", "S", "D"] for n in "qkv"}
    return _variant(rows_masked)


TILED = "canonicalize,fuse-attention,canonicalize,tile-online-softmax"


@pytest.mark.parametrize("passes", ["", "canonicalize", "canonicalize,fuse-attention", DEFAULT_PIPELINE,
                                    TILED + "{block_k=1}", TILED + "{block_k=3}"])
@pytest.mark.parametrize("precision", ["float64", "native"])
def test_fully_masked_rows_give_zeros_and_lse_minus_inf(passes, precision):
    func = _rows_masked_variant().trace()
    func = run_pipeline(parse_function(print_ir(func)), passes).func if passes else func
    S = 10
    env = dict(B=2, H=2, S=S, D=4)
    inputs = random_inputs(func, env, seed=4)
    res = evaluate(func, inputs, precision)
    out, lse = res.outputs[0], res.lse[0]
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    dead = np.zeros((2, 2, S), bool)
    dead[:, :, S - 3:] = True             # j > i + 2 leaves nothing for the last three rows
    dead[:, 1, 3:] = True                 # head 1 keeps nothing past query 3
    assert np.all(out[dead] == 0.0)
    assert np.all(np.isneginf(lse[dead]))
    assert np.all(np.isfinite(lse[~dead]))
    assert np.all(np.abs(out[~dead]).sum(axis=-1) > 0)
    q, k, v = (inputs[n] for n in "qkv")
    want, want_lse = naive_attention(q, k, v, 0.5, lambda s, b, h, i, j: math.tanh(s) * 3.0,
                                     lambda b, h, i, j: j > i + 2 and (h == 0 or i < 3))
    tol = 1e-10 if precision == "float64" else 1e-5
    np.testing.assert_allclose(out, want, atol=tol)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
    np.testing.assert_allclose(lse[~dead], want_lse[~dead], atol=tol)


def test_everything_masked():
    def nothing(q, k, v):
        return attention(q, k, v, mask_mod=lambda b, h, i, j: False)
    nothing.__annotations__ = {n: Tensor["B", "H", "S", "D"] for n in "qkv"}
    func = _variant(nothing).trace()
    for f in (func, run_pipeline(parse_function(print_ir(func))).func):
        res = evaluate(f, random_inputs(f, dict(B=1, H=2, S=5, D=4)))
        assert np.all(res.outputs[0] == 0) and np.all(np.isneginf(res.lse[0]))


# ----------------------------------------------------------------------------- passes preserve meaning

SMALL = dict(B=2, H=2, Hq=4, Hkv=2, S=37, T=29, D=8)
BIG_ENOUGH = {"sliding_window": dict(S=300), "prefix_lm": dict(S=150), "chunked": dict(S=300)}  # past the constants


def _env(path, func):
    dims = {**SMALL, **BIG_ENOUGH.get(path.stem, {})}
    return {s: dims[s] for s in func.symbols()}


@pytest.mark.parametrize("path", EXAMPLES, ids=example_ids(EXAMPLES))
def test_passes_preserve_meaning(path):
    source = load_variant(str(path)).trace()
    env = _env(path, source)
    inputs = random_inputs(source, env, seed=5)
    want = evaluate(source, inputs)
    func = parse_function(print_ir(source))
    lse_before = want.lse[0] if want.lse else None
    for p in parse_pipeline(DEFAULT_PIPELINE):
        func = p.apply(func)
        got = evaluate(func, inputs)
        assert max_error(got.outputs[0], want.outputs[0]) < 1e-12, f"after {p.spec()}"
        if lse_before is None and got.lse:
            lse_before = got.lse[0]         # hand-written softmax: the raised one defines the lse
        if got.lse:
            assert max_error(got.lse[0], lse_before) < 1e-12, f"lse after {p.spec()}"
    flash = [op for op in func.ops if op.name == "attn.flash"]
    assert len(flash) == 1 and flash[0].attrs["softmax"] == "online"


@pytest.mark.parametrize("block_k", [1, 7, 16, 64, 1000])
@pytest.mark.parametrize("path", EXAMPLES, ids=example_ids(EXAMPLES))
def test_online_softmax_by_key_blocks_equals_the_unfused_graph(path, block_k):
    """The tiled flash op evaluated block by block (block_k keys at a time, the last
    block partial) equals the unfused graph; so does the symbolic BK with a value."""
    source = load_variant(str(path)).trace()
    env = _env(path, source)
    inputs = random_inputs(source, env, seed=6)
    want = evaluate(source, inputs)
    tiled = run_pipeline(parse_function(print_ir(source)),
                         TILED + f"{{block_k={block_k}}}").func
    got = evaluate(tiled, inputs)
    assert max_error(got.outputs[0], want.outputs[0]) < 1e-12
    symbolic = run_pipeline(parse_function(print_ir(source))).func
    got = evaluate(symbolic, inputs, env={"BK": block_k, "BQ": 16})
    assert max_error(got.outputs[0], want.outputs[0]) < 1e-12


def test_online_softmax_gets_hard_rows_right():
    """Rows whose running max starts at -inf (leading masked blocks) and whose later
    blocks hold much larger scores than the first kept one."""
    def hard(q, k, v):
        return attention(q, k, v, score_mod=lambda s, b, h, i, j: s + 3.0 * j,
                         mask_mod=lambda b, h, i, j: (j >= i) & (j != i + 4))
    hard.__annotations__ = {n: Tensor["B", "H", "S", "D"] for n in "qkv"}
    source = _variant(hard).trace()
    inputs = random_inputs(source, dict(B=1, H=1, S=24, D=4), seed=7)
    want = evaluate(source, inputs)
    for bk in (1, 2, 5, 8):
        tiled = run_pipeline(parse_function(print_ir(source)),
                             f"canonicalize,fuse-attention,tile-online-softmax{{block_k={bk}}}").func
        got = evaluate(tiled, inputs)
        assert max_error(got.outputs[0], want.outputs[0]) < 1e-12, bk
        assert max_error(got.lse[0], want.lse[0]) < 1e-12, bk


# ----------------------------------------------------------------------------- helpers

def test_tolerance_rule():
    ref = np.array([1.0, 2.0, -np.inf])
    naive = np.array([1.0 + 1e-6, 2.0, -np.inf])
    assert tolerance(ref, naive) == pytest.approx(2e-6 + 1e-5)
    assert tolerance(ref, naive, floor=1e-3) == pytest.approx(2e-6 + 1e-3)
    assert tolerance(ref, ref) == pytest.approx(1e-5)


def test_max_error():
    ref = np.array([1.0, -np.inf, 0.0])
    assert max_error(np.array([1.5, -np.inf, 0.0]), ref) == 0.5
    assert max_error(np.array([1.0, np.nan, 0.0]), ref) == math.inf       # NaN is never close
    assert max_error(np.array([1.0, 0.0, 0.0]), ref) == math.inf          # -inf vs a number
    assert max_error(np.array([1.0, np.inf, 0.0]), ref) == math.inf       # +inf vs -inf


def test_inputs_must_agree_on_dimensions():
    path = next(p for p in EXAMPLES if p.stem == "sdpa")
    func = load_variant(str(path)).trace()
    inputs = random_inputs(func, dict(B=1, H=2, S=4, D=8))
    inputs["k"] = inputs["k"][:, :, :3]
    with pytest.raises(ShapeError, match="dimension S"):
        evaluate(func, inputs)
    with pytest.raises(ShapeError, match="missing input 'v'"):
        evaluate(func, {"q": inputs["q"], "k": inputs["q"]})
    with pytest.raises(ShapeError, match="rank 4"):
        evaluate(func, {**inputs, "k": inputs["q"][0]})
