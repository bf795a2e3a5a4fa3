"""TensorRecord: one tensor as the packer stores it, the unit QGv3 serializes and loaders rebuild.

The dequantization rule here is THE rule: the writer, the reader, `verify` and the exported
standalone decoder all reconstruct with exactly this arithmetic, so "bit-for-bit what the packer
meant" is well defined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from golfpack.errors import UsageError
from golfpack.formats.qgv3_constants import (
    OUTLIER_ENTRY,
    PASS_STORAGE,
    SCALES_PER_ROW,
    SCALES_PER_TENSOR,
    STORAGE_DTYPES,
    TENSOR_DTYPES,
    outlier_count,
)
from golfpack.formats.spec import LQER_BITS, TensorSpec

# torch dtype name (as in str(dtype) without "torch.") <-> torch dtype, for the dtypes we store.
TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in TENSOR_DTYPES}


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in TORCH_DTYPES:
        raise UsageError(f"unsupported tensor dtype {name}", param="dtype")
    return name


def _itemsize(storage_dtype: str) -> int:
    return int(STORAGE_DTYPES[storage_dtype][-1])  # "<f2" -> 2, "u1" -> 1


def payload_bytes(spec: TensorSpec, shape: Sequence[int], dtype: str) -> float:
    """Bytes one tensor costs before entropy coding: THE pre-compression size.

    int specs: bit-packed levels (bits/8 per value) + scales (one fp16 per row for a 2-D tensor, else
    one fp32; group-wise rows x ceil(cols / g) fp16, or with k-bit sub-scales one fp16 a row + k bits a group;
    +out<k>: 6 bytes per outlier);
    passthrough: the values in their storage dtype (`exact`: the original `dtype`).
    It is the DENSE layout's size; a byte-per-level stream (QGv3Artifact.raw_sizes) can be larger."""
    numel = math.prod(int(d) for d in shape)
    if spec.kind == "int":
        if len(shape) == 2:
            per_row = -(-int(shape[1]) // spec.group) if spec.group else 1  # group-wise: ceil(cols / group) scales a row
            if spec.subscale:  # one fp16 row scale + a k-bit sub-scale per group
                scales = int(shape[0]) * (_itemsize(SCALES_PER_ROW) + per_row * spec.subscale / 8)
            else:
                scales = int(shape[0]) * per_row * _itemsize(SCALES_PER_ROW)
        else:
            scales = _itemsize(SCALES_PER_TENSOR)
        rows, cols = (int(shape[0]), int(shape[1])) if len(shape) == 2 else (0, 0)
        extra = lqer_payload_bytes(min(spec.lqer, rows, cols), LQER_BITS, rows, cols) if spec.lqer else 0.0  # the packer clamps r
        extra += outlier_count(numel, spec.outliers) * OUTLIER_ENTRY.size  # (index delta, fp16) pairs
        return numel * spec.bits / 8 + scales + extra
    storage = PASS_STORAGE.get(spec.dtype, dtype)
    if storage not in STORAGE_DTYPES:
        raise UsageError(f"unsupported tensor dtype {dtype!r}", param="dtype")
    return float(numel * _itemsize(storage))


def lqer_payload_bytes(rank: int, bits: int, rows: int, cols: int) -> float:
    """Bytes of a rank-`rank` LQER correction before entropy coding: r (rows + cols) levels at `bits` + 2r fp16 scales."""
    return rank * (rows + cols) * bits / 8 + 2 * rank * _itemsize(SCALES_PER_ROW)


def lqer_apply(w: torch.Tensor, q: np.ndarray, scales: np.ndarray, rank: int) -> torch.Tensor:
    """THE LQER arithmetic (docs/qgv3.md 8b): w (rows, cols) fp32 + sum_k a_k b_k^T, added to w in order k = 0..r-1.

    q: r (rows + cols) int8 factor levels, A^T (r, rows) then B (r, cols), row-major; scales: 2r fp16, one per
    row of A^T then of B. Factor k is levels * scale in fp32; each step is one fp32 multiply and one fp32 add per
    element (no matmul: a BLAS may sum in any order, this gives the same bits on every machine)."""
    rows = w.shape[0]
    lv = torch.from_numpy(np.ascontiguousarray(q).reshape(-1).astype(np.float32))
    s = torch.from_numpy(np.ascontiguousarray(scales).reshape(-1).astype(np.float32))
    a = lv[: rank * rows].view(rank, rows) * s[:rank, None]
    b = lv[rank * rows :].view(rank, -1) * s[rank:, None]
    for k in range(rank):
        w = w + a[k, :, None] * b[k]
    return w


@dataclass
class TensorRecord:
    """A stored tensor: integer levels + scales, or passthrough values."""

    name: str  # state-dict key
    shape: tuple[int, ...]  # original shape
    orig_dtype: str  # original torch dtype name ("float32", "bfloat16", ...); restored on load
    spec: TensorSpec  # what the policy asked for (bits/clip or passthrough dtype)
    q: np.ndarray | None = None  # int8 levels in [-qmax, qmax]; shape (rows, cols) per-row, (numel,) per-tensor
    scales: np.ndarray | None = None  # per-row: float16 (rows,); group-wise: float16 (rows, ceil(cols/group)); per-tensor: float32 (1,)
    data: np.ndarray | None = None  # passthrough values in their storage dtype (bf16 held as uint16 bits)
    lqer_q: np.ndarray | None = None  # spec.lqer: int8 factor levels, flat r (rows + cols): A^T (r, rows) then B (r, cols)
    lqer_scales: np.ndarray | None = None  # spec.lqer: float16 (2r,): one per row of A^T, then one per row of B
    lqer_bits: int = LQER_BITS  # spec.lqer: the factor levels' integer width (levels in +-qmax(lqer_bits))
    # spec.subscale: uint8 (rows, ceil(cols/group)) sub-scales in 1..2^k-1; the group scale is scales[r] * subscales[r, g]
    subscales: np.ndarray | None = None
    outlier_idx: np.ndarray | None = None  # spec.outliers: int64 strictly increasing flat indices (outlier_count of them)
    outlier_vals: np.ndarray | None = None  # spec.outliers: float16 values put at those indices in place of the dequantized ones

    @property
    def per_row(self) -> bool:
        return self.q is not None and self.q.ndim == 2

    @property
    def grouped(self) -> bool:
        """Group-wise scales: a 2-D int tensor whose spec has a group (scales (rows, ceil(cols / group)))."""
        return self.per_row and self.spec.group > 0

    @property
    def n_scales(self) -> int:
        """How many fp16/fp32 scales this int record must have: rows x groups, rows (per row, or with sub-scales), or 1."""
        assert self.q is not None
        if not self.per_row:
            return 1
        rows, cols = self.q.shape
        return rows * (-(-cols // self.spec.group) if self.spec.group and not self.spec.subscale else 1)

    @property
    def sub_quantized(self) -> bool:
        """Quantized sub-scales: a group-wise record whose spec has `s<k>` (scales (rows,), subscales (rows, groups))."""
        return self.grouped and self.spec.subscale > 0

    def group_scales(self) -> torch.Tensor:
        """The fp32 (rows, groups) scales a grouped record dequantizes with: the fp16 scales, or with sub-scales
        float32(row scale) * float32(sub-scale) (exact in fp32: 11 x 8 significant bits)."""
        assert self.scales is not None and self.q is not None
        s = torch.from_numpy(np.ascontiguousarray(self.scales)).float()
        if not self.sub_quantized:
            return s.view(self.q.shape[0], -1)
        assert self.subscales is not None
        sub = torch.from_numpy(np.ascontiguousarray(self.subscales).astype(np.float32)).view(self.q.shape[0], -1)
        return s.view(-1, 1) * sub

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def payload_bytes(self) -> float:
        """`payload_bytes(spec, shape, orig_dtype)`: this record's size before entropy coding."""
        if self.spec.lqer and self.per_row and self.lqer_bits != LQER_BITS:  # a factor width the spec's default does not say
            base = payload_bytes(replace(self.spec, lqer=0), self.shape, self.orig_dtype)
            return base + lqer_payload_bytes(self.spec.lqer, self.lqer_bits, *self.shape)
        return payload_bytes(self.spec, self.shape, self.orig_dtype)

    def dequantize(self) -> torch.Tensor:
        """Rebuild the tensor the model loads: q * scale in fp32, cast to the original dtype."""
        out_dtype = TORCH_DTYPES[self.orig_dtype]
        if self.spec.kind == "int":
            assert self.q is not None and self.scales is not None
            q = torch.from_numpy(np.ascontiguousarray(self.q)).float()
            s = torch.from_numpy(np.ascontiguousarray(self.scales)).float()
            if self.grouped:  # w[r, c] = q[r, c] * scale[r, c // group]
                cols = q.shape[1]
                w = q * self.group_scales().repeat_interleave(self.spec.group, dim=1)[:, :cols]
            elif self.per_row:
                w = q * s.view(-1, 1)
            else:
                w = q * float(s.reshape(-1)[0])
            if self.spec.lqer and self.per_row:  # + A @ B in fp32, before the one cast (lqer_apply)
                assert self.lqer_q is not None and self.lqer_scales is not None
                w = lqer_apply(w, self.lqer_q, self.lqer_scales, self.spec.lqer)
            if self.spec.outliers:  # w.flat[idx] = float32(fp16 value), before the one cast (docs/qgv3.md 8d)
                assert self.outlier_idx is not None and self.outlier_vals is not None
                w = w.reshape(-1).clone()
                idx = torch.from_numpy(np.ascontiguousarray(self.outlier_idx).astype(np.int64).reshape(-1))
                w[idx] = torch.from_numpy(np.ascontiguousarray(self.outlier_vals).reshape(-1).astype(np.float32))
            return w.to(out_dtype).reshape(self.shape).contiguous()
        assert self.data is not None
        arr = np.ascontiguousarray(self.data)
        if self.spec.dtype == "bf16":
            t = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        elif arr.dtype == np.uint16 and self.orig_dtype == "bfloat16":  # exact passthrough of bf16
            t = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(arr)
        return t.to(out_dtype).reshape(self.shape).contiguous()
