__version__ = "0.1.0"


def compile(variant, target: str = "cpu", **options):
    """Compile ``variant`` (a path, a ``@variant`` function or unfused IR) and return a
    callable on framework tensors: ``out, lse = kernel(q, k, v, *captures)`` with torch,
    numpy, JAX or any DLPack arrays (an :class:`attncc.runtime.Kernel`, the same object
    ``attncc.runtime.load`` gives for an export; no files are written).  ``options`` are
    :func:`attncc.compiler.compile_variant`'s (``shapes``, ``dtype``, ``config``,
    ``quantize``, ``target_options={"arch": "sm_90a"}``, ...).  A simulated target
    (``systolic``) gives its :class:`attncc.compiler.CompiledKernel`, called on numpy arrays."""
    from attncc.compiler import compile_variant
    from attncc.export import runtime_kernel

    kernel = compile_variant(variant, target=target, **options)
    if getattr(kernel.target, "NOT_EXPORTABLE", None):
        # a simulated target (systolic): the CompiledKernel itself, numpy arrays in and out
        return kernel
    return runtime_kernel(kernel)
