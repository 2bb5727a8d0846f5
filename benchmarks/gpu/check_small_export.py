"""On the GPU machine (no TVM): an exported CUDA kernel of a document mask (a block mask computed
per call from the document ids) whose config has ``small_below``: attncc.runtime must run the
64 x 32 kernel (``main_small``) on calls whose tile map is that sparse and the 128 x 128 one
(``main``) on the others.  Each call is checked against the float64 reference by
compiler.verify's rule; the host side (spec, reference) is rebuilt with
compile_variant(build=False).

    python3 benchmarks/gpu/check_small_export.py EXPORT_DIR VARIANT_FILE VARIANT_NAME S=4096,H=4

(the arguments of the `attncc export ... --target cuda --arch sm_90a` that made EXPORT_DIR)
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import attncc.runtime as ar  # noqa: E402
from _runtime_check import run_inputs_of  # noqa: E402  (this folder)

assert "tvm" not in sys.modules, "attncc.runtime imported tvm's compiler"
from attncc.compiler import compile_variant, verify  # noqa: E402

d, path, name, shape = sys.argv[1:5]
shapes = {a: int(b) for a, b in (x.split("=") for x in shape.split(","))}
k = ar.load(d)
small = k.block_map.get("small")
print("block map:", {x: k.block_map[x] for x in ("mode", "block_q", "block_k")}, "small:", small)
assert small, "the export has no small-tile kernel"
hk = compile_variant(os.path.join(ROOT, path), target="cuda", dtype="bf16", variant_name=name, shapes=shapes,
                     build=False, tuning_db=False, target_options={"arch": "sm_90a"})


hk.run_inputs = run_inputs_of(k)
S = shapes["S"]
cap = hk.spec.captures[0][0]
ok = True
ran = set()
i = np.arange(S)
cases = (("2 documents", i // (S // 2)),
         ("documents of 200 tokens", i // 200),
         ("random lengths, ~40 tokens", np.sort(np.random.default_rng(3).integers(0, S // 40, S))),
         ("64-token documents", i // 64),                               # 128 x 128 map: the diagonal
         ("40-token documents in 128 blocks", (i // 128) * 4 + (i % 128) // 40),   # partial 64 x 32 tiles
         # ids that recur (block_map.row_limits: those query blocks flagged off, masked by the ids)
         ("2 ids taking turns every 300 tokens", i // 300 % 2),
         ("64-token documents, the last id 0 again", np.where(i >= S - 64, 0, i // 64)))
for seed, (label, ids) in enumerate(cases):
    inputs = hk.random_inputs(seed)
    inputs[cap] = ids.astype(inputs[cap].dtype)
    tiles = np.asarray(hk.spec.runtime_tile_map([inputs[cap]], k.block_map["block_q"], k.block_map["block_k"]))
    density = float(np.mean(tiles != 0))
    want = small["function"] if density <= small["below"] else "main"
    rep = verify(hk, inputs=inputs)
    entry = next(reversed(k._runtime_tables.values()))          # the call's cached choice
    got = entry["function"] or "main"
    ran.add(got)
    limits = k.block_map.get("row_limits")
    flags = ""
    if limits and (got == "main" or small.get("row_limits")):
        bq = k.block_map["block_q"] if got == "main" else small["block_q"]
        col = entry["tiles"].shape[1] - (1 + 2 * bq)          # the flag column (runtime._layouts.with_row_limits)
        flags = f" limits flagged {int(entry['tiles'][:, col].sum())}/{entry['tiles'].shape[0]} blocks"
    good = bool(rep.passed) and got == want
    ok &= good
    print(f"{'PASS' if good else 'FAIL'} {label:<34} density {density:.3f} -> {got:<10} (expected {want}): "
          f"out err {rep.max_error:.3g} (tol {rep.tolerance:.3g}), lse err {rep.lse_error:.3g} "
          f"(tol {rep.lse_tolerance:.3g}){flags}")
ok &= ran == {"main", small["function"]}
print("ALL PASS" if ok else "SOME FAILED")
sys.exit(0 if ok else 1)
