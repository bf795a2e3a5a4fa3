"""QGv3: golfpack's artifact format. TensorRecords -> one byte string, and back, with no pickle.

Layout (the full spec, with every validation rule, is docs/qgv3.md):

    preamble  24 bytes  magic(8) version u16 | header codec u8 | flags u8 | header stored u32 |
                        header raw u32 | crc32 of the stored header u32      (little-endian)
    header    JSON (UTF-8, sorted keys, compact), compressed with the header codec
    blocks    stored (compressed) blocks back to back, in header order, ending exactly at EOF

Tensors are grouped into streams: one LEVELS stream per bit width (all int-b levels together, either
bit-packed densely or one byte per level), SCALES streams (per-row fp16, per-tensor fp32), and one
PASSTHROUGH stream per storage dtype (plain or byte-shuffled). Streams go into blocks: either every
stream in its own block (each with its own codec) or all streams in one block ("solid"). The writer
measures the candidates (layouts, lzma props, codecs, separate vs solid) and keeps the smallest file.

Reading validates everything against the file length and `Limits` BEFORE allocating: the header
is bounded, blocks must tile the rest of the file exactly, streams must tile their blocks exactly,
tensors must tile their streams exactly (offsets contiguous, in header order), and decompression is
capped at each block's declared raw size.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from golfpack._io import write_bytes_atomic
from golfpack.errors import GolfpackError
from golfpack.formats.records import TORCH_DTYPES, TensorRecord
from golfpack.formats.bitpack import pack_bits, packed_size, qmax_of, shuffle_bytes, unpack_bits, unshuffle_bytes
from golfpack.formats.codecs import CODECS, LZMA_PROPS_CANDIDATES, Codec, available_codecs, codec_id, compress, decompress
from golfpack.formats.spec import TensorSpec

MAGIC = b"QGv3\r\n\x1a\n"  # CR LF / ^Z / LF catch text-mode and truncating transfers, as PNG's signature does
VERSION = 3
PREAMBLE = struct.Struct("<8sHBBIII")  # magic, version, header codec, flags, header stored, header raw, header crc32
assert PREAMBLE.size == 24


class StreamKind(IntEnum):
    """What a stream holds (stored as the int)."""

    LEVELS = 0  # integer levels of every int-`bits` tensor
    SCALES = 1  # dequantization scales: float16 (one per row) or float32 (one per tensor)
    PASSTHROUGH = 2  # passthrough values of one storage dtype


class Layout(IntEnum):
    """How a stream's values are laid out as bytes before compression (stored as the int)."""

    PLAIN = 0  # elements little-endian, one after another
    SHUFFLE = 1  # byte planes: byte 0 of every element, then byte 1, ... (multi-byte dtypes)
    DENSE = 2  # levels bit-packed, `bits` bits each, offset by +qmax (packer/bitpack.py)
    BYTE = 3  # levels one per byte, offset by +qmax (uint8)


# Storage dtypes of SCALES/PASSTHROUGH streams: name (torch's) -> numpy dtype of the stored bytes.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),  # raw bf16 bits (numpy has no bf16)
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int16": np.dtype("<i2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("u1"),  # 0/1 bytes; anything else is rejected on read
}
PASS_STORAGE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}  # passthrough spec -> storage dtype ("exact": the original)
_FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")

TRIAL_BYTES = 1 << 20  # layout/props/codec choices are measured on the whole stream up to this size, else on a sample this big
_TRIAL_SLICES = 8  # the sample: this many evenly spaced slices (different tensors of the stream)

TENSOR_KEYS_REQUIRED = {"name", "shape", "dtype", "spec", "digest", "group", "offset"}
TENSOR_KEYS_INT = {"scales", "scale_offset"}
STREAM_KEYS = {"kind", "count", "layout", "block", "at"}
BLOCK_KEYS = {"codec", "raw", "stored", "crc"}
HEADER_KEYS = {"config", "policy", "meta", "tensors", "streams", "blocks"}


@dataclass(frozen=True)
class Limits:
    """Sanity limits applied when reading (a file beyond them is refused before anything is allocated)."""

    max_header_bytes: int = 16 << 20  # stored and decompressed header JSON
    max_tensors: int = 100_000  # tensor entries
    max_ndim: int = 8  # dimensions per tensor
    max_name_len: int = 1024  # characters per tensor name
    # A 16 MB artifact holds at most ~64M levels (int2, dense) and legitimately decompresses to well
    # under 100 MiB; these caps leave room for bigger models yet keep a hostile few-KB file from
    # costing more than ~1 GiB of memory. Pass larger Limits to read something bigger on purpose.
    max_raw_bytes: int = 256 << 20  # sum of all blocks' decompressed sizes
    max_numel: int = 1 << 28  # sum of all tensors' elements (bounds the state dict built at the end)


DEFAULT_LIMITS = Limits()


