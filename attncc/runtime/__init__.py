"""Run exported attncc kernels without the compiler.

    import attncc.runtime as ar
    k = ar.load("sw/")                       # checks the manifest against this machine
    out, lse = k(q, k_cache, v_cache)        # torch, numpy, JAX, cupy: anything with DLPack
    op = ar.torch_op(k, name="mylib::sliding_window")   # torch.library custom op (compile/export)
    f = ar.jax_function(k)                   # usable under jax.jit (jax.pure_callback)

This package imports only numpy, tvm-ffi and (through ctypes) TVM's small runtime
libraries; never ``tvm`` (the 259 MB compiler library) and never ``attncc.compiler``.
Kernels whose mask reads runtime data (document ids) also import ``attncc.ir`` and
``attncc.reference`` (numpy, sympy) to compute their block map on the host.

A folder is written by ``attncc export`` (:mod:`attncc.export`); ``attncc.compile``
returns the same :class:`Kernel` without files.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform

import numpy as np

from attncc.runtime import _native
from attncc.runtime._kernel import ArgumentError, Kernel, file_path, load_block_map_function
from attncc.runtime._native import LoadError
from attncc.runtime._torch import OpError

FORMAT = "attncc-export/1"

__all__ = ["load", "kernel_of_module", "Kernel", "torch_op", "jax_function", "ArgumentError", "LoadError", "OpError"]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(path: str) -> dict:
    mpath = os.path.join(path, "manifest.json")
    if not os.path.isfile(mpath):
        raise LoadError(f"{path} is not an exported attncc kernel (no manifest.json)")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise LoadError(f"cannot read {mpath}: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise LoadError(f"{mpath} has format {manifest.get('format')!r}; this runtime reads {FORMAT!r}")
    return manifest


def load(path: str, *, verify_files: bool = True) -> Kernel:
    """Load an exported kernel folder.  Checks, before loading any code: the manifest's
    format, the files' sha256 (``verify_files``), and the device — for CPU kernels the
    machine and the ISA extensions the code uses (AVX2, AVX-512, ...), for CUDA kernels a
    visible GPU whose compute capability runs the fatbin's architecture."""
    path = os.fspath(path)
    manifest = read_manifest(path)
    variant = manifest.get("variant")
    target = manifest["target"]
    kind = target.get("kind")
    if kind not in ("cpu", "cuda"):
        raise LoadError(f"kernel '{variant}' is for target {kind!r}; this runtime runs cpu and cuda kernels")
    files = manifest.get("files", {})
    for role, entry in files.items():
        fpath = os.path.join(path, entry["path"])
        if not os.path.isfile(fpath):
            raise LoadError(f"{path}: {entry['path']} ({role}) is missing")
        if verify_files and role in ("kernel", "fatbin", "tile_map") and _sha256(fpath) != entry["sha256"]:
            raise LoadError(f"{path}: {entry['path']} does not match the manifest's sha256 (modified or damaged)")
    if kind == "cpu":
        machine = target.get("machine")
        if machine and machine != platform.machine():
            raise LoadError(f"kernel '{variant}' was built for {machine} CPUs; this machine is {platform.machine()}")
        missing = _native.missing_cpu_features(target.get("cpu_features", ()))
        if missing:
            raise LoadError(f"kernel '{variant}' was built for {target.get('mcpu') or 'another CPU'} and uses "
                            f"{', '.join(missing)}, which this CPU lacks; export it on (or for) this machine")
    bundle = os.path.join(path, "lib")
    tvm_ffi = _native.ensure_runtime(target.get("runtime_libs", ["libtvm_runtime.so"]),
                                     bundle if os.path.isdir(bundle) else None)
    if kind == "cuda":
        arch = target.get("arch")
        cc = _native.cuda_compute_capability(0)
        if cc is None:
            raise LoadError(f"kernel '{variant}' is a CUDA kernel ({arch}) and no CUDA device is visible")
        if arch and not _native.arch_runs_on(arch, cc):
            raise LoadError(f"kernel '{variant}' was built for {arch}; this GPU is sm_{cc[0]}{cc[1]}")
        if target.get("source_sha256"):
            _native.register_cuda_fatbin(target["source_sha256"], file_path(path, manifest, "fatbin"), arch)
    kpath = file_path(path, manifest, "kernel") or os.path.join(path, "kernel.so")
    try:
        module = tvm_ffi.load_module(os.path.abspath(kpath))
    except Exception as exc:
        text = str(exc).strip()
        raise LoadError(f"cannot load {kpath}: {text.splitlines()[-1] if text else type(exc).__name__} "
                        f"(exported with {manifest.get('versions', {})})") from exc
    return kernel_of_module(manifest, module, path, kpath)


def kernel_of_module(manifest: dict, module, path: str, kpath: str) -> Kernel:
    """The :class:`Kernel` of a loaded module and its manifest: its entry points, and the tile
    map the manifest names (a file under ``path``, or the runtime block map function).  What
    :func:`load` returns after its checks; the split tuning flow's measuring side calls it for
    each candidate (attncc.schedules.measure_candidates).  ``kpath``: the module's file, for errors."""
    try:
        function = module["main"]
        small = manifest.get("block_map", {}).get("small")
        functions = {small["function"]: module[small["function"]]} if small else {}
    except Exception as exc:
        text = str(exc).strip()
        raise LoadError(f"cannot load {kpath}: {text.splitlines()[-1] if text else type(exc).__name__} "
                        f"(exported with {manifest.get('versions', {})})") from exc
    tile_map = None
    runtime_tile_map = None
    mode = manifest.get("block_map", {}).get("mode", "none")
    if mode == "static":
        tile_map = np.ascontiguousarray(np.load(file_path(path, manifest, "tile_map")), dtype=np.int32)
    elif mode == "runtime":
        runtime_tile_map = load_block_map_function(manifest)
    return Kernel(manifest, function, module=module, tile_map=tile_map, runtime_tile_map=runtime_tile_map,
                  path=path, functions=functions)


def torch_op(kernel: Kernel, name: str):
    """``kernel`` as the torch custom op ``name`` (see :func:`attncc.runtime._torch.torch_op`)."""
    from attncc.runtime._torch import torch_op as _torch_op

    return _torch_op(kernel, name)


def jax_function(kernel: Kernel):
    """``kernel`` as a function usable under ``jax.jit`` (see :mod:`attncc.runtime._jax`)."""
    from attncc.runtime._jax import jax_function as _jax_function

    return _jax_function(kernel)

