"""records.payload_bytes: THE pre-compression size of one tensor, pinned by hand and against real records."""

from __future__ import annotations

import pytest
import torch

from golfpack.errors import UsageError
from golfpack.formats.records import payload_bytes
from golfpack.formats.spec import TensorSpec
from golfpack.packer.quantize import quantize_tensor


@pytest.mark.parametrize("spec,shape,dtype,want", [
    ("int6", (64, 96), "float32", 64 * 96 * 6 / 8 + 64 * 2),  # per-row fp16 scales
    ("int5:mse", (3, 5, 7), "float32", 105 * 5 / 8 + 4),  # one fp32 scale
    ("int4", (10,), "bfloat16", 10 * 4 / 8 + 4),
    ("int8+gptq", (0, 16), "float32", 0.0),  # no rows, no scales
    ("fp16", (33,), "float32", 66.0),
    ("bf16", (9, 3), "float32", 54.0),
    ("fp32", (), "float16", 4.0),  # a scalar is one element
    ("exact", (13,), "int64", 104.0),
    ("exact", (10,), "bool", 10.0),
    ("exact", (4, 4), "bfloat16", 32.0),
])
def test_payload_bytes_by_hand(spec: str, shape: tuple, dtype: str, want: float) -> None:
    assert payload_bytes(TensorSpec.parse(spec), shape, dtype) == want


def test_payload_bytes_matches_records() -> None:
    """The record method agrees with the levels, scales and data a record really holds."""
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randn(24, 40, generator=g), "int6"), (torch.randn(3, 5, 7, generator=g), "int3:absmax"),
             (torch.randn(17, generator=g), "fp16"), (torch.randn(9, 3, generator=g).bfloat16(), "exact"),
             (torch.randint(0, 9, (7,), generator=g), "exact"), (torch.rand(10, generator=g) > 0.5, "exact")]
    for t, spec in cases:
        r = quantize_tensor("t", t, TensorSpec.parse(spec))
        held = r.numel * r.spec.bits / 8 + r.scales.nbytes if r.spec.kind == "int" else float(r.data.nbytes)
        assert r.payload_bytes() == held, spec


def test_unknown_dtype_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unsupported tensor dtype 'complex64'") as e:
        payload_bytes(TensorSpec.parse("exact"), (2,), "complex64")
    assert e.value.param == "dtype"
