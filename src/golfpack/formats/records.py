"""TensorRecord: one tensor as the packer stores it, the unit QGv3 serializes and loaders rebuild.

The dequantization rule here is THE rule: the writer, the reader, `verify` and the exported
standalone decoder all reconstruct with exactly this arithmetic, so "bit-for-bit what the packer
meant" is well defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from golfpack.formats.spec import TensorSpec

# torch dtype name (as in str(dtype) without "torch.") <-> torch dtype, for the dtypes we store.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in TORCH_DTYPES:
        raise ValueError(f"unsupported tensor dtype {name}")
    return name


@dataclass
class TensorRecord:
    """A stored tensor: integer levels + scales, or passthrough values."""

    name: str  # state-dict key
    shape: tuple[int, ...]  # original shape
    orig_dtype: str  # original torch dtype name ("float32", "bfloat16", ...); restored on load
    spec: TensorSpec  # what the policy asked for (bits/clip or passthrough dtype)
    q: np.ndarray | None = None  # int8 levels in [-qmax, qmax]; shape (rows, cols) per-row, (numel,) per-tensor
    scales: np.ndarray | None = None  # per-row: float16 (rows,); per-tensor: float32 (1,)
    data: np.ndarray | None = None  # passthrough values in their storage dtype (bf16 held as uint16 bits)

    @property
    def per_row(self) -> bool:
        return self.q is not None and self.q.ndim == 2

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def dequantize(self) -> torch.Tensor:
        """Rebuild the tensor the model loads: q * scale in fp32, cast to the original dtype."""
        out_dtype = TORCH_DTYPES[self.orig_dtype]
        if self.spec.kind == "int":
            assert self.q is not None and self.scales is not None
            q = torch.from_numpy(np.ascontiguousarray(self.q)).float()
            s = torch.from_numpy(np.ascontiguousarray(self.scales)).float()
            if self.per_row:
                w = q * s.view(-1, 1)
            else:
                w = q * float(s.reshape(-1)[0])
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
