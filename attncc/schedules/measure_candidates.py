"""The split tuning flow, measuring side: time exported candidates on a GPU machine that
has TVM's runtime and tvm-ffi but not TVM's compiler (never imports ``tvm``).

    python -m attncc.schedules.measure_candidates DIR [DIR ...] --out results.jsonl \\
        [--lib-dir RT/lib] [--jobs 16] [--timeout 60] [--match REGEX]

DIR holds what ``attncc tune ... --export-candidates DIR`` wrote (``*/manifest.json``,
the candidates' ``.so``, ``src/<sha256>.cu``).  Steps:

1. every candidate's CUDA source is compiled with nvcc into ``DIR/fatbin/<sha256>.fatbin``,
   ``--jobs`` at once (sources already compiled are kept); a source nvcc rejects makes its
   candidates "build-failed".  Loading a module then answers TVM's
   ``tvm_callback_cuda_compile`` from those files (attncc.runtime's callback, by sha256).
2. a worker process (restarted after a crash or a hang; ``--timeout`` seconds per
   candidate) loads each candidate -- through attncc.runtime where it has a runtime manifest
   (quantize prologue, V layout, tile map, captured inputs from ``captures.npz``; the
   kernel alone is timed, ``Kernel.prepare``) -- runs it once on random inputs with the outputs
   poisoned with NaN and checks the result (manifest ``reference``: ``sdpa`` -- a float32
   evaluation on the GPU, on the dequantized operands for a quantized kernel, tolerance 2 x
   the error of a naive evaluation in the kernel's precision + 1e-3, DESIGN.md's rule, for
   out and lse; ``default`` -- agreement with the default config's output within ``rel`` of
   its largest value), then times it: ``triton.testing.do_bench`` (``--warmup-ms``,
   ``--rep-ms``; CUDA events without triton), median, spread = (p75 - p25) / median.
   A wrong result is "run-failed"; a crash "run-failed"; a hang "timeout".
3. confirmation: the ``--confirm`` fastest candidates of each kernel and its default are
   timed again, interleaved, ``--rounds`` times (phase "confirm"), so that the pick and the
   default-vs-tuned ratio do not rest on one measurement.

Each result is one JSON line in ``--out``, a tuning-database record (key: the manifest's
fingerprint, shape bucket, dtype, target, and the device's name from
``torch.cuda.get_device_name``, normalised: 'NVIDIA H200' ...) with the raw name, arch,
SM count, candidate id and check errors in its extra fields.  ``attncc tune --ingest``
puts them into a database.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import glob
import json
import math
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

RT_LIBS = ("libtvm_runtime.so", "libtvm_runtime_extra.so", "libtvm_runtime_cuda.so")
FP8_LSE_FLOOR = 2e-3        # attncc.compiler's floor of the fp8 kernels' lse bound (no compiler import here)


def _runtime_manifest(man: dict):
    """The runtime manifest of the kernel's first candidate with one (they share inputs), or None."""
    for c in man["candidates"]:
        if c.get("runtime"):
            with open(os.path.join(man["dir"], c["runtime"])) as f:
                return json.load(f)
    return None


def _qkv_operands(rman, values: dict, quant, torch):
    """q, k, v of the reference: the variant's inputs behind the kernel's first three
    arguments; quantized ones as the runtime's prologue computes them, dequantized (x_q * scale)."""
    if rman is None:
        return values["q"], values["k"], values["v"]
    from attncc.runtime._torch import quantize_torch

    out = []
    for arg in rman["kernel_args"][:3]:
        src = arg["source"]
        if "input" in src:
            out.append(values[src["input"]])
            continue
        p = rman["prologue"][src["prologue"]]
        xq, scale = quantize_torch(values[p["input"]], p["dtype"], p["granularity"], p["block"])
        out.append(xq.float() * scale)
    return out


