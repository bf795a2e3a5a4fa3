"""QGv3: exact round trips, golden bytes, inspect accounting, and hostile files refused cleanly."""

from __future__ import annotations

import hashlib
import json
import math
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from golfpack.errors import GolfpackError
from golfpack.formats import qgv3 as Q
from golfpack.formats.codecs import available_codecs, compress
from golfpack.formats.qgv3 import (
    MAGIC,
    PREAMBLE,
    VERSION,
    Limits,
    decode_qgv3,
    encode_qgv3,
    read_qgv3,
    tensor_digest,
    write_qgv3,
)
from golfpack.formats.records import TensorRecord
from golfpack.formats.spec import TensorSpec
from golfpack.packer.quantize import quantize_tensor

DATA_DIR = Path(__file__).parent / "data"
GOLDEN = DATA_DIR / "qgv3_golden.bin"
GOLDEN_SHA256 = "4ea726811ca385abeeea8b987ab8124b80cc1518587cda0e6754681d5db82916"  # sha256 of tests/formats/data/qgv3_golden.bin


def rec(name: str, t: torch.Tensor, spec: str) -> TensorRecord:
    return quantize_tensor(name, t, TensorSpec.parse(spec))


def assert_exact(data: bytes, records: list[TensorRecord]) -> Q.QGv3Artifact:
    art = decode_qgv3(data)
    sd = art.state_dict()
    assert list(sd) == [r.name for r in records]
    for r, back in zip(records, art.records):
        want, got = r.dequantize(), sd[r.name]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.view(-1).view(torch.uint8) if got.numel() else got, want.view(-1).view(torch.uint8) if want.numel() else want)
        assert back.spec == r.spec and back.orig_dtype == r.orig_dtype and tuple(back.shape) == tuple(r.shape)
        if r.spec.kind == "int":
            assert np.array_equal(back.q, r.q) and back.scales.dtype == r.scales.dtype and np.array_equal(back.scales.view(np.uint8), r.scales.view(np.uint8))
        else:
            assert back.data.dtype == r.data.dtype and np.array_equal(back.data.reshape(-1).view(np.uint8), r.data.reshape(-1).view(np.uint8))
    assert art.check_digests() == []
    return art


def mixed_records(seed: int = 0) -> list[TensorRecord]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for bits in range(2, 9):
        out.append(rec(f"w{bits}", torch.randn(24, 40, generator=g), f"int{bits}"))  # per-row fp16 scales
        out.append(rec(f"v{bits}", torch.randn(3, 5, 7, generator=g), f"int{bits}:absmax"))  # per-tensor fp32 scale
    out.append(rec("bf_w", torch.randn(16, 16, generator=g).bfloat16(), "int6:mse"))
    out.append(rec("p16", torch.randn(33, generator=g), "fp16"))
    out.append(rec("pbf", torch.randn(9, 3, generator=g), "bf16"))
    out.append(rec("p32", torch.randn(17, generator=g), "fp32"))
    out.append(rec("x_bf16", torch.randn(11, generator=g).bfloat16(), "exact"))
    out.append(rec("x_f16", torch.randn(2, 6, generator=g).half(), "exact"))
    out.append(rec("x_f64", torch.randn(5, generator=g).double(), "exact"))
    out.append(rec("x_i64", torch.randint(-(2**40), 2**40, (13,), generator=g), "exact"))
    out.append(rec("x_i32", torch.randint(-(2**30), 2**30, (4, 3), generator=g, dtype=torch.int32), "exact"))
    out.append(rec("x_i16", torch.randint(-300, 300, (7,), generator=g, dtype=torch.int16), "exact"))
    out.append(rec("x_i8", torch.randint(-128, 128, (7,), generator=g, dtype=torch.int8), "exact"))
    out.append(rec("x_u8", torch.randint(0, 256, (9,), generator=g, dtype=torch.uint8), "exact"))
    out.append(rec("x_bool", torch.rand(10, generator=g) > 0.5, "exact"))
    out.append(rec("scalar", torch.tensor(3.25), "fp32"))
    out.append(TensorRecord("empty", (0, 4), "float32", TensorSpec.parse("int5"), q=np.zeros((0, 4), np.int8), scales=np.zeros(0, np.float16)))
    return out


