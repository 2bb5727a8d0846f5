"""Build the CUDA kernels for the GPU machine (run HERE, where TVM and nvcc are).

    python benchmarks/gpu/build.py --out .gpu/kernels [--arch sm_90a] [--only verify|bench|decode]

For every kernel it writes into --out:

    <id>.so     the TVM-exported module (host code + the CUDA source, compiled at load)
    <id>.json   the manifest: what it is (variant file and name, dtype, dims, config,
                q/k/v argument names, flops), and the nvcc resource report
and into --out/../fatbin/<sha256 of the CUDA source>.fatbin the source compiled here with
nvcc, so the GPU machine's tvm_callback_cuda_compile needs no compiler at load.

Kinds:
  verify  every examples/*.py, f16 and bf16, default dims and a ragged shape (dims not
          multiples of the blocks), plus the benchmark variants at D=128 (small, ragged) with
          non-default configs: checked on the GPU against the float64 numpy reference.
  bench   benchmarks/gpu/variants.py at the issue's shapes (bf16, D=128, H=16, B*S = 16k):
          timed on the GPU beside SDPA (cuDNN, FlashAttention-2) and FlexAttention; and decode
          (B=16, 32/8 heads, 4k and 32k keys, the split-KV kernel) timed as memory bandwidth
          beside SDPA and a device-to-device copy.
  --only decode builds only the decode kernels (verify and bench).
  --only sparse builds the issue-4 set: the wgmma kernel in table mode (compile-time block
          tables: chunked, prefix-LM, strided, local + global; runtime tile maps of document
          ids: captured tensors as kernel arguments) and with fp8 (e4m3/e5m2) Q·Kᵀ and P·V,
          verified; and the sparsity benchmark (sliding windows, document masks; bf16, D=128,
          H=16, S=16k; FlexAttention's BlockMask beside it) and fp8 vs bf16 TFLOP/s (S=4k, 16k).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from attncc.compiler import compile_variant  # noqa: E402
from attncc.targets import cuda  # noqa: E402

VARIANTS = os.path.join("benchmarks", "gpu", "variants.py")

# ragged dims per example dimension name (not multiples of any block size)
RAGGED = {"S": 333, "T": 517}


def _sets():
    """The named build sets (``--only NAME``) beyond verify / bench / decode."""
    return {"sparse": _sparse_entries, "lowdensity": _low_density_entries, "wide": _wide_entries,
            "fp8": _fp8_bench_entries, "pingtable": _ping_table_entries, "smalltiles": _small_tile_entries,
            "onewg": _one_warpgroup_entries, "lazy": _lazy_entries, "final": _final_entries,
            "stages": _stage_entries, "keys": _keys_entries, "sync": _sync_entries, "fp8pp": _fp8_pingpong_entries,
            "edges": _edge_entries, "unclamped": _unclamped_entries, "bulk": _bulk_entries,
            "session6": _session6_entries, "persistent": _persistent_entries, "persistent2": _persistent_ab_entries, "persistent3": _persistent_c_entries,
            "persistent4": _persistent_final_entries, "persistent5": _persistent_list_entries,
            "persistent6": _persistent_order_entries, "persistent7": _persistent_causal_entries,
            "persistent8": _persistent_causal_check_entries,
            "persistent9": _persistent_sorted_entries, "persistent10": _persistent_defer_entries,
            "persistent11": _persistent_final_table_entries, "unclamped2": _unclamped_small_entries,
            "rowlimits": _row_limit_entries, "rowlimits2": _row_limit_final_entries,
            "rowlimits3": _row_limit_fp8_entries, "rowlimits4": _row_limit_small_entries,
            "schedule": _schedule_entries, "schedule2": _schedule_final_entries,
            "bandpart": _band_part_entries, "launch": _launch_order_entries, "floor": _floor_entries,
            "listregs": _list_reg_entries, "quantsync": _quant_sync_entries}


def _entries(only):
    sets = _sets()
    if only in sets:
        return sets[only]()
    out = []
    if only in (None, "verify"):
        for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*.py"))):
            rel = os.path.relpath(path, ROOT)
            for dt in ("f16", "bf16"):
                out.append(dict(kind="verify", path=rel, name=None, dtype=dt, shapes={}, config=None))
                out.append(dict(kind="verify", path=rel, name=None, dtype=dt, shapes="ragged", config=None))
        small = {"B": 1, "S": 517}
        for name in ("full", "causal", "sliding_window", "alibi", "softcap", "gqa"):
            out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=small, config=None))
        # the other code paths of the kernel: Q in registers (8 warps x 1 row tile), 3 stages,
        # 4 warps x 1 tile, 8 warps x 2 tiles, 2 warps x 2 tiles, block_k 32 / 128, f16 at D=128
        for cfg in (dict(num_warps=8, q_in_registers=True), dict(num_stages=3), dict(block_q=64, num_warps=4),
                    dict(block_q=256, num_warps=8), dict(block_q=64, num_warps=2),
                    dict(block_k=32),
                    dict(block_k=128, num_warps=8), dict(block_q=64, num_warps=4, block_k=128, num_stages=3)):
            for name in ("causal", "sliding_window"):
                out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16",
                                shapes={"B": 1, "S": 700}, config=cfg))
        out.append(dict(kind="verify", path=VARIANTS, name="softcap", dtype="f16", shapes=small, config=None))
    if only in (None, "verify", "decode"):
        out.extend(_decode_verify_entries())
    if only in (None, "bench", "decode"):
        out.extend(_decode_bench_entries())
    if only in (None, "bench"):
        for s in (1024, 4096, 16384):
            for name in ("full", "causal"):
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16",
                                shapes={"B": 16384 // s, "S": s}, config=None))
        for name in ("sliding_window", "alibi", "softcap", "gqa"):
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16",
                            shapes={"B": 4, "S": 4096}, config=None))
        sweep = (dict(num_stages=3), dict(block_k=32), dict(block_q=256, num_warps=8),
                 dict(block_q=256, num_warps=8, block_k=32), dict(block_q=64, num_warps=2),
                 dict(block_q=128, num_warps=8, q_in_registers=True))
        for name in ("full", "causal"):
            for cfg in sweep:
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16",
                                shapes={"B": 4, "S": 4096}, config=cfg))
    out.extend(_wgmma_entries(only))
    return out


# the Hopper wgmma kernel (CudaConfig(mma="wgmma"), attncc/targets/_cuda_wgmma.py): 2 and
# 3 stages (cuda.default_config on sm_90a: 3, 2 with a score_mod), and a config sweep
WGMMA = dict(mma="wgmma", block_q=128, num_warps=8, block_k=128, num_stages=2)
WGMMA3 = dict(WGMMA, num_stages=3)
WGMMA_SWEEP = (dict(block_k=64), dict(block_k=96),
               dict(block_q=192, num_warps=12, block_k=64), dict(block_q=192, num_warps=12, block_k=64, num_stages=4),
               dict(block_q=192, num_warps=12, block_k=96), dict(block_q=64, num_warps=4, block_k=128))


def _wgmma_entries(only):
    """The wgmma kernel: every example and benchmark variant checked at 2 and 3 stages (ragged
    shapes, the other configs, f16), and the benchmark shapes timed (FlexAttention beside the
    2-stage entries at S=4k)."""
    out = []
    if only in (None, "verify"):
        for base in (WGMMA, WGMMA3):
            for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*.py"))):
                rel = os.path.relpath(path, ROOT)
                for dt, shapes in (("bf16", "ragged"), ("f16", {})):
                    out.append(dict(kind="verify", path=rel, name=None, dtype=dt, shapes=shapes, config=base))
            small = {"B": 1, "S": 517}
            for name in ("full", "causal", "sliding_window", "alibi", "softcap", "gqa"):
                out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=small, config=base))
            out.append(dict(kind="verify", path=VARIANTS, name="softcap", dtype="f16", shapes=small, config=base))
        for cfg in WGMMA_SWEEP:
            for name in ("causal", "sliding_window"):
                out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16",
                                shapes={"B": 1, "S": 700}, config=dict(WGMMA, **cfg)))
    if only in (None, "bench"):
        for base in (WGMMA, WGMMA3):
            for s in (1024, 4096, 16384):
                for name in ("full", "causal"):
                    out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16",
                                    shapes={"B": 16384 // s, "S": s}, config=base,
                                    flex=s == 4096 and base is WGMMA))
            for name in ("sliding_window", "alibi", "softcap", "gqa"):
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16",
                                shapes={"B": 4, "S": 4096}, config=base, flex=base is WGMMA))
        for name in ("full", "causal"):
            for cfg in WGMMA_SWEEP:
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16",
                                shapes={"B": 4, "S": 4096}, config=dict(WGMMA, **cfg)))
    return out


def _sparse_entries():
    """Issue 4 on the wgmma kernel: table mode, captured tensors, fp8 -- verified -- and the
    sparsity and fp8 benchmarks."""
    out = []

    def add(kind, path, name, dtype, shapes, config=None, quantize=None, **extra):
        out.append(dict(kind=kind, path=path, name=name, dtype=dtype, shapes=shapes,
                        config=dict(WGMMA, **(config or {})), quantize=quantize, **extra))

    # verify: every sparse example (table mode: compile-time tables; document ids: runtime)
    for ex in ("document_mask", "chunked", "prefix_lm", "strided", "local_global"):
        rel = os.path.join("examples", ex + ".py")
        add("verify", rel, None, "bf16", "ragged")
        add("verify", rel, None, "f16", {})
    # the other configs in table mode: 3 stages (P·V in flight), block_k 64, 3 warpgroups
    for cfg in (dict(num_stages=3), dict(block_k=64), dict(block_q=192, num_warps=12, block_k=64)):
        add("verify", "examples/document_mask.py", None, "bf16", {"S": 700}, cfg)
        add("verify", "examples/local_global.py", None, "bf16", {"S": 700}, cfg)
    small = {"B": 1, "S": 517}
    add("verify", VARIANTS, "doc_causal", "bf16", {"S": 700})
    add("verify", VARIANTS, "doc_mask", "bf16", {"S": 1100, "H": 4})
    # fp8: Q·Kᵀ only (per head), + P·V (per tensor), e5m2, per-block scales (k scale per key),
    # fp8 with a runtime block mask, with a score_mod (softcap), and with 3 stages
    fp8 = dict(dtype="fp8", granularity="head")
    add("verify", VARIANTS, "causal", "bf16", small, quantize=fp8)
    add("verify", VARIANTS, "causal", "bf16", small, quantize=dict(dtype="fp8", granularity="tensor", pv=True))
    add("verify", VARIANTS, "full", "bf16", {"B": 2, "S": 700}, quantize=dict(fp8, pv=True))
    add("verify", VARIANTS, "causal", "bf16", small, quantize=dict(dtype="fp8_e5m2", granularity="head", pv=True))
    add("verify", VARIANTS, "causal", "bf16", small, quantize=dict(dtype="fp8", granularity="block", block=64))
    add("verify", VARIANTS, "gqa", "bf16", {"B": 1, "S": 333}, quantize=dict(fp8, pv=True))
    add("verify", VARIANTS, "softcap", "f16", small, quantize=dict(fp8, pv=True))
    add("verify", VARIANTS, "doc_causal", "bf16", {"S": 700}, quantize=dict(fp8, pv=True))
    add("verify", VARIANTS, "causal", "bf16", {"B": 1, "S": 700}, dict(num_stages=3), quantize=dict(fp8, pv=True))
    # bench: density scaling at S=16k (B=1, H=16, D=128, bf16)
    s16 = {"B": 1, "S": 16384}
    add("bench", VARIANTS, "full", "bf16", s16, sparse=dict(mask="full"))
    add("bench", VARIANTS, "causal", "bf16", s16, sparse=dict(mask="causal"))
    for w in (256, 1024, 4096):
        add("bench", VARIANTS, f"sw_{w}", "bf16", s16, sparse=dict(mask="window", window=w))
    add("bench", VARIANTS, "doc_mask", "bf16", s16, sparse=dict(mask="document", docs=[2, 4, 8, 16, 32]))
    add("bench", VARIANTS, "doc_causal", "bf16", s16, sparse=dict(mask="document_causal", docs=[4, 16]))
    # (run 2 also timed these masks with block_k 64: not better; the results stay in RESULTS.md)
    # the same masks with 64 x 64 tiles and one warpgroup (block_q 64, num_warps 4, 2 stages:
    # 82 KB of shared memory and 128 registers, so two blocks share an SM and one's start and
    # write-out overlap the other's key loop)
    two = dict(block_q=64, num_warps=4, block_k=64, num_stages=2)
    add("bench", VARIANTS, "full", "bf16", s16, two, sparse=dict(mask="full"))
    for w in (256, 1024):
        add("bench", VARIANTS, f"sw_{w}", "bf16", s16, two, sparse=dict(mask="window", window=w))
    add("bench", VARIANTS, "doc_mask", "bf16", s16, two, sparse=dict(mask="document", docs=[8, 16, 32]))
    add("bench", VARIANTS, "doc_causal", "bf16", s16, two, sparse=dict(mask="document_causal", docs=[4, 16]))
    add("verify", "examples/document_mask.py", None, "bf16", {"S": 700}, two)
    add("verify", VARIANTS, "sw_256", "bf16", {"S": 1100, "H": 4}, two)
    # chained query blocks (query_blocks 2-4: a thread block runs several query blocks as one
    # stream of key tiles, the next block's loads under the current one's last tile and write-out)
    for qc in (2, 3, 4):
        ch = dict(num_stages=2, query_blocks=qc)
        add("verify", "examples/document_mask.py", None, "bf16", {"S": 700}, ch)
        add("verify", VARIANTS, "sw_256", "bf16", {"S": 1100, "H": 4}, ch)
        add("verify", VARIANTS, "late_keys", "bf16", {}, ch)         # query blocks without key blocks
    ch2 = dict(num_stages=2, query_blocks=2)
    add("verify", VARIANTS, "doc_causal", "bf16", {"S": 700}, ch2)
    add("verify", VARIANTS, "full", "bf16", {"B": 2, "S": 700}, ch2)
    add("verify", "examples/local_global.py", None, "bf16", {"S": 700}, dict(num_stages=2, query_blocks=3))
    add("verify", "examples/prefix_lm.py", None, "bf16", "ragged", ch2)
    add("verify", "examples/chunked.py", None, "f16", {}, ch2)
    add("verify", VARIANTS, "late_keys", "bf16", {})
    for qc in (2, 4):
        ch = dict(num_stages=2, query_blocks=qc)
        add("bench", VARIANTS, "full", "bf16", s16, ch, sparse=dict(mask="full"))
        for w in (256, 1024):
            add("bench", VARIANTS, f"sw_{w}", "bf16", s16, ch, sparse=dict(mask="window", window=w))
        add("bench", VARIANTS, "doc_mask", "bf16", s16, ch, sparse=dict(mask="document", docs=[8, 16, 32]))
        add("bench", VARIANTS, "doc_causal", "bf16", s16, ch, sparse=dict(mask="document_causal", docs=[4, 16]))
    # bench: fp8 vs bf16 TFLOP/s, full and causal at S=4k (B=4) and 16k (B=1)
    for s_ in (16384,):          # (S=4k: run 2)
        shp = {"B": 16384 // s_, "S": s_}
        for name in ("full", "causal"):
            add("bench", VARIANTS, name, "bf16", shp, fp8=dict(group=f"{name} S={s_}", mode="bf16"))
            add("bench", VARIANTS, name, "bf16", shp, quantize=fp8, fp8=dict(group=f"{name} S={s_}", mode="fp8 QK"))
            add("bench", VARIANTS, name, "bf16", shp, quantize=dict(fp8, pv=True),
                fp8=dict(group=f"{name} S={s_}", mode="fp8 QK+PV"))
    return out


# the density benchmark's masks (issue 4's final tables): variant name, attention.py's mask spec
DENSITY_MASKS = (("full", dict(mask="full")), ("causal", dict(mask="causal")),
                 ("sw_256", dict(mask="window", window=256)), ("sw_1024", dict(mask="window", window=1024)),
                 ("sw_4096", dict(mask="window", window=4096)),
                 ("doc_mask", dict(mask="document", docs=[2, 4, 8, 16, 32, 64])),
                 ("doc_causal", dict(mask="document_causal", docs=[4, 16, 32])),
                 ("chunk_512", dict(mask="chunk", label="chunked=512", chunk=512)),
                 ("chunk_2048", dict(mask="chunk", label="chunked=2048", chunk=2048)))


def _low_density_entries():
    """The low-density follow-up of the issue-4 set (its run 3): chained query blocks, two
    blocks per SM (64 x 64 tiles), the document-mask kernel after the eager-mask change, and
    a re-check of the table/fp8 kernels after the grid-order and tile-map-load changes."""
    out = []

    def add(kind, path, name, dtype, shapes, config=None, quantize=None, **extra):
        out.append(dict(kind=kind, path=path, name=name, dtype=dtype, shapes=shapes,
                        config=dict(WGMMA, **(config or {})), quantize=quantize, **extra))

    ex = lambda n: os.path.join("examples", n + ".py")      # noqa: E731
    for n in ("document_mask", "local_global", "strided", "chunked"):
        add("verify", ex(n), None, "bf16", "ragged")
    add("verify", ex("prefix_lm"), None, "f16", {})
    add("verify", ex("document_mask"), None, "bf16", {"S": 700}, dict(num_stages=3))
    add("verify", VARIANTS, "doc_causal", "bf16", {"S": 700})
    add("verify", VARIANTS, "doc_mask", "bf16", {"S": 1100, "H": 4})
    fp8 = dict(dtype="fp8", granularity="head")
    add("verify", VARIANTS, "causal", "bf16", {"B": 1, "S": 517}, quantize=fp8)
    add("verify", VARIANTS, "full", "bf16", {"B": 2, "S": 700}, quantize=dict(fp8, pv=True))
    add("verify", VARIANTS, "doc_causal", "bf16", {"S": 700}, quantize=dict(fp8, pv=True))
    ch = lambda qc: dict(num_stages=2, query_blocks=qc)     # noqa: E731
    add("verify", VARIANTS, "sw_256", "bf16", {"S": 1100, "H": 4}, ch(4))
    add("verify", VARIANTS, "late_keys", "bf16", {}, ch(3))     # query blocks without key blocks
    add("verify", VARIANTS, "late_keys", "bf16", {})
    add("verify", VARIANTS, "doc_causal", "bf16", {"S": 700}, ch(2))
    add("verify", ex("document_mask"), None, "bf16", {"S": 700}, ch(2))
    add("verify", ex("local_global"), None, "bf16", {"S": 700}, ch(3))
    add("verify", VARIANTS, "full", "bf16", {"B": 2, "S": 700}, ch(2))
    two = dict(block_q=64, num_warps=4, block_k=64, num_stages=2)
    add("verify", ex("document_mask"), None, "bf16", {"S": 700}, two)
    add("verify", VARIANTS, "sw_256", "bf16", {"S": 1100, "H": 4}, two)
    # band kernels (the element mask of an exact band is now its two comparisons only): the
    # wgmma and mma.sync kernels of the band examples
    for n in ("causal_mha", "sliding_window", "alibi", "softcap"):
        add("verify", ex(n), None, "bf16", "ragged")
    add("verify", ex("causal_gqa"), None, "f16", {})
    sync = dict(mma="sync", block_q=128, block_k=64, num_warps=4, num_stages=2, q_in_registers=True)
    add("verify", ex("causal_mha"), None, "bf16", "ragged", sync)
    add("verify", ex("sliding_window"), None, "f16", {}, sync)
    s16 = {"B": 1, "S": 16384}
    docs = dict(mask="document", docs=[8, 16, 32])
    cdocs = dict(mask="document_causal", docs=[4, 16])
    lows = ("sw_256", "sw_1024", "doc_mask", "doc_causal")
    for cfg, names in ((None, ("full", "causal", "sw_4096") + lows),
                       (dict(num_stages=3), ("full", "sw_4096") + lows),
                       (dict(block_k=64, num_stages=3), ("full",) + lows),
                       (dict(block_k=64, num_stages=4), ("full",) + lows),
                       (ch(4), ("sw_256",)),
                       (two, ("full",) + lows)):
        for n in names:
            sp = {"full": dict(mask="full"), "causal": dict(mask="causal"), "doc_mask": docs,
                  "doc_causal": cdocs}.get(
                n, dict(mask="window", window=int(n[3:]) if n.startswith("sw_") else 0))
            add("bench", VARIANTS, n, "bf16", s16, cfg, sparse=sp)
    # issue 3's causal and sliding-window benchmarks (S=4k, B=4, the tuned default config),
    # beside FlashAttention-2, cuDNN and FlexAttention, after the band-mask change
    for n in ("causal", "sliding_window"):
        out.append(dict(kind="bench", path=VARIANTS, name=n, dtype="bf16", shapes={"B": 4, "S": 4096},
                        config=None, flex=True))
    return out


def _wide_entries():
    """Tile shapes against the latency found at low density (ncu: 2 warps a scheduler): three
    warpgroups (block_q 192), 64 x 32 tiles (four blocks an SM) over the density range and on
    compile-time tile maps, and 64 x 64 tiles with chained query blocks.  Entries carry a tag
    (build.py --where static=True / range=True builds one group)."""
    out = []
    s16 = {"B": 1, "S": 16384}
    window = lambda w: dict(mask="window", window=w)                       # noqa: E731
    docs = lambda *n: dict(mask="document", docs=list(n))                  # noqa: E731
    cdocs = lambda *n: dict(mask="document_causal", docs=list(n))          # noqa: E731
    sparse_set = (("full", dict(mask="full")), ("sw_256", window(256)), ("doc_mask", docs(16, 32)),
                  ("doc_causal", cdocs(16)))

    def bench(cfg, cases, **tag):
        for n, sp in cases:
            out.append(dict(kind="bench", path=VARIANTS, name=n, dtype="bf16", shapes=s16,
                            config=dict(WGMMA, **cfg), sparse=sp, **tag))

    def verify(path, name, shapes, cfg, **tag):
        out.append(dict(kind="verify", path=path, name=name, dtype="bf16", shapes=shapes,
                        config=dict(WGMMA, **cfg), **tag))

    doc_example = os.path.join("examples", "document_mask.py")
    for cfg in (dict(block_q=192, num_warps=12, block_k=128, num_stages=2),
                dict(block_q=192, num_warps=12, block_k=64, num_stages=3)):
        bench(cfg, sparse_set[:2] + (("sw_1024", window(1024)),) + sparse_set[2:])
    # compile-time tile maps (chunked causal, 512- and 2048-token chunks) at 128 x 128 and 64 x 32
    k32 = dict(block_q=64, num_warps=4, block_k=32)
    for cfg in (dict(), dict(k32, num_stages=2)):
        bench(cfg, [(n, dict(mask="chunk", label=f"chunked={n[6:]}", chunk=int(n[6:])))
                    for n in ("chunk_512", "chunk_2048")] + [("full", dict(mask="full"))], static=True)
    for ex_ in ("chunked", "local_global", "strided"):
        verify(os.path.join("examples", ex_ + ".py"), None, {"S": 1000}, dict(k32, num_stages=2), static=True)
    # 64 x 32 tiles: 48-80 KB, up to 4 thread blocks (16 warps) an SM; the whole density range
    for st in (2, 3):
        bench(dict(k32, num_stages=st), (("causal", dict(mask="causal")), ("sw_1024", window(1024)),
                                         ("sw_4096", window(4096)), ("doc_mask", docs(2, 4, 8)),
                                         ("doc_causal", cdocs(4))), range=True)
    for st in (2, 4):
        bench(dict(k32, num_stages=st), sparse_set)
        verify(doc_example, None, {"S": 700}, dict(k32, num_stages=st))
        verify(VARIANTS, "sw_256", {"S": 1100, "H": 4}, dict(k32, num_stages=st))
    # two blocks an SM of 64 x 64 tiles, each chaining 2 or 4 query blocks
    for qc in (2, 4):
        cfg = dict(block_q=64, num_warps=4, block_k=64, num_stages=2, query_blocks=qc)
        bench(cfg, sparse_set)
        verify(doc_example, None, {"S": 700}, cfg)
    wide = dict(block_q=192, num_warps=12, block_k=128, num_stages=2)
    verify(VARIANTS, "sw_256", {"S": 1100, "H": 4}, wide)
    verify(doc_example, None, {"S": 700}, wide)
    return out


def _ping_table_entries():
    """Table mode (tile maps, document ids) on the ping-pong kernel (_cuda_wgmma.py; before: the
    sparse kernel's schedule without ping-pong): every table-mode example verified at the
    default config and the other tile shapes, and the density benchmark at 2 and 3 stages and
    64 x 32 beside the dense and band kernels of the same run."""
    out = []
    s16 = {"B": 1, "S": 16384}
    ex = lambda n: os.path.join("examples", n + ".py")      # noqa: E731

    def add(kind, path, name, dtype, shapes, cfg=None, **extra):
        out.append(dict(kind=kind, path=path, name=name, dtype=dtype, shapes=shapes,
                        config=None if cfg is None else dict(WGMMA, **cfg), **extra))

    for n in ("document_mask", "chunked", "prefix_lm", "strided", "local_global"):
        add("verify", ex(n), None, "bf16", "ragged")
        add("verify", ex(n), None, "f16", {})
    k32 = dict(block_q=64, num_warps=4, block_k=32, num_stages=2)
    for cfg in (dict(), dict(num_stages=3, block_k=64), dict(block_q=192, num_warps=12, block_k=64), k32,
                dict(k32, num_stages=4)):
        add("verify", ex("document_mask"), None, "bf16", {"S": 700}, cfg)
        add("verify", ex("local_global"), None, "bf16", {"S": 700}, cfg)
    add("verify", VARIANTS, "doc_causal", "bf16", {"S": 700})
    add("verify", VARIANTS, "doc_mask", "bf16", {"S": 1100, "H": 4})
    add("verify", VARIANTS, "late_keys", "bf16", {})
    add("verify", VARIANTS, "chunk_512", "bf16", {"S": 1100, "H": 4})
    docs = dict(mask="document", docs=[2, 4, 8, 16, 32])
    cdocs = dict(mask="document_causal", docs=[4, 16])
    chunk = lambda c: dict(mask="chunk", label=f"chunked={c}", chunk=c)    # noqa: E731
    add("bench", VARIANTS, "full", "bf16", s16, dict(), sparse=dict(mask="full"))
    add("bench", VARIANTS, "full", "bf16", s16, None, sparse=dict(mask="full"))
    add("bench", VARIANTS, "causal", "bf16", s16, None, sparse=dict(mask="causal"))
    for w in (256, 1024):
        add("bench", VARIANTS, f"sw_{w}", "bf16", s16, None, sparse=dict(mask="window", window=w))
    for cfg in (None, dict(), k32):        # the default (3 stages), 2 stages, 64 x 32
        add("bench", VARIANTS, "doc_mask", "bf16", s16, cfg, sparse=docs)
        add("bench", VARIANTS, "doc_causal", "bf16", s16, cfg, sparse=cdocs)
        for c in (512, 2048):
            add("bench", VARIANTS, f"chunk_{c}", "bf16", s16, cfg, sparse=chunk(c))
    return out


def _small_tile_entries():
    """The per-call choice of kernel for block masks computed from captured tensors
    (CudaConfig.small_below: 64 x 32 tiles for sparse calls), verified (both kernels of one
    module) and timed beside the single-kernel configs, with the dense, band and compile-time
    map kernels of the same run (the final time-vs-density table of issue 4)."""
    out = []
    s16 = {"B": 1, "S": 16384}

    def add(kind, path, name, shapes, cfg=None, **extra):
        out.append(dict(kind=kind, path=path, name=name, dtype="bf16", shapes=shapes,
                        config=None if cfg is None else dict(WGMMA, **cfg), **extra))

    add("verify", VARIANTS, "doc_mask", {"S": 4096, "H": 4})
    add("verify", VARIANTS, "doc_causal", {"S": 4096, "H": 2})
    add("verify", os.path.join("examples", "document_mask.py"), None, {"S": 4096})
    # the band kernels after table mode moved into their module (their source differs only in
    # where the key-block bounds are computed), and the compile-time maps at 64 x 32 (in order)
    for n in ("sdpa", "causal_mha", "sliding_window", "alibi", "softcap", "causal_gqa", "chunked", "local_global"):
        add("verify", os.path.join("examples", n + ".py"), None, "ragged")
    add("verify", VARIANTS, "chunk_512", {"S": 4096, "H": 2})
    k32 = dict(block_q=64, num_warps=4, block_k=32, num_stages=2)
    docs = dict(mask="document", docs=[2, 4, 8, 16, 32, 64])
    cdocs = dict(mask="document_causal", docs=[4, 16, 32])
    for cfg in (None, dict(), k32):            # the default (per-call choice), 128 x 128 only, 64 x 32 only
        add("bench", VARIANTS, "doc_mask", s16, cfg, sparse=docs)
        add("bench", VARIANTS, "doc_causal", s16, cfg, sparse=cdocs)
    add("bench", VARIANTS, "full", s16, dict(), sparse=dict(mask="full"))
    add("bench", VARIANTS, "full", s16, None, sparse=dict(mask="full"))
    add("bench", VARIANTS, "causal", s16, None, sparse=dict(mask="causal"))
    for w in (256, 1024, 4096):
        add("bench", VARIANTS, f"sw_{w}", s16, None, sparse=dict(mask="window", window=w))
    for c in (512, 2048):
        add("bench", VARIANTS, f"chunk_{c}", s16, None, sparse=dict(mask="chunk", label=f"chunked={c}", chunk=c))
    return out


def _one_warpgroup_entries():
    """64 x 32 tiles (one warpgroup) on the ping-pong kernel (with one warpgroup it overlaps
    S_j = Q K_j^T with P_{j-1} V_{j-1} but has no partner) against the in-order kernel of
    _cuda_wgmma_sparse (``route``: cuda._ROUTE), same run: bands, compile-time and per-call
    tile maps.  (Run 4 built the ping-pong side as route None, the rule then; the in-order one
    won on tile maps and is now the rule's pick for them.)"""
    out = []
    s16 = {"B": 1, "S": 16384}
    k32 = dict(WGMMA, block_q=64, num_warps=4, block_k=32, num_stages=2)
    for route in ("pingpong", "inorder"):
        for name, sp in (("doc_mask", dict(mask="document", docs=[16, 32, 64])),
                         ("doc_causal", dict(mask="document_causal", docs=[16, 32])),
                         ("sw_256", dict(mask="window", window=256)), ("sw_1024", dict(mask="window", window=1024)),
                         ("chunk_512", dict(mask="chunk", label="chunked=512", chunk=512))):
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=k32,
                            sparse=sp, route=route))
        out.append(dict(kind="verify", path=os.path.join("examples", "document_mask.py"), name=None, dtype="bf16",
                        shapes={"S": 700}, config=k32, route=route))
        out.append(dict(kind="verify", path=VARIANTS, name="sw_256", dtype="bf16", shapes={"S": 1100, "H": 4},
                        config=k32, route=route))
    out.append(dict(kind="bench", path=VARIANTS, name="full", dtype="bf16", shapes=s16, config=dict(WGMMA),
                    sparse=dict(mask="full")))
    return out


