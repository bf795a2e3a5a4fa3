"""Issue 11 class 1 (policy part): a stored policy is checked by type and range when read (formats/policy_schema.py),
the writer refuses what the reader would, and the exported decoder (which ignores policy content) does not crash."""

from __future__ import annotations

import pytest

from golfpack.errors import FormatError, UsageError
from golfpack.formats.policy_schema import check_policy
from golfpack.formats.qgv3 import decode_qgv3, encode_qgv3
from tests.formats.test_hostile import _rebuild, _records, _set


@pytest.fixture(scope="module")
def good() -> bytes:
    return encode_qgv3(_records(), codec="zlib", blocks="separate")


@pytest.fixture(scope="module")
def decoder():
    from golfpack.packer.decoder import decoder_source

    ns: dict = {"__name__": "qg3_decode"}
    exec(compile(decoder_source(), "qg3_decode.py", "exec"), ns)  # noqa: S102 - our own decoder
    return type("Decoder", (), {"load": staticmethod(ns["load"])})

HOSTILE_POLICIES = [
    ({"rules": "int6"}, "rules must be a list"),
    ({"rules": [[]]}, "rule 1 must be an object"),
    ({"rules": [{"match": "*"}]}, "rule 1 lacks its spec"),
    ({"rules": [{"spec": 6}]}, "rule 1 spec must be a spec label string"),
    ({"rules": [{"spec": "INT6"}]}, "not a canonical spec label"),
    ({"rules": [{"spec": "int9"}]}, "not a canonical spec label"),
    ({"rules": [{"spec": "int6", "match": 5}]}, "match must be a string or a non-empty list"),
    ({"rules": [{"spec": "int6", "match": ["a", None]}]}, "match must be a string or a non-empty list"),
    ({"rules": [{"spec": "int6", "match": "re:("}]}, "bad regex"),
    ({"rules": [{"spec": "int6", "ndim": [9]}]}, "ndim must hold integers in 0..8"),
    ({"rules": [{"spec": "int6", "ndim": True}]}, "ndim must be an integer or a non-empty list"),
    ({"rules": [{"spec": "int6", "min_numel": "3"}]}, "min_numel must be an integer"),
    ({"rules": [{"spec": "int6", "max_numel": 3.0}]}, "max_numel must be an integer"),
    ({"rules": [{"spec": "int6", "min_numel": -1}]}, "min_numel must be an integer in 0"),
    ({"rules": [{"spec": "int6", "control": 1}]}, "control must be true, false or null"),
    ({"rules": [{"spec": "int6", "dtype": [1]}]}, "dtype must be a string"),
    ({"rules": [{"spec": "int6", "spce": "int6"}]}, "unknown key"),
    ({"default": " fp16 "}, "default: ' fp16 ' is not a canonical"),
    ({"name": ["x"]}, "name must be a string"),
    ({"base": 3}, "base must be a string"),
    ({"calibration": [1]}, "calibration must be an object"),
    ({"calibration": {"source": 1}}, "calibration source must be a string"),
    ({"calibration": {"source": "pydoc", "batch": 0}}, "calibration batch must be an integer in 1"),
    ({"calibration": {"source": "pydoc", "digest": 5}}, "digest must be a string or null"),
    ({"calibration": {"source": "pydoc", "tokens": 1}}, "unknown key"),
    ({"\x1b[31m": 1}, "unknown key"),
]


@pytest.mark.parametrize("policy,match", HOSTILE_POLICIES)
def test_a_hostile_stored_policy_is_a_format_error_and_the_decoder_does_not_crash(good, decoder, tmp_path, policy, match):
    data = _rebuild(good, _set(("policy",), policy))
    with pytest.raises(FormatError, match="header policy") as e:
        decode_qgv3(data)
    assert match in str(e.value) and "\x1b" not in str(e.value)
    p = tmp_path / "x.qg3"
    p.write_bytes(data)
    sd = decoder.load(str(p))  # the exported decoder ignores policy content: it loads the tensors
    assert sorted(sd) == ["b", "w"]
    with pytest.raises(UsageError, match="header policy"):  # the writer refuses what the reader would
        encode_qgv3(_records(), policy=policy, codec="zlib")


def test_every_policy_the_packer_writes_passes_the_check():
    from golfpack.errors import GolfpackError
    from golfpack.packer.calibration import GptqCalibration
    from golfpack.packer.policy import PRESETS, Policy

    full = Policy.from_dict({"name": "all", "rules": [
        {"match": ["re:blocks\\.\\d+\\..*", "tok*"], "control": False, "ndim": 2, "min_numel": 10, "max_numel": 10**9,
         "dtype": "float", "spec": "int6+gptq"}], "default": "int8:g64:mse"})
    full = Policy(full.name, full.rules, full.default, GptqCalibration(source="pydoc", batch=4, seq=64, digest="ab" * 32))
    for p in [*PRESETS.values(), full]:
        check_policy(p.to_dict(), GolfpackError)
        assert Policy.from_dict(p.to_dict()).to_dict() == p.to_dict()  # and the packer reads back what passes
    assert decode_qgv3(encode_qgv3(_records(), policy=full.to_dict(), codec="zlib")).policy == full.to_dict()
    check_policy({"name": "golden"}, GolfpackError)  # every key optional (the golden file's policy)
