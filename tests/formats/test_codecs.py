"""Stream codecs: exact round trips, lean framing, and capped, strict decompression."""

from __future__ import annotations

import lzma
import os
import random
import tracemalloc
import zlib

import pytest

from golfpack.errors import GolfpackError, UsageError
from golfpack.formats import codecs as C
from golfpack.formats.codecs import CODECS, Codec, available_codecs, compress, decompress

DATA = os.urandom(3000) + bytes(range(256)) * 200 + b"\0" * 20000


def test_registry() -> None:
    assert {"raw", "zlib", "lzma", "zstd", "brotli", "rans"} == set(CODECS)
    assert [int(CODECS[n]) for n in ("raw", "zlib", "lzma", "zstd", "brotli", "rans")] == [0, 1, 2, 3, 4, 5]
    assert available_codecs()[:4] == ["raw", "zlib", "lzma", "rans"]  # rans needs only numpy
    with pytest.raises(GolfpackError, match="unknown codec 'lz4'"):
        compress("lz4", b"x")
    with pytest.raises(GolfpackError, match="unknown codec id 9"):
        decompress(9, b"x", 1)


@pytest.mark.parametrize("codec", available_codecs())
@pytest.mark.parametrize("data", [b"", b"a", DATA])
def test_round_trip(codec: str, data: bytes) -> None:
    z = compress(codec, data)
    assert decompress(codec, z, len(data)) == data
    assert decompress(CODECS[codec], z, len(data)) == data  # ids work too
    if codec not in ("raw", "rans") and len(data) > 1000:  # rans is order-0: DATA's repeats are 8 bits a byte to it
        assert len(z) < len(data) // 2
    if codec == "rans" and len(data) > 1000:
        assert len(z) < 3000 + 256 * 200 + 20000 // 64 + 2000  # random and uniform bytes kept, the zeros nearly free


