"""Export (attncc export / attncc.export) and the runtime (attncc.runtime) that runs the
exported folder without the compiler.

* the folder: kernel.so, manifest.json (inputs with symbolic dims, outputs with lse,
  target, config, versions, fingerprint, IR text), tile_map.npy for compile-time block
  tables; CUDA: the source and an nvcc fatbin (skipped without nvcc);
* a fresh process that imports attncc.runtime only runs every export with numpy arrays,
  torch CPU tensors and JAX arrays (when jax is installed; it is not in the test extra),
  checks the results against the float64 reference (DESIGN.md's tolerance) and proves that
  neither ``tvm`` nor ``attncc.compiler`` (nor libtvm_compiler.so) was loaded;
* ``attncc.compile`` gives the same callable in process;
* the torch custom op: torch.compile without graph breaks (torch._dynamo.explain),
  torch.export as one node, no autograd (a clear error);
* mismatched count / framework / dtype / shape / device / layout: one ArgumentError each,
  before launch; load() refuses damaged folders and foreign CPUs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

import attncc.runtime as ar
from attncc.errors import AttnccError

torch = pytest.importorskip("torch")

EXAMPLES = REPO / "examples"

# name -> (example, attncc export flags); small shapes: each export is one TVM build (< 1 s)
EXPORTS = {
    "sliding_window": ("sliding_window.py", ["--shape", "H=2,S=320"]),             # band, ragged S
    "document_mask": ("document_mask.py", ["--shape", "H=2,S=256"]),              # runtime block map
    "prefix_lm": ("prefix_lm.py", ["--shape", "H=2,S=256", "--dtype", "bf16"]),    # static table, bf16
    "causal_gqa_fp8": ("causal_gqa.py", ["--shape", "Hq=4,Hkv=2,S=128", "--quantize", "fp8"]),  # prologue
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("tvm")       # exporting needs the compiler; loading does not
    from attncc.cli import main

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, (example, flags) in EXPORTS.items():
        d = root / name
        assert main(["export", str(EXAMPLES / example), "-o", str(d)] + flags) == 0
        out[name] = d
    return out


def _inputs(kernel, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for a in kernel.inputs:
        if a.np_dtype.kind == "f":
            out.append(rng.standard_normal(a.shape, dtype=np.float32).astype(a.np_dtype))
        else:                                             # document ids: sorted runs
            out.append(np.sort(rng.integers(0, 4, a.shape)).astype(a.np_dtype))
    return out


def _to_torch(a):
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


# --------------------------------------------------------------------------- the folder


def test_folder_and_manifest(exported):
    from attncc.compiler import compile_variant, fingerprint

    d = exported["prefix_lm"]
    man = json.loads((d / "manifest.json").read_text())
    assert man["format"] == "attncc-export/1" and man["variant"] == "prefix_lm"
    assert (d / "kernel.so").is_file() and (d / "tile_map.npy").is_file()
    assert man["block_map"]["mode"] == "static"
    q = man["inputs"][0]
    assert q["name"] == "q" and q["dtype"] == "bfloat16" and q["shape"] == [1, 2, 256, 64]
    assert q["dims"] == ["B", "H", "S", "D"] and all(q["symbolic"])
    assert [o["name"] for o in man["outputs"]] == ["out", "lse"]
    assert man["outputs"][1]["dtype"] == "float32" and man["outputs"][1]["shape"] == [1, 2, 256]
    assert [a["role"] for a in man["kernel_args"]] == ["input"] * 3 + ["output"] * 2 + ["table"]
    assert man["target"]["kind"] == "cpu" and man["target"]["data_alignment"] == 64
    assert man["config"]["class"] == "CpuConfig" and man["config"]["block_q"] > 0
    assert set(man["versions"]) >= {"attncc", "tvm", "tvm_ffi"}
    assert "attn.flash" in man["flash_ir"] and "mask" in man["flash_ir"]
    k = compile_variant(str(EXAMPLES / "prefix_lm.py"), shapes={"H": 2, "S": 256}, dtype="bf16", build=False)
    assert man["fingerprint"] == fingerprint(k.source_ir)
    tiles = np.load(d / "tile_map.npy")
    assert tiles.dtype == np.int32 and set(np.unique(tiles)) <= {0, 1, 2} and (tiles == 0).any()

    doc = json.loads((exported["document_mask"] / "manifest.json").read_text())
    assert doc["block_map"]["mode"] == "runtime" and doc["block_map"]["captures"] == ["doc"]
    assert doc["inputs"][3] == {"name": "doc", "dtype": "int32", "shape": [256], "dims": ["S"], "symbolic": [True]}
    assert not (exported["document_mask"] / "tile_map.npy").exists()
    fp8 = json.loads((exported["causal_gqa_fp8"] / "manifest.json").read_text())
    assert [p["input"] for p in fp8["prologue"]] == ["q", "k"]
    assert [a["role"] for a in fp8["kernel_args"]][5:] == ["scale", "scale"]
    assert fp8["kernel_args"][0]["dtype"] == "float8_e4m3fn" and fp8["inputs"][0]["dtype"] == "float32"


# --------------------------------------------------------------------------- a process without the compiler

FRESH = r"""
import json, sys
import numpy as np
import attncc.runtime as ar

