"""Run the prebuilt attncc CUDA kernels on a GPU machine WITHOUT TVM: verify and time them.

    python3 benchmarks/gpu/attention.py --dir .gpu [--kind verify|bench] [--flex] [--json OUT.json]

Needs: torch (CUDA), numpy, sympy, networkx, ml_dtypes, triton (do_bench), nvcc only if a
kernel's fatbin was not prebuilt, and the folder made by build.py + gpu-bundle:

    DIR/rt/lib/libtvm_runtime*.so   TVM's runtime (from the TVM installed on the build machine)
    DIR/rt/whl/apache_tvm_ffi*.whl  installed by the caller into PYTHONPATH (see README.md)
    DIR/kernels/<id>.so + <id>.json exported modules and their manifests
    DIR/fatbin/<sha256>.fatbin      the modules' CUDA source compiled ahead (nvcc, build machine)

verify: the kernel on random inputs against the float64 numpy reference of the unfused IR
        (attncc.reference, pure numpy); DESIGN.md's tolerance (2 x naive error + floor);
        outputs poisoned with NaN first, so an unwritten element fails.
decode: (manifests with "decode": the split-KV kernel) bandwidth in TB/s beside SDPA (default
        and each backend) and a 1 GiB device-to-device copy; output vs a float64 reference.
bench:  median time (triton.testing.do_bench) of the kernel and of torch SDPA with the cuDNN
        and flash (FlashAttention-2) backends (and FlexAttention with --flex) on the same
        inputs; TFLOP/s counted on the kept (query, key) pairs; the kernel's output compared
        with the reference implementation's.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


# --------------------------------------------------------------------------- TVM runtime without TVM

def load_runtime(rt_dir: str, fatbin_dir: str, arch: str = "sm_90a"):
    """Load TVM's runtime libraries and register the CUDA compile callback; returns tvm_ffi."""
    for name in ("libtvm_runtime.so", "libtvm_runtime_extra.so", "libtvm_runtime_cuda.so"):
        ctypes.CDLL(os.path.join(rt_dir, "lib", name), mode=ctypes.RTLD_GLOBAL)
    import tvm_ffi

    stats = {"cached": 0, "compiled": 0}

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code, *_rest):
        sha = hashlib.sha256(code.encode()).hexdigest()
        cached = os.path.join(fatbin_dir, sha + ".fatbin")
        if os.path.exists(cached):
            stats["cached"] += 1
            with open(cached, "rb") as f:
                return bytearray(f.read())
        stats["compiled"] += 1
        with tempfile.TemporaryDirectory() as tmp:
            src, out = os.path.join(tmp, "k.cu"), os.path.join(tmp, "k.fatbin")
            with open(src, "w") as f:
                f.write(code)
            subprocess.run(["nvcc", "-fatbin", "-O3", f"-gencode=arch=compute_{arch[3:]},code={arch}",
                            src, "-o", out], check=True)
            with open(out, "rb") as f:
                return bytearray(f.read())

    return tvm_ffi, stats


# --------------------------------------------------------------------------- helpers

def _np_to_torch(a, dev):
    import torch

    if a.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.uint16)).view(torch.bfloat16).to(dev)
    return torch.from_numpy(np.ascontiguousarray(a)).to(dev)


def _torch_dtype(name):
    import torch

    return {"f16": torch.float16, "bf16": torch.bfloat16, "float16": torch.float16,
            "bfloat16": torch.bfloat16}[name]


def verify_one(man, fn, dev):
    """Kernel vs the float64 numpy reference of the unfused IR (attncc.reference)."""
    import torch

    from attncc.ir.types import parse_dtype
    from attncc.lang import load_variant
    from attncc.reference import evaluate, max_error, random_inputs, tolerance

    var = load_variant(os.path.join(ROOT, man["variant_path"]), man["variant_name"])
    func = var.trace(parse_dtype(man["dtype"]))
    env = man["env"]
    rows = []
    for seed in (0, 1):
        inputs = random_inputs(func, env, seed)
        q, k, v = (_np_to_torch(inputs[n], dev) for n in man["inputs"])
        out = torch.full(man["out_shape"], float("nan"), dtype=q.dtype, device=dev)
        lse = torch.full(man["lse_shape"], float("nan"), dtype=torch.float32, device=dev)
        fn(q, k, v, out, lse)
        torch.cuda.synchronize()
        got = out.float().cpu().numpy()
        got_lse = lse.cpu().numpy()
        ref = evaluate(func, inputs, "float64", env)
        if not ref.lse:
            # a tensor-level program (examples/masked_softmax.py): its unfused IR has no
            # log-sum-exp; compiler.verify checks out and lse against the fused op's reference
            return verify_generic(man, fn, dev)
        naive = evaluate(func, inputs, "native", env)
        floor = 1e-3
        tol = tolerance(ref.outputs[0], naive.outputs[0], floor)
        err = max_error(got, ref.outputs[0])
        lse_tol = tolerance(ref.lse[0], naive.lse[0], floor)
        lse_err = max_error(got_lse, ref.lse[0])
        diff = np.nan_to_num(got - ref.outputs[0], nan=1e9, posinf=1e9, neginf=1e9)
        rows.append(dict(seed=seed, err=err, tol=tol, lse_err=lse_err, lse_tol=lse_tol,
                         ok=bool(err <= tol and lse_err <= lse_tol),
                         rel=float(np.linalg.norm(diff) / max(np.linalg.norm(ref.outputs[0]), 1e-30))))
    worst = max(rows, key=lambda r: max(r["err"] / r["tol"], r["lse_err"] / r["lse_tol"]))
    worst = dict(worst, ok=all(r["ok"] for r in rows))
    return worst


