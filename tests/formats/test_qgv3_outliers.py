"""QGv3 sparse outliers (spec `+out<k>`, StreamKind.OUTLIERS, docs/qgv3.md 8d): golden bytes, exact round trips
through the library reader, and hostile headers and entries refused by both the reader and the exported decoder."""

from __future__ import annotations

import hashlib
import json
import zlib

import numpy as np
import pytest
import torch

from golfpack.errors import UsageError
from golfpack.formats.qgv3 import decode_qgv3, encode_qgv3
from golfpack.formats.qgv3_constants import OUTLIER_ENTRY, Layout, StreamKind, outlier_count
from golfpack.formats.qgv3_streams import OUTLIER_DTYPE
from golfpack.formats.records import TensorRecord
from golfpack.formats.spec import TensorSpec
from golfpack.packer.quantize import quantize_tensor
from tests.formats.test_hostile import _both_refuse, _dump, _rebuild, _set, decoder  # noqa: F401 (decoder: fixture)
from tests.formats.test_qgv3 import DATA_DIR

GOLDEN = DATA_DIR / "qgv3_outliers_golden.bin"
GOLDEN_SHA256 = "2b4ed431521f3604e62a91404e26b232ca9a15c2fe85818bba32908de4b17138"  # sha256 of tests/formats/data/qgv3_outliers_golden.bin


def golden_records() -> list[TensorRecord]:
    """Fixed records, no RNG: an int4+out25 matrix (2 x 40: ceil(80 * 25 / 1000) = 2 outliers, at flat 3 and 41), an
    int6+out50 vector (5 weights: 1 outlier, the last) and a plain int6 row."""
    q = (np.arange(80, dtype=np.int16) % 15 - 7).astype(np.int8).reshape(2, 40)
    w4 = TensorRecord("w", (2, 40), "float32", TensorSpec.parse("int4+out25"), q=q, scales=np.array([0.25, 0.5], np.float16),
                      outlier_idx=np.array([3, 41]), outlier_vals=np.array([0.75, -1.5], np.float16))
    v6 = TensorRecord("u", (5,), "float32", TensorSpec.parse("int6+out50"), q=np.array([1, -2, 3, 0, 31], np.int8),
                      scales=np.array([0.125], np.float32), outlier_idx=np.array([4]), outlier_vals=np.array([6.5], np.float16))
    r6 = TensorRecord("v", (1, 3), "float32", TensorSpec.parse("int6"), q=np.array([[31, 0, -31]], np.int8),
                      scales=np.array([0.125], np.float16))
    return [w4, v6, r6]


def golden_bytes() -> bytes:
    return encode_qgv3(golden_records(), config=None, policy=None, codec="raw", meta=None, blocks="separate")


def _header(data: bytes) -> dict:
    return json.loads(bytes(data[24 : 24 + int.from_bytes(data[16:20], "little")]))


def test_golden_bytes_with_outliers() -> None:
    data = golden_bytes()
    assert data == GOLDEN.read_bytes()
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SHA256
    art = decode_qgv3(data)
    assert art.check_digests() == []
    sd = art.state_dict()
    q = golden_records()[0].q.astype(np.float32)
    want = np.concatenate([q[0] * 0.25, q[1] * 0.5])
    want[3], want[41] = 0.75, -1.5  # the stored fp16 values replace the dequantized ones
    assert sd["w"].reshape(-1).tolist() == want.tolist()
    assert sd["u"].tolist() == [0.125, -0.25, 0.375, 0.0, 6.5]
    h = art.header
    kinds = [(s["kind"], s.get("bits"), s.get("dtype")) for s in h["streams"]]
    assert kinds == [(0, 4, None), (0, 6, None), (1, None, "float16"), (1, None, "float32"), (4, None, None)]  # outliers last
    assert h["tensors"][0]["outliers"] == {"count": 2, "offset": 0} and h["tensors"][1]["outliers"] == {"count": 1, "offset": 2}
    assert "outliers" not in h["tensors"][2]
    s4 = h["streams"][4]
    assert s4["count"] == 3 and s4["layout"] in (int(Layout.PLAIN), int(Layout.SHUFFLE))
    # the outliers block: (delta, fp16) pairs per tensor - w: 3, 41 - 3 = 38; u: 4 (each tensor starts from 0)
    plain = b"".join(OUTLIER_ENTRY.pack(d, v) for d, v in ((3, 0.75), (38, -1.5), (4, 6.5)))
    tail = data[len(data) - h["blocks"][4]["stored"] :]
    assert tail == (plain if s4["layout"] == int(Layout.PLAIN) else np.frombuffer(plain, np.uint8).reshape(3, 6).T.tobytes())
    assert StreamKind.OUTLIERS == 4 and OUTLIER_ENTRY.size == 6