def _lazy_entries():
    """Lazy rescaling (``_OPTIONS["lazy_rescale"]`` of both wgmma modules: O rescaled only when a
    row's max grows by more than 2^8) against the default, same run, on the configs compile
    picks; and its verification on every kind of kernel it touches."""
    out = []
    s16 = {"B": 1, "S": 16384}
    lazy = {"lazy_rescale": True}
    ex = lambda n: os.path.join("examples", n + ".py")      # noqa: E731
    for opts in (None, lazy):
        for name, sp in (("full", dict(mask="full")), ("causal", dict(mask="causal")),
                         ("sw_256", dict(mask="window", window=256)), ("sw_1024", dict(mask="window", window=1024)),
                         ("doc_mask", dict(mask="document", docs=[4, 8, 16, 32, 64])),
                         ("doc_causal", dict(mask="document_causal", docs=[4, 16, 32])),
                         ("chunk_512", dict(mask="chunk", label="chunked=512", chunk=512))):
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None,
                            sparse=sp, options=opts))
        out.append(dict(kind="bench", path=VARIANTS, name="full", dtype="bf16", shapes=s16, config=dict(WGMMA),
                        sparse=dict(mask="full"), options=opts))
    for n in ("sdpa", "causal_mha", "sliding_window", "alibi", "softcap", "chunked", "local_global", "strided"):
        out.append(dict(kind="verify", path=ex(n), name=None, dtype="bf16", shapes="ragged", config=None, options=lazy))
    out.append(dict(kind="verify", path=ex("causal_gqa"), name=None, dtype="f16", shapes={}, config=None, options=lazy))
    for name, shapes in (("doc_mask", {"S": 4096, "H": 4}), ("doc_causal", {"S": 4096, "H": 2}), ("late_keys", {}),
                         ("sw_256", {"S": 4096, "H": 2})):
        out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=shapes, config=None, options=lazy))
    fp8 = dict(dtype="fp8", granularity="head")
    out.append(dict(kind="verify", path=VARIANTS, name="causal", dtype="bf16", shapes={"B": 1, "S": 517}, config=None,
                    quantize=fp8, options=lazy))
    out.append(dict(kind="verify", path=VARIANTS, name="doc_causal", dtype="bf16", shapes={"S": 700}, config=None,
                    quantize=dict(fp8, pv=True), options=lazy))
    out.append(dict(kind="verify", path=ex("document_mask"), name=None, dtype="bf16", shapes={"S": 700},
                    config=dict(WGMMA, query_blocks=2), options=lazy))
    out.append(dict(kind="verify", path=VARIANTS, name="causal", dtype="bf16", shapes={"B": 1, "S": 700},
                    config=dict(WGMMA, num_stages=3), quantize=fp8, options=lazy))
    return out


