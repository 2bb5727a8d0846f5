"""Where a flash kernel's time goes per query block, from Nsight Compute's SASS source page.

    ncu --clock-control none -k main_kernel --launch-count 1 --section SourceCounters \\
        --import-source no -o X python3 attention.py --dir D --kind bench --match ID [--docs N]
    ncu --import X.ncu-rep --page source --print-source sass --csv > X.sass.csv
    python benchmarks/gpu/ncu_blocks.py full.sass.csv:128 sw1024.sass.csv:8.7 ...

Each argument is a CSV (or .csv.gz), the mean number of key tiles a query block visits and
optionally the warps a thread block (default 8): ``PATH:TILES[:WARPS]``.  The
SASS listing carries, per instruction, the warp-level executions and the warp-state samples (a
sample is one warp, one cycle, so samples track time x resident warps).  An instruction that ran
at most once per block and warp (the kernel's first instruction runs exactly once: that count is
blocks x warps) is block code: the prologue, the peeled first and last steps of the key loop and
the write-out; the rest is the key loop.  Printed per kernel: the stall reasons, each contiguous
run of block or loop code with its samples per query block, and the loop's samples per step;
with a reference (the first argument, dense) the excess of the others over it, per block, in
reference steps.  (benchmarks/gpu/RESULTS.md, "Where a query block's time goes".)
"""

from __future__ import annotations

import collections
import csv
import gzip
import sys


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = list(csv.reader(f))
    hdr = rows[1]
    out = []
    for r in rows[2:]:
        if len(r) < len(hdr):
            continue
        d = dict(zip(hdr, r))
        try:
            int(d["Address"], 16)
        except ValueError:
            continue
        src = d["Source"].strip()
        words = src.split()
        op = words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else "")
        d.update(src=src, op=op, n=int(d["Instructions Executed"] or 0),
                 s=int(d["Warp Stall Sampling (All Samples)"] or 0))
        out.append(d)
    reasons = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    return out, reasons


def analyse(path, tiles):
    ins, reasons = load(path)
    per_bw = ins[0]["n"]                     # blocks x warps: the first instruction runs once a warp
    samples = sum(d["s"] for d in ins)
    segs = []
    for d in ins:
        block = d["n"] <= per_bw
        if not segs or segs[-1]["block"] != block:
            segs.append(dict(block=block, first=d["src"], s=0, n=0, why=collections.Counter()))
        seg = segs[-1]
        seg["s"] += d["s"]
        seg["n"] += d["n"]
        for h in reasons:
            seg["why"][h[6:]] += int(d[h] or 0)
    why = collections.Counter()
    for seg in segs:
        why.update(seg["why"])
    return dict(path=path, tiles=tiles, per_bw=per_bw, samples=samples, segs=segs, why=why,
                instr=sum(d["n"] for d in ins))


def report(k, blocks, ref=None):
    S = k["samples"]
    print(f"\n== {k['path']}: {k['tiles']:g} key tiles a block; {k['instr'] / k['per_bw']:.0f} warp instructions "
          f"a block and warp; {S} samples, {S / blocks:.2f} a block")
    print("   stalls: " + ", ".join(f"{r} {100 * v / S:.1f}%" for r, v in k["why"].most_common(8) if v))
    blk = sum(sg["s"] for sg in k["segs"] if sg["block"])
    loop = S - blk
    steps = max(k["tiles"] - 1, 1e-9)       # the loop runs tiles - 1 steps (the first is peeled)
    print(f"   block code: {blk / blocks:.2f} samples a block ({100 * blk / S:.1f}%); key loop: "
          f"{loop / blocks / steps:.3f} a step")
    for sg in k["segs"]:
        if sg["s"] >= 0.005 * S:
            print(f"     {'block' if sg['block'] else 'loop '} {sg['s'] / blocks:6.2f}/block  "
                  f"{sg['n'] / k['per_bw']:8.1f} instr/warp  {sg['first'][:34]:34s} "
                  + " ".join(f"{r}:{v}" for r, v in sg["why"].most_common(4)))
    if ref is not None:
        rstep = (ref["samples"] - sum(sg["s"] for sg in ref["segs"] if sg["block"])) / blocks / (ref["tiles"] - 1)
        rtile = ref["samples"] / blocks / ref["tiles"]
        rblk = sum(sg["s"] for sg in ref["segs"] if sg["block"]) / blocks
        mine = S / blocks
        print(f"   against {ref['path']}: {mine:.2f} samples a block = {mine / (rtile * k['tiles']):.2f} x "
              f"(tiles x its {rtile:.3f} a tile); loop step {loop / blocks / steps / rstep:.2f} x its step; "
              f"block code {blk / blocks:.2f} vs its {rblk:.2f} ({blk / blocks / rstep:.2f} vs "
              f"{rblk / rstep:.2f} of its steps)")


def main(argv=None):
    args = (argv if argv is not None else sys.argv[1:])
    if not args:
        print(__doc__)
        return 2
    kernels = []
    for a in args:
        path, tiles, *warps = a.split(":")
        kernels.append((analyse(path, float(tiles)), int(warps[0]) if warps else 8))
    for k, warps in kernels:
        report(k, k["per_bw"] / warps, kernels[0][0] if k is not kernels[0][0] else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
