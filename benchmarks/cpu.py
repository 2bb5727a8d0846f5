"""attncc CPU kernels beside torch SDPA (CPU) and the numpy reference, in one run.

    python benchmarks/cpu.py [--quick]

fp32, D=64, B=1, H=8, S in {1024, 2048, 4096}, causal and not.  Prints GFLOP/s
(FLOPs = 4·B·H·S·T·D, times the fraction of (query, key) pairs a mask keeps) and
ratios, plus the cold compile time of one variant (a fresh process).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def _median_time(fn, repeat=7, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def cold_compile_seconds(example: str) -> tuple[float, float]:
    """(seconds to import attncc + TVM, seconds to compile) in a fresh process."""
    code = (
        "import time; t0=time.perf_counter();"
        "import attncc.compiler as c, tvm; t1=time.perf_counter();"
        f"k=c.compile_variant({example!r}, target='cpu', shapes={{'S': 1024}}); t2=time.perf_counter();"
        "print(t1-t0, t2-t1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    a, b = out.stdout.split()
    return float(a), float(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="S=1024 only")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from attncc.compiler import compile_variant
    from attncc.reference import evaluate

    torch.set_num_threads(args.threads)
    B, H, D = 1, 8, 64
    seqs = [1024] if args.quick else [1024, 2048, 4096]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# attncc CPU benchmark  {time.strftime('%Y-%m-%d')}  {cpu}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), fp32, B={B} H={H} D={D}")
    print(f"{'variant':<8} {'S':>5} | {'attncc':>8} {'torch':>8} {'numpy':>8} | {'vs torch':>8} {'vs numpy':>8}"
          f" | {'max err':>8}")
    # attncc and torch are timed in separate phases: torch's OpenMP workers keep spinning
    # for a while after each call and would steal both cores from the next attncc call
    # (and TVM's pool likewise from torch).  Each time is the best of 3 medians of 7 calls.
    cases = []
    for causal in (False, True):
        ex = os.path.join(ROOT, "examples", "causal_mha.py" if causal else "sdpa.py")
        for S in seqs:
            k = compile_variant(ex, target="cpu", shapes={"B": B, "H": H, "S": S, "D": D})
            inputs = k.random_inputs(seed=1)
            t_attncc = min(k.measure(repeat=7) for _ in range(3))
            cases.append((causal, S, k, inputs, t_attncc))
    time.sleep(1.0)
    rows = []
    for causal, S, k, inputs, t_attncc in cases:
        q, kk, v = (inputs[n] for n in ("q", "k", "v"))
        flops = k.flops()
        tq, tk, tv = (torch.from_numpy(x) for x in (q, kk, v))
        t_torch = min(_median_time(lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal))
                      for _ in range(3))
        out, _ = k(q, kk, v)
        ref_out = F.scaled_dot_product_attention(tq.double(), tk.double(), tv.double(), is_causal=causal)
        err = float(np.max(np.abs(out - ref_out.numpy())))
        reps = 1 if S >= 2048 else 2
        t_numpy = _median_time(lambda: evaluate(k.source_ir, inputs, "float64", k.env), repeat=reps, warmup=0)
        g = lambda t: flops / t / 1e9  # noqa: E731
        name = "causal" if causal else "full"
        print(f"{name:<8} {S:>5} | {g(t_attncc):>8.1f} {g(t_torch):>8.1f} {g(t_numpy):>8.1f} | "
              f"{t_torch / t_attncc:>7.2f}x {t_numpy / t_attncc:>7.1f}x | {err:>8.1e}", flush=True)
        rows.append((name, S, g(t_attncc), g(t_torch), t_torch / t_attncc))
    print("(GFLOP/s; 'vs torch' = torch time / attncc time, > 1 means attncc is faster)")
    imp, comp = cold_compile_seconds(os.path.join(ROOT, "examples", "causal_gqa.py"))
    print(f"cold compile of examples/causal_gqa.py (S=1024) in a fresh process: {comp:.2f} s "
          f"(plus {imp:.2f} s to import attncc and TVM)")
    worst = min(r[4] for r in rows)
    print(f"worst ratio vs torch SDPA: {worst:.2f}x")


if __name__ == "__main__":
    main()
