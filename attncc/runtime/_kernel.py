"""The callable kernel: checks arguments against the manifest, allocates the outputs in
the caller's framework, and calls the module's ``main`` through tvm-ffi (DLPack)."""

from __future__ import annotations

import collections
import os
from typing import Callable, Optional

import numpy as np

from attncc.errors import AttnccError
from attncc.runtime import _native
from attncc.runtime._native import DL_CPU, DL_CUDA, DEVICE_NAMES
from attncc.runtime._layouts import with_launch_order, with_row_limits, with_row_order


class ArgumentError(AttnccError):
    """A call's arguments do not match the kernel (count, framework, device, dtype, shape,
    layout).  Raised before anything is launched."""


_ML_DTYPES = {"bfloat16": np.uint16, "float8_e4m3fn": np.uint8, "float8_e5m2": np.uint8}


def numpy_dtype(name: str) -> np.dtype:
    if name in _ML_DTYPES:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def framework_of(x) -> str:
    mod = type(x).__module__.partition(".")[0]
    if mod == "torch":
        return "torch"
    if isinstance(x, np.ndarray):
        return "numpy"
    if mod in ("jax", "jaxlib"):
        return "jax"
    if mod == "cupy":
        return "cupy"
    if hasattr(x, "__dlpack__"):
        return "dlpack"
    return ""


def aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(n + align, np.uint8)
    off = (-buf.ctypes.data) % align
    return buf[off:off + n].view(dtype).reshape(shape)


def _writable_alias(a: np.ndarray) -> np.ndarray:
    """A writable view of a read-only contiguous array (DLPack cannot export read-only
    numpy arrays; the kernel only reads its inputs).  The caller keeps ``a`` alive."""
    import ctypes

    raw = (ctypes.c_char * a.nbytes).from_address(a.ctypes.data)
    return np.frombuffer(raw, dtype=np.uint8).view(a.dtype).reshape(a.shape)


class _Arg:
    __slots__ = ("name", "dtype", "shape", "np_dtype", "role", "source", "_torch_dtype")

    def __init__(self, d: dict):
        self.name = d["name"]
        self.dtype = d["dtype"]
        self.shape = tuple(int(x) for x in d["shape"])
        self.np_dtype = numpy_dtype(self.dtype)
        self.role = d.get("role", "input")
        self.source = d.get("source")
        self._torch_dtype = None

    @property
    def torch_dtype(self):
        if self._torch_dtype is None:
            self._torch_dtype = torch_dtype(self.dtype)
        return self._torch_dtype


