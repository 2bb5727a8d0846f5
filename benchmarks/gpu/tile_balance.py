"""How evenly the persistent kernel's static tile orders spread the work over its thread blocks,
from the tile maps alone (no GPU): for the masks of the GPU density benchmark, the busiest
block's cost over the mean under each order.

    python benchmarks/gpu/tile_balance.py [--S 16384] [--H 16] [--blocks 132]

A tile of query block qb costs its non-empty 128 x 128 key blocks plus one (its Q load and
write-out); `_cuda_wgmma.ws_busiest_block` is the arithmetic the kernel's order follows.

- head: head-major round robin (block c runs tiles c, c + blocks, ...).
- cost: query blocks heaviest-first *by index* across all heads, blocks in a snake (what the
  kernel runs where ws_default_order picks it; exact where cost grows with the query block).
- ranked: the same snake over the query blocks ranked by their actual cost -- the kernel's
  "sorted" order (table mode) when the table's column holds the ranking.
- dealt: the tiles dealt on the host over the table's order column, a rank at a time, to the
  least loaded blocks (``_layouts.tile_schedule``: order "scheduled", the kernel's default in
  table mode since the fourteenth pass).
- spread: the key blocks that the query blocks running at once read (blocks / heads of them),
  ranked over plain order (`_layouts.key_spread`); over 2 (`ROW_ORDER_SPREAD`) the column holds
  the plain order instead (`_layouts.row_order`: "column" says which), since the ranking then
  interleaves documents and was measured slower (RESULTS.md, twelfth pass).

Document ids are attention.py's (`_doc_ids`: random lengths, seed 0), their map the one the
kernel gets per call (`spec.runtime_tile_map`).  Run 9 (RESULTS.md) measured the first two
orders on the H200, runs 11-12 the third.
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
from attncc.runtime._layouts import ROW_ORDER_SPREAD, key_spread, rank_rows, row_order  # noqa: E402
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


def tiles_of(name: str, S: int, H: int, docs=None) -> np.ndarray:
    """The 128 x 128 tile map of a benchmark mask (per call: of attention.py's document ids)."""
    k = compile_variant(VARIANTS, variant_name=name, target="cuda", dtype="bf16", shapes={"B": 1, "S": S, "H": H},
                        target_options={"arch": "sm_90a"}, build=False, tuning_db=False)
    if docs is None:
        return np.asarray(k.spec.tile_map(128, 128))
    return np.asarray(k.spec.runtime_tile_map([_doc_ids()(S, docs)], 128, 128))


def rows_of(name: str, S: int, H: int, docs=None) -> np.ndarray:
    return (tiles_of(name, S, H, docs) != 0).sum(axis=1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--S", type=int, default=16384)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=132)
    args = ap.parse_args(argv)
    print(f"# busiest thread block / mean, B=1 H={args.H} S={args.S}, 128 x 128 tiles, {args.blocks} blocks")
    print(f"{'mask':<22} {'density':>7} {'head':>6} {'cost':>6} {'ranked':>6} {'dealt':>6} {'spread':>6} column")
    for name, counts in MASKS:
        for n in counts or (None,):
            tiles = tiles_of(name, args.S, args.H, n)
            rows = (tiles != 0).sum(axis=1)
            est = [ws_busiest_block(o, rows, args.H, args.blocks) for o in ("head", "cost", "sorted")]
            est.append(ws_busiest_block("scheduled", rows, args.H, args.blocks,
                                        row_order(tiles, -(-min(args.blocks, len(rows) * args.H) // args.H))))
            window = -(-min(args.blocks, len(rows) * args.H) // args.H)
            spread = (key_spread(tiles, rank_rows(rows), window)
                      / key_spread(tiles, np.arange(len(rows) - 1, -1, -1), window))
            label = name + ("" if n is None else f" docs={n}")
            print(f"{label:<22} {rows.sum() / len(rows) ** 2:7.3f} " + " ".join(f"{e:6.3f}" for e in est)
                  + f" {spread:6.2f} {'plain' if spread > ROW_ORDER_SPREAD else 'ranked'}")


if __name__ == "__main__":
    main()
