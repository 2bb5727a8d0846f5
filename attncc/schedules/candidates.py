"""The split tuning flow, build side: every candidate of a search space, built and exported
with a manifest, for a machine that has the GPU but not TVM's compiler.

    attncc tune examples/causal_mha.py --target cuda --arch sm_90a --dtype bf16 \\
        --shape B=4,H=16,S=4096,D=128 --export-candidates cands/
    # on the GPU machine (TVM runtime + tvm-ffi + torch; see measure_candidates.py):
    python -m attncc.schedules.measure_candidates cands/ --out results.jsonl
    # back here:
    attncc tune --ingest results.jsonl [--db tuning.jsonl]

One call exports one kernel (variant, shape, dtype, arch) into ``DIR/<slug>/``:

    manifest.json        what the measuring side needs, with no TVM and no variant code run:
                         the tuning key (fingerprint, shape bucket, dtype, target), the spec
                         (dims, scale, arguments and their shapes), how to check the result
                         (``reference``), the space (knobs, size, valid configs, rejections
                         counted by reason), the default config, and per candidate its
                         config, file, the sha256 of its CUDA source, build seconds and the
                         cost model's prediction
    <id>.so              ``export_library`` of the built module (host code + CUDA source;
                         TVM compiles the source when the module is loaded, through the
                         ``tvm_callback_cuda_compile`` global function)
    <id>.runtime.json    the manifest ``attncc export`` would write for this config (the
                         arguments: quantize prologue, V layout, tile map, scales, captured
                         inputs); ``<id>.tile_map.npy`` a compile-time tile map.  The measuring
                         side calls the candidate through attncc.runtime with them
    captures.npz         a mask of captured inputs: the data every candidate is measured on
    DIR/src/<sha256>.cu  the CUDA source, so that the GPU side can compile every candidate
                         with nvcc in parallel before loading any (keyed by sha256, shared
                         between kernels with the same source)
    DIR/fatbin/<sha256>.fatbin   (with ``fatbin=True``) compiled here instead

Several calls may write into the same DIR (one subfolder per kernel).  Configs that
cannot build are rejected before any build, the reason counted (``space.rejected``); a
candidate whose build fails is listed under ``build_failed`` with the error.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from typing import Callable, Optional

from attncc.errors import AttnccError
from attncc.schedules.space import config_dict

FORMAT = "attncc-candidates/1"
_WORKER_CACHE: dict = {}


def config_id(config) -> str:
    """A short file name for a config: its knob values ('wgmma-q128-k128-w8-s2')."""
    d = config_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    parts = []
    if "mma" in d:
        parts.append(str(d["mma"]))
    short = {"block_q": "q", "block_k": "k", "num_warps": "w", "num_stages": "s", "num_splits": "p",
             "block_rows": "r"}
    for name, value in d.items():
        if name == "mma":
            continue
        if name == "q_in_registers":
            if d.get("mma") != "wgmma":
                parts.append("qreg" if value else "qsmem")
            continue
        parts.append(f"{short.get(name, name)}{value}")
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))


def _slug(kernel, arch: str) -> str:
    """The kernel's folder: variant, dtype, dims, the quantization if any (a quantized kernel is
    another kernel, under its own tuning key), arch."""
    dims = "_".join(f"{a}{b}" for a, b in kernel.env.items())
    spec = kernel.spec
    quant = f"-{spec.quant_dtype}{'+pv' if spec.quant_pv else ''}" if spec.quant_dtype else ""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", f"{kernel.variant}-{spec.dtype}-{dims}{quant}-{arch}")


def reference_of(spec) -> dict:
    """How the measuring side checks a candidate's result.  ``sdpa``: the kernel is plain
    scaled-dot-product attention (no score_mod; no mask or the causal one), so a float32
    evaluation on the GPU is exact enough; a quantized one (``quant``: its dtype, and whether
    P·V is quantized) is checked against that evaluation on its dequantized operands (the
    runtime's own prologue), the naive error counting P in e4m3 where P·V is fp8.  Else
    ``default``: every candidate is compared with the default config's output (a candidate
    must agree with the kernel compile uses today; the default itself is checked against the
    reference by the CUDA tests), within ``rel`` of the output's largest magnitude: 2 %, or
    5 % where P·V is quantized -- about twice what two correct configs differ by (H200: 0.2-0.4 %
    unquantized and fp8 Q·Kᵀ, 2.2 % fp8 P·V; benchmarks/gpu/RESULTS.md, "The split tuning flow
    for quantized and sparse kernels")."""
    kb = spec.key_bounds
    quant = getattr(spec, "quant_dtype", None)
    plain = (spec.score_mod is None and not getattr(spec, "captures", ()) and spec.runtime_tile_map is None)
    q = {"quant": {"dtype": quant, "pv": bool(spec.quant_pv)}} if quant else {}
    if plain and spec.mask_mod is None and kb.lower_offset is None and kb.upper_offset is None:
        return {"kind": "sdpa", "causal": False, "scale": spec.scale, **q}
    if plain and kb.exact and kb.lower_offset is None and kb.upper_offset == 0 and spec.q_len == spec.kv_len:
        return {"kind": "sdpa", "causal": True, "scale": spec.scale, **q}
    rel = 0.05 if quant and spec.quant_pv else 0.02
    return {"kind": "default", "scale": spec.scale, "rel": rel, **q}


def write_runtime_files(kernel, kdir: str, cid: str) -> dict:
    """Beside a candidate's library ``<cid>.so``: ``<cid>.runtime.json``, the manifest
    ``attncc export`` would write for this config (its arguments: quantize prologue, V layout,
    tile map, scales, captured inputs), and the compile-time tile map ``<cid>.tile_map.npy``
    where the kernel has one.  The measuring side calls the candidate through attncc.runtime
    with them, as an exported kernel is called.  Returns the candidate entry's fields."""
    import numpy as np

    from attncc.export import _static_tables, build_manifest

    man = build_manifest(kernel)
    files = {"kernel": {"path": cid + ".so"}}
    tables = _static_tables(kernel)
    if tables is not None:
        np.save(os.path.join(kdir, cid + ".tile_map.npy"), tables)
        files["tile_map"] = {"path": cid + ".tile_map.npy"}
    man["files"] = files
    with open(os.path.join(kdir, cid + ".runtime.json"), "w") as f:
        json.dump(man, f)
    return {"runtime": cid + ".runtime.json"}


def write_captures(spec, kdir: str) -> Optional[str]:
    """The captured inputs every candidate of the kernel is measured on (document ids:
    attncc.targets.cuda.measure_captures, what the in-process tuner uses), as ``captures.npz``."""
    import numpy as np

    if not spec.captures:
        return None
    from attncc.targets.cuda import measure_captures

    caps = measure_captures(spec, np.random.default_rng(0))
    np.savez(os.path.join(kdir, "captures.npz"), **{c[0]: a for c, a in zip(spec.captures, caps)})
    return "captures.npz"


# --------------------------------------------------------------------------- building


def _build_worker(workload: tuple, values: dict, so_path: str, src_dir: str) -> dict:
    """In a build process: build one config, export it, write its source by sha256."""
    import logging

    logging.disable(logging.WARNING)
    from attncc.compiler import compile_variant

    variant, variant_name, shapes, dtype, passes, options, quantize = workload
    kernel = _WORKER_CACHE.get(workload)
    if kernel is None:
        kernel = _WORKER_CACHE[workload] = compile_variant(
            variant, target="cuda", shapes=dict(shapes), dtype=dtype, passes=passes, variant_name=variant_name,
            build=False, target_options=dict(options), tuning_db=False, quantize=dict(quantize) or None)
    tgt = kernel.target
    t0 = time.perf_counter()
    try:
        config = dataclasses.replace(tgt.default_config(kernel.spec), **values)
        built = tgt.build(kernel.spec, config, dict(options)["arch"])
        source = tgt.source(built)
        tgt.export_library(built, so_path)
        runtime = write_runtime_files(dataclasses.replace(kernel, config=config, built=built),
                                      os.path.dirname(so_path), os.path.basename(so_path)[:-3])
    except Exception as exc:  # noqa: BLE001 - a failed candidate is recorded, never fatal
        text = str(exc).strip().splitlines()
        return {"ok": False, "error": f"{type(exc).__name__}: {text[-1] if text else ''}"[:500],
                "build_s": time.perf_counter() - t0}
    sha = hashlib.sha256(source.encode()).hexdigest()
    path = os.path.join(src_dir, sha + ".cu")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    return {"ok": True, "sha256": sha, "build_s": time.perf_counter() - t0,
            "shared_memory_bytes": tgt.shared_memory_bytes(kernel.spec, config), **runtime}


def nvcc_fatbin(src_path: str, fatbin_path: str, arch: str, nvcc: str = "nvcc") -> tuple:
    """Compile one CUDA source into a fatbin for ``arch``: (ok, log, registers, spill bytes)."""
    code = f"compute_{arch[3:]}"
    tmp = f"{fatbin_path}.{os.getpid()}.tmp"
    p = subprocess.run([nvcc, "-fatbin", "-O3", f"-gencode=arch={code},code={arch}", "-Xptxas", "-v",
                        "-diag-suppress", "177,1046", src_path, "-o", tmp], capture_output=True, text=True)
    log = p.stdout + p.stderr
    if p.returncode == 0:
        os.replace(tmp, fatbin_path)
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores", log)
    return (p.returncode == 0, log[-2000:], int(regs[-1]) if regs else None,
            int(spills[-1]) if spills else None)


def export_candidates(variant, out_dir: str, target: str = "cuda", shapes: Optional[dict] = None, dtype=None, *,
                      variant_name: Optional[str] = None, target_options: Optional[dict] = None,
                      passes: Optional[str] = None, knobs: Optional[dict] = None, fatbin: bool = False,
                      jobs: Optional[int] = None, dry_run: bool = False, quantize: Optional[dict] = None,
                      on_event: Optional[Callable] = None) -> dict:
    """Export every valid candidate of ``variant``'s space at ``shapes`` into
    ``out_dir/<slug>/`` and return the manifest (also written as manifest.json there).

    ``knobs`` ({name: values}) narrows the family's knob values; ``dry_run`` enumerates and
    writes the manifest without building; ``fatbin`` compiles each source with nvcc here
    too; ``quantize`` (compile_variant's) exports the quantized kernel, tuned under its own key;
    ``on_event(kind, **info)`` gets "start" (candidates=n) and "built" (index, id, ok).  Every
    argument the kernel takes besides q, k, v (tile map, scales, captured inputs) is described
    per candidate (``write_runtime_files``) and supplied on the measuring side by attncc.runtime."""
    from attncc import __version__
    from attncc.compiler import compile_variant
    from attncc.passes.pipeline import DEFAULT_PIPELINE
    from attncc.schedules import get_family
    from attncc.schedules.db import make_key, now_iso
    from attncc.schedules.space import Knob, SearchSpace

    if target != "cuda":
        raise AttnccError(f"--export-candidates is for GPU targets measured on another machine (cuda), "
                          f"not {target}: tune {target} here with attncc tune")
    options = dict(target_options or {})
    if not options.get("arch"):
        raise AttnccError("--export-candidates needs --arch (the GPU the candidates are for, e.g. sm_90a)")
    emit = on_event or (lambda *a, **k: None)
    passes = passes or DEFAULT_PIPELINE
    t0 = time.perf_counter()
    if isinstance(variant, str):
        variant = os.path.abspath(variant)
    else:
        raise AttnccError("export_candidates takes a variant file (build processes load it by path)")
    kernel = compile_variant(variant, target=target, shapes=shapes, dtype=dtype, passes=passes,
                             variant_name=variant_name, build=False, target_options=options, tuning_db=False,
                             quantize=quantize)
    family = get_family(target)
    space = SearchSpace(target, kernel.spec, options)
    if knobs:
        unknown = set(knobs) - {k.name for k in space.knobs}
        if unknown:
            raise AttnccError(f"target {target} has no tunable knob(s) {', '.join(sorted(unknown))} for this "
                              f"kernel (knobs: {', '.join(k.name for k in space.knobs)})")
        space = SearchSpace(target, kernel.spec, options,
                            [Knob(k.name, tuple(knobs.get(k.name, k.values)), k.doc) for k in space.knobs])
    valid = space.valid_configs()
    default = space.default()
    configs = list(valid)
    if default not in configs:
        try:
            family.validate(kernel.spec, default, options)
            configs.insert(0, default)           # the baseline is always measured
        except Exception:  # noqa: BLE001
            pass
    if not configs:
        raise space.nothing_valid()
    key = make_key(kernel.source_ir, kernel.spec, target, family.device_name(options))
    slug = _slug(kernel, options["arch"])
    kdir = os.path.join(out_dir, slug)
    src_dir = os.path.join(out_dir, "src")
    os.makedirs(kdir, exist_ok=True)
    os.makedirs(src_dir, exist_ok=True)
    for old in os.listdir(kdir):                 # a re-export replaces the kernel's folder
        if old.endswith((".so", ".runtime.json", ".tile_map.npy")) or old in ("manifest.json", "captures.npz"):
            os.remove(os.path.join(kdir, old))
    captures = write_captures(kernel.spec, kdir)
    entries = []
    for c in configs:
        try:
            predicted = float(family.cost_model(kernel.spec, c, options))
        except Exception:  # noqa: BLE001
            predicted = None
        cid = config_id(c)
        entry = {"id": cid, "config": config_dict(c), "file": cid + ".so",
                 "default": c == default, "predicted_s": predicted}
        revision = getattr(kernel.target, "kernel_revision", None)
        if revision is not None:
            entry["kernel_revision"] = revision(kernel.spec, c)
        entries.append(entry)
    emit("start", candidates=len(entries))

    failed = []
    if not dry_run:
        workload = (variant, variant_name, tuple(sorted((shapes or {}).items())), None if dtype is None else str(dtype),
                    passes, tuple(sorted(options.items())), tuple(sorted((quantize or {}).items())))
        import multiprocessing

        jobs = max(1, jobs or os.cpu_count() or 1)
        with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
            futs = {ex.submit(_build_worker, workload, e["config"], os.path.join(kdir, e["file"]), src_dir): e
                    for e in entries}
            for i, fut in enumerate(cf.as_completed(futs), 1):
                e = futs[fut]
                try:
                    info = fut.result()
                except Exception as exc:  # noqa: BLE001 - a build process died
                    info = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
                e["build_s"] = round(info.get("build_s", 0.0), 3)
                if info["ok"]:
                    e["source_sha256"] = info["sha256"]
                    e["shared_memory_bytes"] = info["shared_memory_bytes"]
                    e["runtime"] = info["runtime"]
                else:
                    e["error"] = info["error"]
                emit("built", index=i, id=e["id"], ok=info["ok"])
        failed = [{"id": e["id"], "config": e["config"], "error": e.pop("error")} for e in entries if "error" in e]
        entries = [e for e in entries if "source_sha256" in e]
        if fatbin:
            nvcc = shutil.which("nvcc")
            if nvcc is None:
                raise AttnccError("--fatbin needs nvcc on PATH (or leave the compiling to the GPU machine)")
            fdir = os.path.join(out_dir, "fatbin")
            os.makedirs(fdir, exist_ok=True)
            shas = sorted({e["source_sha256"] for e in entries})
            with cf.ThreadPoolExecutor(jobs) as ex:
                list(ex.map(lambda s: os.path.exists(os.path.join(fdir, s + ".fatbin")) or
                            nvcc_fatbin(os.path.join(src_dir, s + ".cu"), os.path.join(fdir, s + ".fatbin"),
                                        options["arch"], nvcc), shas))

    spec = kernel.spec
    shapes_in = {n: list(s) for n, s in kernel.input_shapes().items()}
    manifest = {
        "format": FORMAT,
        "key": {"fingerprint": key.fingerprint, "bucket": key.bucket, "dtype": key.dtype, "target": key.target},
        "device_for_arch": key.device,
        "arch": options["arch"],
        "variant": kernel.variant,
        "variant_file": os.path.relpath(variant) if not os.path.relpath(variant).startswith("..") else variant,
        "env": dict(kernel.env),
        "dtype": spec.dtype,
        "spec": {f: getattr(spec, f) for f in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim",
                                               "head_dim_v", "dtype", "scale")},
        "inputs": [a.hint for a in kernel.flash_op.operands][:3],
        "input_shapes": shapes_in,
        "out_shape": [spec.batch, spec.q_heads, spec.q_len, spec.head_dim_v],
        "lse_shape": [spec.batch, spec.q_heads, spec.q_len],
        "flops": kernel.flops(),
        "density": kernel.density(),
        "bytes": sum(_prod(s) for s in shapes_in.values()) * 2 + spec.batch * spec.q_heads * spec.q_len
        * (spec.head_dim_v * 2 + 4),
        "reference": reference_of(spec),
        "captures": captures,
        "quantize": dict(quantize or {}),
        "space": {"knobs": {k.name: list(k.values) for k in space.knobs}, "size": space.size, "valid": len(valid),
                  "rejected": dict(space.rejected.most_common())},
        "default_config": config_dict(default),
        "candidates": entries,
        "build_failed": failed,
        "built": not dry_run,
        "attncc": __version__,
        "date": now_iso(),
        "export_s": round(time.perf_counter() - t0, 2),
    }
    with open(os.path.join(kdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    manifest["dir"] = kdir
    return manifest


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= int(x)
    return n


def summary(manifest: dict) -> str:
    sp = manifest["space"]
    q = manifest.get("quantize") or {}
    quant = (f", quantized {q['dtype']}" + (" (P·V too)" if q.get("pv") else "")) if q else ""
    lines = [f"kernel     {manifest['variant']} {manifest['dtype']} "
             f"{' '.join(f'{k}={v}' for k, v in manifest['env'].items())} for {manifest['arch']}{quant}",
             f"space      {sp['size']} configs, {sp['valid']} valid; "
             f"{len(manifest['candidates'])} candidate(s) exported"
             + (f", {len(manifest['build_failed'])} failed to build" if manifest["build_failed"] else "")
             + ("" if manifest["built"] else " (dry run: nothing built)")]
    if sp["rejected"]:
        lines.append("rejected   " + "\n           ".join(f"{n:4d}  {r}" for r, n in sp["rejected"].items()))
    for f in manifest["build_failed"]:
        lines.append(f"failed     {f['id']}: {f['error']}")
    ref = manifest["reference"]
    lines.append(f"reference  {ref['kind']}"
                 + (f" (causal={ref['causal']}" + (", on the dequantized operands" if ref.get("quant") else "") + ")"
                    if ref["kind"] == "sdpa" else f" (within {ref.get('rel', 0.02):.0%} of the default's output)"))
    if manifest.get("captures"):
        lines.append(f"captures   {manifest['captures']} (the captured inputs every candidate is measured on)")
    lines.append(f"wrote      {manifest['dir']}/manifest.json  ({manifest['export_s']:.0f} s)")
    return "\n".join(lines)
