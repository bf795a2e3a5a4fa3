"""TensorSpec text forms: every label parses back to itself; bad forms say what is accepted."""

from __future__ import annotations

import pytest

from golfpack.formats.spec import TensorSpec


@pytest.mark.parametrize("text,bits,clip,gptq", [
    ("int8", 8, "quantile", False),
    ("int6:mse", 6, "mse", False),
    ("int4:absmax", 4, "absmax", False),
    ("int6+gptq", 6, "quantile", True),
    ("int5:mse+gptq", 5, "mse", True),
    (" INT3:Quantile ", 3, "quantile", False),
])
def test_int_specs(text: str, bits: int, clip: str, gptq: bool) -> None:
    s = TensorSpec.parse(text)
    assert (s.kind, s.bits, s.clip, s.gptq) == ("int", bits, clip, gptq)
    assert TensorSpec.parse(s.label()) == s
    assert s.qmax == 2 ** (bits - 1) - 1
    assert s.rounded() == TensorSpec("int", bits=bits, clip=clip)


@pytest.mark.parametrize("text", ["fp16", "bf16", "fp32", "exact"])
def test_passthrough_specs(text: str) -> None:
    s = TensorSpec.parse(text)
    assert s.kind == "passthrough" and s.dtype == text and s.label() == text and s.rounded() == s


@pytest.mark.parametrize("text", ["int9", "int1", "int6:gptq", "int6+tok8", "int6:median", "fp8", "fp16+gptq", "int", ""])
def test_bad_specs(text: str) -> None:
    with pytest.raises(ValueError):
        TensorSpec.parse(text)
