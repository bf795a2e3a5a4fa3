"""QGv3 vocabulary: every number and name the file format fixes, in one place (as gguf-py's constants.py).

This module imports nothing of golfpack (tests/formats/test_qgv3_constants.py parses it to make sure),
and nothing outside the standard library: an independent reader can copy it whole. Ids below are
written into files: they are never renumbered, only appended to. The full spec is docs/qgv3.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"QGv3\r\n\x1a\n"  # CR LF / ^Z / LF catch text-mode and truncating transfers, as PNG's signature does
VERSION = 3
PREAMBLE = struct.Struct("<8sHBBIII")  # magic, version, header codec, flags, header stored, header raw, header crc32
assert PREAMBLE.size == 24
# Byte offset of each preamble field (FormatError names it when the field is wrong).
PREAMBLE_OFFSETS = {"magic": 0, "version": 8, "header_codec": 10, "flags": 11, "header_stored": 12, "header_raw": 16, "header_crc": 20}
FLAGS_NONE = 0  # the flags byte is reserved: version 3 defines no flag, so it must be 0


class Codec(IntEnum):
    """Codec ids as stored in QGv3 (never renumber: files on disk use them)."""

    RAW = 0
    ZLIB = 1
    LZMA = 2
    ZSTD = 3
    BROTLI = 4
    RANS = 5  # interleaved static rANS with order-0 tables (docs/qgv3.md, "rans"); golfpack's own, numpy only


# The `rans` codec's fixed numbers (docs/qgv3.md): frequencies sum to 2^RANS_PRECISION, lane states live in
# [RANS_LOW, 2^32) and renormalize by 16-bit words. The other limits bound a hostile payload's cost.
RANS_PRECISION = 16
RANS_LOW = 1 << 16
RANS_MAX_LANES = 4096  # lanes a stream may use (unless its size needs more to stay within RANS_MAX_STEPS)
RANS_MAX_STEPS = 1 << 16  # decoding steps at most: lanes >= ceil(raw / RANS_MAX_STEPS)
RANS_MAX_TABLES = 256  # frequency tables per stream (chunk ids are bytes)


CODECS: dict[str, Codec] = {c.name.lower(): c for c in Codec}  # name -> id for every codec the format knows


class StreamKind(IntEnum):
    """What a stream holds (stored as the int)."""

    LEVELS = 0  # integer levels of every int-`bits` tensor
    SCALES = 1  # dequantization scales: float16 (one per row) or float32 (one per tensor)
    PASSTHROUGH = 2  # passthrough values of one storage dtype
    SUBSCALES = 3  # quantized group sub-scales (k-quant style): unsigned `bits`-bit ints 1..2^bits-1, stored as sub - 1
    OUTLIERS = 4  # sparse outliers (SpQR-style): OUTLIER_ENTRY pairs (index delta, fp16 value); neither bits nor dtype


class Layout(IntEnum):
    """How a stream's values are laid out as bytes before compression (stored as the int)."""

    PLAIN = 0  # elements little-endian, one after another
    SHUFFLE = 1  # byte planes: byte 0 of every element, then byte 1, ... (multi-byte dtypes)
    DENSE = 2  # levels bit-packed, `bits` bits each, offset by +qmax (formats/bitpack.py)
    BYTE = 3  # levels one per byte, offset by +qmax (uint8)


LEVEL_BITS = range(2, 9)  # integer widths a LEVELS stream may hold
LEVEL_LAYOUTS = (Layout.DENSE, Layout.BYTE)  # layouts of a LEVELS (and a SUBSCALES) stream
SUBSCALE_BITS = range(2, 9)  # widths a SUBSCALES stream may hold
BIT_KINDS = (StreamKind.LEVELS, StreamKind.SUBSCALES)  # stream kinds with `bits` (and LEVEL_LAYOUTS), not `dtype`
VALUE_LAYOUTS = (Layout.PLAIN, Layout.SHUFFLE)  # layouts of SCALES and PASSTHROUGH streams

# OUTLIERS stream element: uint32 flat-index delta then the float16 value, little-endian, 6 bytes (numpy: [("d", "<u4"),
# ("v", "<f2")]). Per tensor the first delta is the first flat index, every later delta >= 1 (indices strictly increasing),
# and the last index < numel. Layout PLAIN (elements one after another) or SHUFFLE (6 byte planes: deltas compress well).
OUTLIER_ENTRY = struct.Struct("<Ie")
assert OUTLIER_ENTRY.size == 6
OUTLIER_RATES = range(1, 51)  # `+out<k>`: k outliers kept per 1,000 weights (at most 5%)


def outlier_count(numel: int, rate: int) -> int:
    """THE number of outliers a tensor of `numel` weights stores under `+out<rate>`: ceil(numel * rate / 1000)."""
    return -(-numel * rate // 1000)


# Storage dtypes of SCALES/PASSTHROUGH streams: name (torch's) -> numpy dtype string of the stored bytes,
# in canonical stream order.
STORAGE_DTYPES: dict[str, str] = {
    "float16": "<f2",
    "bfloat16": "<u2",  # raw bf16 bits (numpy has no bf16)
    "float32": "<f4",
    "float64": "<f8",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "bool": "u1",  # 0/1 bytes; anything else is rejected on read
}
TENSOR_DTYPES = tuple(STORAGE_DTYPES)  # original dtypes a tensor entry may name (restored on load)
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")  # the only dtypes integer levels may stand for
SCALES_PER_ROW = "float16"  # scales dtype of a per-row (2-D) int tensor: one per row
SCALES_PER_TENSOR = "float32"  # scales dtype of any other int tensor: one for the tensor
SCALES_DTYPES = (SCALES_PER_ROW, SCALES_PER_TENSOR)
PASS_STORAGE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}  # passthrough spec -> storage dtype ("exact": the original)

