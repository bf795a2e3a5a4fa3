"""Dense bit-packing of signed integer levels, and byte shuffling of fixed-width values.

Levels are symmetric ints in [-qmax, qmax] with qmax = 2^(bits-1) - 1. `pack_bits` stores each level
offset to an unsigned value u = v + qmax (0 .. 2^bits - 2) in exactly `bits` bits, least significant
bit first: value i occupies bits [i*bits, (i+1)*bits) of the stream read as one little-endian integer.
So int6 packs 4 values into 3 bytes, int5 8 values into 5 bytes; the last byte is zero-padded.
The padding bits must be zero and u must not be 2^bits - 1: `unpack_bits` rejects anything else, so
every level array has exactly one packed form (no hidden data, no out-of-range level).

Work is done 8 values (= `bits` bytes) at a time through uint64 lanes, in bounded chunks so memory
stays a small multiple of the output.
"""

from __future__ import annotations

import numpy as np

from golfpack.errors import FormatError, UsageError
from golfpack.formats.qgv3_constants import qmax

_CHUNK_GROUPS = 1 << 18  # groups of 8 values per vectorised step (~16 MiB of uint64 temporaries)


def qmax_of(bits: int) -> int:
    """qgv3_constants.qmax (THE definition), with a UsageError naming `bits`."""
    try:
        return qmax(bits)
    except ValueError as e:
        raise UsageError(str(e), param="bits") from None


def packed_size(count: int, bits: int) -> int:
    """Bytes `pack_bits` produces for `count` values: ceil(count * bits / 8)."""
    return (count * bits + 7) // 8


def pack_bits(levels: np.ndarray, bits: int) -> bytes:
    """Pack int8 levels in [-qmax, qmax] densely, `bits` bits each (see module doc)."""
    qmax = qmax_of(bits)
    v = np.asarray(levels).reshape(-1)
    if v.size and (int(v.min()) < -qmax or int(v.max()) > qmax):
        raise UsageError(f"int{bits} levels must lie in [-{qmax}, {qmax}], got [{int(v.min())}, {int(v.max())}]")
    n = v.size
    u = (v.astype(np.int16) + qmax).astype(np.uint8)
    if bits == 8:
        return u.tobytes()
    pad = (-n) % 8
    if pad:
        u = np.concatenate([u, np.zeros(pad, np.uint8)])
    groups = u.reshape(-1, 8)
    out = np.empty((groups.shape[0], bits), np.uint8)
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    for s in range(0, groups.shape[0], _CHUNK_GROUPS):
        g = groups[s : s + _CHUNK_GROUPS].astype(np.uint64)
        acc = np.bitwise_or.reduce(g << shifts, axis=1)  # 8 fields of `bits` bits -> one <= 64-bit word
        out[s : s + _CHUNK_GROUPS] = acc.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :bits]
    return out.tobytes()[: packed_size(n, bits)]


def unpack_bits(data: bytes | bytearray | memoryview | np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: `count` int8 levels. Raises FormatError on a malformed stream."""
    qmax = qmax_of(bits)
    if not isinstance(count, int) or count < 0:
        raise UsageError(f"count must be a non-negative int, got {count!r}", param="count")
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    need = packed_size(count, bits)
    if buf.size != need:
        raise FormatError(f"int{bits} stream holds {buf.size} bytes, {count} values need exactly {need}")
    if bits == 8:
        u = buf
    else:
        ngroups = (count + 7) // 8
        full = np.zeros(ngroups * bits, np.uint8)
        full[:need] = buf
        padded = np.zeros((ngroups, 8), np.uint8)  # each group's `bits` bytes, zero-extended to a uint64
        padded[:, :bits] = full.reshape(ngroups, bits)
        u = np.empty(ngroups * 8, np.uint8)
        shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
        mask = np.uint64((1 << bits) - 1)
        for s in range(0, ngroups, _CHUNK_GROUPS):
            w = padded[s : s + _CHUNK_GROUPS].view("<u8").reshape(-1)
            u[s * 8 : (s + w.size) * 8] = ((w[:, None] >> shifts) & mask).astype(np.uint8).reshape(-1)
        if u[count:].any():
            raise FormatError(f"int{bits} stream has non-zero padding bits after its {count} values")
        u = u[:count]
    if u.size and int(u.max()) > 2 * qmax:
        raise FormatError(f"int{bits} stream holds a level outside [-{qmax}, {qmax}]")
    return (u.astype(np.int16) - qmax).astype(np.int8)


def shuffle_bytes(data: bytes, itemsize: int) -> bytes:
    """Byte planes: all first bytes of each element, then all second bytes, ... (helps codecs on floats)."""
    if itemsize == 1 or not data:
        return bytes(data)
    if len(data) % itemsize:
        raise UsageError(f"data of {len(data)} bytes is not a whole number of {itemsize}-byte elements", param="data")
    return np.frombuffer(data, np.uint8).reshape(-1, itemsize).T.tobytes()


def unshuffle_bytes(data: bytes, itemsize: int) -> bytes:
    """Inverse of `shuffle_bytes`."""
    if itemsize == 1 or not data:
        return bytes(data)
    if len(data) % itemsize:
        raise FormatError(f"shuffled stream of {len(data)} bytes is not a whole number of {itemsize}-byte elements")
    return np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.tobytes()


__all__ = ["pack_bits", "packed_size", "qmax_of", "shuffle_bytes", "unpack_bits", "unshuffle_bytes"]
