"""QGv3 streams: records -> per-stream values and header tensor entries, and the byte layouts of a stream.

Shared by the planner (qgv3_plan.py), the serializer (qgv3_write.py) and the reader (qgv3_read.py).
`collect` decides nothing: which tensor goes in which stream, and in what order, is fixed by the format.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from golfpack.errors import FormatError, UsageError
from golfpack.formats import qgv3_constants as K
from golfpack.formats.bitpack import pack_bits, packed_size, qmax_of, shuffle_bytes, unpack_bits, unshuffle_bytes
from golfpack.formats.qgv3_constants import Layout, StreamKind
from golfpack.formats.records import TORCH_DTYPES, TensorRecord

# Storage dtypes of SCALES/PASSTHROUGH streams: name (torch's) -> numpy dtype of the stored bytes.
STORAGE_DTYPES: dict[str, np.dtype] = {name: np.dtype(code) for name, code in K.STORAGE_DTYPES.items()}
OUTLIER_DTYPE = np.dtype([("d", "<u4"), ("v", "<f2")])  # an OUTLIERS stream element (K.OUTLIER_ENTRY): index delta, fp16 value
assert OUTLIER_DTYPE.itemsize == K.OUTLIER_ENTRY.size


def _value_dtype(kind: int, dtype: str | None) -> np.dtype:
    """The element dtype of a stream that is not bit-packed: the OUTLIERS pair, else the storage dtype."""
    return OUTLIER_DTYPE if kind == StreamKind.OUTLIERS else STORAGE_DTYPES[dtype]  # type: ignore[index]


def outliers_encode(idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Strictly increasing flat indices + float16 values -> OUTLIERS stream entries (first delta = first index)."""
    out = np.zeros(idx.size, OUTLIER_DTYPE)
    i = np.asarray(idx, np.int64).reshape(-1)
    out["d"] = np.diff(i, prepend=0) if i.size else i
    out["v"] = np.asarray(vals).reshape(-1)
    return out


def outliers_decode(entries: np.ndarray, numel: int) -> tuple[np.ndarray, np.ndarray] | None:
    """OUTLIERS entries of one tensor -> (int64 flat indices, float16 values); None unless every delta after the
    first is >= 1 (strictly increasing) and the last index is < numel."""
    d = entries["d"].astype(np.int64)
    idx = np.cumsum(d)
    if d.size and (int(d[1:].min(initial=1)) < 1 or int(idx[-1]) >= numel):
        return None
    return idx, entries["v"].copy()


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 hex of a tensor's raw bytes (C order, native little-endian): the header's per-tensor `digest`."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:  # an empty tensor's view has stride 0, which view(uint8) refuses
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def stream_key(kind: int, bits: int | None, dtype: str | None) -> tuple:
    """Canonical stream order: levels by bits, then scales (f16, f32), then passthrough by STORAGE_DTYPES order."""
    order = list(STORAGE_DTYPES)
    return (int(kind), bits or 0, order.index(dtype) if dtype else 0)


def sub_to_levels(sub: np.ndarray, bits: int) -> np.ndarray:
    """Sub-scales 1..2^bits-1 -> the int8 levels their stream stores (sub - 1 - qmax: unsigned u = sub - 1 packed
    exactly as a level is, so a SUBSCALES stream has the LEVELS stream's layouts and one packed form)."""
    return (np.asarray(sub).astype(np.int16) - 1 - qmax_of(bits)).astype(np.int8)


