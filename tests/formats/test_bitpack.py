"""Dense bit-packing and byte shuffling: exact round trips, canonical form, malformed input refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golfpack.errors import GolfpackError
from golfpack.formats.bitpack import pack_bits, packed_size, qmax_of, shuffle_bytes, unpack_bits, unshuffle_bytes


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 1000, 4099])
def test_round_trip_every_width(bits: int, n: int) -> None:
    q = qmax_of(bits)
    v = np.random.default_rng(bits * 1000 + n).integers(-q, q + 1, n).astype(np.int8)
    data = pack_bits(v, bits)
    assert len(data) == packed_size(n, bits) == (n * bits + 7) // 8
    out = unpack_bits(data, bits, n)
    assert out.dtype == np.int8 and np.array_equal(out, v)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), data=st.data())
def test_round_trip_property(bits: int, data) -> None:
    q = qmax_of(bits)
    vals = data.draw(st.lists(st.integers(-q, q), max_size=300))
    v = np.array(vals, dtype=np.int8)
    assert np.array_equal(unpack_bits(pack_bits(v, bits), bits, len(vals)), v)


def test_known_bit_order() -> None:
    # int6: u = level + 31 -> [0, 31, 62, 32]; value i in bits [6i, 6i+6) of a little-endian integer
    assert pack_bits(np.array([-31, 0, 31, 1], np.int8), 6) == bytes.fromhex("c0e783")
    # int4: two values per byte, low nibble first
    assert pack_bits(np.array([-7, 7, 0], np.int8), 4) == bytes([0x00 | (14 << 4), 7])
    # int2: levels -1, 0, 1 -> 0, 1, 2
    assert pack_bits(np.array([-1, 0, 1, 1, 0], np.int8), 2) == bytes([0b10_10_01_00, 0b01])
    assert packed_size(4, 6) == 3 and packed_size(8, 5) == 5 and packed_size(2, 3) == 1


def test_full_extremes_and_large() -> None:
    for bits in range(2, 9):
        q = qmax_of(bits)
        v = np.tile(np.array([-q, q, 0, -q, q], np.int8), 20011)
        assert np.array_equal(unpack_bits(pack_bits(v, bits), bits, v.size), v)


def test_pack_rejects_out_of_range_levels() -> None:
    with pytest.raises(ValueError, match=r"\[-31, 31\]"):
        pack_bits(np.array([32], np.int8), 6)
    with pytest.raises(ValueError):
        pack_bits(np.array([-128], np.int8), 8)
    with pytest.raises(ValueError, match="bits"):
        pack_bits(np.zeros(3, np.int8), 9)


def test_unpack_rejects_malformed() -> None:
    good = pack_bits(np.array([1, 2, 3], np.int8), 6)  # 18 bits -> 3 bytes, 6 padding bits
    with pytest.raises(GolfpackError, match="exactly 3"):
        unpack_bits(good[:2], 6, 3)
    with pytest.raises(GolfpackError, match="exactly"):
        unpack_bits(good + b"\0", 6, 3)
    with pytest.raises(GolfpackError, match="padding"):
        unpack_bits(good[:2] + bytes([good[2] | 0x80]), 6, 3)
    with pytest.raises(GolfpackError, match="outside"):
        unpack_bits(bytes([0x3F]), 6, 1)  # u = 63 = 2^6 - 1 is not a level (qmax = 31 -> max u 62)
    with pytest.raises(GolfpackError, match="outside"):
        unpack_bits(bytes([255]), 8, 1)


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
def test_shuffle_round_trip(itemsize: int) -> None:
    data = np.random.default_rng(itemsize).integers(0, 256, 40 * itemsize).astype(np.uint8).tobytes()
    sh = shuffle_bytes(data, itemsize)
    assert len(sh) == len(data) and unshuffle_bytes(sh, itemsize) == data
    if itemsize == 2:
        assert shuffle_bytes(b"\x01\x02\x03\x04", 2) == b"\x01\x03\x02\x04"
    with pytest.raises((ValueError, GolfpackError)):
        unshuffle_bytes(data + b"\0", itemsize) if itemsize > 1 else shuffle_bytes(b"\0", 3) and None or (_ for _ in ()).throw(ValueError())