class Kernel:
    """An attention kernel callable on framework tensors: ``out, lse = kernel(q, k, v, *captures)``.

    Inputs are the variant's inputs in its order (``kernel.input_names``).  Every input is
    checked before launch: a DLPack array (torch, numpy, JAX, cupy, ...) on the kernel's
    device (``kernel.device``), of the manifest's dtype and shape, C-contiguous.  Outputs are
    allocated in the framework of the first input (torch in, torch out; numpy in, numpy out;
    JAX in, JAX out) on its device.  CPU kernels need 64-byte aligned data: a misaligned CPU
    input (most numpy arrays) is copied to an aligned buffer first; a misaligned GPU input
    is an error.
    """

    def __init__(self, manifest: dict, function, *, module=None, tile_map: Optional[np.ndarray] = None,
                 runtime_tile_map: Optional[Callable] = None, path: Optional[str] = None,
                 functions: Optional[dict] = None):
        self.manifest = manifest
        self.name = manifest["variant"]
        self.path = path
        self._fn = function
        self._functions = dict(functions or {})    # other entry points (block_map "small")
        self._module = module                       # keeps the loaded library alive
        self.inputs = [_Arg(d) for d in manifest["inputs"]]
        self.outputs = [_Arg(d) for d in manifest["outputs"]]
        self.kernel_args = [_Arg(d) for d in manifest["kernel_args"]]
        self.prologue = list(manifest.get("prologue", ()))
        target = manifest["target"]
        self.target = target["kind"]
        self.arch = target.get("arch")
        self.device_type = DL_CUDA if self.target == "cuda" else DL_CPU
        self.align = int(target.get("data_alignment", 64))
        self.block_map = manifest.get("block_map", {"mode": "none"})
        self._tile_map = tile_map
        self._runtime_tile_map = runtime_tile_map
        self._static_tables: dict = {}             # (device_type, id) -> tvm_ffi Tensor
        self._runtime_tables: collections.OrderedDict = collections.OrderedDict()
        self._index = {a.name: i for i, a in enumerate(self.inputs)}
        self._checked_devices: set = set()
        # the common case (q, k, v straight into main; no prologue, table or captures) has a
        # short path for torch tensors; anything unusual falls back to the full checks
        roles = [a.role for a in self.kernel_args]
        self._simple = (roles == ["input"] * len(self.inputs) + ["output", "output"] and not self.prologue
                        and [a.source for a in self.kernel_args[:len(self.inputs)]]
                        == [{"input": a.name} for a in self.inputs])
        self._torch = None                         # (Tensor class, device type, dtypes, out specs)
        if self.block_map.get("mode") == "static" and tile_map is None:
            raise _native.LoadError(f"kernel '{self.name}' needs its block table (tile_map.npy)")
        if self.block_map.get("mode") == "runtime" and runtime_tile_map is None:
            raise _native.LoadError(f"kernel '{self.name}' needs a runtime block map")
        small = self.block_map.get("small")
        if small and small["function"] not in self._functions:
            raise _native.LoadError(f"kernel '{self.name}' needs its function {small['function']!r} "
                                    "(block_map.small)")

    # ------------------------------------------------------------------ description

    @property
    def input_names(self) -> list:
        return [a.name for a in self.inputs]

    @property
    def device(self) -> str:
        return self.target

    def output_shapes(self) -> dict:
        return {o.name: (o.shape, o.dtype) for o in self.outputs}

    def __repr__(self) -> str:
        ins = ", ".join(f"{a.name}: {a.dtype}{list(a.shape)}" for a in self.inputs)
        where = f" from {self.path}" if self.path else ""
        arch = f" {self.arch}" if self.arch else ""
        return f"<attncc kernel {self.name} ({ins}) -> (out, lse) on {self.target}{arch}{where}>"

    def _error(self, msg: str) -> ArgumentError:
        return ArgumentError(f"{msg}", variant=self.name)

    # ------------------------------------------------------------------ calls

    def __call__(self, *args, out=None, lse=None):
        """``(out, lse)`` for the variant's inputs; ``out=``/``lse=`` write into given arrays
        (checked like the inputs; they are returned)."""
        if self._simple and out is None and lse is None:
            fast = self._torch_fast(args)
            if fast is not None:
                return fast
        finish, call_args, fn = self._prepare(args, out, lse)
        self._launch(call_args, fn)
        return finish()

    def prepare(self, *args, out=None, lse=None):
        """``(launch, out, lse)``: everything a call does before the kernel runs -- the checks,
        the quantize prologue, argument layouts, the block map -- done once for these inputs,
        and ``launch()`` running the kernel alone on them (into ``out`` and ``lse``).  For
        timing the kernel without its host-side work (attncc.schedules.measure_candidates);
        the inputs must not change between launches (their prologue results are kept).
        ``out`` and ``lse`` are the arrays the kernel writes (JAX: read them after a launch)."""
        finish, call_args, fn = self._prepare(args, out, lse)
        return (lambda: self._launch(call_args, fn)), *finish()

    def _prepare(self, args, out, lse):
        """(outputs after the launch: a function, kernel arguments, function) of a call; nothing
        is launched."""
        inputs = self.inputs
        if len(args) != len(inputs):
            raise self._error(f"the kernel takes {len(inputs)} input(s) ({', '.join(self.input_names)}), "
                              f"got {len(args)}")
        fw = framework_of(args[0])
        values = []
        device = None
        for a, spec in zip(args, inputs):
            v, dev = self._check(a, spec)
            if device is None:
                device = dev
            elif dev != device:
                raise self._error(f"input {spec.name} is on {_devname(dev)}, input {inputs[0].name} on "
                                  f"{_devname(device)}: all inputs must be on one device")
            values.append(v)
        if device not in self._checked_devices:
            self._check_device(device)
        given = None
        if out is not None or lse is not None:
            if out is None or lse is None:
                raise self._error("give both out= and lse=, or neither")
            given = [self._check_output(x, spec, device) for x, spec in zip((out, lse), self.outputs)]
        if fw == "torch":
            return self._prepare_torch(values, device, given)
        return self._prepare_dlpack(values, device, fw, given)

    def _check_output(self, x, spec: _Arg, device):
        """(returned object, kernel argument) for a caller-provided output array."""
        if framework_of(x) in ("jax",):
            raise self._error(f"{spec.name}= is a JAX array, which is immutable; let the kernel allocate it")
        v, dev = self._check(x, spec, what="output")
        if dev != device:
            raise self._error(f"output {spec.name} is on {_devname(dev)}, the inputs on {_devname(device)}")
        if isinstance(v, np.ndarray):
            if not v.flags.writeable:
                raise self._error(f"output {spec.name} is read-only")
            arg = _np_to_ffi(v, spec.dtype) if spec.dtype in _ML_DTYPES else v
            ptr = v.ctypes.data
        else:
            arg, ptr = v, v.data_ptr()
        if ptr % self.align:
            raise self._error(f"output {spec.name} is not {self.align}-byte aligned (the kernel's vector stores "
                              "need it); let the kernel allocate it")
        return x, arg

    def _torch_fast(self, args):
        """The torch short path: every check of ``_check`` inline; None (take the full path,
        which raises the precise error) on anything it does not expect."""
        t = self._torch
        if t is None:
            if "torch" not in type(args[0]).__module__ if args else True:
                return None
            import torch

            t = self._torch = (torch.Tensor, "cuda" if self.device_type == DL_CUDA else "cpu",
                               [a.torch_dtype for a in self.inputs], [a.shape for a in self.inputs],
                               [(o.shape, o.torch_dtype) for o in self.outputs], torch.empty)
        cls, devtype, dtypes, shapes, outs, empty = t
        if len(args) != len(dtypes):
            return None
        dev = None
        for a, dt, shp in zip(args, dtypes, shapes):
            if (type(a) is not cls or a.dtype is not dt or a.shape != shp or a.requires_grad
                    or not a.is_contiguous() or a.data_ptr() % self.align):
                return None
            if dev is None:
                dev = a.device
                if dev.type != devtype:
                    return None
            elif a.device != dev:
                return None
        if devtype == "cuda" and (DL_CUDA, dev.index or 0) not in self._checked_devices:
            return None
        out = empty(outs[0][0], dtype=outs[0][1], device=dev)
        lse = empty(outs[1][0], dtype=outs[1][1], device=dev)
        self._launch((*args, out, lse))
        return out, lse

    # -- argument checks (before anything runs) ---------------------------------------

    def _check(self, a, spec: _Arg, what: str = "input"):
        """(value, (device_type, device_id)) or ArgumentError."""
        fw = framework_of(a)
        if fw == "torch":
            if a.dtype != spec.torch_dtype:
                raise self._dtype_error(what, spec, str(a.dtype).replace("torch.", ""))
            if tuple(a.shape) != spec.shape:
                raise self._shape_error(what, spec, tuple(a.shape))
            d = a.device
            dev = (DL_CPU, 0) if d.type == "cpu" else (DL_CUDA if d.type == "cuda" else -1, d.index or 0)
            if dev[0] != self.device_type:
                raise self._device_error(what, spec, str(d))
            if not a.is_contiguous():
                raise self._layout_error(what, spec, f"strides {tuple(a.stride())}")
            if a.requires_grad:
                a = a.detach()
            return a, dev
        if fw == "numpy":
            if a.dtype != spec.np_dtype:
                raise self._dtype_error(what, spec, str(a.dtype))
            if a.shape != spec.shape:
                raise self._shape_error(what, spec, a.shape)
            if self.device_type != DL_CPU:
                raise self._device_error(what, spec, "cpu (a numpy array)")
            if not a.flags.c_contiguous:
                raise self._layout_error(what, spec, f"strides {a.strides} (bytes)")
            return a, (DL_CPU, 0)
        if not fw:
            raise self._error(f"{what} {spec.name} is a {type(a).__module__}.{type(a).__name__}, not an array "
                              "that supports DLPack (torch, numpy, JAX, cupy, ...)")
        import tvm_ffi

        try:
            t = tvm_ffi.from_dlpack(a)
        except Exception as exc:
            raise self._error(f"{what} {spec.name} ({type(a).__name__}) cannot be read through DLPack: "
                              f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}") \
                from exc
        if str(t.dtype) != spec.dtype:
            raise self._dtype_error(what, spec, str(t.dtype))
        if tuple(t.shape) != spec.shape:
            raise self._shape_error(what, spec, tuple(t.shape))
        dev = (t.device.dlpack_device_type(), t.device.index)
        if dev[0] != self.device_type:
            raise self._device_error(what, spec, str(t.device))
        if not t.is_contiguous():
            raise self._layout_error(what, spec, f"strides {tuple(t.strides)}")
        return t, dev

    def _dtype_error(self, what, spec, got):
        return self._error(f"{what} {spec.name} has dtype {got}, the kernel was built for {spec.dtype}")

    def _shape_error(self, what, spec, got):
        return self._error(f"{what} {spec.name} has shape {tuple(got)}, the kernel was built for {spec.shape} "
                           "(export again with --shape for other sizes)")

    def _device_error(self, what, spec, got):
        want = "cuda" + (f" ({self.arch})" if self.arch else "") if self.device_type == DL_CUDA else "cpu"
        return self._error(f"{what} {spec.name} is on {got}, the kernel runs on {want}")

    def _layout_error(self, what, spec, got):
        return self._error(f"{what} {spec.name} is not contiguous ({got}); pass a C-contiguous array "
                           "(.contiguous() / np.ascontiguousarray)")

    def _check_device(self, device) -> None:
        if device[0] == DL_CUDA and self.arch:
            cc = _native.cuda_compute_capability(device[1])
            if cc is None:
                raise self._error(f"CUDA device {device[1]} is not visible to TVM's runtime")
            if not _native.arch_runs_on(self.arch, cc):
                raise self._error(f"the kernel was built for {self.arch}; cuda:{device[1]} is sm_{cc[0]}{cc[1]}")
        self._checked_devices.add(device)

    # -- torch -------------------------------------------------------------------------

    def _prepare_torch(self, values, device, given=None):
        import torch

        dev = values[0].device
        ops = self._operands(values, "torch")
        args = []
        for spec, v in zip(self.kernel_args, ops):
            if spec.role in ("output", "table"):
                args.append(spec)
                continue
            if not isinstance(v, torch.Tensor):
                v = self._host_to_arg(v, spec, device)
            elif v.data_ptr() % self.align:
                if device[0] != DL_CPU:
                    raise self._error(f"{spec.name} is not {self.align}-byte aligned (a view at an offset?); "
                                      "pass a freshly allocated tensor (.clone())")
                v = v.clone()
            args.append(v)
        if given is None:
            outs = [torch.empty(o.shape, dtype=o.torch_dtype, device=dev) for o in self.outputs]
            it = iter(outs)
        else:
            outs = [g[0] for g in given]
            it = iter([g[1] for g in given])
        args = [next(it) if isinstance(x, _Arg) and x.role == "output" else x for x in args]
        return (lambda: (outs[0], outs[1])), *self._fill_tables(args, ops, device)

    # -- numpy, JAX, cupy, any DLPack ---------------------------------------------------

    def _prepare_dlpack(self, values, device, fw, given=None):
        ops = self._operands(values, fw)
        args = []
        for spec, v in zip(self.kernel_args, ops):
            if spec.role in ("output", "table"):
                args.append(spec)
            else:
                args.append(self._to_arg(v, spec, device))
        if given is not None:
            passed = [g[1] for g in given]
            results = [g[0] for g in given]
        elif fw == "numpy":
            host = [aligned_empty(o.shape, o.np_dtype, self.align) for o in self.outputs]
            passed = [_np_to_ffi(h, o.dtype) if o.dtype in _ML_DTYPES else h for h, o in zip(host, self.outputs)]
            results = host
        else:
            passed = [_native.empty(o.shape, o.dtype, *device) for o in self.outputs]
            results = None
        it = iter(passed)
        args = [next(it) if isinstance(x, _Arg) and x.role == "output" else x for x in args]
        call_args, fn = self._fill_tables(args, ops, device)

        def finish():            # after the launch: JAX and cupy wrap the written tensors
            res = results if results is not None else [_wrap(t, fw) for t in passed]
            return res[0], res[1]
        return finish, call_args, fn

    def _to_arg(self, v, spec: _Arg, device):
        """A kernel argument from a checked value: numpy arrays become aligned, writable and
        (for bfloat16/fp8) tvm_ffi views; tvm_ffi tensors are copied when misaligned."""
        if isinstance(v, np.ndarray):
            return self._host_to_arg(v, spec, device)
        if getattr(v, "data_ptr", None) is not None and v.data_ptr() % self.align:
            if device[0] != DL_CPU:
                raise self._error(f"{spec.name} is not {self.align}-byte aligned; pass a freshly allocated array")
            dst = _native.empty(spec.shape, spec.dtype, *device)
            _native.global_func("runtime.TVMTensorCopyFromTo")(v, dst, None)
            return dst
        return v

    def _host_to_arg(self, a: np.ndarray, spec: _Arg, device):
        """A numpy array (an input, or a host-computed prologue result) as a kernel argument."""
        a = np.asarray(a)
        if a.dtype != spec.np_dtype:
            a = a.astype(spec.np_dtype)
        if a.shape != spec.shape:
            raise self._shape_error("input", spec, a.shape)
        if device[0] != DL_CPU:
            dst = _native.empty(spec.shape, spec.dtype, *device)
            _native.copy_from_host(dst, np.ascontiguousarray(a))
            return dst
        if not a.flags.c_contiguous or a.ctypes.data % self.align:
            b = aligned_empty(spec.shape, spec.np_dtype, self.align)
            b[...] = a
            a = b
        elif not a.flags.writeable:
            a = _writable_alias(a)
        if spec.dtype in _ML_DTYPES:
            return _np_to_ffi(a, spec.dtype)
        return a

    # -- prologue (quantize), tables, launch ----------------------------------------

    def _operands(self, values, fw):
        """Per kernel argument: the value it takes (None for outputs and tables)."""
        results = []
        for p in self.prologue:
            x = values[self._index[p["input"]]]
            results.append(_quantize(x, p, fw))
        out = []
        for spec in self.kernel_args:
            src = spec.source
            if src is None:
                out.append(None)
            elif "input" in src:
                out.append(values[self._index[src["input"]]])
            else:
                out.append(results[src["prologue"]][src["result"]])
            if src is not None and src.get("layout"):
                out[-1] = _layout(out[-1], src["layout"], fw)
        return out

    def _fill_tables(self, args, ops, device):
        """(arguments with the tile map filled in, the function to call)."""
        if self.block_map.get("mode", "none") == "none":
            return args, self._fn
        fn = self._fn
        if self.block_map["mode"] == "static":
            t = self._static_tables.get(device)
            if t is None:
                t = self._static_tables[device] = self._table_arg(self._tile_map, device)
        else:
            caps = [_to_host(v) for spec, v in zip(self.kernel_args, ops) if spec.role == "capture"]
            key = tuple(c.tobytes() for c in caps)
            entry = self._runtime_tables.get(key)
            if entry is None:
                bq, bk = self.block_map["block_q"], self.block_map["block_k"]
                tiles = np.ascontiguousarray(np.asarray(self._runtime_tile_map(caps, bq, bk), dtype=np.int32))
                entry = {"function": None}
                small = self.block_map.get("small")
                limits = self.block_map.get("row_limits")
                if small and float(np.mean(tiles != 0)) <= small["below"]:
                    # a sparse call: the kernel of small tiles, with its own tile map
                    entry["function"] = small["function"]
                    tiles = np.ascontiguousarray(np.asarray(
                        self._runtime_tile_map(caps, small["block_q"], small["block_k"]), dtype=np.int32))
                    if small.get("launch_order"):
                        tiles = self._with_launch_order(tiles, small["launch_order"])
                    if limits and small.get("row_limits"):
                        tiles = self._with_row_limits(tiles, caps, limits, small["block_q"])
                else:
                    if self.block_map.get("row_order"):
                        # the persistent kernel's walk over the query blocks, heaviest first
                        ro = self.block_map["row_order"]
                        sched = ro.get("schedule")
                        tiles = with_row_order(tiles, ro.get("window", 1),
                                               (sched["grid"], sched["bhn"]) if sched else None)
                    if self.block_map.get("launch_order"):
                        tiles = self._with_launch_order(tiles, self.block_map["launch_order"])
                    if limits:
                        tiles = self._with_row_limits(tiles, caps, limits, bq)
                if len(self._runtime_tables) >= 8:
                    self._runtime_tables.popitem(last=False)
                self._runtime_tables[key] = entry
                entry["tiles"] = tiles
            else:
                self._runtime_tables.move_to_end(key)
            t = entry.get(device)
            if t is None:
                t = entry[device] = self._table_arg(entry["tiles"], device)
            if entry["function"] is not None:
                fn = self._functions[entry["function"]]
        return [t if isinstance(x, _Arg) and x.role == "table" else x for x in args], fn

    @staticmethod
    def _with_launch_order(tiles, lo: dict) -> np.ndarray:
        """The table with its thread blocks' launch order appended: ``block_map.launch_order``."""
        return with_launch_order(tiles, lo["bhn"], lo.get("slots"), lo.get("tail_waves"))

    def _with_row_limits(self, tiles, caps, limits: dict, block_q: int) -> np.ndarray:
        """The table with each row's first and last kept key of a document mask (and a flag a
        query block) appended: the manifest's ``block_map.row_limits``."""
        names = [spec.name for spec in self.kernel_args if spec.role == "capture"]
        return with_row_limits(tiles, caps[names.index(limits["capture"])], self.block_map["q_len"],
                               self.block_map["kv_len"], block_q, limits.get("lower_offset"),
                               limits.get("upper_offset"))

    def _table_arg(self, tiles: np.ndarray, device):
        if device[0] == DL_CPU:
            host = aligned_empty(tiles.shape, np.int32, self.align)
            host[...] = tiles
            return host
        dst = _native.empty(tiles.shape, "int32", *device)
        _native.copy_from_host(dst, np.ascontiguousarray(tiles, dtype=np.int32))
        return dst

    def _launch(self, args, fn=None):
        try:
            (fn or self._fn)(*args)
        except AttnccError:
            raise
        except Exception as exc:   # the module's own argument checks; a TVM traceback never reaches a user
            text = str(exc).strip()
            raise ArgumentError(f"the kernel refused its arguments: {text.splitlines()[-1] if text else exc}",
                                variant=self.name) from exc

    # ------------------------------------------------------------------ convenience

    def block_map_for(self, *captures) -> Optional[np.ndarray]:
        """The tile map of the kernel's block sizes (static, or computed from captured inputs);
        a call whose map is sparse enough for the manifest's ``block_map.small`` kernel runs that
        kernel with the map of its own, smaller tiles."""
        mode = self.block_map.get("mode", "none")
        if mode == "static":      # (without the persistent kernel's row-order column)
            return self._tile_map[:, :self.block_map["shape"][1]]
        if mode == "runtime":
            return np.asarray(self._runtime_tile_map([_to_host(c) for c in captures], self.block_map["block_q"],
                                                     self.block_map["block_k"]))
        return None


