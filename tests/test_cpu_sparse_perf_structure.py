"""The CPU kernel's fast paths for masked kernels at low tile density (issue 4).

``benchmarks/sparsity.py`` times them; these tests pin their structure on the generated
TIR (no timing: the machine is shared) and check every path they add against the
reference:

* pack_k transposes whole key blocks as vector_width x vector_width tiles in registers
  (``T.Shuffle``) instead of one load and one insert per float; a head_dim that is not a
  multiple of the vector width, FP8 keys and the ragged last key block take the
  element-wise loop;
* a gather from a captured tensor (``doc[kv_idx]``) is clamped into range by the
  front end; the kernel drops the clamp where the index is provably in range, so the
  keys' ids are one vector load instead of a load and an insert per lane;
* on a partial tile of an exact band (causal, sliding window) the two band comparisons
  are the whole mask: mask_mod is not evaluated a second time.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import tirx  # noqa: E402

from attncc.compiler import compile_variant, verify  # noqa: E402
from attncc.lang import Tensor, attention, variant  # noqa: E402
from attncc.targets import cpu  # noqa: E402
from attncc.targets.spec import FlashKernelSpec, KeyBounds  # noqa: E402

Q = Tensor["B", "H", "S", "D"]


def _spec(q_len=96, kv_len=128, head_dim=64, dtype="float32", **kw):
    return FlashKernelSpec(name="t", batch=1, q_heads=2, kv_heads=2, q_len=q_len, kv_len=kv_len,
                           head_dim=head_dim, head_dim_v=head_dim, dtype=dtype,
                           scale=head_dim ** -0.5, **kw)


def _config(vector_width, block_k=None):
    vecs = 2
    return cpu.CpuConfig(block_q=16, block_k=block_k or 2 * vector_width * vecs,
                         vector_width=vector_width, micro_rows=4, micro_vectors=vecs)


def _script(spec, config):
    return cpu.lower(spec, config)["main"].script()


def _check(kernel, **kw):
    rep = verify(kernel, **kw)
    assert rep.passed, (rep.max_error, rep.tolerance, rep.lse_error, rep.lse_tolerance)


# --------------------------------------------------------------------------- pack_k


@pytest.mark.parametrize("vector_width", [4, 8, 16])
def test_pack_k_transposes_whole_blocks_in_registers(vector_width):
    text = _script(_spec(), _config(vector_width))
    # log2(vw) rounds of vw two-vector shuffles per vw x vw tile, written once in the loop body
    rounds = int(np.log2(vector_width))
    assert text.count("T.Shuffle") == rounds * vector_width


def test_pack_k_falls_back_to_the_element_loop_for_a_ragged_head_dim():
    # head_dim 40 is no multiple of 16 lanes
    assert "T.Shuffle" not in _script(_spec(head_dim=40), _config(16))


@pytest.mark.parametrize("quant, shuffled", [("fp8", False), ("int8", True)])
def test_quantized_keys(quant, shuffled):
    # FP8 keys need the bit-exact scalar decode (element loop); int8 widens as vectors
    kern = compile_variant("examples/causal_gqa.py", target="cpu", shapes=dict(B=1, Hq=4, Hkv=2, S=100, D=64),
                           quantize={"dtype": quant, "granularity": "block"},
                           config={"vector_width": 16, "micro_vectors": 2, "block_k": 64})
    assert ("T.Shuffle" in _script(kern.spec, kern.config)) == shuffled
    _check(kern)


@pytest.mark.parametrize("vector_width, head_dim, seq, dtype", [
    (16, 64, 200, "float32"),     # ragged last key block: shuffle tiles + element loop
    (8, 40, 131, "float32"),
    (4, 32, 96, "float32"),
    (16, 64, 77, "float16"),
    (8, 64, 99, "bfloat16"),      # bf16 -> f32 widened by bits in the shuffle path
])
def test_packed_keys_match_the_reference(vector_width, head_dim, seq, dtype):
    def fn(q: Q, k: Q, v: Q):
        return attention(q, k, v, mask_mod=lambda b, h, i, j: j <= i)

    config = {"block_q": 16, "block_k": 2 * vector_width * 2, "vector_width": vector_width,
              "micro_rows": 4, "micro_vectors": 2}
    kern = compile_variant(variant(fn, name="causal"), target="cpu",
                           shapes=dict(B=1, H=2, S=seq, D=head_dim), config=config, dtype=dtype)
    _check(kern)


# --------------------------------------------------------------------------- gathers


def _documents():
    def fn(q: Q, k: Q, v: Q, doc: Tensor["S", "i32"]):
        return attention(q, k, v, mask_mod=lambda b, h, i, j: doc[i] == doc[j])
    return variant(fn, name="documents")


@pytest.mark.parametrize("seq, clamped", [(128, False), (131, True)])
def test_document_ids_of_keys_are_a_vector_load(seq, clamped):
    config = {"block_q": 16, "block_k": 32, "vector_width": 8, "micro_rows": 4, "micro_vectors": 2}
    kern = compile_variant(_documents(), target="cpu", shapes=dict(B=1, H=2, S=seq, D=16), config=config)
    loads = set(re.findall(r"doc\[[^\]]*\]", _script(kern.spec, kern.config)))
    assert loads, "the mask reads no document id"
    # in range (seq a multiple of both blocks): no clamp left; ragged: kept, and needed
    assert any("T.min" in ld for ld in loads) == clamped, loads
    rng = np.random.default_rng(seq)
    for ids in (np.sort(rng.integers(0, 5, seq)), rng.integers(0, 3, seq)):
        inputs = kern.random_inputs(seed=1)
        inputs["doc"] = ids.astype(np.int32)
        _check(kern, inputs=inputs)


# --------------------------------------------------------------------------- exact bands


def test_partial_tiles_of_an_exact_band_do_not_evaluate_mask_mod():
    def never(b, h, i, j):
        raise AssertionError("mask_mod evaluated although the band is the whole mask")

    spec = _spec(q_len=128, kv_len=128, mask_mod=never,
                 key_bounds=KeyBounds(lower_offset=-40, upper_offset=0, exact=True))
    _script(spec, _config(16))      # builds without calling mask_mod


def test_partial_tiles_of_an_inexact_band_evaluate_mask_mod():
    calls = []

    def mask(b, h, i, j):
        calls.append(1)
        return tirx.And(j <= i, tirx.floordiv(i, 24) == tirx.floordiv(j, 24))

    spec = _spec(q_len=128, kv_len=128, mask_mod=mask, key_bounds=KeyBounds(upper_offset=0, exact=False))
    _script(spec, _config(16))
    assert calls


def test_sliding_window_matches_the_reference():
    def fn(q: Q, k: Q, v: Q):
        return attention(q, k, v, mask_mod=lambda b, h, i, j: (j <= i) & (i - j < 40))

    kern = compile_variant(variant(fn, name="window"), target="cpu", shapes=dict(B=1, H=2, S=300, D=64))
    assert kern.spec.key_bounds.exact
    _check(kern)