# ------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("codec", available_codecs() + ["best"])
def test_round_trip_every_width_and_dtype(codec: str) -> None:
    records = mixed_records()
    data = encode_qgv3(records, config={"vocab_size": 1024}, policy={"name": "p"}, codec=codec, meta={"k": [1, 2]})
    assert data[:8] == MAGIC and struct.unpack_from("<H", data, 8)[0] == VERSION == 3
    art = assert_exact(data, records)
    assert art.config == {"vocab_size": 1024} and art.policy == {"name": "p"} and art.meta == {"k": [1, 2]}
    kinds = {(s["kind"], s.get("bits"), s.get("dtype")) for s in art.streams}
    assert {("levels", b, None) for b in range(2, 9)} <= kinds
    assert {("scales", None, "float16"), ("scales", None, "float32"), ("passthrough", None, "bool")} <= kinds
    assert encode_qgv3(records, config={"vocab_size": 1024}, policy={"name": "p"}, codec=codec, meta={"k": [1, 2]}) == data  # deterministic


def test_round_trip_real_checkpoint_every_width(nolanvild_pt) -> None:
    from golfpack.formats.checkpoint import load_state_dict

    sd = load_state_dict(nolanvild_pt)
    for bits in range(2, 9):
        records = [rec(n, t, f"int{bits}" if t.ndim == 2 else "fp16") for n, t in sd.items()]
        data = encode_qgv3(records, config=None, policy=None, codec="zlib")
        assert_exact(data, records)
    records = [rec(n, t, "exact") for n, t in sd.items()]  # bit-exact fp32 passthrough of the real weights
    art = assert_exact(encode_qgv3(records, config=None, policy=None, codec="zlib"), records)
    for n, t in art.state_dict().items():
        assert torch.equal(t, sd[n])


