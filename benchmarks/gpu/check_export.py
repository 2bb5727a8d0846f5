"""On the GPU machine (no TVM): exported CUDA kernels through attncc.runtime only.

    python3 benchmarks/gpu/check_export.py DIR [DIR ...]    (folders from attncc export --target cuda)

Verifies each against the float64 reference (two seeds), checks that CPU tensors are
refused, and for a folder whose variant is sliding_window also the torch custom op under
torch.compile (no graph breaks) and JAX GPU arrays through DLPack."""
import os, sys, time, json
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np
import torch
import attncc.runtime as ar
from attncc.ir.parser import parse_function
from attncc.reference import evaluate, max_error, random_inputs, tolerance
assert "tvm" not in sys.modules, "attncc.runtime imported tvm's compiler"
print("device", torch.cuda.get_device_name(0), "torch", torch.__version__)
ok = True
for d in sys.argv[1:]:
    k = ar.load(d)
    man = k.manifest
    func = parse_function(man["source_ir"])
    for seed in (0, 1):
        inputs = random_inputs(func, man["dims"], seed)
        args = [torch.from_numpy(np.ascontiguousarray(inputs[a.name]).view(np.uint16)).view(torch.bfloat16).cuda()
                if str(inputs[a.name].dtype) == "bfloat16" else torch.from_numpy(inputs[a.name]).cuda() for a in k.inputs]
        out, lse = k(*args)
        assert out.is_cuda and lse.is_cuda and out.dtype == args[0].dtype
        ref = evaluate(func, inputs, "float64", man["dims"])
        naive = evaluate(func, inputs, "native", man["dims"])
        e = max_error(out.float().cpu().numpy(), ref.outputs[0]); t = tolerance(ref.outputs[0], naive.outputs[0], 1e-3)
        el = max_error(lse.cpu().numpy(), ref.lse[0]); tl = tolerance(ref.lse[0], naive.lse[0], 1e-3)
        good = e <= t and el <= tl
        ok &= good
        print(f"{'PASS' if good else 'FAIL'} {d} seed {seed} dims {man['dims']}: out err {e:.3g} (tol {t:.3g}), lse err {el:.3g} (tol {tl:.3g})")
    try:
        k(*[a.cpu() for a in args]); print("FAIL no error for cpu tensors"); ok = False
    except ar.ArgumentError as exc:
        print("PASS cpu tensors refused:", str(exc)[:160])
    if man.get("variant") == "sliding_window" or d.rstrip("/").endswith("sw"):
        op = ar.torch_op(k, name="mylib::sliding_window")
        def f(q, kk, v):
            o, l = op(q, kk, v)
            return o * 2, l
        expl = torch._dynamo.explain(f)(*args)
        print("dynamo explain: graphs", expl.graph_count, "graph breaks", expl.graph_break_count)
        ok &= expl.graph_break_count == 0
        cf = torch.compile(f, fullgraph=True)
        o2, l2 = cf(*args)
        same = torch.equal(o2, out * 2) and torch.equal(l2, lse)
        print(("PASS" if same else "FAIL"), "torch.compile(fullgraph=True) of the custom op equals the direct call")
        ok &= same
        try:
            import jax, jax.numpy as jnp
            gpus = [x for x in jax.devices() if x.platform == "gpu"]
            if gpus:
                ja = [jax.dlpack.from_dlpack(a) for a in args]
                jo, jl = k(*ja)
                same = np.array_equal(np.asarray(jo.astype(jnp.float32)), out.float().cpu().numpy())
                print(("PASS" if same else "FAIL"), "JAX GPU arrays through DLPack:", type(jo).__name__, jo.devices())
                ok &= same
            else:
                print("jax: no GPU device", jax.devices())
        except Exception as exc:
            print("JAX GPU check failed:", type(exc).__name__, str(exc)[:300]); ok = False
print("ALL PASS" if ok else "SOME FAILED")
sys.exit(0 if ok else 1)
