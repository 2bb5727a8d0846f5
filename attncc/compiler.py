"""The compiler as a library: variant -> passes -> target -> built kernel -> verified.

    from attncc.compiler import compile_variant, verify
    k = compile_variant("examples/causal_gqa.py", target="cpu", shapes={"S": 1024})
    out, lse = k(q, k_, v)          # numpy arrays
    report = verify(k)              # against the float64 numpy reference

The CLI (``attncc compile``) is a thin layer over this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Optional, TextIO

import numpy as np

from attncc.errors import ConfigError, ShapeError
from attncc.ir.core import Function
from attncc.ir.printer import print_ir
from attncc.ir.types import parse_dtype
from attncc.lang import Variant, load_variant
from attncc.passes.pipeline import DEFAULT_PIPELINE, run_pipeline
from attncc.reference import evaluate, max_error, random_inputs, tolerance
from attncc.targets import get_target
from attncc.targets.lowering import find_flash, kernel_spec
from attncc.targets.spec import FlashKernelSpec


def parse_assignments(text: Optional[str], what: str) -> dict:
    """'S=2048,D=64' -> {'S': 2048, 'D': 64} (values stay strings where not ints)."""
    out: dict = {}
    if not text:
        return out
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ShapeError(f"bad {what} '{item}': expected NAME=VALUE")
        k, v = (s.strip() for s in item.split("=", 1))
        try:
            out[k] = int(v)
        except ValueError:
            out[k] = v
    return out


def resolve_dims(func: Function, shapes: dict) -> dict:
    defaults = dict(func.attrs.get("defaults", {}))
    symbols = func.symbols()
    for k in shapes:
        if k not in symbols:
            raise ShapeError(f"--shape names {k}, which is not a dimension of @{func.name} "
                             f"(its dimensions: {', '.join(symbols)})", variant=func.name)
    env = {k: int(v) for k, v in defaults.items()}
    for k, v in shapes.items():
        if not isinstance(v, int) or v <= 0:
            raise ShapeError(f"dimension {k} must be a positive integer, got {v!r}", variant=func.name)
        env[k] = v
    missing = [s for s in symbols if s not in env]
    if missing:
        raise ShapeError(f"no value for dimension(s) {', '.join(missing)}: give --shape "
                         + ",".join(f"{m}=..." for m in missing) + " or defaults in the variant",
                         variant=func.name)
    return {k: env[k] for k in symbols}


def make_config(target, spec: FlashKernelSpec, overrides: Optional[dict] = None, arch: Optional[str] = None,
                options: Optional[dict] = None):
    """The target's default config with ``overrides``.  Without overrides, a target whose
    default_config takes ``arch`` gets it (CUDA picks its Hopper wgmma kernel for sm_90a);
    overrides apply to the architecture-neutral default, as they always did.  A target
    whose default_config takes ``options`` gets the target options (the systolic
    target's accelerator)."""
    import inspect
    params = inspect.signature(target.default_config).parameters
    cfg = None
    if arch and not overrides:
        if "arch" in params:
            cfg = target.default_config(spec, arch=arch)
    if cfg is None:
        cfg = target.default_config(spec, options=options) if "options" in params else target.default_config(spec)
    if overrides:
        fields = {f.name: f for f in dataclasses.fields(cfg)}
        for k in overrides:
            if k not in fields:
                raise ConfigError(f"target {target.NAME} has no knob '{k}' (knobs: {', '.join(fields)})")
        cfg = dataclasses.replace(cfg, **overrides)
    target.validate_config(spec, cfg)
    return cfg


def fingerprint(func: Function) -> str:
    text = print_ir(func)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CompiledKernel:
    variant: str
    source_ir: Function            # the unfused IR (what the reference evaluates)
    ir: Function                   # after the passes
    applied: list
    target_name: str
    target: object
    spec: FlashKernelSpec
    config: object
    env: dict
    built: object
    times: dict = field(default_factory=dict)
    config_source: str = "target default"     # where the config came from (a tuned record, --config)

    @property
    def flash_op(self):
        return find_flash(self.ir)

    def input_shapes(self) -> dict:
        return {a.hint: a.type.concrete(self.env) for a in self.source_ir.args}

    def random_inputs(self, seed: int = 0) -> dict:
        return random_inputs(self.source_ir, self.env, seed)

    @property
    def quantized(self) -> bool:
        return "quant" in self.flash_op.attrs

    def flash_operands(self, inputs: dict) -> list:
        """The kernel's inputs from the function's inputs (by name): function arguments
        pass through; quantized operands come from the host-side prologue (attn.quantize,
        evaluated as the reference defines it)."""
        from attncc.reference import quantize
        done: dict = {}
        out = []
        for v in self.flash_op.operands:
            if v.owner is None:
                out.append(inputs[v.hint])
                continue
            op = v.owner
            if op not in done:
                done[op] = quantize(inputs[op.operands[0].hint], op.attrs["dtype"],
                                    op.attrs.get("granularity", "tensor"), op.attrs.get("block", 1))
            out.append(done[op][v.index])
        return out

    def __call__(self, *args):
        """Run on numpy arrays: the variant's inputs in order (q, k, v, then e.g. document
        ids); returns (out, lse).  Quantized kernels quantize q/k/v on the host first."""
        fargs = self.source_ir.args
        if len(args) != len(fargs):
            raise ShapeError(f"kernel takes {len(fargs)} input(s) ({', '.join(a.hint for a in fargs)}), "
                             f"got {len(args)}", variant=self.variant)
        for arr, val in zip(args, fargs):
            want = val.type.concrete(self.env)
            if tuple(np.shape(arr)) != tuple(want):
                raise ShapeError(f"input {val.hint} has shape {tuple(np.shape(arr))}, the kernel was built for "
                                 f"{tuple(want)}", variant=self.variant)
        return self.run_inputs(dict(zip((a.hint for a in fargs), args)))

    def run_inputs(self, inputs: dict):
        return self.target.run(self.built, *self.flash_operands(inputs))

    def not_runnable(self) -> Optional[str]:
        """Why this kernel cannot run on this machine (no device of its kind), or None."""
        check = getattr(self.target, "not_runnable", None)
        return check(self.built) if check is not None and self.built is not None else None

    def measure(self, **kw) -> float:
        return self.target.measure(self.built, self.spec, **kw)

    def flops(self, captures=None) -> float:
        """FLOPs of the kept (query, key) pairs (all pairs if the density is unknown)."""
        s = self.spec
        d = self.density(captures)
        return 4.0 * s.batch * s.q_heads * s.q_len * s.kv_len * (s.head_dim + s.head_dim_v) / 2 * (
            1.0 if d is None else d)

    def density(self, captures=None) -> Optional[float]:
        """Fraction of (query, key) pairs the mask keeps (evaluated for batch 0, head 0);
        None for a data-dependent mask when no data is given."""
        mask = self.flash_op.region("mask")
        if mask is None:
            return 1.0
        n_cap = len(self.spec.captures)          # (operands after q, k, v are scales, then captures)
        if n_cap and captures is None:
            return None
        from attncc.reference import _Interp
        it = _Interp(self.env, "float64")
        i = np.arange(self.spec.q_len).reshape(-1, 1)
        j = np.arange(self.spec.kv_len).reshape(1, -1)
        keep = np.broadcast_to(it.region(mask, [np.int64(0), np.int64(0), i, j] + list(captures or [])),
                               (i.size, j.size))
        return float(np.mean(keep))

    def tiles(self):
        """The tile map for this kernel's block sizes (None when not analysed)."""
        bq, bk = getattr(self.config, "block_q", None), getattr(self.config, "block_k", None)
        if self.spec.tile_map is None or bq is None:
            return None
        return self.spec.tile_map(bq, bk)

    def tile_summary(self) -> str:
        t = self.tiles()
        if t is None:
            return ""
        n = t.size
        e, f = int((t == 0).sum()), int((t == 2).sum())
        return (f"{t.shape[0]}x{t.shape[1]} tiles of {self.config.block_q}x{self.config.block_k}: "
                f"{e} empty, {f} full, {n - e - f} partial; tile density {(n - e) / n:.3f}")

    def tir(self) -> str:
        import inspect
        arch = getattr(self.built, "arch", None)
        if arch is not None and "arch" in inspect.signature(self.target.lower).parameters:
            return self.target.lower(self.spec, self.config, arch=arch).script()   # rocm: wave size
        return self.target.lower(self.spec, self.config).script()

    def source(self) -> str:
        return self.target.source(self.built)

    def asm(self) -> str:
        """The machine assembly (targets that have one: rocm)."""
        from attncc.errors import TargetError
        if not hasattr(self.target, "assembly"):
            raise TargetError(f"target {self.target_name} has no assembly output (--emit source prints "
                              "its generated code)", variant=self.variant)
        return self.target.assembly(self.built)

    def describe_output(self, path: str) -> str:
        """What ``export_library(path)`` wrote, in words."""
        describe = getattr(self.target, "describe_output", None)
        if describe is not None:
            return describe(self.built, path)
        return "load with tvm_ffi.load_module; main(q, k, v, out, lse)"

    def export_library(self, path: str) -> None:
        self.target.export_library(self.built, path)


def compile_variant(variant, target: str = "cpu", shapes: Optional[dict] = None, dtype=None,
                    passes: str = DEFAULT_PIPELINE, config: Optional[dict] = None,
                    print_after_all: Optional[TextIO] = None, variant_name: Optional[str] = None,
                    build: bool = True, target_options: Optional[dict] = None,
                    quantize: Optional[dict] = None, tuning_db=None) -> CompiledKernel:
    """Compile a variant (a path, a Variant or an unfused Function) for ``target``.

    ``config`` None: the best tuned record for this variant, shape bucket and device (from
    ``tuning_db``, else the user's database, else the packaged defaults; see
    attncc/schedules/lookup.py), else the target's default; ``tuning_db=False`` skips the
    lookup.  A ``config`` dict (even empty) is the target default with those overrides."""
    times: dict = {}
    t0 = time.perf_counter()
    tgt = get_target(target)
    times["target"] = time.perf_counter() - t0
    if isinstance(variant, str):
        variant = load_variant(variant, variant_name)
    if isinstance(variant, Variant):
        if dtype is None:
            # the variant's declared dtype, unless the target cannot run it (f32 on tensor-core
            # targets): then the target's own default (bf16), which the report prints
            supported = getattr(tgt, "SUPPORTED_DTYPES", None)
            if supported and str(variant.dtype) not in supported and str(parse_dtype(variant.dtype)) not in supported:
                dtype = tgt.DEFAULT_DTYPE
        func = variant.trace(parse_dtype(dtype) if dtype is not None else None)
    else:
        func = variant
        if dtype is not None:
            raise ShapeError("dtype can only be chosen when tracing a variant, not for IR")
    source_ir = func
    # passes mutate: run them on a copy made by printing and parsing (also checks the round trip)
    from attncc.ir.parser import parse_function
    work = parse_function(print_ir(func))
    for src, copy in zip(func.ops, work.ops):    # errors name the variant's lines, not the text's
        copy.line = src.line
    env = resolve_dims(func, shapes or {})
    times["trace"] = time.perf_counter() - t0 - times["target"]
    t1 = time.perf_counter()
    if quantize:
        opts = ",".join(f"{k}={v}" for k, v in quantize.items())
        passes = passes + ",quantize{" + opts + "}"
    result = run_pipeline(work, passes, print_after_all)
    times["passes"] = time.perf_counter() - t1
    spec = kernel_spec(result.func, env)
    config_source = "target default" + (" + overrides" if config else "")
    if config is None and tuning_db is not False:
        from attncc.schedules.lookup import tuned_config
        config, config_source = tuned_config(target, spec, source_ir, target_options, tuning_db)
    cfg = make_config(tgt, spec, config, (target_options or {}).get("arch"), target_options)
    built = None
    if build:
        t2 = time.perf_counter()
        built = tgt.build(spec, cfg, **(target_options or {}))
        times["build"] = time.perf_counter() - t2
    times["total"] = time.perf_counter() - t0
    return CompiledKernel(func.name, source_ir, result.func, result.applied, target, tgt, spec, cfg, env,
                          built, times, config_source)


FP8_LSE_FLOOR = 2e-3


def fp8_tensor_cores(kernel: CompiledKernel) -> bool:
    """True when Q·Kᵀ runs on fp8 tensor cores (the CUDA wgmma or mma.sync kernel with --quantize fp8*)."""
    return bool(kernel.target_name == "cuda" and kernel.spec.quant_dtype in ("float8_e4m3fn", "float8_e5m2")
                and getattr(kernel.config, "mma", None) in ("sync", "wgmma"))


def fp8_p(kernel: CompiledKernel) -> bool:
    """True when the kernel computes P·V with P in fp8 (the CUDA kernels with fp8 --quantize-pv)."""
    return bool(fp8_tensor_cores(kernel) and kernel.spec.quant_pv)


@dataclass
class VerifyReport:
    max_error: float
    tolerance: float
    lse_error: float
    lse_tolerance: float
    naive_error: float
    unquantized_error: Optional[float] = None   # quantized kernels: error vs the unquantized reference

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance and self.lse_error <= self.lse_tolerance


def verify(kernel: CompiledKernel, seed: int = 0, inputs: Optional[dict] = None) -> VerifyReport:
    """Run the kernel on random inputs and compare with the float64 reference of the
    unfused IR.  Tolerance (DESIGN.md): 2 x the error of a naive kernel in the same
    precision, plus a floor.  A quantized kernel is checked against the quantized
    reference (the IR after the quantize pass, evaluated in float64, quantization done
    as ml_dtypes rounds); its error against the unquantized reference is reported too."""
    inputs = inputs if inputs is not None else kernel.random_inputs(seed)
    out, lse = kernel.run_inputs(inputs)
    oracle_ir = kernel.ir if kernel.quantized else kernel.source_ir
    ref = evaluate(oracle_ir, inputs, "float64", kernel.env)
    naive = evaluate(oracle_ir, inputs, "native", kernel.env)
    floor = 1e-5 if kernel.spec.dtype == "float32" else 1e-3
    tol = tolerance(ref.outputs[0], naive.outputs[0], floor)
    if fp8_p(kernel):
        # the kernel's own precision includes P in e4m3: the naive kernel rounds P too
        import ml_dtypes
        naive_p8 = evaluate(oracle_ir, inputs, "native", kernel.env, p_round=ml_dtypes.float8_e4m3fn)
        tol = max(tol, tolerance(ref.outputs[0], naive_p8.outputs[0], floor))
    err = max_error(out, ref.outputs[0])
    ref_lse, naive_lse = ref.lse, naive.lse
    if not ref_lse:
        # a softmax written by hand (exp / max / sum) has no log-sum-exp of its own:
        # the fused op's, evaluated by the same oracle, stands in for it
        ref_lse = evaluate(kernel.ir, inputs, "float64", kernel.env).lse
        naive_lse = evaluate(kernel.ir, inputs, "native", kernel.env).lse
    lse_ref = ref_lse[0]
    lse_tol = tolerance(lse_ref, naive_lse[0], floor)
    if fp8_tensor_cores(kernel):
        # fp8 tensor cores (Hopper wgmma) accumulate Q·Kᵀ with fewer bits than fp32: the
        # stated bound for the log-sum-exp is 2 x naive + FP8_LSE_FLOOR (H200: 2e-4 .. 1.1e-3 seen)
        lse_tol = tolerance(lse_ref, naive_lse[0], FP8_LSE_FLOOR)
    lse_err = max_error(lse, lse_ref)
    unq = None
    if kernel.quantized:
        unq = max_error(out, evaluate(kernel.source_ir, inputs, "float64", kernel.env).outputs[0])
    return VerifyReport(err, tol, lse_err, lse_tol, max_error(naive.outputs[0], ref.outputs[0]), unq)
