"""Per-call cost of an exported kernel (attncc.runtime) beside the in-process path.

A small decode-like shape (one query per sequence against a K/V cache, GQA 32/8 heads)
makes the per-call overhead visible.  Times are medians of single calls (µs), the
implementations interleaved in rounds so that machine noise hits all alike.

CPU (here, with TVM; the default):

    python benchmarks/export.py [--shape T=4096] [--rounds 7] [--calls 200]

  compiles the decode variant, exports it, loads the export in THIS process through
  ``attncc.runtime`` (and, to check the property, in a fresh process without TVM), and
  times:
    raw main, TVM tensors    ``executable["main"](q, k, v, out, lse)``, preallocated TVM
                             tensors: the floor, what ``attncc compile`` measures
    in-process numpy         ``CompiledKernel.__call__`` (numpy in, copies to TVM tensors)
    attncc.compile, torch    the in-process runtime callable (``attncc.compile``)
    runtime, torch           ``attncc.runtime.load(dir)(q, k, v)``, outputs allocated
    runtime, torch, out=     the same writing into preallocated outputs
    runtime, numpy           numpy in, numpy out (64-byte aligned inputs)
    torch custom op          ``attncc.runtime.torch_op``
    raw main, torch          the loaded module's ``main`` called directly with torch
                             tensors (what the runtime adds = "runtime, torch" minus this)

CUDA (on the GPU machine, which has no TVM; build the folder here first):

    python benchmarks/export.py --export-cuda .gpu/export-decode [--arch sm_90a] [--dtype bf16]
      # here: compile + export with the fatbin and TVM's runtime libraries (--bundle-runtime)
    # there (the run tool, carry [".gpu"]), after installing the tvm-ffi wheel
    # (../shared/tools/gpu-bundle .gpu/rt; see benchmarks/gpu/README.md):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/rt/whl/*.whl && \\
      export PYTHONPATH=/tmp/site LD_LIBRARY_PATH=/tmp/site/tvm_ffi/lib:/usr/local/cuda/lib64 && \\
      python3 benchmarks/export.py --dir .gpu/export-decode

  With --dir it loads the folder with the runtime only, checks the result against the
  float64 numpy reference (attncc.reference: numpy, no TVM), and times, with torch CUDA
  tensors: the raw ``main`` (outputs preallocated), the runtime call (outputs allocated),
  the runtime with ``out=``, the torch custom op — both as wall time per call of a loop
  of back-to-back calls (synchronised at the end) and as GPU time (CUDA events).
"""


import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

DECODE_DEFAULTS = dict(B=1, Hq=32, Hkv=8, S=1, T=1024, D=128)


def decode_variant():
    from attncc.lang import Tensor, attention, variant

    @variant(defaults=DECODE_DEFAULTS)
    def decode_gqa(q: Tensor["B", "Hq", "S", "D"], k: Tensor["B", "Hkv", "T", "D"],
                   v: Tensor["B", "Hkv", "T", "D"]):
        return attention(q, k, v)
    return decode_gqa


def _shapes(text):
    from attncc.compiler import parse_assignments

    return {**DECODE_DEFAULTS, **parse_assignments(text, "--shape")}


def interleaved(fns: dict, rounds: int, calls: int, sync=None) -> dict:
    """Median µs of single calls of each function.  Each round times ``calls`` consecutive
    calls of every function in turn (consecutive calls of one function keep its buffers in
    the caches, as a decode loop does); the result is the median over rounds of each
    round's median, so that machine noise falls on all functions alike."""
    samples = {name: [] for name in fns}
    items = list(fns.items())
    for _, fn in items:              # warm up (first-call costs, caches, thread pools)
        for _ in range(5):
            fn()
    for r in range(rounds):
        for name, fn in items[r % len(items):] + items[:r % len(items)]:
            fn()
            ts = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                if sync is not None:
                    sync()
                ts.append(time.perf_counter() - t0)
            samples[name].append(statistics.median(ts))
    return {name: statistics.median(v) * 1e6 for name, v in samples.items()}


def _print(rows: dict, base: str):
    b = rows[base]
    for name, us in rows.items():
        print(f"  {name:<34} {us:9.1f} µs   {us - b:+8.1f} µs vs {base}")


# --------------------------------------------------------------------------- CPU, here

FRESH = r"""
import sys, time, numpy as np
t0 = time.perf_counter()
import attncc.runtime as ar
k = ar.load(sys.argv[1])
t1 = time.perf_counter()
rng = np.random.default_rng(0)
ins = [rng.standard_normal(a.shape).astype(a.np_dtype) for a in k.inputs]
out, lse = k(*ins)
assert "tvm" not in sys.modules and "attncc.compiler" not in sys.modules
print(f"{t1 - t0:.3f}")
"""


