"""The challenge baseline's `int8_clean_per_row_v1` `.ptz`: zlib(torch.save(container dict)).

This is THEIR format (and the one most submissions ship), read so that anything people already
have can be scored or repacked, and written only by the benchmark to measure what the baseline's
own container costs. Our own artifacts never use pickle (see formats/qgv3.py).

Container layout (train_gpt.py `quantize_state_dict_int8`):
    __quant_format__        "int8_clean_per_row_v1"
    quantized[name]         int8 levels (original shape)
    scales[name]            fp16 (rows,) for per-row tensors, or a 0-d fp32 per-tensor scale
    dtypes[name]            original dtype name of each quantized tensor
    passthrough[name]       tensors kept as they are stored (fp16/fp32/int ...)
    passthrough_orig_dtypes optional: dtype to cast a passthrough tensor back to on load
    qmeta                   optional: {name: {"scheme": "per_row", "axis": 0}}
Forks also compress the same torch.save bytes with lzma or zstd instead of zlib; all three are read.
"""

from __future__ import annotations

import io
import lzma
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from golfpack._io import write_bytes_atomic
from golfpack.errors import FormatError
from golfpack.formats.checkpoint import torch_load_bytes
from golfpack.formats.records import TORCH_DTYPES, TensorRecord

INT8_FORMAT = "int8_clean_per_row_v1"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"


def looks_like_zlib(head: bytes) -> bool:
    """RFC 1950 header: CM = 8 (deflate), CINFO <= 7, and the 16-bit header is a multiple of 31."""
    return len(head) >= 2 and (head[0] & 0x0F) == 8 and (head[0] >> 4) <= 7 and ((head[0] << 8) | head[1]) % 31 == 0


# A real .ptz for a 16 MB artifact inflates to well under 100 MB; past this it is a bomb or not ours.
MAX_LEGACY_RAW = 1 << 30
_STEP = 16 << 20  # decompression step


def decompress_container(data: bytes, source: str = "file", max_raw: int = MAX_LEGACY_RAW) -> tuple[bytes, str]:
    """Undo the outer compression of a legacy artifact; returns (torch.save bytes, codec name).

    Decompression stops at max_raw + 1 bytes, so a decompression bomb is refused, never materialised.
    """
    try:
        complete = True
        if data.startswith(_XZ_MAGIC):
            dx = lzma.LZMADecompressor()
            raw, codec = dx.decompress(data, max_length=max_raw + 1), "lzma"
            complete = dx.eof
        elif data.startswith(_ZSTD_MAGIC):
            import zstandard

            # no max_length here: feed 128 bytes at a time (an RLE block turns 4 bytes into 128 KiB, so one
            # step inflates to at most ~4 MiB), and stop past the cap
            dzs, parts, n = zstandard.ZstdDecompressor().decompressobj(), [], 0
            for i in range(0, len(data), 128):
                parts.append(dzs.decompress(data[i : i + 128]))
                n += len(parts[-1])
                if n > max_raw or dzs.eof:
                    break
            raw, codec, complete = b"".join(parts), "zstd", dzs.eof
        elif looks_like_zlib(data[:2]):
            # in steps of 16 MiB into one growing buffer: a bomb is refused one step past the cap, and the
            # output is never joined or copied (one max_length=cap+1 call doubled its buffer to 2 GiB)
            dz, buf, rest = zlib.decompressobj(), bytearray(), data
            while not dz.eof and len(buf) <= max_raw:
                buf += dz.decompress(rest, min(_STEP, max_raw + 1 - len(buf)))
                rest = dz.unconsumed_tail
                if not rest and not dz.eof:
                    buf += dz.flush()
                    break
            raw, codec, complete = buf, "zlib", dz.eof
        else:
            raise FormatError("not a zlib/lzma/zstd-compressed legacy artifact", path=source, offset=0)
    except FormatError:
        raise
    except Exception as e:  # zlib.error, lzma.LZMAError, zstandard.ZstdError (no stable import path)
        raise FormatError(f"corrupt compressed stream ({e})", path=source) from None
    if len(raw) > max_raw:
        raise FormatError(f"inflates past {max_raw:,} bytes; refusing (decompression bomb or not a golf artifact)", path=source)
    if not complete:
        raise FormatError(f"corrupt compressed stream (it ends before the {codec} end marker: truncated file?)", path=source)
    return raw, codec


