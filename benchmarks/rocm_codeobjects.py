"""What the rocm target compiles, per architecture, from the code objects' own metadata.

No AMD GPU exists where this runs, so there are no timings: for every example (at its
default shape, bf16; f32 variants trace in bf16) and architecture it builds the code object
and prints its size, LDS (group_segment_fixed_size), VGPR / AGPR / SGPR counts, spills and
the number of matrix instructions in the assembly; whether the key loop walks a band's range or
a tile-map list (table mode); and a few quantized kernels (8-bit q/k/v widened to 16-bit).

    python benchmarks/rocm_codeobjects.py [--arch gfx90a,gfx942,gfx1100] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from attncc.compiler import compile_variant  # noqa: E402
from attncc.targets import rocm  # noqa: E402


# quantized kernels (the quantize pass) added to the examples at their default shapes
QUANTIZED = [("causal_gqa.py", {"dtype": "int8", "pv": False, "granularity": "head"}),
             ("causal_gqa.py", {"dtype": "fp8", "pv": True, "granularity": "head"}),
             ("causal_gqa.py", {"dtype": "fp8_e5m2", "pv": True, "granularity": "block"}),
             ("document_mask.py", {"dtype": "fp8", "pv": True, "granularity": "head"})]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="gfx90a,gfx942,gfx1100")
    p.add_argument("--dtype", default="bf16")
    args = p.parse_args()
    t0 = time.time()
    print(f"# attncc rocm code objects  {datetime.date.today()}  dtype {args.dtype}; default shapes and configs; "
          f"ld.lld {os.path.basename(rocm.toolchain().lld)}")
    print("mode: band = key-block range walk, table = tile-map list walk (masks that are no band), - = no mask; "
          "quantized rows: 8-bit q/k (/v with pv) widened to 16-bit MFMA/WMMA")
    print("arch     example             quantize            mode   shape                     config        bytes    LDS  VGPR AGPR SGPR spill  matrix instr")
    runs = [(path, None) for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))]
    runs += [(os.path.join(ROOT, "examples", name), quant) for name, quant in QUANTIZED]
    for arch in args.arch.split(","):
        for path, quant in runs:
            k = compile_variant(path, target="rocm", dtype=args.dtype, target_options={"arch": arch},
                                tuning_db=False, quantize=quant)
            meta = rocm.kernel_metadata(k.built)
            asm = rocm.assembly(k.built)
            ops = re.findall(r"^\s*(v_(?:mfma|wmma)\w+)", asm, re.M)
            shape = ",".join(f"{n}={v}" for n, v in k.env.items())
            cfg = f"{k.config.block_q}x{k.config.block_k}/{k.config.num_waves}w" + ("" if k.config.q_in_registers else " qmem")
            mode = "table" if rocm.use_block_table(k.spec) else ("band" if k.spec.mask_mod is not None else "-")
            q = "-" if not quant else f"{quant['dtype']}/{quant['granularity']}" + ("+pv" if quant["pv"] else "")
            print(f"{arch:8} {os.path.basename(path)[:-3]:19} {q:19} {mode:6} {shape:25} {cfg:12} {len(k.built.hsaco):6} "
                  f"{meta['group_segment_fixed_size']:6} {meta['vgpr_count']:5} {meta.get('agpr_count', '-'):>4} "
                  f"{meta['sgpr_count']:4} {meta['vgpr_spill_count'] + meta['sgpr_spill_count']:5}  "
                  f"{len(ops)} x {sorted(set(ops))[0] if ops else '-'}")
    print(f"# {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
