"""Issue 11 regressions, one class at a time, each with a tiny hostile file made here."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from golfpack.errors import FormatError, GolfpackError, UsageError
from golfpack.formats.qgv3 import decode_qgv3, encode_qgv3, read_header
from golfpack.formats.qgv3_constants import DEFAULT_LIMITS
from golfpack.formats.records import TensorRecord
from golfpack.formats.spec import TensorSpec
from golfpack.packer.decoder import decoder_source
from golfpack.packer.quantize import quantize_tensor


def _records() -> list[TensorRecord]:
    g = torch.Generator().manual_seed(1)
    return [quantize_tensor("w", torch.randn(4, 6, generator=g), TensorSpec.parse("int6")),
            quantize_tensor("b", torch.randn(5, generator=g), TensorSpec.parse("fp16"))]


def _rebuild(data: bytes, edit) -> bytes:
    """`data` with its header JSON text edited by `edit` (dict -> str) and every checksum recomputed."""
    from golfpack.formats.codecs import decompress

    _m, _v, hc, _f, hs, hr, _c = struct.unpack_from("<8sHBBIII", data)
    h = json.loads(decompress(hc, data[24 : 24 + hs], hr))
    blocks = data[24 + hs :]
    text = edit(h)
    raw = text.encode("utf-8", "surrogatepass")
    return struct.pack("<8sHBBIII", b"QGv3\r\n\x1a\n", 3, 0, 0, len(raw), len(raw), zlib.crc32(raw)) + raw + blocks


def _dump(h: dict) -> str:
    return json.dumps(h, sort_keys=True, separators=(",", ":"))


def _set(path: tuple, value):
    def edit(h: dict) -> str:
        d = h
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value
        return _dump(h)

    return edit


@pytest.fixture(scope="module")
def good() -> bytes:
    return encode_qgv3(_records(), codec="zlib", blocks="separate")


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    import importlib.util

    p = tmp_path_factory.mktemp("dec") / "qg3_decode.py"
    p.write_text(decoder_source())
    spec = importlib.util.spec_from_file_location("qg3_decode", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _both_refuse(data: bytes, decoder, tmp_path: Path, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        decode_qgv3(data)
    p = tmp_path / "x.qg3"
    p.write_bytes(data)
    with pytest.raises(ValueError):
        decoder.load(str(p))


# -- class 1: the header's config is validated by type and range, and against the shapes ----------------


@pytest.mark.parametrize("field,value", [("num_layers", 2147483648), ("num_layers", 1025), ("num_layers", 9.0), ("num_layers", "9"),
                                         ("num_layers", None), ("num_layers", True), ("model_dim", [512]),
                                         ("logit_softcap", 1e308), ("logit_softcap", float("inf")), ("logit_softcap", float("nan")),
                                         ("logit_softcap", "30"), ("tie_embeddings", 1), ("activation", 2), ("rope_base", None)])
def test_model_config_refuses_wrong_types_and_ranges(field, value) -> None:
    from golfpack.model import ModelConfig

    with pytest.raises(ValueError, match=field):
        ModelConfig.from_dict({field: value})
    assert ModelConfig.from_dict({"num_layers": 1024, "logit_softcap": 30}).num_layers == 1024  # ints are fine for floats


def test_huge_num_layers_in_a_stored_config_is_a_fast_format_error(tmp_path) -> None:
    from golfpack.loading import load_any
    from golfpack.model import GPT, ModelConfig

    cfg = ModelConfig(vocab_size=16, num_layers=1, model_dim=8, num_heads=2, num_kv_heads=1, mlp_hidden=16)
    recs = [quantize_tensor(n, t, TensorSpec.parse("fp16")) for n, t in GPT(cfg).state_dict().items()]
    data = encode_qgv3(recs, config=cfg.to_dict(), codec="zlib")
    for value, match in ((2147483648, "num_layers must be in"), (1024, "1024 layers but there are only 12 tensors"), (2, "missing blocks.1")):
        p = tmp_path / "m.qg3"
        p.write_bytes(_rebuild(data, _set(("config", "num_layers"), value)))
        t = time.perf_counter()
        with pytest.raises(FormatError, match=match):
            load_any(p)
        assert time.perf_counter() - t < 2.0
    p.write_bytes(_rebuild(data, lambda h: _dump(h).replace('"logit_softcap":30.0', '"logit_softcap":1e400')))
    with pytest.raises(FormatError, match="overflows a double"):
        load_any(p)
    p.write_bytes(data)
    assert load_any(p).config == cfg


def test_config_policy_meta_must_be_plain_json_within_bounds(good, decoder, tmp_path) -> None:
    deep: list = []
    for _ in range(40):
        deep = [deep]
    _both_refuse(_rebuild(good, _set(("meta",), {"x": deep})), decoder, tmp_path, "nested more than")
    _both_refuse(_rebuild(good, _set(("policy",), {"n": 2**70})), decoder, tmp_path, "over 2\\^63")
    _both_refuse(_rebuild(good, _set(("config",), [1])), decoder, tmp_path, "config must be an object")


# -- class 2: only GolfpackError, finite numbers, strict labels ------------------------------------------


def test_huge_alone_hint_and_list_dtype_are_format_errors(good, decoder, tmp_path) -> None:
    _both_refuse(_rebuild(good, lambda h: _dump(h).replace('"at":0', '"alone":' + "9" * 309 + ',"at":0', 1)), decoder, tmp_path,
                 "alone = 9+ is out of range")
    _both_refuse(_rebuild(good, _set(("tensors", 0, "dtype"), ["float32"])), decoder, tmp_path, "unknown dtype")
    _both_refuse(_rebuild(good, _set(("streams", 0, "dtype"), {"a": 1})), decoder, tmp_path, "dtype")


def test_json_numbers_that_overflow_to_infinity_are_refused(good, decoder, tmp_path) -> None:
    _both_refuse(_rebuild(good, lambda h: _dump(h).replace('"meta":null', '"meta":{"x":1e400}')), decoder, tmp_path, "overflows")
    _both_refuse(_rebuild(good, lambda h: _dump(h).replace('"meta":null', '"meta":{"x":-1E309}')), decoder, tmp_path, "overflows")
    _both_refuse(_rebuild(good, lambda h: _dump(h).replace('"meta":null', '"meta":{"x":Infinity}')), decoder, tmp_path, "constant")


@pytest.mark.parametrize("label", ["INT6", " int6 ", "int06", "int\u0666", "int6:quantile", "FP16", "int6+GPTQ"])
def test_spec_labels_are_parsed_strictly_on_read(good, decoder, tmp_path, label) -> None:
    _both_refuse(_rebuild(good, _set(("tensors", 1, "spec"), label)), decoder, tmp_path, "canonical|cannot parse")


# -- class 3: names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["\x1b[31mred", "\x1b]0;title\x07", "a\nb", "\ud800", "x\u2028y", "\x00", "a" * 1025, ""])
def test_names_outside_the_spec_are_refused_by_reader_writer_and_decoder(good, decoder, tmp_path, name) -> None:
    _both_refuse(_rebuild(good, _set(("tensors", 1, "name"), name)), decoder, tmp_path, "name")
    rec = quantize_tensor(name, torch.ones(2), TensorSpec.parse("fp16"))
    with pytest.raises(UsageError, match="name"):
        encode_qgv3([rec], codec="raw")


def test_unicode_names_that_are_printable_round_trip() -> None:
    recs = [quantize_tensor(n, torch.ones(2), TensorSpec.parse("fp16")) for n in ("émbed", "层.0", "a b")]
    assert [r.name for r in decode_qgv3(encode_qgv3(recs, codec="raw")).records] == ["émbed", "层.0", "a b"]


def test_inspect_escapes_names_it_prints(tmp_path) -> None:
    from click.testing import CliRunner

    from golfpack.cli import main

    p = tmp_path / "evil.pt"
    torch.save({"\x1b]0;owned\x07w": torch.ones(2), "\ud800x": torch.ones(3), "ok": torch.ones(1)}, p)
    res = CliRunner().invoke(main, ["inspect", str(p)])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x07" not in res.output
    assert "\\x1b]0;owned\\x07w" in res.output and "\\ud800x" in res.output
    res = CliRunner().invoke(main, ["inspect", str(p), "--json"])
    assert res.exit_code == 0 and "\x1b" not in res.output
    assert {r["name"] for r in json.loads(res.output)["tensors"]} == {"\x1b]0;owned\x07w", "\ud800x", "ok"}


# -- class 4: memory and work bounds -------------------------------------------------------------------


def test_block_and_stream_counts_are_capped(good, decoder, tmp_path) -> None:
    def blocks(h: dict) -> str:
        h["blocks"] += [{"codec": 0, "raw": 0, "stored": 0, "crc": 0}] * DEFAULT_LIMITS.max_blocks
        return _dump(h)

    _both_refuse(_rebuild(good, blocks), decoder, tmp_path, "blocks exceed the limit of 64")

    def streams(h: dict) -> str:
        h["streams"] += [{"kind": 2, "dtype": "int8", "layout": 0, "count": 0, "block": 0, "at": 0}] * DEFAULT_LIMITS.max_streams
        return _dump(h)

    _both_refuse(_rebuild(good, streams), decoder, tmp_path, "streams exceed the limit of 64")


def _levels_file(n: int, dtype: str, digest: bool = True) -> bytes:
    """A legal file of one int2 tensor of n zeros (per-tensor scale): a few KB declaring n values."""
    from golfpack.formats.codecs import compress

    lv = bytes([0b01010101]) * (n // 4)
    raw = lv + struct.pack("<f", 1.0)
    z = compress("zlib", raw) if digest else b""  # a refused file need not hold its data
    item = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    import hashlib

    h = {"config": None, "policy": None, "meta": None,
         "streams": [{"kind": 0, "bits": 2, "layout": 2, "count": n, "block": 0, "at": 0},
                     {"kind": 1, "dtype": "float32", "layout": 0, "count": 1, "block": 0, "at": len(lv)}],
         "tensors": [{"name": "w", "shape": [n], "dtype": dtype, "spec": "int2", "digest": hashlib.sha256(bytes(n * item)).hexdigest() if digest else "0" * 64,
                      "group": 0, "offset": 0, "scales": 1, "scale_offset": 0}],
         "blocks": [{"codec": 1, "raw": len(raw), "stored": len(z), "crc": zlib.crc32(z)}]}
    hj = _dump(h).encode()
    return struct.pack("<8sHBBIII", b"QGv3\r\n\x1a\n", 3, 0, 0, len(hj), len(hj), zlib.crc32(hj)) + hj + z


def test_rebuilt_size_is_capped(decoder, tmp_path) -> None:
    # 2^27 float64 values would be 1 GiB of state dict from a 33 KB file: over max_output_bytes (512 MiB)
    data = _levels_file(1 << 27, "float64", digest=False)
    with pytest.raises(FormatError, match="rebuild to more than 536870912 bytes"):
        read_header(data)  # the header alone decides it (its block stores 0 bytes: nothing to decompress)
    p = tmp_path / "f.qg3"
    p.write_bytes(data)
    with pytest.raises(ValueError):
        decoder.load(str(p))


CHILD = r"""
import resource, sys, importlib.util
import torch
from golfpack.formats.qgv3 import decode_qgv3
data = open(sys.argv[2], "rb").read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "lib":
    sd = decode_qgv3(data).state_dict()
