"""What the GPU flash-attention kernels share, whatever their matrix instructions.

The CUDA kernel (``cuda.py``: mma.sync) and the ROCm kernel (``rocm.py``: MFMA / WMMA)
walk the same tiling: one work-group per (batch * head, query block), query blocks
heaviest first, each warp / wavefront owning ``rows_per_warp`` query rows, a serial loop
over key blocks with online softmax in base 2.  What they share lives here, as plain
functions that build TVM expressions:

* ``validate_spec``: the shapes and dtypes a tensor-core kernel takes;
* ``FlashIndexing``: the key range (``key_bounds`` trimmed to what any pair reaches), the
  key-block bounds of a query block (key-block skipping), whether a (rows, key block)
  tile can drop the element mask, the element mask itself (``keep``), score_mod with the
  scale and log2(e) (folded into the exponent when there is no score_mod), and the GQA
  head mapping (query head ``h`` reads kv head ``h // group``);
* table mode (masks that are no band): ``use_block_table``, ``tile_map_argument`` (the int32
  [NQB, NKB] kernel argument after ``lse``) and ``row_list_macro`` (warp/wavefront 0 compacts the
  query block's row with the target's ballot, a barrier, every thread reads the count);
* quantized inputs: ``scale_reader`` and ``score_functions`` (the q/k scales folded into the
  scores before score_mod and the mask).

Where the kernels differ (fragment layouts, shuffles, copies, the matrix instruction)
stays in the target's file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attncc.errors import DTypeError, TargetError
from attncc.targets.spec import FlashKernelSpec

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
TENSOR_CORE_DTYPES = ("float16", "bfloat16")


def validate_spec(spec: FlashKernelSpec, target: str, unit: str = "tensor cores",
                  dtypes=TENSOR_CORE_DTYPES, captures_ok: bool = False) -> None:
    """Refuse, with the reason, a spec that a GPU flash kernel of ``target`` cannot build."""
    if spec.dtype not in dtypes:
        raise DTypeError(f"{target} target: dtype {spec.dtype!r} is not supported; {unit} take "
                         f"{' or '.join(dtypes)} (trace the variant with dtype f16 or bf16)",
                         variant=spec.name or None)
    for name in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim", "head_dim_v"):
        value = getattr(spec, name)
        if not isinstance(value, int) or value <= 0:
            raise TargetError(f"{target} target: {name} must be a positive integer, got {value!r}",
                              variant=spec.name or None)
    if spec.q_heads % spec.kv_heads:
        raise TargetError(f"{target} target: q_heads ({spec.q_heads}) must be a multiple of kv_heads "
                          f"({spec.kv_heads})", variant=spec.name or None)
    captures = getattr(spec, "captures", ())
    if captures and not captures_ok:
        names = ", ".join(str(c[0]) for c in captures)
        label = {"cuda": "CUDA", "rocm": "ROCm"}.get(target, target)
        raise TargetError(f"{target} target: score/mask read runtime tensors ({names}); captured inputs are "
                          f"not supported by the {label} kernel yet", variant=spec.name or None)


def dtype_of(expr) -> str:
    ty = getattr(expr, "ty", None)
    if ty is not None and hasattr(ty, "dtype"):
        return str(ty.dtype)
    return str(expr.dtype)


def as_bool(expr):
    from tvm import tirx
    from tvm.ir import Expr as PrimExpr

    if isinstance(expr, (bool, np.bool_)):
        return tirx.const(bool(expr), "bool")
    if isinstance(expr, PrimExpr) and not dtype_of(expr).startswith("bool"):
        return tirx.NE(expr, tirx.const(0, dtype_of(expr)))
    return expr


def as_f32(expr):
    from tvm import tirx

    if isinstance(expr, (int, float, np.floating, np.integer)):
        return tirx.const(float(expr), "float32")
    if dtype_of(expr) != "float32":
        return tirx.Cast("float32", expr)
    return expr


def reads_memory(expr) -> bool:
    """True when the TIR expression loads from global memory (a captured tensor: document ids).
    Loads of the kernel's local values (lane, row, key block: registers) do not count."""
    from tvm.ir.expr import Expr, TensorLoad      # ``buffer[index]`` builds a TensorLoad in TVM 0.27

    if isinstance(expr, TensorLoad):
        scope = getattr(expr.source, "scope", None)
        return scope is None or scope() == "global" or any(reads_memory(i) for i in expr.indices)
    for field in ("a", "b", "value", "condition", "true_value", "false_value"):
        sub = getattr(expr, field, None)
        if isinstance(sub, Expr) and reads_memory(sub):
            return True
    args = getattr(expr, "args", None)
    return bool(args) and any(isinstance(a, Expr) and reads_memory(a) for a in args)