def _devname(dev) -> str:
    return f"{DEVICE_NAMES.get(dev[0], f'device type {dev[0]}')}:{dev[1]}"


def _np_to_ffi(a: np.ndarray, dtype: str):
    """A numpy array of an ml_dtypes type (bfloat16, fp8) as a tvm_ffi Tensor of that type
    (numpy's DLPack export refuses them: export the same bits as unsigned ints and retype)."""
    import tvm_ffi

    return _native.view_as(tvm_ffi.from_dlpack(a.view(_ML_DTYPES[dtype])), dtype)


def _to_host(v) -> np.ndarray:
    """A captured input as a numpy array (block maps are computed on the host)."""
    if isinstance(v, np.ndarray):
        return v
    mod = type(v).__module__.partition(".")[0]
    if mod == "torch":
        return v.detach().cpu().numpy()
    try:
        return np.from_dlpack(v)
    except Exception:
        pass
    dev = v.device
    if dev.dlpack_device_type() != DL_CPU:           # a tvm_ffi tensor on a GPU
        host = _native.empty(v.shape, str(v.dtype), DL_CPU, 0)
        _native.global_func("runtime.TVMTensorCopyFromTo")(v, host, None)
        return np.from_dlpack(host).copy()
    raise ArgumentError(f"cannot read a captured input of type {type(v).__name__} on the host")


