"""QGv3 planner: measure the candidates and return an explicit QGv3Plan (the serializer then just writes it).

Per stream it tries every layout the stream may take, every codec asked for and, for lzma, a few
(lc, lp, pb) settings, on the whole stream up to TRIAL_BYTES (else on an evenly spaced sample of that
size), and keeps the smallest. Then it compares a file of separate blocks with one solid block (when
both are allowed) and keeps the smaller; the header's codec is the smallest of raw and the codecs used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from golfpack.errors import UsageError
from golfpack.formats.codecs import CODECS, LZMA_PROPS_CANDIDATES, available_codecs, codec_id, compress
from golfpack.formats.qgv3_constants import PREAMBLE, Codec, Layout, StreamKind
from golfpack.formats.qgv3_streams import Contents, Stream, layout_bytes
from golfpack.formats.qgv3_write import LzmaProps, QGv3Plan, StreamPlan, compress_with, header_json, props_of

TRIAL_BYTES = 1 << 20  # layout/props/codec choices are measured on the whole stream up to this size, else on a sample this big
_TRIAL_SLICES = 8  # the sample: this many evenly spaced slices (different tensors of the stream)
BLOCK_MODES = ("auto", "separate", "solid")


@dataclass(frozen=True)
class Measured:
    """A plan and what measuring it already produced."""

    plan: QGv3Plan  # every choice, explicit
    stored_blocks: tuple[bytes, ...]  # the plan's blocks, compressed (hand them to serialize_qgv3)
    total_bytes: int  # size of the file the plan gives


@dataclass(frozen=True)
class _Choice:
    plan: StreamPlan  # the chosen layout/codec/props (alone = len(stored))
    stored: bytes  # the whole stream compressed with them
    trial: bytes  # the measured sample in the chosen layout (the whole stream when small)
    trial_size: int  # its compressed size with the chosen codec/props
    sampled: bool  # True when choices were measured on a sample, not the whole stream


def resolve_codecs(codec: str) -> list[Codec]:
    """The codecs `codec` names: one, or every available one for "best" (UsageError if unknown)."""
    if not isinstance(codec, str):
        raise UsageError(f"codec must be a name, got {codec!r}", param="codec")
    if codec.lower() == "best":
        return [CODECS[c] for c in available_codecs()]
    c = codec_id(codec)
    if c.name.lower() not in available_codecs():
        compress(c, b"")  # raises the "install the package" error
    return [c]


def _sample(values: np.ndarray, itemsize: float) -> np.ndarray:
    """The whole array if small, else `_TRIAL_SLICES` evenly spaced slices totalling ~TRIAL_BYTES."""
    n = values.size
    if n * itemsize <= TRIAL_BYTES:
        return values
    per = max(8, int(TRIAL_BYTES / itemsize) // _TRIAL_SLICES // 8 * 8)
    starts = np.linspace(0, n - per, _TRIAL_SLICES).astype(np.int64) // 8 * 8
    return np.concatenate([values[s : s + per] for s in starts])


def _variants(codec: Codec, kind: int, layout: int, itemsize: int) -> list[LzmaProps | None]:
    if codec != Codec.LZMA:
        return [None]
    out: list[LzmaProps | None] = list(LZMA_PROPS_CANDIDATES)
    if kind != StreamKind.LEVELS and layout == Layout.PLAIN and itemsize > 1:
        a = int(math.log2(itemsize))
        out.append((0, min(a, 4), min(a, 4)))  # literal position = byte within the element
    return out


def choose_stream(s: Stream, codecs: list[Codec]) -> _Choice:
    """Pick (codec, layout, lzma props) for one stream by measuring, then compress it whole."""
    vals = s.values()
    samp = _sample(vals, s.itemsize)
    whole = samp.size == vals.size
    best = None
    for c in codecs:
        for lay in s.layouts():
            data = layout_bytes(s.kind, lay, samp, s.bits)
            for pr in _variants(c, s.kind, lay, s.itemsize):
                z = compress_with(c, data, pr)
                if best is None or len(z) < len(best[0]):
                    best = (z, c, lay, pr)
    assert best is not None
    z, codec, layout, props = best
    trial = layout_bytes(s.kind, layout, samp, s.bits)
    stored = z if whole else compress_with(codec, layout_bytes(s.kind, layout, vals, s.bits), props)
    sp = StreamPlan(s.kind, s.bits, s.dtype, Layout(layout), codec, props, alone=len(stored))
    return _Choice(sp, stored, trial, len(z), not whole)


# Above this many header JSON bytes (tens of thousands of tensors) the header is compressed with zlib only:
# `pack --dry-run` of 100,000 one-element tensors took minutes of lzma extreme on a multi-MB header.
HEADER_FAST_BYTES = 1 << 20


def _with_header(contents: Contents, plan: QGv3Plan, blocks: list[bytes], codecs: list[Codec]) -> Measured:
    """The plan with the header codec that makes the smallest header (raw first, then `codecs` in order)."""
    hraw = header_json(contents, plan, blocks)
    best_c, best = Codec.RAW, hraw
    if len(hraw) > HEADER_FAST_BYTES:  # bound header work: lzma extreme runs at ~1 MB/s, zlib at ~20
        codecs = [Codec.ZLIB]
    for c in codecs:
        if c != Codec.RAW:
            z = compress(c, hraw)
            if len(z) < len(best):
                best_c, best = c, z
    plan = replace(plan, header_codec=best_c, header_props=props_of(best_c, best))
    return Measured(plan, tuple(blocks), PREAMBLE.size + len(best) + sum(len(b) for b in blocks))


def plan_qgv3(contents: Contents, *, codec: str = "lzma", blocks: str = "auto") -> Measured:
    """Measure and return the smallest plan (see module doc). blocks: "auto", "separate" or "solid"."""
    if blocks not in BLOCK_MODES:
        raise UsageError(f"blocks must be 'auto', 'separate' or 'solid', got {blocks!r}", param="blocks")
    codecs = resolve_codecs(codec)
    order = contents.streams
    chosen = [choose_stream(s, codecs) for s in order]

    # separate: one block per stream, each with its own codec
    sep = QGv3Plan(tuple(ch.plan for ch in chosen))
    best = _with_header(contents, sep, [ch.stored for ch in chosen], codecs)
    try_solid = len(order) > 1 and blocks != "separate"
    if not try_solid:
        return best

    biggest = max(chosen, key=lambda ch: len(ch.stored))

    def solid_props(c: Codec) -> LzmaProps | None:  # lzma: the biggest stream's props when it is lzma too
        return biggest.plan.lzma_props if c == Codec.LZMA and biggest.plan.codec == c else None

    solid_codecs = list(dict.fromkeys(ch.plan.codec for ch in chosen))
    if blocks == "auto" and any(ch.sampled for ch in chosen):
        # big streams: compress them solid in full only if it wins on the measured samples
        joined_trial = b"".join(ch.trial for ch in chosen)
        if min(len(compress_with(c, joined_trial, solid_props(c))) for c in solid_codecs) >= sum(ch.trial_size for ch in chosen):
            return best
    # solid: all streams in one block (cross-stream matches; one codec)
    joined = b"".join(s.laid_out(ch.plan.layout) for s, ch in zip(order, chosen))
    c, z = min(((c, compress_with(c, joined, solid_props(c))) for c in solid_codecs), key=lambda t: len(t[1]))
    solid_plan = QGv3Plan(tuple(ch.plan for ch in chosen), solid_codec=c, solid_props=props_of(c, z))
    solid = _with_header(contents, solid_plan, [z], codecs)
    if solid.total_bytes < best.total_bytes or blocks == "solid":
        best = solid
    return best


__all__ = ["BLOCK_MODES", "Measured", "TRIAL_BYTES", "choose_stream", "plan_qgv3", "resolve_codecs"]
