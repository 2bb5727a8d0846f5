"""Every example in examples/ compiled for the CPU target and verified against the float64
reference of its unfused IR (attncc.compiler.compile_variant + verify), at two shapes:
one aligned to the block sizes and one ragged (S = 300: not a multiple of any block size,
and past sliding_window's WINDOW = 256, chunked's CHUNK = 256 and prefix_lm's PREFIX = 128,
so their masks bite)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import EXAMPLES, example_ids
from attncc.compiler import compile_variant, verify

# dims that a variant does not have are ignored; alibi's 8 heads are fixed in the file
SHAPES = {
    "aligned": dict(B=1, H=2, Hq=4, Hkv=2, S=128, T=64, D=32),
    "ragged": dict(B=2, H=1, Hq=6, Hkv=2, S=300, T=131, D=16),
}


def build(path, shape, dtype=None):
    from attncc.lang import load_variant
    symbols = load_variant(str(path)).trace().symbols()
    dims = {k: v for k, v in SHAPES[shape].items() if k in symbols}
    return compile_variant(str(path), target="cpu", shapes=dims, dtype=dtype)


def check(kernel):
    report = verify(kernel, seed=11)
    assert math.isfinite(report.max_error) and math.isfinite(report.lse_error), report
    assert report.passed, report
    return report


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("path", EXAMPLES, ids=example_ids(EXAMPLES))
def test_example_on_cpu(path, shape):
    kernel = build(path, shape)
    assert kernel.target_name == "cpu"
    check(kernel)
    # the kernel's own outputs have the documented shapes and no NaN
    inputs = kernel.random_inputs(seed=3)
    out, lse = kernel.run_inputs(inputs)
    q = inputs[kernel.flash_op.operands[0].hint]
    v = inputs[kernel.flash_op.operands[2].hint]
    assert out.shape == q.shape[:3] + v.shape[3:]
    assert lse.shape == q.shape[:3]
    assert not np.isnan(out).any() and not np.isnan(lse).any()


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("name", ["causal_gqa", "softcap"])
def test_example_on_cpu_16_bit(name, dtype):
    path = next(p for p in EXAMPLES if p.stem == name)
    kernel = build(path, "ragged", dtype)
    assert kernel.spec.dtype == {"bf16": "bfloat16", "f16": "float16"}[dtype]
    check(kernel)


def test_verify_catches_a_wrong_kernel():
    """The check has teeth: a kernel compared with another variant's reference fails."""
    causal = next(p for p in EXAMPLES if p.stem == "causal_mha")
    plain = next(p for p in EXAMPLES if p.stem == "sdpa")
    kernel = build(causal, "ragged")
    other = build(plain, "ragged")
    kernel.source_ir = other.source_ir            # the unmasked graph's reference
    assert not verify(kernel, seed=11).passed