def _final_entries():
    """The last run of issue 4's third pass, with lazy rescaling on by default: the issue-3
    benchmark (FlashAttention-2, cuDNN, FlexAttention) on the configs compile picks (tuned
    records included), each beside the same config without lazy rescaling; and the
    time-vs-density table beside FlexAttention's BlockMask."""
    out = []
    base = {"lazy_rescale": False}
    for opts in (None, base):
        for s_ in (4096, 16384):
            for name in ("full", "causal"):
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16",
                                shapes={"B": 16384 // s_, "S": s_}, config=None, flex=True, options=opts))
        for name in ("sliding_window", "gqa", "alibi", "softcap"):
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes={"B": 4, "S": 4096},
                            config=None, flex=True, options=opts))
    s16 = {"B": 1, "S": 16384}
    for name, sp in DENSITY_MASKS:
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None, sparse=sp))
    for st in (2, 3):
        out.append(dict(kind="bench", path=VARIANTS, name="full", dtype="bf16", shapes=s16,
                        config=dict(WGMMA, num_stages=st), sparse=dict(mask="full")))
    return out


def _stage_entries():
    """2 vs 3 stages (lazy rescaling on): full, causal and GQA at S=4k (B=4) and 16k (B=1)."""
    return [dict(kind="bench", path=VARIANTS, name=n, dtype="bf16", shapes={"B": 16384 // s_, "S": s_},
                 config=dict(WGMMA, num_stages=st)) for n in ("full", "causal", "gqa")
            for s_ in (4096, 16384) for st in (2, 3)]


def _density_ab(option, names):
    """The density benchmark of the masks ``names`` (S=16k), each kernel beside the one with
    ``_OPTIONS[option]`` False, and the dense kernel once (the ratios' reference)."""
    s16 = {"B": 1, "S": 16384}
    return [dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None, sparse=sp,
                 options=opts) for opts in (None, {option: False}) for name, sp in DENSITY_MASKS if name in names] + [
        dict(kind="bench", path=VARIANTS, name="full", dtype="bf16", shapes=s16, config=None,
             sparse=dict(mask="full"))]