def test_layout_choice_is_measured() -> None:
    """int5/int6 levels of Gaussian weights compress smaller as bytes under lzma; int4 and raw storage prefer dense."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(256, 256, generator=g)
    for bits, codec, want in ((6, "lzma", "byte"), (4, "lzma", "dense"), (6, "raw", "dense")):
        art = decode_qgv3(encode_qgv3([rec("w", w, f"int{bits}")], config=None, policy=None, codec=codec))
        assert art.streams[0]["layout"] == want, (bits, codec)
        for layout in ("dense", "byte"):  # the stored choice really is the smaller one
            other = Q._layout_bytes(Q.StreamKind.LEVELS, Q.Layout[layout.upper()], art.records[0].q.reshape(-1), bits)
            if layout != want:
                assert len(compress(codec, other)) >= art.blocks[art.streams[0]["block"]]["stored_bytes"] or art.streams[0]["stored_exact"] is False


def test_separate_and_solid_blocks_and_inspect_accounting() -> None:
    g = torch.Generator().manual_seed(2)
    big = [rec("a", torch.randn(128, 256, generator=g), "int6"), rec("b", torch.randn(4096, generator=g), "fp16")]
    tiny = [rec(f"t{i}", torch.randn(8, generator=g), spec) for i, spec in enumerate(["fp16", "fp32", "bf16", "exact"])]
    sizes = {}
    for records, mode in ((big, "separate"), (big, "solid"), (tiny, "separate"), (tiny, "solid")):
        data = encode_qgv3(records, config=None, policy=None, codec="lzma", blocks=mode)
        art = assert_exact(data, records)
        sizes[id(records), mode] = len(data)
        assert len(art.blocks) == (1 if mode == "solid" else len(art.streams))
        assert all(s["stored_exact"] == (mode == "separate") for s in art.streams)
        stored = sum(s["stored_bytes"] for s in art.streams)
        assert stored == sum(b["stored_bytes"] for b in art.blocks) == len(data) - art.header_bytes
        shares = art.tensor_shares()
        assert set(shares) == {r.name for r in records}
        assert abs(sum(shares.values()) - stored) < 1e-6
        raw = art.raw_sizes()
        for r in records:
            if r.spec.kind == "int":
                per = r.spec.bits / 8 if art.streams[0]["layout"] == "dense" else 1
                assert raw[r.name] == r.numel * per + r.scales.nbytes
            else:
                assert raw[r.name] == r.data.nbytes
        for s in art.streams:
            assert s["tensors"] and s["codec"] == "lzma" and s["raw_bytes"] > 0
    for records in (big, tiny):  # auto keeps the smaller of the two
        auto = encode_qgv3(records, config=None, policy=None, codec="lzma")
        assert len(auto) == min(sizes[id(records), "separate"], sizes[id(records), "solid"])


def test_write_and_read_file(tmp_path) -> None:
    records = mixed_records(3)[:5]
    p = tmp_path / "sub" / "m.qg3"
    n = write_qgv3(p, records, config=None, policy=None, codec="zlib")
    assert p.stat().st_size == n
    assert_exact(p.read_bytes(), records)
    assert read_qgv3(p).total_bytes == n
    with pytest.raises(GolfpackError, match="not found"):
        read_qgv3(tmp_path / "missing.qg3")
    assert not [x for x in p.parent.iterdir() if x.name.endswith(".tmp")]


def test_encode_rejects_bad_input() -> None:
    r = rec("w", torch.randn(4, 4), "int4")
    with pytest.raises(ValueError, match="duplicate"):
        encode_qgv3([r, r], config=None, policy=None, codec="raw")
    bad = TensorRecord("w", (4, 4), "float32", TensorSpec.parse("int4"), q=np.full((4, 4), 8, np.int8), scales=r.scales)
    with pytest.raises(ValueError, match="outside"):
        encode_qgv3([bad], config=None, policy=None, codec="raw")
    with pytest.raises(GolfpackError, match="unknown codec"):
        encode_qgv3([r], config=None, policy=None, codec="lz4")
    with pytest.raises(ValueError, match="config"):
        encode_qgv3([r], config={"x": float("nan")}, policy=None, codec="raw")


# ------------------------------------------------------------------------------------------------
# golden bytes


def golden_records() -> list[TensorRecord]:
    """Fixed records, no RNG: one per stream kind."""
    q = (np.arange(12, dtype=np.int16) % 7 - 3).astype(np.int8).reshape(3, 4)
    return [
        TensorRecord("blocks.0.w", (3, 4), "float32", TensorSpec.parse("int3"), q=q, scales=np.array([0.5, 0.25, 2.0], np.float16)),
        TensorRecord("gain", (2,), "float32", TensorSpec.parse("int8:absmax"), q=np.array([127, -5], np.int8), scales=np.array([0.125], np.float32)),
        TensorRecord("bias", (3,), "float32", TensorSpec.parse("fp16"), data=np.array([1.0, -2.0, 0.5], np.float16)),
        TensorRecord("pos", (2,), "int64", TensorSpec.parse("exact"), data=np.array([7, -1], np.int64)),
    ]


def golden_bytes() -> bytes:
    return encode_qgv3(golden_records(), config={"model_dim": 4}, policy={"name": "golden"}, codec="raw", meta=None)


def test_golden_bytes() -> None:
    data = golden_bytes()
    assert data == GOLDEN.read_bytes()
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SHA256
    art = decode_qgv3(GOLDEN.read_bytes())
    sd = art.state_dict()
    assert sd["blocks.0.w"][0].tolist() == [-1.5, -1.0, -0.5, 0.0] and sd["blocks.0.w"][2].tolist() == [-4.0, -2.0, 0.0, 2.0]
    assert sd["gain"].tolist() == [15.875, -0.625] and sd["bias"].tolist() == [1.0, -2.0, 0.5]
    assert sd["pos"].dtype == torch.int64 and sd["pos"].tolist() == [7, -1]
    # the documented layout, byte by byte
    magic, ver, hcodec, flags, hstored, hraw, hcrc = PREAMBLE.unpack_from(data)
    assert (magic, ver, hcodec, flags, hstored) == (b"QGv3\r\n\x1a\n", 3, 0, 0, hraw)
    header = json.loads(data[24 : 24 + hraw])
    assert data[24 : 24 + hraw] == json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert zlib.crc32(data[24 : 24 + hraw]) == hcrc
    assert header["blocks"] == [{"codec": 0, "crc": zlib.crc32(data[24 + hraw :]), "raw": len(data) - 24 - hraw, "stored": len(data) - 24 - hraw}]
    body = data[24 + hraw :]
    s = header["streams"]
    assert s[0]["kind"] == 0 and s[0]["bits"] == 3 and s[0]["layout"] == 2 and s[0]["count"] == 12
    assert body[:5] == Q.pack_bits(golden_records()[0].q, 3)


# ------------------------------------------------------------------------------------------------
# hostile and corrupted files


def small_artifact() -> bytes:
    return encode_qgv3(mixed_records(5)[:4] + [rec("p", torch.arange(6.0), "fp16")], config=None, policy=None, codec="zlib")


def split(data: bytes) -> tuple[dict, bytes]:
    _, _, hcodec, _, hstored, hraw, _ = PREAMBLE.unpack_from(data)
    hb = data[24 : 24 + hstored]
    raw = Q.decompress(hcodec, hb, hraw)
    return json.loads(raw), data[24 + hstored :]


def rebuild(header: dict | bytes, body: bytes, **pre) -> bytes:
    """Re-encode a (mutated) header with a CORRECT crc, so the validator (not the checksum) must catch it."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    f = dict(magic=MAGIC, version=VERSION, codec=0, flags=0, stored=len(raw), raw=len(raw), crc=zlib.crc32(raw))
    f.update(pre)
    return PREAMBLE.pack(f["magic"], f["version"], f["codec"], f["flags"], f["stored"], f["raw"], f["crc"]) + raw + body