def levels_to_sub(levels: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of `sub_to_levels`: uint8 sub-scales 1..2^bits-1."""
    return (np.asarray(levels).astype(np.int16) + 1 + qmax_of(bits)).astype(np.uint8)


def stream_raw_size(kind: int, layout: int, count: int, bits: int | None, dtype: str | None) -> int:
    """Bytes a stream occupies in its block, from its element count (never stored, always derived)."""
    if kind in K.BIT_KINDS:
        return packed_size(count, bits) if layout == Layout.DENSE else count
    return count * _value_dtype(kind, dtype).itemsize


def layout_bytes(kind: int, layout: int, values: np.ndarray, bits: int | None) -> bytes:
    """A stream's values as the bytes its layout stores (before compression)."""
    if kind in K.BIT_KINDS:
        if layout == Layout.DENSE:
            return pack_bits(values, bits)
        return (values.astype(np.int16) + qmax_of(bits)).astype(np.uint8).tobytes()
    raw = np.ascontiguousarray(values).tobytes()
    return shuffle_bytes(raw, values.dtype.itemsize) if layout == Layout.SHUFFLE else raw


def unlayout(kind: int, layout: int, raw: bytes, count: int, bits: int | None, dtype: str | None) -> np.ndarray:
    """Inverse of `layout_bytes` (FormatError for a level or bool byte out of range)."""
    if kind in K.BIT_KINDS:
        if layout == Layout.DENSE:
            return unpack_bits(raw, bits, count)
        u = np.frombuffer(raw, np.uint8)
        if u.size and int(u.max()) > 2 * qmax_of(bits):
            raise FormatError(f"int{bits} byte stream holds a level outside [-{qmax_of(bits)}, {qmax_of(bits)}]")
        return (u.astype(np.int16) - qmax_of(bits)).astype(np.int8)
    dt = _value_dtype(kind, dtype)
    if layout == Layout.SHUFFLE:
        raw = unshuffle_bytes(raw, dt.itemsize)
    arr = np.frombuffer(raw, dt).copy()  # own, writable memory (torch.from_numpy wants it)
    if dtype == "bool" and arr.size and int(arr.max()) > 1:
        raise FormatError("bool stream holds a byte other than 0/1")
    return arr


@dataclass
class Stream:
    """One stream's values, gathered from the records (layout and codec are the plan's, not here)."""

    kind: StreamKind  # what it holds
    bits: int | None  # LEVELS/SUBSCALES: the integer width; else None
    dtype: str | None  # SCALES/PASSTHROUGH: the storage dtype name; else None (OUTLIERS: OUTLIER_DTYPE pairs)
    parts: list[np.ndarray] = field(default_factory=list)  # each member tensor's flat values, in order (SUBSCALES: sub_to_levels)
    members: list[str] = field(default_factory=list)  # tensor names, in order
    count: int = 0  # values in the stream

    def add(self, name: str, values: np.ndarray) -> int:
        off = self.count
        self.parts.append(values.reshape(-1))
        self.members.append(name)
        self.count += int(values.size)
        return off

    @property
    def key(self) -> tuple:
        return stream_key(self.kind, self.bits, self.dtype)

    @property
    def itemsize(self) -> int:
        return 1 if self.kind in K.BIT_KINDS else _value_dtype(self.kind, self.dtype).itemsize

    def values(self) -> np.ndarray:
        if self.kind in K.BIT_KINDS:
            empty = np.zeros(0, np.int8)
        else:
            empty = np.zeros(0, _value_dtype(self.kind, self.dtype))
        return np.concatenate(self.parts) if self.parts else empty

    def layouts(self) -> list[Layout]:
        """The layouts this stream may take (the planner measures each)."""
        if self.kind in K.BIT_KINDS:
            return [Layout.DENSE] if self.bits == 8 else [Layout.DENSE, Layout.BYTE]  # int8: both are the same bytes
        return [Layout.PLAIN] if self.itemsize == 1 else [Layout.PLAIN, Layout.SHUFFLE]

    def laid_out(self, layout: int) -> bytes:
        return layout_bytes(self.kind, layout, self.values(), self.bits)

    def raw_size(self, layout: int) -> int:
        return stream_raw_size(self.kind, layout, self.count, self.bits, self.dtype)


@dataclass
class Contents:
    """Everything a QGv3 file holds, gathered and checked, before any layout or codec is chosen."""

    base: dict[str, Any]  # header fields fixed by the content: config, policy, meta, tensors (entries point at stream indices)
    streams: list[Stream]  # in canonical order (stream_key)


def _storage_of(rec: TensorRecord) -> tuple[str, np.ndarray]:
    """(storage dtype name, values) of a passthrough record, checked against its spec."""
    assert rec.data is not None
    arr = np.ascontiguousarray(rec.data).reshape(-1)
    want = K.PASS_STORAGE.get(rec.spec.dtype, rec.orig_dtype)
    np_want = STORAGE_DTYPES[want]
    if want == "bool":
        if arr.dtype != np.bool_:
            raise UsageError(f"{rec.name}: exact bool passthrough needs bool data, got {arr.dtype}", param="records")
        return want, arr.view(np.uint8)
    if arr.dtype.kind != np_want.kind or arr.dtype.itemsize != np_want.itemsize:
        raise UsageError(f"{rec.name}: {rec.spec.label()} passthrough of a {rec.orig_dtype} tensor needs {want} data, got {arr.dtype}",
                         param="records")
    return want, arr.astype(np_want, copy=False)


def _check_record(rec: TensorRecord) -> None:
    def bad(msg: str) -> UsageError:
        return UsageError(msg, param="records")

    if not isinstance(rec.name, str) or not rec.name:
        raise bad(f"tensor name must be a non-empty str, got {rec.name!r}")
    if rec.orig_dtype not in TORCH_DTYPES:
        raise bad(f"{rec.name}: unsupported dtype {rec.orig_dtype!r}")
    if any((not isinstance(d, (int, np.integer))) or d < 0 for d in rec.shape):
        raise bad(f"{rec.name}: bad shape {rec.shape!r}")
    if rec.spec.kind == "int":
        if rec.q is None or rec.scales is None:
            raise bad(f"{rec.name}: int record without levels/scales")
        if rec.orig_dtype not in K.FLOAT_DTYPES:
            raise bad(f"{rec.name}: integer levels for a {rec.orig_dtype} tensor (use 'exact')")
        if rec.q.size != rec.numel:
            raise bad(f"{rec.name}: {rec.q.size} levels for {rec.numel} elements")
        want = rec.n_scales
        if rec.scales.size != want:
            raise bad(f"{rec.name}: {rec.scales.size} scales, expected {want}")
        if rec.spec.lqer:
            r = rec.spec.lqer
            if not rec.per_row or rec.lqer_q is None or rec.lqer_scales is None:
                raise bad(f"{rec.name}: {rec.spec.label()} needs a 2-D tensor with LQER factor levels and scales")
            rows, cols = rec.q.shape
            if r > min(rows, cols):
                raise bad(f"{rec.name}: LQER rank {r} exceeds min(rows, cols) = {min(rows, cols)}")
            if rec.lqer_bits not in K.LEVEL_BITS or isinstance(rec.lqer_bits, bool):
                raise bad(f"{rec.name}: LQER factor width must be 2..8 bits, got {rec.lqer_bits!r}")
            if rec.lqer_q.size != r * (rows + cols) or rec.lqer_scales.size != 2 * r:
                raise bad(f"{rec.name}: LQER rank {r} needs {r * (rows + cols)} factor levels and {2 * r} scales, "
                          f"got {rec.lqer_q.size} and {rec.lqer_scales.size}")
        elif rec.lqer_q is not None or rec.lqer_scales is not None:
            raise bad(f"{rec.name}: LQER factors given but the spec {rec.spec.label()} has no +lqer<r>")
        if rec.sub_quantized:
            rows, cols = rec.q.shape
            sub, top = rec.subscales, (1 << rec.spec.subscale) - 1
            if sub is None or sub.size != rows * -(-cols // rec.spec.group):
                raise bad(f"{rec.name}: {rec.spec.label()} needs {rows * -(-cols // rec.spec.group)} sub-scales")
            if sub.size and (int(np.min(sub)) < 1 or int(np.max(sub)) > top):
                raise bad(f"{rec.name}: sub-scales outside 1..{top}")
        elif rec.subscales is not None:
            raise bad(f"{rec.name}: sub-scales given for {rec.spec.label()}, which has none")
        if rec.spec.outliers:
            n, idx, ov = K.outlier_count(rec.numel, rec.spec.outliers), rec.outlier_idx, rec.outlier_vals
            if idx is None or ov is None or idx.size != n or ov.size != n:
                raise bad(f"{rec.name}: {rec.spec.label()} needs {n} outlier indices and float16 values")
            i = np.asarray(idx).reshape(-1).astype(np.int64)
            if n and (int(i[0]) < 0 or int(i[-1]) >= rec.numel or (n > 1 and int(np.diff(i).min()) < 1)):
                raise bad(f"{rec.name}: outlier indices must be strictly increasing flat indices in [0, {rec.numel})")
            if np.asarray(ov).dtype != np.float16:
                raise bad(f"{rec.name}: outlier values must be float16, got {np.asarray(ov).dtype}")
        elif rec.outlier_idx is not None or rec.outlier_vals is not None:
            raise bad(f"{rec.name}: outliers given for {rec.spec.label()}, which has no +out<k>")
    elif rec.data is None or rec.data.size != rec.numel:
        raise bad(f"{rec.name}: passthrough record data does not match its shape {rec.shape}")


def _jsonable(obj: Any, what: str) -> Any:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise UsageError(f"{what} must be a dict or None, got {type(obj).__name__}", param=what)
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise UsageError(f"{what} is not plain JSON data ({e})", param=what) from None


def collect(records: Iterable[TensorRecord], *, config: dict | None = None, policy: dict | None = None,
            meta: dict | None = None) -> Contents:
    """Check the records and gather them into streams + header tensor entries (UsageError on bad input)."""
    streams: dict[tuple, Stream] = {}

    def stream(kind: StreamKind, bits: int | None = None, dtype: str | None = None) -> Stream:
        k = (kind, bits, dtype)
        if k not in streams:
            streams[k] = Stream(kind, bits, dtype)
        return streams[k]

    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for rec in records:
        _check_record(rec)
        if rec.name in seen:
            raise UsageError(f"duplicate tensor name {rec.name!r}", param="records")
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
                raise UsageError(f"{rec.name}: int{rec.spec.bits} levels outside [-{qmax}, {qmax}]", param="records")
            e["group"], e["offset"] = id(lv), lv.add(rec.name, q)
            sdt = K.SCALES_PER_ROW if rec.per_row else K.SCALES_PER_TENSOR
            sc = np.asarray(rec.scales).reshape(-1)
            s_cast = sc.astype(STORAGE_DTYPES[sdt])
            if not np.array_equal(s_cast.astype(np.float64), sc.astype(np.float64), equal_nan=True):
                raise UsageError(f"{rec.name}: scales are not exactly representable as {sdt}", param="records")
            st = stream(StreamKind.SCALES, dtype=sdt)
            e["scales"], e["scale_offset"] = id(st), st.add(rec.name, s_cast)
            if rec.per_row:
                assert rec.q is not None
                e["rows"] = int(rec.q.shape[0])
            if rec.grouped:  # group-wise scales: rows x ceil(cols / scale_group) of them, row-major
                e["scale_group"] = int(rec.spec.group)
            if rec.spec.lqer:  # factor levels in their width's LEVELS stream, factor scales after the tensor's own
                assert rec.lqer_q is not None and rec.lqer_scales is not None
                fq = np.ascontiguousarray(rec.lqer_q).astype(np.int8, copy=False).reshape(-1)
                fm = K.qmax(rec.lqer_bits)
                if fq.size and (int(fq.min()) < -fm or int(fq.max()) > fm):
                    raise UsageError(f"{rec.name}: int{rec.lqer_bits} LQER levels outside [-{fm}, {fm}]", param="records")
                fs = np.asarray(rec.lqer_scales).reshape(-1)
                fs16 = fs.astype(STORAGE_DTYPES[K.SCALES_PER_ROW])
                if not np.array_equal(fs16.astype(np.float64), fs.astype(np.float64), equal_nan=True):
                    raise UsageError(f"{rec.name}: LQER scales are not exactly representable as float16", param="records")
                e["lqer"] = {"rank": int(rec.spec.lqer), "bits": int(rec.lqer_bits),
                             "offset": stream(StreamKind.LEVELS, bits=rec.lqer_bits).add(rec.name, fq),
                             "scale_offset": st.add(rec.name, fs16)}
            if rec.sub_quantized:  # k-bit sub-scales, rows x ceil(cols / scale_group), row-major; the fp16 scales are per row
                assert rec.subscales is not None
                sst = stream(StreamKind.SUBSCALES, bits=rec.spec.subscale)
                e["subscales"] = id(sst)
                e["subscale_offset"] = sst.add(rec.name, sub_to_levels(rec.subscales, rec.spec.subscale))
            if rec.spec.outliers:  # (index delta, fp16 value) pairs in the file's one OUTLIERS stream
                assert rec.outlier_idx is not None and rec.outlier_vals is not None
                ent = outliers_encode(rec.outlier_idx, rec.outlier_vals)
                e["outliers"] = {"count": int(ent.size), "offset": stream(StreamKind.OUTLIERS).add(rec.name, ent)}
        else:
            sdt, vals = _storage_of(rec)
            ps = stream(StreamKind.PASSTHROUGH, dtype=sdt)
            e["group"], e["offset"] = id(ps), ps.add(rec.name, vals)
        entries.append(e)

    order = sorted(streams.values(), key=lambda s: s.key)
    index = {id(s): i for i, s in enumerate(order)}
    for e in entries:  # python ids -> stream indices
        e["group"] = index[e["group"]]
        for k in ("scales", "subscales"):
            if k in e:
                e[k] = index[e[k]]
    base = {"config": _jsonable(config, "config"), "policy": _jsonable(policy, "policy"), "meta": _jsonable(meta, "meta"),
            "tensors": entries}
    return Contents(base, order)


__all__ = ["Contents", "OUTLIER_DTYPE", "STORAGE_DTYPES", "Stream", "collect", "layout_bytes", "levels_to_sub", "outliers_decode",
           "outliers_encode", "stream_key", "stream_raw_size", "sub_to_levels", "tensor_digest", "unlayout"]
