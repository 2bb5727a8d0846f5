"""JAX: a kernel inside jitted JAX code.

``jax_function(kernel)`` returns ``f(q, k, v, *captures) -> (out, lse)`` usable under
``jax.jit``.  It is a ``jax.pure_callback``: XLA hands the callback host (numpy) views of
the operands, the kernel runs on them through DLPack, and the outputs go back to XLA.
That is the CPU path (on a GPU the callback would copy through the host).  Outside jit,
calling the kernel directly with JAX arrays (``kernel(q, k, v)``) reads them through
DLPack without a copy and returns JAX arrays.

Not used: ``jax.ffi`` (an XLA custom call).  The exported module's ``main`` speaks the
tvm-ffi calling convention, not XLA's FFI; a custom call would need a small compiled
shim per kernel, which the runtime does not build.
"""

from __future__ import annotations

import numpy as np


def jax_function(kernel):
    import jax

    outs = [jax.ShapeDtypeStruct(o.shape, o.np_dtype) for o in kernel.outputs]

    def host(*arrays):
        out, lse = kernel(*[np.asarray(a) for a in arrays])
        return np.asarray(out), np.asarray(lse)

    def f(*args):
        from attncc.runtime._kernel import ArgumentError

        if len(args) != len(kernel.inputs):
            raise ArgumentError(f"the kernel takes {len(kernel.inputs)} input(s) ({', '.join(kernel.input_names)}), "
                                f"got {len(args)}", variant=kernel.name)
        for a, spec in zip(args, kernel.inputs):     # checked while tracing, before XLA runs anything
            if tuple(a.shape) != spec.shape or np.dtype(a.dtype) != spec.np_dtype:
                raise ArgumentError(f"input {spec.name} is {np.dtype(a.dtype).name}{list(a.shape)}, the kernel "
                                    f"was built for {spec.dtype}{list(spec.shape)}", variant=kernel.name)
        return tuple(jax.pure_callback(host, tuple(outs), *args, vmap_method="sequential"))

    f.__name__ = f"attncc_{kernel.name}"
    f.__doc__ = f"attncc kernel {kernel.name} as a JAX function (jax.pure_callback)"
    return f