# ------------------------------------------------------------------------------------------------
# digests


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 hex of a tensor's raw bytes (C order, native little-endian): the header's per-tensor `digest`."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# streams (shared by writer and reader)


def stream_key(kind: int, bits: int | None, dtype: str | None) -> tuple:
    """Canonical stream order: levels by bits, then scales (f16, f32), then passthrough by STORAGE_DTYPES order."""
    order = list(STORAGE_DTYPES)
    return (int(kind), bits or 0, order.index(dtype) if dtype else 0)


def stream_raw_size(kind: int, layout: int, count: int, bits: int | None, dtype: str | None) -> int:
    """Bytes a stream occupies in its block, from its element count (never stored, always derived)."""
    if kind == StreamKind.LEVELS:
        return packed_size(count, bits) if layout == Layout.DENSE else count
    return count * STORAGE_DTYPES[dtype].itemsize


def _layout_bytes(kind: int, layout: int, values: np.ndarray, bits: int | None) -> bytes:
    if kind == StreamKind.LEVELS:
        if layout == Layout.DENSE:
            return pack_bits(values, bits)
        return (values.astype(np.int16) + qmax_of(bits)).astype(np.uint8).tobytes()
    raw = np.ascontiguousarray(values).tobytes()
    return shuffle_bytes(raw, values.dtype.itemsize) if layout == Layout.SHUFFLE else raw


def _unlayout(kind: int, layout: int, raw: bytes, count: int, bits: int | None, dtype: str | None) -> np.ndarray:
    if kind == StreamKind.LEVELS:
        if layout == Layout.DENSE:
            return unpack_bits(raw, bits, count)
        u = np.frombuffer(raw, np.uint8)
        if u.size and int(u.max()) > 2 * qmax_of(bits):
            raise GolfpackError(f"int{bits} byte stream holds a level outside [-{qmax_of(bits)}, {qmax_of(bits)}]")
        return (u.astype(np.int16) - qmax_of(bits)).astype(np.int8)
    dt = STORAGE_DTYPES[dtype]
    if layout == Layout.SHUFFLE:
        raw = unshuffle_bytes(raw, dt.itemsize)
    arr = np.frombuffer(raw, dt).copy()  # own, writable memory (torch.from_numpy wants it)
    if dtype == "bool" and arr.size and int(arr.max()) > 1:
        raise GolfpackError("bool stream holds a byte other than 0/1")
    return arr


# ------------------------------------------------------------------------------------------------
# writer


@dataclass
class _WStream:
    kind: int
    bits: int | None
    dtype: str | None
    parts: list[np.ndarray] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    count: int = 0
    # chosen encoding (filled by _choose)
    layout: int = Layout.PLAIN
    codec: Codec = Codec.RAW
    props: tuple[int, int, int] | None = None
    stored: bytes = b""
    trial: bytes = b""  # the measured sample in the chosen layout (the whole stream when small)
    trial_size: int = 0  # its compressed size with the chosen codec/props
    sampled: bool = False  # True when choices were measured on a sample, not the whole stream

    def add(self, name: str, values: np.ndarray) -> int:
        off = self.count
        self.parts.append(values.reshape(-1))
        self.members.append(name)
        self.count += int(values.size)
        return off

    def values(self) -> np.ndarray:
        if self.kind == StreamKind.LEVELS:
            empty = np.zeros(0, np.int8)
        else:
            empty = np.zeros(0, STORAGE_DTYPES[self.dtype])
        return np.concatenate(self.parts) if self.parts else empty

    def layouts(self) -> list[int]:
        if self.kind == StreamKind.LEVELS:
            return [Layout.DENSE] if self.bits == 8 else [Layout.DENSE, Layout.BYTE]  # int8: both are the same bytes
        return [Layout.PLAIN] if STORAGE_DTYPES[self.dtype].itemsize == 1 else [Layout.PLAIN, Layout.SHUFFLE]


def _storage_of(rec: TensorRecord) -> tuple[str, np.ndarray]:
    """(storage dtype name, values) of a passthrough record, checked against its spec."""
    assert rec.data is not None
    arr = np.ascontiguousarray(rec.data).reshape(-1)
    want = PASS_STORAGE.get(rec.spec.dtype, rec.orig_dtype)
    np_want = STORAGE_DTYPES[want]
    if want == "bool":
        if arr.dtype != np.bool_:
            raise ValueError(f"{rec.name}: exact bool passthrough needs bool data, got {arr.dtype}")
        return want, arr.view(np.uint8)
    if arr.dtype.kind != np_want.kind or arr.dtype.itemsize != np_want.itemsize:
        raise ValueError(f"{rec.name}: {rec.spec.label()} passthrough of a {rec.orig_dtype} tensor needs {want} data, got {arr.dtype}")
    return want, arr.astype(np_want, copy=False)


