"""Stream codecs for QGv3: compress a byte string, decompress it back with a hard cap on the output.

Every codec writes the leanest framing that still decodes unambiguously, because the QGv3 header
already records each stream's raw size and a crc32 of its stored bytes:

- `raw`: the bytes as they are.
- `zlib`: raw DEFLATE (no zlib header/adler trailer), level 9, memLevel 9.
- `lzma`: one props byte (lc + 9 * (lp + 5 * pb), as in .lzma files) + a raw LZMA1 stream with an
  end marker. The dictionary size is not stored: both sides derive it from the raw size
  (`lzma_dict_size`). `compress` tries a few (lc, lp, pb) settings and keeps the smallest (they
  matter for byte containers and multi-byte elements); pass `lzma_props` to force one. The encoder's
  match search (`LzmaEncoder`) is not in the stream either: any setting decodes the same way.
- `zstd`: a zstd frame (content size in the frame header, no checksum), level 22, window sized to the
  data (long-range matching on).
- `brotli`: quality 11, window 24 bits (only when the `brotli` package is installed).
- `rans`: golfpack's interleaved static rANS with order-0 tables (formats/rans.py; numpy only). On quantized
  level streams it is the smallest and by far the fastest: 5-8% under lzma on trained int6 levels, where
  brotli q11 takes minutes on a 36M-parameter model.

`decompress(codec, data, raw_size)` never produces (or allocates for) more than `raw_size` (+1 to
detect overrun) bytes, and raises FormatError unless the stream decodes to exactly `raw_size` bytes
and is fully consumed: a stream that inflates past its declared size (a decompression bomb) is refused.
"""

from __future__ import annotations

import lzma
import zlib
from collections.abc import Callable
from enum import IntEnum

from golfpack.errors import FormatError, GolfpackError, UsageError
from golfpack.formats import rans
from golfpack.formats.qgv3_constants import CODECS, Codec  # the id table lives with the other format constants

# (lc, lp, pb) settings `compress("lzma", ...)` tries: the xz default, then "no literal context"
# (levels in byte containers are nearly order-0), then more literal context.
LZMA_PROPS_CANDIDATES: tuple[tuple[int, int, int], ...] = ((3, 0, 2), (0, 0, 0), (4, 0, 0))
LZMA_PRESET = 9 | lzma.PRESET_EXTREME


class LzmaEncoder(IntEnum):
    """How hard the lzma encoder searches for matches (the decoder neither knows nor cares).

    EXTREME: preset 9 | EXTREME, nice_len 273: finds long matches (headers, repeated values).
    LITERAL: binary-tree-2 match finder, nice_len 32, depth 4: on quantized level streams, which are
      nearly order-0 and have few long matches, it is 3-8x faster than EXTREME and as small or smaller
      (measured on trained int6 levels: -0.4% SamTruss, -0.2% synthetic, 0.0% nolanvild): a deep
      search finds short matches that cost more bits than the literals they replace."""

    EXTREME = 0
    LITERAL = 1


_LZMA_ENCODER_SETTINGS = {
    LzmaEncoder.EXTREME: {"preset": LZMA_PRESET, "nice_len": 273},
    LzmaEncoder.LITERAL: {"preset": 6, "mode": lzma.MODE_NORMAL, "mf": lzma.MF_BT2, "nice_len": 32, "depth": 4},
}
_ZSTD_MAX_WINDOW_LOG = 27  # 128 MiB: both the encoder's window cap and the decoder's memory cap


def _load_zstd():
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def _load_brotli():
    try:
        import brotli
    except ImportError:
        return None
    return brotli


def available_codecs() -> list[str]:
    """Codec names usable in this environment (raw/zlib/lzma/rans always; zstd/brotli if installed)."""
    out = ["raw", "zlib", "lzma", "rans"]
    if _load_zstd() is not None:
        out.append("zstd")
    if _load_brotli() is not None:
        out.append("brotli")
    return out


