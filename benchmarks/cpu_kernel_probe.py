"""Probe: attncc CPU flash-attention kernel vs torch SDPA (fp32, CPU).

    python benchmarks/cpu_kernel_probe.py [--threads 2] [--seqs 1024,2048,4096] [--config k=v,...]

Prints GFLOP/s of both and the ratio, for causal and non-causal attention.
FLOPs = 4·B·H·S·T·D (halved for causal).  Each number is the best of --rounds
medians of --repeat calls (the same rule for both), to damp noisy neighbours.  TVM's thread pool size follows
TVM_NUM_THREADS, set here to --threads before TVM starts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--seqs", default="1024,2048,4096")
    ap.add_argument("--causal", default="0,1", help="comma list of 0/1")
    ap.add_argument("--config", default="", help="CpuConfig overrides, e.g. block_q=64,block_k=64")
    ap.add_argument("--repeat", type=int, default=7, help="calls per round (median taken)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per case (best median kept)")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()

    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

    import dataclasses

    import numpy as np

    from attncc.targets import cpu
    from attncc.targets.spec import FlashKernelSpec, KeyBounds

    torch = None
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)

    overrides = {}
    for item in filter(None, args.config.split(",")):
        key, value = item.split("=")
        overrides[key.strip()] = int(value)

    B, H, D = args.batch, args.heads, args.head_dim
    print(f"host target: {cpu.host_target()}  threads={args.threads}  B={B} H={H} D={D}")
    print(f"{'S':>6} {'causal':>6} {'attncc GF/s':>12} {'torch GF/s':>11} {'ratio':>6} "
          f"{'compile s':>9}  config")
    cases = [(int(S), bool(int(c))) for S in args.seqs.split(",") for c in args.causal.split(",")]
    # All attncc runs first, then all torch runs: torch's OpenMP workers spin after each
    # call and would steal the cores from TVM's thread pool if the two were interleaved.
    rows = []
    for S, causal in cases:
        spec = FlashKernelSpec(
            name="probe", batch=B, q_heads=H, kv_heads=H, q_len=S, kv_len=S, head_dim=D,
            head_dim_v=D, dtype="float32", scale=D ** -0.5,
            mask_mod=(lambda b, h, i, j: j <= i) if causal else None,
            key_bounds=KeyBounds(upper_offset=0, exact=True) if causal else KeyBounds(),
            description="causal" if causal else "full")
        config = dataclasses.replace(cpu.default_config(spec), **overrides)
        built = cpu.build(spec, config)
        flops = 4.0 * B * H * S * S * D * (0.5 if causal else 1.0)
        t_ours = min(cpu.measure(built, spec, repeat=args.repeat, warmup=1)
                     for _ in range(args.rounds))
        rows.append([S, causal, flops / t_ours / 1e9, float("nan"), built.compile_seconds, config])
        if len(rows) == 1:
            import re

            asm = built.mod.inspect_source("asm")
            fma = {w: len(re.findall(rf"vfmadd\w*ps\s+[^\n]*%{w}mm", asm)) for w in "zyx"}
            print(f"asm check: vector FMAs zmm={fma['z']} ymm={fma['y']} xmm={fma['x']}")
    if torch is not None:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        for row in rows:
            S, causal = row[0], row[1]
            flops = 4.0 * B * H * S * S * D * (0.5 if causal else 1.0)
            q, k, v = (torch.randn(B, H, S, D) for _ in range(3))
            for _ in range(2):
                sdpa(q, k, v, is_causal=causal)
            best = float("inf")
            for _ in range(args.rounds):
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    sdpa(q, k, v, is_causal=causal)
                    times.append(time.perf_counter() - t0)
                best = min(best, statistics.median(times))
            row[3] = flops / best / 1e9
    for S, causal, ours, theirs, compile_s, config in rows:
        print(f"{S:>6} {str(causal):>6} {ours:>12.1f} {theirs:>11.1f} {ours / theirs:>6.2f} "
              f"{compile_s:>9.2f}  {config}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
