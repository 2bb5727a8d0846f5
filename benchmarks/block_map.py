"""Time to build the per-call block map of a data-dependent mask (issue 4's runtime block
masks): document ids and a BigBird block layout, at several sequence lengths.

Each call with new captured inputs classifies the kernel's tiles from the actual arrays
(``attncc.targets.lowering.runtime_tiles``, on the host, numpy).  This prints, side by side in
one run, the element-by-element map (every (q, kv) pair evaluated, as before), the map decided
by interval arithmetic over whole tiles and their sub-boxes (``attncc/targets/tile_intervals.py``:
elements only in small sub-boxes it cannot decide), and, where a CUDA device and torch's FlexAttention are present,
``create_block_mask`` for the same mask on the GPU -- FlexAttention's BlockMask, the peer.
Both attncc maps are checked equal; tiles are 128 x 128 (the Hopper kernel's).

    python benchmarks/block_map.py                       # S = 4k, 16k, 64k (64k: no element map)
    python benchmarks/block_map.py --S 16384 --repeat 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attncc.compiler import compile_variant  # noqa: E402
from attncc.lang import Tensor, attention, variant  # noqa: E402
from attncc.targets.lowering import runtime_tiles  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 128
LAYOUT_BLOCK = 64


def _layout_variant(nb: int):
    def block_sparse(q: Tensor["B", "H", "S", "D"], k: Tensor["B", "H", "S", "D"], v: Tensor["B", "H", "S", "D"],
                     layout: Tensor["NB", "NB", "i32"]):
        return attention(q, k, v, mask_mod=lambda b, h, i, j: layout[i // LAYOUT_BLOCK, j // LAYOUT_BLOCK] > 0)
    return variant(block_sparse, name="block_sparse")


def _bigbird(nb: int, rng) -> np.ndarray:
    lay = np.zeros((nb, nb), np.int32)
    for r in range(nb):
        lay[r, max(0, r - 1):r + 2] = 1
        lay[r, rng.choice(nb, size=min(3, nb), replace=False)] = 1
    lay[:2, :] = 1
    lay[:, :2] = 1
    return lay


def _best(f, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def _flex(kind: str, arr: np.ndarray, S: int, repeat: int):
    """create_block_mask on the GPU for the same mask (ms), or None without CUDA / flex."""
    try:
        import torch
        from torch.nn.attention.flex_attention import create_block_mask
    except Exception:
        return None
    if not torch.cuda.is_available():
        return None
    a = torch.from_numpy(arr).cuda()
    if kind == "documents":
        def mask(b, h, q, kv):
            return (a[q] == a[kv]) & (kv <= q)
    else:
        def mask(b, h, q, kv):
            return a[q // LAYOUT_BLOCK, kv // LAYOUT_BLOCK] > 0

    def run():
        create_block_mask(mask, None, None, S, S, device="cuda", BLOCK_SIZE=BLOCK)
        torch.cuda.synchronize()
    run()                                   # first call traces and compiles
    return _best(run, repeat) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--S", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--element-max", type=int, default=16384,
                    help="longest S whose element-by-element map is timed (it grows as S^2)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"# attncc per-call block map  {datetime.date.today()}  {platform.node() or 'host'}, "
          f"{os.cpu_count()} cores; {BLOCK} x {BLOCK} tiles; times: best of {args.repeat}")
    try:
        import torch
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        gpu = None
    print(f"# peer: FlexAttention create_block_mask on {gpu}" if gpu else "# peer: none here (no CUDA device)")
    print(f"{'mask':<16} {'S':>6} {'density':>8} {'element ms':>11} {'decided ms':>11} {'speedup':>8} "
          f"{'flex ms':>8} {'decided/flex':>12}")
    for S in args.S:
        cases = []
        doc_k = compile_variant(os.path.join(ROOT, "examples", "document_mask.py"), target="cpu",
                                shapes=dict(B=1, H=16, S=S, D=128), build=False)
        for nd in (4, 16, 64):
            doc = np.sort(rng.integers(0, nd, S)).astype(np.int32)
            cases.append((f"documents={nd}", "documents", doc_k, doc))
        nb = S // LAYOUT_BLOCK
        lay_k = compile_variant(_layout_variant(nb), target="cpu", shapes=dict(B=1, H=16, S=S, D=128, NB=nb),
                                build=False)
        cases.append(("bigbird", "layout", lay_k, _bigbird(nb, rng)))
        for name, kind, k, arr in cases:
            mask = k.flash_op.region("mask")
            env = dict(k.env)

            def decided():
                return runtime_tiles(mask, [arr], S, S, 1, 16, BLOCK, BLOCK, env)
            tiles = decided()
            t_dec = _best(decided, args.repeat) * 1e3
            t_el = None
            if S <= args.element_max:
                def element():
                    return runtime_tiles(mask, [arr], S, S, 1, 16, BLOCK, BLOCK, env, decide=False)
                slow = element()
                if not np.array_equal(slow, tiles):
                    print(f"{name} S={S}: the decided map differs from the element map", file=sys.stderr)
                    return 1
                t_el = _best(element, max(1, args.repeat - 1)) * 1e3
            t_flex = _flex(kind, arr, S, args.repeat)
            density = float(np.mean(tiles != 0))
            el = f"{t_el:11.1f}" if t_el is not None else f"{'-':>11}"
            sp = f"{t_el / t_dec:8.1f}" if t_el is not None else f"{'-':>8}"
            fl = f"{t_flex:8.2f}" if t_flex is not None else f"{'-':>8}"
            rt = f"{t_dec / t_flex:12.1f}" if t_flex is not None else f"{'-':>12}"
            print(f"{name:<16} {S:>6} {density:8.3f} {el} {t_dec:11.1f} {sp} {fl} {rt}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