def eager_logic(expr):
    """``a && b`` / ``a || b`` over conditions that load from memory, rewritten as bitwise
    and/or of 0/1 integers.  CUDA C's ``&&`` does not evaluate its right side when the left
    is false, so a mask like ``kv <= q && doc[q] == doc[kv]`` became a branch per element
    around each gather: the 64 loads of a thread's score tile were issued one after another
    (each waiting for the branch) instead of all together.  The kernels clamp every index of a
    captured tensor, so evaluating both sides is always safe.  Conditions that read no memory
    are returned unchanged (nvcc predicates them already; their generated code stays the same)."""
    from tvm import tirx

    if not reads_memory(expr):
        return expr
    if isinstance(expr, (tirx.And, tirx.Or)):
        a, b = (tirx.Cast("int32", eager_logic(x)) for x in (expr.a, expr.b))
        op = tirx.bitwise_and if isinstance(expr, tirx.And) else tirx.bitwise_or
        return tirx.NE(op(a, b), tirx.const(0, "int32"))
    if isinstance(expr, tirx.Not):
        return tirx.EQ(tirx.Cast("int32", eager_logic(expr.a)), tirx.const(0, "int32"))
    return expr


def copy_out_macro(bq: int, cv: int, nt: int, s_len: int, o_off, within):
    """``copy_out(off, q0, smem, out, tx, b, h)`` of the CUDA flash kernels: the output tile staged
    in shared memory at ``off`` (``o_off(row, chunk)``: its swizzled 16-byte chunks) copied to
    ``out[b, h, q0 + row, :]`` 16 bytes a thread, rows below ``s_len`` only."""
    from tvm.script import tirx as T

    BQ, CV, NT, S = bq, cv, nt, s_len
    O_ITERS = -(-(BQ * CV) // NT)

    @T.macro
    def copy_out(off, q0, smem, out, tx, b, h):
        for it in T.unroll(O_ITERS):
            if within(BQ * CV, it * NT + tx):
                if q0 + (it * NT + tx) // CV < S:
                    for e in T.vectorized(8):
                        out[b, h, q0 + (it * NT + tx) // CV, (it * NT + tx) % CV * 8 + e] = \
                            smem[off + o_off((it * NT + tx) // CV, (it * NT + tx) % CV) + e]

    return copy_out


def _all(conds):
    from tvm import tirx

    if not conds:
        return tirx.const(True, "bool")
    out = conds[0]
    for cnd in conds[1:]:
        out = tirx.And(out, cnd)
    return eager_logic(out)


@dataclass(frozen=True)
class FlashIndexing:
    """Index arithmetic and score/mask lowering of a tiled flash kernel (block_q query rows
    per work-group, block_k keys per key block, rows_per_warp rows per warp/wavefront).

    Scores travel in log2 units: ``scaled`` gives score_mod(scale * acc) * log2(e); without
    score_mod the scale is applied later (``to_log2`` on the row max, ``exp_arg`` fused
    into the exponent), since max commutes with a positive scale."""

    spec: FlashKernelSpec
    block_q: int
    block_k: int
    rows_per_warp: int
    # TIR buffers of the captured inputs (kernel parameters after q, k, v, out, lse), passed to
    # score_mod / mask_mod after the index arguments
    captures: tuple = ()
    # the kernel evaluates score_mod / mask_mod only at rows < q_len (keys < kv_len): true where
    # block_q divides q_len (block_k divides kv_len), every row (key) of every block being real.
    # A captured tensor whose index is then proven in range is read without a clamp
    # (lowering.with_indices, the CPU kernel's mechanism) -- one load at a constant offset per
    # element instead of index, clamp and address arithmetic (document ids in partial tiles)
    rows_in_range: bool = False
    keys_in_range: bool = False

    # ---- the key range
    @property
    def q_blocks(self) -> int:
        return (self.spec.q_len + self.block_q - 1) // self.block_q

    @property
    def k_blocks(self) -> int:
        return (self.spec.kv_len + self.block_k - 1) // self.block_k

    @property
    def lower_offset(self):
        """key_bounds' lower offset, None when no (query, key) pair can reach it."""
        lo = self.spec.key_bounds.lower_offset
        return None if lo is not None and lo <= -(self.spec.q_len - 1) else lo

    @property
    def upper_offset(self):
        up = self.spec.key_bounds.upper_offset
        return None if up is not None and up >= self.spec.kv_len - 1 else up

    @property
    def band_is_mask(self) -> bool:
        return self.spec.mask_mod is None or self.spec.key_bounds.exact

    @property
    def fold_scale(self) -> bool:
        return self.spec.score_mod is None

    def kv_head(self, h):
        """GQA/MQA: the kv head query head ``h`` reads."""
        return h // self.spec.group

    # ---- score_mod and the element mask
    def _with_indices(self, fn, lead, i, j):
        """``fn(*lead, i, j, *captures)``, its gathers unclamped where the indices are in range
        (``lowering.with_indices``, as the CPU kernel)."""
        from attncc.targets.lowering import with_indices

        return with_indices(fn, lead, i, j, self.captures, self.spec.q_len if self.rows_in_range else None,
                            self.spec.kv_len if self.keys_in_range else None)

    def scaled(self, acc, b, h, i, j):
        from tvm import tirx

        if self.fold_scale:
            return acc
        s = as_f32(self._with_indices(self.spec.score_mod,
                                      (acc * tirx.const(float(self.spec.scale), "float32"), b, h), i, j))
        return s * tirx.const(LOG2E, "float32")

    def to_log2(self, x):
        """Raw row max -> log2 units (see scaled)."""
        from tvm import tirx

        if self.fold_scale:
            return x * tirx.const(float(self.spec.scale) * LOG2E, "float32")
        return x

    def exp_arg(self, s, m):
        from tvm import tirx

        if self.fold_scale:
            return s * tirx.const(float(self.spec.scale) * LOG2E, "float32") - m
        return s - m

    def keep(self, b, h, i, j):
        conds = []
        if self.k_blocks * self.block_k != self.spec.kv_len:
            conds.append(j < self.spec.kv_len)
        if self.lower_offset is not None:
            conds.append(j >= i + self.lower_offset)
        if self.upper_offset is not None:
            conds.append(j <= i + self.upper_offset)
        if self.spec.mask_mod is not None and not self.spec.key_bounds.exact:
            # (an exact band IS the mask: its two comparisons above replace the mask's own,
            # which would repeat them per element)
            conds.append(as_bool(self._with_indices(self.spec.mask_mod, (b, h), i, j)))
        return _all(conds)

    def masked(self, acc, b, h, i, j):
        from tvm import tirx

        return tirx.Select(self.keep(b, h, i, j), self.scaled(acc, b, h, i, j),
                           tirx.const(float("-inf"), "float32"))

    # ---- key-block skipping
    def block_lo(self, q0):
        """First key block any row of the query block starting at q0 keeps."""
        from tvm import tirx

        if self.lower_offset is None:
            return tirx.const(0, "int32")
        return tirx.floordiv(tirx.max(q0 + self.lower_offset, 0), self.block_k)

    def block_hi(self, q0):
        """One past the last key block any row of the query block starting at q0 keeps."""
        from tvm import tirx

        q_last = tirx.min(q0 + (self.block_q - 1), self.spec.q_len - 1)
        if self.upper_offset is None:
            return tirx.const(self.k_blocks, "int32")
        return tirx.max(tirx.floordiv(tirx.min(q_last + self.upper_offset, self.spec.kv_len - 1),
                                      self.block_k) + 1, self.block_lo(q0))

    def entry_is_full(self, entry, kb):
        """Table mode: whether list entry ``entry`` (key block * 2 + full, from the tile map) lets
        key block ``kb`` skip the element mask -- never the ragged last block (keys past kv_len)."""
        from tvm import tirx

        full = tirx.EQ(tirx.bitwise_and(entry, 1), 1)
        if self.k_blocks * self.block_k != self.spec.kv_len:
            return tirx.And(full, kb * self.block_k + self.block_k <= self.spec.kv_len)
        return full

    def tile_is_full(self, r0, kb):
        """True when no element of rows r0 .. r0+rows_per_warp-1 x key block kb needs the mask."""
        from tvm import tirx

        if not self.band_is_mask:
            return tirx.const(False, "bool")
        r_last = r0 + (self.rows_per_warp - 1)
        j0 = kb * self.block_k
        conds = []
        if self.k_blocks * self.block_k != self.spec.kv_len:
            conds.append(j0 + self.block_k <= self.spec.kv_len)
        if self.lower_offset is not None:
            conds.append(j0 >= r_last + self.lower_offset)
        if self.upper_offset is not None:
            conds.append(j0 + (self.block_k - 1) <= r0 + self.upper_offset)
        return _all(conds)


# --------------------------------------------------------------------------- table mode and quantization
# (what the CUDA kernels -- mma.sync and both wgmma kernels -- and the ROCm kernel share)


def use_block_table(spec: FlashKernelSpec) -> bool:
    """True when the kernel iterates a tile map (the mask is not one band): table mode."""
    if spec.mask_mod is None or spec.key_bounds.exact:
        return False
    return spec.tile_map is not None or spec.runtime_tile_map is not None


def tile_map_argument(spec: FlashKernelSpec, block_q: int, block_k: int, tiles=None):
    """The table-mode kernel argument: the tile map [NQB, NKB] as contiguous int32 (0 empty,
    1 partial, 2 full); ``tiles`` None: prune-sparsity's map of the spec."""
    if tiles is None:
        tiles = spec.tile_map(block_q, block_k)
    out = np.ascontiguousarray(np.asarray(tiles, dtype=np.int32))
    want = (-(-spec.q_len // block_q), -(-spec.kv_len // block_k))
    if out.shape != want:
        raise TargetError(f"tile map has shape {out.shape}, the kernel's {block_q}x{block_k} tiles need {want}",
                          variant=spec.name or None)
    return out


def row_list_macro(compact_row, nkb: int):
    """Table mode's prologue step of the GPU kernels: ``row_list(qb, cnt, tvs, kv_list, warp,
    lane)``: warp (wavefront) 0 compacts row ``qb`` of the tile map into ``kv_list``
    (``compact_row``: the target's ballot), a barrier, then every thread holds the count in
    ``cnt[0]`` (a shared load cannot bound a loop)."""
    from tvm.script import tirx as T

    NKB = nkb

    @T.macro
    def row_list(qb, cnt, tvs, kv_list, warp, lane):
        if warp == 0:
            compact_row(qb, 0, cnt, tvs, kv_list, lane)
        T.tvm_storage_sync("shared")
        cnt[0] = kv_list[NKB]

    return row_list


def scale_reader(scale_buffers):
    """``scale_at(which, b, head, row)``: the f32 scale of q (0), k (1) or v (2) at (batch, head,
    row), from the scale buffers of shapes [B|1, H|1, rows|1, 1] (the quantize pass)."""
    from tvm import tirx

    def scale_at(which, bi, head, row):
        buf = scale_buffers[which]
        shp = [int(x) for x in buf.shape]
        return buf[bi if shp[0] > 1 else 0, head if shp[1] > 1 else 0,
                   tirx.min(row, shp[2] - 1) if shp[2] > 1 else 0, 0]

    return scale_at


def score_functions(ix, quant: bool, k_per_key: bool, scale_at, group: int, p_shift=None):
    """``(scaled, to_log2, exp_arg, masked)``: FlashIndexing's score_mod, scale folding and element
    mask (``ix``), plus the fused dequantization of quantized q/k -- ``row_fold[r]`` is the q scale
    of the thread's row r (x the k scale per head, x scale * log2 e where it folds), a per-key k
    scale multiplies each score -- and (``p_shift``: the CUDA kernels' fp8 P) a shift of the
    exponent.  Each takes the thread's row slot ``r`` and the ``row_fold`` buffer after
    FlashIndexing's arguments."""
    from tvm import tirx

    fold = ix.fold_scale
    shift = tirx.const(p_shift, "float32") if p_shift is not None else None

    def scaled(acc, b, h, i, j, r, row_fold):
        if k_per_key:
            acc = acc * scale_at(1, b, h // group, j)
        if quant and not fold:
            acc = acc * row_fold[r]
        return ix.scaled(acc, b, h, i, j)

    def to_log2(x, r, row_fold):
        return x * row_fold[r] if quant and fold else ix.to_log2(x)

    def exp_arg(s, m, r, row_fold):
        out = s * row_fold[r] - m if quant and fold else ix.exp_arg(s, m)
        return out + shift if shift is not None else out

    def masked(acc, b, h, i, j, r, row_fold):
        return tirx.Select(ix.keep(b, h, i, j), scaled(acc, b, h, i, j, r, row_fold),
                           tirx.const(float("-inf"), "float32"))

    return scaled, to_log2, exp_arg, masked