def mutate(fn):
    h, body = split(small_artifact())
    out = fn(h, body)
    if isinstance(out, tuple):
        return rebuild(*out)
    return rebuild(h, body)


def _first_int_tensor(h):
    return next(e for e in h["tensors"] if "scales" in e)


def _first_matrix(h):
    return next(e for e in h["tensors"] if "rows" in e)


def _empty_tensor_with_huge_dims(h):
    # numel 0, so every count still tiles; only the dims themselves are absurd
    pi = next(i for i, s in enumerate(h["streams"]) if s.get("dtype") == "float16" and s["kind"] == 2)
    h["tensors"].append({"name": "z", "shape": [0, 2**27, 2**27], "dtype": "float32", "spec": "fp16",
                         "digest": hashlib.sha256(b"").hexdigest(), "group": pi, "offset": h["streams"][pi]["count"]})


HOSTILE = {
    "huge shape": lambda h, b: _first_int_tensor(h).update(shape=[2**40, 2**40]),
    "huge dim list": lambda h, b: _first_int_tensor(h).update(shape=[1] * 100),
    "negative dim": lambda h, b: _first_int_tensor(h).update(shape=[-24, -40]),
    "float dim": lambda h, b: _first_int_tensor(h).update(shape=[24.0, 40]),
    "bool dim": lambda h, b: _first_int_tensor(h).update(shape=[True, 960]),
    "string offset": lambda h, b: h["tensors"][1].update(offset="0"),
    "overlapping offsets": lambda h, b: h["tensors"][1].update(offset=0),  # v2 shares the int2 stream with w2
    "overlapping scale offsets": lambda h, b: h["tensors"][3].update(scale_offset=0),
    "gap in offsets": lambda h, b: h["tensors"][2].update(offset=h["tensors"][2]["offset"] + 1),
    "duplicate names": lambda h, b: h["tensors"][1].update(name=h["tensors"][0]["name"]),
    "empty name": lambda h, b: h["tensors"][1].update(name=""),
    "unknown codec id": lambda h, b: h["blocks"][0].update(codec=99),
    "negative codec id": lambda h, b: h["blocks"][0].update(codec=-1),
    "unknown stream kind": lambda h, b: h["streams"][0].update(kind=7),
    "unknown layout": lambda h, b: h["streams"][0].update(layout=9),
    "bits out of range": lambda h, b: h["streams"][0].update(bits=9),
    "unknown dtype": lambda h, b: h["streams"][-1].update(dtype="complex64"),
    "unknown group id": lambda h, b: h["tensors"][0].update(group=99),
    "negative group id": lambda h, b: h["tensors"][0].update(group=-1),
    "stream count too big": lambda h, b: h["streams"][0].update(count=h["streams"][0]["count"] + 8),
    "stream count absurd": lambda h, b: h["streams"][0].update(count=2**62),
    "block raw absurd": lambda h, b: h["blocks"][0].update(raw=2**45),
    "block stored beyond file": lambda h, b: h["blocks"][-1].update(stored=h["blocks"][-1]["stored"] + 1),
    "stream offset wrong": lambda h, b: h["streams"][0].update(at=1),
    "spec/stream mismatch": lambda h, b: _first_int_tensor(h).update(spec="int7"),
    "passthrough into levels": lambda h, b: h["tensors"][-1].update(group=0),
    "scales in wrong stream": lambda h, b: _first_int_tensor(h).update(scales=_first_int_tensor(h)["group"]),
    "rows do not divide": lambda h, b: _first_int_tensor(h).update(rows=7),
    "rows not shape[0]": lambda h, b: _first_matrix(h).update(shape=_first_matrix(h)["shape"][::-1]),
    "rows on a 1-D tensor": lambda h, b: _first_matrix(h).update(shape=[math.prod(_first_matrix(h)["shape"])]),
    "2-D int without rows": lambda h, b: _first_matrix(h).pop("rows"),
    "empty tensor, huge dims": lambda h, b: _empty_tensor_with_huge_dims(h),
    "fp16 spec for an int64 tensor": lambda h, b: h["tensors"][-1].update(dtype="int64"),
    "bad spec": lambda h, b: h["tensors"][0].update(spec="int99"),
    "bad dtype": lambda h, b: h["tensors"][0].update(dtype="float8"),
    "int spec for int64": lambda h, b: _first_int_tensor(h).update(dtype="int64"),
    "bad digest": lambda h, b: h["tensors"][0].update(digest="xyz"),
    "missing field": lambda h, b: h["tensors"][0].pop("offset"),
    "unknown field": lambda h, b: h["tensors"][0].update(extra=1),
    "unknown top-level": lambda h, b: h.update(pickle="cos\nsystem\n"),
    "tensors not a list": lambda h, b: h.update(tensors={"a": 1}),
    "config not an object": lambda h, b: h.update(config=[1, 2]),
    "too many tensors": lambda h, b: h.update(tensors=h["tensors"] * 30000),
    "trailing bytes": lambda h, b: (h, b + b"\0"),
    "truncated body": lambda h, b: (h, b[:-1]),
    "not json": lambda h, b: (b"{not json", b),
    "json array": lambda h, b: (b"[1,2]", b),
    "nan constant": lambda h, b: (json.dumps(h).replace('"config": null', '"config": NaN').encode(), b),
    "duplicate json key": lambda h, b: (json.dumps(h).replace('"config": null', '"config": null, "config": null').encode(), b),
    "deep nesting": lambda h, b: (b"[" * 100000 + b"]" * 100000, b),
    "invalid utf8": lambda h, b: (b'{"\xff": 1}', b),
    "huge int literal": lambda h, b: (json.dumps(h).replace('"config": null', '"config": ' + "9" * 5000).encode(), b),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_header_rejected(case: str) -> None:
    data = mutate(HOSTILE[case])
    tracemalloc.start()
    try:
        with pytest.raises(GolfpackError, match="invalid QGv3 artifact"):
            decode_qgv3(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # (the 30000-tensor header itself is ~20 MB of parsed JSON)


def test_preamble_attacks() -> None:
    data = small_artifact()
    h, body = split(data)
    raw = json.dumps(h).encode()
    cases = {
        "wrong magic": (b"PK\x03\x04" + data[4:], "wrong magic"),
        "version 2": (rebuild(h, body, version=2), "version 2"),
        "version 4": (rebuild(h, body, version=4), "version 4"),
        "flags": (rebuild(h, body, flags=1), "flags"),
        "header past EOF": (rebuild(h, body, stored=len(raw) + len(body) + 1), "past the end"),
        "absurd header size": (rebuild(h, body, stored=2**32 - 1), "exceeds the limit"),
        "absurd raw header size": (rebuild(h, body, raw=2**32 - 1), "exceeds the limit"),
        "header raw size lies": (rebuild(h, body, raw=len(raw) - 1), "raw stream holds"),
        "unknown header codec": (rebuild(h, body, codec=77), "unknown codec id"),
        "bad header crc": (rebuild(h, body, crc=1), "header checksum"),
        "empty": (b"", "shorter than"),
        "preamble only": (data[:24], "past the end"),
    }
    for _name, (bad, msg) in cases.items():
        with pytest.raises(GolfpackError, match=msg):
            decode_qgv3(bad)


def test_bad_block_checksum_and_every_truncation() -> None:
    data = small_artifact()
    with pytest.raises(GolfpackError, match="block 0 checksum"):
        h, body = split(data)
        decode_qgv3(rebuild(h, bytes([body[0] ^ 1]) + body[1:]))
    for cut in range(len(data)):
        with pytest.raises(GolfpackError):
            decode_qgv3(data[:cut])


def test_every_single_byte_corruption_is_caught() -> None:
    """Each byte is covered by the preamble checks, the header crc or a block crc: no flip decodes."""
    data = small_artifact()
    rng = np.random.default_rng(0)
    for pos in list(range(24)) + sorted(rng.choice(np.arange(24, len(data)), 150, replace=False).tolist()):
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(8))
        with pytest.raises(GolfpackError):
            decode_qgv3(bytes(bad))


def test_decompression_bomb_block_refused() -> None:
    """A block whose stream inflates past its declared raw size (crc and sizes otherwise consistent)."""
    data = encode_qgv3([rec("p", torch.zeros(64), "fp16")], config=None, policy=None, codec="zlib")
    h, body = split(data)
    bomb = compress("zlib", b"\0" * (16 << 20))
    h["blocks"][0].update(stored=len(bomb), crc=zlib.crc32(bomb))
    tracemalloc.start()
    try:
        with pytest.raises(GolfpackError, match="decompression bomb"):
            decode_qgv3(rebuild(h, bomb))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_levels_outside_range_in_byte_stream_refused() -> None:
    g = torch.Generator().manual_seed(4)
    data = encode_qgv3([rec("w", torch.randn(64, 64, generator=g), "int6")], config=None, policy=None, codec="lzma")
    h, body = split(data)
    lv = next(s for s in h["streams"] if s["kind"] == 0)
    assert lv["layout"] == Q.Layout.BYTE
    blk = h["blocks"][lv["block"]]
    raw = bytearray(Q.decompress(blk["codec"], body[: blk["stored"]] if lv["block"] == 0 else b"", blk["raw"]))
    raw[lv["at"]] = 63  # level 63 - 31 = 32 > qmax
    z = compress("raw", bytes(raw))
    blocks_after = body[blk["stored"] :]
    h["blocks"][lv["block"]].update(codec=0, stored=len(z), crc=zlib.crc32(z))
    with pytest.raises(GolfpackError, match="outside"):
        decode_qgv3(rebuild(h, z + blocks_after))


def test_custom_limits() -> None:
    data = small_artifact()
    with pytest.raises(GolfpackError, match="exceed the limit of 2"):
        decode_qgv3(data, limits=Limits(max_tensors=2))
    with pytest.raises(GolfpackError, match="limit"):
        decode_qgv3(data, limits=Limits(max_raw_bytes=100))
    with pytest.raises(GolfpackError, match="limit"):
        decode_qgv3(data, limits=Limits(max_header_bytes=50))


def test_tensor_digest_matches_plain_sha256() -> None:
    t = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    assert tensor_digest(t) == hashlib.sha256(t.view(torch.int16).numpy().tobytes()).hexdigest()
    assert tensor_digest(torch.tensor(True)) == hashlib.sha256(b"\x01").hexdigest()