def run_cpu(args):
    import torch

    import attncc
    import attncc.runtime as ar
    from attncc.compiler import compile_variant
    from attncc.export import export
    from attncc.reference import max_error
    from attncc.runtime._kernel import aligned_empty

    import tvm

    shapes = _shapes(args.shape)
    ck = compile_variant(decode_variant(), target="cpu", shapes=shapes, dtype=args.dtype)
    tmp = tempfile.mkdtemp(prefix="attncc-export-bench-")
    export(ck, tmp)
    k = ar.load(tmp)
    kin = attncc.compile(decode_variant(), target="cpu", shapes=shapes, dtype=args.dtype)
    op = ar.torch_op(k, name="attncc_bench::decode")
    fresh = subprocess.run([sys.executable, "-c", FRESH, tmp], capture_output=True, text=True, cwd=ROOT)
    if fresh.returncode != 0:
        raise SystemExit(f"fresh-process load failed:\n{fresh.stderr}")

    rng = np.random.default_rng(0)
    inputs = ck.random_inputs(0)
    names = [a.name for a in k.inputs]
    np_in = []
    for n in names:
        a = aligned_empty(inputs[n].shape, inputs[n].dtype)
        a[...] = inputs[n]
        np_in.append(a)
    t_in = [torch.from_numpy(a) for a in np_in]
    ref_out, _ = ck(*[inputs[n] for n in names])
    got, _ = k(*t_in)
    err = max_error(got.numpy(), ref_out)

    spec = ck.spec
    dt = np.dtype(k.outputs[0].np_dtype)
    tv_in = [tvm.runtime.tensor(a) for a in np_in]
    tv_out = tvm.runtime.tensor(np.empty(k.outputs[0].shape, dt))
    tv_lse = tvm.runtime.tensor(np.empty(k.outputs[1].shape, np.float32))
    main_in = ck.built.executable["main"]
    t_out = torch.empty(k.outputs[0].shape, dtype=k.outputs[0].torch_dtype)
    t_lse = torch.empty(k.outputs[1].shape, dtype=torch.float32)
    raw_loaded = k._fn
    np_raw = [inputs[n] for n in names]
    fns = {
        "raw main, TVM tensors (in-process)": lambda: main_in(*tv_in, tv_out, tv_lse),
        "in-process numpy (CompiledKernel)": lambda: ck(*np_raw),
        "attncc.compile, torch": lambda: kin(*t_in),
        "runtime, torch": lambda: k(*t_in),
        "runtime, torch, out=": lambda: k(*t_in, out=t_out, lse=t_lse),
        "runtime, numpy": lambda: k(*np_in),
        "torch custom op": lambda: op(*t_in),
        "raw main, torch (loaded module)": lambda: raw_loaded(*t_in, t_out, t_lse),
    }
    del rng
    rows = interleaved(fns, args.rounds, args.calls)
    dims = " ".join(f"{n}={v}" for n, v in ck.env.items())
    print(f"# attncc export benchmark  {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} CPUs, TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}, "
          f"torch {torch.__version__}")
    print(f"decode: {ck.variant} {spec.dtype} {dims}  config {ck.config}")
    print(f"runtime result vs in-process: max error {err:.2g}; fresh process without TVM: load "
          f"{fresh.stdout.strip()} s, ran, 'tvm' and attncc.compiler not imported")
    print(f"median µs per call ({args.rounds} rounds x {args.calls} calls, interleaved):")
    _print(rows, "raw main, TVM tensors (in-process)")
    print(f"runtime overhead over its own raw call (torch): {rows['runtime, torch'] - rows['raw main, torch (loaded module)']:+.1f} µs")
    dispatch_overhead(k, t_in, t_out, t_lse, np_in, args)


def dispatch_overhead(k, t_in, t_out, t_lse, np_in, args, sync=None):
    """What the runtime adds per call, without the kernel's own time (and its noise): the
    same calls with the module's main replaced by tvm-ffi's C++ no-op ``testing.nop``."""
    import copy

    import tvm_ffi

    nop = tvm_ffi.get_global_func("testing.nop")
    kn = copy.copy(k)
    kn._fn = nop
    fns = {
        "tvm-ffi call, torch (nop)": lambda: nop(*t_in, t_out, t_lse),
        "runtime, torch (nop)": lambda: kn(*t_in),
        "runtime, torch, out= (nop)": lambda: kn(*t_in, out=t_out, lse=t_lse),
    }
    if np_in is not None:
        fns["runtime, numpy (nop)"] = lambda: kn(*np_in)
    import attncc.runtime as ar

    op = ar.torch_op(kn, name="attncc_bench::decode_nop")
    fns["torch custom op (nop)"] = lambda: op(*t_in)
    rows = interleaved(fns, args.rounds, args.calls * 5, sync)
    print("without the kernel (main replaced by a C++ no-op): median µs per call")
    _print(rows, "tvm-ffi call, torch (nop)")


