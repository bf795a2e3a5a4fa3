"""QGv3 serializer: Contents + an explicit QGv3Plan -> bytes. It measures nothing and chooses nothing.

Every choice a writer makes (each stream's layout, codec and lzma props; separate blocks or one solid
block and its codec; the header's codec) is a field of `QGv3Plan`. `qgv3_plan.plan_qgv3` fills the
plan by measuring; anyone may build one by hand. The same Contents and plan always give the same bytes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from golfpack.errors import UsageError
from golfpack.formats.codecs import LzmaEncoder, compress
from golfpack.formats.qgv3_constants import (
    BIT_KINDS,
    FLAGS_NONE,
    LEVEL_LAYOUTS,
    MAGIC,
    PREAMBLE,
    VALUE_LAYOUTS,
    VERSION,
    Codec,
    Layout,
    StreamKind,
)
from golfpack.formats.qgv3_streams import Contents

LzmaProps = tuple[int, int, int]  # (lc, lp, pb)


@dataclass(frozen=True)
class StreamPlan:
    """How one stream is written."""

    kind: StreamKind  # must match the Contents stream at the same index
    bits: int | None  # LEVELS/SUBSCALES: the width (must match); else None
    dtype: str | None  # SCALES/PASSTHROUGH: the storage dtype (must match); else None
    layout: Layout  # its bytes before compression: DENSE/BYTE for levels, PLAIN/SHUFFLE for values
    codec: Codec  # its block's codec when streams get separate blocks
    lzma_props: LzmaProps | None = None  # codec LZMA: the (lc, lp, pb) to use; None: the smallest of the candidates
    lzma_encoder: LzmaEncoder = LzmaEncoder.EXTREME  # codec LZMA: the encoder's match search (not stored in the file)
    alone: int | None = None  # its size compressed alone; written into solid files (how `inspect` apportions the block)

    def __post_init__(self) -> None:
        allowed = LEVEL_LAYOUTS if self.kind in BIT_KINDS else VALUE_LAYOUTS
        if self.layout not in allowed:
            raise UsageError(f"stream layout {Layout(self.layout).name.lower()} is not one of "
                             f"{', '.join(Layout(x).name.lower() for x in allowed)} for a {StreamKind(self.kind).name.lower()} stream",
                             param="layout")
        if self.lzma_props is not None and self.codec != Codec.LZMA:
            raise UsageError("lzma_props apply to the lzma codec only", param="lzma_props")
        if self.lzma_encoder != LzmaEncoder.EXTREME and self.codec != Codec.LZMA:
            raise UsageError("lzma_encoder applies to the lzma codec only", param="lzma_encoder")
        if self.alone is not None and self.alone < 0:
            raise UsageError(f"alone must be a non-negative int, got {self.alone}", param="alone")


@dataclass(frozen=True)
class QGv3Plan:
    """Every choice behind one QGv3 file."""

    streams: tuple[StreamPlan, ...]  # one per Contents stream, same (canonical) order
    solid_codec: Codec | None = None  # None: each stream in its own block, with its own codec; else one block, this codec
    solid_props: LzmaProps | None = None  # solid_codec LZMA: its (lc, lp, pb); None: the smallest of the candidates
    solid_encoder: LzmaEncoder = LzmaEncoder.EXTREME  # solid_codec LZMA: the encoder's match search
    header_codec: Codec = Codec.RAW  # codec of the header JSON
    header_props: LzmaProps | None = None  # header_codec LZMA: its (lc, lp, pb); None: the smallest of the candidates

    def __post_init__(self) -> None:
        if self.solid_props is not None and self.solid_codec != Codec.LZMA:
            raise UsageError("solid_props apply to an lzma solid block only", param="solid_props")
        if self.solid_encoder != LzmaEncoder.EXTREME and self.solid_codec != Codec.LZMA:
            raise UsageError("solid_encoder applies to an lzma solid block only", param="solid_encoder")
        if self.header_props is not None and self.header_codec != Codec.LZMA:
            raise UsageError("header_props apply to an lzma header only", param="header_props")

    @property
    def solid(self) -> bool:
        return self.solid_codec is not None


def compress_with(codec: Codec, data: bytes, props: LzmaProps | None, encoder: LzmaEncoder = LzmaEncoder.EXTREME,
                  progress: Callable[[int], None] | None = None) -> bytes:
    if codec == Codec.LZMA:
        return compress(codec, data, lzma_props=props, lzma_encoder=encoder, progress=progress)
    return compress(codec, data, progress=progress)


def props_of(codec: Codec, stored: bytes) -> LzmaProps | None:
    """The (lc, lp, pb) an lzma stream was written with (its first byte), so a plan can name them."""
    if codec != Codec.LZMA:
        return None
    p = stored[0]
    return (p % 9, p // 9 % 5, p // 45)


def _check(contents: Contents, plan: QGv3Plan) -> None:
    if len(plan.streams) != len(contents.streams):
        raise UsageError(f"plan has {len(plan.streams)} streams, the contents {len(contents.streams)}", param="plan")
    for i, (sp, s) in enumerate(zip(plan.streams, contents.streams)):
        if (int(sp.kind), sp.bits, sp.dtype) != (int(s.kind), s.bits, s.dtype):
            raise UsageError(f"plan stream {i} is {StreamKind(sp.kind).name.lower()} {sp.bits or sp.dtype}, the contents' "
                             f"{StreamKind(s.kind).name.lower()} {s.bits or s.dtype}", param="plan")


def compress_blocks(contents: Contents, plan: QGv3Plan) -> list[bytes]:
    """The stored bytes of every block the plan describes."""
    _check(contents, plan)
    if plan.solid_codec is not None:
        joined = b"".join(s.laid_out(sp.layout) for s, sp in zip(contents.streams, plan.streams))
        return [compress_with(plan.solid_codec, joined, plan.solid_props, plan.solid_encoder)]
    return [compress_with(sp.codec, s.laid_out(sp.layout), sp.lzma_props, sp.lzma_encoder) for s, sp in zip(contents.streams, plan.streams)]


def header_json(contents: Contents, plan: QGv3Plan, stored_blocks: Sequence[bytes]) -> bytes:
    """The header JSON (UTF-8, sorted keys, compact) for these contents, plan and stored blocks."""
    streams, blocks, at = [], [], 0
    for i, (s, sp) in enumerate(zip(contents.streams, plan.streams)):
        raw = s.raw_size(sp.layout)
        d: dict[str, Any] = {"kind": int(s.kind), "count": s.count, "layout": int(sp.layout), "block": 0 if plan.solid else i,
                             "at": at if plan.solid else 0}
        if s.kind != StreamKind.OUTLIERS:  # an OUTLIERS stream has one fixed element (OUTLIER_ENTRY): no bits, no dtype
            d["bits" if s.kind in BIT_KINDS else "dtype"] = s.bits if s.kind in BIT_KINDS else s.dtype
        if plan.solid and sp.alone is not None:
            d["alone"] = sp.alone
        streams.append(d)
        if plan.solid:
            at += raw
        else:
            blocks.append({"codec": int(sp.codec), "raw": raw, "stored": len(stored_blocks[i]), "crc": zlib.crc32(stored_blocks[i])})
    if plan.solid_codec is not None:
        blocks = [{"codec": int(plan.solid_codec), "raw": at, "stored": len(stored_blocks[0]), "crc": zlib.crc32(stored_blocks[0])}]
    header = {**contents.base, "streams": streams, "blocks": blocks}
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def frame(plan: QGv3Plan, hraw: bytes, stored_blocks: Sequence[bytes]) -> bytes:
    """Preamble + stored header + blocks."""
    hstored = compress_with(plan.header_codec, hraw, plan.header_props)
    pre = PREAMBLE.pack(MAGIC, VERSION, int(plan.header_codec), FLAGS_NONE, len(hstored), len(hraw), zlib.crc32(hstored))
    return b"".join([pre, hstored, *stored_blocks])


def serialize_qgv3(contents: Contents, plan: QGv3Plan, *, stored_blocks: Sequence[bytes] | None = None) -> bytes:
    """QGv3 bytes of `contents` written exactly as `plan` says.

    stored_blocks: the blocks already compressed as the plan says (the planner hands over what it
    measured, so nothing is compressed twice); None compresses them here."""
    if stored_blocks is None:
        stored_blocks = compress_blocks(contents, plan)
    else:
        _check(contents, plan)
        want = 1 if plan.solid else len(plan.streams)
        if len(stored_blocks) != want:
            raise UsageError(f"{len(stored_blocks)} stored blocks given, the plan has {want}", param="stored_blocks")
    return frame(plan, header_json(contents, plan, stored_blocks), stored_blocks)


__all__ = ["LzmaProps", "QGv3Plan", "StreamPlan", "compress_blocks", "header_json", "serialize_qgv3"]
