"""``attncc compile``, ``attncc export`` and ``attncc opt``.  All logic lives in the library
(``attncc.compiler``, ``attncc.passes``); this file parses arguments and prints.

Exit codes: 0 success, 1 verification failed, 2 a user error (one line, no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys

from attncc.errors import AttnccError


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _quant_options(args):
    if not args.quantize:
        if args.quantize_pv or args.quantize_granularity:
            raise AttnccError("--quantize-pv and --quantize-granularity need --quantize fp8|fp8_e5m2|int8")
        return None
    opts = {"dtype": args.quantize, "pv": args.quantize_pv}
    if args.quantize_granularity:
        g = args.quantize_granularity
        if g.startswith("block"):
            opts["granularity"] = "block"
            if ":" in g:
                opts["block"] = g.split(":", 1)[1]
        else:
            opts["granularity"] = g
    return opts


def _target_options(args):
    """Target options from the command line: --arch (GPU targets), --systolic-config."""
    opts = {}
    if getattr(args, "arch", None):
        opts["arch"] = args.arch
    if getattr(args, "systolic_config", None):
        if args.target != "systolic":
            raise AttnccError(f"--systolic-config is an option of --target systolic, not {args.target}")
        opts["systolic_config"] = args.systolic_config
    return opts or None


def cmd_compile(args) -> int:
    from attncc import compiler
    from attncc.ir.printer import print_ir

    shapes = compiler.parse_assignments(args.shape, "--shape")
    config = compiler.parse_assignments(args.config, "--config")
    from attncc.schedules.db import plain_warnings
    plain_warnings()                      # a damaged tuning record: one warning line, not a traceback
    emit = args.emit
    k = compiler.compile_variant(
        args.file, target=args.target, shapes=shapes, dtype=args.dtype, passes=args.passes, config=config or None,
        print_after_all=sys.stdout if args.print_after_all else None, variant_name=args.variant,
        target_options=_target_options(args),
        quantize=_quant_options(args), tuning_db=args.db)
    if args.report and not hasattr(k.target, "format_report"):
        raise AttnccError(f"--report prints the cycle report of a simulated target; {k.target_name} has none")
    if emit == "ir":
        sys.stdout.write(print_ir(k.ir))
        if k.tile_summary():
            dims = ", ".join(f"{n}={v}" for n, v in k.env.items())
            sys.stdout.write(f"// prune-sparsity at {dims}: {k.tile_summary()}\n")
        return 0
    if emit == "tir":
        sys.stdout.write(k.tir())
        return 0
    if emit == "source":
        sys.stdout.write(k.source())
        return 0
    if emit == "asm":
        sys.stdout.write(k.asm())
        return 0
    s = k.spec
    dims = " ".join(f"{n}={v}" for n, v in k.env.items())
    print(f"variant    {k.variant}  ({args.file}; {s.dtype}; {dims})")
    print(f"passes     {' -> '.join(k.applied)}")
    flash = print_ir(k.flash_op).split("\n")
    print("attention  " + flash[0])
    for line in flash[1:]:
        print("           " + line)
    kb = s.key_bounds
    if kb.lower_offset is not None or kb.upper_offset is not None:
        lo = "" if kb.lower_offset is None else f"q_idx{kb.lower_offset:+d} <= "
        hi = "" if kb.upper_offset is None else f" <= q_idx{kb.upper_offset:+d}"
        dens = k.density()
        print(f"key range  {lo}kv_idx{hi}  ({'exact band: full blocks skip the mask' if kb.exact else 'bound only'};"
              f" density {'data-dependent' if dens is None else f'{dens:.3f}'})")
    if k.tile_summary():
        print(f"tiles      {k.tile_summary()}")
    cfg = ", ".join(f"{f}={getattr(k.config, f)}" for f in k.config.__dataclass_fields__)
    print(f"target     {k.target_name}  config {cfg}")
    print(f"           config from {k.config_source}")
    notes = getattr(k.target, "kernel_notes", None)
    if notes is not None and k.built is not None:
        for line in notes(k.built):
            print(f"           {line}")
    below = _small_below(k)
    if below:
        print(f"per call   a call whose {k.config.block_q}x{k.config.block_k} tile map is at most {below:.0%} non-empty "
              "runs a second kernel of 64x32 tiles (main_small; small_below=0 in --config: one kernel)")
    t = k.times
    print(f"compile    {_fmt_time(t['total'])}  (load target {_fmt_time(t['target'])}, trace {_fmt_time(t['trace'])}, "
          f"passes {_fmt_time(t['passes'])}, TVM build {_fmt_time(t['build'])})")
    if args.output:
        k.export_library(args.output)
        print(f"wrote      {args.output}  ({k.describe_output(args.output)})")
    status = 0
    why_not = k.not_runnable()
    if why_not is not None and not args.no_run:
        print(f"kernel     not run: {why_not}")
    if why_not is not None and args.verify:
        print(f"verify     not run: {why_not}")
        print(f"attncc: error: --verify needs a device that runs the kernel ({why_not})", file=sys.stderr)
        return 2
    if not args.no_run and why_not is None:
        sec = k.measure()
        note = "" if k.density() is not None else ", counting all pairs: the mask depends on data"
        sim = " simulated (cycles / clock)" if getattr(k.target, "SIMULATED", False) else ""
        print(f"kernel     {_fmt_time(sec)}{sim}  ({k.flops() / sec / 1e9:.1f} GFLOP/s{note})")
        if args.report:
            for line in k.target.format_report(k.target.report(k.built)):
                print("           " + line)
    if args.report and (args.no_run or why_not is not None):
        for line in k.target.format_report(k.target.report(k.built)):
            print("           " + line)
    if args.verify:
        rep = compiler.verify(k, seed=args.seed)
        ok = rep.passed
        print(f"verify     max error {rep.max_error:.3g} (tolerance {rep.tolerance:.3g}), "
              f"lse max error {rep.lse_error:.3g} (tolerance {rep.lse_tolerance:.3g})  "
              + ("PASS" if ok else "FAIL"))
        if rep.unquantized_error is not None:
            print(f"           quantized ({k.flash_op.attrs['quant']['dtype']}): checked against the quantized "
                  f"reference; max error vs the unquantized float64 reference {rep.unquantized_error:.3g}")
        status = 0 if ok else 1
    return status


def cmd_export(args) -> int:
    from attncc import compiler
    from attncc.export import export

    shapes = compiler.parse_assignments(args.shape, "--shape")
    config = compiler.parse_assignments(args.config, "--config")
    k = compiler.compile_variant(
        args.file, target=args.target, shapes=shapes, dtype=args.dtype, config=config or None, variant_name=args.variant,
        target_options={"arch": args.arch} if args.arch else None, quantize=_quant_options(args))
    man = export(k, args.output, bundle_runtime=args.bundle_runtime, fatbin=not args.no_fatbin)
    dims = " ".join(f"{n}={v}" for n, v in k.env.items())
    print(f"variant    {k.variant}  ({args.file}; {k.spec.dtype}; {dims})")
    arch = f" {man['target']['arch']}" if man["target"].get("arch") else ""
    print(f"target     {k.target_name}{arch}  config "
          + ", ".join(f"{f}={getattr(k.config, f)}" for f in k.config.__dataclass_fields__))
    small = man["block_map"].get("small")
    print(f"block map  {man['block_map']['mode']}" + (
        f"; at most {small['below']:.0%} non-empty: {small['function']} ({small['block_q']}x{small['block_k']} tiles)"
        if small else ""))
    for role, entry in man["files"].items():
        size = os.path.getsize(os.path.join(args.output, entry["path"]))
        print(f"wrote      {os.path.join(args.output, entry['path'])}  ({role}, {size} bytes)")
    print(f"wrote      {os.path.join(args.output, 'manifest.json')}")
    print(f"load with  attncc.runtime.load({args.output!r})(" + ", ".join(i["name"] for i in man["inputs"])
          + ") -> (out, lse)")
    return 0


def cmd_opt(args) -> int:
    from attncc.ir.parser import parse
    from attncc.ir.printer import print_ir
    from attncc.lang import load_variant
    from attncc.passes.pipeline import run_on_module
    from attncc.ir.core import Module

    if args.file.endswith(".py"):
        mod = Module([load_variant(args.file, args.variant).trace(args.dtype)])
    else:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            if not os.path.exists(args.file):
                raise AttnccError(f"no such file: {args.file}")
            with open(args.file) as f:
                text = f.read()
        mod = parse(text, args.file)
        from attncc.ir.verify import verify
        verify(mod)
    out = run_on_module(mod, args.passes or "", sys.stdout if args.print_after_all else None)
    text = print_ir(out)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _knob_value(text: str):
    text = text.strip()
    if text in ("True", "true", "False", "false"):
        return text in ("True", "true")
    try:
        return int(text)
    except ValueError:
        return text


def cmd_tune(args) -> int:
    """Tune a variant's schedule knobs (all logic in attncc.schedules), or --show a database."""
    from attncc import compiler
    from attncc.schedules import report, tuner
    from attncc.schedules.db import plain_warnings
    from attncc.schedules.lookup import user_db_path

    plain_warnings()
    db = args.db or user_db_path()
    if args.ingest:
        if args.file is not None or args.export_candidates:
            raise AttnccError("--ingest takes a results file only (no variant, no --export-candidates)")
        from attncc.schedules.db import ingest

        res = ingest(args.ingest, db)
        print(f"ingested   {res['added']} record(s) from {args.ingest} into {res['db']}"
              + (f" ({res['duplicates']} already there)" if res["duplicates"] else ""))
        for key, info in res["keys"].items():
            best = info["best"]
            line = f"           {key.short()}: {info['ok']} config(s) measured, {info['failed']} failed"
            if best is not None:
                cfg = ",".join(f"{k}={v}" for k, v in best.config.items())
                line += f"; best {best.time_s * 1e6:.1f} us ({cfg})"
                if info["default_s"]:
                    line += f"; default {info['default_s'] * 1e6:.1f} us (tuned x{info['default_s'] / best.time_s:.2f})"
            print(line)
        if args.show:
            print(report.show(db))
        return 0
    if args.file is None:
        if not args.show:
            raise AttnccError("give a variant file to tune, or --show to list the best tuning records "
                              "(or --ingest a results file)")
        print(report.show(db))
        return 0
    quantize = _quant_options(args)
    if args.export_candidates:
        from attncc.schedules.candidates import export_candidates, summary

        knobs = None
        if args.knobs:
            knobs = {}
            for part in args.knobs.split(";"):
                name, _, values = part.partition("=")
                knobs[name.strip()] = tuple(_knob_value(v) for v in values.split("|") if v.strip())
        m = export_candidates(args.file, args.export_candidates, args.target,
                              compiler.parse_assignments(args.shape, "--shape"), args.dtype,
                              variant_name=args.variant, target_options={"arch": args.arch} if args.arch else None,
                              knobs=knobs, fatbin=args.fatbin, jobs=args.jobs, dry_run=args.dry_run,
                              quantize=quantize)
        print(summary(m))
        return 0
    if args.plot:
        report.require_matplotlib()          # before a long tuning session, not after it
    settings = tuner.TuneSettings(
        trials=args.trials, budget_s=tuner.parse_duration(args.budget) if args.budget else None,
        strategy=args.strategy, overlap=args.overlap, seed=args.seed)
    result = tuner.tune(args.file, args.target, compiler.parse_assignments(args.shape, "--shape"), args.dtype,
                        db=db, settings=settings, variant_name=args.variant,
                        target_options=_target_options(args), quantize=quantize,
                        on_event=None if args.quiet else report.RichProgress())
    print(report.summary(result))
    if args.plot:
        report.plot(result, args.plot)
        print(f"plot       {args.plot}")
    if args.show:
        print(report.show(db, key=result.key))
    return 0 if result.best is not None else 1


