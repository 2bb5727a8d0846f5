"""How evenly the persistent kernel's static tile orders spread the work over its thread blocks,
from the tile maps alone (no GPU): for the masks of the GPU density benchmark, the busiest
block's cost over the mean under each order.

    python benchmarks/gpu/tile_balance.py [--S 16384] [--H 16] [--blocks 132]

A tile of query block qb costs its non-empty 128 x 128 key blocks plus one (its Q load and
write-out); `_cuda_wgmma.ws_busiest_block` is the arithmetic the kernel's order follows.

- head: head-major round robin (block c runs tiles c, c + blocks, ...).
- cost: query blocks heaviest-first *by index* across all heads, blocks in a snake (what the
  kernel runs where ws_default_order picks it; exact where cost grows with the query block).
- sorted: the same snake over the query blocks sorted by their actual cost -- what an order
  computed from the map (per call for documents) would reach; the kernel has no such order yet.

Document ids are attention.py's (`_doc_ids`: random lengths, seed 0), their map the one the
kernel gets per call (`spec.runtime_tile_map`).  Run 9 (RESULTS.md) measured the first two
orders on the H200; this script says how much a sorted order could still take off.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from attncc.compiler import compile_variant  # noqa: E402
from attncc.targets._cuda_wgmma import ws_busiest_block  # noqa: E402

VARIANTS = os.path.join(ROOT, "benchmarks", "gpu", "variants.py")
MASKS = (("causal", None), ("sw_1024", None), ("sw_4096", None), ("chunk_512", None), ("chunk_2048", None),
         ("doc_mask", (2, 4, 8, 16, 32, 64)), ("doc_causal", (4, 16, 32)))


def _doc_ids():
    """attention.py's document ids (loaded from its file: this folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_attention", os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "attention.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._doc_ids


def sorted_cost(rows: np.ndarray) -> np.ndarray:
    """The row costs re-indexed so that "cost" order (highest index first) meets them sorted."""
    return np.sort(rows)


def rows_of(name: str, S: int, H: int, docs=None) -> np.ndarray:
    k = compile_variant(VARIANTS, variant_name=name, target="cuda", dtype="bf16", shapes={"B": 1, "S": S, "H": H},
                        target_options={"arch": "sm_90a"}, build=False, tuning_db=False)
    if docs is None:
        tiles = k.spec.tile_map(128, 128)
    else:
        tiles = k.spec.runtime_tile_map([_doc_ids()(S, docs)], 128, 128)
    return (np.asarray(tiles) != 0).sum(axis=1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--S", type=int, default=16384)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=132)
    args = ap.parse_args(argv)
    print(f"# busiest thread block / mean, B=1 H={args.H} S={args.S}, 128 x 128 tiles, {args.blocks} blocks")
    print(f"{'mask':<22} {'density':>7} {'head':>6} {'cost':>6} {'sorted':>6}")
    for name, counts in MASKS:
        for n in counts or (None,):
            rows = rows_of(name, args.S, args.H, n)
            est = [ws_busiest_block(o, r, args.H, args.blocks)
                   for o, r in (("head", rows), ("cost", rows), ("cost", sorted_cost(rows)))]
            label = name + ("" if n is None else f" docs={n}")
            print(f"{label:<22} {rows.sum() / len(rows) ** 2:7.3f} " + " ".join(f"{e:6.3f}" for e in est))


if __name__ == "__main__":
    main()
