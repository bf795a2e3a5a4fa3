"""TensorSpec text forms: every label parses back to itself; bad forms say what is accepted."""

from __future__ import annotations

import pytest

from golfpack.errors import UsageError
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


@pytest.mark.parametrize("text,bits,clip,group,gptq,label", [
    ("int6:sd12", 6, "sd12", 0, False, "int6:sd12"),
    ("int6:sd12.5", 6, "sd12.5", 0, False, "int6:sd12.5"),
    ("int6:hmse", 6, "hmse", 0, False, "int6:hmse"),
    ("int6:hmse+gptq", 6, "hmse", 0, True, "int6:hmse+gptq"),
    ("int6:g64", 6, "absmax", 64, False, "int6:g64"),
    ("int6:g64:absmax", 6, "absmax", 64, False, "int6:g64"),  # absmax is the group default: left out of the label
    ("int5:g32:sd12+gptq", 5, "sd12", 32, True, "int5:g32:sd12+gptq"),
    ("int8:g256:mse", 8, "mse", 256, False, "int8:g256:mse"),
    ("int4:g128+gptq", 4, "absmax", 128, True, "int4:g128+gptq"),
])
def test_new_clip_and_group_specs(text: str, bits: int, clip: str, group: int, gptq: bool, label: str) -> None:
    s = TensorSpec.parse(text)
    assert (s.kind, s.bits, s.clip, s.group, s.gptq) == ("int", bits, clip, group, gptq)
    assert s.label() == label and TensorSpec.parse(label) == s
    assert s.rounded() == TensorSpec("int", bits=bits, clip=clip, group=group)
    assert s.needs_hessian == (gptq or clip == "hmse")


def test_old_labels_unchanged() -> None:
    # labels written into existing artifacts and search caches must parse to the same spec and print the same
    for text in ("int8", "int6", "int6:mse", "int4:absmax", "int6+gptq", "int5:mse+gptq", "fp16", "exact"):
        s = TensorSpec.parse(text)
        assert s.label() == text and s.group == 0


@pytest.mark.parametrize("text", [
    "int6:sd012", "int6:sd12.0", "int6:sd12.25", "int6:sd0", "int6:sd65", "int6:sd", "int6:sdx",  # sd<k>: canonical k in (0, 64]
    "int6:g48", "int6:g064", "int6:g", "int6:g0",  # groups: 32, 64, 128, 256 only
    "int6:g64:quantile",  # the floored baseline rule has no group form
    "int6:mse:g64", "int6:g64:g64", "int6::", "int6:", "int6:g64:mse:x",  # order and count of parts
    "int06", "fp16:g64", "int6:g64+tok8",
])
def test_bad_new_specs(text: str) -> None:
    with pytest.raises(ValueError):
        TensorSpec.parse(text)


def test_constructor_validates_group_and_clip() -> None:
    with pytest.raises(ValueError, match="group"):
        TensorSpec("int", bits=6, clip="absmax", group=48)
    with pytest.raises(ValueError, match="quantile"):
        TensorSpec("int", bits=6, clip="quantile", group=64)
    with pytest.raises(ValueError, match="group"):
        TensorSpec("passthrough", dtype="fp16", group=64)
    with pytest.raises(ValueError, match="clip"):
        TensorSpec("int", bits=6, clip="sd12.0")


def test_lqer_suffix_parses_labels_and_rejects() -> None:
    s = TensorSpec.parse("int5:g64:sd12+gptq+lqer4")
    assert (s.bits, s.group, s.clip, s.gptq, s.lqer) == (5, 64, "sd12", True, 4) and s.label() == "int5:g64:sd12+gptq+lqer4"
    assert TensorSpec.parse("int6+lqer64").lqer == 64 and TensorSpec.parse("int8+lqer1").label() == "int8+lqer1"
    assert TensorSpec.parse("int6+gptq+lqer8").rounded() == TensorSpec.parse("int6")  # QAT simulates the grid only
    for bad in ("int6+lqer0", "int6+lqer65", "int6+lqer04", "int6+lqer4+gptq", "int6+lqer4+lqer4", "fp16+lqer4", "int6+lqer",
                "int6+gptq+", "int6+", "int6+lqerx"):
        with pytest.raises(UsageError):
            TensorSpec.parse(bad)
    for bad_rank in (0.5, True, 65, -1):
        with pytest.raises(UsageError, match="lqer"):
            TensorSpec("int", bits=6, lqer=bad_rank)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="integer specs only"):
        TensorSpec("passthrough", dtype="fp16", lqer=4)
