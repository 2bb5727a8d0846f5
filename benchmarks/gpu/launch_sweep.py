"""Time the in-order kernel's launch orders (``attncc.runtime._layouts.launch_order``) on the GPU
machine: the same kernels, only the table the host fills differs, so no rebuild is needed.

    python3 benchmarks/gpu/launch_sweep.py --dir .gpuR [--match RE] [--docs N ...]

Each setting is (base order, sorted tail in waves of LAUNCH_SLOTS blocks): base "head" is the
kernel's grid order (each head's query blocks, last first, a head after another), "rank" the
query blocks last first with every head of one before the next (the persistent kernel's rank
order); tail 0 is the base order alone, "all" sorts the whole launch heaviest first.  Each
setting runs ``attention.py --kind bench`` on the kernels that take a launch order
(build.py --only launch), so the table is the only thing that changes between the rows.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SETTINGS = (("head", 0), ("head", 2), ("head", 4), ("rank", 0), ("rank", 2), ("head", "all"))
# the second call's finer sweep around two waves (--fine)
FINE = (("head", 1), ("head", 1.5), ("head", 2), ("head", 2.5), ("head", 3))


def ordered(base: str, waves):
    """A ``launch_order`` with this base order and sorted tail."""
    def launch_order(row_cost, bhn, slots=None, tail_waves=None):
        from attncc.runtime import _layouts

        cost = np.asarray(row_cost)
        nqb, bhn = len(cost), int(bhn)
        rev = np.arange(nqb - 1, -1, -1, dtype=np.int64)
        if base == "head":
            qb, bh = np.tile(rev, bhn), np.repeat(np.arange(bhn, dtype=np.int64), nqb)
        else:
            qb, bh = np.repeat(rev, bhn), np.tile(np.arange(bhn, dtype=np.int64), nqb)
        slots = _layouts.LAUNCH_SLOTS if slots is None else int(slots)
        return _layouts.sort_tail(qb, bh, bhn, cost, len(qb) if waves == "all" else int(float(waves) * slots))
    return launch_order


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.join(ROOT, ".gpu"))
    ap.add_argument("--match", default=r"^spbench-(doc_mask|doc_causal|chunk_512)-(?!.*no_launch_order)")
    ap.add_argument("--docs", type=int, action="append", default=[])
    ap.add_argument("--fine", action="store_true", help="the settings FINE instead of SETTINGS")
    args = ap.parse_args(argv)

    import attention
    from attncc.runtime import _layouts

    for base, waves in FINE if args.fine else SETTINGS:
        _layouts.launch_order = ordered(base, waves)
        print(f"\n=== launch order: base {base}, sorted tail {waves} waves of {_layouts.LAUNCH_SLOTS}", flush=True)
        attention.main(["--dir", args.dir, "--kind", "bench", "--match", args.match]
                       + [x for n in args.docs for x in ("--docs", str(n))])


if __name__ == "__main__":
    main()