def _wrap(t, fw: str):
    """A tvm_ffi output Tensor in the caller's framework (zero copy through DLPack)."""
    if fw == "jax":
        import jax

        return jax.dlpack.from_dlpack(t)
    if fw == "cupy":
        import cupy

        return cupy.from_dlpack(t)
    return t


def _layout(x, layout: str, fw: str):
    """A kernel argument's own layout (attncc.runtime._layouts), applied on x's device."""
    from attncc.runtime import _layouts

    if layout != _layouts.FP8_V:
        raise AttnccError(f"this runtime does not know the argument layout '{layout}' (newer attncc export?)")
    if fw == "torch":
        return _layouts.fp8_v_layout(x)
    return _layouts.fp8_v_layout(_to_host(x))


def _quantize(x, p: dict, fw: str):
    """The quantize pass's host-side prologue: (xq, scale) as attncc.reference defines it."""
    if fw == "torch":
        from attncc.runtime._torch import quantize_torch

        return quantize_torch(x, p["dtype"], p["granularity"], p["block"])
    from attncc.ir.types import parse_dtype
    from attncc.reference import quantize

    return quantize(_to_host(x), parse_dtype(p["dtype"]), p["granularity"], p["block"])


def load_block_map_function(manifest: dict) -> Callable:
    """The runtime block map of a data-dependent mask: the flash op's mask region, parsed
    from the manifest's IR text; tiles decided by interval arithmetic (tile_intervals), the
    elements intervals cannot settle evaluated by attncc.reference's numpy interpreter."""
    from attncc.ir.parser import parse_function
    from attncc.targets.lowering import runtime_tiles

    func = parse_function(manifest["ir"])
    flashes = [op for op in func.ops if op.name == "attn.flash"]
    if len(flashes) != 1:
        raise _native.LoadError(f"manifest IR of '{manifest['variant']}' has {len(flashes)} attn.flash ops")
    mask = flashes[0].region("mask")
    bm = manifest["block_map"]
    env = {k: int(v) for k, v in bm["dims"].items()}
    S, T, B, H = bm["q_len"], bm["kv_len"], bm["batch"], bm["q_heads"]

    def tile_map(arrays, block_q, block_k):
        return runtime_tiles(mask, list(arrays), S, T, B, H, block_q, block_k, env)
    return tile_map


def file_path(directory: str, manifest: dict, role: str) -> Optional[str]:
    entry = manifest.get("files", {}).get(role)
    return os.path.join(directory, entry["path"]) if entry else None