def _check_record(rec: TensorRecord) -> None:
    if not isinstance(rec.name, str) or not rec.name:
        raise ValueError(f"tensor name must be a non-empty str, got {rec.name!r}")
    if rec.orig_dtype not in TORCH_DTYPES:
        raise ValueError(f"{rec.name}: unsupported dtype {rec.orig_dtype!r}")
    if any((not isinstance(d, (int, np.integer))) or d < 0 for d in rec.shape):
        raise ValueError(f"{rec.name}: bad shape {rec.shape!r}")
    if rec.spec.kind == "int":
        if rec.q is None or rec.scales is None:
            raise ValueError(f"{rec.name}: int record without levels/scales")
        if rec.orig_dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{rec.name}: integer levels for a {rec.orig_dtype} tensor (use 'exact')")
        if rec.q.size != rec.numel:
            raise ValueError(f"{rec.name}: {rec.q.size} levels for {rec.numel} elements")
        want = rec.q.shape[0] if rec.per_row else 1
        if rec.scales.size != want:
            raise ValueError(f"{rec.name}: {rec.scales.size} scales, expected {want}")
    elif rec.data is None or rec.data.size != rec.numel:
        raise ValueError(f"{rec.name}: passthrough record data does not match its shape {rec.shape}")


def _sample(values: np.ndarray, itemsize: float) -> np.ndarray:
    """The whole array if small, else `_TRIAL_SLICES` evenly spaced slices totalling ~TRIAL_BYTES."""
    n = values.size
    if n * itemsize <= TRIAL_BYTES:
        return values
    per = max(8, int(TRIAL_BYTES / itemsize) // _TRIAL_SLICES // 8 * 8)
    starts = np.linspace(0, n - per, _TRIAL_SLICES).astype(np.int64) // 8 * 8
    return np.concatenate([values[s : s + per] for s in starts])


def _variants(codec: Codec, kind: int, layout: int, itemsize: int) -> list[tuple[int, int, int] | None]:
    if codec != Codec.LZMA:
        return [None]
    out: list[tuple[int, int, int] | None] = list(LZMA_PROPS_CANDIDATES)
    if kind != StreamKind.LEVELS and layout == Layout.PLAIN and itemsize > 1:
        a = int(math.log2(itemsize))
        out.append((0, min(a, 4), min(a, 4)))  # literal position = byte within the element
    return out


def _choose(s: _WStream, codecs: list[Codec]) -> None:
    """Pick (codec, layout, lzma props) for one stream by measuring, then compress it whole."""
    vals = s.values()
    itemsize = 1 if s.kind == StreamKind.LEVELS else STORAGE_DTYPES[s.dtype].itemsize
    samp = _sample(vals, itemsize)
    whole = samp.size == vals.size
    best = None
    for c in codecs:
        for lay in s.layouts():
            data = _layout_bytes(s.kind, lay, samp, s.bits)
            for pr in _variants(c, s.kind, lay, itemsize):
                z = compress(c, data, lzma_props=pr) if c == Codec.LZMA else compress(c, data)
                if best is None or len(z) < len(best[0]):
                    best = (z, c, lay, pr)
    assert best is not None
    z, s.codec, s.layout, s.props = best
    s.trial, s.trial_size, s.sampled = _layout_bytes(s.kind, s.layout, samp, s.bits), len(z), not whole
    if whole:
        s.stored = z
    else:
        data = _layout_bytes(s.kind, s.layout, vals, s.bits)
        s.stored = compress(s.codec, data, lzma_props=s.props) if s.codec == Codec.LZMA else compress(s.codec, data)


def _resolve_codecs(codec: str) -> list[Codec]:
    if not isinstance(codec, str):
        raise GolfpackError(f"codec must be a name, got {codec!r}")
    if codec.lower() == "best":
        return [CODECS[c] for c in available_codecs()]
    c = codec_id(codec)
    if c.name.lower() not in available_codecs():
        compress(c, b"")  # raises the "install the package" error
    return [c]


def _jsonable(obj: Any, what: str) -> Any:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a dict or None, got {type(obj).__name__}")
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not plain JSON data ({e})") from None


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _assemble(header: dict, blocks: list[bytes], codecs: list[Codec]) -> bytes:
    hraw = _dump(header)
    cands = [compress(Codec.RAW, hraw)]
    hcodecs = [Codec.RAW]
    for c in codecs:
        if c != Codec.RAW:
            cands.append(compress(c, hraw))
            hcodecs.append(c)
    j = min(range(len(cands)), key=lambda i: len(cands[i]))
    hstored = cands[j]
    pre = PREAMBLE.pack(MAGIC, VERSION, int(hcodecs[j]), 0, len(hstored), len(hraw), zlib.crc32(hstored))
    return b"".join([pre, hstored, *blocks])


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
    """
    if blocks not in ("auto", "separate", "solid"):
        raise ValueError(f"blocks must be 'auto', 'separate' or 'solid', got {blocks!r}")
    records = list(records)
    codecs = _resolve_codecs(codec)
    streams: dict[tuple, _WStream] = {}

    def stream(kind: int, bits: int | None = None, dtype: str | None = None) -> _WStream:
        k = (kind, bits, dtype)
        if k not in streams:
            streams[k] = _WStream(kind, bits, dtype)
        return streams[k]

    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for rec in records:
        _check_record(rec)
        if rec.name in seen:
            raise ValueError(f"duplicate tensor name {rec.name!r}")
        seen.add(rec.name)
        e: dict[str, Any] = {
            "name": rec.name,
            "shape": [int(d) for d in rec.shape],
            "dtype": rec.orig_dtype,
            "spec": rec.spec.label(),
            "digest": tensor_digest(rec.dequantize()),
        }
        if rec.spec.kind == "int":
            lv = stream(StreamKind.LEVELS, bits=rec.spec.bits)
            q = np.ascontiguousarray(rec.q).astype(np.int8, copy=False)
            qmax = rec.spec.qmax
            if q.size and (int(q.min()) < -qmax or int(q.max()) > qmax):
                raise ValueError(f"{rec.name}: int{rec.spec.bits} levels outside [-{qmax}, {qmax}]")
            e["group"], e["offset"] = id(lv), lv.add(rec.name, q)
            sdt = "float16" if rec.per_row else "float32"
            sc = np.asarray(rec.scales).reshape(-1)
            s_cast = sc.astype(STORAGE_DTYPES[sdt])
            if not np.array_equal(s_cast.astype(np.float64), sc.astype(np.float64), equal_nan=True):
                raise ValueError(f"{rec.name}: scales are not exactly representable as {sdt}")
            st = stream(StreamKind.SCALES, dtype=sdt)
            e["scales"], e["scale_offset"] = id(st), st.add(rec.name, s_cast)
            if rec.per_row:
                e["rows"] = int(rec.q.shape[0])
        else:
            sdt, vals = _storage_of(rec)
            ps = stream(StreamKind.PASSTHROUGH, dtype=sdt)
            e["group"], e["offset"] = id(ps), ps.add(rec.name, vals)
        entries.append(e)

    order = sorted(streams.values(), key=lambda s: stream_key(s.kind, s.bits, s.dtype))
    index = {id(s): i for i, s in enumerate(order)}
    for e in entries:  # python ids -> stream indices
        e["group"] = index[e["group"]]
        if "scales" in e:
            e["scales"] = index[e["scales"]]
    for s in order:
        _choose(s, codecs)

    base = {"config": _jsonable(config, "config"), "policy": _jsonable(policy, "policy"), "meta": _jsonable(meta, "meta"), "tensors": entries}

    def sdesc(s: _WStream, block: int, at: int) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": int(s.kind), "count": s.count, "layout": int(s.layout), "block": block, "at": at}
        d["bits" if s.kind == StreamKind.LEVELS else "dtype"] = s.bits if s.kind == StreamKind.LEVELS else s.dtype
        return d

    def bdesc(c: Codec, raw: int, stored: bytes) -> dict[str, Any]:
        return {"codec": int(c), "raw": raw, "stored": len(stored), "crc": zlib.crc32(stored)}

    # separate: one block per stream, each with its own codec
    sep_streams, sep_blocks = [], []
    for i, s in enumerate(order):
        raw = stream_raw_size(s.kind, s.layout, s.count, s.bits, s.dtype)
        sep_streams.append(sdesc(s, i, 0))
        sep_blocks.append(bdesc(s.codec, raw, s.stored))
    best = _assemble({**base, "streams": sep_streams, "blocks": sep_blocks}, [s.stored for s in order], codecs)
    biggest = max(order, key=lambda s: len(s.stored))

    def solid_codec(data: bytes, c: Codec) -> bytes:
        return compress(c, data, lzma_props=biggest.props if biggest.codec == c else None) if c == Codec.LZMA else compress(c, data)

    solid_codecs = list(dict.fromkeys(s.codec for s in order))
    try_solid = len(order) > 1 and blocks != "separate"
    if try_solid and blocks == "auto" and any(s.sampled for s in order):
        # big streams: compress them solid in full only if it wins on the measured samples
        joined_trial = b"".join(s.trial for s in order)
        try_solid = min(len(solid_codec(joined_trial, c)) for c in solid_codecs) < sum(s.trial_size for s in order)
    if try_solid:  # solid: all streams in one block (cross-stream matches; one codec)
        joined = b"".join(_layout_bytes(s.kind, s.layout, s.values(), s.bits) for s in order)
        c, z = min(((c, solid_codec(joined, c)) for c in solid_codecs), key=lambda t: len(t[1]))
        sol_streams, at = [], 0
        for s in order:
            d = sdesc(s, 0, at)
            d["alone"] = len(s.stored)  # its size compressed alone: how `inspect` apportions the block
            sol_streams.append(d)
            at += stream_raw_size(s.kind, s.layout, s.count, s.bits, s.dtype)
        solid = _assemble({**base, "streams": sol_streams, "blocks": [bdesc(c, len(joined), z)]}, [z], codecs)
        if len(solid) < len(best) or blocks == "solid":
            best = solid
    return best


def write_qgv3(path: str | Path, records: Iterable[TensorRecord], **kwargs: Any) -> int:
    """encode_qgv3(records, **kwargs) written atomically to `path`; returns the byte count."""
    data = encode_qgv3(records, **kwargs)
    write_bytes_atomic(path, data)
    return len(data)


# ------------------------------------------------------------------------------------------------
# reader


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
        for name, _s, b in self._members():
            out[name] += b
        return out

    def tensor_shares(self) -> dict[str, float]:
        """Per tensor: ESTIMATED compressed bytes. Each stream's stored bytes are split over its tensors in
        proportion to their raw bytes in it (codecs are not additive, so this is an attribution, not a
        measurement). Shares sum to the blocks' stored bytes; preamble + header are not included."""
        raw_in: dict[int, float] = {}
        mem = self._members()
        for _n, s, b in mem:
            raw_in[s] = raw_in.get(s, 0.0) + b
        out = {r.name: 0.0 for r in self.records}
        for name, s, b in mem:
            if raw_in[s] > 0:
                out[name] += self.streams[s]["stored_bytes"] * b / raw_in[s]
        return out

    def _members(self) -> list[tuple[str, int, float]]:
        res = []
        for e in self.header["tensors"]:
            numel = math.prod(e["shape"])
            g = self.streams[e["group"]]
            if g["kind"] == "levels":
                res.append((e["name"], e["group"], numel * (g["bits"] / 8 if g["layout"] == "dense" else 1)))
                sc = self.streams[e["scales"]]
                res.append((e["name"], e["scales"], (e.get("rows", 1)) * STORAGE_DTYPES[sc["dtype"]].itemsize))
            else:
                res.append((e["name"], e["group"], numel * STORAGE_DTYPES[g["dtype"]].itemsize))
        return res


def _fail(msg: str) -> GolfpackError:
    return GolfpackError(f"invalid QGv3 artifact: {msg}")


def _int(v: Any, what: str, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(f"{what} must be an integer, got {type(v).__name__}")
    if v < lo or (hi is not None and v > hi):
        raise _fail(f"{what} = {v} is out of range [{lo}, {'inf' if hi is None else hi}]")
    return v


def _keys(d: Any, required: set[str], optional: set[str], what: str) -> dict:
    if not isinstance(d, dict):
        raise _fail(f"{what} must be a JSON object")
    missing = required - d.keys()
    extra = d.keys() - required - optional
    if missing:
        raise _fail(f"{what} lacks {', '.join(sorted(missing))}")
    if extra:
        raise _fail(f"{what} has unknown field(s) {', '.join(sorted(extra))}")
    return d


def _parse_header(raw: bytes) -> dict:
    def no_dups(pairs: list[tuple[str, Any]]) -> dict:
        d = dict(pairs)
        if len(d) != len(pairs):
            raise ValueError(f"duplicate JSON key among {sorted(k for k, _ in pairs)[:5]}")
        return d

    def no_const(c: str) -> Any:
        raise ValueError(f"non-standard JSON constant {c}")

    try:
        h = json.loads(raw.decode("utf-8"), object_pairs_hook=no_dups, parse_constant=no_const)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(f"header is not valid JSON ({str(e)[:200]})") from None
    return _keys(h, HEADER_KEYS, set(), "header")


@dataclass
class _Plan:
    blocks: list[dict[str, Any]]
    streams: list[dict[str, Any]]
    tensors: list[dict[str, Any]]


def _validate(h: dict, data_len: int, lim: Limits) -> _Plan:
    for k in ("config", "policy", "meta"):
        if h[k] is not None and not isinstance(h[k], dict):
            raise _fail(f"header {k} must be an object or null")
    for k in ("tensors", "streams", "blocks"):
        if not isinstance(h[k], list):
            raise _fail(f"header {k} must be a list")
    if len(h["tensors"]) > lim.max_tensors:
        raise _fail(f"{len(h['tensors'])} tensors exceed the limit of {lim.max_tensors}")
    # blocks tile the rest of the file exactly
    blocks, pos, raw_total = [], 0, 0
    for i, b in enumerate(h["blocks"]):
        _keys(b, BLOCK_KEYS, set(), f"block {i}")
        try:
            c = codec_id(_int(b["codec"], f"block {i} codec", 0, 255))
        except GolfpackError as e:
            raise _fail(f"block {i}: {e}") from None
        raw = _int(b["raw"], f"block {i} raw size", 0)
        if raw > lim.max_raw_bytes:
            raise _fail(f"block {i} declares {raw} raw bytes, over the limit of {lim.max_raw_bytes}")
        stored = _int(b["stored"], f"block {i} stored size", 0, data_len)
        crc = _int(b["crc"], f"block {i} crc", 0, 0xFFFFFFFF)
        if c == Codec.RAW and stored != raw:
            raise _fail(f"block {i} is uncompressed but stores {stored} bytes for {raw}")
        blocks.append({"codec": c, "raw": raw, "stored": stored, "crc": crc, "offset": pos, "fill": 0})
        pos += stored
        raw_total += raw
    if pos != data_len:
        why = "file is truncated" if pos > data_len else "file has trailing bytes"
        raise _fail(f"blocks declare {pos} stored bytes but {data_len} follow the header ({why})")
    if raw_total > lim.max_raw_bytes:
        raise _fail(f"blocks decompress to {raw_total} bytes in total, over the limit of {lim.max_raw_bytes}")
    # streams tile their blocks exactly, in order
    streams, seen_keys = [], set()
    for i, s in enumerate(h["streams"]):
        kind = _int(_keys(s, STREAM_KEYS, {"bits", "dtype", "alone"}, f"stream {i}")["kind"], f"stream {i} kind", 0, max(StreamKind))
        layout = _int(s["layout"], f"stream {i} layout", 0, max(Layout))
        bits = dtype = None
        if kind == StreamKind.LEVELS:
            if "bits" not in s or "dtype" in s:
                raise _fail(f"stream {i} (levels) needs 'bits' and no 'dtype'")
            bits = _int(s["bits"], f"stream {i} bits", 2, 8)
            if layout not in (Layout.DENSE, Layout.BYTE):
                raise _fail(f"stream {i} (levels) has layout {layout}, expected dense (2) or byte (3)")
        else:
            if "dtype" not in s or "bits" in s:
                raise _fail(f"stream {i} needs 'dtype' and no 'bits'")
            dtype = s["dtype"]
            allowed = ("float16", "float32") if kind == StreamKind.SCALES else tuple(STORAGE_DTYPES)
            if dtype not in allowed:
                raise _fail(f"stream {i} dtype {dtype!r} is not one of {', '.join(allowed)}")
            if layout not in (Layout.PLAIN, Layout.SHUFFLE):
                raise _fail(f"stream {i} has layout {layout}, expected plain (0) or shuffle (1)")
        key = stream_key(kind, bits, dtype)
        if key in seen_keys:
            raise _fail(f"stream {i} duplicates an earlier stream of the same kind/bits/dtype")
        seen_keys.add(key)
        count = _int(s["count"], f"stream {i} count", 0, lim.max_numel)
        bi = _int(s["block"], f"stream {i} block", 0, len(blocks) - 1)
        size = stream_raw_size(kind, layout, count, bits, dtype)
        blk = blocks[bi]
        if _int(s["at"], f"stream {i} offset", 0) != blk["fill"]:
            raise _fail(f"stream {i} starts at {s['at']} in block {bi}, expected {blk['fill']} (streams must be contiguous)")
        if blk["fill"] + size > blk["raw"]:
            raise _fail(f"stream {i} ({count} values, {size} bytes) overruns block {bi} ({blk['raw']} bytes)")
        alone = _int(s["alone"], f"stream {i} alone", 0) if "alone" in s else None
        streams.append({"kind": kind, "layout": layout, "bits": bits, "dtype": dtype, "count": count, "block": bi,
                        "at": blk["fill"], "size": size, "alone": alone, "fill": 0, "members": []})
        blk["fill"] += size
    for i, b in enumerate(blocks):
        if b["fill"] != b["raw"]:
            raise _fail(f"block {i} holds {b['raw']} raw bytes but its streams cover {b['fill']}")
    # tensors tile their streams exactly, in header order
    tensors, names, numel_total = [], set(), 0
    for i, e in enumerate(h["tensors"]):
        _keys(e, TENSOR_KEYS_REQUIRED, TENSOR_KEYS_INT | {"rows"}, f"tensor {i}")
        name = e["name"]
        if not isinstance(name, str) or not name or len(name) > lim.max_name_len:
            raise _fail(f"tensor {i} name must be a non-empty string of at most {lim.max_name_len} characters")
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
        if e["dtype"] not in TORCH_DTYPES:
            raise _fail(f"{name}: unknown dtype {e['dtype']!r}")
        if not isinstance(e["spec"], str):
            raise _fail(f"{name}: spec must be a string")
        try:
            spec = TensorSpec.parse(e["spec"])
        except ValueError as ex:
            raise _fail(f"{name}: {ex}") from None
        d = e["digest"]
        if not (isinstance(d, str) and len(d) == 64 and all(ch in "0123456789abcdef" for ch in d)):
            raise _fail(f"{name}: digest must be 64 lowercase hex characters")
        gi = _int(e["group"], f"{name} group", 0, len(streams) - 1)
        g = streams[gi]
        t = {"name": name, "shape": tuple(shape), "numel": numel, "dtype": e["dtype"], "spec": spec, "group": gi}
        if spec.kind == "int":
            if set(TENSOR_KEYS_INT) - e.keys():
                raise _fail(f"{name}: int tensor lacks scales/scale_offset")
            if e["dtype"] not in _FLOAT_DTYPES:
                raise _fail(f"{name}: integer levels for a {e['dtype']} tensor")
            if g["kind"] != StreamKind.LEVELS or g["bits"] != spec.bits:
                raise _fail(f"{name}: {spec.label()} tensor points at stream {gi}, which is not the int{spec.bits} levels stream")
            if "rows" in e:  # per-row scales: only 2-D tensors, one scale per row (what the writer makes)
                rows = _int(e["rows"], f"{name} rows", 0, lim.max_numel)
                if len(shape) != 2 or rows != shape[0]:
                    raise _fail(f"{name}: per-row scales need a 2-D tensor with rows == shape[0], got rows {rows} for shape {shape}")
                t["rows"], t["cols"], nsc, sdt = rows, shape[1], rows, "float16"
            elif len(shape) == 2:
                raise _fail(f"{name}: a 2-D int tensor must have per-row scales ('rows')")
            else:
                nsc, sdt = 1, "float32"
            si = _int(e["scales"], f"{name} scales", 0, len(streams) - 1)
            sst = streams[si]
            if sst["kind"] != StreamKind.SCALES or sst["dtype"] != sdt:
                raise _fail(f"{name}: scales must be in the {sdt} scales stream, stream {si} is not")
            t["scales"], t["nscales"] = si, nsc
            t["scale_offset"] = _take(sst, si, e["scale_offset"], nsc, name)
        else:
            if TENSOR_KEYS_INT & e.keys() or "rows" in e:
                raise _fail(f"{name}: passthrough tensor must not have scales/rows")
            if spec.dtype != "exact" and e["dtype"] not in _FLOAT_DTYPES:
                raise _fail(f"{name}: a {e['dtype']} tensor can only be stored 'exact', not {spec.label()}")
            want = PASS_STORAGE.get(spec.dtype, e["dtype"])
            if g["kind"] != StreamKind.PASSTHROUGH or g["dtype"] != want:
                raise _fail(f"{name}: {spec.label()} {e['dtype']} tensor must be in the {want} passthrough stream, stream {gi} is not")
        t["offset"] = _take(g, gi, e["offset"], numel, name)
        tensors.append(t)
    for i, s in enumerate(streams):
        if s["fill"] != s["count"]:
            raise _fail(f"stream {i} holds {s['count']} values but its tensors use {s['fill']}")
    return _Plan(blocks, streams, tensors)


def _take(s: dict, si: int, off: Any, n: int, name: str) -> int:
    off = _int(off, f"{name} offset", 0)
    if off != s["fill"]:
        raise _fail(f"{name}: offset {off} in stream {si}, expected {s['fill']} (tensors must be contiguous, in header order)")
    if off + n > s["count"]:
        raise _fail(f"{name}: {n} values at offset {off} overrun stream {si} ({s['count']} values)")
    s["fill"] += n
    s["members"].append(name)
    return off


def decode_qgv3(data: bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS) -> QGv3Artifact:
    """Parse and fully validate QGv3 bytes (GolfpackError on anything malformed, before big allocations)."""
    data = memoryview(data).cast("B")
    n = len(data)
    if n < PREAMBLE.size:
        raise _fail(f"{n} bytes is shorter than the {PREAMBLE.size}-byte preamble (truncated file?)")
    magic, version, hcodec, flags, hstored, hraw, hcrc = PREAMBLE.unpack_from(data, 0)
    if magic != MAGIC:
        raise _fail(f"wrong magic {bytes(magic)!r} (expected {MAGIC!r}); not a QGv3 file")
    if version != VERSION:
        raise _fail(f"format version {version}, this reader understands version {VERSION} only")
    if flags:
        raise _fail(f"reserved flags byte is {flags}, must be 0")
    if hstored > limits.max_header_bytes or hraw > limits.max_header_bytes:
        raise _fail(f"header size {max(hstored, hraw)} exceeds the limit of {limits.max_header_bytes} bytes")
    start = PREAMBLE.size + hstored
    if start > n:
        raise _fail(f"header of {hstored} bytes runs past the end of the {n}-byte file (truncated?)")
    hbytes = data[PREAMBLE.size : start]
    if zlib.crc32(hbytes) != hcrc:
        raise _fail("header checksum mismatch (file corrupted)")
    try:
        hc = codec_id(hcodec)
    except GolfpackError as e:
        raise _fail(f"header: {e}") from None
    header = _parse_header(decompress(hc, hbytes, hraw))
    plan = _validate(header, n - start, limits)

    arrays: list[np.ndarray | None] = [None] * len(plan.streams)
    for bi, b in enumerate(plan.blocks):
        off = start + b["offset"]
        stored = data[off : off + b["stored"]]
        if zlib.crc32(stored) != b["crc"]:
            raise _fail(f"block {bi} checksum mismatch (file corrupted)")
        try:
            raw = decompress(b["codec"], stored, b["raw"])
        except GolfpackError as e:
            raise _fail(f"block {bi}: {e}") from None
        for si, s in enumerate(plan.streams):
            if s["block"] == bi:
                arrays[si] = _unlayout(s["kind"], s["layout"], raw[s["at"] : s["at"] + s["size"]], s["count"], s["bits"], s["dtype"])
        del raw

    records = []
    for t in plan.tensors:
        spec, arr = t["spec"], arrays[t["group"]]
        assert arr is not None
        vals = arr[t["offset"] : t["offset"] + t["numel"]]
        if spec.kind == "int":
            sc = arrays[t["scales"]]
            assert sc is not None
            q = vals.reshape(t["rows"], t["cols"]) if "rows" in t else vals
            rec = TensorRecord(t["name"], t["shape"], t["dtype"], spec, q=q, scales=sc[t["scale_offset"] : t["scale_offset"] + t["nscales"]])
        else:
            if t["dtype"] == "bool" and spec.dtype == "exact":
                vals = vals.view(np.bool_)
            rec = TensorRecord(t["name"], t["shape"], t["dtype"], spec, data=vals.reshape(t["shape"]))
        records.append(rec)

    return QGv3Artifact(
        header=header,
        records=records,
        config=header["config"],
        policy=header["policy"],
        meta=header["meta"],
        streams=_stream_infos(plan),
        blocks=[{"index": i, "codec": b["codec"].name.lower(), "raw_bytes": b["raw"], "stored_bytes": b["stored"],
                 "crc32": b["crc"], "offset": start + b["offset"]} for i, b in enumerate(plan.blocks)],
        total_bytes=n,
        header_bytes=start,
    )


def _stream_infos(plan: _Plan) -> list[dict[str, Any]]:
    """Per stream info; a stream alone in its block gets the block's exact stored size, streams sharing a
    block split it in proportion to their recorded stand-alone sizes (largest remainder, so sums are exact)."""
    shares: dict[int, int] = {}
    for bi, b in enumerate(plan.blocks):
        members = [si for si, s in enumerate(plan.streams) if s["block"] == bi]
        weights = [float(plan.streams[si]["alone"] or plan.streams[si]["size"]) for si in members]
        tot = sum(weights)
        exact = [b["stored"] * w / tot if tot else b["stored"] / max(1, len(members)) for w in weights]
        floors = [int(x) for x in exact]
        left = b["stored"] - sum(floors)
        for k in sorted(range(len(members)), key=lambda k: floors[k] - exact[k])[:left]:
            floors[k] += 1
        shares.update(zip(members, floors))
    out = []
    for si, s in enumerate(plan.streams):
        b = plan.blocks[s["block"]]
        d = {"index": si, "kind": StreamKind(s["kind"]).name.lower(), "layout": Layout(s["layout"]).name.lower(),
             "codec": b["codec"].name.lower(), "block": s["block"], "count": s["count"], "raw_bytes": s["size"],
             "stored_bytes": shares[si], "stored_exact": sum(1 for x in plan.streams if x["block"] == s["block"]) == 1,
             "tensors": list(s["members"])}
        d["bits" if s["kind"] == StreamKind.LEVELS else "dtype"] = s["bits"] if s["kind"] == StreamKind.LEVELS else s["dtype"]
        out.append(d)
    return out


def read_qgv3(path: str | Path, *, limits: Limits = DEFAULT_LIMITS) -> QGv3Artifact:
    """decode_qgv3 of a file (GolfpackError if missing or invalid)."""
    p = Path(path)
    if not p.is_file():
        raise GolfpackError(f"{p}: file not found")
    try:
        return decode_qgv3(p.read_bytes(), limits=limits)
    except GolfpackError as e:
        raise GolfpackError(f"{p}: {e}") from None


__all__ = [
    "DEFAULT_LIMITS",
    "Layout",
    "Limits",
    "MAGIC",
    "PREAMBLE",
    "QGv3Artifact",
    "STORAGE_DTYPES",
    "StreamKind",
    "VERSION",
    "decode_qgv3",
    "encode_qgv3",
    "read_qgv3",
    "tensor_digest",
    "write_qgv3",
]
