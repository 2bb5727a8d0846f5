"""Argument layouts a kernel reads that differ from the variant's own (host-side prologue
steps, without TVM): the fp8 P·V kernel of the Hopper target reads V transposed and
key-permuted so that the Q·Kᵀ accumulator fragment *is* the fp8 A fragment of P (no
shuffles in the kernel; attncc/targets/_cuda_wgmma_sparse.py describes the fragments)."""

from __future__ import annotations

import numpy as np

FP8_V = "fp8_v_transposed"     # the manifest's name of the layout below


def padded_kv_len(kv_len: int) -> int:
    """Keys of the transposed fp8 V (a multiple of 32)."""
    return -(-kv_len // 32) * 32


def v_key_permutation(kv_len: int) -> np.ndarray:
    """Position p of the transposed fp8 V holds key ``perm[p]``: inside each group of 32,
    position 16 hi + 4 c + e holds key 8 (2 hi + e // 2) + 2 c + e % 2 -- the key that the
    wgmma accumulator puts at byte e of register hi of lane-in-quad c (see the P fragment)."""
    p = np.arange(padded_kv_len(kv_len))
    g, r = p // 32, p % 32
    hi, c, e = r // 16, r % 16 // 4, r % 4
    return g * 32 + 8 * (2 * hi + e // 2) + 2 * c + e % 2


def fp8_v_layout(v) -> np.ndarray:
    """v [B, H, T, Dv] -> [B, H, Dv, T32] (T rounded up to 32, zero padded), keys permuted by
    ``v_key_permutation``: numpy arrays (ml_dtypes fp8) or, on the tensor's device, torch tensors."""
    if type(v).__module__.startswith("torch"):
        import torch

        T = v.shape[2]
        T32 = padded_kv_len(T)
        if T32 != T:
            v = torch.cat([v, v.new_zeros(v.shape[:2] + (T32 - T, v.shape[3]))], dim=2)
        idx = torch.as_tensor(v_key_permutation(T), device=v.device)
        # (fp8 tensors take index_select through a uint8 view)
        u = v.view(torch.uint8).index_select(2, idx).transpose(2, 3).contiguous()
        return u.view(v.dtype)
    v = np.asarray(v)
    T = v.shape[2]
    T32 = padded_kv_len(T)
    if T32 != T:
        pad = np.zeros(v.shape[:2] + (T32 - T, v.shape[3]), dtype=v.dtype)
        v = np.concatenate([v, pad], axis=2)
    return np.ascontiguousarray(np.swapaxes(v[:, :, v_key_permutation(T), :], 2, 3))
