"""Time of masked kernels against the density of their non-empty tiles (CPU).

    python benchmarks/sparsity.py [--S 4096]

For sliding windows of several widths and document masks of several document
counts (plus causal), prints the tile density (non-empty tiles / all tiles, from
prune-sparsity's proof or, for document ids, from the per-call block map), the
measured time, and time / (density x dense time): 1.0 means the kernel costs exactly
its share of the dense kernel; the bar is <= 1.2.

GPU mode: the same study on the H100/H200 (bf16, D=128, H=16, S=16k; sliding windows 256-4096,
document masks of 2-32 documents) beside FlexAttention's BlockMask, and FP8 vs bf16, is built
here with ``python benchmarks/gpu/build.py --only sparse`` and run on the GPU machine by
``benchmarks/gpu/attention.py`` (it needs no TVM there; see benchmarks/gpu/README.md and the
"Sparsity and FP8" section of benchmarks/gpu/RESULTS.md).
"""


import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from attncc.compiler import compile_variant  # noqa: E402
from attncc.lang import Tensor, attention, variant  # noqa: E402
from attncc.targets.cpu import block_tables  # noqa: E402


def make(kind: str, param: int):
    Q = Tensor["B", "H", "S", "D"]

    if kind == "dense":
        def fn(q: Q, k: Q, v: Q):
            return attention(q, k, v)
    elif kind == "causal":
        def fn(q: Q, k: Q, v: Q):
            return attention(q, k, v, mask_mod=lambda b, h, i, j: j <= i)
    elif kind == "window":
        def fn(q: Q, k: Q, v: Q):
            return attention(q, k, v, mask_mod=lambda b, h, i, j: (j <= i) & (i - j < param))
    elif kind == "chunked":
        def fn(q: Q, k: Q, v: Q):
            return attention(q, k, v, mask_mod=lambda b, h, i, j: (i // param == j // param) & (j <= i))
    elif kind == "document":
        def fn(q: Q, k: Q, v: Q, doc: Tensor["S", "i32"]):
            return attention(q, k, v, mask_mod=lambda b, h, i, j: doc[i] == doc[j])
    else:
        raise ValueError(kind)
    return variant(fn, name=f"{kind}_{param}")


def kernel_call(kern, q, k, v, *captures):
    """The raw kernel call on preallocated TVM tensors (no host copies): what is timed."""
    import tvm
    built = kern.built
    args = [tvm.runtime.tensor(x) for x in (q, k, v)]
    spec = kern.spec
    args.append(tvm.runtime.tensor(np.empty((spec.batch, spec.q_heads, spec.q_len, spec.head_dim_v), np.float32)))
    args.append(tvm.runtime.tensor(np.empty((spec.batch, spec.q_heads, spec.q_len), np.float32)))
    args += built.extra_args(list(captures))
    fn = built.executable["main"]
    return lambda: fn(*args)


def timeit(fn, repeat=7):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--S", type=int, default=4096)
    ap.add_argument("--H", type=int, default=8)
    args = ap.parse_args()
    S, H, D = args.S, args.H, 64
    shapes = {"B": 1, "H": H, "S": S, "D": D}
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, H, S, D), dtype=np.float32) for _ in range(3))
    print(f"# attncc CPU sparsity benchmark  {time.strftime('%Y-%m-%d')}  fp32 B=1 H={H} S={S} D={D}, "
          f"{os.cpu_count()} cores")
    dense = compile_variant(make("dense", 0), target="cpu", shapes=shapes)
    t_dense = timeit(kernel_call(dense, q, k, v))
    print(f"{'mask':<16} {'density':>8} {'time ms':>9} {'ideal ms':>9} {'ratio':>6}")
    print(f"{'dense':<16} {1.0:>8.3f} {t_dense * 1e3:>9.2f} {t_dense * 1e3:>9.2f} {1.0:>6.2f}")
    rows = []
    cases = [("causal", 0)] + [("window", w) for w in (128, 256, 512, 1024)] + [("chunked", 512)] + \
            [("document", n) for n in (2, 4, 8, 16)]
    for kind, param in cases:
        kern = compile_variant(make(kind, param), target="cpu", shapes=shapes)
        bq, bk = kern.config.block_q, kern.config.block_k
        if kind == "document":
            doc = np.sort(rng.integers(0, param, S)).astype(np.int32)   # contiguous documents
            tiles = kern.spec.runtime_tile_map([doc], bq, bk)
            t = timeit(kernel_call(kern, q, k, v, doc))
            t_map = timeit(lambda: kern.spec.runtime_tile_map([doc], bq, bk), repeat=3)
            name = f"documents={param}"
        else:
            tiles = kern.tiles()
            t = timeit(kernel_call(kern, q, k, v))
            t_map = 0.0
            name = "causal" if kind == "causal" else f"{kind}={param}"
        density = float(np.mean(tiles != 0))
        ideal = density * t_dense
        ratio = t / ideal
        rows.append(ratio)
        extra = f"  (+ block map {t_map * 1e3:.1f} ms once per distinct ids)" if t_map else ""
        print(f"{name:<16} {density:>8.3f} {t * 1e3:>9.2f} {ideal * 1e3:>9.2f} {ratio:>6.2f}{extra}", flush=True)
    print(f"worst ratio: {max(rows):.2f} (bar: <= 1.2)")


if __name__ == "__main__":
    main()
