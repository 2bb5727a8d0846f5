"""Export a compiled kernel as a self-contained folder that runs without the compiler.

    from attncc.compiler import compile_variant
    from attncc.export import export
    k = compile_variant("examples/sliding_window.py", target="cpu")
    export(k, "sw/")                 # then, anywhere: attncc.runtime.load("sw/")

The folder holds

    kernel.so        the built module (a tvm-ffi shared object; ``main`` is the kernel)
    manifest.json    what the runtime checks and needs (see :func:`build_manifest`)
    tile_map.npy     the block table of a mask known at compile time (table mode only)
    kernel.cu        CUDA targets: the generated CUDA C++ source
    kernel.fatbin    CUDA targets: that source compiled here by nvcc, so that loading needs
                     no compiler (TVM compiles a module's CUDA source when it is loaded;
                     the runtime answers that request with this file)
    lib/             with ``bundle_runtime``: TVM's runtime libraries (libtvm_runtime*.so,
                     about 5 MB), for machines without TVM installed

This module needs the compiler (it is given a :class:`~attncc.compiler.CompiledKernel`);
:mod:`attncc.runtime` reads the folder without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from typing import Optional

import numpy as np

from attncc.errors import AttnccError

FORMAT = "attncc-export/1"
MANIFEST = "manifest.json"
KERNEL = "kernel.so"
TILE_MAP = "tile_map.npy"
CUDA_SOURCE = "kernel.cu"
FATBIN = "kernel.fatbin"
# TVM's buffers assume this alignment of every tensor argument (runtime::kAllocAlignment);
# the CPU kernel's vector loads fault on less (checked: a 16-byte aligned numpy array crashes it)
DATA_ALIGNMENT = 64
RUNTIME_LIBS = {"cpu": ("libtvm_runtime.so",),
                "cuda": ("libtvm_runtime.so", "libtvm_runtime_extra.so", "libtvm_runtime_cuda.so")}
# x86 ISA extensions worth checking before running a CPU kernel elsewhere (LLVM's names;
# /proc/cpuinfo spells them with '_' where LLVM has none or '.')
_CPU_FEATURES = ("sse4.1", "sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512cd",
                 "avx512dq", "avx512vl", "avx512vnni", "avx512bf16", "avx512fp16", "avx512vbmi",
                 "avx512ifma", "amx-tile", "amx-bf16", "amx-int8")


class ExportError(AttnccError):
    """The kernel cannot be exported (a missing tool, an unwritable folder)."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _uses_block_table(kernel) -> bool:
    fn = getattr(kernel.target, "use_block_table", None)
    if fn is None:
        return False
    import inspect
    if "config" in inspect.signature(fn).parameters:     # CUDA: only the wgmma kernel takes a table
        return bool(fn(kernel.spec, kernel.config))
    return bool(fn(kernel.spec))


def _cuda_fp8_v(spec, config) -> bool:
    from attncc.targets.cuda import fp8_v_transposed

    return fp8_v_transposed(spec, config)


def _static_tables(kernel):
    """The block table a table-mode kernel with a compile-time mask takes (or None)."""
    if not _uses_block_table(kernel) or kernel.spec.runtime_tile_map is not None:
        return None
    tables = getattr(kernel.built, "tables", None)
    if tables is None:
        tables = kernel.target.block_tables(kernel.spec, kernel.config)
    if len(tables) != 1:
        raise ExportError(f"export knows one block-table argument (the tile map); this kernel takes {len(tables)}",
                          variant=kernel.variant)
    return np.ascontiguousarray(np.asarray(tables[0], dtype=np.int32))


def _cpu_target_info(kernel) -> dict:
    info = {"kind": "cpu", "machine": platform.machine()}
    try:
        from tvm.target import codegen

        from attncc.targets.cpu import host_target

        tgt = host_target()
        info["llvm_target"] = str(tgt)
        info["mcpu"] = str(tgt.attrs.get("mcpu", "")) if hasattr(tgt, "attrs") else ""
        feats = set(codegen.llvm_get_cpu_features(tgt))
        info["cpu_features"] = [f for f in _CPU_FEATURES if f in feats]
    except Exception:  # pragma: no cover - depends on the host's LLVM
        info.setdefault("cpu_features", [])
    return info


