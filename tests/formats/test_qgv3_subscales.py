"""QGv3 quantized sub-scales (spec `int<b>:g<N>s<k>`, StreamKind.SUBSCALES): golden bytes, exact round trips
through the library reader and the exported decoder, and hostile headers refused by both."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from golfpack.formats.qgv3 import decode_qgv3, encode_qgv3
from golfpack.formats.qgv3_constants import Layout, StreamKind
from golfpack.formats.records import TensorRecord
from golfpack.formats.spec import GROUP_SIZES, TensorSpec
from golfpack.packer.quantize import quantize_tensor
from tests.formats.test_hostile import _both_refuse, _dump, _rebuild, _set, decoder  # noqa: F401 (decoder: fixture)
from tests.formats.test_qgv3 import DATA_DIR

GOLDEN = DATA_DIR / "qgv3_subscales_golden.bin"
GOLDEN_SHA256 = "8267d0db601c3264416f11c69a4ed0d686e397a0276c0dba04382a32fc6c38ce"  # sha256 of tests/formats/data/qgv3_subscales_golden.bin


def golden_records() -> list[TensorRecord]:
    """Fixed records, no RNG: one int4:g32s3 tensor (2 x 40: two groups a row, the last one 8 wide) and one int6 per row."""
    q = (np.arange(80, dtype=np.int16) % 15 - 7).astype(np.int8).reshape(2, 40)
    sub = np.array([[7, 1], [3, 5]], np.uint8)
    w4 = TensorRecord("w", (2, 40), "float32", TensorSpec.parse("int4:g32s3"), q=q, scales=np.array([0.25, 0.5], np.float16),
                      subscales=sub)
    r6 = TensorRecord("v", (1, 3), "float32", TensorSpec.parse("int6"), q=np.array([[31, 0, -31]], np.int8),
                      scales=np.array([0.125], np.float16))
    return [w4, r6]


def golden_bytes() -> bytes:
    return encode_qgv3(golden_records(), config=None, policy=None, codec="raw", meta=None, blocks="separate")


def test_golden_bytes_with_subscales() -> None:
    data = golden_bytes()
    assert data == GOLDEN.read_bytes()
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SHA256
    art = decode_qgv3(data)
    assert art.check_digests() == []
    w = art.state_dict()["w"]
    # row 0: group 0 scale 0.25 * 7, group 1 0.25 * 1; row 1: 0.5 * 3, 0.5 * 5
    q = golden_records()[0].q.astype(np.float32)
    assert w[0, :32].tolist() == (q[0, :32] * 1.75).tolist() and w[0, 32:].tolist() == (q[0, 32:] * 0.25).tolist()
    assert w[1, :32].tolist() == (q[1, :32] * 1.5).tolist() and w[1, 32:].tolist() == (q[1, 32:] * 2.5).tolist()
    h = art.header
    kinds = [(s["kind"], s.get("bits"), s.get("dtype")) for s in h["streams"]]
    assert kinds == [(0, 4, None), (0, 6, None), (1, None, "float16"), (3, 3, None)]  # sub-scales sort last (kind 3)
    e = h["tensors"][0]
    assert (e["scale_group"], e["subscales"], e["subscale_offset"], e["rows"]) == (32, 3, 0, 2)
    assert h["tensors"][1].keys().isdisjoint({"subscales", "subscale_offset", "scale_group"})
    # the sub-scale stream: 4 values, sub - 1 packed 3 bits each LSB first, the same packing as levels
    s3 = h["streams"][3]
    assert (s3["count"], s3["layout"]) in ((4, int(Layout.DENSE)), (4, int(Layout.BYTE)))
    u = [6, 0, 2, 4]
    block = h["blocks"][3]
    tail = data[len(data) - block["stored"]:]
    if s3["layout"] == int(Layout.BYTE):
        assert list(tail) == u
    else:
        assert int.from_bytes(tail, "little") == sum(x << (3 * i) for i, x in enumerate(u))
    assert StreamKind.SUBSCALES == 3


def subscale_records() -> list[TensorRecord]:
    """Every group size x level width 2..8, each with a sub-scale width (2, 4, 6, 8 all used)."""
    g = torch.Generator().manual_seed(5)
    out = []
    for bits in range(2, 9):
        for group in GROUP_SIZES:
            k = (2, 4, 6, 8)[(bits + group // 32) % 4]  # every sub-scale width meets several widths and groups
            w = torch.randn(3, group + 9, generator=g) * 0.02 * (1 + torch.arange(3.0)[:, None])
            w = w.to(torch.bfloat16) if bits == 5 else w
            out.append(quantize_tensor(f"s{bits}_{group}_{k}", w, TensorSpec("int", bits=bits, clip="sd12", group=group, subscale=k)))
    out.append(quantize_tensor("plain_g64", torch.randn(4, 70, generator=g), TensorSpec.parse("int6:g64")))
    out.append(quantize_tensor("row_int6", torch.randn(4, 70, generator=g), TensorSpec.parse("int6")))
    return out


def test_round_trip_every_group_and_width_through_the_reader() -> None:
    records = subscale_records()
    assert {r.spec.subscale for r in records if r.spec.subscale} == {2, 4, 6, 8}
    for codec, blocks in (("raw", "separate"), ("zlib", "solid")):
        data = encode_qgv3(records, codec=codec, blocks=blocks)
        art = decode_qgv3(data)
        for a, b in zip(records, art.records):
            assert a.spec == b.spec and np.array_equal(a.q, b.q) and np.array_equal(a.scales, b.scales)
            assert (a.subscales is None) == (b.subscales is None)
            if a.subscales is not None:
                assert np.array_equal(a.subscales, b.subscales)
            assert torch.equal(a.dequantize(), b.dequantize())
        assert art.check_digests() == []
    # the exported decoder: tests/packer/test_decoder_groups.py loads these same records (one subprocess for both)


def test_payload_bytes_count_one_fp16_a_row_and_k_bits_a_group() -> None:
    spec = TensorSpec.parse("int6:g32s6")
    r = quantize_tensor("w", torch.randn(8, 100), spec)
    assert r.payload_bytes() == 8 * 100 * 6 / 8 + 8 * (2 + 4 * 6 / 8)
    assert r.scales.shape == (8,) and r.subscales.shape == (8, 4) and r.subscales.dtype == np.uint8
    art = decode_qgv3(encode_qgv3([r], codec="raw"))
    assert art.raw_sizes()["w"] == r.payload_bytes()


def test_writer_refuses_bad_subscales() -> None:
    from golfpack.errors import UsageError

    r = quantize_tensor("w", torch.randn(2, 40), TensorSpec.parse("int4:g32s3"))
    for sub, match in ((np.zeros((2, 2), np.uint8), "outside 1..7"), (np.full((2, 2), 8, np.uint8), "outside 1..7"),
                       (np.ones((2, 3), np.uint8), "needs 4 sub-scales"), (None, "needs 4 sub-scales")):
        bad = TensorRecord(r.name, r.shape, r.orig_dtype, r.spec, q=r.q, scales=r.scales, subscales=sub)
        with pytest.raises(UsageError, match=match):
            encode_qgv3([bad], codec="raw")
    plain = quantize_tensor("p", torch.randn(2, 40), TensorSpec.parse("int4:g32"))
    with pytest.raises(UsageError, match="has none"):
        encode_qgv3([TensorRecord("p", plain.shape, "float32", plain.spec, q=plain.q, scales=plain.scales,
                                  subscales=np.ones((2, 2), np.uint8))], codec="raw")


@pytest.fixture(scope="module")
def good_sub() -> bytes:
    return encode_qgv3(golden_records(), codec="raw", blocks="separate")


def _edit(fn):
    def edit(h: dict) -> str:
        fn(h)
        return _dump(h)

    return edit


def _pop(key: str):
    return _edit(lambda h: h["tensors"][0].pop(key))


HOSTILE = {
    "no subscales key": (_pop("subscales"), "subscales"),
    "no subscale_offset key": (_pop("subscale_offset"), "subscale"),
    "no scale_group": (_pop("scale_group"), "scale_group"),
    "subscales on a plain int spec": (_edit(lambda h: h["tensors"][1].update(subscales=3, subscale_offset=0)), "subscale"),
    "spec without s<k>": (_set(("tensors", 0, "spec"), "int4:g32"), "subscale|overrun"),
    "spec with another k": (_set(("tensors", 0, "spec"), "int4:g32s4"), "sub-scale"),
    "subscales points at a levels stream": (_set(("tensors", 0, "subscales"), 0), "sub-scale"),
    "subscales stream index out of range": (_set(("tensors", 0, "subscales"), 9), "subscales|range"),
    "subscale offset not contiguous": (_set(("tensors", 0, "subscale_offset"), 1), "offset"),
    "subscale offset a float": (_set(("tensors", 0, "subscale_offset"), 0.0), "integer"),
    "sub-scale stream bits 1": (_set(("streams", 3, "bits"), 1), "bits"),
    "sub-scale stream bits 9": (_set(("streams", 3, "bits"), 9), "bits"),
    "sub-scale stream with a dtype": (_edit(lambda h: h["streams"][3].update(dtype="float16")), "bits"),
    "sub-scale stream plain layout": (_set(("streams", 3, "layout"), 0), "layout"),
    "sub-scale stream count short": (_set(("streams", 3, "count"), 3), "overrun|holds|cover"),
    "stream kind 5": (_set(("streams", 3, "kind"), 5), "kind"),
    "levels pointing at the sub-scale stream": (_set(("tensors", 1, "group"), 3), "levels stream"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_subscale_headers_are_refused_by_reader_and_decoder(case, good_sub, decoder, tmp_path) -> None:  # noqa: F811
    edit, match = HOSTILE[case]
    _both_refuse(_rebuild(good_sub, edit), decoder, tmp_path, match)


def test_out_of_range_stored_subscale_is_refused(decoder, tmp_path) -> None:  # noqa: F811
    # a byte-layout sub-scale 7 (sub 8) is out of range for k = 3: value 2^k - 1 is not a valid stored value
    data = bytearray(encode_qgv3(golden_records(), codec="raw", blocks="separate"))
    h = json.loads(bytes(data[24:24 + int.from_bytes(data[16:20], "little")]))
    if h["streams"][3]["layout"] != int(Layout.DENSE):
        pytest.skip("golden sub-scales are not dense")
    data[-2:] = (0b111_111_111_111).to_bytes(2, "little")  # all four stored values 7: sub 8 > 7

    def fix_crc(hh: dict) -> str:
        import zlib
        hh["blocks"][3]["crc"] = zlib.crc32(bytes(data[-hh["blocks"][3]["stored"]:]))
        return _dump(hh)

    _both_refuse(_rebuild(bytes(data), fix_crc), decoder, tmp_path, "level|outside|padding")