def outlier_records() -> list[TensorRecord]:
    """Outliers on per-row, group-wise, sub-scale and per-tensor int records (the decoder test loads these too)."""
    g = torch.Generator().manual_seed(3)
    out = []
    for i, spec in enumerate(("int4:g64+out3", "int2+out50", "int8:mse+out1", "int5:g32s6:sd12+out10", "int3:g128+out7")):
        w = torch.randn(8, 150, generator=g) * 0.05
        out.append(quantize_tensor(f"m{i}", w.bfloat16() if i == 1 else w, TensorSpec.parse(spec)))
    out.append(quantize_tensor("vec", torch.randn(33, generator=g), TensorSpec.parse("int6+out20")))
    out.append(quantize_tensor("plain", torch.randn(4, 70, generator=g), TensorSpec.parse("int6")))
    return out


def test_round_trip_through_the_reader() -> None:
    records = outlier_records()
    for codec, blocks in (("raw", "separate"), ("lzma", "solid")):
        art = decode_qgv3(encode_qgv3(records, codec=codec, blocks=blocks))
        for a, b in zip(records, art.records):
            assert a.spec == b.spec and np.array_equal(a.q, b.q) and np.array_equal(a.scales, b.scales)
            if a.spec.outliers:
                assert np.array_equal(a.outlier_idx, b.outlier_idx) and np.array_equal(a.outlier_vals, b.outlier_vals)
                assert b.outlier_idx.size == outlier_count(a.numel, a.spec.outliers)
            assert torch.equal(a.dequantize(), b.dequantize())
        assert art.check_digests() == []


def test_payload_and_raw_bytes_count_six_bytes_an_outlier() -> None:
    r = quantize_tensor("w", torch.randn(8, 100), TensorSpec.parse("int6+out5"))
    assert r.outlier_idx.size == 4 and r.payload_bytes() == 8 * 100 * 6 / 8 + 8 * 2 + 4 * 6
    art = decode_qgv3(encode_qgv3([r], codec="raw"))
    assert art.raw_sizes()["w"] == r.payload_bytes()


def test_writer_refuses_bad_outliers() -> None:
    r = quantize_tensor("w", torch.randn(2, 40), TensorSpec.parse("int4+out25"))  # 2 outliers

    def rec(idx, vals, spec=r.spec):
        return TensorRecord("w", r.shape, "float32", spec, q=r.q, scales=r.scales, outlier_idx=idx, outlier_vals=vals)

    f16 = np.array([1, 2], np.float16)
    for idx, vals, match in ((np.array([5, 5]), f16, "strictly increasing"), (np.array([7, 3]), f16, "strictly increasing"),
                             (np.array([3, 80]), f16, r"\[0, 80\)"), (np.array([-1, 3]), f16, "strictly increasing"),
                             (np.array([1, 2, 3]), np.ones(3, np.float16), "needs 2"), (None, None, "needs 2"),
                             (np.array([1, 2]), np.array([1.0, 2.0]), "float16")):
        with pytest.raises(UsageError, match=match):
            encode_qgv3([rec(idx, vals)], codec="raw")
    with pytest.raises(UsageError, match="no \\+out"):
        encode_qgv3([rec(np.array([1, 2]), f16, TensorSpec.parse("int4"))], codec="raw")


def test_spec_forbids_outliers_with_lqer() -> None:
    with pytest.raises(UsageError, match="does not combine with \\+lqer"):
        TensorSpec.parse("int4:g64+gptq+out3+lqer4")
    assert TensorSpec.parse("int4:g64+gptq+out3").label() == "int4:g64+gptq+out3"


