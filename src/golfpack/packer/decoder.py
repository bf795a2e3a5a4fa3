'''`golfpack export-decoder`: a minimal standalone QGv3 loader to ship with a submission.

The exported file needs only the standard library, numpy and torch (zstd/brotli streams also need
those packages, with a clear error if absent). Its bytes count against the 16,000,000-byte cap, so it
is short - but it is the same arithmetic as golfpack's reader (TensorRecord.dequantize): levels are
multiplied by their scale in fp32, then cast to the original dtype. Bounds checks are left to
golfpack's full reader (`golfpack verify`); this loader still checks every crc32 and stream size and,
with check=True, each tensor's sha256 digest. It cannot import golfpack, so it spells the format's
numbers out; tests/packer/test_decoder.py checks them against formats/qgv3_constants.py.
'''

from __future__ import annotations

import os

from golfpack._io import write_bytes_atomic

DECODER_SOURCE = r'''"""QGv3 loader (from golfpack export-decoder): sd = load("model.qg3") -> {name: torch.Tensor}."""
import hashlib, json, lzma, struct, zlib
import numpy as np
import torch

DT = {"float16": "<f2", "bfloat16": "<i2", "float32": "<f4", "float64": "<f8", "int64": "<i8",
      "int32": "<i4", "int16": "<i2", "int8": "i1", "uint8": "u1", "bool": "u1"}


def _mod(name):
    try:
        return __import__(name)
    except ImportError:
        raise ImportError(f"this artifact has {name} streams: pip install {name}") from None


def _unz(codec, b, n):  # codec ids: 0 raw, 1 raw deflate, 2 props byte + raw lzma1, 3 zstd, 4 brotli
    if codec == 0:
        out = b
    elif codec == 1:
        out = zlib.decompressobj(-15).decompress(b, n + 1)
    elif codec == 2:
        p = b[0]
        f = {"id": lzma.FILTER_LZMA1, "lc": p % 9, "lp": p // 9 % 5, "pb": p // 45,
             "dict_size": min(1 << 26, max(1 << 12, 1 << max(0, n - 1).bit_length()))}
        out = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[f]).decompress(b[1:], n + 1)
    elif codec == 3:
        out = _mod("zstandard").ZstdDecompressor().decompress(b, max_output_size=n) if n else b""
    elif codec == 4:
        out = _mod("brotli").Decompressor().process(b, output_buffer_limit=n + 1)
    else:
        raise ValueError(f"unknown codec id {codec}")
    if len(out) != n:
        raise ValueError("stream decodes to the wrong size")
    return out


def _levels(raw, bits, n, dense):  # stored value = level + qmax, `bits` bits LSB-first (dense) or a byte each
    if dense and bits < 8:
        g = -(-n // 8)  # 8 values per `bits` bytes
        a = np.zeros(g * bits, np.uint8)
        a[:(n * bits + 7) // 8] = np.frombuffer(raw, np.uint8, (n * bits + 7) // 8)
        w = np.zeros((g, 8), np.uint8)
        w[:, :bits] = a.reshape(g, bits)
        u = (w.view("<u8") >> np.arange(0, 8 * bits, bits, dtype=np.uint64)) & np.uint64((1 << bits) - 1)
        u = u.reshape(-1)[:n]
    else:
        u = np.frombuffer(raw, np.uint8, n)
    return (u.astype(np.int16) - ((1 << bits - 1) - 1)).astype(np.int8)


def load(path, check=True):
    b = open(path, "rb").read()
    magic, ver, hc, _, hs, hr, crc = struct.unpack_from("<8sHBBIII", b)
    if magic != b"QGv3\r\n\x1a\n" or ver != 3:
        raise ValueError(f"{path}: not a QGv3 version 3 file")
    pos = 24 + hs
    if zlib.crc32(b[24:pos]) != crc:
        raise ValueError("header checksum mismatch")
    h = json.loads(_unz(hc, b[24:pos], hr))
    blocks = []
    for k in h["blocks"]:
        s = b[pos:pos + k["stored"]]
        pos += k["stored"]
        if zlib.crc32(s) != k["crc"]:
            raise ValueError("block checksum mismatch")
        blocks.append(_unz(k["codec"], s, k["raw"]))
    arrays = []
    for s in h["streams"]:  # kind 0 levels, 1 scales, 2 passthrough; layout 0 plain, 1 shuffled, 2 dense, 3 byte
        raw, n = blocks[s["block"]][s["at"]:], s["count"]
        if s["kind"] == 0:
            arrays.append(_levels(raw, s["bits"], n, s["layout"] == 2))
            continue
        dt = np.dtype(DT[s["dtype"]])
        raw = raw[:n * dt.itemsize]
        if s["layout"] == 1:  # byte planes back to elements
            raw = np.frombuffer(raw, np.uint8).reshape(dt.itemsize, n).T.tobytes()
        arrays.append(np.frombuffer(raw, dt, n))
    sd = {}
    for e in h["tensors"]:
        shape, dtype = e["shape"], getattr(torch, e["dtype"])
        numel = int(np.prod(shape, dtype=np.int64))
        v = torch.from_numpy(arrays[e["group"]][e["offset"]:e["offset"] + numel].copy())
        if "scales" in e:  # levels * scale in fp32 (per row fp16 scales, else one fp32 scale)
            sc, o = arrays[e["scales"]], e["scale_offset"]
            if "scale_group" in e:  # group-wise: scale [r, c // g], rows x ceil(cols / g) of them
                r, c, g = e["rows"], shape[1], e["scale_group"]
                s = torch.from_numpy(sc[o:o + r * (-(-c // g))].copy()).float().view(r, -1)
                t = v.float().view(r, c) * s.repeat_interleave(g, dim=1)[:, :c]
            elif "rows" in e:
                r = e["rows"]
                t = v.float().view(r, numel // r if r else 0) * torch.from_numpy(sc[o:o + r].copy()).float().view(-1, 1)
            else:
                t = v.float() * float(sc[o])
        elif h["streams"][e["group"]]["dtype"] == "bfloat16":
            t = v.view(torch.bfloat16)
        else:
            t = v
        t = t.to(dtype).reshape(shape).contiguous()
        if check and hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest() != e["digest"]:
            raise ValueError(f"{e['name']}: tensor differs from what the packer wrote")
        sd[e["name"]] = t
    return sd


if __name__ == "__main__":
    import sys
    sd = load(sys.argv[1])
    print(f"{len(sd)} tensors, {sum(t.numel() for t in sd.values()):,} params")
'''


def decoder_source() -> str:
    """The standalone decoder's Python source."""
    return DECODER_SOURCE


def export_decoder(path: str | os.PathLike[str]) -> int:
    """Write the standalone decoder to `path` (atomically); returns its size in bytes."""
    data = decoder_source().encode("utf-8")
    write_bytes_atomic(path, data)
    return len(data)


__all__ = ["decoder_source", "export_decoder"]