def build_parser() -> argparse.ArgumentParser:
    from attncc.passes.pipeline import DEFAULT_PIPELINE
    p = argparse.ArgumentParser(prog="attncc", description="A compiler for attention kernels.")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("compile", help="compile a variant file into a kernel, run and verify it")
    c.add_argument("file", help="variant file (.py)")
    c.add_argument("--variant", help="which variant, if the file defines several")
    c.add_argument("--target", default="cpu", help="cpu (default), cuda, rocm, systolic")
    c.add_argument("--arch", help="GPU architecture, e.g. sm_90a (cuda), gfx942 / gfx90a / gfx1100 (rocm); "
                   "default: the local GPU")
    c.add_argument("--shape", help="dimension values, e.g. S=2048,D=64 (default: the variant's)")
    c.add_argument("--dtype", help="element type of q, k, v (f32, f16, bf16); default: the variant's")
    c.add_argument("--config", help="schedule knobs, e.g. block_q=64,block_k=64 (default: the best tuned "
                   "record for this device and shape, else the target's default)")
    c.add_argument("--db", help="tuning database to look in first (then ~/.cache/attncc/tuning.jsonl, "
                   "then the packaged defaults)")
    c.add_argument("--passes", default=DEFAULT_PIPELINE, help=f"pass pipeline (default: {DEFAULT_PIPELINE})")
    c.add_argument("--verify", action="store_true", help="check against the numpy float64 reference")
    c.add_argument("--systolic-config", metavar="NAME|FILE.json",
                   help="systolic target: the simulated accelerator (presets default, tpu_v1, gemmini; or a JSON "
                   "file of AcceleratorConfig fields)")
    c.add_argument("--report", action="store_true", help="systolic target: print the simulator's cycle report "
                   "(cycles, array utilization, vector and DMA time, bytes moved, tile density)")
    c.add_argument("--quantize", choices=["fp8", "fp8_e5m2", "int8"], help="quantize Q·Kᵀ (FP8 e4m3/e5m2 or INT8)")
    c.add_argument("--quantize-pv", action="store_true", help="quantize P·V too")
    c.add_argument("--quantize-granularity", help="scales per tensor, head (default) or block[:ROWS]")
    c.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    c.add_argument("--no-run", action="store_true", help="do not run or time the kernel")
    c.add_argument("-o", "--output", help="write the built module (.so, loadable with tvm_ffi.load_module; "
                   "rocm: .hsaco writes the AMD GPU code object)")
    c.add_argument("--emit", choices=["ir", "tir", "source", "asm"], help="print the IR after passes, the "
                   "TensorIR, the generated code, or the machine assembly (rocm), and stop")
    c.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    c.set_defaults(fn=cmd_compile)

    e = sub.add_parser("export", help="compile a variant into a folder that runs without the compiler "
                       "(attncc.runtime.load)")
    e.add_argument("file", help="variant file (.py)")
    e.add_argument("-o", "--output", required=True, help="folder to write (kernel.so, manifest.json, ...)")
    e.add_argument("--variant", help="which variant, if the file defines several")
    e.add_argument("--target", default="cpu", help="cpu (default), cuda")
    e.add_argument("--arch", help="GPU architecture, e.g. sm_90a (cuda)")
    e.add_argument("--shape", help="dimension values, e.g. S=2048,D=64 (default: the variant's)")
    e.add_argument("--dtype", help="element type of q, k, v (f32, f16, bf16)")
    e.add_argument("--config", help="schedule knobs, e.g. block_q=64,block_k=128")
    e.add_argument("--quantize", choices=["fp8", "fp8_e5m2", "int8"], help="quantize Q·Kᵀ (FP8 e4m3/e5m2 or INT8)")
    e.add_argument("--quantize-pv", action="store_true", help="quantize P·V too")
    e.add_argument("--quantize-granularity", help="scales per tensor, head (default) or block[:ROWS]")
    e.add_argument("--bundle-runtime", action="store_true",
                   help="copy TVM's runtime libraries (about 5 MB) into DIR/lib for machines without TVM")
    e.add_argument("--no-fatbin", action="store_true", help="cuda: ship the source only (loading then needs nvcc)")
    e.set_defaults(fn=cmd_export)

    o = sub.add_parser("opt", help="run passes on textual IR (.attn) and print the result")
    o.add_argument("file", help=".attn file ('-' for stdin), or a variant .py to trace")
    o.add_argument("--pass", "--passes", dest="passes", default="",
                   help="comma-separated passes, e.g. canonicalize,fuse-attention")
    o.add_argument("--variant")
    o.add_argument("--dtype")
    o.add_argument("-o", "--output")
    o.add_argument("--print-after-all", action="store_true")
    o.set_defaults(fn=cmd_opt)

    t = sub.add_parser("tune", help="search a variant's schedule knobs for this device; records go to a database")
    t.add_argument("file", nargs="?", help="variant file (.py); omit with --show to list the database")
    t.add_argument("--variant", help="which variant, if the file defines several")
    t.add_argument("--target", default="cpu", help="cpu (default), cuda, ...")
    t.add_argument("--arch", help="GPU architecture (cuda; default: the local GPU)")
    t.add_argument("--systolic-config", metavar="NAME|FILE.json",
                   help="systolic target: the simulated accelerator (default, tpu_v1, gemmini or a JSON file)")
    t.add_argument("--shape", help="dimension values, e.g. S=4096 (default: the variant's)")
    t.add_argument("--dtype", help="element type of q, k, v (f32, f16, bf16); default: the variant's")
    t.add_argument("--quantize", choices=["fp8", "fp8_e5m2", "int8"], help="tune the quantized kernel "
                   "(Q·Kᵀ in FP8 e4m3/e5m2 or INT8; recorded under its own key)")
    t.add_argument("--quantize-pv", action="store_true", help="quantize P·V too")
    t.add_argument("--quantize-granularity", help="scales per tensor, head (default) or block[:ROWS]")
    t.add_argument("--budget", help="wall-clock budget, e.g. 60s, 5m")
    t.add_argument("--trials", type=int, help="configs to measure (default 64 without --budget)")
    t.add_argument("--db", help="tuning database (default ~/.cache/attncc/tuning.jsonl)")
    t.add_argument("--strategy", default="auto", choices=["auto", "exhaustive", "guided", "random"],
                   help="auto: exhaustive for small spaces, else cost-model-guided")
    t.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                   help="build the next candidates while timing (default: off on cpu, on for GPUs)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--show", action="store_true", help="list the best records (of this variant, after tuning)")
    t.add_argument("--plot", help="draw best-so-far vs trial and time vs each knob into this image (matplotlib)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.add_argument("--export-candidates", metavar="DIR",
                   help="split flow for a GPU without TVM (cuda): build every valid candidate here and export it "
                   "with a manifest into DIR; measure there with python -m attncc.schedules.measure_candidates")
    t.add_argument("--knobs", help="with --export-candidates: narrow knob values, e.g. 'mma=wgmma;block_k=64|128'")
    t.add_argument("--dry-run", action="store_true", help="with --export-candidates: enumerate and write the "
                   "manifest (rejections counted), build nothing")
    t.add_argument("--fatbin", action="store_true", help="with --export-candidates: also compile each candidate "
                   "with nvcc here (default: the GPU machine compiles them, in parallel)")
    t.add_argument("--jobs", type=int, help="with --export-candidates: build processes (default: all cores)")
    t.add_argument("--ingest", metavar="RESULTS",
                   help="add a results file (JSONL from measure_candidates) to the database (--db)")
    t.set_defaults(fn=cmd_tune)
    return p


def _small_below(k) -> float:
    """The per-call small-tile threshold of a CUDA kernel (0 elsewhere)."""
    if k.target_name != "cuda":
        return 0.0
    from attncc.targets.cuda import small_below

    return small_below(k.spec, k.config)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except AttnccError as e:
        print(f"attncc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attncc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