def build_manifest(kernel) -> dict:
    """The manifest of a compiled kernel (a JSON-able dict).  The runtime uses:

    ``inputs``        the variant's inputs in call order: name, dtype, concrete ``shape``, the
                      IR's ``dims`` (e.g. ``["B", "H", "S", "D"]``) and which are ``symbolic``
                      (the kernel is specialised to ``shape``; another shape needs another export)
    ``outputs``       ``out`` and ``lse`` (float32, natural log, -inf on fully masked rows)
    ``prologue``      host-side ops before the kernel (the quantize pass's ``attn.quantize``)
    ``kernel_args``   the argument list of the module's ``main``, in order, each with its role:
                      input (q, k, v), output, table (the block table), scale, capture
    ``block_map``     ``none``; ``static`` (the table is ``tile_map.npy``); or ``runtime`` (the
                      mask reads captured inputs: the runtime evaluates the flash op's mask region
                      of ``ir`` with attncc.reference's numpy interpreter on every call's data,
                      like FlexAttention's create_block_mask, and caches a few); with
                      ``row_order``, the table's extra column of the persistent kernel (and
                      ``row_order.schedule``, its thread blocks' share of the tiles); with
                      ``launch_order``, the in-order kernel's thread blocks' tiles in launch order
                      after the map; with ``row_limits``, the rows' key limits of a document mask
                      after it
    ``target``        kind, CPU features or CUDA arch, the alignment every tensor must have
    """
    from attncc import __version__
    from attncc.compiler import fingerprint
    from attncc.ir.printer import print_ir
    from attncc.ir.types import dim_str

    spec, env, func = kernel.spec, kernel.env, kernel.source_ir
    flash = kernel.flash_op
    inputs = []
    for a in func.args:
        inputs.append({
            "name": a.hint, "dtype": a.type.dtype.tvm,
            "shape": [int(x) for x in a.type.concrete(env)],
            "dims": [dim_str(d) for d in a.type.shape],
            "symbolic": [bool(getattr(d, "free_symbols", ())) for d in a.type.shape],
        })
    out_shape = [spec.batch, spec.q_heads, spec.q_len, spec.head_dim_v]
    outputs = [{"name": "out", "dtype": spec.dtype, "shape": out_shape},
               {"name": "lse", "dtype": "float32", "shape": out_shape[:3]}]

    prologue, index = [], {}
    sources = []
    for v in flash.operands:
        if v.owner is None:
            sources.append({"input": v.hint})
            continue
        op = v.owner
        if op.name != "attn.quantize":
            raise ExportError(f"flash operand computed by {op.name}; export knows attn.quantize only",
                              variant=kernel.variant)
        if id(op) not in index:
            index[id(op)] = len(prologue)
            prologue.append({"op": "quantize", "input": op.operands[0].hint, "dtype": op.attrs["dtype"].tvm,
                             "granularity": op.attrs.get("granularity", "tensor"),
                             "block": int(op.attrs.get("block", 1))})
        sources.append({"prologue": index[id(op)], "result": v.index})

    in_dtypes = [spec.quant_dtype or spec.dtype, spec.quant_dtype or spec.dtype,
                 spec.quant_dtype if spec.quant_pv else spec.dtype]
    in_shapes = [[spec.batch, spec.q_heads, spec.q_len, spec.head_dim],
                 [spec.batch, spec.kv_heads, spec.kv_len, spec.head_dim],
                 [spec.batch, spec.kv_heads, spec.kv_len, spec.head_dim_v]]
    if kernel.target_name == "cuda" and _cuda_fp8_v(spec, kernel.config):
        # the fp8 P·V kernel reads V transposed and key-permuted: the runtime applies the layout
        # to the quantized v (attncc.runtime._layouts.fp8_v_layout) before the launch
        from attncc.runtime._layouts import FP8_V, padded_kv_len

        in_shapes[2] = [spec.batch, spec.kv_heads, spec.head_dim_v, padded_kv_len(spec.kv_len)]
        sources[2] = dict(sources[2], layout=FP8_V)
    args = [{"name": n, "role": "input", "dtype": d, "shape": s, "source": src}
            for n, d, s, src in zip("qkv", in_dtypes, in_shapes, sources[:3])]
    args += [{"name": o["name"], "role": "output", "dtype": o["dtype"], "shape": o["shape"]} for o in outputs]

    tables = _static_tables(kernel)
    block_map = {"mode": "none"}
    if _uses_block_table(kernel):
        bq, bk = kernel.config.block_q, kernel.config.block_k
        nq, nk = -(-spec.q_len // bq), -(-spec.kv_len // bk)
        order_fn = getattr(kernel.target, "row_order_column", None)
        row_order = bool(order_fn and order_fn(spec, kernel.config))
        sched_fn = getattr(kernel.target, "row_schedule", None)
        schedule = sched_fn(spec, kernel.config) if (row_order and sched_fn) else None
        from attncc.runtime._layouts import (LAUNCH_SLOTS, LAUNCH_TAIL_WAVES, launch_columns, row_limit_columns,
                                             schedule_columns)

        sched_cols = schedule_columns(nq, schedule[1], schedule[0]) if schedule else 0
        limits_fn = getattr(kernel.target, "row_limits", None)
        limits = bool(limits_fn and limits_fn(spec, kernel.config))
        launch_fn = getattr(kernel.target, "launch_order", None)
        launch_bhn = launch_fn(spec, kernel.config) if launch_fn else 0
        launch_cols = launch_columns(launch_bhn) if launch_bhn else 0
        args.append({"name": "tile_map", "role": "table", "dtype": "int32",
                     "shape": [nq, nk + int(row_order) + sched_cols + launch_cols
                               + (row_limit_columns(bq) if limits else 0)]})
        block_map = {"mode": "static" if tables is not None else "runtime", "block_q": bq, "block_k": bk,
                     "shape": [nq, nk], "values": "0 empty (skipped), 1 partial (element mask), 2 full (no mask)"}
        if row_order:
            block_map["row_order"] = {
                "column": nk, "window": kernel.target.row_order_window(spec, kernel.config),
                "how": "the kernel's table has one more column than the tile map: column 'column' holds the "
                "query blocks in the order the kernel walks them (attncc.runtime._layouts.with_row_order with "
                "'window'); the runtime appends it to each per-call map, tile_map.npy already holds it"}
            if schedule:
                block_map["row_order"]["schedule"] = {
                    "grid": schedule[0], "bhn": schedule[1], "columns": sched_cols,
                    "how": "after the order column, 'columns' more: the tiles each of the kernel's 'grid' thread "
                    "blocks runs (attncc.runtime._layouts.tile_schedule over the order, 'bhn' batch x heads), "
                    "row-major; with_row_order(tiles, window, (grid, bhn)) builds the order and it together"}

        def launch_entry(bhn: int, column: int) -> dict:
            return {"column": column, "bhn": bhn, "slots": LAUNCH_SLOTS, "tail_waves": LAUNCH_TAIL_WAVES,
                    "how": "after the tile map, the kernel's table holds which (query block, batch x head) each "
                    "thread block runs, in launch order, as codes query block * bhn + batch x head, row-major "
                    "(attncc.runtime._layouts.with_launch_order(tiles, bhn, slots, tail_waves))"}

        if launch_bhn:
            block_map["launch_order"] = launch_entry(launch_bhn, nk)
        if limits:
            rr = spec.row_runs
            block_map["row_limits"] = {
                "column": nk + int(row_order) + sched_cols + launch_cols, "capture": spec.captures[rr.capture][0],
                "lower_offset": rr.lower_offset, "upper_offset": rr.upper_offset,
                "how": "the mask is a document mask ids[q_idx] == ids[kv_idx] (ids: the capture 'capture') and the "
                "band q_idx + lower_offset <= kv_idx <= q_idx + upper_offset (null: unbounded); from 'column' on the "
                "kernel's table holds attncc.runtime._layouts.with_row_limits of each call's ids (per query block a "
                "flag, then each row's first and last kept key), which the runtime appends after the row order; "
                "the 'small' function's table too where 'small' says row_limits (at its block_q, after its map)"}
        if tables is not None:
            block_map["file"] = TILE_MAP
        else:
            below = 0.0
            if kernel.target_name == "cuda":
                from attncc.targets.cuda import small_below, small_config

                below = small_below(spec, kernel.config)
            if below:
                small = small_config(kernel.config)
                small_launch = launch_fn(spec, small) if launch_fn else 0
                block_map["small"] = {
                    "function": "main_small", "below": below, "block_q": small.block_q, "block_k": small.block_k,
                    "row_limits": bool(limits_fn and limits_fn(spec, small)),
                    **({"launch_order": launch_entry(small_launch, -(-spec.kv_len // small.block_k))}
                       if small_launch else {}),
                    "how": "compute the tile map at block_q x block_k; when at most 'below' of it is non-empty, "
                           "call 'function' with the tile map of these block sizes instead of main"}
            block_map.update({
                "captures": [c[0] for c in spec.captures], "dims": dict(env),
                "batch": spec.batch, "q_heads": spec.q_heads, "q_len": spec.q_len, "kv_len": spec.kv_len,
                "how": "evaluate the mask region of the attn.flash op in 'ir' (attncc.reference) on every "
                       "(b, h, q_idx, kv_idx) with the captured inputs; a tile is full/empty when all/none "
                       "of its elements are kept for every b, h (attncc.targets.lowering.runtime_tiles)"})
    n_scales = len(spec.scales)
    for (name, shape), src in zip(spec.scales, sources[3:3 + n_scales]):
        args.append({"name": name, "role": "scale", "dtype": "float32", "shape": [int(x) for x in shape],
                     "source": src})
    for (name, shape, cdt), src in zip(spec.captures, sources[3 + n_scales:]):
        args.append({"name": name, "role": "capture", "dtype": cdt, "shape": [int(x) for x in shape],
                     "source": src})

    if kernel.target_name == "cpu":
        target = _cpu_target_info(kernel)
    else:
        target = {"kind": kernel.target_name, "arch": getattr(kernel.built, "arch", None)}
    target["data_alignment"] = DATA_ALIGNMENT
    target["runtime_libs"] = list(RUNTIME_LIBS.get(kernel.target_name, RUNTIME_LIBS["cpu"]))

    versions = {"attncc": __version__}
    try:
        import tvm
        import tvm_ffi

        versions.update(tvm=tvm.__version__, tvm_ffi=tvm_ffi.__version__)
    except Exception:  # pragma: no cover
        pass
    cfg = kernel.config
    return {
        "format": FORMAT,
        "versions": versions,
        "variant": kernel.variant,
        "fingerprint": fingerprint(func),
        "target": target,
        "dims": {k: int(v) for k, v in env.items()},
        "dtype": spec.dtype,
        "inputs": inputs,
        "outputs": outputs,
        "prologue": prologue,
        "kernel_args": args,
        "block_map": block_map,
        "config": {"class": type(cfg).__name__, **dataclasses.asdict(cfg)},
        "config_source": getattr(kernel, "config_source", None),
        "passes": list(kernel.applied),
        "flash_ir": print_ir(flash),
        "ir": print_ir(kernel.ir),
        "source_ir": print_ir(func),
    }


def _check_arg_count(kernel, manifest: dict) -> None:
    """The manifest's argument list against the lowered kernel's parameters (count)."""
    try:
        mod = kernel.target.lower(kernel.spec, kernel.config)
        n = len(mod["main"].params)
    except Exception:  # pragma: no cover - lowering worked once already
        return
    if n != len(manifest["kernel_args"]):
        raise ExportError(f"the {kernel.target_name} kernel takes {n} arguments, but export describes "
                          f"{len(manifest['kernel_args'])} "
                          f"({', '.join(a['name'] for a in manifest['kernel_args'])}): the target's argument "
                          "layout changed; update attncc/export", variant=kernel.variant)


def _nvcc_fatbin(source_path: str, out_path: str, arch: str, nvcc: str = "nvcc") -> None:
    exe = shutil.which(nvcc)
    if exe is None:
        raise ExportError(f"{nvcc} is not on PATH: it compiles the CUDA source into {FATBIN} "
                          "(pass fatbin=False to ship the source only; the runtime then needs nvcc)")
    code = "compute_" + arch[3:]
    cmd = [exe, "-fatbin", "-O3", f"-gencode=arch={code},code={arch}", source_path, "-o", out_path]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        raise ExportError(f"nvcc failed on the generated CUDA source: {' / '.join(tail)}")


def runtime_library_dir() -> Optional[str]:
    """The folder of the installed TVM's runtime libraries (found without importing tvm)."""
    import importlib.util

    spec = importlib.util.find_spec("tvm")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        d = os.path.join(loc, "lib")
        if os.path.isfile(os.path.join(d, "libtvm_runtime.so")):
            return d
    return None


def export(kernel, directory: str, *, bundle_runtime: bool = False, fatbin: bool = True,
           nvcc: str = "nvcc") -> dict:
    """Write ``kernel`` (a built :class:`~attncc.compiler.CompiledKernel`) into ``directory``;
    returns the manifest.  See the module docstring for the files."""
    if kernel.built is None:
        raise ExportError("the kernel was compiled with build=False; nothing to export", variant=kernel.variant)
    not_exportable = getattr(kernel.target, "NOT_EXPORTABLE", None)     # a target's reason, if it has one
    if not_exportable:
        raise ExportError(f"export --target {kernel.target_name}: the {kernel.target_name} target cannot be exported: "
                          f"{not_exportable}", variant=kernel.variant)
    manifest = build_manifest(kernel)
    _check_arg_count(kernel, manifest)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {directory}: {exc.strerror}") from exc
    files = {}
    path = os.path.join(directory, KERNEL)
    try:
        kernel.export_library(path)
    except AttnccError:
        raise
    except Exception as exc:  # a TVM traceback never reaches a user
        raise ExportError(f"TVM could not write the module: {str(exc).strip().splitlines()[-1:]}",
                          variant=kernel.variant) from exc
    files["kernel"] = KERNEL
    tables = _static_tables(kernel)
    if tables is not None:
        np.save(os.path.join(directory, TILE_MAP), tables)
        files["tile_map"] = TILE_MAP
    if kernel.target_name == "cuda":
        arch = manifest["target"]["arch"]
        src = kernel.source()
        with open(os.path.join(directory, CUDA_SOURCE), "w") as f:
            f.write(src)
        files["cuda_source"] = CUDA_SOURCE
        manifest["target"]["source_sha256"] = hashlib.sha256(src.encode()).hexdigest()
        if fatbin:
            with tempfile.TemporaryDirectory(prefix="attncc-export-") as tmp:
                tmp_src = os.path.join(tmp, "k.cu")
                with open(tmp_src, "w") as f:
                    f.write(src)
                out = os.path.join(tmp, "k.fatbin")
                _nvcc_fatbin(tmp_src, out, arch, nvcc)
                shutil.copyfile(out, os.path.join(directory, FATBIN))
            files["fatbin"] = FATBIN
            manifest["target"]["fatbin_gencode"] = f"arch=compute_{arch[3:]},code={arch}"
    if bundle_runtime:
        libdir = runtime_library_dir()
        if libdir is None:
            raise ExportError("bundle_runtime: TVM's runtime libraries were not found (is apache-tvm installed?)")
        os.makedirs(os.path.join(directory, "lib"), exist_ok=True)
        for name in manifest["target"]["runtime_libs"]:
            shutil.copyfile(os.path.join(libdir, name), os.path.join(directory, "lib", name))
            files[name] = os.path.join("lib", name)
    manifest["files"] = {role: {"path": rel, "sha256": _sha256(os.path.join(directory, rel))}
                         for role, rel in files.items()}
    with open(os.path.join(directory, MANIFEST), "w") as f:
        f.write(dumps(manifest) + "\n")
    return manifest


_SCALAR_LIST = re.compile(r"\[\n\s*((?:[^\[\]{}\n]+,\n\s*)*[^\[\]{}\n]+)\n\s*\]")


def dumps(manifest: dict) -> str:
    """JSON, one key per line, lists of scalars (shapes, dims) on one line."""
    text = json.dumps(manifest, indent=1)
    return _SCALAR_LIST.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)


def runtime_kernel(kernel):
    """The same :class:`attncc.runtime.Kernel` that ``attncc.runtime.load`` returns for an
    export of ``kernel``, without files: the in-process module's ``main``."""
    from attncc.runtime import Kernel

    if kernel.built is None:
        raise ExportError("the kernel was compiled with build=False", variant=kernel.variant)
    not_exportable = getattr(kernel.target, "NOT_EXPORTABLE", None)
    if not_exportable:
        raise ExportError(f"the {kernel.target_name} target has no runtime kernel: {not_exportable}",
                          variant=kernel.variant)
    manifest = build_manifest(kernel)
    built = kernel.built
    executable = getattr(built, "executable", None)
    function = executable["main"] if executable is not None else built.mod["main"]
    runtime_tile_map = None
    if manifest["block_map"]["mode"] == "runtime":
        runtime_tile_map = kernel.spec.runtime_tile_map
    small = manifest["block_map"].get("small")
    functions = {small["function"]: executable[small["function"]]} if small else {}
    return Kernel(manifest, function, module=built, tile_map=_static_tables(kernel),
                  runtime_tile_map=runtime_tile_map, functions=functions)


__all__ = ["export", "build_manifest", "runtime_kernel", "ExportError", "runtime_library_dir", "FORMAT", "DATA_ALIGNMENT"]