@pytest.fixture(scope="module")
def good_out() -> bytes:
    return golden_bytes()


def _edit(fn):
    def edit(h: dict) -> str:
        fn(h)
        return _dump(h)

    return edit


HOSTILE = {
    "no outliers key": (_edit(lambda h: h["tensors"][0].pop("outliers")), "outliers"),
    "outliers on a plain int spec": (_edit(lambda h: h["tensors"][2].update(outliers={"count": 1, "offset": 3})), "outliers"),
    "count over the spec's": (_set(("tensors", 0, "outliers", "count"), 3), "outliers"),
    "count under the spec's": (_set(("tensors", 0, "outliers", "count"), 1), "outliers"),
    "count a float": (_set(("tensors", 0, "outliers", "count"), 2.0), "integer"),
    "spec with another k": (_set(("tensors", 0, "spec"), "int4+out50"), "outliers"),
    "outliers with lqer": (_set(("tensors", 0, "spec"), "int4+out25+lqer1"), "lqer"),
    "extra outliers key": (_edit(lambda h: h["tensors"][0]["outliers"].update(stream=4)), "unknown"),
    "outliers not an object": (_set(("tensors", 0, "outliers"), [2, 0]), "object"),
    "offset not contiguous": (_set(("tensors", 1, "outliers", "offset"), 1), "offset"),
    "outliers stream with a dtype": (_edit(lambda h: h["streams"][4].update(dtype="float16")), "neither"),
    "outliers stream with bits": (_edit(lambda h: h["streams"][4].update(bits=8)), "neither"),
    "outliers stream dense layout": (_set(("streams", 4, "layout"), int(Layout.DENSE)), "layout"),
    "outliers stream relabelled passthrough": (_edit(lambda h: h["streams"][4].update(kind=2)), "dtype"),
    "stream kind 5": (_set(("streams", 4, "kind"), 5), "kind"),
    "outliers stream count short": (_set(("streams", 4, "count"), 2), "overrun|holds|cover"),
    "passthrough with outliers": (_edit(lambda h: h["tensors"][2].update(spec="fp16")), "passthrough|stream"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_outlier_headers_are_refused_by_reader_and_decoder(case, good_out, decoder, tmp_path) -> None:  # noqa: F811
    edit, match = HOSTILE[case]
    _both_refuse(_rebuild(good_out, edit), decoder, tmp_path, match)


def _with_entries(deltas: list[int]) -> bytes:
    """The golden file with the outliers block's deltas replaced (same layout, block crc fixed)."""
    data = golden_bytes()
    h = _header(data)
    ent = np.zeros(3, OUTLIER_DTYPE)
    ent["d"], ent["v"] = deltas, [0.75, -1.5, 6.5]
    raw = ent.tobytes()
    if h["streams"][4]["layout"] == int(Layout.SHUFFLE):
        raw = np.frombuffer(raw, np.uint8).reshape(3, 6).T.tobytes()
    body = data[: len(data) - len(raw)] + raw

    def fix_crc(hh: dict) -> str:
        hh["blocks"][4]["crc"] = zlib.crc32(raw)
        return _dump(hh)

    return _rebuild(body, fix_crc)


@pytest.mark.parametrize("deltas,why", [([3, 37, 4], "index 40 < 80 is fine; the control"), ([3, 77, 4], "index 80 = numel"),
                                        ([3, 0, 4], "not increasing"), ([3, 38, 5], "vector index 5 = numel"),
                                        ([3, 2**32 - 1, 4], "far out of range")])
def test_bad_outlier_indices_are_refused_by_reader_and_decoder(deltas, why, decoder, tmp_path) -> None:  # noqa: F811
    data = _with_entries(deltas)
    if why.endswith("the control"):
        art = decode_qgv3(data)
        assert art.records[0].outlier_idx.tolist() == [3, 40]
        p = tmp_path / "ok.qg3"
        p.write_bytes(data)
        decoder.load(str(p), check=False)  # the digest changed with the index; the structure is valid
        return
    _both_refuse(data, decoder, tmp_path, "outlier indices")