results = {}
inputs = {}
kernels = {}
rng = np.random.default_rng(0)
for name, path in json.loads(sys.argv[1]).items():
    k = kernels[name] = ar.load(path)
    ins = []
    for a in k.inputs:
        if a.np_dtype.kind == "f":
            ins.append(rng.standard_normal(a.shape, dtype=np.float32).astype(a.np_dtype))
        else:
            ins.append(np.sort(rng.integers(0, 4, a.shape)).astype(a.np_dtype))
    inputs[name] = ins
    outs = {}
    outs["numpy"] = k(*ins)
    import torch
    def to_torch(a):
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(np.ascontiguousarray(a).view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(a)
    t_out, t_lse = k(*[to_torch(a) for a in ins])
    assert isinstance(t_out, torch.Tensor) and isinstance(t_lse, torch.Tensor)
    outs["torch"] = (t_out.float().numpy(), t_lse.numpy())
    try:
        import jax
    except ImportError:
        jax = None
    if jax is not None:
        # CPU arrays: on a machine with a GPU, JAX's default device is the GPU, and a CPU
        # kernel refuses arrays there (one clear error; jax_function's callback copies instead)
        j_in = [jax.device_put(a, jax.devices("cpu")[0]) for a in ins]
        j_out, j_lse = k(*j_in)
        assert isinstance(j_out, jax.Array), type(j_out)
        outs["jax"] = (np.asarray(j_out), np.asarray(j_lse))
        f = jax.jit(ar.jax_function(k))
        outs["jax.jit"] = tuple(np.asarray(x) for x in f(*j_in))
    results[name] = outs

# the property: running kernels imported neither TVM's compiler nor attncc's
compiler_modules = sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm.") or m == "attncc.compiler")
maps = open("/proc/self/maps").read() if sys.platform.startswith("linux") else ""
report = {"compiler_modules": compiler_modules, "libtvm_compiler": "libtvm_compiler" in maps,
          "runtime_libs": sorted(ar._native.loaded_libraries())}

# then check against the float64 reference (attncc.reference: numpy, no TVM either)
from attncc.ir.parser import parse_function
from attncc.reference import evaluate, max_error, tolerance
checks = {}
for name, k in kernels.items():
    man = k.manifest
    func = parse_function(man["ir"] if man["prologue"] else man["source_ir"])
    feed = {a.name: x for a, x in zip(k.inputs, inputs[name])}
    ref = evaluate(func, feed, "float64", man["dims"])
    naive = evaluate(func, feed, "native", man["dims"])
    floor = 1e-5 if man["dtype"] == "float32" else 1e-3
    ref_lse = ref.lse[0]
    tol = tolerance(ref.outputs[0], naive.outputs[0], floor)
    lse_tol = tolerance(ref_lse, naive.lse[0], floor)
    for fw, (out, lse) in results[name].items():
        checks[f"{name}/{fw}"] = [max_error(np.asarray(out, np.float32), ref.outputs[0]), tol,
                                  max_error(lse, ref_lse), lse_tol]
report["checks"] = checks
report["jax"] = sys.modules.get("jax") is not None
print(json.dumps(report))
"""


def test_fresh_process_runs_exports_without_the_compiler(exported):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", FRESH, json.dumps({k: str(v) for k, v in exported.items()})],
                       capture_output=True, text=True, cwd=str(REPO), env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["compiler_modules"] == [], report["compiler_modules"]
    assert not report["libtvm_compiler"]
    assert report["runtime_libs"] == ["libtvm_runtime.so"]
    fws = {"numpy", "torch"} | ({"jax", "jax.jit"} if report["jax"] else set())
    assert set(report["checks"]) == {f"{n}/{fw}" for n in EXPORTS for fw in fws}
    for key, (err, tol, lse_err, lse_tol) in report["checks"].items():
        assert err <= tol and lse_err <= lse_tol, (key, err, tol, lse_err, lse_tol)


def test_frameworks_agree_and_outputs_follow_the_input(exported):
    k = ar.load(exported["document_mask"])
    ins = _inputs(k, seed=3)
    out, lse = k(*ins)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (1, 2, 256, 64)
    assert lse.shape == (1, 2, 256)
    t_out, t_lse = k(*[_to_torch(a) for a in ins])
    assert t_out.dtype == torch.float32 and t_out.device.type == "cpu"
    np.testing.assert_array_equal(t_out.numpy(), out)
    np.testing.assert_array_equal(t_lse.numpy(), lse)
    # another document layout: another block map (cached per distinct data)
    ins2 = list(ins)
    ins2[3] = np.arange(256, dtype=np.int32) // 32
    out2, _ = k(*ins2)
    assert not np.array_equal(out2, out)
    assert (k.block_map_for(ins2[3]) == 0).sum() > (k.block_map_for(ins[3]) == 0).sum()
    # out= / lse=: written in place and returned
    o = torch.empty_like(t_out)
    lo = torch.empty_like(t_lse)
    r = k(*[_to_torch(a) for a in ins], out=o, lse=lo)
    assert r[0] is o and r[1] is lo
    np.testing.assert_array_equal(o.numpy(), out)


def test_prepare_launches_the_kernel_alone_into_its_outputs(exported):
    """Kernel.prepare: the checks, block map and outputs once; launch() runs only the kernel
    (what the split tuning flow times) and gives what a call gives."""
    k = ar.load(exported["document_mask"])
    ins = _inputs(k, seed=5)
    ref_out, ref_lse = k(*ins)
    t_ins = [_to_torch(a) for a in ins]
    launch, out, lse = k.prepare(*t_ins)
    assert isinstance(out, torch.Tensor) and not np.array_equal(out.numpy(), ref_out)   # nothing ran yet
    launch()
    np.testing.assert_array_equal(out.numpy(), ref_out)
    np.testing.assert_array_equal(lse.numpy(), ref_lse)
    out.fill_(float("nan"))
    launch()
    np.testing.assert_array_equal(out.numpy(), ref_out)
    with pytest.raises(ar.ArgumentError, match="takes 4 input"):
        k.prepare(*t_ins[:3])
    n_launch, n_out, _ = k.prepare(*ins)                 # numpy in, numpy out
    n_launch()
    np.testing.assert_array_equal(n_out, ref_out)


def test_unaligned_and_readonly_numpy_inputs(exported):
    """The CPU kernel needs 64-byte aligned data (its vector loads fault otherwise):
    misaligned inputs are copied, read-only ones aliased; results do not change."""
    k = ar.load(exported["sliding_window"])
    ins = _inputs(k, seed=5)
    want, want_lse = k(*ins)
    moved = []
    for a in ins:
        buf = np.empty(a.size + 1, a.dtype)[1:]              # 4 bytes past an aligned address
        buf[:] = a.ravel()
        moved.append(buf.reshape(a.shape))
    moved[1].flags.writeable = False
    got, got_lse = k(*moved)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_lse, want_lse)
    t = torch.from_numpy(np.concatenate([np.zeros(1, np.float32), ins[0].ravel()]))[1:].view(ins[0].shape)
    got_t, _ = k(t, _to_torch(ins[1]), _to_torch(ins[2]))
    np.testing.assert_array_equal(got_t.numpy(), want)


def test_attncc_compile_in_process():
    pytest.importorskip("tvm")
    import attncc
    from attncc.compiler import compile_variant

    k = attncc.compile(str(EXAMPLES / "causal_gqa.py"), target="cpu", shapes={"Hq": 4, "Hkv": 2, "S": 96})
    assert isinstance(k, ar.Kernel)
    ck = compile_variant(str(EXAMPLES / "causal_gqa.py"), target="cpu", shapes={"Hq": 4, "Hkv": 2, "S": 96})
    ins = _inputs(k, seed=1)
    want, want_lse = ck(*ins)
    out, lse = k(*[_to_torch(a) for a in ins])
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(lse.numpy(), want_lse, rtol=0, atol=1e-6)
    out_np, _ = k(*ins)
    np.testing.assert_allclose(out_np, want, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- torch custom op


def test_torch_op_is_one_opaque_node(exported):
    k = ar.load(exported["sliding_window"])
    op = ar.torch_op(k, name="attncc_test::sliding_window")
    assert ar.torch_op(k, name="attncc_test::sliding_window") is op
    q, kk, v = (_to_torch(a) for a in _inputs(k, seed=2))
    want, want_lse = k(q, kk, v)

    def f(q, kk, v):
        out, lse = op(q * 2.0, kk, v)
        return out.relu() + 1.0, lse

    explain = torch._dynamo.explain(f)(q, kk, v)
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = compiled(q, kk, v)
    ref = f(q, kk, v)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=0)

    class M(torch.nn.Module):
        def forward(self, q, kk, v):
            return op(q, kk, v)

    ep = torch.export.export(M(), (q, kk, v))
    calls = [n.target for n in ep.graph.nodes if n.op == "call_function" and "attncc_test" in str(n.target)]
    assert len(calls) == 1
    out, lse = ep.module()(q, kk, v)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_torch_op_is_not_differentiable(exported):
    k = ar.load(exported["sliding_window"])
    op = ar.torch_op(k, name="attncc_test::sliding_window_grad")
    q, kk, v = (_to_torch(a) for a in _inputs(k))
    out, _ = op(q.clone().requires_grad_(), kk, v)
    with pytest.raises(AttnccError, match="not differentiable"):
        out.sum().backward()
    with pytest.raises(AttnccError, match="already registered"):
        ar.torch_op(ar.load(exported["prefix_lm"]), name="attncc_test::sliding_window_grad")


# --------------------------------------------------------------------------- mismatches: one clear error


def _bad_calls(k):
    q, kk, v = (_to_torch(a) for a in _inputs(k))
    qn = _inputs(k)[0]
    return {
        "count": ((q, kk), "takes 3 input"),
        "framework": (([[1.0]], kk, v), "not an array that supports DLPack"),
        "dtype": ((q.double(), kk, v), "dtype float64, the kernel was built for float32"),
        "dtype numpy": ((qn.astype(np.float16), kk, v), "dtype float16"),
        "shape": ((q[:, :, :100].contiguous(), kk, v), r"shape \(1, 2, 100, 64\), the kernel was built for"),
        "device": ((torch.empty(q.shape, device="meta"), kk, v), "is on meta, the kernel runs on cpu"),
        "layout": ((q.transpose(2, 3).contiguous().transpose(2, 3), kk, v), "not contiguous"),
        "out=": ((q, kk, v, {"out": torch.empty(1)}), "give both out= and lse="),
        "out= shape": ((q, kk, v, {"out": torch.empty(1), "lse": torch.empty(1)}), "output out has shape"),
    }


@pytest.mark.parametrize("case", ["count", "framework", "dtype", "dtype numpy", "shape", "device", "layout",
                                  "out=", "out= shape"])
def test_mismatch_is_one_clear_error(exported, case):
    k = ar.load(exported["sliding_window"])
    args, message = _bad_calls(k)[case]
    kwargs = args[-1] if isinstance(args[-1], dict) else {}
    args = args[:-1] if kwargs else args
    with pytest.raises(ar.ArgumentError, match=message) as info:
        k(*args, **kwargs)
    assert "sliding_window" in str(info.value)
    assert "\n" not in str(info.value)


def test_load_checks_the_folder_and_the_machine(exported, tmp_path):
    with pytest.raises(ar.LoadError, match="no manifest.json"):
        ar.load(tmp_path)
    d = tmp_path / "copy"
    shutil.copytree(exported["sliding_window"], d)
    man = json.loads((d / "manifest.json").read_text())
    man["target"]["cpu_features"] = man["target"]["cpu_features"] + ["avx1024"]
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ar.LoadError, match="uses avx1024, which this CPU lacks"):
        ar.load(d)
    man["target"]["cpu_features"].pop()
    man["target"]["machine"] = "riscv64"
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ar.LoadError, match="built for riscv64"):
        ar.load(d)
    shutil.copyfile(exported["prefix_lm"] / "kernel.so", d / "kernel.so")
    with pytest.raises(ar.LoadError, match="sha256"):
        ar.load(d)


def test_cli_export_reports_user_errors(tmp_path, capsys):
    pytest.importorskip("tvm")
    from attncc.cli import main

    assert main(["export", str(EXAMPLES / "sdpa.py"), "-o", str(tmp_path / "x"), "--shape", "Q=3"]) == 2
    assert "Q" in capsys.readouterr().err


# --------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_export_has_source_and_fatbin(tmp_path):
    pytest.importorskip("tvm")
    from attncc.cli import main

    d = tmp_path / "cu"
    assert main(["export", str(EXAMPLES / "sliding_window.py"), "--target", "cuda", "--arch", "sm_90a",
                 "--dtype", "f16", "--shape", "H=1,S=128", "-o", str(d)]) == 0
    man = json.loads((d / "manifest.json").read_text())
    assert man["target"]["kind"] == "cuda" and man["target"]["arch"] == "sm_90a"
    assert man["target"]["runtime_libs"][-1] == "libtvm_runtime_cuda.so"
    src = (d / "kernel.cu").read_text()
    assert "__global__" in src
    import hashlib

    assert hashlib.sha256(src.encode()).hexdigest() == man["target"]["source_sha256"]
    assert (d / "kernel.fatbin").stat().st_size > 1000
    if not _has_gpu():
        with pytest.raises(ar.LoadError):            # no driver / no device: a clear refusal
            ar.load(d)


def _has_gpu() -> bool:
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu() or not os.environ.get("ATTNCC_EXPORT_CUDA_DIR"),
                    reason="needs a CUDA device and ATTNCC_EXPORT_CUDA_DIR (a folder from "
                           "benchmarks/export.py --export-cuda)")
def test_cuda_export_runs_with_torch_cuda_tensors():
    """On the GPU machine (no TVM): the exported CUDA module with the runtime pieces only."""
    from attncc.ir.parser import parse_function
    from attncc.reference import evaluate, max_error, random_inputs, tolerance

    k = ar.load(os.environ["ATTNCC_EXPORT_CUDA_DIR"])
    man = k.manifest
    func = parse_function(man["source_ir"])
    inputs = random_inputs(func, man["dims"], 0)
    out, lse = k(*[_to_torch(inputs[a.name]).cuda() for a in k.inputs])
    assert out.is_cuda and lse.is_cuda
    ref = evaluate(func, inputs, "float64", man["dims"])
    naive = evaluate(func, inputs, "native", man["dims"])
    assert max_error(out.float().cpu().numpy(), ref.outputs[0]) <= tolerance(ref.outputs[0], naive.outputs[0], 1e-3)
    assert max_error(lse.cpu().numpy(), ref.lse[0]) <= tolerance(ref.lse[0], naive.lse[0], 1e-3)
    with pytest.raises(ar.ArgumentError, match="is on cpu"):
        k(*[_to_torch(inputs[a.name]) for a in k.inputs])


# --------------------------------------------------------------------------- JAX


def test_jax_jit_calls_the_kernel(exported):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    k = ar.load(exported["sliding_window"])
    ins = _inputs(k, seed=4)
    want, want_lse = k(*ins)
    kernel = ar.jax_function(k)

    @jax.jit
    def f(q, kk, v):
        out, lse = kernel(q, kk, v)
        return out * 2.0, lse

    out, lse = f(*[jnp.asarray(a) for a in ins])
    np.testing.assert_allclose(np.asarray(out), want * 2.0, rtol=0, atol=0)
    np.testing.assert_array_equal(np.asarray(lse), want_lse)
    with pytest.raises(ar.ArgumentError, match="float16"):
        jax.jit(kernel)(*[jnp.asarray(a, jnp.float16) for a in ins])


def test_copy_from_host_fills_a_runtime_tensor():
    """The runtime's host-to-device copy (GPU tile maps of runtime block masks, numpy inputs of
    CUDA kernels) on a CPU tensor: tvm_ffi takes the address as a ctypes pointer (a plain int
    was refused: found on the H200 by benchmarks/gpu/check_small_export.py)."""
    pytest.importorskip("tvm")
    import numpy as np

    from attncc.runtime import _native

    t = _native.empty((3, 5), "int32")
    a = np.arange(15, dtype=np.int32).reshape(3, 5)
    _native.copy_from_host(t, a)
    np.testing.assert_array_equal(np.from_dlpack(t), a)
