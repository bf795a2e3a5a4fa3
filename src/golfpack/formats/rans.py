"""The `rans` codec: interleaved static rANS over bytes with a few order-0 tables; docs/qgv3.md 4a is the spec.

Quantized level streams are nearly order-0 (a row's levels are close to i.i.d.), so an entropy coder with a
frequency table per cluster of similar chunks gets what lzma and brotli only approach. On trained
int6 levels it is 5-8% under lzma and 1-17% under brotli quality 11, and it codes 36 MB in seconds where
brotli q11 takes minutes. numpy does the arithmetic: each step advances every lane at once, so a stream
of any size is about 2^14 numpy steps to encode and at most 2^16 to decode.

The encoder (deterministic: the same bytes give the same payload) clusters chunks of the input into
tables (`_model`), then codes in reverse from the last step to the first, collecting each step's
renormalization words so that the decoder reads them forward.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from golfpack.errors import FormatError
from golfpack.formats.qgv3_constants import RANS_LOW, RANS_MAX_LANES, RANS_MAX_STEPS, RANS_MAX_TABLES, RANS_PRECISION

# Encoder choices (not part of the format: any decoder reads any setting).
RANS_STEP_TARGET = 1 << 14  # symbols per lane: fewer lanes cost fewer state bytes, more make numpy's steps fewer
_SCALAR_LANES = 48  # below this many lanes (streams under 768 KiB; measured crossover ~34 lanes) both directions run one symbol at a time in Python
_CHUNKS = (512, 2048, 16384)  # chunk sizes tried: a row of a d512 level stream, 4 rows, a few dozen
_TABLE_COUNTS = (1, 4, 16)  # table counts tried per chunk size
_PICK_SPANS = 256  # the chunk size and table count are picked on at most this many 16 KiB spans (4 MiB)
_ROUNDS = 4  # assignment rounds of the clustering (it has settled by then on level streams)

_M = 1 << RANS_PRECISION
_MASK = np.uint64(_M - 1)
_P = np.uint64(RANS_PRECISION)
_W = np.uint64(16)
_LOW = np.uint64(RANS_LOW)


def min_lanes(raw_size: int) -> int:
    """Fewest lanes a stream of `raw_size` bytes may use (bounds the decoder's steps)."""
    return max(1, -(-raw_size // RANS_MAX_STEPS))


def lanes_for(raw_size: int) -> int:
    """The lanes the encoder uses: about RANS_STEP_TARGET steps, at most RANS_MAX_LANES (4 bytes each)."""
    return max(min_lanes(raw_size), min(RANS_MAX_LANES, -(-raw_size // RANS_STEP_TARGET)))


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def normalize(counts: np.ndarray) -> np.ndarray:
    """Frequencies summing to 2^RANS_PRECISION, >= 1 for every symbol with a count, 0 for the others.

    Proportional rounding down, then the remainder to (or from) the most frequent symbols in order
    (ties by symbol), never taking a frequency below 1."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    present = counts > 0
    f = np.where(present, np.maximum(1, counts * _M // max(total, 1)), 0)
    diff = _M - int(f.sum())
    order = np.lexsort((np.arange(counts.size), -counts))  # by count descending, then symbol
    i = 0
    while diff != 0:
        s = order[i % counts.size]
        if present[s]:
            step = diff if diff > 0 else -min(-diff, int(f[s]) - 1)
            f[s] += step
            diff -= step
        i += 1
    return f


def _neglog(tables: np.ndarray) -> np.ndarray:
    """-log2 of each table's normalized probabilities (a large finite cost where a symbol is absent)."""
    f = np.stack([normalize(t) for t in tables]).astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.where(f > 0, RANS_PRECISION - np.log2(np.maximum(f, 1)), 1e9)


def _table_bytes(t: np.ndarray) -> int:
    nz = np.flatnonzero(t)
    return 2 + 2 * (int(nz[-1]) - int(nz[0]) + 1)  # lo, hi and ~2 varint bytes per frequency


def _cluster(hist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(tables' counts, each chunk's table): k tables seeded by the chunks' entropy quantiles, then a few
    rounds of "each chunk to the table that codes it in the fewest bits, each table from its chunks"."""
    tot = hist.sum(1, keepdims=True)
    p = hist / np.maximum(tot, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -(np.where(p > 0, p * np.log2(p), 0.0)).sum(1)
    rank = np.argsort(ent, kind="stable")
    assign = np.empty(len(hist), dtype=np.int64)
    assign[rank] = np.arange(len(hist)) * k // len(hist)
    for _ in range(_ROUNDS):
        tables = np.stack([hist[assign == j].sum(0) for j in range(k) if (assign == j).any()])
        new = np.argmin(hist @ _neglog(tables).T, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
    tables = np.stack([hist[assign == j].sum(0) for j in range(len(tables))])
    used = np.flatnonzero(tables.sum(1) > 0)
    remap = np.full(len(tables), -1)
    remap[used] = np.arange(used.size)
    return tables[used], remap[assign]


def _hist(sym: np.ndarray, size: int) -> np.ndarray:
    """Byte counts of each `size`-byte chunk, (chunks, 256)."""
    return np.bincount((np.arange(sym.size) // size) * 256 + sym, minlength=256 * -(-sym.size // size)).reshape(-1, 256)


def _cost(hist: np.ndarray, k: int) -> tuple[float, np.ndarray, np.ndarray]:
    """(estimated bytes of the data, the tables and the chunk ids; tables' counts; chunk ids) with k tables."""
    tables, assign = _cluster(hist, k)
    bits = float(np.take_along_axis(hist @ _neglog(tables).T, assign[:, None], 1).sum())
    side = sum(_table_bytes(t) for t in tables)
    if len(tables) > 1:
        ids = np.bincount(assign).astype(np.float64)
        side += -(ids * np.log2(ids / ids.sum())).sum() / 8 + 2 * len(tables) + 8
    return bits / 8 + side, tables, assign


def _model(sym: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(chunk size, tables' counts, each chunk's table id): the chunk size and table count of the fewest estimated
    bytes, chosen on up to _PICK_SPAN evenly spaced spans of the stream (the ids are order-0 coded, so spans
    stand for the whole), then clustered on the whole stream."""
    n, span = sym.size, max(_CHUNKS)
    if n <= 2 * _CHUNKS[0]:  # too small for chunk tables to pay for themselves
        return n, np.bincount(sym, minlength=256)[None], np.zeros(1, np.int64)
    spans = -(-n // span)
    pick = sym
    if spans > _PICK_SPANS:
        starts = np.linspace(0, spans - 2, _PICK_SPANS).astype(np.int64) * span  # whole spans (the last may be short)
        pick = np.concatenate([sym[s : s + span] for s in starts])
    best: tuple[float, int, int] | None = None
    for size in _CHUNKS:
        hist = _hist(pick, size)
        for k in _TABLE_COUNTS:
            if k > 1 and k >= len(hist):
                break
            est = _cost(hist, k)[0] * n / pick.size
            if best is None or est < best[0]:
                best = (est, size, k)
    assert best is not None
    _, size, k = best
    _, tables, assign = _cost(_hist(sym, size), k)
    return size, tables, assign


def _tables_bytes(freqs: list[np.ndarray]) -> bytes:
    out = bytearray(_varint(len(freqs)))
    for f in freqs:
        nz = np.flatnonzero(f)
        lo, hi = int(nz[0]), int(nz[-1])
        out += bytes([lo, hi]) + b"".join(_varint(int(v)) for v in f[lo : hi + 1])
    return bytes(out)


def _code(sym: np.ndarray, freqs: list[np.ndarray], tid: np.ndarray | None, scalar: bool | None = None) -> bytes:
    """Lane states + words of `sym`, each position coded with table `tid[i]` (table 0 when None).
    scalar: one symbol at a time in Python (None: when there are fewer than _SCALAR_LANES lanes, where numpy's
    per-step overhead costs more than it saves); both give the same bytes."""
    n = sym.size
    lanes = lanes_for(n)
    F = np.stack(freqs).astype(np.uint32)  # frequencies and their cumulative starts are <= 2^RANS_PRECISION
    C = np.concatenate([np.zeros((len(freqs), 1), np.uint32), np.cumsum(F, axis=1, dtype=np.uint32)[:, :-1]], axis=1)
    t_all = np.zeros(n, np.int64) if tid is None else tid
    f_all, c_all = F[t_all, sym], C[t_all, sym]  # per position: the symbol's frequency and cumulative start
    if scalar or (scalar is None and lanes < _SCALAR_LANES):
        xl = [RANS_LOW] * lanes
        out: list[int] = []  # words by descending position; the decoder reads them by ascending position
        for i, f, c in zip(range(n - 1, -1, -1), f_all[::-1].tolist(), c_all[::-1].tolist()):
            x = xl[i % lanes]
            if x >= f << 16:
                out.append(x & 0xFFFF)
                x >>= 16
            xl[i % lanes] = ((x // f) << 16) + x % f + c
        return _varint(lanes) + np.array(xl, "<u4").tobytes() + np.array(out[::-1], "<u2").tobytes()
    # uint32 throughout, half the numpy work of uint64 (2.3x faster on a 9 MB stream, same bytes): a state is < 2^32,
    # `x >= f << 16` is tested as `x >> 16 >= f` (f may be 2^16), and after renormalization x < f << 16, so
    # (x // f) << RANS_PRECISION + x % f + c < 2^32 (RANS_PRECISION is 16)
    steps = -(-n // lanes)
    x = np.full(lanes, RANS_LOW, dtype=np.uint32)
    words: list[np.ndarray] = [np.empty(0, np.uint16)] * steps
    w, p = np.uint32(16), np.uint32(RANS_PRECISION)
    for t in range(steps - 1, -1, -1):
        lo_i, hi_i = t * lanes, min(n, (t + 1) * lanes)
        m = hi_i - lo_i
        f, c = f_all[lo_i:hi_i], c_all[lo_i:hi_i]
        xs = x[:m]
        out = (xs >> w) >= f
        words[t] = xs[out].astype(np.uint16)  # the low 16 bits
        q, r = np.divmod(np.where(out, xs >> w, xs), f)
        q <<= p
        q += r
        q += c
        x[:m] = q
    return _varint(lanes) + x.astype("<u4").tobytes() + np.concatenate(words).astype("<u2").tobytes()


def _single(sym: np.ndarray) -> bytes:
    """A one-table payload of `sym` (the chunk ids' own)."""
    f = normalize(np.bincount(sym, minlength=256))
    return _varint(sym.size) + _varint(sym.size) + _tables_bytes([f]) + _code(sym, [f], None)


def encode(data: bytes) -> bytes:
    """The rANS payload of `data` (docs/qgv3.md 4a)."""
    sym = np.frombuffer(data, dtype=np.uint8)
    n = sym.size
    if n == 0:
        return b""
    size, tables, assign = _model(sym)
    size = min(size, n)  # canonical: a chunk is never longer than the stream (the reader checks)
    freqs = [normalize(t) for t in tables]
    head = _varint(n) + _varint(size) + _tables_bytes(freqs)
    if len(freqs) == 1:
        return head + _code(sym, freqs, None)
    sub = _single(assign.astype(np.uint8))
    return head + _varint(len(sub)) + sub + _code(sym, freqs, np.repeat(assign, size)[:n])


class _Reader:
    def __init__(self, data: bytes, what: str = "rans stream") -> None:
        self.data, self.pos, self.what = data, 0, what

    def varint(self, what: str, hi: int) -> int:
        v = shift = 0
        for _ in range(5):
            if self.pos >= len(self.data):
                raise FormatError(f"{self.what} ends inside its {what}")
            b = self.data[self.pos]
            self.pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if v > hi:
                    raise FormatError(f"{self.what}'s {what} is {v}, at most {hi} allowed")
                return v
        raise FormatError(f"{self.what}'s {what} is a varint longer than 5 bytes")

    def byte(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise FormatError(f"{self.what} ends inside its {what}")
        self.pos += 1
        return self.data[self.pos - 1]


def _decode_scalar(what: str, n: int, size: int, ids: np.ndarray, key: np.ndarray, sym_of: np.ndarray, f_of: np.ndarray,
                   c_of: np.ndarray, x: np.ndarray, words: np.ndarray) -> bytes:
    """`decode`'s steps one symbol at a time (the same arithmetic and checks)."""
    keys, syms, fs, cs = key.tolist(), sym_of.tolist(), f_of.tolist(), c_of.tolist()
    tab = ids.tolist()
    xl, wl = x.tolist(), words.tolist()
    lanes, w, nw = len(xl), 0, len(wl)
    out = bytearray(n)
    for i in range(n):
        lane = i % lanes
        xs = xl[lane]
        slot = xs & 0xFFFF
        k = bisect.bisect_right(keys, tab[i // size] * _M + slot) - 1
        out[i] = syms[k]
        xs = fs[k] * (xs >> 16) + slot - cs[k]
        if xs < RANS_LOW:
            if w >= nw:
                raise FormatError(f"{what} runs out of words before its last symbol")
            xs = (xs << 16) | wl[w]
            w += 1
        xl[lane] = xs
    if w != nw or any(v != RANS_LOW for v in xl):
        raise FormatError(f"{what} does not end cleanly (words left over or lane states not at their start)")
    return bytes(out)


def decode(data: bytes, raw_size: int, *, _ids: bool = False, scalar: bool | None = None) -> bytes:
    """Exactly `raw_size` bytes from a rANS payload, or FormatError (every field checked before use).
    _ids: this is a chunk-id payload, which must have one table (so payloads nest one level at most).
    scalar: as in `_code` (None: by the lane count); both give the same bytes and the same errors."""
    what = "rans chunk-id payload" if _ids else "rans stream"
    if raw_size == 0:
        if data:
            raise FormatError(f"{what} of 0 bytes must be empty, it holds {len(data)}")
        return b""
    r = _Reader(data, what)
    declared = r.varint("byte count", 1 << 35)
    if declared != raw_size:  # stored: a zero-cost symbol (a table of one) would otherwise decode to any length
        raise FormatError(f"{what} declares {declared} bytes, expected {raw_size}")
    size = r.varint("chunk size", raw_size)
    if size == 0:
        raise FormatError(f"{what}'s chunk size is 0")
    ntab = r.varint("table count", 1 if _ids else RANS_MAX_TABLES)
    if ntab == 0:
        raise FormatError(f"{what} has no frequency table")
    keys, syms, fs, cs = [], [], [], []
    for j in range(ntab):
        lo, hi = r.byte(f"table {j}"), r.byte(f"table {j}")
        if lo > hi:
            raise FormatError(f"{what}'s table {j} has lo {lo} > hi {hi}")
        f = np.array([r.varint(f"table {j} frequency", _M) for _ in range(hi - lo + 1)], dtype=np.int64)
        if int(f.sum()) != _M or f[0] == 0 or f[-1] == 0:
            raise FormatError(f"{what}'s table {j} frequencies sum to {int(f.sum())}, not {_M}, or its ends are 0")
        nz = np.flatnonzero(f)
        cum = np.concatenate([[0], np.cumsum(f)[:-1]])
        keys.append(j * _M + cum[nz])
        syms.append(lo + nz)
        fs.append(f[nz])
        cs.append(cum[nz])
    key, sym_of = np.concatenate(keys), np.concatenate(syms)
    f_of, c_of = np.concatenate(fs).astype(np.uint64), np.concatenate(cs).astype(np.uint64)
    ids = np.zeros(1, np.int64)
    if ntab > 1:
        m = r.varint("chunk-id payload size", len(data) - r.pos)
        chunks = -(-raw_size // size)
        ids = np.frombuffer(decode(data[r.pos : r.pos + m], chunks, _ids=True), np.uint8).astype(np.int64)
        r.pos += m
        if int(ids.max()) >= ntab:
            raise FormatError(f"{what} gives a chunk table {int(ids.max())}, but it has {ntab} tables")
    top = min(raw_size, max(RANS_MAX_LANES, min_lanes(raw_size)))
    lanes = r.varint("lane count", top)
    if lanes < min_lanes(raw_size):
        raise FormatError(f"{what}'s lane count {lanes} is below {min_lanes(raw_size)}, the fewest {raw_size} bytes may use")
    if len(data) - r.pos < 4 * lanes or (len(data) - r.pos - 4 * lanes) % 2:
        raise FormatError(f"{what} ends inside its lane states or word stream ({len(data)} bytes)")
    x = np.frombuffer(data, "<u4", lanes, r.pos).astype(np.uint64)
    if (x < _LOW).any():
        raise FormatError(f"{what} has a lane state below its lower bound")
    words = np.frombuffer(data, "<u2", offset=r.pos + 4 * lanes).astype(np.uint64)
    if scalar or (scalar is None and lanes < _SCALAR_LANES):
        return _decode_scalar(what, raw_size, size if ntab > 1 else raw_size, ids, key, sym_of, f_of, c_of, x, words)
    out = np.empty(raw_size, dtype=np.uint8)
    base = np.arange(lanes, dtype=np.int64)
    w = 0
    for t in range(-(-raw_size // lanes)):
        lo_i = t * lanes
        m = min(lanes, raw_size - lo_i)
        xs = x[:m]
        slot = xs & _MASK
        tab = ids[(base[:m] + lo_i) // size] if ntab > 1 else 0
        k = np.searchsorted(key, tab * _M + slot.astype(np.int64), side="right") - 1
        out[lo_i : lo_i + m] = sym_of[k]
        xs = f_of[k] * (xs >> _P) + slot - c_of[k]
        need = np.flatnonzero(xs < _LOW)
        if w + need.size > words.size:
            raise FormatError(f"{what} runs out of words before its last symbol")
        xs[need] = (xs[need] << _W) | words[w : w + need.size]
        w += need.size
        x[:m] = xs
    if w != words.size or (x != _LOW).any():
        raise FormatError(f"{what} does not end cleanly (words left over or lane states not at their start)")
    return out.tobytes()


def estimate_bytes(data: bytes) -> int:
    """Bytes `encode(data)` would take, to within its tables' rounding, without coding (the chunk model only)."""
    sym = np.frombuffer(data, dtype=np.uint8)
    if sym.size == 0:
        return 0
    size, tables, _ = _model(sym)
    est = _cost(_hist(sym, size), len(tables))[0]
    return math.ceil(est) + 4 * lanes_for(sym.size) + 8


__all__ = ["decode", "encode", "estimate_bytes", "lanes_for", "min_lanes", "normalize"]