def _issue3_bench(opts, names=("full", "causal"), at_4k=("sliding_window",)):
    """Issue 3's benchmark shapes for an A/B set: ``names`` at S=1k/4k/16k (B*S = 16k) and
    ``at_4k`` at S=4k (B=4), with the kernels' ``options``."""
    out = [dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes={"B": 16384 // s_, "S": s_},
                config=None, options=opts) for s_ in (1024, 4096, 16384) for name in names]
    return out + [dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes={"B": 4, "S": 4096},
                       config=None, options=opts) for name in at_4k]


def _keys_entries():
    """K/V tile loads without clamp or zero fill where the key length is a multiple of block_k
    (``KEYS_EXACT`` of both wgmma modules): every kind of kernel it changes verified (the examples
    at their default dims, fp8 Q·Kᵀ and P·V, per-call 64 x 32, 12 warps, chained blocks), and
    issue 3's and issue 4's benchmarks (the configs compile picks, fp8 beside bf16) each beside the
    same kernel with the clamped loads (``keys_exact`` False), same run."""
    out = []
    ex = lambda n: os.path.join("examples", n + ".py")      # noqa: E731
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*.py"))):
        for dt in ("f16", "bf16"):
            out.append(dict(kind="verify", path=os.path.relpath(path, ROOT), name=None, dtype=dt, shapes={},
                            config=None))
    fp8 = dict(dtype="fp8", granularity="head")
    for name, shapes, quant, cfg in (
            ("causal", {"B": 1, "S": 1024}, fp8, None),
            ("full", {"B": 2, "S": 1024}, dict(fp8, pv=True), None),
            ("doc_causal", {"S": 1024}, dict(fp8, pv=True), None),
            ("doc_mask", {"S": 4096, "H": 4}, None, None),
            ("sw_256", {"S": 4096, "H": 2}, None, None),
            ("full", {"B": 1, "S": 1024}, None, dict(WGMMA, block_q=192, num_warps=12, block_k=64)),
            ("gqa", {"B": 1, "S": 1024}, None, None)):
        out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=shapes, config=cfg,
                        quantize=quant))
    out.append(dict(kind="verify", path=ex("document_mask"), name=None, dtype="bf16", shapes={"S": 1024},
                    config=dict(WGMMA, query_blocks=2)))
    s16 = {"B": 1, "S": 16384}
    for opts in (None, {"keys_exact": False}):
        out.extend(_issue3_bench(opts, at_4k=("sliding_window", "gqa")))
        for name, sp in DENSITY_MASKS:
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None,
                            sparse=sp, options=opts))
        for s_ in (4096, 16384):
            shp = {"B": 16384 // s_, "S": s_}
            for name in ("full", "causal"):
                for mode, quant in (("bf16", None), ("fp8 QK", fp8), ("fp8 QK+PV", dict(fp8, pv=True))):
                    out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=shp,
                                    config=None, quantize=quant, options=opts,
                                    fp8=dict(group=f"{name} S={s_}{'' if opts is None else ' clamped'}",
                                             mode=mode)))
    return out


def _sync_entries():
    """Table mode and captured tensors on the mma.sync kernel (sm_80 and up; before, it masked
    every tile of a mask that is no band and refused document ids), run on the H200 with the
    config sm_80 picks for document masks: every table-mode example verified (ragged and default
    dims, other tile shapes, query blocks without keys), and the density benchmark against that
    kernel's own dense time."""
    out = []
    sync = dict(mma="sync", block_q=128, block_k=64, num_warps=4, num_stages=2, q_in_registers=False)
    ex = lambda n: os.path.join("examples", n + ".py")      # noqa: E731
    for n in ("document_mask", "chunked", "prefix_lm", "strided", "local_global"):
        out.append(dict(kind="verify", path=ex(n), name=None, dtype="bf16", shapes="ragged", config=sync))
        out.append(dict(kind="verify", path=ex(n), name=None, dtype="f16", shapes={}, config=sync))
    for cfg in (dict(sync, num_stages=3), dict(sync, block_q=64, num_warps=4, q_in_registers=True),
                dict(sync, block_k=32, num_warps=8)):
        out.append(dict(kind="verify", path=ex("document_mask"), name=None, dtype="bf16", shapes={"S": 700}, config=cfg))
    for name, shapes in (("doc_causal", {"S": 700}), ("doc_mask", {"S": 1100, "H": 4}), ("late_keys", {}),
                         ("chunk_512", {"S": 1100, "H": 4})):
        out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=shapes, config=sync))
    s16 = {"B": 1, "S": 16384}
    for name, sp in DENSITY_MASKS:
        if name not in ("sw_256", "sw_4096"):
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=sync, sparse=sp))
    return out


def _quant_sync_entries():
    """int8 and fp8 inputs on the mma.sync kernel (the kernel sm_80 and sm_89 run; built for
    sm_90a here so the H200 runs it): every quantized code path verified -- int8 and fp8 Q·Kᵀ
    per head, tensor and block (a k scale per key), fp8 P·V (e4m3 P, V transposed on the host),
    e5m2, GQA, ragged dims, a runtime document mask and a compile-time tile map, a band, a
    score_mod, f16, 3 stages, Q in registers, block_k 32 -- and TFLOP/s beside the same kernel in
    bf16 at D=128."""
    out = []
    sync = dict(mma="sync", block_q=128, block_k=64, num_warps=4, num_stages=2, q_in_registers=False)
    ex = lambda n: os.path.join("examples", n + ".py")      # noqa: E731
    i8 = dict(dtype="int8", granularity="head")
    f8 = dict(dtype="fp8", granularity="head")
    for quant in (i8, dict(i8, granularity="tensor"), dict(i8, granularity="block", block=32),
                  f8, dict(f8, granularity="block", block=64), dict(f8, granularity="tensor", pv=True),
                  dict(f8, pv=True), dict(dtype="fp8_e5m2", granularity="head", pv=True)):
        out.append(dict(kind="verify", path=ex("causal_gqa"), name=None, dtype="bf16", shapes={}, config=sync,
                        quantize=quant))
    for quant in (i8, dict(f8, pv=True)):
        out.append(dict(kind="verify", path=ex("causal_gqa"), name=None, dtype="bf16", shapes="ragged", config=sync,
                        quantize=quant))
        out.append(dict(kind="verify", path=ex("document_mask"), name=None, dtype="bf16", shapes={"S": 700},
                        config=sync, quantize=quant))
        out.append(dict(kind="verify", path=ex("prefix_lm"), name=None, dtype="f16", shapes={}, config=sync,
                        quantize=quant))
        out.append(dict(kind="verify", path=ex("sliding_window"), name=None, dtype="bf16", shapes="ragged",
                        config=sync, quantize=quant))
        out.append(dict(kind="verify", path=VARIANTS, name="softcap", dtype="bf16", shapes={"B": 1, "S": 517},
                        config=sync, quantize=quant))
        for cfg in (dict(sync, num_stages=3), dict(sync, num_warps=8, q_in_registers=True),
                    dict(sync, block_k=32, num_warps=8)):
            out.append(dict(kind="verify", path=VARIANTS, name="causal", dtype="bf16", shapes={"B": 1, "S": 700},
                            config=cfg, quantize=quant))
    # the block-layout example (a 2-D runtime input read by the mask) on both kernels, and int8
    for cfg, quant in ((None, None), (sync, None), (sync, i8)):
        out.append(dict(kind="verify", path=ex("block_sparse"), name=None, dtype="bf16", shapes={"S": 700},
                        config=cfg, quantize=quant))
    # (benchmarks: one m16 row tile a warp, Q in registers -- no spills in any of the four modes;
    # two a warp spill at D=128, bf16 included)
    wide = dict(sync, num_warps=8, q_in_registers=True)
    for s_ in (4096, 16384):
        shp = {"B": 16384 // s_, "S": s_}
        for name in ("full", "causal"):
            for mode, quant in (("bf16", None), ("int8 QK", i8), ("fp8 QK", f8), ("fp8 QK+PV", dict(f8, pv=True))):
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=shp, config=wide,
                                quantize=quant, fp8=dict(group=f"{name} S={s_}", mode=mode + " sync")))
    return out


def _fp8_bench_entries():
    """fp8 (e4m3, per-head scales) Q·Kᵀ and Q·Kᵀ + P·V beside bf16: full and causal at S=4k (B=4)
    and S=16k (B=1), the configs compile picks."""
    out = []
    fp8 = dict(dtype="fp8", granularity="head")
    for s_ in (4096, 16384):
        shp = {"B": 16384 // s_, "S": s_}
        for name in ("full", "causal"):
            for mode, quant in (("bf16", None), ("fp8 QK", fp8), ("fp8 QK+PV", dict(fp8, pv=True))):
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=shp, config=None,
                                quantize=quant, fp8=dict(group=f"{name} S={s_}", mode=mode)))
    return out


def _fp8_pingpong_entries():
    """fp8 on the ping-pong kernel (``_cuda_wgmma``; before, fp8 ran on the in-order kernel of
    ``_cuda_wgmma_sparse``): every fp8 code path verified -- Q·Kᵀ per head, + P·V per tensor,
    ragged dims, e5m2, per-block scales (a k scale per key), GQA, a score_mod (softcap: warpgroups
    in step), a runtime document mask and a compile-time tile map, 3 stages, a band -- and the
    fp8 vs bf16 benchmark, each fp8 kernel beside the in-order one (``cuda_route`` fp8=inorder,
    the kernel compile picked before), same run."""
    out = []
    fp8 = dict(dtype="fp8", granularity="head")
    small = {"B": 1, "S": 517}
    for name, dt, shapes, quant, cfg in (
            ("causal", "bf16", small, fp8, None),
            ("causal", "bf16", small, dict(dtype="fp8", granularity="tensor", pv=True), None),
            ("full", "bf16", {"B": 2, "S": 700}, dict(fp8, pv=True), None),
            ("full", "f16", {"B": 1, "S": 1024}, fp8, None),
            ("causal", "bf16", small, dict(dtype="fp8_e5m2", granularity="head", pv=True), None),
            ("causal", "bf16", small, dict(dtype="fp8", granularity="block", block=64), None),
            ("gqa", "bf16", {"B": 1, "S": 333}, dict(fp8, pv=True), None),
            ("softcap", "f16", small, dict(fp8, pv=True), None),
            ("doc_causal", "bf16", {"S": 700}, dict(fp8, pv=True), None),
            ("doc_mask", "bf16", {"S": 1100, "H": 4}, fp8, None),
            ("causal", "bf16", {"B": 1, "S": 700}, dict(fp8, pv=True), dict(WGMMA, num_stages=3)),
            ("causal", "bf16", {"B": 1, "S": 700}, fp8, dict(WGMMA, num_stages=2)),
            ("sliding_window", "bf16", {"B": 1, "S": 1100}, dict(fp8, pv=True), None),
            ("alibi", "bf16", small, fp8, None)):
        out.append(dict(kind="verify", path=VARIANTS, name=name, dtype=dt, shapes=shapes, config=cfg,
                        quantize=quant))
    out.append(dict(kind="verify", path=VARIANTS, name="chunk_512", dtype="bf16", shapes={"S": 1100, "H": 4},
                    config=None, quantize=dict(fp8, pv=True)))
    for e in _fp8_bench_entries():
        out.append(e)
        if e["quantize"] is not None:
            mode = e["fp8"]["mode"]
            out.append(dict(e, cuda_route={"fp8": "inorder"}, fp8=dict(e["fp8"], mode=mode + " inorder")))
            if e["name"] == "causal":     # (run 1: compile picked 3 stages for a band; 2 beside it)
                out.append(dict(e, config=WGMMA, fp8=dict(e["fp8"], mode=mode + " s2")))
    return out