# --------------------------------------------------------------------------- CUDA folder, there

def run_dir(args):
    import torch

    import attncc.runtime as ar
    from attncc.ir.parser import parse_function
    from attncc.reference import evaluate, max_error, random_inputs, tolerance

    t0 = time.perf_counter()
    k = ar.load(args.dir)
    t_load = time.perf_counter() - t0
    man = k.manifest
    dev = torch.device("cuda" if k.target == "cuda" else "cpu")
    func = parse_function(man["source_ir"])
    inputs = random_inputs(func, man["dims"], 0)

    def to_torch(a):
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(np.ascontiguousarray(a).view(np.uint16)).view(torch.bfloat16).to(dev)
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    t_in = [to_torch(inputs[a.name]) for a in k.inputs]
    out, lse = k(*t_in)
    ref = evaluate(func, inputs, "float64", man["dims"])
    naive = evaluate(func, inputs, "native", man["dims"])
    floor = 1e-5 if man["dtype"] == "float32" else 1e-3
    err = max_error(out.float().cpu().numpy(), ref.outputs[0])
    tol = tolerance(ref.outputs[0], naive.outputs[0], floor)
    lse_err = max_error(lse.cpu().numpy(), ref.lse[0])
    lse_tol = tolerance(ref.lse[0], naive.lse[0], floor)
    ok = err <= tol and lse_err <= lse_tol
    op = ar.torch_op(k, name="attncc_bench::decode")
    t_out = torch.empty_like(out)
    t_lse = torch.empty_like(lse)
    raw = k._fn
    fns = {
        "raw main, torch (preallocated)": lambda: raw(*t_in, t_out, t_lse),
        "runtime, torch": lambda: k(*t_in),
        "runtime, torch, out=": lambda: k(*t_in, out=t_out, lse=t_lse),
        "torch custom op": lambda: op(*t_in),
    }
    cuda = dev.type == "cuda"
    print(f"# attncc export benchmark (runtime only)  {time.strftime('%Y-%m-%d')}  "
          + (torch.cuda.get_device_name(0) if cuda else platform.machine()) + f", torch {torch.__version__}")
    print(f"kernel: {k}")
    print(f"load {t_load * 1e3:.1f} ms; verify max error {err:.3g} (tolerance {tol:.3g}), lse {lse_err:.3g} "
          f"(tolerance {lse_tol:.3g})  {'PASS' if ok else 'FAIL'}; 'tvm' imported: {'tvm' in sys.modules}")
    sync = torch.cuda.synchronize if cuda else None
    # wall time of one call followed by a synchronisation (latency of a lone call)
    rows = interleaved(fns, args.rounds, args.calls, sync)
    print(f"median µs per call, each call synchronised ({args.rounds} rounds x {args.calls} calls, interleaved):")
    _print(rows, "raw main, torch (preallocated)")
    if cuda:
        # back-to-back calls, one synchronisation: per-call cost when the launch queue is full
        loop = {}
        for name, fn in fns.items():
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            best = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                torch.cuda.synchronize()
                best.append((time.perf_counter() - t0) / args.calls)
            loop[name] = statistics.median(best) * 1e6
        print("median µs per call, back-to-back calls (one synchronisation per loop):")
        _print(loop, "raw main, torch (preallocated)")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        gpu = {}
        for name, fn in fns.items():
            start.record()
            for _ in range(args.calls):
                fn()
            end.record()
            torch.cuda.synchronize()
            gpu[name] = start.elapsed_time(end) * 1e3 / args.calls
        print("GPU time per call (CUDA events around back-to-back calls):")
        _print(gpu, "raw main, torch (preallocated)")
    dispatch_overhead(k, t_in, t_out, t_lse, None, args)


def export_cuda(args):
    from attncc.compiler import compile_variant
    from attncc.export import export

    ck = compile_variant(decode_variant(), target="cuda", shapes=_shapes(args.shape), dtype=args.dtype or "bf16",
                         target_options={"arch": args.arch})
    man = export(ck, args.export_cuda, bundle_runtime=True)
    print(f"wrote {args.export_cuda}: {ck.variant} {ck.spec.dtype} {ck.env} {man['target']['arch']} "
          f"config {ck.config}; files: {', '.join(man['files'])}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", help="decode dims, e.g. T=4096,D=64 (default: " +
                    ",".join(f"{k}={v}" for k, v in DECODE_DEFAULTS.items()) + ")")
    ap.add_argument("--dtype", help="f32 (CPU default), f16, bf16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--dir", help="time an exported folder with the runtime only (e.g. CUDA on the GPU machine)")
    ap.add_argument("--export-cuda", metavar="DIR", help="compile and export the CUDA decode kernel into DIR")
    ap.add_argument("--arch", default="sm_90a")
    args = ap.parse_args(argv)
    if args.export_cuda:
        export_cuda(args)
    elif args.dir:
        run_dir(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
