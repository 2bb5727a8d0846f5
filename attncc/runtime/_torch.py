"""PyTorch: a ``torch.library`` custom op around a kernel, and the quantize prologue on
the tensors' own device."""

from __future__ import annotations

import threading

from attncc.errors import AttnccError

_QMAX = {"int8": 127.0, "float8_e4m3fn": 448.0, "float8_e5m2": 57344.0}


def quantize_torch(x, dtype: str, granularity: str = "tensor", block: int = 1):
    """(xq, scale) exactly as attncc.reference.quantize computes them, with torch ops on
    x's device: scale = amax / qmax per tensor, per (batch, head) or per block of rows
    (stored per row, [B, H, S, 1]); xq = x / scale rounded to nearest even."""
    import torch

    x = x.to(torch.float32)
    a = x.abs()
    if granularity == "tensor":
        amax = a.amax().reshape(1, 1, 1, 1) if a.numel() else torch.zeros(1, 1, 1, 1, device=x.device)
    elif granularity == "head":
        amax = a.amax(dim=(2, 3), keepdim=True)
    else:
        row = a.amax(dim=3, keepdim=True)                          # [B, H, S, 1]
        S = x.shape[2]
        nb = -(-S // block)
        pad = nb * block - S
        if pad:
            row = torch.cat([row, row.new_zeros(row.shape[0], row.shape[1], pad, 1)], dim=2)
        bmax = row.reshape(row.shape[0], row.shape[1], nb, block).amax(dim=3)
        amax = bmax.repeat_interleave(block, dim=2)[:, :, :S, None]
    qmax = torch.tensor(_QMAX[dtype], dtype=torch.float32, device=x.device)
    scale = torch.where(amax > 0, amax / qmax, torch.ones((), dtype=torch.float32, device=x.device))
    y = torch.clamp(x / scale, -qmax, qmax)
    if dtype == "int8":
        xq = torch.round(y).to(torch.int8)
    else:
        xq = y.to(getattr(torch, dtype))
    return [xq.contiguous(), scale.contiguous()]


_registry: dict = {}
_lock = threading.Lock()


class OpError(AttnccError):
    """A custom op cannot be registered or differentiated."""


def torch_op(kernel, name: str):
    """Register ``kernel`` as the custom op ``name`` ("namespace::op") and return it.

    The op takes the kernel's inputs (``q, k, v[, captures]``) and returns ``(out, lse)``.
    It has a fake (meta) implementation, so ``torch.compile`` and ``torch.export`` treat it
    as one opaque node, and an autograd rule that says it is not differentiable: a
    backward through it raises :class:`OpError`.  Registering the same name again with the
    same kernel returns the existing op.
    """
    import torch

    if "::" not in name:
        raise OpError(f"op name '{name}' must be 'namespace::name' (e.g. 'mylib::sliding_window')")
    ns, op_name = name.split("::", 1)
    if not (ns.isidentifier() and op_name.isidentifier()):
        raise OpError(f"op name '{name}': namespace and name must be Python identifiers")
    key = (kernel.manifest["fingerprint"], kernel.manifest["dims"].__repr__(), kernel.manifest["target"]["kind"],
           kernel.manifest["dtype"])
    with _lock:
        if name in _registry:
            old_key, op, _lib = _registry[name]
            if old_key == key:
                return op
            raise OpError(f"a different kernel is already registered as {name}; choose another name")

        arg_names = kernel.input_names
        schema = "(" + ", ".join(f"Tensor {n}" for n in arg_names) + ") -> (Tensor, Tensor)"
        lib = torch.library.Library(ns, "FRAGMENT")
        lib.define(op_name + schema)
        outs = kernel.outputs

        def impl(*args):
            return kernel(*args)

        def fake(*args):
            dev = args[0].device
            return tuple(torch.empty(o.shape, dtype=o.torch_dtype, device=dev) for o in outs)

        # one implementation for every backend: the kernel's own checks give the clear error
        # for a wrong device (a plain missing-kernel error from the dispatcher otherwise)
        lib.impl(op_name, impl, "CompositeExplicitAutograd")
        torch.library.register_fake(name, fake, lib=lib)

        def setup_context(ctx, inputs, output):
            pass

        def backward(ctx, *grads):
            raise OpError(f"{name} (attncc kernel '{kernel.name}') is not differentiable: attncc has no "
                          "backward pass yet; call it under torch.no_grad() or on detached tensors",
                          variant=kernel.name)

        torch.library.register_autograd(name, backward, setup_context=setup_context, lib=lib)
        op = getattr(getattr(torch.ops, ns), op_name)
        _registry[name] = (key, op, lib)         # the registration lives as long as lib does
        return op