def read_int8_ptz(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw container object of a legacy `.ptz` (weights_only: no pickle code runs)."""
    p = Path(path)
    if not p.is_file():
        raise FormatError("file not found", path=p)
    raw, _ = decompress_container(p.read_bytes(), str(p))
    obj = load_container(raw, p)
    if not isinstance(obj, dict):
        raise FormatError(f"expected a dict container, got {type(obj).__name__}", path=p)
    return obj


def load_container(raw: bytes, path: str | os.PathLike[str] | None = None) -> Any:
    """The object in decompressed legacy bytes (`decompress_container`'s output), weights_only."""
    return torch_load_bytes(raw, path=path, why="decompressed data is not a torch.save object", max_bytes=MAX_LEGACY_RAW)


def is_int8_container(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("__quant_format__") == INT8_FORMAT


def dequantize_int8_ptz(obj: dict[str, Any]) -> dict[str, Tensor]:
    """Rebuild the state dict exactly as the baseline's dequantize_state_dict_int8 does.

    Quantized tensors first, then passthrough ones (the baseline's key order)."""
    if not is_int8_container(obj):
        fmt = obj.get("__quant_format__") if isinstance(obj, dict) else None
        raise FormatError(f"not an {INT8_FORMAT} container (format: {fmt!r})")
    check_int8_container(obj)
    out: dict[str, Tensor] = {}
    qmeta = obj.get("qmeta") or {}
    orig_dtypes = obj.get("passthrough_orig_dtypes") or {}
    for name, q in obj["quantized"].items():
        dtype = _torch_dtype(obj["dtypes"][name], name)
        s = obj["scales"][name]
        if qmeta.get(name, {}).get("scheme") == "per_row" or s.ndim > 0:
            s = s.to(dtype=torch.float32)
            out[name] = (q.float() * s.view(q.shape[0], *([1] * (q.ndim - 1)))).to(dtype=dtype).contiguous()
        else:
            out[name] = (q.float() * float(s.item())).to(dtype=dtype).contiguous()
    for name, t in obj["passthrough"].items():
        t = t.detach().to("cpu").contiguous()
        od = orig_dtypes.get(name)
        if isinstance(od, str):
            t = t.to(dtype=_torch_dtype(od, name)).contiguous()
        out[name] = t
    return out


def check_int8_container(obj: dict[str, Any]) -> None:
    """Validate an int8 container as a QGv3 header is validated (FormatError naming the first fault), before
    any arithmetic: every table of the right type, keyed by str names, holding tensors; scales, dtypes and
    quantized with the same names; int8 levels; per-row scales one per row; passthrough names disjoint."""

    def fail(msg: str) -> FormatError:
        return FormatError(f"legacy container: {msg}")

    def table(key: str, required: bool, value: type | tuple[type, ...]) -> dict:
        d = obj.get(key)
        if d is None and not required:
            return {}
        if not isinstance(d, dict):
            raise fail(f"{key!r} must be a dict, got {type(d).__name__}")
        for k, v in d.items():
            if not isinstance(k, str) or not k:
                raise fail(f"{key!r} has a key that is not a non-empty string: {k!r:.80}")
            if not isinstance(v, value):
                raise fail(f"{key}[{k!r}] is {type(v).__name__}, expected {getattr(value, '__name__', 'one of ' + str(value))}")
        return d

    q = table("quantized", True, Tensor)
    sc = table("scales", True, Tensor)
    dt = table("dtypes", True, str)
    pt = table("passthrough", True, Tensor)
    qm = table("qmeta", False, dict)
    table("passthrough_orig_dtypes", False, str)
    for key, d in (("scales", sc), ("dtypes", dt)):
        if d.keys() != q.keys():
            odd = sorted(d.keys() ^ q.keys())[:5]
            raise fail(f"{key!r} and 'quantized' name different tensors ({', '.join(map(repr, odd))})")
    if q.keys() & pt.keys():
        raise fail(f"{sorted(q.keys() & pt.keys())[0]!r} is both quantized and passthrough")
    for name, t in q.items():
        if t.dtype != torch.int8:
            raise fail(f"quantized[{name!r}] is {t.dtype}, expected torch.int8")
        s = sc[name]
        if not s.is_floating_point():
            raise fail(f"scales[{name!r}] is {s.dtype}, expected a float tensor")
        per_row = (qm.get(name) or {}).get("scheme") == "per_row" or s.ndim > 0
        if per_row and (t.ndim == 0 or s.ndim != 1 or s.numel() != t.shape[0]):
            raise fail(f"scales[{name!r}] has shape {list(s.shape)}, expected one per row of {list(t.shape)}")
        if not per_row and s.numel() != 1:
            raise fail(f"scales[{name!r}] must be a single value, has shape {list(s.shape)}")


def _torch_dtype(name: str, tensor: str) -> torch.dtype:
    if name not in TORCH_DTYPES:
        raise FormatError(f"legacy container: tensor {tensor!r} has unsupported dtype {name!r}")
    return TORCH_DTYPES[name]


def records_to_int8_container(records: Iterable[TensorRecord]) -> dict[str, Any]:
    """Lay our TensorRecords out as the baseline's container (any bit width fits in its int8 tensors).

    What seed forks ship for int6: the same dict, with int6 levels stored one per int8 byte. Used by the
    byte benchmark to measure torch.save + general-purpose compression on identical quantized values."""
    quantized: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    dtypes: dict[str, str] = {}
    passthrough: dict[str, Tensor] = {}
    orig_dtypes: dict[str, str] = {}
    qmeta: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.spec.kind == "int":
            assert r.q is not None and r.scales is not None
            quantized[r.name] = torch.from_numpy(r.q.copy()).reshape(r.shape)
            if r.per_row:
                scales[r.name] = torch.from_numpy(r.scales.copy())
                qmeta[r.name] = {"scheme": "per_row", "axis": 0}
            else:
                scales[r.name] = torch.tensor(float(r.scales.reshape(-1)[0]), dtype=torch.float32)
            dtypes[r.name] = r.orig_dtype
        else:
            stored = stored_passthrough_tensor(r)
            passthrough[r.name] = stored
            if str(stored.dtype).removeprefix("torch.") != r.orig_dtype:
                orig_dtypes[r.name] = r.orig_dtype
    obj: dict[str, Any] = {
        "__quant_format__": INT8_FORMAT,
        "quantized": quantized,
        "scales": scales,
        "dtypes": dtypes,
        "passthrough": passthrough,
    }
    if qmeta:
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    return obj


def stored_passthrough_tensor(r: TensorRecord) -> Tensor:
    """A passthrough record's values as a torch tensor in their STORAGE dtype (not restored)."""
    assert r.data is not None
    import numpy as np

    arr = np.ascontiguousarray(r.data)
    if arr.dtype == np.uint16 and (r.spec.dtype == "bf16" or r.orig_dtype == "bfloat16"):
        t = torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(arr.copy())
    return t.reshape(r.shape)


def container_bytes(obj: dict[str, Any]) -> bytes:
    """torch.save bytes of a container (what the baseline then compresses)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_int8_ptz(obj: dict[str, Any], path: str | os.PathLike[str], level: int = 9) -> int:
    """Write a legacy .ptz exactly as the baseline does (zlib level 9), atomically. Returns its size."""
    data = zlib.compress(container_bytes(obj), level=level)
    write_bytes_atomic(path, data)
    return len(data)


__all__ = [
    "INT8_FORMAT",
    "container_bytes",
    "check_int8_container",
    "decompress_container",
    "dequantize_int8_ptz",
    "is_int8_container",
    "load_container",
    "looks_like_zlib",
    "read_int8_ptz",
    "records_to_int8_container",
    "stored_passthrough_tensor",
    "write_int8_ptz",
]