def _edge_entries():
    """A band's partial tiles masked with one immediate compare a score per side that cuts the
    warp's rows (``BAND_EDGES`` of ``_cuda_wgmma``): every band kernel kind verified (examples at
    default and ragged dims, both sides and a ragged key length, query blocks without keys, 64 x 32,
    3 stages, fp8, score_mods), and the band benchmarks beside the kernels with the old per-score
    mask (``band_edges`` False), same run; the table-mode masks (unchanged kernels) for profiling."""
    out = []
    ex = lambda n: os.path.join("examples", n + ".py")      # noqa: E731
    for n in ("sliding_window", "causal_mha", "causal_gqa", "alibi", "softcap"):
        out.append(dict(kind="verify", path=ex(n), name=None, dtype="f16", shapes={}, config=None))
        out.append(dict(kind="verify", path=ex(n), name=None, dtype="bf16", shapes="ragged", config=None))
    k32 = dict(WGMMA, block_q=64, num_warps=4, block_k=32, num_stages=2)
    fp8 = dict(dtype="fp8", granularity="head")
    for name, shapes, cfg, quant in (
            ("band_offset", {}, None, None), ("band_offset", {}, k32, None),
            ("band_offset", {}, dict(WGMMA, num_stages=3), None), ("band_offset", {"S": 700, "T": 1100}, None, None),
            ("late_keys", {}, None, None), ("sw_256", {"S": 1100, "H": 2}, k32, None),
            ("sw_1024", {"S": 3000, "H": 2}, dict(WGMMA, num_stages=3), None),
            ("causal", {"B": 1, "S": 517}, None, fp8), ("sliding_window", {"B": 1, "S": 1100}, None, dict(fp8, pv=True)),
            ("alibi", {"B": 1, "S": 517}, None, None), ("gqa", {"B": 1, "S": 333}, None, None)):
        out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=shapes, config=cfg,
                        quantize=quant))
    s16 = {"B": 1, "S": 16384}
    for opts in (None, {"band_edges": False}):
        for name, sp in DENSITY_MASKS:
            if name in ("causal", "sw_256", "sw_1024", "sw_4096"):
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None,
                                sparse=sp, options=opts))
        out.extend(_issue3_bench(opts, names=("causal",)))
    for name in ("sw_1024", "sw_4096"):       # 2 stages beside compile's 3
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=dict(WGMMA),
                        sparse=dict(DENSITY_MASKS)[name]))
    for name, sp in DENSITY_MASKS:
        if name in ("full", "doc_mask", "doc_causal", "chunk_2048"):
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None, sparse=sp))
    return out


def _unclamped_entries():
    """Document ids read without index clamps where the blocks divide the lengths
    (``FlashIndexing.rows_in_range / keys_in_range``, ``_OPTIONS["unclamped"]`` of ``_cuda_wgmma``):
    the kernels with captured tensors verified at exact and ragged lengths (2 and 3 stages, fp8,
    12 warps, the per-call pair), and the document benchmarks beside the clamped kernels, same run."""
    out = []
    ex = os.path.join("examples", "document_mask.py")
    for dt, shapes in (("bf16", {}), ("f16", {"S": 1024}), ("bf16", "ragged")):
        out.append(dict(kind="verify", path=ex, name=None, dtype=dt, shapes=shapes, config=None))
    fp8 = dict(dtype="fp8", granularity="head")
    for name, shapes, cfg, quant in (
            ("doc_mask", {"S": 1024, "H": 4}, None, None), ("doc_mask", {"S": 1100, "H": 4}, None, None),
            ("doc_causal", {"S": 1024}, None, None), ("doc_causal", {"S": 700}, None, None),
            ("doc_mask", {"S": 2048, "H": 2}, dict(WGMMA, num_stages=3), None),
            ("doc_causal", {"S": 1024}, dict(WGMMA, block_q=192, num_warps=12, block_k=64), None),
            ("doc_causal", {"S": 1024}, None, dict(fp8, pv=True)), ("doc_mask", {"S": 1024, "H": 4}, None, fp8)):
        out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=shapes, config=cfg,
                        quantize=quant))
    return out + _density_ab("unclamped", ("doc_mask", "doc_causal"))


def _unclamped_small_entries():
    """The unclamped row/key gathers on the in-order kernel too (the per-call 64 x 32 kernel of
    sparse document maps; not chained blocks): verified at exact and ragged lengths, and the
    document benchmarks beside the clamped kernels (``unclamped`` False), same run."""
    out = []
    k32 = dict(WGMMA, block_q=64, num_warps=4, block_k=32, num_stages=2)
    for name, shapes, cfg in (("doc_mask", {"S": 1024, "H": 4}, k32), ("doc_mask", {"S": 1100, "H": 4}, k32),
                              ("doc_causal", {"S": 1024}, k32), ("doc_causal", {"S": 700}, k32),
                              ("doc_mask", {"S": 2048, "H": 2}, dict(k32, num_stages=3)),
                              ("doc_causal", {"S": 1024}, dict(WGMMA, query_blocks=2))):
        out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=shapes, config=cfg))
    out.append(dict(kind="verify", path=os.path.join("examples", "document_mask.py"), name=None, dtype="bf16",
                    shapes={"S": 1024}, config=k32))
    return out + _density_ab("unclamped", ("doc_mask", "doc_causal"))


def _list_reg_entries():
    """Table mode keeping the previous step's list entries in registers (``LIST_REGS`` of
    ``_cuda_wgmma``): every table-mode kind verified (document ids at exact and ragged lengths,
    compile-time maps of chunks, prefix-LM, strided and local + global, blocks without keys,
    3 stages, 12 warps, fp8), and the table-mode benchmarks beside the kernels that reload them
    (``list_regs`` False), same run."""
    out = []
    ex = lambda n: os.path.join("examples", n + ".py")      # noqa: E731
    for n in ("document_mask", "chunked", "prefix_lm", "strided", "local_global"):
        out.append(dict(kind="verify", path=ex(n), name=None, dtype="bf16", shapes="ragged", config=None))
        out.append(dict(kind="verify", path=ex(n), name=None, dtype="f16", shapes={}, config=None))
    fp8 = dict(dtype="fp8", granularity="head")
    for name, shapes, cfg, quant in (
            ("doc_mask", {"S": 1024, "H": 4}, None, None), ("doc_causal", {"S": 700}, None, None),
            ("doc_mask", {"S": 2048, "H": 2}, dict(WGMMA, num_stages=3), None),
            ("doc_causal", {"S": 1024}, dict(WGMMA, block_q=192, num_warps=12, block_k=64), None),
            ("doc_causal", {"S": 1024}, None, dict(fp8, pv=True)), ("chunk_512", {"S": 1100, "H": 4}, None, None)):
        out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=shapes, config=cfg,
                        quantize=quant))
    return out + _density_ab("list_regs", ("doc_mask", "doc_causal", "chunk_2048"))


def _bulk_entries():
    """The write-out by bulk copies (``BULK_STORE`` of ``_cuda_wgmma``: each warp stages its rows and
    copies them out a row per lane with cp.async.bulk, no block barrier): every kind of ping-pong
    kernel verified -- the examples at default (f16) and ragged (bf16) dims, D=64 and 128, blocks
    without keys, both band sides, tile maps and document ids, 64 x 32, 12 warps, 3 stages, fp8
    Q·Kᵀ and P·V, GQA -- and issue 3's and issue 4's benchmarks beside the kernels with the staged
    shared-memory write-out (``bulk_store`` False), same run."""
    out = []
    ex = lambda n: os.path.join("examples", n + ".py")      # noqa: E731
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*.py"))):
        rel = os.path.relpath(path, ROOT)
        out.append(dict(kind="verify", path=rel, name=None, dtype="f16", shapes={}, config=None))
        out.append(dict(kind="verify", path=rel, name=None, dtype="bf16", shapes="ragged", config=None))
    k32 = dict(WGMMA, block_q=64, num_warps=4, block_k=32, num_stages=2)
    fp8 = dict(dtype="fp8", granularity="head")
    for name, shapes, cfg, quant in (
            ("band_offset", {}, None, None), ("band_offset", {}, k32, None), ("late_keys", {}, None, None),
            ("doc_mask", {"S": 1100, "H": 4}, None, None), ("doc_causal", {"S": 1024}, None, None),
            ("full", {"B": 1, "S": 1024}, dict(WGMMA, block_q=192, num_warps=12, block_k=64), None),
            ("full", {"B": 2, "S": 700}, None, dict(fp8, pv=True)), ("causal", {"B": 1, "S": 517}, None, fp8),
            ("gqa", {"B": 1, "S": 333}, None, None), ("sw_1024", {"S": 3000, "H": 2}, dict(WGMMA, num_stages=3), None),
            ("softcap", {"B": 1, "S": 517}, None, None)):
        out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=shapes, config=cfg,
                        quantize=quant))
    out.append(dict(kind="verify", path=ex("document_mask"), name=None, dtype="bf16", shapes={"S": 700}, config=k32))
    s16 = {"B": 1, "S": 16384}
    for opts in (None, {"bulk_store": False}):
        out.extend(_issue3_bench(opts))
        for name, sp in DENSITY_MASKS:
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None,
                            sparse=sp, options=opts))
    return out


def _session6_entries():
    """Issue 4, sixth pass, the closing run on the code as committed: the time-vs-density table
    beside FlexAttention's BlockMask (attention.py --flex), issue 3's benchmark beside cuDNN,
    FlashAttention-2 and FlexAttention, and fp8 beside bf16 -- the configs compile picks."""
    out = []
    for s_ in (4096, 16384):
        for name in ("full", "causal"):
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16",
                            shapes={"B": 16384 // s_, "S": s_}, config=None, flex=True))
    for name in ("sliding_window", "gqa", "alibi", "softcap"):
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes={"B": 4, "S": 4096},
                        config=None, flex=True))
    s16 = {"B": 1, "S": 16384}
    for name, sp in DENSITY_MASKS:
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None, sparse=sp))
    return out + _fp8_bench_entries()


PERSISTENT = dict(WGMMA, persistent=132, small_below=0)


def _persistent_entries():
    """The persistent, warp-specialised kernel (``CudaConfig.persistent``: a producer warpgroup
    issuing TMA loads on mbarriers, two consumer warpgroups, 132 thread blocks walking the work
    tiles): every example at ragged (bf16) and default (f16) dims, the band/table/document kinds
    at small shapes, and 3 thread blocks (many tiles each: every Q buffer and K/V slot reused,
    phases wrapping) -- verified; then the density table and issue 3's dense shapes, each beside
    the config compile picks, same run."""
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*.py"))):
        rel = os.path.relpath(path, ROOT)
        out.append(dict(kind="verify", path=rel, name=None, dtype="bf16", shapes="ragged", config=PERSISTENT))
        out.append(dict(kind="verify", path=rel, name=None, dtype="f16", shapes={}, config=PERSISTENT))
    few = dict(PERSISTENT, persistent=3)
    for name, shapes, cfg in (
            ("band_offset", {}, PERSISTENT), ("late_keys", {}, PERSISTENT), ("doc_mask", {"S": 1100, "H": 4}, PERSISTENT),
            ("doc_causal", {"S": 1024}, PERSISTENT), ("gqa", {"B": 1, "S": 333}, PERSISTENT),
            ("sw_1024", {"S": 3000, "H": 2}, PERSISTENT), ("softcap", {"B": 1, "S": 517}, PERSISTENT),
            ("doc_mask", {"S": 1100, "H": 4}, few), ("causal", {"B": 2, "S": 517}, few), ("sw_1024", {"S": 3000, "H": 2}, few),
            ("chunk_512", {"S": 2048, "H": 2}, few)):
        out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=shapes, config=cfg))
    s16 = {"B": 1, "S": 16384}
    for cfg in (PERSISTENT, None):
        for name, sp in DENSITY_MASKS:
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=cfg, sparse=sp))
        for s_ in (4096, 16384):
            for name in ("full", "causal"):
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16",
                                shapes={"B": 16384 // s_, "S": s_}, config=cfg))
    return out


def _persistent_ab_entries():
    """The persistent kernel's two later changes, each on and off (``_OPTIONS`` ``ws_k3``: a third
    K slot, K loaded two blocks ahead; ``ws_tma_store``: the write-out staged in the Q buffer and
    stored by TMA): every example and small variant verified with both on, and the density
    table's masks timed for the four combinations beside the config compile picks."""
    out = [e for e in _persistent_entries() if e["kind"] == "verify"]
    s16 = {"B": 1, "S": 16384}
    names = ("full", "causal", "sw_1024", "doc_mask", "chunk_2048")
    for opts in ({"ws_k3": False, "ws_tma_store": False}, {"ws_k3": False, "ws_tma_store": True},
                 {"ws_k3": True, "ws_tma_store": False}, {"ws_k3": True, "ws_tma_store": True}, None):
        for name, sp in DENSITY_MASKS:
            if name in names:
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16,
                                config=PERSISTENT if opts else None, sparse=sp, options=opts))
    return out


