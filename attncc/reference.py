"""The oracle: a numpy interpreter of the IR.

``evaluate(func, inputs)`` runs the IR *before* any pass in float64,
materialising the full score matrix.  It also interprets ``attn.flash`` (naively,
or block by block with the online softmax when the op is tiled) so that passes
can be checked to preserve meaning.  With ``precision="native"`` it computes
like a naive kernel in the inputs' own precision (float32 arithmetic, values
rounded at every cast to a narrower type): the baseline of the tolerance rule.

Fully-masked softmax rows give zeros and log-sum-exp -inf, never NaN.
No code is shared with any target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy

from attncc.errors import ShapeError
from attncc.ir.core import Function, Op, Region, Value
from attncc.ir.types import DType


def bind_dims(func: Function, arrays: dict) -> dict:
    """Dimension values from input arrays: name -> int.  Raises ShapeError on a mismatch."""
    env: dict = {}
    for a in func.args:
        if a.hint not in arrays:
            raise ShapeError(f"missing input '{a.hint}'", variant=func.name)
        shape = tuple(np.shape(arrays[a.hint]))
        if len(shape) != a.type.rank:
            raise ShapeError(f"input '{a.hint}' must have rank {a.type.rank} ({a.type}), got shape {shape}",
                             variant=func.name)
        for d, n in zip(a.type.shape, shape):
            if d.is_Symbol:
                if d.name in env and env[d.name] != n:
                    raise ShapeError(f"dimension {d.name} is {env[d.name]} in one input and {n} in "
                                     f"'{a.hint}'", variant=func.name)
                env[d.name] = int(n)
    for a in func.args:
        shape = tuple(np.shape(arrays[a.hint]))
        for d, n in zip(a.type.shape, shape):
            if not d.is_Symbol:
                val = d.subs({s: env[s.name] for s in d.free_symbols if s.name in env})
                if not val.is_Integer or int(val) != n:
                    raise ShapeError(f"input '{a.hint}' dimension {d} should be {val}, got {n}", variant=func.name)
    return env


def eval_scalar(value, env: dict):
    if isinstance(value, sympy.Expr):
        v = value.subs({s: env[s.name] for s in value.free_symbols if s.name in env})
        if v.free_symbols:
            raise ShapeError(f"no value for {', '.join(sorted(s.name for s in v.free_symbols))} in {value}")
        return int(v) if v.is_Integer else float(v)
    return value


@dataclass
class Result:
    outputs: list
    lse: list = field(default_factory=list)      # per softmax / flash op, in program order


class _Interp:
    def __init__(self, env: dict, precision: str, p_round=None):
        self.env = env
        self.native = precision == "native"
        self.fdt = np.float32 if self.native else np.float64
        self.lse: list = []
        self.p_round = p_round      # numpy dtype P is rounded to before P·V (fp8 P·V kernels)

    def fconv(self, x):
        return np.asarray(x, dtype=self.fdt)

    def input(self, arr, t):
        a = np.asarray(arr)
        if t.dtype in (DType.i8, DType.f8e4m3, DType.f8e5m2):
            return a.astype(t.dtype.numpy)            # quantized data stays as it is
        if t.dtype.is_float:
            return a.astype(np.float32).astype(self.fdt) if a.dtype != self.fdt else a
        if t.dtype.is_bool:
            return a.astype(bool)
        return a.astype(np.int64)

    def run_block(self, ops: list[Op], vals: dict):
        for op in ops:
            if op.name in ("attn.return", "attn.yield"):
                return [vals[v] for v in op.operands]
            args = [vals[v] for v in op.operands]
            out = self.op(op, args)
            if len(op.results) == 1:
                vals[op.results[0]] = out
            else:
                for r, o in zip(op.results, out):
                    vals[r] = o
        raise AssertionError("block without terminator")

    def op(self, op: Op, a: list):
        n = op.short
        with np.errstate(all="ignore"):
            if n == "constant":
                v = eval_scalar(op.attrs["value"], self.env)
                dt = op.attrs["dtype"]
                if dt.is_float:
                    return self.round(np.asarray(v, dtype=self.fdt), dt)
                if dt.is_bool:
                    return np.asarray(bool(v))
                return np.asarray(int(v), dtype=np.int64)
            if n == "iota":
                shape = [int(eval_scalar(d, self.env)) for d in op.attrs["shape"]]
                d = op.attrs["dim"]
                view = [1] * len(shape)
                view[d] = shape[d]
                return np.broadcast_to(np.arange(shape[d], dtype=np.int64).reshape(view), shape)
            if n in ("add", "sub", "mul", "div", "max", "min"):
                f = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
                     "max": np.maximum, "min": np.minimum}[n]
                if n == "div" and op.results[0].type.dtype.is_int:
                    return self.trunc_div(a[0], a[1])
                return self.res(op, f(a[0], a[1]))
            if n == "floordiv":
                return np.floor_divide(a[0], np.where(a[1] == 0, 1, a[1]))
            if n == "mod":
                return np.mod(a[0], np.where(a[1] == 0, 1, a[1]))
            if n in ("exp", "log", "tanh", "sqrt", "neg", "abs"):
                f = {"exp": np.exp, "log": np.log, "tanh": np.tanh, "sqrt": np.sqrt, "neg": np.negative,
                     "abs": np.abs}[n]
                return self.res(op, f(a[0]))
            if n == "sigmoid":
                return self.res(op, 1.0 / (1.0 + np.exp(-a[0])))
            if n in ("lt", "le", "gt", "ge", "eq", "ne"):
                f = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
                     "eq": np.equal, "ne": np.not_equal}[n]
                return f(a[0], a[1])
            if n == "and":
                return np.logical_and(a[0], a[1])
            if n == "or":
                return np.logical_or(a[0], a[1])
            if n == "not":
                return np.logical_not(a[0])
            if n == "select":
                return np.where(a[0], a[1], a[2])
            if n == "gather":
                src = np.asarray(a[0])
                idx = tuple(np.clip(np.asarray(x, dtype=np.int64), 0, d - 1) for x, d in zip(a[1:], src.shape))
                return src[np.broadcast_arrays(*idx)] if idx else src
            if n == "cast":
                to: DType = op.attrs["to"]
                x = a[0]
                if to.is_float:
                    return self.round(np.asarray(x, dtype=self.fdt), to)
                if to.is_bool:
                    return np.asarray(x) != 0
                return np.trunc(np.asarray(x, dtype=np.float64)).astype(np.int64) if np.asarray(
                    x).dtype.kind == "f" else np.asarray(x, dtype=np.int64)
            if n == "matmul":
                return self.matmul(a[0], a[1], bool(op.attrs.get("transpose_b", False)),
                                   op.results[0].type.dtype)
            if n == "reduce":
                f = np.max if op.attrs["kind"] == "max" else np.sum
                return f(a[0], axis=op.attrs.get("axis", -1), keepdims=True)
            if n == "softmax":
                out, lse = softmax(a[0], op.attrs.get("axis", -1))
                self.lse.append(lse)
                return out
            if n == "flash":
                return self.flash(op, a)
            if n == "quantize":
                return quantize(a[0], op.attrs["dtype"], op.attrs.get("granularity", "tensor"),
                                op.attrs.get("block", 1))
            if n == "dequantize":
                return np.asarray(a[0], dtype=np.float32).astype(self.fdt) * np.asarray(a[1], self.fdt)
        raise NotImplementedError(f"reference has no rule for {op.name}")

    def res(self, op: Op, x):
        dt = op.results[0].type.dtype
        if dt.is_float:
            return np.asarray(x, dtype=self.fdt)
        return np.asarray(x)

    @staticmethod
    def trunc_div(x, y):
        y = np.where(y == 0, 1, y)
        return (np.trunc(np.asarray(x, dtype=np.float64) / y)).astype(np.int64)

    def round(self, x, dt: DType):
        if self.native and dt.is_float and dt != DType.f32:
            return x.astype(dt.numpy).astype(np.float32)
        return x

    def matmul(self, x, y, transpose_b: bool, out_dtype: DType):
        if transpose_b:
            y = np.swapaxes(y, -1, -2)
        if x.ndim >= 3 and y.shape[-3] != x.shape[-3] and y.shape[-3] != 1:
            y = np.repeat(y, x.shape[-3] // y.shape[-3], axis=-3)       # head mapping (GQA)
        if out_dtype.is_float:
            return np.matmul(np.asarray(x, self.fdt), np.asarray(y, self.fdt))
        return np.matmul(np.asarray(x, np.int64), np.asarray(y, np.int64))

    def region(self, r: Region | None, args: list):
        if r is None:
            return None
        vals = dict(zip(r.args, args))
        return self.run_block(r.ops, vals)[0]

    def flash(self, op: Op, a: list):
        q, k, v = a[:3]
        from attncc.ir.core import flash_scale_count
        n_scales = flash_scale_count(op.attrs)
        captures = list(a[3 + n_scales:])
        if n_scales:
            scales = [np.asarray(x, self.fdt) for x in a[3:3 + n_scales]]
            q = np.asarray(q, np.float32).astype(self.fdt) * scales[0]
            k = np.asarray(k, np.float32).astype(self.fdt) * scales[1]
            if n_scales == 3:
                v = np.asarray(v, np.float32).astype(self.fdt) * scales[2]
        B, Hq, S, _ = q.shape
        Hkv, T = k.shape[1], k.shape[2]
        scale = eval_scalar(op.attrs.get("scale", 1.0), self.env)
        s = self.matmul(q, k, True, DType.f32) * self.fdt(scale)
        b = np.arange(B).reshape(B, 1, 1, 1)
        h = np.arange(Hq).reshape(1, Hq, 1, 1)
        i = np.arange(S).reshape(1, 1, S, 1)
        j = np.arange(T).reshape(1, 1, 1, T)
        score = op.region("score")
        if score is not None:
            s = np.broadcast_to(self.region(score, [s, b, h, i, j] + captures), s.shape)
        mask = op.region("mask")
        if mask is not None:
            keep = np.broadcast_to(self.region(mask, [b, h, i, j] + captures), s.shape)
            s = np.where(keep, s, -np.inf)
        vv = v
        if Hkv != Hq:
            vv = np.repeat(v, Hq // Hkv, axis=1)
        if self.p_round is not None:
            out, lse = _rounded_p_pv(s, vv, self.p_round, self.fdt)
        elif op.attrs.get("softmax") == "online":
            block_k = int(eval_scalar(op.attrs.get("block_k", 64), {**{"BK": 64}, **self.env}))
            out, lse = online_softmax_pv(s, vv, max(1, block_k), self.fdt)
        else:
            p, lse = softmax(s, -1)
            out = np.matmul(p, np.asarray(vv, self.fdt))
        out = self.round(out, op.results[0].type.dtype)
        self.lse.append(lse)
        if op.attrs.get("lse", False):
            return [out, lse]
        return out


QMAX = {DType.i8: 127.0, DType.f8e4m3: 448.0, DType.f8e5m2: 57344.0}


def quantize(x, dtype: DType, granularity: str = "tensor", block: int = 1):
    """(xq, scale): scale = amax / qmax per tensor, per (batch, head), or per block of
    ``block`` rows of each (batch, head) (stored per row, shape [B, H, S, 1]);
    xq = x / scale rounded to nearest (even) in ``dtype``.  Computed in float32."""
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x)
    if granularity == "tensor":
        amax = np.max(a, initial=0.0).reshape(1, 1, 1, 1)
    elif granularity == "head":
        amax = np.max(a, axis=(2, 3), keepdims=True, initial=0.0)
    else:
        row = np.max(a, axis=3, keepdims=True, initial=0.0)           # [B, H, S, 1]
        S = x.shape[2]
        nb = -(-S // block)
        pad = nb * block - S
        rp = np.concatenate([row, np.zeros(row.shape[:2] + (pad, 1), np.float32)], axis=2) if pad else row
        bmax = rp.reshape(row.shape[0], row.shape[1], nb, block).max(axis=3)   # [B, H, nb]
        amax = np.repeat(bmax, block, axis=2)[:, :, :S, None]
    qmax = np.float32(QMAX[dtype])
    scale = np.where(amax > 0, amax / qmax, np.float32(1.0)).astype(np.float32)
    y = np.clip(x / scale, -qmax, qmax)
    if dtype == DType.i8:
        xq = np.rint(y).astype(np.int8)
    else:
        xq = y.astype(dtype.numpy)
    return [xq, scale]


def softmax(x, axis: int = -1):
    """Softmax and log-sum-exp of a row; rows of all -inf give zeros and -inf."""
    with np.errstate(all="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        dead = np.isneginf(m)
        m_safe = np.where(dead, 0, m)
        e = np.exp(x - m_safe)
        ssum = np.sum(e, axis=axis, keepdims=True)
        out = np.where(dead, 0, e / np.where(dead, 1, ssum))
        lse = np.where(dead, -np.inf, m_safe + np.log(np.where(dead, 1, ssum)))
    return out.astype(x.dtype, copy=False), np.squeeze(lse, axis=axis)


def online_softmax_pv(s, v, block_k: int, fdt):
    """softmax(s) @ v by key blocks with a running max and sum (FlashAttention's
    online softmax), written plainly so the tiled form can be checked."""
    T = s.shape[-1]
    shape = s.shape[:-1]
    m = np.full(shape, -np.inf, dtype=fdt)
    l = np.zeros(shape, dtype=fdt)
    acc = np.zeros(shape + (v.shape[-1],), dtype=fdt)
    with np.errstate(all="ignore"):
        for j0 in range(0, T, block_k):
            sb = s[..., j0:j0 + block_k]
            m_new = np.maximum(m, np.max(sb, axis=-1))
            m_safe = np.where(np.isneginf(m_new), 0, m_new)
            alpha = np.where(np.isneginf(m), 0, np.exp(m - m_safe))
            p = np.exp(sb - m_safe[..., None])
            l = l * alpha + np.sum(p, axis=-1)
            acc = acc * alpha[..., None] + np.matmul(p, np.asarray(v[..., j0:j0 + block_k, :], fdt))
            m = m_new
        dead = l == 0
        out = np.where(dead[..., None], 0, acc / np.where(dead, 1, l)[..., None])
        lse = np.where(dead, -np.inf, np.where(np.isneginf(m), 0, m) + np.log(np.where(dead, 1, l)))
    return out.astype(fdt), lse


def _rounded_p_pv(s, v, p_dtype, fdt):
    """softmax(s) @ v with the unnormalised probabilities 2^8 exp(s - max) rounded to
    ``p_dtype`` before P·V and the row sum taken before rounding -- what a kernel with fp8
    P (FlashAttention-3's FP8 forward, attncc's wgmma kernel) computes."""
    with np.errstate(all="ignore"):
        m = np.max(s, axis=-1, keepdims=True)
        dead = np.isneginf(m)
        m_safe = np.where(dead, 0, m)
        p = np.exp(s - m_safe) * 256.0
        l = np.sum(p, axis=-1, keepdims=True)
        pr = np.asarray(p, np.float32).astype(p_dtype).astype(fdt)
        out = np.where(dead, 0, np.matmul(pr, np.asarray(v, fdt)) / np.where(dead, 1, l))
        lse = np.where(dead, -np.inf, m_safe + np.log(np.where(dead, 1, l / 256.0)))
    return out.astype(fdt), np.squeeze(lse, axis=-1)


def evaluate(func: Function, inputs: dict, precision: str = "float64", env: dict | None = None,
             p_round=None) -> Result:
    """Run ``func`` on numpy inputs (by argument name).  precision: "float64" (the
    oracle) or "native" (a naive kernel in the inputs' precision).  ``p_round`` (a numpy
    dtype): flash ops round P to it before P·V (a naive fp8-P kernel)."""
    dims = bind_dims(func, inputs)
    if env:
        dims = {**env, **dims}
    it = _Interp(dims, precision, p_round)
    vals = {a: it.input(inputs[a.hint], a.type) for a in func.args}
    outs = it.run_block(func.ops, vals)
    return Result([np.asarray(o) for o in outs], it.lse)


def random_inputs(func: Function, env: dict, seed: int = 0) -> dict:
    """Random inputs of the function's argument types for the dims in ``env``."""
    rng = np.random.default_rng(seed)
    out = {}
    for a in func.args:
        shape = a.type.concrete(env)
        dt = a.type.dtype
        if dt.is_float:
            out[a.hint] = rng.standard_normal(shape, dtype=np.float32).astype(dt.numpy)
        elif dt.is_bool:
            out[a.hint] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[a.hint] = rng.integers(-8, 8, shape).astype(dt.numpy)
    return out


def tolerance(reference64, naive, floor: float = 1e-5) -> float:
    """DESIGN.md's rule: 2 x (error of a naive kernel in the same precision) + a floor."""
    with np.errstate(all="ignore"):
        err = np.nanmax(np.abs(np.asarray(naive, np.float64) - np.asarray(reference64, np.float64)),
                        initial=0.0)
    return 2.0 * float(err) + floor


def max_error(got, reference64) -> float:
    g = np.asarray(got, np.float64)
    r = np.asarray(reference64, np.float64)
    if np.isnan(g).any() and not np.isnan(r).any():
        return float("inf")
    both_inf = np.isinf(g) & np.isinf(r) & (np.sign(g) == np.sign(r))
    with np.errstate(all="ignore"):
        d = np.where(both_inf, 0.0, np.abs(g - r))
    return float(np.nanmax(d, initial=0.0))
