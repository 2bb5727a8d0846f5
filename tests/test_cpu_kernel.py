"""The CPU (LLVM) flash-attention kernel against a float64 numpy reference.

Tolerance (FlashAttention's rule): the kernel's max error against float64 must be
at most twice the max error of a naive implementation in the kernel's precision,
plus an absolute floor of 1e-5.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import tirx  # noqa: E402

from attncc.errors import ConfigError, DTypeError  # noqa: E402
from attncc.targets import cpu  # noqa: E402
from attncc.targets.spec import FlashKernelSpec, KeyBounds  # noqa: E402

FLOOR = 1e-5


# --------------------------------------------------------------------------- reference


def attention_numpy(q, k, v, scale, score_mod=None, mask_mod=None, dtype=np.float64):
    """Naive softmax attention computed in ``dtype``; returns (out, lse).

    score_mod(s, b, h, i, j) and mask_mod(b, h, i, j) act on numpy arrays.
    """
    q, k, v = (np.asarray(x, dtype=np.float64).astype(dtype) for x in (q, k, v))
    B, H, S, _ = q.shape
    KVH, T = k.shape[1], k.shape[2]
    group = H // KVH
    kk = np.repeat(k, group, axis=1)
    vv = np.repeat(v, group, axis=1)
    s = np.einsum("bhid,bhjd->bhij", q, kk) * dtype(scale)
    b, h, i, j = np.meshgrid(np.arange(B), np.arange(H), np.arange(S), np.arange(T),
                             indexing="ij")
    if score_mod is not None:
        s = score_mod(s, b, h, i, j).astype(dtype)
    keep = np.ones(s.shape, bool)
    if mask_mod is not None:
        keep = np.broadcast_to(mask_mod(b, h, i, j), s.shape)
    s = np.where(keep, s, -np.inf)
    m = s.max(-1, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0).astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.where(keep, np.exp(s - m_safe), 0).astype(dtype)
    l = p.sum(-1, keepdims=True)
    out = np.einsum("bhij,bhjd->bhid", p, vv) / np.where(l > 0, l, 1)
    lsum = l[..., 0]
    lse = np.where(lsum > 0, m_safe[..., 0] + np.log(np.where(lsum > 0, lsum, 1)), -np.inf)
    return out, lse


def max_err(x, ref):
    x = np.asarray(x, np.float64)
    both_inf = np.isinf(x) & np.isinf(ref) & (np.sign(x) == np.sign(ref))
    with np.errstate(invalid="ignore"):
        diff = np.where(both_inf, 0.0, np.abs(x - ref))
    return float(np.max(diff)) if diff.size else 0.0


_BUILT = {}


def _build(spec, config=None):
    key = (spec, config)
    if key not in _BUILT:
        _BUILT[key] = cpu.build(spec, config)
    return _BUILT[key]


def check(spec, np_score=None, np_mask=None, config=None, seed=0, expect_masked_rows=None):
    rng = np.random.default_rng(seed)
    B, H, KVH = spec.batch, spec.q_heads, spec.kv_heads
    S, T, D, DV = spec.q_len, spec.kv_len, spec.head_dim, spec.head_dim_v
    np_dt = cpu._np_dtype(spec.dtype)
    q = rng.standard_normal((B, H, S, D)).astype(np_dt)
    k = rng.standard_normal((B, KVH, T, D)).astype(np_dt)
    v = rng.standard_normal((B, KVH, T, DV)).astype(np_dt)

    built = _build(spec, config)
    out, lse = cpu.run(built, q, k, v)
    assert out.dtype == np_dt and out.shape == (B, H, S, DV)
    assert lse.dtype == np.float32 and lse.shape == (B, H, S)
    assert not np.isnan(out.astype(np.float32)).any(), "NaN in out"
    assert not np.isnan(lse).any(), "NaN in lse"

    ref_out, ref_lse = attention_numpy(q, k, v, spec.scale, np_score, np_mask, np.float64)
    naive_out, naive_lse = attention_numpy(q, k, v, spec.scale, np_score, np_mask, np.float32)
    naive_out = naive_out.astype(np_dt)  # the naive kernel stores in the kernel's dtype
    out_tol = 2 * max_err(naive_out, ref_out) + FLOOR
    lse_tol = 2 * max_err(naive_lse, ref_lse) + FLOOR
    assert max_err(out, ref_out) <= out_tol, (max_err(out, ref_out), out_tol)
    assert max_err(lse, ref_lse) <= lse_tol, (max_err(lse, ref_lse), lse_tol)

    masked = np.isinf(ref_lse)
    assert np.array_equal(np.isneginf(lse), masked)
    if masked.any():
        assert np.all(out.astype(np.float32)[masked] == 0)
    if expect_masked_rows is not None:
        assert bool(masked.any()) == expect_masked_rows
    return out, lse


def make_spec(name="t", batch=1, q_heads=2, kv_heads=2, q_len=64, kv_len=64, head_dim=32,
              head_dim_v=None, dtype="float32", scale=None, **kw):
    return FlashKernelSpec(
        name=name, batch=batch, q_heads=q_heads, kv_heads=kv_heads, q_len=q_len, kv_len=kv_len,
        head_dim=head_dim, head_dim_v=head_dim if head_dim_v is None else head_dim_v,
        dtype=dtype, scale=head_dim ** -0.5 if scale is None else scale, **kw)


def causal(b, h, i, j):
    return j <= i


# --------------------------------------------------------------------------- tests


def test_plain():
    check(make_spec(batch=2, q_heads=3, kv_heads=3, q_len=128, kv_len=128, head_dim=64))


def test_causal():
    spec = make_spec(q_len=150, kv_len=150, head_dim=64, mask_mod=causal,
                     key_bounds=KeyBounds(upper_offset=0, exact=True))
    check(spec, np_mask=causal)


def test_causal_mask_without_key_bounds():
    check(make_spec(q_len=100, kv_len=100, mask_mod=causal), np_mask=causal)


def test_sliding_window_exact_bounds():
    W = 40

    def window(b, h, i, j):
        return (j <= i) & (j > i - W) if isinstance(i, np.ndarray) else \
            tirx.And(j <= i, j > i - W)

    spec = make_spec(q_len=300, kv_len=300, head_dim=64, mask_mod=window,
                     key_bounds=KeyBounds(lower_offset=-(W - 1), upper_offset=0, exact=True))
    check(spec, np_mask=window)


def test_gqa():
    spec = make_spec(batch=2, q_heads=8, kv_heads=2, q_len=70, kv_len=90, head_dim=32,
                     mask_mod=causal, key_bounds=KeyBounds(upper_offset=0, exact=True))
    check(spec, np_mask=causal)


def test_softcap():
    cap = 30.0
    spec = make_spec(q_len=96, kv_len=96, head_dim=64, scale=1.0,
                     score_mod=lambda s, b, h, i, j: cap * tirx.tanh(s / cap))
    check(spec, np_score=lambda s, b, h, i, j: cap * np.tanh(s / cap))


def test_alibi_causal():
    H = 4

    def tir_alibi(s, b, h, i, j):
        slope = tirx.const(1.0, "float32") / tirx.Cast("float32", h + 1)
        return s - slope * tirx.Cast("float32", i - j)

    def np_alibi(s, b, h, i, j):
        return s - (1.0 / (h + 1)) * (i - j)

    spec = make_spec(q_heads=H, kv_heads=H, q_len=80, kv_len=80, score_mod=tir_alibi,
                     mask_mod=causal, key_bounds=KeyBounds(upper_offset=0, exact=True))
    check(spec, np_score=np_alibi, np_mask=causal)


def test_cross_attention():
    check(make_spec(q_len=50, kv_len=200, head_dim=64, head_dim_v=48))


def test_cross_attention_causal_bottom_right_masks_first_rows():
    S, T = 131, 77

    def mask(b, h, i, j):
        return j <= i + (T - S)

    spec = make_spec(q_len=S, kv_len=T, mask_mod=mask,
                     key_bounds=KeyBounds(upper_offset=T - S, exact=True))
    check(spec, np_mask=mask, expect_masked_rows=True)


def test_ragged_shapes():
    check(make_spec(batch=2, q_len=77, kv_len=131, head_dim=40, head_dim_v=24))


def test_fully_masked_rows():
    def mask(b, h, i, j):
        if isinstance(i, np.ndarray):
            return (i % 3 != 0) & (j <= i)
        return tirx.And(i % 3 != 0, j <= i)

    spec = make_spec(q_len=70, kv_len=70, mask_mod=mask)
    out, lse = check(spec, np_mask=mask, expect_masked_rows=True)
    assert np.all(np.isneginf(lse[:, :, ::3]))
    assert np.all(out[:, :, ::3] == 0)


def test_mask_not_the_band():
    # key bounds are sound but not exact: document ids on top of causal.
    def mask(b, h, i, j):
        if isinstance(i, np.ndarray):
            return (j <= i) & (i // 24 == j // 24)
        return tirx.And(j <= i, tirx.floordiv(i, 24) == tirx.floordiv(j, 24))

    spec = make_spec(q_len=150, kv_len=150, mask_mod=mask,
                     key_bounds=KeyBounds(upper_offset=0, exact=False))
    check(spec, np_mask=mask)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs(dtype):
    spec = make_spec(q_len=77, kv_len=99, head_dim=64, dtype=dtype, mask_mod=causal,
                     key_bounds=KeyBounds(upper_offset=0, exact=True))
    check(spec, np_mask=causal)


@pytest.mark.parametrize("config", [
    cpu.CpuConfig(block_q=8, block_k=16, vector_width=8, micro_rows=2, micro_vectors=2),
    cpu.CpuConfig(block_q=48, block_k=32, vector_width=16, micro_rows=6, micro_vectors=2),
    cpu.CpuConfig(block_q=16, block_k=128, vector_width=4, micro_rows=4, micro_vectors=4),
])
def test_configs(config):
    spec = make_spec(q_len=77, kv_len=131, head_dim=40, mask_mod=causal,
                     key_bounds=KeyBounds(upper_offset=50, exact=False))

    def mask(b, h, i, j):
        return j <= i + 50

    spec = dataclasses.replace(spec, mask_mod=mask, key_bounds=KeyBounds(upper_offset=50,
                                                                          exact=True))
    cpu.validate_config(spec, config)
    check(spec, np_mask=mask, config=config)


def test_default_config_is_valid():
    for S in (1, 7, 64, 1000):
        spec = make_spec(q_len=S, kv_len=S + 3)
        cpu.validate_config(spec, cpu.default_config(spec))


@pytest.mark.parametrize("bad, reason", [
    (dict(block_q=30, micro_rows=4), "multiple of micro_rows"),
    (dict(block_k=40), "multiple of micro_vectors"),
    (dict(vector_width=12), "vector_width"),
    (dict(micro_rows=8, micro_vectors=8), "register"),
    (dict(block_q=0), "positive"),
])
def test_validate_config_rejects(bad, reason):
    spec = make_spec()
    config = dataclasses.replace(cpu.CpuConfig(), **bad)
    with pytest.raises(ConfigError, match=reason):
        cpu.validate_config(spec, config)
    with pytest.raises(ConfigError):
        cpu.lower(spec, config)


def test_unsupported_dtype():
    with pytest.raises(DTypeError, match="float64"):
        cpu.lower(make_spec(dtype="float64"), cpu.CpuConfig())


def test_config_is_hashable_and_frozen():
    c = cpu.CpuConfig()
    assert hash(c) == hash(cpu.CpuConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.block_q = 3  # type: ignore[misc]


def test_measure_returns_seconds():
    spec = make_spec(q_len=64, kv_len=64)
    t = cpu.measure(_build(spec), spec, repeat=3, warmup=1)
    assert 0 < t < 1.0


def test_bad_score_mod_is_a_target_error():
    from attncc.errors import TargetError

    spec = make_spec(score_mod=lambda s, b, h, i, j: "not an expression")
    with pytest.raises(TargetError):
        cpu.lower(spec, cpu.default_config(spec))