def _persistent_c_entries():
    """The persistent kernel's third pass: two 16-bit values a shared store in the write-out's
    staging (``ws_pack_store``) and the key-block lists built by the producer's second warp a
    tile ahead (``ws_list_warp``), each against the second pass's code, every mask of the density
    table, beside the config compile picks; every example and small variant verified on the
    defaults."""
    out = [e for e in _persistent_entries() if e["kind"] == "verify"]
    s16 = {"B": 1, "S": 16384}
    for opts in ({"ws_pack_store": False, "ws_list_warp": False}, {"ws_pack_store": True, "ws_list_warp": False},
                 None, "picked"):
        for name, sp in DENSITY_MASKS:
            if opts is None or name not in ("causal",):
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16,
                                config=None if opts == "picked" else PERSISTENT, sparse=sp,
                                options=None if opts == "picked" else opts))
    return out


def _persistent_final_entries():
    """The persistent kernel's last run: sliding windows of 256-4096 keys (S=16k), each on the
    persistent kernel and on the two configs compile picked before it (128 x 128 with 3 stages,
    64 x 32 below tile density 0.04), with FlexAttention beside them, and the dense reference;
    the new windows verified at ragged dims on the persistent kernel."""
    out = []
    for name in ("sw_512", "sw_2048"):
        out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes={"S": 3000, "H": 2},
                        config=PERSISTENT))
    s16 = {"B": 1, "S": 16384}
    small = dict(WGMMA, block_q=64, num_warps=4, block_k=32)
    for w in (256, 512, 1024, 2048, 4096):
        sp = dict(mask="window", window=w)
        for cfg in (PERSISTENT, WGMMA3, small):
            out.append(dict(kind="bench", path=VARIANTS, name=f"sw_{w}", dtype="bf16", shapes=s16, config=cfg,
                            sparse=sp))
    out.append(dict(kind="bench", path=VARIANTS, name="full", dtype="bf16", shapes=s16, config=None,
                    sparse=dict(mask="full")))
    return out


def _persistent_list_entries():
    """Table mode on the persistent kernel, the consumers' list reads plain shared loads
    (``ws_list_plain``, the default) against ``ld.shared`` asm (a compiler barrier at each
    read): the tile-map masks timed both ways, the table-mode kernels verified."""
    out = [e for e in _persistent_entries() if e["kind"] == "verify"
           and (e["name"] in ("doc_mask", "doc_causal", "chunk_512") or "prefix_lm" in e["path"]
                or "document" in e["path"] or "chunked" in e["path"])]
    s16 = {"B": 1, "S": 16384}
    for opts in (None, {"ws_list_plain": False}):
        for name, sp in DENSITY_MASKS:
            if name in ("doc_mask", "doc_causal", "chunk_2048"):
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16,
                                config=PERSISTENT, sparse=sp, options=opts))
    out.append(dict(kind="bench", path=VARIANTS, name="full", dtype="bf16", shapes=s16, config=None,
                    sparse=dict(mask="full")))
    return out


def _persistent_order_entries():
    """The persistent kernel's tile order (``ws_order``): the default against "head" (head-major
    round robin), on the masks whose tiles differ in cost (causal, documents, chunks), on a band
    and dense; the small-grid kernels verified in the default order.  In run 9 (RESULTS.md) the
    default was "cost" everywhere (query blocks heaviest-first across all heads, thread blocks in a
    snake); since then ``ws_default_order`` picks per map, so a rebuild times chunks and dense in
    "head" both ways."""
    few = dict(PERSISTENT, persistent=3)
    out = [dict(kind="verify", path=VARIANTS, name=n, dtype="bf16", shapes=sh, config=cfg) for n, sh, cfg in (
        ("causal", {"B": 2, "S": 517}, dict(PERSISTENT, persistent=5)), ("doc_mask", {"S": 1100, "H": 4}, few),
        ("sw_1024", {"S": 3000, "H": 2}, few), ("chunk_512", {"S": 2048, "H": 2}, few),
        ("doc_causal", {"S": 1024}, PERSISTENT), ("late_keys", {}, few))]
    s16 = {"B": 1, "S": 16384}
    for opts in (None, {"ws_order": "head"}):
        for name, sp in DENSITY_MASKS:
            if name in ("full", "causal", "sw_1024", "doc_mask", "doc_causal", "chunk_2048"):
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16,
                                config=PERSISTENT, sparse=sp, options=opts))
    # what compile picks on these masks (the one-block-a-tile kernel off the bands), in the same run
    for name, sp in DENSITY_MASKS:
        if name in ("causal", "doc_mask", "doc_causal", "chunk_2048"):
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None,
                            sparse=sp, group="default"))
    return out


def _persistent_causal_entries():
    """Causal on the persistent kernel in its compile-time tile order (``ws_default_order``:
    "cost" for causal) beside what compile picks (the one-block-a-tile kernel, 3 stages), over
    batch x length at 16 heads and on GQA; one tile order ("head") kept for chunks of 2048."""
    out = []
    for name, shapes in (("causal", {"B": 8, "S": 2048}), ("causal", {"B": 4, "S": 4096}),
                         ("causal", {"B": 2, "S": 8192}), ("causal", {"B": 1, "S": 16384}),
                         ("causal", {"B": 1, "S": 32768}), ("gqa", {"B": 1, "S": 16384}),
                         ("gqa", {"B": 4, "S": 4096})):
        for cfg in (PERSISTENT, None):
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=shapes, config=cfg,
                            sparse=dict(mask="causal")))
    out.append(dict(kind="bench", path=VARIANTS, name="chunk_2048", dtype="bf16", shapes={"B": 1, "S": 16384},
                    config=PERSISTENT, sparse=dict(DENSITY_MASKS[-1][1])))
    return out


def _persistent_causal_check_entries():
    """What the eleventh session could not run (no device time left): compile's own picks for
    causal and GQA (the persistent kernel in the cost order) verified at 4k-8k keys, and causal
    at 16k timed beside FlexAttention (``attention.py --kind bench --flex``)."""
    out = [dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=shapes, config=None)
           for name, shapes in (("causal", {"B": 1, "S": 4096}), ("causal", {"B": 1, "S": 8192, "H": 4}),
                                ("gqa", {"B": 1, "S": 4096}))]
    for cfg in (None, WGMMA3):
        out.append(dict(kind="bench", path=VARIANTS, name="causal", dtype="bf16", shapes={"B": 1, "S": 16384},
                        config=cfg, sparse=dict(mask="causal"), flex=True))
    return out


def _persistent_sorted_entries():
    """The persistent kernel's "sorted" order (table mode: the query blocks ranked by the tile
    map's row costs, the table's extra column, per call for documents) against "cost" (documents)
    and "head" (chunks) and against what compile picks (the one-block-a-tile kernel), at S=16k in
    one run, dense for the bar's denominator; verified on small grids (per-call and compile-time
    maps, the list warp wrapping); with persistent8 (causal and GQA picks, causal beside Flex)."""
    few = dict(PERSISTENT, persistent=3)
    out = [dict(kind="verify", path=VARIANTS, name=n, dtype="bf16", shapes=sh, config=cfg) for n, sh, cfg in (
        ("doc_mask", {"S": 1100, "H": 4}, few), ("chunk_512", {"S": 2048, "H": 2}, few),
        ("chunk_2048", {"S": 5000, "H": 2}, dict(PERSISTENT, persistent=7)), ("doc_causal", {"S": 1024}, PERSISTENT))]
    out.append(dict(kind="verify", path=os.path.join("examples", "prefix_lm.py"), name=None, dtype="bf16", shapes={},
                    config=few))
    s16 = {"B": 1, "S": 16384}
    masks = dict(DENSITY_MASKS)
    for name, opts in (("doc_mask", None), ("doc_mask", {"ws_order": "cost"}), ("doc_causal", None),
                       ("doc_causal", {"ws_order": "cost"}), ("chunk_2048", None), ("chunk_2048", {"ws_order": "head"})):
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=PERSISTENT,
                        sparse=masks[name], options=opts))
    for name in ("full", "doc_mask", "doc_causal", "chunk_2048"):
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None,
                        sparse=masks[name]))
    return out + _persistent_causal_check_entries()


def _persistent_defer_entries():
    """The write-out's read wait moved off the consumers' path between tiles (``ws_defer_store``):
    verified on small grids (a band, causal, per-call and compile-time tile maps), timed beside
    persistent9's kernels (same ids without the suffix) on documents, chunks and causal at S=16k."""
    few = dict(PERSISTENT, persistent=3)
    opt = {"ws_defer_store": True}
    out = [dict(kind="verify", path=VARIANTS, name=n, dtype="bf16", shapes=sh, config=cfg, options=opt)
           for n, sh, cfg in (("doc_mask", {"S": 1100, "H": 4}, few), ("chunk_512", {"S": 2048, "H": 2}, few),
                              ("causal", {"B": 2, "S": 517}, dict(PERSISTENT, persistent=5)),
                              ("sw_1024", {"S": 3000, "H": 2}, few), ("late_keys", {}, few))]
    s16 = {"B": 1, "S": 16384}
    masks = dict(DENSITY_MASKS)
    for name, o in (("doc_mask", opt), ("doc_causal", opt), ("chunk_2048", dict(opt, ws_order="head")),
                    ("causal", opt), ("sw_1024", opt), ("sw_1024", None)):
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=PERSISTENT,
                        sparse=masks[name], options=o))
    return out


def _persistent_final_table_entries():
    """The twelfth pass's closing run (the write-out's read wait deferred by default, per-call
    ranked order): the persistent kernels verified on small grids and compile's own picks at
    4k-8k keys; at S=16k every benchmark mask on compile's default beside FlexAttention
    (``--flex``), and the persistent kernel on the tile maps compile gives the one-block-a-tile
    kernel (documents, causal documents, chunks of 2048)."""
    few = dict(PERSISTENT, persistent=3)
    out = [dict(kind="verify", path=VARIANTS, name=n, dtype="bf16", shapes=sh, config=cfg) for n, sh, cfg in (
        ("doc_mask", {"S": 1100, "H": 4}, few), ("chunk_512", {"S": 2048, "H": 2}, few),
        ("causal", {"B": 2, "S": 517}, dict(PERSISTENT, persistent=5)), ("sw_1024", {"S": 3000, "H": 2}, few),
        ("late_keys", {}, few), ("doc_causal", {"S": 1024}, PERSISTENT), ("gqa", {"B": 1, "S": 700}, dict(PERSISTENT, persistent=7)),
        ("causal", {"B": 1, "S": 4096}, None), ("gqa", {"B": 1, "S": 4096}, None), ("sw_1024", {"S": 4096, "H": 4}, None))]
    out.append(dict(kind="verify", path=os.path.join("examples", "prefix_lm.py"), name=None, dtype="bf16", shapes={},
                    config=few))
    s16 = {"B": 1, "S": 16384}
    for name, sp in DENSITY_MASKS:
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None, sparse=sp,
                        flex=True))
    masks = dict(DENSITY_MASKS)
    for name, opts in (("doc_mask", None), ("doc_causal", None), ("chunk_2048", None)):
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=PERSISTENT,
                        sparse=masks[name], options=opts, flex=True))
    return out


