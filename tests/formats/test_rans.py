"""The rans codec: pinned bytes, an independent scalar decoder of docs/qgv3.md's rans section, and hostile payloads."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golfpack.errors import FormatError
from golfpack.formats import rans
from golfpack.formats.codecs import compress, decompress
from golfpack.formats.qgv3_constants import RANS_LOW, RANS_MAX_STEPS


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v >> 7 else 0))
        v >>= 7
        if not v:
            return bytes(out)


def reference_decode(data: bytes, n: int) -> bytes:
    """The spec, one symbol at a time in plain Python (no numpy, nothing shared with formats/rans.py)."""
    pos = 0

    def v() -> int:
        nonlocal pos
        x = shift = 0
        while True:
            b = data[pos]
            pos += 1
            x |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return x

    assert v() == n  # the byte count
    size, tables = v(), []
    for _ in range(v()):
        lo, hi = data[pos], data[pos + 1]
        pos += 2
        f = [v() for _ in range(hi - lo + 1)]
        assert sum(f) == 1 << 16
        tables.append((lo, f))
    ids = [0] * -(-n // size)
    if len(tables) > 1:
        m = v()
        ids = list(reference_decode(data[pos : pos + m], len(ids)))
        pos += m
    lanes = v()
    x = [int.from_bytes(data[pos + 4 * i : pos + 4 * i + 4], "little") for i in range(lanes)]
    pos += 4 * lanes
    out = bytearray()
    for i in range(n):
        lane = i % lanes
        lo, f = tables[ids[i // size]]
        slot = x[lane] & 0xFFFF
        s = next(k for k in range(len(f)) if sum(f[:k]) <= slot < sum(f[: k + 1]))
        cum, fs = sum(f[:s]), f[s]
        out.append(lo + s)
        x[lane] = fs * (x[lane] >> 16) + slot - cum
        if x[lane] < 1 << 16:
            x[lane] = (x[lane] << 16) | int.from_bytes(data[pos : pos + 2], "little")
            pos += 2
    assert pos == len(data) and all(s == RANS_LOW for s in x)
    return bytes(out)


def test_golden_bytes_of_a_constant_stream() -> None:
    # 5 bytes, chunk size 5 (the stream), 1 table {7: 65536}, 1 lane, state 2^16, no words: a constant costs nothing
    golden = bytes.fromhex("05 05 01 07 07 808004 01 00000100".replace(" ", ""))
    assert rans.encode(b"\x07" * 5) == golden
    assert rans.decode(golden, 5) == b"\x07" * 5 == reference_decode(golden, 5)


def test_golden_bytes_of_a_two_symbol_stream() -> None:
    data = bytes([3, 4, 4, 3, 3, 3, 4, 3])
    z = rans.encode(data)
    # 8 bytes, chunk size 8; 1 table, lo 3 hi 4, {3: 40960, 4: 24576} (5:3, varints 80c002 80c001); 1 lane; the state
    # 0x00ae2000: 7.6 bits of information grew it from 2^16 to 2^23.4, so no word was written
    assert z.hex() == "08" "08" "01" "0304" "80c002" "80c001" "01" "0020ae00"
    assert rans.decode(z, len(data)) == data == reference_decode(z, len(data))


def _mixed(n: int, seed: int) -> bytes:
    """Level-like bytes whose spread changes every 20,000 values (what a stream of several tensors looks like)."""
    rng = np.random.default_rng(seed)
    parts = [np.clip(np.round(rng.laplace(0, w, 20_000)), -31, 31) + 31 for w in (0.5, 3.0, 8.0, 1.5, 12.0)]
    return np.concatenate(parts)[:n].astype(np.uint8).tobytes()


def test_many_lanes_and_tables_match_the_reference_decoder() -> None:
    data = _mixed(100_000, 0)
    z = rans.encode(data)
    assert rans.decode(z, len(data)) == data == reference_decode(z, len(data))
    r = rans._Reader(z)
    n, size, tables = r.varint("n", 1 << 20), r.varint("size", 1 << 20), r.varint("tables", 256)
    assert n == len(data)
    assert size in rans._CHUNKS and tables >= 2  # the spreads got tables of their own, with a chunk-id payload
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    one = rans.normalize(counts)
    one_table_bytes = -(counts[one > 0] * np.log2(one[one > 0] / 65536.0)).sum() / 8
    assert len(z) < 0.95 * one_table_bytes  # clustering beats a single order-0 table by more than its side info
    assert abs(rans.estimate_bytes(data) - len(z)) < 0.01 * len(z)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 255))
def test_round_trip_any_bytes(data: bytes, fill: int) -> None:
    data = data + bytes([fill]) * (len(data) % 7) * 50
    z = compress("rans", data)
    assert decompress("rans", z, len(data)) == data


@pytest.mark.parametrize("counts", [[5], [1, 0, 0, 1_000_000], list(range(256)), [3, 1, 0, 2], [65536 * 3, 1, 1]])
def test_normalize_keeps_every_present_symbol_and_sums_exactly(counts: list[int]) -> None:
    f = rans.normalize(np.array(counts))
    assert int(f.sum()) == 65536 and ((f > 0) == (np.array(counts) > 0)).all()


CONST7 = b"\x01\x07\x07\x80\x80\x04"  # 1 table: {7: 65536}
STATE = RANS_LOW.to_bytes(4, "little")


def _payload(n: int = 5, size: bytes = b"\x05", tables: bytes = CONST7, mid: bytes = b"", lanes: int = 1, rest: bytes = STATE) -> bytes:
    return _varint(n) + size + tables + mid + _varint(lanes) + rest


# two tables ({7}, {9}) and a chunk-id payload of 2 chunks (size 3 of 5 bytes): ids [0, 1] with table {0: 1/2, 1: 1/2}
TWO = b"\x02\x07\x07\x80\x80\x04\x09\x09\x80\x80\x04"


def _ids(ids_payload: bytes) -> bytes:
    return _varint(len(ids_payload)) + ids_payload


GOOD_IDS = rans._single(np.array([0, 1], np.uint8))


def test_two_tables_with_a_chunk_id_payload_decode() -> None:
    z = _payload(size=b"\x03", tables=TWO, mid=_ids(GOOD_IDS))
    assert rans.decode(z, 5) == b"\x07\x07\x07\x09\x09" == reference_decode(z, 5)


@pytest.mark.parametrize(("payload", "size", "message"), [
    (b"", 5, "ends inside its byte count"),
    (_payload(n=6), 5, "declares 6 bytes, expected 5"),
    (b"\x05", 5, "ends inside its chunk size"),
    (_payload(size=b"\x00"), 5, "chunk size is 0"),
    (_payload(size=b"\x06"), 5, "chunk size is 6, at most 5"),
    (_payload(tables=b"\x00"), 5, "no frequency table"),
    (_payload(tables=b"\x01\x07\x06"), 5, "lo 7 > hi 6"),
    (_payload(tables=b"\x01\x07\x07\x80\x80\x02"), 5, "sum to 32768"),
    (_payload(tables=b"\x01\x06\x07\x00\x80\x80\x04"), 5, "ends are 0"),
    (_payload(tables=b"\x81\x02"), 5, "table count is 257, at most 256"),
    (_payload(lanes=0), 5, "below 1"),
    (_payload(lanes=6), 5, "lane count is 6, at most 5"),
    (_payload(rest=b"\x00\x00\x01"), 5, "lane states or word stream"),
    (_payload(rest=b"\x00\x00\x00\x00"), 5, "below its lower bound"),
    (_payload(rest=STATE + b"\x12\x34"), 5, "does not end cleanly"),
    (_payload(rest=STATE + b"\x12"), 5, "lane states or word stream"),
    (b"\x05\xff\xff\xff\xff\xff\x01", 5, "longer than 5 bytes"),
    (b"\x00", 0, "must be empty"),
    (_payload(size=b"\x03", tables=TWO, mid=_ids(rans._single(np.array([0, 2], np.uint8)))), 5, "chunk table 2, but it has 2"),
    (_payload(size=b"\x03", tables=TWO, mid=_ids(rans._single(np.array([0, 1, 1], np.uint8)))), 5, "chunk-id payload"),
    (_payload(size=b"\x03", tables=TWO, mid=b"\x7f" + GOOD_IDS), 5, "chunk-id payload size is 127"),
    # a chunk-id payload may not have chunk ids of its own (one level of nesting)
    (_payload(size=b"\x03", tables=TWO, mid=_ids(b"\x02\x01" + TWO)), 5, "chunk-id payload's table count is 2, at most 1"),
])
def test_hostile_payloads_refused_with_the_field_named(payload: bytes, size: int, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        rans.decode(payload, size)
    with pytest.raises(FormatError, match="rans"):
        decompress("rans", payload, size)


def test_a_payload_short_of_words_or_with_a_flipped_bit_is_refused() -> None:
    data = _mixed(5000, 1)
    z = rans.encode(data)
    with pytest.raises(FormatError, match="runs out of words"):
        rans.decode(z[:-2], len(data))
    flipped = bytearray(z)
    flipped[-100] ^= 0x10  # a word in the middle: the lanes go astray and do not come back to 2^16
    with pytest.raises(FormatError, match="end cleanly|runs out of words"):
        rans.decode(bytes(flipped), len(data))


def test_hostile_lane_count_cannot_ask_for_millions_of_steps() -> None:
    n = 4 * RANS_MAX_STEPS
    bad = _payload(n=n, size=_varint(n), lanes=1)
    t = time.perf_counter()
    with pytest.raises(FormatError, match="below 4, the fewest"):
        rans.decode(bad, n)
    assert time.perf_counter() - t < 0.5
    ok = _payload(n=n, size=_varint(n), lanes=4, rest=STATE * 4)
    assert rans.decode(ok, n) == b"\x07" * n  # the fewest lanes allowed: RANS_MAX_STEPS steps, and it decodes


@pytest.mark.parametrize("n", [1, 700, 5000, 70_000])
def test_scalar_and_numpy_paths_give_the_same_bytes(n: int) -> None:
    sym = np.frombuffer(_mixed(n, 2), np.uint8)
    size, tables, assign = rans._model(sym)
    freqs = [rans.normalize(t) for t in tables]
    tid = np.repeat(assign, size)[:n] if len(freqs) > 1 else None
    a, b = rans._code(sym, freqs, tid, scalar=True), rans._code(sym, freqs, tid, scalar=False)
    assert a == b
    z = rans.encode(sym.tobytes())
    assert rans.decode(z, n, scalar=True) == rans.decode(z, n, scalar=False) == sym.tobytes()
    if n > 1000:
        for path in (True, False):
            with pytest.raises(FormatError, match="runs out of words"):
                rans.decode(z[:-2], n, scalar=path)