else:
    s = importlib.util.spec_from_file_location("d", sys.argv[3]); m = importlib.util.module_from_spec(s); s.loader.exec_module(m)
    sd = m.load(sys.argv[2], check=True)
assert sd["w"].numel() == int(sys.argv[4])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


@pytest.mark.parametrize("reader", ["lib", "dec"])
@pytest.mark.parametrize("n", [1 << 22, pytest.param(1 << 25, marks=pytest.mark.slow)])
def test_peak_memory_is_a_small_multiple_of_the_declared_size(tmp_path, reader, n) -> None:
    """docs/security.md: peak <= 2.5x (block raw + rebuilt state dict); measured by ru_maxrss in a fresh process.
    (n values of fp32 from an n/4-byte int2 stream in a file of a few KB; bench/hostile_memory.py runs the limits.)"""
    p = tmp_path / "big.qg3"
    p.write_bytes(_levels_file(n, "float32"))
    assert p.stat().st_size < n // 500
    dec = tmp_path / "dec.py"
    dec.write_text(decoder_source())
    r = subprocess.run([sys.executable, "-c", CHILD, reader, str(p), str(dec), str(n)], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    declared = n // 4 + 4 + 4 * n
    assert int(r.stdout.split()[-1]) < 2.5 * declared


def test_header_work_is_bounded_for_many_tiny_tensors(monkeypatch) -> None:
    from golfpack.formats import qgv3_plan
    from golfpack.formats.qgv3_constants import Codec

    recs = [quantize_tensor(f"t{i}", torch.ones(1), TensorSpec.parse("fp16")) for i in range(3000)]
    monkeypatch.setattr(qgv3_plan, "HEADER_FAST_BYTES", 64 << 10)  # this header is ~380 KB
    t = time.perf_counter()
    data = encode_qgv3(recs, codec="lzma")
    assert time.perf_counter() - t < 10.0
    assert data[10] == int(Codec.ZLIB)  # the preamble's header codec: zlib, not lzma extreme
    assert len(decode_qgv3(data).records) == 3000


# -- class 7: writer vs reader, decoder vs reader ------------------------------------------------------


def test_writer_refuses_what_the_reader_refuses() -> None:
    with pytest.raises(UsageError, match="9 dims exceed"):
        encode_qgv3([quantize_tensor("w", torch.ones([1] * 9), TensorSpec.parse("fp16"))], codec="raw")
    with pytest.raises(UsageError, match="name"):
        encode_qgv3([quantize_tensor("a" * 1025, torch.ones(1), TensorSpec.parse("fp16"))], codec="raw")
    with pytest.raises(UsageError, match="reader would refuse"):
        encode_qgv3(_records(), codec="raw", meta={"x": 2**70})


@pytest.mark.parametrize("spec", ["fp16", "fp32", "exact", "int6"])
def test_empty_tensors_pack_and_load_everywhere(decoder, tmp_path, spec) -> None:
    rec = quantize_tensor("e", torch.zeros(0), TensorSpec.parse(spec))
    data = encode_qgv3([rec, *_records()], codec="zlib")
    assert decode_qgv3(data).state_dict()["e"].shape == (0,)
    p = tmp_path / "e.qg3"
    p.write_bytes(data)
    assert decoder.load(str(p))["e"].shape == (0,)


def test_decoder_refuses_a_huge_count_and_a_lying_zstd_frame(good, decoder, tmp_path) -> None:
    _both_refuse(_rebuild(good, _set(("streams", 0, "count"), 1 << 40)), decoder, tmp_path, "count")
    pytest.importorskip("zstandard")
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + (1 << 40).to_bytes(8, "little") + b"\x01\x00\x00"  # declares 1 TiB, holds 0
    h = {"config": None, "policy": None, "meta": None,
         "streams": [{"kind": 2, "dtype": "uint8", "layout": 0, "count": 4, "block": 0, "at": 0}],
         "tensors": [{"name": "u", "shape": [4], "dtype": "uint8", "spec": "exact", "digest": "0" * 64, "group": 0, "offset": 0}],
         "blocks": [{"codec": 3, "raw": 4, "stored": len(frame), "crc": zlib.crc32(frame)}]}
    hj = _dump(h).encode()
    data = struct.pack("<8sHBBIII", b"QGv3\r\n\x1a\n", 3, 0, 0, len(hj), len(hj), zlib.crc32(hj)) + hj + frame
    _both_refuse(data, decoder, tmp_path, "declares 1099511627776 bytes")
    p = tmp_path / "z.qg3"
    p.write_bytes(data)
    with pytest.raises(ValueError, match="zstd frame declares the wrong size"):
        decoder.load(str(p))


def test_read_header_accepts_what_encode_writes(good) -> None:
    _pre, h = read_header(good)
    assert [t.name for t in h.tensors] == ["b", "w"] or [t.name for t in h.tensors] == ["w", "b"]
    assert isinstance(h, object) and all(isinstance(e, GolfpackError) is False for e in h.tensors)