def _row_limit_entries():
    """The rows' key limits of a document mask (``_OPTIONS["row_limits"]``, thirteenth pass):
    verified on the persistent, one-block-a-tile and 64 x 32 in-order kernels (attention.py's
    verify: random ids, sorted ids, blocks of both kinds), then at S=16k documents and causal
    documents on compile's default (the persistent kernel; sparse calls the 64 x 32 one) and on
    the one-block-a-tile kernel, each with the limits and without (ids "-no_row_limits")."""
    few = dict(PERSISTENT, persistent=3)
    one = {k: v for k, v in PERSISTENT.items() if k != "persistent"}
    out = [dict(kind="verify", path=VARIANTS, name=n, dtype="bf16", shapes=sh, config=cfg, options=opt)
           for n, sh in (("doc_mask", {"S": 1100, "H": 4}), ("doc_causal", {"S": 1100, "H": 4}))
           for cfg in (few, one, dict(WGMMA, block_q=64, block_k=32, num_warps=4))
           for opt in ({"row_limits": True},)]
    s16 = {"B": 1, "S": 16384}
    masks = dict(DENSITY_MASKS)
    for name in ("doc_mask", "doc_causal"):
        for cfg in (None, one):
            for opt in ({"row_limits": True}, {"row_limits": False}):
                out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=cfg,
                                sparse=masks[name], options=opt, flex=cfg is None and opt["row_limits"]))
    return out


def _row_limit_final_entries():
    """The thirteenth pass's closing table: every benchmark mask at S=16k on compile's default
    (row limits on for document masks) beside FlexAttention, the dense kernel in the same run."""
    return [dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes={"B": 1, "S": 16384}, config=None,
                 sparse=sp, flex=True) for name, sp in DENSITY_MASKS]


def _row_limit_fp8_entries():
    """The rows' key limits under fp8 dequantization (the limits mask the scaled scores of
    ``score_functions``, per-row q scales and per-key k scales included): document masks with
    fp8 Q·Kᵀ, Q·Kᵀ + P·V and per-block scales on compile's default and the 64 x 32 kernel."""
    fp8 = dict(dtype="fp8", granularity="head")
    small = dict(WGMMA, block_q=64, block_k=32, num_warps=4)
    out = []
    for name, shapes in (("doc_mask", {"S": 1100, "H": 4}), ("doc_causal", {"S": 700})):
        for q in (fp8, dict(fp8, pv=True), dict(dtype="fp8", granularity="block", block=64)):
            for cfg in (None, small):
                out.append(dict(kind="verify", path=VARIANTS, name=name, dtype="bf16", shapes=shapes, config=cfg,
                                quantize=q))
    return out


def _row_limit_small_entries():
    """Where the 64 x 32 kernel should take over per call (cuda.SMALL_BELOW) now that it masks by
    the rows' key limits too: documents and causal documents at S=16k on the 64 x 32 kernel for
    every call, beside compile's default (the persistent kernel above the threshold)."""
    masks = dict(DENSITY_MASKS)
    return [dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes={"B": 1, "S": 16384}, config=cfg,
                 sparse=masks[name]) for name in ("doc_mask", "doc_causal")
            for cfg in (None, dict(WGMMA, block_q=64, block_k=32, num_warps=4))]


def _schedule_entries():
    """The persistent kernel's tiles dealt to its thread blocks on the host (order "scheduled",
    ``_layouts.tile_schedule``, fourteenth pass): verified on small grids (per-call and
    compile-time maps, B x H > 1, more thread blocks than tiles, row limits); at S=16k compile's
    default (now "scheduled" in table mode) beside FlexAttention, the last pass's orders
    ("sorted" for documents, "head" for chunks: ids with "-ws_order_..."), and the persistent
    kernel on every call of documents and causal documents (small_below=0), where the 64 x 32
    kernel ran below density 0.06."""
    few = dict(PERSISTENT, persistent=3)
    out = [dict(kind="verify", path=VARIANTS, name=n, dtype="bf16", shapes=sh, config=cfg) for n, sh, cfg in (
        ("doc_mask", {"S": 1100, "H": 4}, few), ("doc_causal", {"S": 1100, "H": 4}, few),
        ("chunk_512", {"B": 2, "S": 2048, "H": 3}, dict(PERSISTENT, persistent=5)),
        ("chunk_2048", {"S": 5000, "H": 2}, dict(PERSISTENT, persistent=7)), ("doc_causal", {"S": 1024}, PERSISTENT),
        ("doc_mask", {"S": 300, "H": 1}, PERSISTENT))]
    out.append(dict(kind="verify", path=os.path.join("examples", "prefix_lm.py"), name=None, dtype="bf16", shapes={},
                    config=few))
    s16 = {"B": 1, "S": 16384}
    masks = dict(DENSITY_MASKS)
    for name in ("full", "doc_mask", "doc_causal", "chunk_2048", "chunk_512"):
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None,
                        sparse=masks[name], flex=name != "full"))
    for name, opts in (("doc_mask", {"ws_order": "sorted"}), ("doc_causal", {"ws_order": "sorted"}),
                       ("chunk_2048", {"ws_order": "head"})):
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None,
                        sparse=masks[name], options=opts))
    for name, opts in (("doc_mask", None), ("doc_causal", None), ("chunk_512", None), ("chunk_2048", None),
                       ("chunk_2048", {"ws_order": "head"})):
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=PERSISTENT,
                        sparse=masks[name], options=opts))
    return out


# compile-time tile maps beside the density benchmark's (fourteenth pass): prefix-LM, local + global
MAP_MASKS = (("prefix_2048", dict(mask="prefix", label="prefix=2048", prefix=2048)),
             ("local_global", dict(mask="local_global", label="window=1024+global=128", window=1024, globals=128)))


def _schedule_final_entries():
    """The fourteenth pass's closing run: compile's picks verified where they changed (chunks,
    prefix-LM and local + global now on the persistent kernel, dealt; documents), then every
    benchmark mask at S=16k on compile's default beside FlexAttention, and the two compile-time
    maps MAP_MASKS on compile's default and on the one-block-a-tile kernel they ran before."""
    out = [dict(kind="verify", path=VARIANTS, name=n, dtype="bf16", shapes=sh, config=None) for n, sh in (
        ("chunk_2048", {"S": 4096, "H": 4}), ("prefix_2048", {"S": 3000, "H": 2}), ("local_global", {"S": 4096, "H": 4}),
        ("doc_causal", {"S": 4096, "H": 4}))]
    s16 = {"B": 1, "S": 16384}
    out += [dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None, sparse=sp, flex=True)
            for name, sp in DENSITY_MASKS + MAP_MASKS]
    one = {k: v for k, v in PERSISTENT.items() if k not in ("persistent", "small_below")}
    out += [dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=one, sparse=sp)
            for name, sp in MAP_MASKS]
    return out


def _launch_order_entries():
    """The in-order kernel's launch order in its table (``_layouts.with_launch_order``, fifteenth
    pass): the 64 x 32 kernel's blocks read their tile from it, the last two waves heaviest first.
    Verified on small grids (per-call and compile-time maps, B x H > 1, row limits, ragged
    lengths) and on compile's picks at S=16k; timed at S=16k on compile's default (documents,
    causal documents, chunks of 512), each also without the launch order (ids
    "-no_launch_order")."""
    small = dict(WGMMA, block_q=64, block_k=32, num_warps=4)
    out = [dict(kind="verify", path=VARIANTS, name=n, dtype="bf16", shapes=sh, config=cfg) for n, sh, cfg in (
        ("doc_mask", {"S": 4096, "H": 4}, small), ("doc_causal", {"S": 1100, "H": 4}, small),
        ("chunk_512", {"B": 2, "S": 2048, "H": 3}, small), ("doc_mask", {"S": 4096, "H": 4}, None),
        ("doc_causal", {"S": 4096, "H": 4}, None), ("chunk_512", {"S": 8192, "H": 2}, None))]
    s16 = {"B": 1, "S": 16384}
    masks = dict(DENSITY_MASKS)
    out.append(dict(kind="bench", path=VARIANTS, name="full", dtype="bf16", shapes=s16, config=None,
                    sparse=masks["full"]))
    for name in ("doc_mask", "doc_causal", "chunk_512"):
        for opts in (None, {"launch_order": False}):
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None,
                            sparse=masks[name], options=opts, flex=opts is None))
    return out


def _floor_entries():
    """What the 64 x 32 kernel's tile rate alone allows below density 0.05 (sixteenth pass): the
    dense time of compile's default and of the 64 x 32 kernel, unmasked and in table mode (one
    document: every tile full, read from the table), beside the masks compile runs on 64 x 32
    (window 256, chunks of 512, documents 32 / 64, causal documents 16 / 32), same run.  A mask's
    time at the 64 x 32 table-mode rate with nothing else paid is its 64 x 32 tile count x that
    dense time / the tiles of the dense map."""
    small = dict(WGMMA, block_q=64, block_k=32, num_warps=4)
    s16 = {"B": 1, "S": 16384}
    masks = dict(DENSITY_MASKS)
    out = [dict(kind="bench", path=VARIANTS, name="full", dtype="bf16", shapes=s16, config=cfg,
                sparse=dict(mask="full")) for cfg in (None, small)]
    out.append(dict(kind="bench", path=VARIANTS, name="doc_mask", dtype="bf16", shapes=s16, config=small,
                    sparse=dict(mask="document", docs=[1])))
    for name, sp in (("sw_256", masks["sw_256"]), ("chunk_512", masks["chunk_512"]),
                     ("doc_mask", dict(mask="document", docs=[32, 64])),
                     ("doc_causal", dict(mask="document_causal", docs=[16, 32]))):
        out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None, sparse=sp))
    return out


def _band_part_entries():
    """A band or'ed with affine comparisons (``spec.band_part``: global keys or queries, a prefix):
    partial tiles where the rest is false on the warp's rows masked by the band's compares
    (``_OPTIONS["band_part"]``): verified on compile's picks (persistent at D=128, the
    one-block-a-tile kernel at D=64), the 64 x 32 in-order kernel and ragged key lengths; timed at
    S=16k with and without (ids "-no_band_part") beside FlexAttention."""
    small = dict(WGMMA, block_q=64, block_k=32, num_warps=4)
    lg = os.path.join("examples", "local_global.py")
    pl = os.path.join("examples", "prefix_lm.py")
    out = [dict(kind="verify", path=p, name=n, dtype="bf16", shapes=sh, config=cfg) for p, n, sh, cfg in (
        (lg, None, {}, None), (lg, None, {"S": 1100}, small), (lg, None, {"S": 1000}, dict(PERSISTENT, persistent=3)),
        (pl, None, {"S": 1000}, None), (VARIANTS, "local_global", {"S": 4096, "H": 4}, None),
        (VARIANTS, "local_global", {"S": 3000, "H": 2}, small), (VARIANTS, "prefix_2048", {"S": 3000, "H": 2}, None))]
    s16 = {"B": 1, "S": 16384}
    out.append(dict(kind="bench", path=VARIANTS, name="full", dtype="bf16", shapes=s16, config=None,
                    sparse=dict(mask="full")))
    for name, sp in MAP_MASKS:
        for opts in (None, {"band_part": False}):
            out.append(dict(kind="bench", path=VARIANTS, name=name, dtype="bf16", shapes=s16, config=None, sparse=sp,
                            options=opts, flex=opts is None))
    return out