def find_manifests(dirs) -> list:
    out = []
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*", "manifest.json")) + glob.glob(os.path.join(d, "manifest.json"))):
            with open(path) as f:
                man = json.load(f)
            if man.get("format") != "attncc-candidates/1":
                print(f"skipping {path}: format {man.get('format')!r}", file=sys.stderr)
                continue
            man["dir"] = os.path.dirname(os.path.abspath(path))
            man["root"] = os.path.dirname(man["dir"]) if os.path.isdir(os.path.join(os.path.dirname(man["dir"]), "src")) \
                else man["dir"]
            out.append(man)
    return out


# --------------------------------------------------------------------------- nvcc, in parallel


def compile_sources(manifests: list, jobs: int) -> dict:
    """{sha256: None (compiled) or the nvcc error}; sources already compiled are skipped."""
    from attncc.schedules.candidates import nvcc_fatbin

    todo, status = {}, {}
    for man in manifests:
        fdir = os.path.join(man["root"], "fatbin")
        os.makedirs(fdir, exist_ok=True)
        for c in man["candidates"]:
            sha = c["source_sha256"]
            fat = os.path.join(fdir, sha + ".fatbin")
            if os.path.exists(fat):
                status[sha] = None
            elif sha not in todo:
                todo[sha] = (os.path.join(man["root"], "src", sha + ".cu"), fat, man["arch"])
    nvcc = shutil.which("nvcc")
    if todo and nvcc is None:
        for sha in todo:
            status[sha] = "no fatbin and nvcc is not on PATH"
        return status
    t0 = time.time()

    def one(item):
        sha, (src, fat, arch) = item
        if not os.path.exists(src):
            return sha, f"source {src} missing"
        ok, log, _, _ = nvcc_fatbin(src, fat, arch, nvcc)
        return sha, None if ok else "nvcc failed: " + log.strip()[-400:]

    with cf.ThreadPoolExecutor(max(1, jobs)) as ex:
        for sha, err in ex.map(one, todo.items()):
            status[sha] = err
    if todo:
        bad = sum(1 for s in todo if status[s])
        print(f"nvcc: {len(todo)} source(s) compiled in {time.time() - t0:.1f} s with {jobs} jobs"
              + (f", {bad} failed" if bad else ""), flush=True)
    return status


# --------------------------------------------------------------------------- the worker (GPU)