# JSON keys: exactly these, no others (readers reject unknown and missing keys).
HEADER_KEYS = frozenset({"config", "policy", "meta", "tensors", "streams", "blocks"})
TENSOR_KEYS_REQUIRED = frozenset({"name", "shape", "dtype", "spec", "digest", "group", "offset"})
TENSOR_KEYS_INT = frozenset({"scales", "scale_offset"})  # int tensors only
TENSOR_KEYS_OPTIONAL = frozenset({"rows", "scale_group", "lqer"})  # rows: 2-D int tensors; scale_group: group-wise scales (rows x ceil(cols/g))
# lqer: a 2-D int tensor's low-rank error correction (docs/qgv3.md 8b): r * (rows + cols) factor levels of width
# `bits` at `offset` in that width's LEVELS stream, 2r float16 factor scales at `scale_offset` in the float16 SCALES stream
LQER_KEYS = frozenset({"rank", "bits", "offset", "scale_offset"})
LQER_RANKS = range(1, 65)  # ranks an `lqer` entry may have (also at most min(rows, cols))
# quantized sub-scales (with scale_group): the SUBSCALES stream and first value of the tensor's rows x ceil(cols/g) sub-scales
TENSOR_KEYS_SUBSCALES = frozenset({"subscales", "subscale_offset"})
# outliers (an int tensor whose spec has +out<k>): {"count", "offset"}, `count` == outlier_count(numel, k) entries of the
# file's one OUTLIERS stream from `offset` (docs/qgv3.md 8d)
TENSOR_KEYS_OUTLIERS = frozenset({"outliers"})
OUTLIER_KEYS = frozenset({"count", "offset"})
SCALE_GROUPS = (32, 64, 128, 256)  # the group sizes a `scale_group` may name
STREAM_KEYS = frozenset({"kind", "count", "layout", "block", "at"})
STREAM_KEYS_OPTIONAL = frozenset({"bits", "dtype", "alone"})  # bits: LEVELS; dtype: the others; alone: solid blocks
BLOCK_KEYS = frozenset({"codec", "raw", "stored", "crc"})


@dataclass(frozen=True)
class Limits:
    """Sanity limits applied when reading (a file beyond them is refused before anything is allocated)."""

    max_header_bytes: int = 16 << 20  # stored and decompressed header JSON
    max_tensors: int = 100_000  # tensor entries
    max_ndim: int = 8  # dimensions per tensor
    max_name_len: int = 1024  # characters per tensor name
    # A 16 MB artifact holds at most ~64M levels (int2, dense) and legitimately decompresses to well
    # under 100 MiB; these caps leave room for bigger models yet keep a hostile few-KB file from
    # costing more than ~1.1 GiB of memory (measured: docs/security.md). Pass larger Limits to read
    # something bigger on purpose.
    max_raw_bytes: int = 256 << 20  # sum of all blocks' decompressed sizes
    max_numel: int = 1 << 28  # sum of all tensors' elements (bounds the state dict built at the end)
    # A writer makes at most one stream per kind/width/dtype (about 20) and one block per stream: these
    # caps stop a file of thousands of empty blocks or streams from costing seconds per decode.
    # What the rebuilt state dict may take (sum of numel x the original dtype's size): with max_raw_bytes
    # this bounds peak memory (docs/security.md has the measured figure), as 2^28 float64 values would not.
    max_output_bytes: int = 512 << 20
    max_blocks: int = 64  # block entries
    max_streams: int = 64  # stream entries

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_tensors", "max_ndim", "max_name_len", "max_raw_bytes", "max_numel", "max_blocks",
                     "max_streams", "max_output_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                # ValueError, not golfpack's UsageError: this module imports nothing of golfpack
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")


DEFAULT_LIMITS = Limits()


def qmax(bits: int) -> int:
    """Largest level magnitude of an int-`bits` tensor: 2^(bits-1) - 1 (127 for int8, 31 for int6).

    Levels lie in [-qmax, qmax] and are stored offset by +qmax. THE definition: TensorSpec.qmax and
    bitpack.qmax_of call it."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in LEVEL_BITS:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    return (1 << (bits - 1)) - 1


__all__ = [
    "BIT_KINDS",
    "BLOCK_KEYS",
    "CODECS",
    "Codec",
    "DEFAULT_LIMITS",
    "FLAGS_NONE",
    "FLOAT_DTYPES",
    "HEADER_KEYS",
    "LEVEL_BITS",
    "LEVEL_LAYOUTS",
    "LQER_KEYS",
    "LQER_RANKS",
    "Layout",
    "Limits",
    "MAGIC",
    "OUTLIER_ENTRY",
    "OUTLIER_KEYS",
    "OUTLIER_RATES",
    "PASS_STORAGE",
    "PREAMBLE",
    "PREAMBLE_OFFSETS",
    "RANS_LOW",
    "RANS_MAX_LANES",
    "RANS_MAX_STEPS",
    "RANS_MAX_TABLES",
    "RANS_PRECISION",
    "SCALES_DTYPES",
    "SCALE_GROUPS",
    "SCALES_PER_ROW",
    "SCALES_PER_TENSOR",
    "STORAGE_DTYPES",
    "STREAM_KEYS",
    "SUBSCALE_BITS",
    "STREAM_KEYS_OPTIONAL",
    "StreamKind",
    "TENSOR_DTYPES",
    "TENSOR_KEYS_INT",
    "TENSOR_KEYS_OPTIONAL",
    "TENSOR_KEYS_OUTLIERS",
    "TENSOR_KEYS_REQUIRED",
    "TENSOR_KEYS_SUBSCALES",
    "VALUE_LAYOUTS",
    "VERSION",
    "outlier_count",
    "qmax",
]