def _decode_verify_entries():
    """Decode (q_len <= 16: cuda.py dispatches to the split-KV kernel of _cuda_decode.py):
    GQA 32/8, MHA, groups 8 and 16 (rows over one m16 tile / over one block), ragged dims,
    D 64/128/256, f16/bf16, score_mod, band and non-band masks, empty rows, the config paths."""
    e = []

    def add(name, dtype, shapes, config=None):
        e.append(dict(kind="verify", path=VARIANTS, name=name, dtype=dtype, shapes=shapes, config=config))

    add("decode", "bf16", {"B": 2, "T": 4096})
    add("decode", "f16", {"B": 3, "S": 3, "T": 3001, "D": 64})
    add("decode", "bf16", {"B": 2, "Hq": 8, "Hkv": 8, "S": 1, "T": 5000})
    add("decode", "bf16", {"B": 1, "Hq": 32, "Hkv": 4, "S": 4, "T": 2049})
    add("decode", "bf16", {"B": 1, "Hq": 32, "Hkv": 2, "S": 3, "T": 1500, "D": 64})
    add("decode", "bf16", {"B": 1, "S": 2, "T": 1111, "D": 256})
    add("decode", "f16", {"B": 16, "S": 3, "T": 999, "D": 64})      # default: one split, no merge kernel
    add("decode_window", "bf16", {})
    add("decode_window", "f16", {"T": 4000})
    add("decode_alibi", "bf16", {})
    add("decode_alibi", "f16", {"T": 3333})
    add("decode_softcap_strided", "f16", {})
    add("decode_softcap_strided", "bf16", {"T": 2500, "D": 64})
    add("decode_causal_topleft", "bf16", {})
    add("decode_causal_topleft", "f16", {"S": 16, "T": 33})
    add("decode_empty_rows", "bf16", {})
    small = {"B": 2, "S": 2, "T": 3001}
    for cfg in (dict(num_splits=1), dict(num_splits=7), dict(num_splits=40),
                dict(block_k=32, num_warps=2, num_stages=4), dict(block_k=128, num_warps=8),
                dict(block_k=128, num_warps=4, num_stages=2), dict(num_stages=5), dict(block_rows=32),
                dict(block_k=16, num_warps=1, num_stages=6)):
        add("decode", "bf16", small, cfg)
    return e


# decode bench: B=16, 32/8 heads, D=128, bf16, 4k and 32k keys; default config + a sweep
DECODE_SWEEP = (dict(num_splits=2), dict(num_splits=4), dict(num_splits=16),
                dict(num_stages=4), dict(num_stages=2), dict(block_k=32, num_warps=2, num_stages=4),
                dict(block_k=128, num_warps=4, num_stages=3), dict(block_k=128, num_warps=8, num_stages=3))


def _decode_bench_entries():
    e = []
    for t in (4096, 32768):
        for cfg in (None,) + DECODE_SWEEP:
            e.append(dict(kind="bench", path=VARIANTS, name="decode", dtype="bf16",
                          shapes={"B": 16, "S": 1, "T": t}, config=cfg))
    return e


def _ident(e, k):
    base = os.path.splitext(os.path.basename(e["path"]))[0]
    name = e["name"] or k.variant
    dims = "_".join(f"{a}{b}" for a, b in sorted(k.env.items()))
    cfg = k.config
    if isinstance(cfg, cuda.DecodeConfig):
        c = f"dk{cfg.block_k}w{cfg.num_warps}s{cfg.num_stages}p{cfg.num_splits}r{cfg.block_rows}"
    else:
        c = f"q{cfg.block_q}k{cfg.block_k}w{cfg.num_warps}s{cfg.num_stages}{'r' if cfg.q_in_registers else 'm'}"
        if getattr(cfg, "mma", "sync") == "wgmma":
            c = f"q{cfg.block_q}k{cfg.block_k}w{cfg.num_warps}s{cfg.num_stages}g"
            if getattr(cfg, "query_blocks", 1) > 1:
                c += f"c{cfg.query_blocks}"
            if cuda.small_below(k.spec, cfg) > 0:
                c += f"d{cuda.small_below(k.spec, cfg):g}"
            if getattr(cfg, "persistent", 0):
                c += f"p{cfg.persistent}"
    text = f"{e['kind']}-{name}-{e['dtype']}-{dims}-{c}" if base != name else f"{e['kind']}-{name}-{e['dtype']}-{dims}-{c}"
    quant = e.get("quantize")
    if quant:
        text += f"-{quant['dtype']}{quant.get('granularity', 'head')}{'pv' if quant.get('pv') else ''}"
    if e.get("sparse"):
        text = "sp" + text         # the issue-4 benchmark entries: sparsity ...
    elif e.get("fp8"):
        text = "f8" + text         # ... and fp8 vs bf16
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _nvcc(src_path, fatbin_path, arch):
    code = f"compute_{arch[3:]}"
    cmd = ["nvcc", "-fatbin", "-O3", f"-gencode=arch={code},code={arch}", "-Xptxas", "-v",
           src_path, "-o", fatbin_path]
    p = subprocess.run(cmd, capture_output=True, text=True)
    report = p.stdout + p.stderr
    regs = re.findall(r"Used (\d+) registers", report)
    spills = re.findall(r"(\d+) bytes spill stores", report)
    return p.returncode, {"registers": int(regs[-1]) if regs else None,
                          "spill_store_bytes": int(spills[-1]) if spills else None,
                          "nvcc_ok": p.returncode == 0,
                          "nvcc_log": report[-2000:] if p.returncode else ""}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, ".gpu", "kernels"))
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--only", choices=("verify", "bench", "decode") + tuple(_sets()))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--where", action="append", default=[], metavar="KNOB=VALUE",
                    help="only entries whose config has this knob value (repeatable)")
    ap.add_argument("--shard", default="0/1", help="I/N: build every N-th kernel from the I-th, I from 0 (run N "
                    "builds in parallel into the same --out: 0/2 and 1/2; TVM's lowering is single-threaded)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    fatdir = os.path.join(os.path.dirname(os.path.abspath(args.out)), "fatbin")
    srcdir = tempfile.mkdtemp(prefix="attncc-cuda-src-")   # nvcc input only; not carried
    os.makedirs(fatdir, exist_ok=True)
    jobs = []
    manifests = []
    t0 = time.time()
    shard, nshards = (int(x) for x in args.shard.split("/"))
    if not 0 <= shard < nshards:
        ap.error(f"--shard {args.shard}: I counts from 0 to N - 1 (two builds: 0/2 and 1/2)")
    where = dict(w.split("=", 1) for w in args.where)
    picked = [e for e in _entries(args.only)
              if all(str((e.get("config") or {}).get(kk, e.get(kk))) == vv for kk, vv in where.items())]
    for e in picked[shard::nshards]:
        shapes = e["shapes"]
        try:
            if shapes == "ragged":
                probe = compile_variant(os.path.join(ROOT, e["path"]), target="cuda", dtype=e["dtype"],
                                        variant_name=e["name"], build=False, config=e["config"],
                                        target_options={"arch": args.arch})
                shapes = {d: RAGGED[d] for d in probe.env if d in RAGGED}
            cuda._ROUTE.clear()
            if e.get("route"):
                cuda._ROUTE["one_warpgroup"] = e["route"]
            cuda._ROUTE.update(e.get("cuda_route") or {})
            for mod in (cuda._wgmma_dense, cuda._wgmma_sparse):
                mod._OPTIONS.clear()
                mod._OPTIONS.update(e.get("options") or {})
            k = compile_variant(os.path.join(ROOT, e["path"]), target="cuda", dtype=e["dtype"],
                                variant_name=e["name"], shapes=shapes, config=e["config"],
                                target_options={"arch": args.arch}, quantize=e.get("quantize"))
        except Exception as exc:  # report and go on: one bad variant must not stop the batch
            print(f"SKIP {e['path']} {e['name']} {e['dtype']} {shapes}: {type(exc).__name__}: {exc}")
            continue
        ident = _ident(e, k) + (f"-{e['route']}" if e.get("route") else "") + (
            "".join(f"-{'' if v else 'no_'}{o}" for o, v in sorted({**(e.get("options") or {}),
                                                                  **(e.get("cuda_route") or {})}.items())))
        src = cuda.source(k.built)
        smem_bytes = cuda.shared_memory_bytes(k.spec, k.config)     # (under the entry's route)
        cuda._ROUTE.clear()
        for mod in (cuda._wgmma_dense, cuda._wgmma_sparse):
            mod._OPTIONS.clear()
        sha = hashlib.sha256(src.encode()).hexdigest()
        src_path = os.path.join(srcdir, sha + ".cu")
        with open(src_path, "w") as f:
            f.write(src)
        k.export_library(os.path.join(args.out, ident + ".so"))
        man = {
            "id": ident, "kind": e["kind"], "variant_path": e["path"], "variant_name": k.variant,
            "dtype": e["dtype"], "env": k.env, "config": dataclasses.asdict(k.config), "arch": args.arch,
            "inputs": [a.hint for a in k.flash_op.operands],
            "input_shapes": {n: list(s) for n, s in k.input_shapes().items()},
            "out_shape": [k.spec.batch, k.spec.q_heads, k.spec.q_len, k.spec.head_dim_v],
            "lse_shape": [k.spec.batch, k.spec.q_heads, k.spec.q_len],
            "spec": {f: getattr(k.spec, f) for f in ("batch", "q_heads", "kv_heads", "q_len", "kv_len",
                                                     "head_dim", "head_dim_v", "dtype", "scale")},
            "key_bounds": dataclasses.asdict(k.spec.key_bounds),
            "flops": k.flops(), "density": k.density(),
            "shared_memory_bytes": smem_bytes,
            "source_sha256": sha,
            # FlexAttention is timed (attention.py --flex) on the default config at S=4k
            "compare_flex": e["kind"] == "bench" and (e["config"] is None or e.get("flex", False))
            and k.env.get("S") == 4096,
            # decode (split-KV kernel): attention.py reports memory bandwidth (q, k, v read, out written once)
            "decode": isinstance(k.config, cuda.DecodeConfig),
            "bytes": sum(int(np.prod(s)) for s in k.input_shapes().values()) * 2
            + k.spec.batch * k.spec.q_heads * k.spec.q_len * (k.spec.head_dim_v * 2 + 4),
            # issue 4: how attention.py rebuilds the kernel's host side without TVM
            # (compile_variant(..., build=False): spec, tile maps, quantize prologue, reference)
            "compile": {"path": e["path"], "name": e["name"], "dtype": e["dtype"], "shapes": k.env,
                        "config": dataclasses.asdict(k.config), "quantize": e.get("quantize"),
                        "options": e.get("options")},
            "table": ("runtime" if k.spec.runtime_tile_map is not None else "static")
            if cuda.use_block_table(k.spec, k.config) else "none",
            "sparse": e.get("sparse"), "fp8": e.get("fp8"),
            "generic": e.get("quantize") is not None or bool(k.spec.captures)
            or cuda.use_block_table(k.spec, k.config) or bool(e.get("sparse") or e.get("fp8")),
        }
        manifests.append(man)
        jobs.append((src_path, os.path.join(fatdir, sha + ".fatbin"), man))
    with cf.ThreadPoolExecutor(args.jobs) as ex:
        futs = {ex.submit(_nvcc, s, f, args.arch): m for s, f, m in jobs if not os.path.exists(f)}
        for fut in cf.as_completed(futs):
            rc, info = fut.result()
            futs[fut].update(info)
    for s, f, man in jobs:
        with open(os.path.join(args.out, man["id"] + ".json"), "w") as fh:
            json.dump(man, fh, indent=1, sort_keys=True)
        regs = man.get("registers")
        print(f"{man['id']:<90} regs={regs} spill={man.get('spill_store_bytes')} "
              f"smem={man['shared_memory_bytes']} {'' if man.get('nvcc_ok', True) else 'NVCC FAILED'}")
    print(f"{len(manifests)} kernels in {time.time() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