def test_lean_framing() -> None:
    z = compress("zlib", DATA)
    assert zlib.decompress(z, -15) == DATA  # raw deflate: no 2-byte header, no adler32
    assert len(z) == len(zlib.compress(DATA, 9)) - 6
    lz = compress("lzma", DATA)
    props = lz[0]
    assert (props % 9, props // 9 % 5, props // 45) in C.LZMA_PROPS_CANDIDATES
    # smallest of the candidates, each a props byte + raw LZMA1
    assert len(lz) == min(len(compress("lzma", DATA, lzma_props=p)) for p in C.LZMA_PROPS_CANDIDATES)
    forced = compress("lzma", DATA, lzma_props=(0, 2, 2))
    assert forced[0] == 0 + 9 * (2 + 5 * 2) and decompress("lzma", forced, len(DATA)) == DATA
    assert C.lzma_dict_size(0) == 4096 and C.lzma_dict_size(5000) == 8192 and C.lzma_dict_size(1 << 40) == 1 << 26


@pytest.mark.parametrize("codec", available_codecs())
def test_wrong_sizes_truncation_and_garbage_refused(codec: str) -> None:
    z = compress(codec, DATA)
    for bad in (len(DATA) - 1, len(DATA) + 1, 0):
        with pytest.raises(GolfpackError, match=codec):
            decompress(codec, z, bad)
    if codec != "raw":
        with pytest.raises(GolfpackError):
            decompress(codec, z[: len(z) // 2], len(DATA))
        with pytest.raises(GolfpackError):
            decompress(codec, b"\xff" * 40 + z[40:], len(DATA))
        with pytest.raises(GolfpackError):
            decompress(codec, z + b"trailing", len(DATA))
    with pytest.raises(GolfpackError, match="non-negative"):
        decompress(codec, z, -1)


@pytest.mark.parametrize("codec", available_codecs())
def test_decompression_bomb_refused_with_bounded_memory(codec: str) -> None:
    """A stream that inflates to 8 MiB but declares 1000 bytes: refused, never materialising the 8 MiB."""
    if codec == "raw":
        pytest.skip("raw streams cannot inflate")
    zeros = b"\0" * (8 << 20)
    bomb = compress(codec, zeros, lzma_props=(3, 0, 2)) if codec == "lzma" else compress(codec, zeros)
    assert len(bomb) < 20_000
    tracemalloc.start()
    try:
        with pytest.raises(GolfpackError, match="decompression bomb|declares"):
            decompress(codec, bomb, 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_lzma_bad_props_byte_refused() -> None:
    z = compress("lzma", DATA)
    with pytest.raises(GolfpackError, match="props"):
        decompress("lzma", bytes([225]) + z[1:], len(DATA))
    with pytest.raises(GolfpackError, match="empty"):
        decompress("lzma", b"", 0)


def test_zstd_frame_must_declare_its_size() -> None:
    zstd = pytest.importorskip("zstandard")
    frame = zstd.ZstdCompressor(write_content_size=False).compress(DATA)
    with pytest.raises(GolfpackError, match="declares"):
        decompress("zstd", frame, len(DATA))


def test_missing_optional_package_message(monkeypatch) -> None:
    monkeypatch.setattr(C, "_load_brotli", lambda: None)
    assert "brotli" not in available_codecs()
    with pytest.raises(GolfpackError, match="pip install brotli"):
        compress("brotli", b"x")


def test_lzma_is_standard_raw_lzma1() -> None:
    """Anyone with liblzma can decode our lzma streams from the documented props byte + dict rule."""
    z = compress("lzma", DATA)
    p = z[0]
    f = [{"id": lzma.FILTER_LZMA1, "lc": p % 9, "lp": p // 9 % 5, "pb": p // 45, "dict_size": C.lzma_dict_size(len(DATA))}]
    assert lzma.decompress(z[1:], format=lzma.FORMAT_RAW, filters=f) == DATA
    assert Codec.LZMA == 2


def test_lzma_literal_encoder_is_the_same_format_and_smaller_on_levels() -> None:
    """LzmaEncoder.LITERAL changes only the encoder's match search: the stream decodes with the same props
    byte + dict rule, and on level-like bytes (order-0, few long matches) it is no bigger than EXTREME."""
    rnd = random.Random(0)
    data = bytes(min(62, max(0, round(rnd.gauss(31, 5)))) for _ in range(300_000))
    ext = compress("lzma", data, lzma_props=(0, 0, 0))
    lit = compress("lzma", data, lzma_props=(0, 0, 0), lzma_encoder=C.LzmaEncoder.LITERAL)
    assert lit != ext and lit[0] == ext[0] == 0
    assert decompress("lzma", lit, len(data)) == data
    f = [{"id": lzma.FILTER_LZMA1, "lc": 0, "lp": 0, "pb": 0, "dict_size": C.lzma_dict_size(len(data))}]
    assert lzma.decompress(lit[1:], format=lzma.FORMAT_RAW, filters=f) == data
    assert len(lit) <= len(ext)
    with pytest.raises(UsageError, match="lzma_encoder must be one of") as e:
        compress("lzma", data, lzma_encoder=7)  # type: ignore[arg-type]
    assert e.value.param == "lzma_encoder"


def test_lzma_progress_reports_every_byte_and_changes_none(monkeypatch) -> None:
    """compress(progress=...) feeds lzma in chunks to report as it goes: the same bytes as one call."""
    import golfpack.formats.codecs as C

    monkeypatch.setattr(C, "_LZMA_CHUNK", 1000)
    data = bytes(random.Random(0).randrange(12) for _ in range(25_500))
    for props, enc in (((0, 0, 0), C.LzmaEncoder.EXTREME), ((3, 0, 2), C.LzmaEncoder.EXTREME), ((0, 0, 0), C.LzmaEncoder.LITERAL)):
        seen: list[int] = []
        assert (C.compress("lzma", data, lzma_props=props, lzma_encoder=enc, progress=seen.append)
                == C.compress("lzma", data, lzma_props=props, lzma_encoder=enc))
        assert sum(seen) == len(data) and len(seen) == 26
    seen = []
    assert C.compress("zlib", data, progress=seen.append) == C.compress("zlib", data) and seen == [len(data)]