def codec_id(codec: str | int) -> Codec:
    """Codec from a name (UsageError if unknown: a caller's argument) or a stored id (FormatError if unknown)."""
    if isinstance(codec, str):
        if codec.lower() not in CODECS:
            raise UsageError(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}", param="codec")
        return CODECS[codec.lower()]
    try:
        return Codec(int(codec))
    except ValueError:
        raise FormatError(f"unknown codec id {codec!r} (known: {', '.join(f'{c.value}={c.name.lower()}' for c in Codec)})") from None


def _need(c: Codec):
    mod = _load_zstd() if c == Codec.ZSTD else _load_brotli()
    if mod is None:
        pkg = "zstandard" if c == Codec.ZSTD else "brotli"
        raise GolfpackError(f"codec {c.name.lower()} needs the '{pkg}' package: pip install {pkg}")
    return mod


def lzma_dict_size(raw_size: int) -> int:
    """LZMA dictionary both sides use: the raw size rounded up to a power of two, clamped to [4 KiB, 64 MiB]."""
    return min(1 << 26, max(1 << 12, 1 << max(0, raw_size - 1).bit_length()))


def lzma_props_byte(lc: int, lp: int, pb: int) -> int:
    return lc + 9 * (lp + 5 * pb)


def _lzma_filters(props: int, raw_size: int) -> list[dict]:
    lc, rest = props % 9, props // 9
    lp, pb = rest % 5, rest // 5
    if pb > 4 or lc + lp > 4:  # liblzma's LZMA1 limits (lc + lp <= 4 keeps the literal table small)
        raise FormatError(f"invalid lzma props byte {props}")
    return [{"id": lzma.FILTER_LZMA1, "lc": lc, "lp": lp, "pb": pb, "dict_size": lzma_dict_size(raw_size)}]


_LZMA_CHUNK = 1 << 20  # input fed to the encoder per call when progress is reported (the bytes do not depend on it)


def _lzma_compress(data: bytes, props: tuple[int, int, int], encoder: LzmaEncoder = LzmaEncoder.EXTREME,
                   progress: Callable[[int], None] | None = None) -> bytes:
    pb_ = lzma_props_byte(*props)
    f = _lzma_filters(pb_, len(data))
    f[0].update(_LZMA_ENCODER_SETTINGS[LzmaEncoder(encoder)])
    if progress is None:
        return bytes([pb_]) + lzma.compress(data, format=lzma.FORMAT_RAW, filters=f)
    enc = lzma.LZMACompressor(format=lzma.FORMAT_RAW, filters=f)  # liblzma's output is the same however input arrives
    parts = [bytes([pb_])]
    view = memoryview(data)
    for i in range(0, len(data), _LZMA_CHUNK):
        parts.append(enc.compress(view[i : i + _LZMA_CHUNK]))
        progress(len(view[i : i + _LZMA_CHUNK]))
    parts.append(enc.flush())
    return b"".join(parts)


def compress(codec: str | int, data: bytes, *, lzma_props: tuple[int, int, int] | None = None,
             lzma_encoder: LzmaEncoder = LzmaEncoder.EXTREME, progress: Callable[[int], None] | None = None) -> bytes:
    """Compress `data` with one codec (see module doc for each codec's settings and framing).

    lzma_encoder: the lzma match search (`LzmaEncoder`); the stream decodes the same either way.
    progress: called with the input bytes done (lzma as it goes, the others once at the end); the
    output is the same with or without it."""
    c = codec_id(codec)
    data = bytes(data)
    if lzma_encoder not in tuple(LzmaEncoder) or isinstance(lzma_encoder, bool):
        raise UsageError(f"lzma_encoder must be one of {[e.name for e in LzmaEncoder]}, got {lzma_encoder!r}", param="lzma_encoder")
    lzma_encoder = LzmaEncoder(lzma_encoder)
    if progress is not None and not (c == Codec.LZMA and lzma_props is not None):
        out = compress(c, data, lzma_props=lzma_props, lzma_encoder=lzma_encoder)
        progress(len(data))
        return out
    if c == Codec.RAW:
        return data
    if c == Codec.ZLIB:
        z = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
        return z.compress(data) + z.flush()
    if c == Codec.LZMA:
        if lzma_props is not None and not (len(lzma_props) == 3 and lzma_props[2] <= 4 and lzma_props[0] + lzma_props[1] <= 4
                                           and min(lzma_props) >= 0):
            raise UsageError(f"lzma_props must be (lc, lp, pb) with lc + lp <= 4 and pb <= 4, got {lzma_props!r}", param="lzma_props")
        if lzma_props is not None:
            return _lzma_compress(data, lzma_props, lzma_encoder, progress)
        return min((_lzma_compress(data, p, lzma_encoder) for p in LZMA_PROPS_CANDIDATES), key=len)
    if c == Codec.RANS:
        return rans.encode(data)
    if c == Codec.ZSTD:
        zstd = _need(c)
        wlog = min(_ZSTD_MAX_WINDOW_LOG, max(10, max(1, len(data)).bit_length()))
        params = zstd.ZstdCompressionParameters.from_level(
            22, source_size=len(data), window_log=wlog, enable_ldm=True, write_checksum=0, write_content_size=1, write_dict_id=0
        )
        cctx = zstd.ZstdCompressor(compression_params=params)
        return cctx.compress(data)
    brotli = _need(c)
    return brotli.compress(data, quality=11, lgwin=24)


