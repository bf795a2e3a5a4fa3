"""The error hierarchy: every user error is a GolfpackError; library messages name parameters, not flags."""

from __future__ import annotations

import pytest

from golfpack.errors import BudgetError, DataError, FormatError, GolfpackError, UsageError


@pytest.mark.parametrize("cls", [UsageError, FormatError, BudgetError, DataError])
def test_each_kind_is_a_golfpack_error(cls):
    assert issubclass(cls, GolfpackError)
    with pytest.raises(GolfpackError):
        raise cls("x")


def test_usage_error_carries_its_parameter():
    e = UsageError("batch_size must be positive, got 0", param="batch_size")
    assert e.param == "batch_size" and str(e) == "batch_size must be positive, got 0"
    assert isinstance(e, ValueError)  # callers that caught ValueError still do
    assert UsageError("two things wrong").param is None


def test_format_error_carries_path_and_offset(tmp_path):
    p = tmp_path / "a.qg3"
    e = FormatError("bad magic", path=p, offset=0)
    assert e.path == str(p) and e.offset == 0 and e.detail == "bad magic"
    assert str(e) == f"{p}: at byte 0: bad magic"
    bare = FormatError("bad magic")
    assert bare.path is None and bare.offset is None and str(bare) == "bad magic"


def test_evaluate_bad_batch_size_names_the_parameter():
    from golfpack.evaluator.api import evaluate

    with pytest.raises(UsageError) as e:
        evaluate(None, list(range(300)), None, seq_len=128, batch_size=0)
    assert e.value.param == "batch_size"
    assert str(e.value) == "batch_size must be positive, got 0" and "--" not in str(e.value)


def test_library_messages_name_parameters_not_flags():
    from golfpack.evaluator.dist import resolve_device
    from golfpack.evaluator.windows import check_stride, usable_targets
    from golfpack.packer.policy import PRESETS

    cases = [
        (lambda: check_stride(0, None), UsageError, "seq_len"),
        (lambda: check_stride(128, 48), UsageError, "stride"),
        (lambda: resolve_device("tpu"), UsageError, "device"),  # not a torch device type at all
        (lambda: resolve_device("meta"), UsageError, "device"),
        (lambda: PRESETS["int6+tok8"].with_overrides(["no-equals-sign"]), UsageError, "overrides"),
        (lambda: usable_targets(10, 128), DataError, None),
    ]
    for call, cls, param in cases:
        with pytest.raises(cls) as e:
            call()
        assert getattr(e.value, "param", None) == param, str(e.value)
        assert " --" not in str(e.value) and not str(e.value).startswith("--"), str(e.value)


def test_unreadable_file_is_a_format_error_with_its_path(tmp_path):
    from golfpack.loading import load_any

    p = tmp_path / "junk.pt"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(FormatError) as e:
        load_any(p)
    assert e.value.path == str(p) and e.value.offset == 0
    assert "unrecognised first bytes" in str(e.value)
