"""Cycles and array utilization of attention on the simulated systolic accelerator (issue 8).

    python benchmarks/systolic.py [--S 1024,4096,16384] [--D 64,128] [--preset default] [--top 3]
    python benchmarks/systolic.py --exhaustive --S 1024 --D 64 --variants plain,causal

For plain (sdpa), causal and sliding-window (WINDOW = 256, examples/sliding_window.py)
attention, bf16, B=1, H=1, on a preset (default: the 128x128 one), prints the simulated
cycles, time at the preset's clock, array utilization (MACs / (R*C*cycles)), the busy
fraction of each unit and the tile density, for the target's default tiles and for tuned
tiles.  Tuning: every valid config of the systolic schedule family (block_q, block_k in
16..1024, dataflow ws/os, double buffering on/off; configs that overflow the scratchpad or
accumulator are rejected) is ranked by the family's analytic cost model and the best
``--top`` are simulated; the tuned config is the fastest simulated one (or the default, if
none beats it).

``--quant int8,fp8`` prints instead, at the target's default tiles, the bf16 kernel beside
the quantized ones (``--quantize DTYPE``, per-head scales, Q·Kᵀ only; add ``--quant-pv`` to
quantize P·V too): cycles, utilization, bytes loaded and the speedup over bf16.  INT8 runs
on the array at the bf16 rate (the simulator's assumption), FP8 is emulated (converted to
bf16 by the DMA), so the gain is the DMA's: 1 byte per q/k (and v) element.

Every number comes from the simulator executing the real schedule on random data (the
output is computed too).  ``--exhaustive`` simulates every valid config instead and prints
how well the cost model ranks them (Spearman correlation, best of its top ``--top``).  The array runs heads one after another, so cycles scale with B*H
and utilization does not: one head keeps the 16k runs short.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from attncc.compiler import compile_variant  # noqa: E402
from attncc.schedules import get_family  # noqa: E402
from attncc.schedules.space import SearchSpace  # noqa: E402
from attncc.targets import systolic  # noqa: E402

VARIANTS = {"plain": "examples/sdpa.py", "causal": "examples/causal_mha.py", "window": "examples/sliding_window.py"}


def fmt_cfg(c) -> str:
    return f"{c.block_q}x{c.block_k} {c.dataflow}{' db' if c.double_buffer else ''}"


def simulate(spec, config, options):
    built = systolic.build(spec, config, **options)
    t0 = time.perf_counter()
    systolic.measure(built, spec)
    return systolic.report(built), time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--S", default="1024,4096,16384")
    p.add_argument("--D", default="64,128")
    p.add_argument("--variants", default="plain,causal,window")
    p.add_argument("--preset", default="default")
    p.add_argument("--top", type=int, default=3, help="cost-model-ranked configs to simulate when tuning")
    p.add_argument("--exhaustive", action="store_true", help="simulate every valid config; check the cost model")
    p.add_argument("--quant", default="", help="compare bf16 with these quantized kernels (int8,fp8,fp8_e5m2) "
                   "at the default tiles")
    p.add_argument("--quant-pv", action="store_true", help="with --quant: quantize P·V too")
    args = p.parse_args(argv)
    if args.exhaustive:
        return exhaustive(args)
    if args.quant:
        return compare_quant(args)
    options = {"systolic_config": args.preset}
    hw = systolic.resolve(args.preset)
    fam = get_family("systolic")
    print(f"# attncc systolic benchmark  {datetime.date.today()}  simulator on {platform.node() or 'host'} "
          f"({platform.processor() or platform.machine()}); accelerator {hw.describe()}")
    print("# bf16, B=1 H=1 (cycles scale with B*H, utilization does not); util = MACs/(R*C*cycles); "
          "arr/vec/dma = busy fraction of each unit")
    head = (f"{'variant':7} {'S':>6} {'D':>4} {'tiles':>6} | {'default':>16} {'cycles':>11} {'us':>9} {'util':>5} "
            f"{'arr/vec/dma':>14} | {'tuned':>16} {'cycles':>11} {'us':>9} {'util':>5} {'arr/vec/dma':>14} | "
            f"{'x':>5} {'sim s':>6}")
    print(head)
    for S in (int(x) for x in args.S.split(",")):
        for D in (int(x) for x in args.D.split(",")):
            for name in args.variants.split(","):
                k = compile_variant(os.path.join(ROOT, VARIANTS[name]), target="systolic",
                                    shapes=dict(B=1, H=1, S=S, D=D), target_options=options, tuning_db=False,
                                    build=False)
                spec = k.spec
                wall = 0.0
                default = k.config
                rep_d, w = simulate(spec, default, options)
                wall += w
                space = SearchSpace("systolic", spec, options)
                ranked = sorted(space.valid_configs(), key=lambda c: fam.cost_model(spec, c, options))
                best, rep_b = default, rep_d
                for cfg in [c for c in ranked if c != default][:args.top]:
                    rep, w = simulate(spec, cfg, options)
                    wall += w
                    if rep["total_cycles"] < rep_b["total_cycles"]:
                        best, rep_b = cfg, rep

                def cols(r):
                    t = max(r["total_cycles"], 1)
                    b = r["busy_cycles"]
                    return (f"{r['total_cycles']:>11,} {r['seconds'] * 1e6:>9.1f} {r['array_utilization']:>5.3f} "
                            f"{b['array'] / t:>4.2f}/{b['vector'] / t:.2f}/{b['dma'] / t:.2f}")

                print(f"{name:7} {S:>6} {D:>4} {rep_d['tile_density']:>6.3f} | {fmt_cfg(default):>16} {cols(rep_d)} | "
                      f"{fmt_cfg(best):>16} {cols(rep_b)} | {rep_d['total_cycles'] / rep_b['total_cycles']:>5.2f} "
                      f"{wall:>6.1f}", flush=True)
    return 0


def compare_quant(args) -> int:
    options = {"systolic_config": args.preset}
    hw = systolic.resolve(args.preset)
    dtypes = [d for d in args.quant.split(",") if d]
    print(f"# attncc systolic quantization benchmark  {datetime.date.today()}  simulator on "
          f"{platform.node() or 'host'} ({platform.processor() or platform.machine()}); accelerator {hw.describe()}")
    print(f"# B=1 H=1, default tiles; quantized: per-head scales, {'Q·Kᵀ and P·V' if args.quant_pv else 'Q·Kᵀ'}; "
          "int8 MACs at the bf16 rate, fp8 emulated (bf16 on the array); util = MACs/(R*C*cycles); "
          "MB = bytes loaded; x = bf16 cycles / these cycles")
    head = f"{'variant':7} {'S':>6} {'D':>4} {'tiles':>16} | {'bf16 cycles':>11} {'util':>5} {'MB':>6}"
    for d in dtypes:
        head += f" | {d + ' cycles':>15} {'util':>5} {'MB':>6} {'x':>5}"
    print(head)
    for S in (int(x) for x in args.S.split(",")):
        for D in (int(x) for x in args.D.split(",")):
            for name in args.variants.split(","):
                row = None
                for d in [None] + dtypes:
                    q = {"dtype": d, "granularity": "head", "pv": args.quant_pv} if d else None
                    k = compile_variant(os.path.join(ROOT, VARIANTS[name]), target="systolic",
                                        shapes=dict(B=1, H=1, S=S, D=D), target_options=options, tuning_db=False,
                                        build=False, quantize=q)
                    rep, _ = simulate(k.spec, k.config, options)
                    cols = (f"{rep['total_cycles']:>{11 if d is None else 15},} {rep['array_utilization']:>5.3f} "
                            f"{rep['bytes_loaded'] / 1e6:>6.2f}")
                    if d is None:
                        base = rep["total_cycles"]
                        row = f"{name:7} {S:>6} {D:>4} {fmt_cfg(k.config):>16} | {cols}"
                    else:
                        row += f" | {cols} {base / rep['total_cycles']:>5.2f}"
                print(row, flush=True)
    return 0


def _ranks(xs):
    import numpy as np

    order = np.argsort(xs, kind="stable")
    r = np.empty(len(xs))
    r[order] = np.arange(len(xs))
    return r


def exhaustive(args) -> int:
    import numpy as np

    options = {"systolic_config": args.preset}
    fam = get_family("systolic")
    for S in (int(x) for x in args.S.split(",")):
        for D in (int(x) for x in args.D.split(",")):
            for name in args.variants.split(","):
                k = compile_variant(os.path.join(ROOT, VARIANTS[name]), target="systolic",
                                    shapes=dict(B=1, H=1, S=S, D=D), target_options=options, tuning_db=False,
                                    build=False)
                valid = SearchSpace("systolic", k.spec, options).valid_configs()
                t0 = time.perf_counter()
                sim = [simulate(k.spec, c, options)[0]["total_cycles"] for c in valid]
                model = [fam.cost_model(k.spec, c, options) for c in valid]
                rho = float(np.corrcoef(_ranks(sim), _ranks(model))[0, 1])
                best = int(np.argmin(sim))
                top = sorted(range(len(valid)), key=lambda i: model[i])[:args.top]
                top_best = min(sim[i] for i in top)
                print(f"{name} S={S} D={D}: {len(valid)} valid configs simulated in {time.perf_counter() - t0:.0f} s; "
                      f"best {sim[best]:,} cycles ({fmt_cfg(valid[best])}); cost model's top {args.top}: best "
                      f"{top_best:,} cycles ({top_best / sim[best]:.3f}x); Spearman rank correlation {rho:.3f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