def decompress(codec: str | int, data: bytes, raw_size: int) -> bytes:
    """Decompress to exactly `raw_size` bytes or raise FormatError; output never exceeds raw_size + 1."""
    c = codec_id(codec)
    if isinstance(raw_size, bool) or not isinstance(raw_size, int) or raw_size < 0:
        raise UsageError(f"raw_size must be a non-negative int, got {raw_size!r}", param="raw_size")
    name = c.name.lower()
    data = bytes(data)
    try:
        if c == Codec.RAW:
            if len(data) != raw_size:
                raise FormatError(f"raw stream holds {len(data)} bytes, expected {raw_size}")
            out, done = data, True
        elif c == Codec.ZLIB:
            d = zlib.decompressobj(-15)
            out = d.decompress(data, raw_size + 1)
            done = d.eof and not d.unused_data and not d.unconsumed_tail
        elif c == Codec.LZMA:
            if not data:
                raise FormatError("lzma stream is empty (no props byte)")
            dec = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_lzma_filters(data[0], raw_size))
            out = dec.decompress(data[1:], max_length=raw_size + 1)
            done = dec.eof and not dec.unused_data
        elif c == Codec.RANS:
            out, done = rans.decode(data, raw_size), True  # checks every field, exact size or FormatError
        elif c == Codec.ZSTD:
            zstd = _need(c)
            fp = zstd.get_frame_parameters(data)
            if fp.content_size != raw_size:  # checked BEFORE decompressing: the frame's size is what gets allocated
                raise FormatError(f"zstd stream declares {fp.content_size} bytes, expected {raw_size}")
            # libzstd enforces the frame's declared size while decoding, so output stays <= raw_size
            dobj = zstd.ZstdDecompressor(max_window_size=1 << _ZSTD_MAX_WINDOW_LOG).decompressobj()
            out = dobj.decompress(data)
            done = dobj.eof and not dobj.unused_data
        else:
            brotli = _need(c)
            dec = brotli.Decompressor()
            out = dec.process(data, output_buffer_limit=raw_size + 1)
            done = dec.is_finished()
    except GolfpackError:
        raise
    except Exception as e:  # corrupt input: each library raises its own error type
        raise FormatError(f"{name} stream is corrupt ({type(e).__name__}: {e})") from None
    if len(out) > raw_size:
        raise FormatError(f"{name} stream inflates past its declared {raw_size} bytes (refusing a decompression bomb)")
    if len(out) != raw_size or not done:
        raise FormatError(f"{name} stream decodes to {len(out)} bytes{'' if done else ' and does not end cleanly'}, expected {raw_size}")
    return out


__all__ = ["CODECS", "Codec", "LZMA_PROPS_CANDIDATES", "LzmaEncoder", "available_codecs", "codec_id", "compress", "decompress", "lzma_dict_size"]
