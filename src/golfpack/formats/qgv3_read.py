"""QGv3 reader: bytes -> frozen, fully validated entries (Preamble, Header of Block/Stream/TensorEntry) -> records.

Reading validates everything against the file length and `Limits` BEFORE allocating: the header is
bounded, blocks must tile the rest of the file exactly, streams must tile their blocks exactly,
tensors must tile their streams exactly (offsets contiguous, in header order), and decompression is
capped at each block's declared raw size. Every failure is a FormatError ("invalid QGv3 artifact:
..."), with the byte offset when the fault is at a known place (a preamble field, the header, a block).
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from golfpack.errors import FormatError, GolfpackError, UsageError
from golfpack.formats import qgv3_constants as K
from golfpack.formats.codecs import codec_id, decompress
from golfpack.formats.policy_schema import check_policy
from golfpack.formats.qgv3_constants import DEFAULT_LIMITS, PREAMBLE, Codec, Layout, Limits, StreamKind
from golfpack.formats.qgv3_streams import (
    STORAGE_DTYPES,
    levels_to_sub,
    outliers_decode,
    stream_key,
    stream_raw_size,
    tensor_digest,
    unlayout,
)
from golfpack.formats.records import TORCH_DTYPES, TensorRecord
from golfpack.formats.spec import TensorSpec


def _fail(msg: str, offset: int | None = None) -> FormatError:
    return FormatError(f"invalid QGv3 artifact: {msg}", offset=offset)


# ------------------------------------------------------------------------------------------------
# entries (what the file says, after validation)


@dataclass(frozen=True)
class Preamble:
    """The 24-byte preamble, checked: magic and version right, flags 0, header within the file and Limits."""

    version: int  # format version (3)
    header_codec: Codec  # codec the header is stored with
    flags: int  # reserved (0)
    header_stored: int  # bytes of the stored header
    header_raw: int  # bytes of the header JSON
    header_crc: int  # crc32 of the stored header

    @property
    def header_end(self) -> int:
        """File offset where the blocks begin."""
        return PREAMBLE.size + self.header_stored


@dataclass(frozen=True)
class BlockEntry:
    """One block: `stored` bytes at `offset` in the file, decompressing to `raw` bytes."""

    index: int  # position in the header's block list
    codec: Codec  # its codec
    raw: int  # decompressed size
    stored: int  # stored size
    crc: int  # crc32 of the stored bytes
    offset: int  # file offset of its first stored byte


@dataclass(frozen=True)
class StreamEntry:
    """One stream: `count` values laid out as `layout`, `size` bytes at `at` in block `block`."""

    index: int  # position in the header's stream list
    kind: StreamKind  # what it holds
    layout: Layout  # its byte layout
    bits: int | None  # LEVELS: the width; else None
    dtype: str | None  # SCALES/PASSTHROUGH: the storage dtype; else None
    count: int  # values
    block: int  # index of its block
    at: int  # byte offset in the decompressed block
    size: int  # bytes in the block (derived from count, layout and bits/dtype)
    alone: int | None  # its recorded stand-alone compressed size (solid blocks), if any
    tensors: tuple[str, ...] = ()  # the tensors in it, in order


@dataclass(frozen=True)
class TensorEntry:
    """One tensor: `numel` values at `offset` of stream `group` (+ its scales for int specs)."""

    index: int  # position in the header's tensor list
    name: str  # state-dict key
    shape: tuple[int, ...]  # original shape
    numel: int  # product of shape
    dtype: str  # original torch dtype name
    spec: TensorSpec  # storage spec
    digest: str  # sha256 hex of the rebuilt tensor
    group: int  # stream of its levels or values
    offset: int  # first value in that stream
    rows: int | None = None  # per-row scales: the row count (== shape[0]); else None
    scales: int | None = None  # int specs: the scales stream; else None
    scale_offset: int | None = None  # int specs: first scale in that stream
    nscales: int = 0  # int specs: rows for per-row, 1 for per-tensor
    lqer_bits: int = 0  # spec.lqer: width of the factor levels; else 0
    lqer_levels: int | None = None  # spec.lqer: the LEVELS stream of that width
    lqer_offset: int | None = None  # spec.lqer: first factor level in it (r (rows + cols) of them)
    lqer_scale_offset: int | None = None  # spec.lqer: first factor scale in the scales stream (2r of them)
    subscales: int | None = None  # quantized sub-scales: their SUBSCALES stream; else None
    subscale_offset: int | None = None  # quantized sub-scales: first sub-scale in that stream
    outliers: int | None = None  # spec.outliers: the OUTLIERS stream; else None
    outlier_offset: int | None = None  # spec.outliers: first entry in it
    outlier_count: int = 0  # spec.outliers: entries (== outlier_count(numel, k), checked)

    @property
    def cols(self) -> int:
        assert self.rows is not None
        return self.shape[1]


@dataclass(frozen=True)
class Header:
    """The validated header: every entry checked by type and range and against the others."""

    config: dict[str, Any] | None  # model config
    policy: dict[str, Any] | None  # storage policy
    meta: dict[str, Any] | None  # free-form writer metadata
    tensors: tuple[TensorEntry, ...]  # in header order
    streams: tuple[StreamEntry, ...]  # in header order
    blocks: tuple[BlockEntry, ...]  # in file order
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)  # the JSON object, as stored


# ------------------------------------------------------------------------------------------------
# parsing


MAX_FILE_BYTES = 1 << 40  # bound on any stored size (a file is far smaller; keeps every int convertible to float)
MAX_TREE_DEPTH = 32  # nesting of the free-form config/policy/meta objects
MAX_JSON_INT = 1 << 63  # magnitude of any integer in config/policy/meta


def check_name(name: Any, lim: Limits, what: str, fail: Any) -> str:
    """A tensor name as the spec allows it: a non-empty str of at most `max_name_len` characters, every one
    printable (str.isprintable: no control characters - so no ANSI/OSC escapes -, no line or paragraph
    separators) and no lone surrogates (the name must encode to UTF-8). `fail(msg)` makes the error."""
    if not isinstance(name, str) or not name or len(name) > lim.max_name_len:
        raise fail(f"{what} must be a non-empty string of at most {lim.max_name_len} characters")
    if not name.isprintable():
        raise fail(f"{what} {ascii(name)[:80]} holds a non-printable character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise fail(f"{what} {ascii(name)[:80]} holds a lone surrogate") from None
    return name


def check_writable(records: list[TensorRecord], limits: Limits = DEFAULT_LIMITS) -> None:
    """UsageError unless every record's name and shape are within what read_header accepts (the writer's check)."""

    def fail(msg: str) -> UsageError:
        return UsageError(f"cannot write QGv3: {msg}", param="records")

    if len(records) > limits.max_tensors:
        raise fail(f"{len(records)} tensors exceed the reader's limit of {limits.max_tensors}")
    total = 0
    for r in records:
        check_name(r.name, limits, "tensor name", fail)
        if len(r.shape) > limits.max_ndim:
            raise fail(f"{r.name}: {len(r.shape)} dims exceed the reader's limit of {limits.max_ndim}")
        total += math.prod(r.shape)
        if math.prod(d for d in r.shape if d) > limits.max_numel or total > limits.max_numel:
            raise fail(f"{r.name}: over the reader's limit of {limits.max_numel} elements")


def _check_tree(v: Any, what: str, depth: int) -> None:
    """config/policy/meta: JSON values only, nested at most MAX_TREE_DEPTH deep, ints within 64 bits, strings UTF-8.
    (Their fields' meaning is checked by their owners: ModelConfig.from_dict, Policy.from_dict.)"""
    if depth > MAX_TREE_DEPTH:
        raise _fail(f"{what} is nested more than {MAX_TREE_DEPTH} deep")
    if isinstance(v, dict):
        for k, x in v.items():
            _check_tree(k, f"{what} key", depth + 1)
            _check_tree(x, f"{what}.{str(k)[:40]}", depth + 1)
    elif isinstance(v, list):
        for x in v:
            _check_tree(x, what, depth + 1)
    elif isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise _fail(f"{what} holds a lone surrogate") from None
    elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_JSON_INT:
        raise _fail(f"{what} holds an integer over 2^63")



def _scale_count(e: dict[str, Any], spec: TensorSpec, shape: list[int], name: str) -> int:
    """Scales of a 2-D int tensor: one per row (also with quantized sub-scales), or rows x ceil(cols / scale_group)
    with fp16 group-wise scales. `scale_group` must be present exactly when the spec has a group, and equal it."""
    rows, cols = shape
    if "scale_group" not in e:
        if spec.group:
            raise _fail(f"{name}: {spec.label()} tensor lacks scale_group")
        return rows
    g = e["scale_group"]
    if isinstance(g, bool) or not isinstance(g, int) or g not in K.SCALE_GROUPS or g != spec.group:
        raise _fail(f"{name}: scale_group {g!r} does not match its spec {spec.label()} (groups: {', '.join(map(str, K.SCALE_GROUPS))})")
    return rows if spec.subscale else rows * (-(-cols // g))



def _lqer(e: dict[str, Any], spec: TensorSpec, shape: list[int], name: str, streams: list[StreamEntry]) -> tuple[int, int]:
    """The `lqer` object of a tensor entry (docs/qgv3.md 8b), checked: present exactly when the spec has +lqer<r>, only
    on a 2-D int tensor with per-row scales, exactly LQER_KEYS, rank == the spec's and <= min(rows, cols), bits 2..8
    with a LEVELS stream of that width. Returns (bits, that stream's index); 0, -1 when the tensor has none."""
    if "lqer" not in e:
        if spec.lqer:
            raise _fail(f"{name}: {spec.label()} tensor lacks its lqer entry")
        return 0, -1
    if not spec.lqer:
        raise _fail(f"{name}: lqer entry on a tensor whose spec {spec.label()} has no +lqer<r>")
    d = _keys(e["lqer"], K.LQER_KEYS, frozenset(), f"{name} lqer")
    if "rows" not in e:
        raise _fail(f"{name}: lqer needs a 2-D int tensor with per-row scales ('rows')")
    rank = _int(d["rank"], f"{name} lqer rank", K.LQER_RANKS.start, K.LQER_RANKS.stop - 1)
    if rank != spec.lqer or rank > min(shape):
        raise _fail(f"{name}: lqer rank {rank} must equal its spec's ({spec.label()}) and be at most min(rows, cols) = {min(shape)}")
    bits = _int(d["bits"], f"{name} lqer bits", K.LEVEL_BITS.start, K.LEVEL_BITS.stop - 1)
    for s in streams:
        if s.kind == StreamKind.LEVELS and s.bits == bits:
            return bits, s.index
    raise _fail(f"{name}: lqer factors of {bits} bits but the file has no int{bits} levels stream")


def _int(v: Any, what: str, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(f"{what} must be an integer, got {type(v).__name__}")
    if v < lo or (hi is not None and v > hi):
        raise _fail(f"{what} = {v} is out of range [{lo}, {'inf' if hi is None else hi}]")
    return v


def _keys(d: Any, required: frozenset[str], optional: frozenset[str], what: str) -> dict:
    if not isinstance(d, dict):
        raise _fail(f"{what} must be a JSON object")
    missing = required - d.keys()
    extra = d.keys() - required - optional
    if missing:
        raise _fail(f"{what} lacks {', '.join(sorted(missing))}")
    if extra:
        raise _fail(f"{what} has unknown field(s) {', '.join(sorted(extra))}")
    return d


def parse_preamble(data: memoryview, limits: Limits = DEFAULT_LIMITS) -> Preamble:
    """The preamble of `data` (the whole file), checked against the file length and limits."""
    n = len(data)
    off = K.PREAMBLE_OFFSETS
    if n < PREAMBLE.size:
        raise _fail(f"{n} bytes is shorter than the {PREAMBLE.size}-byte preamble (truncated file?)", 0)
    magic, version, hcodec, flags, hstored, hraw, hcrc = PREAMBLE.unpack_from(data, 0)
    if magic != K.MAGIC:
        raise _fail(f"wrong magic {bytes(magic)!r} (expected {K.MAGIC!r}); not a QGv3 file", off["magic"])
    if version != K.VERSION:
        raise _fail(f"format version {version}, this reader understands version {K.VERSION} only", off["version"])
    if flags != K.FLAGS_NONE:
        raise _fail(f"reserved flags byte is {flags}, must be 0", off["flags"])
    if hstored > limits.max_header_bytes or hraw > limits.max_header_bytes:
        where = off["header_stored"] if hstored > limits.max_header_bytes else off["header_raw"]
        raise _fail(f"header size {max(hstored, hraw)} exceeds the limit of {limits.max_header_bytes} bytes", where)
    if PREAMBLE.size + hstored > n:
        raise _fail(f"header of {hstored} bytes runs past the end of the {n}-byte file (truncated?)", off["header_stored"])
    if zlib.crc32(data[PREAMBLE.size : PREAMBLE.size + hstored]) != hcrc:
        raise _fail("header checksum mismatch (file corrupted)", off["header_crc"])
    try:
        hc = codec_id(hcodec)
    except GolfpackError as e:
        raise _fail(f"header: {e}", off["header_codec"]) from None
    return Preamble(version, hc, flags, hstored, hraw, hcrc)


def parse_header_json(raw: bytes) -> dict:
    """The header JSON object: strict (no duplicate keys, no NaN/Infinity), exactly HEADER_KEYS."""

    def no_dups(pairs: list[tuple[str, Any]]) -> dict:
        d = dict(pairs)
        if len(d) != len(pairs):
            raise ValueError(f"duplicate JSON key among {sorted(k for k, _ in pairs)[:5]}")
        return d

    def no_const(c: str) -> Any:
        raise ValueError(f"non-standard JSON constant {c}")

    def finite(text: str) -> float:  # 1e400 parses to inf: the spec refuses it like Infinity
        v = float(text)
        if not math.isfinite(v):
            raise ValueError(f"number {text[:40]} overflows a double")
        return v

    try:
        h = json.loads(raw.decode("utf-8"), object_pairs_hook=no_dups, parse_constant=no_const, parse_float=finite)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(f"header is not valid JSON ({str(e)[:200]})", PREAMBLE.size) from None
    return _keys(h, K.HEADER_KEYS, frozenset(), "header")


def _blocks(h: dict, start: int, data_len: int, lim: Limits) -> list[BlockEntry]:
    """Blocks tile the rest of the file exactly."""
    blocks, pos, raw_total = [], 0, 0
    if len(h["blocks"]) > lim.max_blocks:
        raise _fail(f"{len(h['blocks'])} blocks exceed the limit of {lim.max_blocks}")
    for i, b in enumerate(h["blocks"]):
        _keys(b, K.BLOCK_KEYS, frozenset(), f"block {i}")
        cid = _int(b["codec"], f"block {i} codec", 0, 255)
        try:
            c = codec_id(cid)
        except FormatError as e:
            raise _fail(f"block {i}: {e.detail}") from None
        raw = _int(b["raw"], f"block {i} raw size", 0)
        if raw > lim.max_raw_bytes:
            raise _fail(f"block {i} declares {raw} raw bytes, over the limit of {lim.max_raw_bytes}")
        stored = _int(b["stored"], f"block {i} stored size", 0, data_len)
        crc = _int(b["crc"], f"block {i} crc", 0, 0xFFFFFFFF)
        if c == Codec.RAW and stored != raw:
            raise _fail(f"block {i} is uncompressed but stores {stored} bytes for {raw}")
        blocks.append(BlockEntry(i, c, raw, stored, crc, start + pos))
        pos += stored
        raw_total += raw
    if pos != data_len:
        why = "file is truncated" if pos > data_len else "file has trailing bytes"
        raise _fail(f"blocks declare {pos} stored bytes but {data_len} follow the header ({why})")
    if raw_total > lim.max_raw_bytes:
        raise _fail(f"blocks decompress to {raw_total} bytes in total, over the limit of {lim.max_raw_bytes}")
    return blocks


def _streams(h: dict, blocks: list[BlockEntry], lim: Limits) -> list[StreamEntry]:
    """Streams tile their blocks exactly, in order."""
    streams, seen_keys = [], set()
    fill = [0] * len(blocks)
    if len(h["streams"]) > lim.max_streams:
        raise _fail(f"{len(h['streams'])} streams exceed the limit of {lim.max_streams}")
    for i, s in enumerate(h["streams"]):
        kind = StreamKind(_int(_keys(s, K.STREAM_KEYS, K.STREAM_KEYS_OPTIONAL, f"stream {i}")["kind"], f"stream {i} kind", 0, max(StreamKind)))
        layout = Layout(_int(s["layout"], f"stream {i} layout", 0, max(Layout)))
        bits = dtype = None
        if kind == StreamKind.OUTLIERS:
            if "bits" in s or "dtype" in s:
                raise _fail(f"stream {i} (outliers) has a fixed element and takes neither 'bits' nor 'dtype'")
            if layout not in K.VALUE_LAYOUTS:
                raise _fail(f"stream {i} (outliers) has layout {int(layout)}, expected plain (0) or shuffle (1)")
        elif kind in K.BIT_KINDS:
            what = kind.name.lower()
            if "bits" not in s or "dtype" in s:
                raise _fail(f"stream {i} ({what}) needs 'bits' and no 'dtype'")
            widths = K.LEVEL_BITS if kind == StreamKind.LEVELS else K.SUBSCALE_BITS
            bits = _int(s["bits"], f"stream {i} bits", widths.start, widths.stop - 1)
            if layout not in K.LEVEL_LAYOUTS:
                raise _fail(f"stream {i} ({what}) has layout {int(layout)}, expected dense (2) or byte (3)")
        else:
            if "dtype" not in s or "bits" in s:
                raise _fail(f"stream {i} needs 'dtype' and no 'bits'")
            dtype = s["dtype"]
            allowed = K.SCALES_DTYPES if kind == StreamKind.SCALES else tuple(STORAGE_DTYPES)
            if not isinstance(dtype, str) or dtype not in allowed:
                raise _fail(f"stream {i} dtype {dtype!r} is not one of {', '.join(allowed)}")
            if layout not in K.VALUE_LAYOUTS:
                raise _fail(f"stream {i} has layout {int(layout)}, expected plain (0) or shuffle (1)")
        key = stream_key(kind, bits, dtype)
        if key in seen_keys:
            raise _fail(f"stream {i} duplicates an earlier stream of the same kind/bits/dtype")
        seen_keys.add(key)
        count = _int(s["count"], f"stream {i} count", 0, lim.max_numel)
        bi = _int(s["block"], f"stream {i} block", 0, len(blocks) - 1)
        size = stream_raw_size(kind, layout, count, bits, dtype)
        blk = blocks[bi]
        if _int(s["at"], f"stream {i} offset", 0, lim.max_raw_bytes) != fill[bi]:
            raise _fail(f"stream {i} starts at {s['at']} in block {bi}, expected {fill[bi]} (streams must be contiguous)")
        if fill[bi] + size > blk.raw:
            raise _fail(f"stream {i} ({count} values, {size} bytes) overruns block {bi} ({blk.raw} bytes)")
        # a compressed size: never more than the file (bounded, so it converts to a float when shares are split)
        alone = _int(s["alone"], f"stream {i} alone", 0, MAX_FILE_BYTES) if "alone" in s else None
        streams.append(StreamEntry(i, kind, layout, bits, dtype, count, bi, fill[bi], size, alone))
        fill[bi] += size
    for b in blocks:
        if fill[b.index] != b.raw:
            raise _fail(f"block {b.index} holds {b.raw} raw bytes but its streams cover {fill[b.index]}")
    return streams


def _tensors(h: dict, streams: list[StreamEntry], lim: Limits) -> tuple[list[TensorEntry], list[list[str]]]:
    """Tensors tile their streams exactly, in header order. Also returns each stream's member names."""
    tensors, names, numel_total, out_total = [], set(), 0, 0
    fill = [0] * len(streams)
    members: list[list[str]] = [[] for _ in streams]

    def take(si: int, off: Any, n: int, name: str) -> int:
        off = _int(off, f"{name} offset", 0, lim.max_numel)
        if off != fill[si]:
            raise _fail(f"{name}: offset {off} in stream {si}, expected {fill[si]} (tensors must be contiguous, in header order)")
        if off + n > streams[si].count:
            raise _fail(f"{name}: {n} values at offset {off} overrun stream {si} ({streams[si].count} values)")
        fill[si] += n
        members[si].append(name)
        return off

    for i, e in enumerate(h["tensors"]):
        _keys(e, K.TENSOR_KEYS_REQUIRED, K.TENSOR_KEYS_INT | K.TENSOR_KEYS_OPTIONAL | K.TENSOR_KEYS_SUBSCALES | K.TENSOR_KEYS_OUTLIERS,
              f"tensor {i}")
        name = check_name(e["name"], lim, f"tensor {i} name", _fail)
        if name in names:
            raise _fail(f"duplicate tensor name {name!r}")
        names.add(name)
        shape = e["shape"]
        if not isinstance(shape, list) or len(shape) > lim.max_ndim:
            raise _fail(f"{name}: shape must be a list of at most {lim.max_ndim} dims")
        shape = [_int(d, f"{name} shape dim", 0, lim.max_numel) for d in shape]
        numel = math.prod(shape)
        if math.prod(d for d in shape if d) > lim.max_numel:  # an empty tensor may not smuggle in huge dims
            raise _fail(f"{name}: shape {shape} is over the limit of {lim.max_numel} elements")
        numel_total += numel
        if numel_total > lim.max_numel:
            raise _fail(f"{name}: tensors hold more than {lim.max_numel} elements in total")
        dtype = e["dtype"]
        if not isinstance(dtype, str) or dtype not in TORCH_DTYPES:
            raise _fail(f"{name}: unknown dtype {dtype!r}")
        out_total += numel * TORCH_DTYPES[dtype].itemsize
        if out_total > lim.max_output_bytes:
            raise _fail(f"{name}: the tensors rebuild to more than {lim.max_output_bytes} bytes")
        if not isinstance(e["spec"], str):
            raise _fail(f"{name}: spec must be a string")
        try:
            spec = TensorSpec.parse(e["spec"])
        except ValueError as ex:
            raise _fail(f"{name}: {ex}") from None
        if spec.label() != e["spec"]:  # only the canonical label the writer writes: no INT3, ' int3 ', int03, ٣
            raise _fail(f"{name}: spec {e['spec']!r} is not a canonical label (expected e.g. {spec.label()!r})")
        d = e["digest"]
        if not (isinstance(d, str) and len(d) == 64 and all(ch in "0123456789abcdef" for ch in d)):
            raise _fail(f"{name}: digest must be 64 lowercase hex characters")
        gi = _int(e["group"], f"{name} group", 0, len(streams) - 1)
        g = streams[gi]
        extra: dict[str, Any] = {}
        if spec.kind == "int":
            if K.TENSOR_KEYS_INT - e.keys():
                raise _fail(f"{name}: int tensor lacks scales/scale_offset")
            if dtype not in K.FLOAT_DTYPES:
                raise _fail(f"{name}: integer levels for a {dtype} tensor")
            if g.kind != StreamKind.LEVELS or g.bits != spec.bits:
                raise _fail(f"{name}: {spec.label()} tensor points at stream {gi}, which is not the int{spec.bits} levels stream")
            if "rows" in e:  # per-row scales: only 2-D tensors, one scale per row (what the writer makes)
                rows = _int(e["rows"], f"{name} rows", 0, lim.max_numel)
                if len(shape) != 2 or rows != shape[0]:
                    raise _fail(f"{name}: per-row scales need a 2-D tensor with rows == shape[0], got rows {rows} for shape {shape}")
                extra["rows"], nsc, sdt = rows, rows, K.SCALES_PER_ROW
                nsc = _scale_count(e, spec, shape, name)
            elif len(shape) == 2:
                raise _fail(f"{name}: a 2-D int tensor must have per-row scales ('rows')")
            else:
                if "scale_group" in e:
                    raise _fail(f"{name}: scale_group needs a 2-D tensor with per-row scales ('rows')")
                nsc, sdt = 1, K.SCALES_PER_TENSOR
            si = _int(e["scales"], f"{name} scales", 0, len(streams) - 1)
            sst = streams[si]
            if sst.kind != StreamKind.SCALES or sst.dtype != sdt:
                raise _fail(f"{name}: scales must be in the {sdt} scales stream, stream {si} is not")
            extra["scales"], extra["nscales"] = si, nsc
            extra["scale_offset"] = take(si, e["scale_offset"], nsc, name)
            lbits, lsi = _lqer(e, spec, shape, name, streams)
            has_sub = K.TENSOR_KEYS_SUBSCALES & e.keys()
            if bool(has_sub) != bool(spec.subscale) or (has_sub and has_sub != K.TENSOR_KEYS_SUBSCALES):
                raise _fail(f"{name}: subscales/subscale_offset must be present exactly when the spec has sub-scales ({spec.label()})")
            if spec.subscale:  # "rows" and scale_group were checked above (_scale_count)
                ui = _int(e["subscales"], f"{name} subscales", 0, len(streams) - 1)
                ust = streams[ui]
                if ust.kind != StreamKind.SUBSCALES or ust.bits != spec.subscale:
                    raise _fail(f"{name}: sub-scales must be in the {spec.subscale}-bit subscales stream, stream {ui} is not")
                extra["subscales"] = ui
                extra["subscale_offset"] = take(ui, e["subscale_offset"], shape[0] * -(-shape[1] // spec.group), name)
            if ("outliers" in e) != bool(spec.outliers):
                raise _fail(f"{name}: an outliers entry must be present exactly when the spec has +out<k> ({spec.label()})")
            if spec.outliers:  # the count is fixed by numel and k: a bounded allocation, checked before any block is read
                o = _keys(e["outliers"], K.OUTLIER_KEYS, frozenset(), f"{name} outliers")
                n = _int(o["count"], f"{name} outliers count", 0, lim.max_numel)
                if n != K.outlier_count(numel, spec.outliers):
                    raise _fail(f"{name}: {n} outliers, its spec {spec.label()} stores ceil({numel} * {spec.outliers} / 1000) = "
                                f"{K.outlier_count(numel, spec.outliers)}")
                oi = next((s.index for s in streams if s.kind == StreamKind.OUTLIERS), None)
                if oi is None:
                    raise _fail(f"{name}: {spec.label()} tensor but the file has no outliers stream")
                extra.update(outliers=oi, outlier_count=n, outlier_offset=take(oi, o["offset"], n, f"{name} outliers"))
        else:
            if K.TENSOR_KEYS_INT & e.keys() or "rows" in e or "scale_group" in e or "lqer" in e or (
                    (K.TENSOR_KEYS_SUBSCALES | K.TENSOR_KEYS_OUTLIERS) & e.keys()):
                raise _fail(f"{name}: passthrough tensor must not have scales/rows/scale_group/lqer/subscales/outliers")
            if spec.dtype != "exact" and dtype not in K.FLOAT_DTYPES:
                raise _fail(f"{name}: a {dtype} tensor can only be stored 'exact', not {spec.label()}")
            want = K.PASS_STORAGE.get(spec.dtype, dtype)
            if g.kind != StreamKind.PASSTHROUGH or g.dtype != want:
                raise _fail(f"{name}: {spec.label()} {dtype} tensor must be in the {want} passthrough stream, stream {gi} is not")
        off = take(gi, e["offset"], numel, name)
        if spec.lqer:  # after the tensor's own levels and scales (the same streams when the widths agree)
            r = spec.lqer
            extra.update(lqer_bits=lbits, lqer_levels=lsi, lqer_offset=take(lsi, e["lqer"]["offset"], r * sum(shape), f"{name} lqer"),
                         lqer_scale_offset=take(extra["scales"], e["lqer"]["scale_offset"], 2 * r, f"{name} lqer"))
        tensors.append(TensorEntry(i, name, tuple(shape), numel, dtype, spec, d, gi, off, **extra))
    for s in streams:
        if fill[s.index] != s.count:
            raise _fail(f"stream {s.index} holds {s.count} values but its tensors use {fill[s.index]}")
    return tensors, members


def validate_header(h: dict, start: int, data_len: int, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Check a parsed header object against the file (blocks begin at `start`, `data_len` bytes of them)."""
    for k in ("config", "policy", "meta"):
        if h[k] is not None and not isinstance(h[k], dict):
            raise _fail(f"header {k} must be an object or null")
        _check_tree(h[k], f"header {k}", 0)
    if h["policy"] is not None:  # its shape too (known keys, types, ranges, spec labels): formats/policy_schema.py
        check_policy(h["policy"], _fail, "header policy")
    for k in ("tensors", "streams", "blocks"):
        if not isinstance(h[k], list):
            raise _fail(f"header {k} must be a list")
    if len(h["tensors"]) > limits.max_tensors:
        raise _fail(f"{len(h['tensors'])} tensors exceed the limit of {limits.max_tensors}")
    blocks = _blocks(h, start, data_len, limits)
    streams = _streams(h, blocks, limits)
    tensors, members = _tensors(h, streams, limits)
    streams = [replace(s, tensors=tuple(members[s.index])) for s in streams]
    return Header(h["config"], h["policy"], h["meta"], tuple(tensors), tuple(streams), tuple(blocks), h)


def read_header(data: bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS) -> tuple[Preamble, Header]:
    """Preamble + validated header of QGv3 bytes, without decompressing any block."""
    data = memoryview(data).cast("B")
    pre = parse_preamble(data, limits)
    start = pre.header_end
    try:
        hraw = decompress(pre.header_codec, data[PREAMBLE.size : start], pre.header_raw)
    except FormatError as e:
        raise _fail(f"header: {e.detail}", PREAMBLE.size) from None
    return pre, validate_header(parse_header_json(hraw), start, len(data) - start, limits)


# ------------------------------------------------------------------------------------------------
# the decoded artifact


@dataclass
class QGv3Artifact:
    """A decoded QGv3 file."""

    header: dict[str, Any]  # the parsed JSON header, as stored
    records: list[TensorRecord]  # one per tensor, in header order
    config: dict[str, Any] | None  # model config (ModelConfig.to_dict()) or None
    policy: dict[str, Any] | None  # policy (Policy.to_dict()) or None
    meta: dict[str, Any] | None  # free-form writer metadata
    streams: list[dict[str, Any]]  # per stream: index, kind, bits/dtype, layout, codec, block, count, raw_bytes, stored_bytes, stored_exact, tensors
    blocks: list[dict[str, Any]]  # per block: index, codec, raw_bytes, stored_bytes, crc32, offset (in the file)
    total_bytes: int  # file size
    header_bytes: int  # preamble + stored header (framing not attributable to any tensor)
    entries: Header | None = None  # the validated header as frozen entries

    def state_dict(self) -> dict[str, torch.Tensor]:
        """name -> tensor rebuilt with TensorRecord.dequantize (original dtype and shape)."""
        return {r.name: r.dequantize() for r in self.records}

    def check_digests(self) -> list[str]:
        """Names whose rebuilt tensor does not match the digest written by the packer (empty: all good)."""
        want = {e["name"]: e["digest"] for e in self.header["tensors"]}
        return [r.name for r in self.records if tensor_digest(r.dequantize()) != want[r.name]]

    def raw_sizes(self) -> dict[str, float]:
        """Per tensor: bytes its values take in the streams before compression (levels at their layout's
        width - bits/8 per value dense, 1 byte in a byte container - plus its scales; or its passthrough bytes)."""
        out = {r.name: 0.0 for r in self.records}
        for name, _s, b, _lq in self._members():
            out[name] += b
        return out

    def tensor_shares(self) -> dict[str, float]:
        """Per tensor: ESTIMATED compressed bytes. Each stream's stored bytes are split over its tensors in
        proportion to their raw bytes in it (codecs are not additive, so this is an attribution, not a
        measurement). Shares sum to the blocks' stored bytes; preamble + header are not included."""
        return self._shares(lqer_only=False)

    def lqer_bytes(self) -> dict[str, tuple[int, float, float]]:
        """Per tensor with an LQER correction: (rank, raw bytes of its factor levels and scales, their ESTIMATED
        compressed share, attributed as `tensor_shares` does). Included in raw_sizes/tensor_shares too."""
        raw: dict[str, float] = {}
        for name, _s, b, lq in self._members():
            if lq:
                raw[name] = raw.get(name, 0.0) + b
        shares = self._shares(lqer_only=True)
        ranks = {e["name"]: e["lqer"]["rank"] for e in self.header["tensors"] if "lqer" in e}
        return {n: (ranks[n], raw[n], shares[n]) for n in ranks}

    def outlier_bytes(self) -> dict[str, tuple[int, int, float]]:
        """Per tensor with outliers: (count, raw bytes (6 an entry), ESTIMATED compressed share of the OUTLIERS stream,
        split by count). Included in raw_sizes/tensor_shares too."""
        counts = {e["name"]: e["outliers"]["count"] for e in self.header["tensors"] if "outliers" in e}
        stored = sum(s["stored_bytes"] for s in self.streams if s["kind"] == "outliers")
        total = sum(counts.values())
        return {n: (c, c * K.OUTLIER_ENTRY.size, stored * c / total if total else 0.0) for n, c in counts.items()}

    def _shares(self, *, lqer_only: bool) -> dict[str, float]:
        raw_in: dict[int, float] = {}
        mem = self._members()
        for _n, s, b, _lq in mem:
            raw_in[s] = raw_in.get(s, 0.0) + b
        out = {r.name: 0.0 for r in self.records}
        for name, s, b, lq in mem:
            if raw_in[s] > 0 and (lq or not lqer_only):
                out[name] += self.streams[s]["stored_bytes"] * b / raw_in[s]
        return out

    def _members(self) -> list[tuple[str, int, float, bool]]:
        res = []
        for e in self.header["tensors"]:
            numel = math.prod(e["shape"])
            g = self.streams[e["group"]]
            if g["kind"] == "levels":
                res.append((e["name"], e["group"], numel * (g["bits"] / 8 if g["layout"] == "dense" else 1), False))
                sc = self.streams[e["scales"]]
                per_row = -(-e["shape"][1] // e["scale_group"]) if "scale_group" in e else 1
                if "subscales" in e:  # one fp16 a row + the k-bit sub-scales (at their layout's width)
                    u = self.streams[e["subscales"]]
                    res.append((e["name"], e["scales"], e["rows"] * STORAGE_DTYPES[sc["dtype"]].itemsize, False))
                    res.append((e["name"], e["subscales"], e["rows"] * per_row * (u["bits"] / 8 if u["layout"] == "dense" else 1), False))
                else:
                    res.append((e["name"], e["scales"], e.get("rows", 1) * per_row * STORAGE_DTYPES[sc["dtype"]].itemsize, False))
                if "lqer" in e:  # the correction's factor levels and scales count to the tensor
                    lq = e["lqer"]
                    li = next(i for i, x in enumerate(self.streams) if x["kind"] == "levels" and x["bits"] == lq["bits"])
                    lay = self.streams[li]["layout"]
                    res.append((e["name"], li, lq["rank"] * sum(e["shape"]) * (lq["bits"] / 8 if lay == "dense" else 1), True))
                    res.append((e["name"], e["scales"], 2 * lq["rank"] * STORAGE_DTYPES[sc["dtype"]].itemsize, True))
                if "outliers" in e:  # (index delta, fp16) pairs
                    oi = next(i for i, x in enumerate(self.streams) if x["kind"] == "outliers")
                    res.append((e["name"], oi, e["outliers"]["count"] * K.OUTLIER_ENTRY.size, False))
            else:
                res.append((e["name"], e["group"], numel * STORAGE_DTYPES[g["dtype"]].itemsize, False))
        return res


def _record(t: TensorEntry, arrays: list[np.ndarray | None]) -> TensorRecord:
    arr = arrays[t.group]
    assert arr is not None
    vals = arr[t.offset : t.offset + t.numel]
    if t.spec.kind == "int":
        sc = arrays[t.scales]  # type: ignore[index]
        assert sc is not None and t.scale_offset is not None
        q = vals.reshape(t.rows, t.cols) if t.rows is not None else vals
        scales = sc[t.scale_offset : t.scale_offset + t.nscales]
        sub = None
        if t.spec.subscale and t.rows is not None:  # k-bit sub-scales (rows, ceil(cols / group)) x one fp16 scale a row
            us = arrays[t.subscales]  # type: ignore[index]
            assert us is not None and t.subscale_offset is not None
            n = t.rows * -(-t.cols // t.spec.group)
            sub = levels_to_sub(us[t.subscale_offset : t.subscale_offset + n], t.spec.subscale).reshape(t.rows, -1)
        elif t.spec.group and t.rows is not None:  # group-wise: (rows, ceil(cols / group)), as the packer made them
            scales = scales.reshape(t.rows, -1)
        oidx = ovals = None
        if t.spec.outliers:  # indices strictly increasing and < numel, checked before the tensor is built
            ent = arrays[t.outliers]  # type: ignore[index]
            assert ent is not None and t.outlier_offset is not None
            got = outliers_decode(ent[t.outlier_offset : t.outlier_offset + t.outlier_count], t.numel)
            if got is None:
                raise _fail(f"{t.name}: outlier indices are not strictly increasing flat indices below numel {t.numel}")
            oidx, ovals = got
        if t.spec.lqer:
            fq, r = arrays[t.lqer_levels], t.spec.lqer  # type: ignore[index]
            assert fq is not None and t.lqer_offset is not None and t.lqer_scale_offset is not None
            return TensorRecord(t.name, t.shape, t.dtype, t.spec, q=q, scales=scales, subscales=sub,
                                lqer_q=fq[t.lqer_offset : t.lqer_offset + r * sum(t.shape)],
                                lqer_scales=sc[t.lqer_scale_offset : t.lqer_scale_offset + 2 * r], lqer_bits=t.lqer_bits)
        return TensorRecord(t.name, t.shape, t.dtype, t.spec, q=q, scales=scales, subscales=sub, outlier_idx=oidx, outlier_vals=ovals)
    if t.dtype == "bool" and t.spec.dtype == "exact":
        vals = vals.view(np.bool_)
    return TensorRecord(t.name, t.shape, t.dtype, t.spec, data=vals.reshape(t.shape))


def decode_qgv3(data: bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS) -> QGv3Artifact:
    """Parse and fully validate QGv3 bytes (FormatError on anything malformed, before big allocations)."""
    data = memoryview(data).cast("B")
    pre, h = read_header(data, limits=limits)
    arrays: list[np.ndarray | None] = [None] * len(h.streams)
    for b in h.blocks:
        stored = data[b.offset : b.offset + b.stored]
        if zlib.crc32(stored) != b.crc:
            raise _fail(f"block {b.index} checksum mismatch (file corrupted)", b.offset)
        try:
            raw = decompress(b.codec, stored, b.raw)
        except FormatError as e:
            raise _fail(f"block {b.index}: {e.detail}", b.offset) from None
        for s in h.streams:
            if s.block == b.index:
                try:
                    arrays[s.index] = unlayout(s.kind, s.layout, raw[s.at : s.at + s.size], s.count, s.bits, s.dtype)
                except FormatError as e:
                    raise _fail(f"stream {s.index}: {e.detail}", b.offset) from None
        del raw
    return QGv3Artifact(
        header=h.raw,
        records=[_record(t, arrays) for t in h.tensors],
        config=h.config,
        policy=h.policy,
        meta=h.meta,
        streams=_stream_infos(h),
        blocks=[{"index": b.index, "codec": b.codec.name.lower(), "raw_bytes": b.raw, "stored_bytes": b.stored,
                 "crc32": b.crc, "offset": b.offset} for b in h.blocks],
        total_bytes=len(data),
        header_bytes=pre.header_end,
        entries=h,
    )


def _stream_infos(h: Header) -> list[dict[str, Any]]:
    """Per stream info; a stream alone in its block gets the block's exact stored size, streams sharing a
    block split it in proportion to their recorded stand-alone sizes (largest remainder, so sums are exact)."""
    shares: dict[int, int] = {}
    for b in h.blocks:
        members = [s.index for s in h.streams if s.block == b.index]
        weights = [float(h.streams[si].alone or h.streams[si].size) for si in members]
        tot = sum(weights)
        exact = [b.stored * w / tot if tot else b.stored / max(1, len(members)) for w in weights]
        floors = [int(x) for x in exact]
        left = b.stored - sum(floors)
        for k in sorted(range(len(members)), key=lambda k: floors[k] - exact[k])[:left]:
            floors[k] += 1
        shares.update(zip(members, floors))
    out = []
    for s in h.streams:
        b = h.blocks[s.block]
        d = {"index": s.index, "kind": s.kind.name.lower(), "layout": s.layout.name.lower(),
             "codec": b.codec.name.lower(), "block": s.block, "count": s.count, "raw_bytes": s.size,
             "stored_bytes": shares[s.index], "stored_exact": sum(1 for x in h.streams if x.block == s.block) == 1,
             "tensors": list(s.tensors)}
        if s.kind != StreamKind.OUTLIERS:
            d["bits" if s.kind in K.BIT_KINDS else "dtype"] = s.bits if s.kind in K.BIT_KINDS else s.dtype
        out.append(d)
    return out


def read_qgv3(path: str | Path, *, limits: Limits = DEFAULT_LIMITS) -> QGv3Artifact:
    """decode_qgv3 of a file (FormatError, naming the file, if missing or invalid)."""
    p = Path(path)
    if not p.is_file():
        raise FormatError("file not found", path=p)
    try:
        return decode_qgv3(p.read_bytes(), limits=limits)
    except FormatError as e:
        raise FormatError(e.detail, path=p, offset=e.offset) from None
    except GolfpackError as e:
        raise GolfpackError(f"{p}: {e}") from None


__all__ = ["BlockEntry", "Header", "Preamble", "QGv3Artifact", "StreamEntry", "TensorEntry", "check_name", "check_writable", "decode_qgv3", "parse_header_json",
           "parse_preamble", "read_header", "read_qgv3", "validate_header"]
