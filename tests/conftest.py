"""Shared helpers of the test suite."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
DATA = TESTS / "data"

if str(REPO) not in sys.path:       # the suite runs from a checkout without an install too
    sys.path.insert(0, str(REPO))


def example_ids(paths) -> list[str]:
    return [p.stem for p in paths]
CHECK_INPUTS = sorted((TESTS / "filecheck").glob("*.attn"))


def hopper_gpu_available() -> bool:
    """A CUDA device of arch sm_90a that TVM can run on (the GPU tests skip cleanly without)."""
    try:
        import tvm

        from attncc.targets import cuda

        return bool(tvm.cuda(0).exist) and cuda.local_arch() == "sm_90a"
    except Exception:
        return False
