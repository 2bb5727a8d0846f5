"""TVM's runtime without TVM's compiler: tvm-ffi plus the small runtime libraries.

An exported module (``kernel.so``) calls into ``libtvm_runtime.so`` (the CPU thread
pool, workspace allocation) and, for CUDA, ``libtvm_runtime_cuda.so`` (module loading,
launches).  They are loaded here with ``ctypes`` (``RTLD_GLOBAL``, after ``tvm_ffi``
has loaded ``libtvm_ffi.so``), never by ``import tvm``.  Where they are looked for, in
order: ``$ATTNCC_TVM_LIB_DIR`` (``os.pathsep``-separated), the already imported ``tvm``
package, the export folder's ``lib/`` (``attncc export --bundle-runtime``), and the
installed ``tvm`` package (found with ``importlib.util.find_spec``, which does not
import it).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Optional

from attncc.errors import AttnccError

# TVM's thread pool counts physical cores; on a machine whose CPUs are hyperthreads of
# one core it runs the parallel loop on one thread.  Use every CPU this process may run
# on unless the user chose (the same rule as attncc/targets/cpu.py; read when the pool starts).
try:
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
except AttributeError:  # pragma: no cover - not Linux
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

DL_CPU, DL_CUDA = 1, 2
DEVICE_NAMES = {DL_CPU: "cpu", DL_CUDA: "cuda"}


class LoadError(AttnccError):
    """An exported kernel cannot be loaded here (missing files or libraries, wrong device)."""


_lock = threading.Lock()
_loaded: dict = {}            # library name -> path


def _candidate_dirs(bundle_dir: Optional[str]) -> list:
    dirs = []
    env = os.environ.get("ATTNCC_TVM_LIB_DIR")
    if env:
        dirs += [d for d in env.split(os.pathsep) if d]
    tvm_mod = sys.modules.get("tvm")
    if tvm_mod is not None and getattr(tvm_mod, "__file__", None):
        dirs.append(os.path.join(os.path.dirname(tvm_mod.__file__), "lib"))
    if bundle_dir:
        dirs.append(bundle_dir)
    try:
        spec = importlib.util.find_spec("tvm")       # finds, does not import
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        dirs.append(os.path.join(loc, "lib"))
    return dirs


def ensure_runtime(libs, bundle_dir: Optional[str] = None):
    """Load ``libs`` (e.g. ``["libtvm_runtime.so"]``) once per process; returns ``tvm_ffi``."""
    try:
        import tvm_ffi
    except ImportError as exc:
        raise LoadError("the attncc runtime needs the apache-tvm-ffi package (pip install apache-tvm-ffi)") from exc
    with _lock:
        for name in libs:
            if name in _loaded:
                continue
            dirs = _candidate_dirs(bundle_dir)
            path = next((os.path.join(d, name) for d in dirs if os.path.isfile(os.path.join(d, name))), None)
            if path is None:
                raise LoadError(f"cannot find {name} (TVM's runtime library; looked in "
                                f"{', '.join(dirs) or 'no folder'}): install apache-tvm, export with "
                                "--bundle-runtime, or set ATTNCC_TVM_LIB_DIR")
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                hint = ""
                if "libcuda" in str(exc):
                    hint = " (the CUDA driver library is missing: this machine has no NVIDIA driver)"
                elif "libcudart" in str(exc):
                    hint = " (the CUDA runtime is not on LD_LIBRARY_PATH, e.g. /usr/local/cuda/lib64)"
                raise LoadError(f"cannot load {path}: {exc}{hint}") from exc
            _loaded[name] = path
    return tvm_ffi


def loaded_libraries() -> dict:
    return dict(_loaded)


# --------------------------------------------------------------------------- CUDA

_fatbins: dict = {}           # sha256 of a CUDA source -> (fatbin path or None, arch)
_callback = {"function": None, "previous": None}


def _compile_cuda(code: str, arch: str) -> bytearray:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise LoadError("the exported CUDA module has no precompiled fatbin and nvcc is not on PATH")
    with tempfile.TemporaryDirectory(prefix="attncc-rt-") as tmp:
        src, out = os.path.join(tmp, "k.cu"), os.path.join(tmp, "k.fatbin")
        with open(src, "w") as f:
            f.write(code)
        p = subprocess.run([nvcc, "-fatbin", "-O3", f"-gencode=arch=compute_{arch[3:]},code={arch}", src, "-o", out],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise LoadError(f"nvcc failed: {(p.stderr or p.stdout).strip()[-500:]}")
        with open(out, "rb") as f:
            return bytearray(f.read())


def _cuda_compile_callback(code, *rest):
    """TVM asks this to compile a CUDA module's source when the module is loaded: answer
    with the fatbin shipped in the export (by the source's sha256)."""
    sha = hashlib.sha256(str(code).encode()).hexdigest()
    hit = _fatbins.get(sha)
    if hit is not None:
        path, arch = hit
        if path is not None and os.path.isfile(path):
            with open(path, "rb") as f:
                return bytearray(f.read())
        return _compile_cuda(str(code), arch)
    prev = _callback["previous"]
    if prev is not None:            # not ours: whoever answered before us (TVM's nvcc/NVRTC)
        return prev(code, *rest)
    raise LoadError("a CUDA module not exported by attncc asked to be compiled")


def register_cuda_fatbin(source_sha256: str, fatbin_path: Optional[str], arch: str) -> None:
    """Make the next CUDA module load with this source use ``fatbin_path``."""
    import tvm_ffi

    _fatbins[source_sha256] = (fatbin_path, arch)
    with _lock:
        current = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
        ours = _callback["function"]
        if ours is not None and current is not None and current.same_as(ours):
            return
        _callback["previous"] = current
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", _cuda_compile_callback, override=True)
        _callback["function"] = tvm_ffi.get_global_func("tvm_callback_cuda_compile")


_cc_cache: dict = {}


def cuda_compute_capability(device_id: int) -> Optional[tuple]:
    """(major, minor) of CUDA device ``device_id`` through TVM's runtime; None if absent."""
    if device_id in _cc_cache:
        return _cc_cache[device_id]
    import tvm_ffi

    attr = tvm_ffi.get_global_func("runtime.GetDeviceAttr", allow_missing=True)
    cc = None
    if attr is not None:
        try:
            if int(attr(DL_CUDA, device_id, 0)):          # kExist
                text = str(attr(DL_CUDA, device_id, 4))    # kComputeVersion, "9.0"
                major, minor = (int(x) for x in text.split("."))
                cc = (major, minor)
        except Exception:  # pragma: no cover - depends on the driver
            cc = None
    _cc_cache[device_id] = cc
    return cc


def arch_runs_on(arch: str, cc: tuple) -> bool:
    """Whether SASS for ``arch`` (sm_XY or sm_XYa) runs on compute capability ``cc``."""
    digits = arch[3:].rstrip("a")
    major, minor = int(digits[:-1]), int(digits[-1])
    if arch.endswith("a"):                 # arch-specific features (wgmma, setmaxnreg): exactly this one
        return cc == (major, minor)
    return cc[0] == major and cc[1] >= minor


# --------------------------------------------------------------------------- CPU

def cpu_features() -> Optional[set]:
    """The host's x86 ISA flags from /proc/cpuinfo, normalised ('avx512_vnni' -> 'avx512vnni');
    None where unknown (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return {_norm(x) for x in line.split(":", 1)[1].split()}
    except OSError:  # pragma: no cover
        return None
    return None


def _norm(name: str) -> str:
    return name.lower().replace("_", "").replace(".", "").replace("-", "")


def missing_cpu_features(required) -> list:
    have = cpu_features()
    if have is None:
        return []
    return [f for f in required if _norm(f) not in have]


# --------------------------------------------------------------------------- tensors

_funcs: dict = {}


def global_func(name: str):
    f = _funcs.get(name)
    if f is None:
        import tvm_ffi

        f = tvm_ffi.get_global_func(name)
        _funcs[name] = f
    return f


def empty(shape, dtype: str, device_type: int = DL_CPU, device_id: int = 0):
    """A tvm_ffi Tensor allocated by TVM's runtime (64-byte aligned)."""
    import tvm_ffi

    dev = tvm_ffi.device(DEVICE_NAMES[device_type], device_id)
    return global_func("runtime.TVMTensorAllocWithScope")(tvm_ffi.Shape(tuple(shape)), tvm_ffi.dtype(dtype),
                                                          dev, None)


def view_as(tensor, dtype: str):
    """The same memory as a tvm_ffi Tensor of another element type of the same width."""
    import tvm_ffi

    return global_func("runtime.TVMTensorCreateView")(tensor, tvm_ffi.Shape(tuple(tensor.shape)),
                                                      tvm_ffi.dtype(dtype), 0)


def copy_from_host(tensor, array) -> None:
    """Copy a contiguous numpy array into a (device) tvm_ffi Tensor."""
    # (tvm_ffi takes a void* from a ctypes pointer, not from a Python int)
    global_func("runtime.TVMTensorCopyFromBytes")(tensor, ctypes.c_void_p(array.ctypes.data), array.nbytes)
