"""What the 64 x 32 kernel's tile rate alone allows at the sparsest masks (issue 4, sixteenth pass).

    python benchmarks/gpu/floor.py benchmarks/gpu/results/floor-run40-{a,b}-2026-12-02.json

Reads the JSON that ``attention.py --kind bench --json`` wrote for ``build.py --only floor`` (one
or more passes; each time is the fastest over them) and prints, for every mask compile runs on the
64 x 32 kernel:

* budget: the issue's bar, 1.2 x (128 x 128 tile density) x the dense time of compile's default;
* floor: the mask's 64 x 32 tiles x the 64 x 32 kernel's own time a tile, from its dense run
  (unmasked for bands, which have no table; one document, every tile full and read from the
  table, for tile maps) -- the time with nothing but full-tile work paid;
* floor / budget: what is left of the budget for partial tiles, block starts and load latency;
* ms / floor: what the kernel pays above its tile work now.
"""

from __future__ import annotations

import argparse
import json
import sys

DENSE, SMALL = "128x128 s2", "64x32 s2"


def load(paths):
    rows = {}
    for p in paths:
        try:
            with open(p) as f:
                results = json.load(f)["results"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"floor.py: {p} is not a JSON of attention.py --json ({type(e).__name__}: {e})")
        for r in results:
            for x in r.get("sparse_rows", []):
                rows.setdefault((x["label"], x["cfg"]), []).append(x)
    return rows


def table(rows):
    """[(label, density128, density own, budget ms, floor ms, ms)] and the three dense times."""
    def best(label, cfg):
        if (label, cfg) not in rows:
            raise SystemExit(f"floor.py: no '{label}' run at {cfg} in the input: "
                             "it must come from build.py --only floor")
        return min(x["attncc_s"] for x in rows[(label, cfg)]) * 1e3

    dense, small, small_table = best("dense", DENSE), best("dense", SMALL), best("documents=1", SMALL)
    out = []
    for (label, cfg), xs in sorted(rows.items()):
        if label in ("dense", "documents=1"):
            continue
        x = xs[0]
        rate = small if x["mask"] == "window" else small_table
        out.append((label, x["density128"], x["density"], 1.2 * x["density128"] * dense, x["density"] * rate,
                    best(label, cfg)))
    return (dense, small, small_table), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="attention.py --json outputs of build.py --only floor")
    args = ap.parse_args(argv)
    (dense, small, small_table), rows = table(load(args.json))
    print(f"dense: compile's default {dense:.3f} ms, 64 x 32 unmasked {small:.3f} ms, "
          f"64 x 32 in table mode (one document) {small_table:.3f} ms")
    print(f"{'mask':<22}{'d128':>7}{'d64x32':>8}{'budget':>8}{'floor':>7}{'fl/bud':>7}{'ms':>7}{'ms/fl':>6}{'bm':>6}")
    for label, d128, d, budget, floor, ms in rows:
        print(f"{label:<22}{d128:>7.4f}{d:>8.4f}{budget:>8.3f}{floor:>7.3f}{floor / budget:>7.2f}{ms:>7.3f}"
              f"{ms / floor:>6.2f}{ms / (budget / 1.2):>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
