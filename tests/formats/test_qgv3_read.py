"""QGv3 reader: frozen, validated entries; FormatError with the byte offset (and path) where the fault is."""

from __future__ import annotations

import dataclasses
import json
import zlib

import pytest
import torch

from golfpack.errors import FormatError
from golfpack.formats.qgv3 import PREAMBLE, decode_qgv3, encode_qgv3, read_qgv3
from golfpack.formats.qgv3_constants import Codec, Layout, StreamKind
from golfpack.formats.qgv3_read import BlockEntry, Header, Preamble, StreamEntry, TensorEntry, read_header
from golfpack.formats.spec import TensorSpec
from golfpack.packer.quantize import quantize_tensor


def artifact(codec: str = "zlib", blocks: str = "separate") -> bytes:
    g = torch.Generator().manual_seed(3)
    recs = [quantize_tensor("w", torch.randn(8, 16, generator=g), TensorSpec.parse("int5")),
            quantize_tensor("b", torch.randn(5, generator=g), TensorSpec.parse("fp32"))]
    return encode_qgv3(recs, config={"x": 1}, codec=codec, blocks=blocks)


def test_entries_are_frozen_and_typed() -> None:
    data = artifact()
    pre, h = read_header(data)
    assert isinstance(pre, Preamble) and isinstance(h, Header)
    assert pre.version == 3 and pre.flags == 0 and pre.header_end == 24 + pre.header_stored
    assert h.config == {"x": 1} and h.policy is None and h.meta is None
    assert [type(x) for x in (h.tensors[0], h.streams[0], h.blocks[0])] == [TensorEntry, StreamEntry, BlockEntry]
    w, b = h.tensors
    assert (w.name, w.shape, w.numel, w.dtype, w.spec, w.rows, w.nscales, w.cols) == ("w", (8, 16), 128, "float32", TensorSpec.parse("int5"),
                                                                                       8, 8, 16)
    assert (b.name, b.scales, b.scale_offset, b.rows) == ("b", None, None, None)
    kinds = [(s.kind, s.bits, s.dtype, s.tensors) for s in h.streams]
    assert kinds == [(StreamKind.LEVELS, 5, None, ("w",)), (StreamKind.SCALES, None, "float16", ("w",)),
                     (StreamKind.PASSTHROUGH, None, "float32", ("b",))]
    assert all(isinstance(s.layout, Layout) for s in h.streams) and all(isinstance(x.codec, Codec) for x in h.blocks)
    # blocks tile the file after the header, and their offsets are file offsets
    assert h.blocks[0].offset == pre.header_end
    assert [x.offset for x in h.blocks[1:]] == [x.offset + x.stored for x in h.blocks[:-1]]
    assert h.blocks[-1].offset + h.blocks[-1].stored == len(data)
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.tensors[0].offset = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.flags = 1  # type: ignore[misc]
    art = decode_qgv3(data)
    assert art.entries == h and art.header == h.raw


def _rebuild(data: bytes, **fields) -> bytes:
    magic, ver, hc, flags, hs, hr, crc = PREAMBLE.unpack_from(data)
    f = {**dict(magic=magic, ver=ver, hc=hc, flags=flags, hs=hs, hr=hr, crc=crc), **fields}
    return PREAMBLE.pack(f["magic"], f["ver"], f["hc"], f["flags"], f["hs"], f["hr"], f["crc"]) + data[24:]


@pytest.mark.parametrize("fields,offset,msg", [
    ({"magic": b"QGv2\r\n\x1a\n"}, 0, "wrong magic"),
    ({"ver": 4}, 8, "format version 4"),
    ({"flags": 2}, 11, "reserved flags byte is 2"),
    ({"hc": 42}, 10, "unknown codec id 42"),
    ({"crc": 0}, 20, "header checksum mismatch"),
    ({"hs": 1 << 30}, 12, "exceeds the limit"),
])
def test_preamble_faults_name_their_offset(fields, offset, msg) -> None:
    with pytest.raises(FormatError, match=msg) as e:
        decode_qgv3(_rebuild(artifact(), **fields))
    assert e.value.offset == offset and f"at byte {offset}: invalid QGv3 artifact" in str(e.value)


def test_block_faults_name_the_block_offset_and_the_file(tmp_path) -> None:
    data = bytearray(artifact())
    pre, h = read_header(bytes(data))
    second = h.blocks[1]
    data[second.offset] ^= 0xFF
    with pytest.raises(FormatError, match="block 1 checksum mismatch") as e:
        decode_qgv3(bytes(data))
    assert e.value.offset == second.offset and e.value.path is None
    p = tmp_path / "bad.qg3"
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError) as e:
        read_qgv3(p)
    assert e.value.path == str(p) and e.value.offset == second.offset
    assert str(e.value) == f"{p}: at byte {second.offset}: invalid QGv3 artifact: block 1 checksum mismatch (file corrupted)"
    with pytest.raises(FormatError, match="file not found") as e:
        read_qgv3(tmp_path / "none.qg3")
    assert e.value.path == str(tmp_path / "none.qg3")


def test_header_json_faults_point_at_the_header() -> None:
    raw = b"{not json"
    bad = PREAMBLE.pack(b"QGv3\r\n\x1a\n", 3, 0, 0, len(raw), len(raw), zlib.crc32(raw)) + raw
    with pytest.raises(FormatError, match="header is not valid JSON") as e:
        decode_qgv3(bad)
    assert e.value.offset == 24
    h = json.dumps({"config": None, "policy": None, "meta": None, "tensors": [], "streams": [], "blocks": [{"codec": 9, "raw": 0,
                                                                                                          "stored": 0, "crc": 0}]}).encode()
    with pytest.raises(FormatError, match="block 0: unknown codec id 9"):
        decode_qgv3(PREAMBLE.pack(b"QGv3\r\n\x1a\n", 3, 0, 0, len(h), len(h), zlib.crc32(h)) + h)


def test_header_field_types_checked_without_crashing() -> None:
    """Unhashable or mistyped values where a name is expected are FormatErrors, not TypeErrors."""
    data = artifact(codec="raw")
    _, h = read_header(data)
    raw = dict(h.raw)
    for mutate in (lambda r: r["tensors"][0].update(dtype=["float32"]), lambda r: r["streams"][2].update(dtype={"a": 1})):
        r = json.loads(json.dumps(raw))
        mutate(r)
        hb = json.dumps(r).encode()
        body = data[PREAMBLE.size + PREAMBLE.unpack_from(data)[4] :]
        with pytest.raises(FormatError, match="invalid QGv3 artifact"):
            decode_qgv3(PREAMBLE.pack(b"QGv3\r\n\x1a\n", 3, 0, 0, len(hb), len(hb), zlib.crc32(hb)) + hb + body)
