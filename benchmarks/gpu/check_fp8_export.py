"""On the GPU machine (no TVM): an exported CUDA kernel with fp8 Q·Kᵀ and P·V (or, given
QUANT, int8 / fp8 Q·Kᵀ with or without P·V), run through
attncc.runtime with torch tensors (the runtime quantizes q, k, v on the GPU and lays V out as
the kernel reads it: transposed, keys permuted, attncc.runtime._layouts), checked against the
quantized reference by compiler.verify's rule (the same bounds as benchmarks/gpu/attention.py's
fp8 verification).  The host side (spec, reference) is rebuilt with compile_variant(build=False).

    python3 benchmarks/gpu/check_fp8_export.py EXPORT_DIR VARIANT_FILE VARIANT_NAME B=2,S=700 GRANULARITY CONFIG [QUANT]

(the arguments of the `attncc export` that made EXPORT_DIR; CONFIG like block_q=128,block_k=128,...;
QUANT: fp8+pv (the default), fp8, fp8_e5m2+pv, int8, ...)
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


import attncc.runtime as ar  # noqa: E402
from _runtime_check import run_inputs_of  # noqa: E402  (this folder)

assert "tvm" not in sys.modules, "attncc.runtime imported tvm's compiler"
from attncc.compiler import compile_variant, verify  # noqa: E402

d, path, name, shape, gran, config = sys.argv[1:7]
qdt, _, pv = (sys.argv[7] if len(sys.argv) > 7 else "fp8+pv").partition("+")
shapes = {a: int(b) for a, b in (x.split("=") for x in shape.split(","))}
cfg = {a: (b if b in ("wgmma", "sync") else int(b)) for a, b in (x.split("=") for x in config.split(","))}
k = ar.load(d)
v_arg = [a for a in k.kernel_args if a.name == "v"][0]
print("exported v argument:", v_arg.dtype, list(v_arg.shape), v_arg.source)
hk = compile_variant(os.path.join(ROOT, path), target="cuda", dtype="bf16", variant_name=name, shapes=shapes,
                     config=cfg, build=False, tuning_db=False, target_options={"arch": "sm_90a"},
                     quantize={"dtype": qdt, "granularity": gran, "pv": pv == "pv"})


hk.run_inputs = run_inputs_of(k)
ok = True
for seed in (0, 1):
    rep = verify(hk, inputs=hk.random_inputs(seed))
    ok &= bool(rep.passed)
    print(f"{'PASS' if rep.passed else 'FAIL'} {d} seed {seed}: out err {rep.max_error:.3g} (tol {rep.tolerance:.3g}), "
          f"lse err {rep.lse_error:.3g} (tol {rep.lse_tolerance:.3g}); vs the unquantized float64 reference "
          f"{rep.unquantized_error:.3g}")
print("ALL PASS" if ok else "SOME FAILED")
sys.exit(0 if ok else 1)