class _Worker:
    """State of the measuring process: the runtime, the current kernel's inputs and reference."""

    def __init__(self, lib_dir, device: str = "cuda"):
        from attncc.runtime import _native

        self.native = _native
        self.tvm_ffi = _native.ensure_runtime(RT_LIBS if device == "cuda" else RT_LIBS[:1], lib_dir)
        import torch

        self.torch = torch
        self.dev = torch.device(device)
        self.current = None            # manifest dir of the prepared inputs
        self.state = {}
        try:
            import triton.testing  # noqa: F401

            self.bench = self._bench_triton
        except Exception:  # noqa: BLE001
            self.bench = self._bench_events
        if device != "cuda":                     # testing the flow without a GPU (CPU kernels)
            self.bench = self._bench_host

    def sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def hello(self) -> dict:
        if self.dev.type != "cuda":
            import platform

            return {"device_full": f"host {platform.machine()}", "sm_count": 0, "cc": "-",
                    "torch": self.torch.__version__, "tvm_imported": "tvm" in sys.modules, "timer": "bench_host"}
        props = self.torch.cuda.get_device_properties(0)
        return {"device_full": self.torch.cuda.get_device_name(0), "sm_count": props.multi_processor_count,
                "cc": f"{props.major}.{props.minor}", "torch": self.torch.__version__,
                "tvm_imported": "tvm" in sys.modules, "timer": self.bench.__name__.strip("_")}

    # ---- timing
    def _bench_triton(self, fn, warmup_ms, rep_ms):
        import triton.testing

        try:
            xs = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        except (TypeError, ValueError):          # an older triton without return_mode="all"
            return self._bench_events(fn, warmup_ms, rep_ms)
        return [t * 1e-3 for t in (xs if isinstance(xs, (list, tuple)) else [xs])]

    def _bench_host(self, fn, warmup_ms, rep_ms):
        fn()
        xs, t_end = [], time.perf_counter() + rep_ms * 1e-3
        while len(xs) < 3 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            fn()
            xs.append(time.perf_counter() - t0)
        return xs

    def _bench_events(self, fn, warmup_ms, rep_ms):
        torch = self.torch
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        est = max(time.perf_counter() - t0, 1e-6)
        for _ in range(max(1, int(warmup_ms * 1e-3 / est))):
            fn()
        n = max(5, int(rep_ms * 1e-3 / est))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]

    # ---- a kernel's inputs and reference
    def prepare(self, man: dict) -> dict:
        """The kernel's inputs (the same for every candidate), its out and lse, and its reference.
        Candidates with a runtime manifest (``runtime``: every export since quantized and sparse
        kernels were taken) are called through attncc.runtime on the variant's inputs -- float
        inputs random, captured ones from ``captures.npz`` -- so the quantize prologue, V's
        layout and the tile map are the runtime's; older ones get (q, k, v, out, lse)."""
        if self.current == man["dir"]:
            return self.state
        torch = self.torch
        self.state = {}
        self.current = None
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()
        dts = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
        dt = dts[man["dtype"]]
        gen = torch.Generator(device=self.dev).manual_seed(0)
        rman = _runtime_manifest(man)
        if rman is None:
            q, k, v = (torch.randn(man["input_shapes"][n], dtype=dt, device=self.dev, generator=gen)
                       for n in man["inputs"])
            inputs, names = [q, k, v], ["q", "k", "v"]
        else:
            import numpy as np

            caps = {}
            if man.get("captures"):
                with np.load(os.path.join(man["dir"], man["captures"])) as z:
                    caps = {n: z[n] for n in z.files}
            inputs = []
            for d in rman["inputs"]:
                if d["name"] in caps:
                    inputs.append(torch.from_numpy(caps[d["name"]]).to(self.dev))
                elif d["dtype"] in dts:
                    inputs.append(torch.randn(d["shape"], dtype=dts[d["dtype"]], device=self.dev, generator=gen))
                else:
                    raise ValueError(f"input {d['name']} ({d['dtype']}): not a float and not in captures.npz")
            names = [d["name"] for d in rman["inputs"]]
        st = {"inputs": inputs, "dtype": dt,
              "out": torch.empty(man["out_shape"], dtype=dt, device=self.dev),
              "lse": torch.empty(man["lse_shape"], dtype=torch.float32, device=self.dev)}
        ref = man["reference"]
        if ref["kind"] == "sdpa":
            q, k, v = _qkv_operands(rman, dict(zip(names, inputs)), ref.get("quant"), torch)
            st.update(self._sdpa_reference(q, k, v, ref["scale"], ref["causal"], ref.get("quant"), dt))
        self.state = st
        self.current = man["dir"]
        return st

    def _sdpa_reference(self, q, k, v, scale, causal, quant=None, out_dtype=None) -> dict:
        """float32 out and lse, and the errors of a naive evaluation in the inputs' precision
        (bf16/f16 scores and probabilities; for a quantized kernel, ``q, k, v`` are the
        dequantized operands, the scores float32 and P in ``out_dtype``, or in e4m3 where P·V is
        quantized: the kernel's 2^8 P; the output rounded to ``out_dtype``), one batch and 4
        heads at a time."""
        torch = self.torch
        B, H, S, _ = q.shape
        group = H // k.shape[1]
        out = torch.empty(q.shape[:3] + (v.shape[-1],), dtype=torch.float32, device=self.dev)
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=self.dev)
        naive_err = naive_lse_err = 0.0
        T = k.shape[2]
        mask = None
        if causal:
            mask = torch.ones(S, T, dtype=torch.bool, device=self.dev).triu(1)
        for b in range(B):
            for h0 in range(0, H, 4):
                hs = slice(h0, min(h0 + 4, H))
                kh = k[b].repeat_interleave(group, 0)[hs]
                vh = v[b].repeat_interleave(group, 0)[hs]
                qh = q[b, hs]
                s = (qh.float() @ kh.float().transpose(-1, -2)) * scale
                if quant is None:
                    sn = ((qh @ kh.transpose(-1, -2)) * scale).float()        # scores rounded to bf16/f16
                else:
                    sn = s.clone()                    # 8-bit products are exact; the scores stay f32
                if mask is not None:
                    s.masked_fill_(mask, float("-inf"))
                    sn.masked_fill_(mask, float("-inf"))
                l32 = torch.logsumexp(s, -1)
                o32 = torch.softmax(s, -1) @ vh.float()
                ln = torch.logsumexp(sn, -1)
                if quant is None:
                    on = (torch.softmax(sn, -1).to(q.dtype) @ vh).float()
                else:
                    pu = torch.exp(sn - sn.amax(-1, keepdim=True))      # unnormalised, <= 1
                    pr = (pu * 256).to(torch.float8_e4m3fn).float() / 256 if quant["pv"] else \
                        pu.to(out_dtype).float()
                    on = ((pr @ vh.float()) / pu.sum(-1, keepdim=True)).to(out_dtype).float()   # out rounded
                out[b, hs] = o32
                lse[b, hs] = l32
                naive_err = max(naive_err, float((on - o32).abs().max()))
                naive_lse_err = max(naive_lse_err, float((ln - l32).abs().max()))
                del s, sn, o32, on
        lse_floor = FP8_LSE_FLOOR if quant and quant["dtype"] != "int8" else 1e-3
        return {"ref_out": out, "ref_lse": lse, "tol": 2 * naive_err + 1e-3, "lse_tol": 2 * naive_lse_err + lse_floor}

    def load(self, man: dict, cand: dict):
        """(module, launch): ``launch()`` runs the candidate once on the prepared inputs, into
        the state's out and lse."""
        fat = os.path.join(man["root"], "fatbin", cand["source_sha256"] + ".fatbin")
        self.native.register_cuda_fatbin(cand["source_sha256"], fat if os.path.exists(fat) else None, man["arch"])
        mod = self.tvm_ffi.load_module(os.path.join(man["dir"], cand["file"]))
        st = self.prepare(man)
        if not cand.get("runtime"):
            fn = mod["main"]
            args = (*st["inputs"], st["out"], st["lse"])
            return mod, (lambda: fn(*args))
        from attncc.runtime import kernel_of_module

        with open(os.path.join(man["dir"], cand["runtime"])) as f:
            rman = json.load(f)
        kernel = kernel_of_module(rman, mod, man["dir"], os.path.join(man["dir"], cand["file"]))
        launch, _, _ = kernel.prepare(*st["inputs"], out=st["out"], lse=st["lse"])
        return mod, launch

    def check(self, man: dict, cand: dict, fn) -> dict:
        torch = self.torch
        st = self.prepare(man)
        out, lse = st["out"], st["lse"]
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        fn()
        self.sync()
        res = {}
        if cand.get("default"):                # kept: each candidate's difference from it is recorded
            st["default_out"] = out.float().clone()
        if "ref_out" not in st:            # reference "default": the default candidate's output
            if cand.get("default"):
                ref = man["reference"]
                rel = ref.get("rel", 0.02)
                st["ref_out"], st["ref_lse"] = st["default_out"], lse.clone()
                scale = float(st["ref_out"].abs().max())
                fp8 = (ref.get("quant") or {}).get("dtype", "int8") != "int8"
                # the lse of two correct configs differs by float32 rounding (fp8 kernels: up to
                # ~7e-4, H200); an absolute bound, as the sdpa check's floor
                st["tol"], st["lse_tol"] = rel * scale + 1e-3, FP8_LSE_FLOOR if fp8 else 1e-3
                return {"err": 0.0, "tol": st["tol"], "lse_err": 0.0, "lse_tol": st["lse_tol"], "ok": True,
                        "check": "is the reference (default)"}
            if "ref_out" not in st:
                return {"ok": False, "error": "no reference: the default candidate did not run first"}
        nan = bool(torch.isnan(out).any()) or bool(torch.isnan(lse).any())
        err = float((out.float() - st["ref_out"]).abs().max())
        lse_err = float((lse - st["ref_lse"]).abs().max())
        res.update(err=err, tol=st["tol"], lse_err=lse_err, lse_tol=st["lse_tol"],
                   ok=not nan and err <= st["tol"] and lse_err <= st["lse_tol"])
        if "default_out" in st and not cand.get("default"):
            res["vs_default"] = float((out.float() - st["default_out"]).abs().max())
            res["out_max"] = float(st["default_out"].abs().max())
        if not res["ok"]:
            res["error"] = ("NaN in the output (an element not written)" if nan else
                            f"wrong result: max error {err:.3g} (tolerance {st['tol']:.3g}), "
                            f"lse {lse_err:.3g} (tolerance {st['lse_tol']:.3g})")
        return res

    def time(self, man, fn, warmup_ms, rep_ms) -> dict:
        xs = sorted(self.bench(fn, warmup_ms, rep_ms))
        med = statistics.median(xs)
        q1, q3 = xs[(len(xs) - 1) // 4], xs[(3 * (len(xs) - 1)) // 4]
        return {"time_s": med, "spread": (q3 - q1) / med if med > 0 else None, "runs": len(xs), "min_s": xs[0]}

    # ---- tasks
    def measure(self, task: dict) -> dict:
        man = _manifest(task["manifest"])
        cand = next(c for c in man["candidates"] if c["id"] == task["id"])
        self.prepare(man)                      # inputs and reference, once a kernel: not load time
        t0 = time.perf_counter()
        _, fn = self.load(man, cand)
        load_s = time.perf_counter() - t0
        res = self.check(man, cand, fn)
        res["load_s"] = load_s
        if not res.get("ok"):
            return dict(res, status="run-failed")
        res.update(self.time(man, fn, task["warmup_ms"], task["rep_ms"]))
        return dict(res, status="ok")

    def confirm(self, task: dict) -> dict:
        man = _manifest(task["manifest"])
        fns = {}
        for cid in task["ids"]:
            cand = next(c for c in man["candidates"] if c["id"] == cid)
            fns[cid] = self.load(man, cand)[1]
        rows = []
        for r in range(task["rounds"]):
            for cid, fn in fns.items():
                rows.append(dict(self.time(man, fn, task["warmup_ms"], task["rep_ms"]), id=cid, round=r))
        return {"status": "ok", "rows": rows}


_MANIFESTS: dict = {}


def _manifest(path: str) -> dict:
    man = _MANIFESTS.get(path)
    if man is None:
        with open(path) as f:
            man = json.load(f)
        man["dir"] = os.path.dirname(os.path.abspath(path))
        root = os.path.dirname(man["dir"])
        man["root"] = root if os.path.isdir(os.path.join(root, "src")) else man["dir"]
        _MANIFESTS[path] = man
    return man


def worker_main(lib_dir, device: str = "cuda") -> None:
    out = sys.stdout
    sys.stdout = sys.stderr                 # only protocol lines on the pipe
    w = _Worker(lib_dir, device)
    out.write(json.dumps({"hello": w.hello()}) + "\n")
    out.flush()
    for line in sys.stdin:
        task = json.loads(line)
        try:
            res = w.confirm(task) if task.get("kind") == "confirm" else w.measure(task)
        except Exception as exc:  # noqa: BLE001 - reported as this candidate's failure
            text = str(exc).strip().splitlines()
            res = {"status": "run-failed", "error": f"{type(exc).__name__}: {text[-1] if text else ''}"[:500]}
        out.write(json.dumps(res) + "\n")
        out.flush()


# --------------------------------------------------------------------------- the parent


class _Timeout(Exception):
    pass


class _Died(Exception):
    pass


class WorkerProcess:
    def __init__(self, lib_dir, start_timeout: float = 300.0, device: str = "cuda"):
        self.lib_dir = lib_dir
        self.device = device
        self.start_timeout = start_timeout
        self.proc = None
        self.hello = None
        self.buf = b""

    def start(self) -> dict:
        self.log = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "attncc.schedules.measure_candidates", "--worker", "--device", self.device]
        if self.lib_dir:
            cmd += ["--lib-dir", self.lib_dir]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.buf = b""
        self.hello = self._read(self.start_timeout)["hello"]
        return self.hello

    def _tail(self) -> str:
        try:
            self.log.seek(0)
            text = self.log.read().decode(errors="replace").strip().splitlines()
            return " | ".join(text[-3:])[-500:]
        except Exception:  # noqa: BLE001
            return ""

    def _read(self, timeout: float) -> dict:
        deadline = time.time() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                raise _Timeout()
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.proc.wait()
                raise _Died(f"worker exited ({self.proc.returncode}): {self._tail()}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, task: dict, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.proc.stdin.write((json.dumps(task) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            self.close(kill=True)
            raise _Died(f"worker gone: {self._tail()}") from exc
        try:
            return self._read(timeout)
        except (_Timeout, _Died):
            self.close(kill=True)
            raise

    def close(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            try:
                self.proc.stdin.close()
            except Exception:  # noqa: BLE001
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _record(man, cand, hello, res, phase, session, trial, arch_device) -> dict:
    from attncc import __version__
    from attncc.schedules.cuda import normalize_device_name
    from attncc.schedules.db import FORMAT_VERSION, now_iso

    ok = res.get("status") == "ok"
    rec = {"v": FORMAT_VERSION, **man["key"], "device": normalize_device_name(hello["device_full"]),
           "config": cand["config"], "time_s": res.get("time_s") if ok else None,
           "spread": res.get("spread") if ok else None, "runs": res.get("runs", 0) if ok else 0,
           "status": res.get("status", "run-failed"), "error": None if ok else res.get("error"),
           "attncc": __version__, "date": now_iso(),
           "variant": man["variant"], "shape": man["env"], "arch": man["arch"], "candidate": cand["id"],
           "phase": phase, "trial": trial, "session": session, "strategy": "exhaustive",
           "device_full": hello["device_full"], "sm_count": hello["sm_count"], "timer": hello["timer"],
           "default": bool(cand.get("default")), "source": "measure_candidates"}
    for k in ("min_s", "err", "tol", "lse_err", "lse_tol", "vs_default", "out_max", "load_s", "round"):
        if res.get(k) is not None:
            rec[k] = round(res[k], 9) if isinstance(res[k], float) else res[k]
    for k in ("predicted_s", "build_s", "kernel_revision"):
        if cand.get(k) is not None:
            rec[k] = cand[k]
    return rec


def run(dirs, out_path, lib_dir=None, jobs=None, timeout=60.0, warmup_ms=25, rep_ms=100, confirm=3, rounds=5,
        match="", device: str = "cuda") -> list:
    manifests = [m for m in find_manifests(dirs) if not match or re.search(match, os.path.basename(m["dir"]))]
    if not manifests:
        raise SystemExit(f"no candidate manifests under {', '.join(dirs)}")
    t_all = time.time()
    nvcc_status = compile_sources(manifests, jobs or os.cpu_count() or 1)
    t_nvcc = time.time() - t_all
    worker = WorkerProcess(lib_dir, device=device)
    try:
        hello = worker.start()
    except (_Timeout, _Died) as exc:
        raise SystemExit(f"measure_candidates: the measuring process did not start: {exc}")
    print(f"device: {hello['device_full']} ({hello['sm_count']} SMs, cc {hello['cc']}); torch {hello['torch']}; "
          f"timer {hello['timer']}; tvm imported: {hello['tvm_imported']}", flush=True)
    session = uuid.uuid4().hex[:8]
    rows = []
    summary = []
    with open(out_path, "a") as out:
        def emit(rec):
            out.write(json.dumps(rec, separators=(",", ":")) + "\n")
            out.flush()
            rows.append(rec)

        for man in manifests:
            t0 = time.time()
            path = os.path.join(man["dir"], "manifest.json")
            # the default first: it is the baseline (and the reference of kind "default")
            cands = sorted(man["candidates"], key=lambda c: not c.get("default"))
            times = {}
            for i, cand in enumerate(cands, 1):
                err = nvcc_status.get(cand["source_sha256"])
                if err:
                    res = {"status": "build-failed", "error": err}
                else:
                    try:
                        res = worker.call({"manifest": path, "id": cand["id"], "warmup_ms": warmup_ms,
                                           "rep_ms": rep_ms}, timeout)
                    except _Timeout:
                        res = {"status": "timeout", "error": f"no result within {timeout:.0f} s (killed)"}
                    except _Died as exc:
                        res = {"status": "run-failed", "error": str(exc)[:500]}
                emit(_record(man, cand, hello, res, "search", session, i, None))
                if res.get("status") == "ok":
                    times[cand["id"]] = res["time_s"]
                else:
                    print(f"  {res.get('status')} {cand['id']}: {str(res.get('error'))[:200]}", flush=True)
            for f in man.get("build_failed", []):
                emit(_record(man, f, hello, {"status": "build-failed", "error": f["error"]}, "search", session, 0,
                             None))
            dflt = next((c["id"] for c in cands if c.get("default")), None)
            ranked = sorted(times, key=times.get)
            best_ids = ranked[:confirm]
            ids = best_ids + ([dflt] if dflt in times and dflt not in best_ids else [])
            conf = {}
            if confirm and len(ids) > 1:
                try:
                    res = worker.call({"kind": "confirm", "manifest": path, "ids": ids, "rounds": rounds,
                                       "warmup_ms": warmup_ms, "rep_ms": rep_ms}, timeout * rounds)
                    for r in res.get("rows", []):
                        cand = next(c for c in cands if c["id"] == r["id"])
                        emit(_record(man, cand, hello, dict(r, status="ok"), "confirm", session, 0, None))
                        conf.setdefault(r["id"], []).append(r["time_s"])
                except (_Timeout, _Died) as exc:
                    print(f"  confirmation failed: {exc}", flush=True)
            med = {k: statistics.median(v) for k, v in conf.items()}
            best = min(med, key=med.get) if med else (ranked[0] if ranked else None)   # --confirm 0: the search's
            line = {"kernel": os.path.basename(man["dir"]), "candidates": len(cands), "ok": len(times),
                    "failed": len(cands) - len(times) + len(man.get("build_failed", [])),
                    "default": dflt, "best": best, "wall_s": time.time() - t0,
                    "default_s": med.get(dflt, times.get(dflt)), "best_s": med.get(best, times.get(best))}
            summary.append(line)
            ratio = (line["default_s"] / line["best_s"]) if line["default_s"] and line["best_s"] else float("nan")
            print(f"{line['kernel']:<58} {line['ok']}/{line['candidates']} ok  default {_us(line['default_s'])}  "
                  f"best {_us(line['best_s'])} ({best})  x{ratio:.3f}  {line['wall_s']:.0f} s", flush=True)
    worker.close()
    print(f"done: {len(rows)} records -> {out_path}; nvcc {t_nvcc:.0f} s, total {time.time() - t_all:.0f} s", flush=True)
    return summary


def _us(s) -> str:
    return "   n/a   " if s is None else f"{s * 1e6:9.1f} us"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", help="folders written by --export-candidates")
    ap.add_argument("--out", help="results JSONL (appended)")
    ap.add_argument("--lib-dir", default=os.environ.get("ATTNCC_TVM_LIB_DIR"),
                    help="folder of libtvm_runtime*.so (default: $ATTNCC_TVM_LIB_DIR or an installed TVM's)")
    ap.add_argument("--jobs", type=int, help="nvcc processes (default: all cores)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per candidate before it counts as hung")
    ap.add_argument("--warmup-ms", type=float, default=25)
    ap.add_argument("--rep-ms", type=float, default=100)
    ap.add_argument("--confirm", type=int, default=3, help="fastest candidates timed again with the default")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the confirmation")
    ap.add_argument("--match", default="", help="only kernels whose folder name matches this regular expression")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only tests the flow with CPU kernels")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.lib_dir, args.device)
        return 0
    if not args.dirs or not args.out:
        ap.error("give the candidate folder(s) and --out")
    run(args.dirs, args.out, args.lib_dir, args.jobs, args.timeout, args.warmup_ms, args.rep_ms, args.confirm,
        args.rounds, args.match, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
