"""The quantize pass on CPU: INT8 and FP8 (e4m3, e5m2) kernels against the quantized
reference (tolerance rule), their error against the unquantized reference within a
stated bound, and the reference's quantization itself."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from attncc.compiler import compile_variant, verify
from attncc.errors import PassError
from attncc.ir.types import DType
from attncc.reference import quantize

SHAPE = dict(B=1, Hq=4, Hkv=2, S=75, D=16)
# stated bounds on the max error vs the unquantized float64 reference for N(0, 1) inputs at
# SHAPE (causal GQA); measured ~0.04 (int8), ~0.1 (e4m3), ~0.3 (e5m2)
BOUND = {"int8": 0.15, "fp8": 0.3, "fp8_e5m2": 0.8}


@pytest.mark.parametrize("dtype", ["int8", "fp8", "fp8_e5m2"])
@pytest.mark.parametrize("granularity,pv", [("head", False), ("tensor", True), ("block", True)])
def test_quantized_kernel(dtype, granularity, pv):
    q = {"dtype": dtype, "granularity": granularity, "pv": pv}
    if granularity == "block":
        q["block"] = 16
    k = compile_variant("examples/causal_gqa.py", target="cpu", shapes=SHAPE, quantize=q)
    assert k.quantized
    rep = verify(k, seed=2)
    assert rep.passed, (rep.max_error, rep.tolerance, rep.lse_error, rep.lse_tolerance)
    assert rep.unquantized_error is not None and 0 < rep.unquantized_error < BOUND[dtype]


def test_fp8_zero_and_subnormals_are_exact():
    """TVM 0.27 converts fp8 zero and subnormals wrongly; the kernel decodes bits itself.
    Inputs with many exact zeros and tiny values would expose it."""
    k = compile_variant("examples/sdpa.py", target="cpu", shapes=dict(B=1, H=2, S=40, D=16),
                        quantize={"dtype": "fp8", "granularity": "tensor"})
    x = k.random_inputs(seed=3)
    # one large value sets a coarse per-tensor scale, so ordinary values land near the
    # bottom of the format and many are exactly zero
    x["q"][..., ::2] = 0.0
    x["q"][0, 0, 0, 0] = 60.0
    x["k"][..., 1::2] *= 1e-2
    x["k"][0, 0, 1, 2] = 60.0
    rep = verify(k, inputs=x)
    assert rep.passed, (rep.max_error, rep.tolerance, rep.lse_error, rep.lse_tolerance)


@pytest.mark.parametrize("dt,qmax", [(DType.i8, 127), (DType.f8e4m3, 448), (DType.f8e5m2, 57344)])
def test_reference_quantize_roundtrip(dt, qmax):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 10, 8)).astype(np.float32)
    for g in ("tensor", "head", "block"):
        xq, s = quantize(x, dt, g, 4)
        assert xq.dtype == dt.numpy
        deq = xq.astype(np.float32) * s
        # the largest magnitude of each group maps to the top of the range, and the error is
        # at most half a step of the format at that magnitude
        assert np.max(np.abs(xq.astype(np.float32))) == pytest.approx(qmax, rel=0.07)
        rel = 2.0 ** -(3 if dt == DType.f8e4m3 else 2 if dt == DType.f8e5m2 else 7)
        assert np.all(np.abs(deq - x) <= np.abs(x) * rel + s * (0.5 if dt == DType.i8 else 2.0 ** -9) + 1e-7)


def test_quantize_rejects_bad_options():
    with pytest.raises(PassError, match="unknown dtype"):
        compile_variant("examples/sdpa.py", target="cpu", shapes=dict(S=16, D=8), quantize={"dtype": "int4"},
                        build=False)
    with pytest.raises(PassError, match="granularity"):
        compile_variant("examples/sdpa.py", target="cpu", shapes=dict(S=16, D=8),
                        quantize={"dtype": "int8", "granularity": "row"}, build=False)
