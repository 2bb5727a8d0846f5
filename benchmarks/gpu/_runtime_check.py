"""What the export checks (check_fp8_export.py, check_small_export.py) share: a runtime
kernel's verify hook for compiler.verify, run on torch CUDA tensors (no TVM on the GPU machine)."""
import numpy as np
import torch


def to_cuda(a):
    """A numpy array (bfloat16 included, through its bits) as a torch CUDA tensor."""
    a = np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16).cuda()
    return torch.from_numpy(a).cuda()


def run_inputs_of(kernel):
    """``run_inputs(inputs) -> (out, lse)`` (numpy) of an attncc.runtime Kernel, for compiler.verify."""
    def run_inputs(inputs):
        out, lse = kernel(*[to_cuda(inputs[n]) for n in kernel.input_names])
        torch.cuda.synchronize()
        return out.float().cpu().numpy(), lse.cpu().numpy()

    return run_inputs