def _bench(fn, warmup=25, rep=200):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median") * 1e-3


def _mods(name):
    """score_mod / mask_mod and SDPA arguments matching benchmarks/gpu/variants.py."""
    import torch

    sys.path.insert(0, os.path.join(ROOT, "benchmarks", "gpu"))
    import importlib

    vmod = importlib.import_module("variants")
    causal = name in ("causal", "sliding_window", "alibi", "softcap", "gqa")
    score_mod = mask_mod = None
    if causal:
        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx
    if name == "sliding_window":
        W = vmod.WINDOW

        def mask_mod(b, h, q_idx, kv_idx):  # noqa: F811
            return (kv_idx <= q_idx) & (q_idx - kv_idx < W)
    if name == "alibi":
        H = vmod.HEADS

        def score_mod(s, b, h, q_idx, kv_idx):
            slope = torch.exp2(-8.0 * (h + 1).to(torch.float32) / H)
            return s - slope * (q_idx - kv_idx).to(torch.float32)
    if name == "softcap":
        C = vmod.SOFTCAP

        def score_mod(s, b, h, q_idx, kv_idx):
            return C * torch.tanh(s / C)
    sdpa_ok = name in ("full", "causal", "gqa")
    return score_mod, mask_mod, causal, sdpa_ok


def bench_one(man, fn, dev, flex=False):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dt = _torch_dtype(man["dtype"])
    shp = man["input_shapes"]
    torch.manual_seed(0)
    q, k, v = (torch.randn(shp[n], dtype=dt, device=dev) for n in man["inputs"])
    out = torch.full(man["out_shape"], float("nan"), dtype=dt, device=dev)
    lse = torch.full(man["lse_shape"], float("nan"), dtype=torch.float32, device=dev)
    fn(q, k, v, out, lse)
    torch.cuda.synchronize()
    res = {"flops": man["flops"]}
    res["attncc_s"] = _bench(lambda: fn(q, k, v, out, lse))
    res["nan"] = bool(torch.isnan(out).any().item())
    name = man["variant_name"]
    score_mod, mask_mod, causal, sdpa_ok = _mods(name)
    gqa = q.shape[1] != k.shape[1]
    ref = None
    if sdpa_ok:
        for label, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel([backend]):
                    def call():
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
                    o = call()
                    torch.cuda.synchronize()
                    res[f"{label}_s"] = _bench(call)
                    if ref is None:
                        ref = o
            except Exception as exc:  # a backend may refuse a shape or GQA
                res[f"{label}_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    if flex or ref is None:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            import torch._dynamo

            torch._dynamo.config.recompile_limit = 1000
            torch._dynamo.config.cache_size_limit = 1000
            cflex = torch.compile(flex_attention, dynamic=False)
            S, T = q.shape[2], k.shape[2]
            bm = create_block_mask(mask_mod, None, None, S, T, device=dev) if mask_mod else None

            def fcall():
                return cflex(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=gqa)
            o = fcall()
            torch.cuda.synchronize()
            if flex:
                res["flex_s"] = _bench(fcall)
            if ref is None:
                ref = o
        except Exception as exc:
            res["flex_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    if ref is not None:
        d = (out.float() - ref.float())
        res["max_abs_vs_ref"] = float(d.abs().max().item())
        res["rel_vs_ref"] = float(d.norm().item() / ref.float().norm().item())
    return res


# --------------------------------------------------------------------------- issue 4: table mode,
# captured tensors, fp8 (manifests with "generic": the host side is rebuilt with
# compile_variant(..., build=False), which needs no TVM: spec, tile maps, quantize prologue)

_HOSTS = {}


def host_kernel(man):
    """The CompiledKernel (no build) of a manifest: spec, config, IRs, tile maps, prologue."""
    key = man["id"]
    if key not in _HOSTS:
        from attncc.compiler import compile_variant

        c = man["compile"]
        cfg = {k: v for k, v in c["config"].items()}
        _HOSTS[key] = compile_variant(os.path.join(ROOT, c["path"]), target="cuda", dtype=c["dtype"],
                                      variant_name=c["name"], shapes=c["shapes"], config=cfg, build=False,
                                      tuning_db=False, target_options={"arch": "sm_90a"},
                                      quantize=c.get("quantize"))
    return _HOSTS[key]


def _set_options(options):
    """The kernel modules' experiment switches as the kernel was built with them (build.py's
    entry "options"): the host side builds its tables by them (a table column more or less)."""
    from attncc.targets import cuda

    for m in (cuda._wgmma_dense, cuda._wgmma_sparse):
        m._OPTIONS.clear()
        m._OPTIONS.update(options or {})


def _to_torch_any(a, dev):
    import torch

    a = np.ascontiguousarray(a)
    name = a.dtype.name
    if name == "bfloat16":
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16).to(dev)
    if name in ("float8_e4m3fn", "float8_e5m2"):
        return torch.from_numpy(a.view(np.uint8)).view(getattr(torch, name)).to(dev)
    return torch.from_numpy(a).to(dev)


def table_tiles(spec, cfg, function, table):
    """The tile map in a kernel's table: without the persistent kernel's row-order column and the
    rows' key limits of a document mask (cuda.block_tables)."""
    from attncc.targets import cuda

    bk = cfg.block_k if function == "main" else cuda.small_config(cfg).block_k
    return table[:, :-(-spec.kv_len // bk)]


def kernel_args(hk, operands, dev, tiles=None):
    """(q, k, v, tables, scales + captures, tiles, function) as torch tensors from the flash
    operands (numpy); function: "main", or "main_small" for a sparse call of a config with
    small_below (cuda.runtime_tables: the same choice the compiler's run and attncc.runtime make)."""
    from attncc.targets import cuda

    spec, cfg = hk.spec, hk.config
    q, k, v = operands[:3]
    extra = list(operands[3:])
    v = cuda.kernel_v(spec, cfg, v)
    tables = []
    function = "main"
    if cuda.use_block_table(spec, cfg):
        if tiles is None and spec.runtime_tile_map is not None:
            caps = [np.asarray(x).astype(cdt) for x, (_, _, cdt) in zip(extra[len(spec.scales):], spec.captures)]
            function, (table,) = cuda.runtime_tables(spec, cfg, caps)
        else:       # tiles None: the spec's map
            caps = [np.asarray(x).astype(cdt) for x, (_, _, cdt) in zip(extra[len(spec.scales):], spec.captures)]
            (table,) = cuda.block_tables(spec, cfg, tiles, caps)
        tables = [table]
        tiles = table_tiles(spec, cfg, function, table)
    extra = [np.asarray(x, np.float32) for x in extra[:len(spec.scales)]] + [
        np.asarray(x).astype(cdt) for x, (_, _, cdt) in zip(extra[len(spec.scales):], spec.captures)]
    return ([_to_torch_any(x, dev) for x in (q, k, v)], [_to_torch_any(t, dev) for t in tables],
            [_to_torch_any(x, dev) for x in extra], tiles, function)


def verify_generic(man, fn, dev, mod=None):
    """compiler.verify (DESIGN.md's rule; fp8 kernels against the quantized reference, P·V in
    fp8 with the naive kernel's P rounded alike) with the kernel run through tvm_ffi.  A config
    with small_below is also run on many short documents, so that its small-tile kernel
    (``mod["main_small"]``) is the one checked."""
    import torch

    from attncc.compiler import verify

    hk = host_kernel(man)
    spec = hk.spec
    ran = []

    def run_inputs(inputs):
        (q, k, v), tables, extra, _, function = kernel_args(hk, hk.flash_operands(inputs), dev)
        out = torch.full(man["out_shape"], float("nan"), dtype=_torch_dtype(spec.dtype), device=dev)
        lse = torch.full(man["lse_shape"], float("nan"), dtype=torch.float32, device=dev)
        (fn if function == "main" else mod[function])(q, k, v, out, lse, *tables, *extra)
        ran.append(function)
        torch.cuda.synchronize()
        return out.float().cpu().numpy(), lse.cpu().numpy()

    hk.run_inputs = run_inputs
    rows = []
    from attncc.targets import cuda as _cuda
    small = _cuda.small_below(spec, hk.config) > 0
    for seed in (0, 1, 2, 3, 4):
        inputs = hk.random_inputs(seed)
        if seed == 4:
            # a document mask with the rows' key limits (spec.row_runs): query blocks of one run
            # each (the limits) and of recurring ids (the ids) in one call
            if spec.row_runs is None:
                continue
            c = spec.captures[spec.row_runs.capture]
            n = inputs[c[0]].shape[-1]
            inputs[c[0]] = np.concatenate([np.repeat(np.arange(4), n // 8),
                                           10 + np.arange(n - 4 * (n // 8)) // 50 % 2]).astype(inputs[c[0]].dtype)
        elif seed >= 2:
            if not spec.captures or (seed == 3 and not small):
                continue
            # contiguous documents (sorted ids): empty, full and partial tiles, not only partial;
            # seed 3: documents of 40 tokens that never cross a 128-token boundary (a 128 x 128 map
            # of the diagonal only, sparse enough for the small-tile kernel; partial 64 x 32 tiles)
            for c in spec.captures:
                shape = inputs[c[0]].shape
                if seed == 2:
                    ids = np.sort(np.random.default_rng(7).integers(0, 5, shape))
                else:
                    i = np.broadcast_to(np.arange(shape[-1]), shape)
                    ids = (i // 128) * 4 + (i % 128) // 40
                inputs[c[0]] = ids.astype(inputs[c[0]].dtype)
        rep = verify(hk, inputs=inputs)
        rows.append(dict(seed=seed, err=rep.max_error, tol=rep.tolerance, lse_err=rep.lse_error,
                         lse_tol=rep.lse_tolerance, ok=bool(rep.passed), rel=float("nan"),
                         unquantized_err=rep.unquantized_error, function=ran[-1] if ran else None))
    small_ran = any(r["function"] == "main_small" for r in rows)
    if small and not small_ran:
        # (below ~S=4k no document ids make a 128 x 128 map that sparse: main_small is checked
        # by the longer entries and by check_small_export.py)
        print(f"note: {man['id']}: no call was sparse enough for main_small at this length", flush=True)
    worst = max(rows, key=lambda r: max(r["err"] / r["tol"], r["lse_err"] / r["lse_tol"]))
    return dict(worst, ok=all(r["ok"] for r in rows), small_kernel_ran=small_ran if small else None)


def _doc_ids(S, n, seed=0):
    """n contiguous documents of random lengths (at least S / (4 n) tokens each)."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(1.0, 3.0, n)
    cuts = np.round(np.cumsum(w) / w.sum() * S).astype(int)
    ids = np.zeros(S, np.int32)
    for i, c in enumerate(cuts[:-1]):
        ids[c:] = i + 1
    return ids


def _band_tiles(S, bq, bk, lo, up):
    """The (query block, key block) tiles a band's key loop visits (1) or skips (0)."""
    nq, nk = -(-S // bq), -(-S // bk)
    tiles = np.ones((nq, nk), np.int8)
    for qb in range(nq):
        q0, q1 = qb * bq, min(S, (qb + 1) * bq) - 1
        for kb in range(nk):
            j0, j1 = kb * bk, min(S, (kb + 1) * bk) - 1
            if (up is not None and j0 > q1 + up) or (lo is not None and j1 < q0 + lo):
                tiles[qb, kb] = 0
    return tiles


def bench_sparse(man, fn, dev, flex=True, mod=None, docs=()):
    """attncc (tile density, time) beside FlexAttention with a BlockMask of the same mask."""
    import torch

    hk = host_kernel(man)
    spec, cfg = hk.spec, hk.config
    sp = man["sparse"]
    S = spec.q_len
    dt = _torch_dtype(spec.dtype)
    torch.manual_seed(0)
    q, k, v = (torch.randn(man["input_shapes"][n], dtype=dt, device=dev) for n in ("q", "k", "v"))
    out = torch.empty(man["out_shape"], dtype=dt, device=dev)
    lse = torch.empty(man["lse_shape"], dtype=torch.float32, device=dev)
    cases = []
    if sp["mask"] in ("document", "document_causal"):
        for n in sp["docs"]:
            if docs and n not in docs:      # --docs: only these document counts
                continue
            cases.append((f"{'causal ' if sp['mask'] == 'document_causal' else ''}documents={n}", _doc_ids(S, n)))
    else:
        cases.append((sp.get("label") or {"full": "dense", "causal": "causal"}.get(sp["mask"], f"window={sp.get('window')}"),
                      None))
    rows = []
    for label, doc in cases:
        row = {"label": label, "mask": sp["mask"], "block_k": cfg.block_k,
               "cfg": f"{cfg.block_q}x{cfg.block_k} s{cfg.num_stages}" + next((" " + r for r in ("inorder", "pingpong") if man["id"].endswith("-" + r)), "")
                      + (f" c{cfg.query_blocks}" if getattr(cfg, "query_blocks", 1) > 1 else "")}
        run_fn = fn
        if doc is not None:
            from attncc.targets import cuda as _cuda
            t0 = time.time()
            function, (table,) = _cuda.runtime_tables(spec, cfg, [doc])      # small_below: maybe main_small
            row["tile_map_s"] = time.time() - t0
            tiles = table_tiles(spec, cfg, function, table)
            if function != "main":
                run_fn = mod[function]
                small = _cuda.small_config(cfg)
                row["cfg"] = f"{cfg.block_q}x{cfg.block_k}|{small.block_q}x{small.block_k}"
            row["function"] = function
            row["density128"] = float(np.mean(np.asarray(spec.runtime_tile_map([doc], 128, 128)) != 0))
            tables = [torch.from_numpy(np.ascontiguousarray(table, dtype=np.int32)).to(dev)]
            extra = [torch.from_numpy(doc).to(dev)]
            lens = np.bincount(doc).astype(np.float64)
            kept = (lens * (lens + 1) / 2).sum() if sp["mask"] == "document_causal" else (lens ** 2).sum()
            row["density_elements"] = float(kept / S / S)
        else:
            tiles = hk.tiles()
            tables, extra = [], []
            from attncc.targets import cuda as _cuda
            if _cuda.use_block_table(spec, cfg):       # a compile-time tile map is a kernel argument
                tables = [torch.from_numpy(_cuda.block_tables(spec, cfg, tiles)[0]).to(dev)]
            lo = spec.key_bounds.lower_offset
            up = spec.key_bounds.upper_offset
            if tiles is None:     # a band: the tiles the key loop visits
                tiles = _band_tiles(S, cfg.block_q, cfg.block_k, lo, up)
            t128 = spec.tile_map(128, 128) if spec.tile_map is not None else _band_tiles(S, 128, 128, lo, up)
            row["density128"] = float(np.mean(np.asarray(t128) != 0))
            # kept pairs of a band (exact key bounds) or of no mask, per row
            i = np.arange(S)
            hi_ = np.minimum(i + (up if up is not None else S), S - 1)
            lo_ = np.maximum(i + (lo if lo is not None else -S), 0)
            row["density_elements"] = float(np.clip(hi_ - lo_ + 1, 0, None).sum() / S / S)
            if sp["mask"] == "prefix":          # (kv <= q) | (kv < P): row i keeps max(i + 1, P) keys
                row["density_elements"] = float(np.maximum(i + 1, int(sp["prefix"])).sum() / S / S)
            elif sp["mask"] == "local_global":  # a causal window W plus G global keys
                W, G = int(sp["window"]), int(sp["globals"])
                row["density_elements"] = float((np.minimum(i + 1, W) + np.clip(i - W + 1, 0, G)).sum() / S / S)
            if sp.get("chunk"):   # chunked causal: causal inside each chunk
                c = int(sp["chunk"])
                lens = np.full(S // c, c, np.float64)
                if S % c:
                    lens = np.append(lens, S % c)
                row["density_elements"] = float((lens * (lens + 1) / 2).sum() / S / S)
        row["density"] = float(np.mean(np.asarray(tiles) != 0))

        def call():
            run_fn(q, k, v, out, lse, *tables, *extra)
        call()
        torch.cuda.synchronize()
        row["attncc_s"] = _bench(call)
        row["flops"] = 4.0 * spec.batch * spec.q_heads * S * S * spec.head_dim * row["density_elements"]
        if flex:
            try:
                row.update(_flex_sparse(q, k, v, sp["mask"], sp.get("window", sp.get("chunk", sp.get("prefix"))),
                                        doc, dev, out, sp.get("globals")))
            except Exception as exc:
                row["flex_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        rows.append(row)
        print(f"SPARSE {man['id']:<60} {label:<22} density {row['density']:.3f} attncc {row['attncc_s'] * 1e3:8.3f} ms"
              + (f"  flex {row['flex_s'] * 1e3:8.3f} ms (blocks {row['flex_density']:.3f})  flex/attncc "
                 f"{row['flex_s'] / row['attncc_s']:.2f}  maxabs {row['max_abs_vs_flex']:.1e}" if "flex_s" in row
                 else f"  {row.get('flex_error', '')}"), flush=True)
    return {"sparse_rows": rows}


_FLEX = {}


def _flex_sparse(q, k, v, mask, window, doc, dev, out, globals_=None):
    """FlexAttention with a BlockMask of ``mask`` (``window``: the window, the chunk length or the
    prefix; ``globals_``: local_global's global keys)."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    import torch._dynamo

    torch._dynamo.config.recompile_limit = 1000
    torch._dynamo.config.cache_size_limit = 1000
    if "f" not in _FLEX:
        _FLEX["f"] = torch.compile(flex_attention, dynamic=False)
    cflex = _FLEX["f"]
    S = q.shape[2]
    if mask == "full":
        mask_mod = None
    elif mask == "causal":
        def mask_mod(b, h, qi, ki):
            return ki <= qi
    elif mask == "window":
        W = window

        def mask_mod(b, h, qi, ki):
            return (ki <= qi) & (qi - ki < W)
    elif mask == "chunk":         # chunked causal (variants.chunk_*): window is the chunk length
        C = window

        def mask_mod(b, h, qi, ki):
            return (qi // C == ki // C) & (ki <= qi)
    elif mask == "prefix":        # prefix-LM (variants.prefix_*): window is the prefix
        P = window

        def mask_mod(b, h, qi, ki):
            return (ki <= qi) | (ki < P)
    elif mask == "local_global":  # variants.local_global: a causal window plus global keys
        W, G = window, globals_

        def mask_mod(b, h, qi, ki):
            return ((ki <= qi) & (qi - ki < W)) | (ki < G)
    else:
        dt = torch.from_numpy(doc).to(dev)
        if mask == "document":
            def mask_mod(b, h, qi, ki):
                return dt[qi] == dt[ki]
        else:
            def mask_mod(b, h, qi, ki):
                return (dt[qi] == dt[ki]) & (ki <= qi)
    res = {}
    bm = None
    if mask_mod is not None:
        t0 = time.time()
        bm = create_block_mask(mask_mod, None, None, S, S, device=dev, BLOCK_SIZE=128)
        torch.cuda.synchronize()
        res["flex_block_mask_s"] = time.time() - t0
        nq = bm.kv_num_blocks.shape[-1]
        nk = -(-S // 128)
        n = bm.kv_num_blocks.sum().item() + (bm.full_kv_num_blocks.sum().item() if bm.full_kv_num_blocks is not None else 0)
        res["flex_density"] = n / (nq * nk)
    else:
        res["flex_density"] = 1.0

    def fcall():
        return cflex(q, k, v, block_mask=bm)
    o = fcall()
    torch.cuda.synchronize()
    res["flex_s"] = _bench(fcall)
    res["max_abs_vs_flex"] = float((o.float() - out.float()).abs().max().item())
    return res


def _fp8_inputs(hk, man, dev):
    """q, k (and v) quantized per head on the GPU (the prologue, not timed), v in the kernel's layout."""
    import torch

    from attncc.targets import _cuda_wgmma_sparse as _cuda_wgmma

    spec = hk.spec
    torch.manual_seed(0)
    x = {n: torch.randn(man["input_shapes"][n], dtype=torch.bfloat16, device=dev) for n in ("q", "k", "v")}
    f8 = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2, "int8": torch.int8}[spec.quant_dtype]
    qmax = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0, torch.int8: 127.0}[f8]
    quant, scales = {}, []
    for n in ("q", "k", "v") if spec.quant_pv else ("q", "k"):
        a = x[n].float()
        sc = (a.abs().amax(dim=(2, 3), keepdim=True) / qmax).clamp_min(1e-12)
        quant[n] = (a / sc).round().clamp(-qmax, qmax).to(f8) if f8 == torch.int8 else (a / sc).to(f8)
        scales.append(sc.float().contiguous())
    v = x["v"]
    if spec.quant_pv:
        T = v.shape[2]
        perm = torch.from_numpy(_cuda_wgmma.v_key_permutation(T)).to(dev)
        vq = quant["v"]
        T32 = _cuda_wgmma.padded_kv_len(T)
        if T32 != T:
            vq = torch.cat([vq, torch.zeros(vq.shape[:2] + (T32 - T, vq.shape[3]), dtype=f8, device=dev)], 2)
        v = vq.view(torch.uint8)[:, :, perm, :].transpose(2, 3).contiguous().view(f8)
    return x, quant["q"], quant["k"], v, scales


def bench_fp8(man, fn, dev):
    """TFLOP/s of the kernel (bf16, fp8 Q·Kᵀ, fp8 Q·Kᵀ + P·V) on the same random data; the output's
    relative error against bf16 SDPA on the unquantized inputs."""
    import torch
    import torch.nn.functional as F

    hk = host_kernel(man)
    spec = hk.spec
    out = torch.empty(man["out_shape"], dtype=torch.bfloat16, device=dev)
    lse = torch.empty(man["lse_shape"], dtype=torch.float32, device=dev)
    if spec.quant_dtype:
        x, q, k, v, scales = _fp8_inputs(hk, man, dev)
    else:
        torch.manual_seed(0)
        x = {n: torch.randn(man["input_shapes"][n], dtype=torch.bfloat16, device=dev) for n in ("q", "k", "v")}
        q, k, v, scales = x["q"], x["k"], x["v"], []

    def call():
        fn(q, k, v, out, lse, *scales)
    call()
    torch.cuda.synchronize()
    res = {"attncc_s": _bench(call)}
    causal = man["variant_name"] == "causal"
    ref = F.scaled_dot_product_attention(x["q"], x["k"], x["v"], is_causal=causal)
    res["rel_vs_sdpa_bf16"] = float((out.float() - ref.float()).norm() / ref.float().norm())
    res["nan"] = bool(torch.isnan(out).any().item())
    print(f"FP8 {man['id']:<80} {man['fp8']['group']:<14} {man['fp8']['mode']:<17} "
          f"TFLOP/s {man['flops'] / res['attncc_s'] / 1e12:6.1f}  rel err vs bf16 SDPA {res['rel_vs_sdpa_bf16']:.1e}"
          + (" NAN!" if res["nan"] else ""), flush=True)
    return res


def sparse_summary(results, manifests):
    """The issue-4 tables: time vs density against density x dense time, Flex ratios; fp8."""
    by_id = {m["id"]: m for m in manifests}
    rows = [(r, x) for r in results for x in r.get("sparse_rows", [])]
    if rows:
        # ideal = the kernel's own tile density x the FASTEST dense time of any config (the strict
        # reading of the bar); "own" = against the dense time of the same config; "bm" = against
        # the 128 x 128 tile density (FlexAttention's BlockMask) x the fastest dense time
        dense = {x["cfg"]: x["attncc_s"] for r, x in rows if x["mask"] == "full"}
        best_dense = min(dense.values()) if dense else float("nan")
        print(f"\nsparsity (bf16, B=1, H=16, S=16k, D=128; density = non-empty tiles of the kernel's own "
              f"block_q x block_k; ideal = density x the fastest dense time ({best_dense * 1e3:.3f} ms); flex "
              "(BlockMask 128 x 128) / attncc > 1: attncc faster)")
        print(f"{'mask':<22} {'config':<16} {'density':>8} {'attncc ms':>10} {'ideal ms':>9} {'ratio':>6} {'own':>5} "
              f"{'bm':>5} {'flex ms':>9} {'flex/attncc':>11} {'TFLOP/s':>8} {'map ms':>7}")
        best = {}
        for r, x in sorted(rows, key=lambda rx: (rx[1]["label"], rx[1]["cfg"])):
            ideal = x["density"] * best_dense
            ratio = x["attncc_s"] / ideal
            own = x["attncc_s"] / (x["density"] * dense[x["cfg"]]) if x["cfg"] in dense else float("nan")
            bm = x["attncc_s"] / (x["density128"] * best_dense) if x.get("density128") else float("nan")
            fl = x.get("flex_s")
            if x["mask"] != "full" and (x["label"] not in best or x["attncc_s"] < best[x["label"]][3]):
                best[x["label"]] = (ratio, x["cfg"], (fl / x["attncc_s"]) if fl else float("nan"), x["attncc_s"], bm)
            print(f"{x['label']:<22} {x['cfg']:<16} {x['density']:>8.3f} {x['attncc_s'] * 1e3:>10.3f} {ideal * 1e3:>9.3f} "
                  f"{ratio:>6.2f} {own:>5.2f} {bm:>5.2f} {(fl or float('nan')) * 1e3:>9.3f} "
                  f"{(fl / x['attncc_s']) if fl else float('nan'):>11.2f} "
                  f"{x['flops'] / x['attncc_s'] / 1e12:>8.1f} {x.get('tile_map_s', 0) * 1e3:>7.1f}")
        print("\nfastest config per mask: ratio (own tiles), bm (128 x 128 tiles; bar <= 1.2), flex/attncc (bar >= 1.0)")
        for label, (ratio, cfgname, fr, _t, bm) in sorted(best.items(), key=lambda kv: kv[0]):
            print(f"  {label:<22} {cfgname:<16} {ratio:5.2f}  {bm:5.2f}  {fr:5.2f}")
    f8 = [(by_id[r["id"]], r) for r in results if by_id.get(r["id"], {}).get("fp8") and "attncc_s" in r]
    sync8 = [(m, r) for m, r in f8 if m["fp8"]["mode"].endswith(" sync")]
    f8 = [(m, r) for m, r in f8 if not m["fp8"]["mode"].endswith(" sync")]
    if sync8:
        # build.py --only quantsync: the mma.sync kernel (sm_80 / sm_89's) with 8-bit inputs, per-head scales
        print("\nint8 / fp8 on the mma.sync kernel vs its bf16, D=128, H=16, B*S=16k: TFLOP/s (ratio to bf16; "
              "rel err vs bf16 SDPA)")
        groups = {}
        for m, r in sync8:
            groups.setdefault(m["fp8"]["group"], {})[m["fp8"]["mode"][:-5]] = (
                m["flops"] / r["attncc_s"] / 1e12, r.get("rel_vs_sdpa_bf16"))
        modes = ["bf16", "int8 QK", "fp8 QK", "fp8 QK+PV"]
        print(f"{'shape':<16} " + " ".join(f"{mo:>22}" for mo in modes))
        for g, d in groups.items():
            b = d.get("bf16", (float("nan"), None))[0]
            cells = []
            for mo in modes:
                t, e = d.get(mo, (float("nan"), None))
                cells.append(f"{t:7.1f} ({t / b:4.2f}; {e or float('nan'):.0e})")
            print(f"{g:<16} " + " ".join(f"{c:>22}" for c in cells))
    if f8:
        print("\nfp8 (e4m3, per-head scales) vs bf16, wgmma kernel, D=128, H=16, B*S=16k: TFLOP/s")
        groups = {}
        for m, r in f8:
            groups.setdefault(m["fp8"]["group"], {})[m["fp8"]["mode"]] = (m["flops"] / r["attncc_s"] / 1e12,
                                                                           r.get("rel_vs_sdpa_bf16"))
        print(f"{'shape':<16} {'bf16':>7} {'fp8 QK':>7} {'fp8 QK+PV':>10} {'QK/bf16':>8} {'QK+PV/bf16':>11} "
              f"{'rel err QK':>10} {'rel err QK+PV':>13}")
        for g, d in groups.items():
            b = d.get("bf16", (float("nan"), None))[0]
            a = d.get("fp8 QK", (float("nan"), None))
            c = d.get("fp8 QK+PV", (float("nan"), None))
            print(f"{g:<16} {b:>7.1f} {a[0]:>7.1f} {c[0]:>10.1f} {a[0] / b:>8.2f} {c[0] / b:>11.2f} "
                  f"{a[1] or float('nan'):>10.1e} {c[1] or float('nan'):>13.1e}")
        if any(mode.endswith(" inorder") for d in groups.values() for mode in d):
            # build.py --only fp8pp: the same fp8 kernels on the in-order schedule, same run
            print("\nfp8 on the ping-pong kernel vs the in-order kernel (TFLOP/s; ratio > 1: ping-pong faster)")
            print(f"{'shape':<16} {'QK in-order':>11} {'QK ping-pong':>12} {'ratio':>6} "
                  f"{'QK+PV in-order':>14} {'QK+PV ping-pong':>15} {'ratio':>6}")
            for g, d in groups.items():
                nan = (float("nan"), None)
                qi, qp = d.get("fp8 QK inorder", nan)[0], d.get("fp8 QK", nan)[0]
                pi, pp = d.get("fp8 QK+PV inorder", nan)[0], d.get("fp8 QK+PV", nan)[0]
                print(f"{g:<16} {qi:>11.1f} {qp:>12.1f} {qp / qi:>6.2f} {pi:>14.1f} {pp:>15.1f} {pp / pi:>6.2f}")


_COPY_TBS = {}


def copy_bandwidth(dev, nbytes=1 << 30):
    """Device-to-device copy bandwidth (bytes read + bytes written per second), measured once."""
    import torch

    if "tbs" not in _COPY_TBS:
        src = torch.randn(nbytes // 2, dtype=torch.bfloat16, device=dev)
        dst = torch.empty_like(src)
        t = _bench(lambda: dst.copy_(src))
        _COPY_TBS["tbs"] = 2 * nbytes / t / 1e12
        del src, dst
    return _COPY_TBS["tbs"]


def bench_decode(man, fn, dev):
    """Decode (split-KV kernel): memory bandwidth beside SDPA and a device copy, and the
    output checked against a float64 reference computed on the GPU at the benchmark shape."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dt = _torch_dtype(man["dtype"])
    shp = man["input_shapes"]
    torch.manual_seed(0)
    q, k, v = (torch.randn(shp[n], dtype=dt, device=dev) for n in man["inputs"])
    out = torch.full(man["out_shape"], float("nan"), dtype=dt, device=dev)
    lse = torch.full(man["lse_shape"], float("nan"), dtype=torch.float32, device=dev)
    fn(q, k, v, out, lse)
    torch.cuda.synchronize()
    res = {"bytes": man["bytes"]}
    res["nan"] = bool(torch.isnan(out).any().item() or torch.isnan(lse).any().item())
    # float64 reference, one batch at a time (GQA: kv head h // group)
    scale = man["spec"]["scale"]
    group = q.shape[1] // k.shape[1]
    num = den = lse_err = 0.0
    for b in range(q.shape[0]):
        kb = k[b].double().repeat_interleave(group, 0)
        vb = v[b].double().repeat_interleave(group, 0)
        s = (q[b].double() @ kb.transpose(-1, -2)) * scale
        ref_lse = torch.logsumexp(s, -1)
        ref = torch.softmax(s, -1) @ vb
        num += float((out[b].double() - ref).norm() ** 2)
        den += float(ref.norm() ** 2)
        lse_err = max(lse_err, float((lse[b].double() - ref_lse).abs().max()))
        del kb, vb, s, ref
    res["rel64"] = (num / den) ** 0.5
    res["lse_err64"] = lse_err
    res["attncc_s"] = _bench(lambda: fn(q, k, v, out, lse))
    gqa = q.shape[1] != k.shape[1]
    for label, backend in (("sdpa", None), ("flash", SDPBackend.FLASH_ATTENTION),
                           ("efficient", SDPBackend.EFFICIENT_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            def call():
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
            if backend is None:
                o = call()
                torch.cuda.synchronize()
                res["sdpa_s"] = _bench(call)
                d = o.float() - out.float()
                res["rel_vs_sdpa"] = float(d.norm() / o.float().norm())
            else:
                with sdpa_kernel([backend]):
                    call()
                    torch.cuda.synchronize()
                    res[f"{label}_s"] = _bench(call)
        except Exception as exc:  # a backend may refuse GQA or the shape
            res[f"{label}_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    res["copy_tbs"] = copy_bandwidth(dev)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.join(ROOT, ".gpu"))
    ap.add_argument("--kind", choices=("verify", "bench"))
    ap.add_argument("--match", default="", help="only kernels whose id matches this regular expression "
                    "(a plain substring works)")
    ap.add_argument("--flex", action="store_true", help="also time FlexAttention (torch.compile)")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--docs", type=int, action="append", default=[],
                    help="document masks: only these document counts (repeatable; e.g. to profile one)")
    args = ap.parse_args(argv)

    import torch

    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}")
    tvm_ffi, stats = load_runtime(os.path.join(args.dir, "rt"), os.path.join(args.dir, "fatbin"))
    manifests = []
    for path in sorted(glob.glob(os.path.join(args.dir, "kernels", "*.json"))):
        with open(path) as f:
            man = json.load(f)
        if args.kind and man["kind"] != args.kind:
            continue
        if args.match and not re.search(args.match, man["id"]):
            continue
        manifests.append(man)
    results = []
    t_start = time.time()
    for man in manifests:
        row = {"id": man["id"], "kind": man["kind"]}
        _set_options((man.get("compile") or {}).get("options"))
        try:
            t0 = time.time()
            mod = tvm_ffi.load_module(os.path.join(args.dir, "kernels", man["id"] + ".so"))
            fn = mod["main"]
            row["load_s"] = time.time() - t0
            if man["kind"] == "verify" and man.get("generic"):
                row.update(verify_generic(man, fn, dev, mod))
                print(f"{'PASS' if row['ok'] else 'FAIL'} {man['id']:<78} err {row['err']:.2e} "
                      f"(tol {row['tol']:.2e}) lse {row['lse_err']:.2e} (tol {row['lse_tol']:.2e})"
                      + (f" vs unquantized {row['unquantized_err']:.2e}" if row.get("unquantized_err") else ""),
                      flush=True)
            elif man.get("sparse"):
                row.update(bench_sparse(man, fn, dev, flex=args.flex, mod=mod, docs=args.docs))
            elif man.get("fp8"):
                row.update(bench_fp8(man, fn, dev))
            elif man["kind"] == "verify":
                row.update(verify_one(man, fn, dev))
                print(f"{'PASS' if row['ok'] else 'FAIL'} {man['id']:<78} err {row['err']:.2e} "
                      f"(tol {row['tol']:.2e}) lse {row['lse_err']:.2e} (tol {row['lse_tol']:.2e}) "
                      f"rel {row['rel']:.1e}", flush=True)
            elif man.get("decode"):
                row.update(bench_decode(man, fn, dev))
                tbs = lambda key: man["bytes"] / row[key] / 1e12 if row.get(key) else float("nan")  # noqa: E731
                row["attncc_tbs"] = tbs("attncc_s")
                sdpa_best = max((tbs(x + "_s") for x in ("sdpa", "flash", "efficient", "cudnn")
                                 if row.get(x + "_s")), default=float("nan"))
                row["sdpa_tbs"], row["sdpa_best_tbs"] = tbs("sdpa_s"), sdpa_best
                print(f"DECODE {man['id']:<68} TB/s attncc {row['attncc_tbs']:5.2f}  sdpa {row['sdpa_tbs']:5.2f} "
                      f"(best backend {sdpa_best:5.2f})  copy {row['copy_tbs']:5.2f}  "
                      f"attncc/copy {row['attncc_tbs'] / row['copy_tbs']:.2f}  attncc/sdpa "
                      f"{row['attncc_tbs'] / row['sdpa_tbs']:.2f}  {row['attncc_s'] * 1e6:7.1f} us  "
                      f"rel64 {row['rel64']:.1e} lse64 {row['lse_err64']:.1e} vs-sdpa {row.get('rel_vs_sdpa', float('nan')):.1e}"
                      + (" NAN!" if row.get("nan") else ""), flush=True)
            else:
                row.update(bench_one(man, fn, dev, flex=args.flex and man.get("compare_flex", False)))
                tf = lambda key: row[key] and man["flops"] / row[key] / 1e12  # noqa: E731
                parts = [f"attncc {tf('attncc_s'):6.1f}"]
                for key in ("cudnn", "flash", "flex"):
                    if f"{key}_s" in row:
                        parts.append(f"{key} {tf(key + '_s'):6.1f}")
                print(f"BENCH {man['id']:<70} TFLOP/s " + "  ".join(parts)
                      + f"  maxabs {row.get('max_abs_vs_ref', float('nan')):.1e}"
                      + (" NAN!" if row.get("nan") else ""), flush=True)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            print(f"ERROR {man['id']}: {row['error'][:300]}", flush=True)
        results.append(row)
    print(f"fatbins: {stats}; {time.time() - t_start:.0f} s")
    ver = [r for r in results if r["kind"] == "verify"]
    if ver:
        print(f"verify: {sum(1 for r in ver if r.get('ok'))}/{len(ver)} passed")
    dec = [r for r in results if "attncc_tbs" in r]
    if dec:
        print("decode (B=16, 32/8 heads, D=128, bf16; TB/s = (q + k + v + out + lse bytes) / time):")
        for r in sorted(dec, key=lambda r: (r["id"].split("_T")[1], -r["attncc_tbs"])):
            print(f"  {r['id']:<66} attncc {r['attncc_tbs']:5.2f}  sdpa {r['sdpa_tbs']:5.2f}  "
                  f"copy {r['copy_tbs']:5.2f}  x copy {r['attncc_tbs'] / r['copy_tbs']:.2f}  "
                  f"x sdpa {r['attncc_tbs'] / r['sdpa_tbs']:.2f}")
    sparse_summary(results, manifests)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": props.name, "torch": torch.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
