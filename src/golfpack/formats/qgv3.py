"""QGv3: golfpack's artifact format. TensorRecords -> one byte string, and back, with no pickle.

Layout (the full spec, with every validation rule, is docs/qgv3.md):

    preamble  24 bytes  magic(8) version u16 | header codec u8 | flags u8 | header stored u32 |
                        header raw u32 | crc32 of the stored header u32      (little-endian)
    header    JSON (UTF-8, sorted keys, compact), compressed with the header codec
    blocks    stored (compressed) blocks back to back, in header order, ending exactly at EOF

Tensors are grouped into streams: one LEVELS stream per bit width (all int-b levels together, either
bit-packed densely or one byte per level), SCALES streams (per-row fp16, per-tensor fp32), and one
PASSTHROUGH stream per storage dtype (plain or byte-shuffled). Streams go into blocks: either every
stream in its own block (each with its own codec) or all streams in one block ("solid").

The code is split as gguf-py splits its own, and this module is the front door to all of it:

    qgv3_constants  magic, version, preamble, enums, codec ids, key sets, Limits (imports nothing of golfpack)
    qgv3_streams    records -> streams + tensor entries (`collect`), and each stream's byte layouts
    qgv3_plan       the measuring: layouts, lzma props, codecs, separate vs solid -> an explicit QGv3Plan
    qgv3_write      the serializer: Contents + QGv3Plan -> bytes (chooses nothing)
    qgv3_read       the reader: bytes -> frozen, validated Preamble/Header entries -> QGv3Artifact

`encode_qgv3` is collect, plan, serialize.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from golfpack._io import write_bytes_atomic
from golfpack.errors import FormatError, UsageError
from golfpack.formats.bitpack import pack_bits  # noqa: F401  (tests and older callers reach it here)
from golfpack.formats.codecs import decompress  # noqa: F401
from golfpack.formats.qgv3_constants import (
    BLOCK_KEYS,
    DEFAULT_LIMITS,
    HEADER_KEYS,
    MAGIC,
    PASS_STORAGE,
    PREAMBLE,
    STREAM_KEYS,
    TENSOR_KEYS_INT,
    TENSOR_KEYS_REQUIRED,
    VERSION,
    Layout,
    Limits,
    StreamKind,
)
from golfpack.formats.qgv3_plan import TRIAL_BYTES, Measured, plan_qgv3
from golfpack.formats.qgv3_read import (
    BlockEntry,
    Header,
    Preamble,
    QGv3Artifact,
    StreamEntry,
    TensorEntry,
    check_writable,
    decode_qgv3,
    read_header,
    read_qgv3,
)
from golfpack.formats.qgv3_streams import (
    STORAGE_DTYPES,
    Contents,
    collect,
    layout_bytes,
    stream_key,
    stream_raw_size,
    tensor_digest,
)
from golfpack.formats.qgv3_write import QGv3Plan, StreamPlan, serialize_qgv3
from golfpack.formats.records import TensorRecord

_layout_bytes = layout_bytes  # the name tests/formats/test_qgv3.py uses


def encode_qgv3(
    records: Iterable[TensorRecord],
    *,
    config: dict | None = None,
    policy: dict | None = None,
    codec: str = "lzma",
    meta: dict | None = None,
    blocks: str = "auto",
) -> bytes:
    """Serialize records (+ model config, policy, free-form meta) to QGv3 bytes.

    codec: "raw" | "zlib" | "lzma" | "zstd" | "brotli" | "best" (per stream, the smallest of all available).
    blocks: "auto" (whichever file is smaller), "separate" (one block per stream) or "solid" (one block).
    Deterministic: the same inputs give the same bytes (for a given set of codec library versions).
    It is `collect`, then `plan_qgv3` (measuring), then `serialize_qgv3` (writing the plan).
    """
    records = list(records)
    check_writable(records)  # the writer packs only what the reader accepts (names, dims, sizes)
    contents = collect(records, config=config, policy=policy, meta=meta)
    measured = plan_qgv3(contents, codec=codec, blocks=blocks)
    data = serialize_qgv3(contents, measured.plan, stored_blocks=measured.stored_blocks)
    try:  # and the header as written must pass the reader's own checks (config/policy/meta included)
        read_header(data)
    except FormatError as e:
        raise UsageError(f"refusing to write an artifact the reader would refuse: {e.detail}") from None
    return data


def write_qgv3(path: str | Path, records: Iterable[TensorRecord], **kwargs: Any) -> int:
    """encode_qgv3(records, **kwargs) written atomically to `path`; returns the byte count."""
    data = encode_qgv3(records, **kwargs)
    write_bytes_atomic(path, data)
    return len(data)


__all__ = [
    "BLOCK_KEYS",
    "BlockEntry",
    "Contents",
    "DEFAULT_LIMITS",
    "HEADER_KEYS",
    "Header",
    "Layout",
    "Limits",
    "MAGIC",
    "Measured",
    "PASS_STORAGE",
    "PREAMBLE",
    "Preamble",
    "QGv3Artifact",
    "QGv3Plan",
    "STORAGE_DTYPES",
    "STREAM_KEYS",
    "StreamEntry",
    "StreamKind",
    "StreamPlan",
    "TENSOR_KEYS_INT",
    "TENSOR_KEYS_REQUIRED",
    "TRIAL_BYTES",
    "TensorEntry",
    "VERSION",
    "collect",
    "decode_qgv3",
    "encode_qgv3",
    "plan_qgv3",
    "read_header",
    "read_qgv3",
    "serialize_qgv3",
    "stream_key",
    "stream_raw_size",
    "tensor_digest",
    "write_qgv3",
]
