"""Raw checkpoints: `torch.save(model.state_dict())` files such as `final_model.pt`.

Every `torch.load` in golfpack goes through `torch_load_bytes` / `torch_load_path` here: always
`weights_only=True` (no pickle code runs), always onto the CPU, and bounded (a file or buffer over
`MAX_TORCH_LOAD_BYTES` is refused before it is read). Rebuilding a model config from the keys and
shapes is the model layer's job (`golfpack.loading.infer_config`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from golfpack.errors import FormatError

# A golf checkpoint is tens of MB; 4 GiB leaves room for far bigger models and still refuses a
# device file or a mistaken path to a dataset before it is read into memory.
MAX_TORCH_LOAD_BYTES = 4 << 30
# torch.save writes its zip entries STORED; a DEFLATE entry inflates when loaded (2 MB -> 2.2 GB was seen), so
# compressed entries may declare at most this much in total (checked in the zip directory before torch.load).
MAX_ZIP_INFLATED_BYTES = 256 << 20


def check_zip_expansion(src: Any, *, path: str | os.PathLike[str] | None, max_bytes: int) -> None:
    """FormatError when a torch.save zip (`src`: bytes or a path) declares more than `max_bytes` uncompressed in
    total, or more than MAX_ZIP_INFLATED_BYTES in compressed entries. Not a zip: nothing to check (torch decides)."""
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else src) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    total = sum(i.file_size for i in infos)
    inflated = sum(i.file_size for i in infos if i.compress_type != zipfile.ZIP_STORED)
    if total > max_bytes:
        raise FormatError(f"zip entries declare {total:,} bytes uncompressed, over the {max_bytes:,}-byte limit", path=path)
    if inflated > MAX_ZIP_INFLATED_BYTES:
        raise FormatError(f"compressed zip entries inflate to {inflated:,} bytes, over the {MAX_ZIP_INFLATED_BYTES:,}-byte limit "
                          "(torch.save never compresses them: a zip bomb?)", path=path)


def expansion_cap(nbytes: int, max_bytes: int) -> int:
    """What the tensors of an `nbytes` torch.save may take once contiguous: 4x (tied weights count twice,
    views of one storage add up) + 64 MiB, never over `max_bytes`."""
    return min(max_bytes, 4 * nbytes + (64 << 20))


def check_tensor_bytes(obj: Any, *, path: str | os.PathLike[str] | None, max_bytes: int, what: str = "tensors") -> None:
    """FormatError when the tensors in `obj` (nested dicts/lists) would take more than `max_bytes` once made
    contiguous: a stride-0 view of a tiny storage can claim gigabytes, and .float()/.contiguous() would build them."""
    total, stack = 0, [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, Tensor):
            total += v.numel() * v.element_size()
            if total > max_bytes:
                raise FormatError(f"{what} expand to more than {max_bytes:,} bytes (stride-0 views?); refusing", path=path)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def torch_load_bytes(data: bytes | bytearray | memoryview, *, path: str | os.PathLike[str] | None = None,
                     why: str = "not a torch.save object", max_bytes: int = MAX_TORCH_LOAD_BYTES) -> Any:
    """`torch.load` of in-memory torch.save bytes: weights_only, CPU, at most `max_bytes`.

    FormatError (naming `path` when given; `why` is its message) when they are not."""
    if len(data) > max_bytes:
        raise FormatError(f"{len(data):,} bytes is over the {max_bytes:,}-byte limit of torch_load_bytes", path=path)
    check_zip_expansion(data, path=path, max_bytes=max_bytes)
    try:
        obj = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        raise FormatError(f"{why} ({_first_line(e)})", path=path) from None
    check_tensor_bytes(obj, path=path, max_bytes=expansion_cap(len(data), max_bytes))
    return obj


def torch_load_path(path: str | os.PathLike[str], *, why: str = "not a torch.save object", max_bytes: int = MAX_TORCH_LOAD_BYTES) -> Any:
    """`torch.load` of a file: weights_only, CPU; refused unread when over `max_bytes` (FormatError)."""
    p = Path(path)
    if not p.is_file():
        raise FormatError("file not found", path=p)
    size = p.stat().st_size
    if size > max_bytes:
        raise FormatError(f"{size:,} bytes is over the {max_bytes:,}-byte limit of torch_load_path", path=p)
    check_zip_expansion(p, path=p, max_bytes=max_bytes)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        raise FormatError(f"{why} ({_first_line(e)})", path=p) from None
    check_tensor_bytes(obj, path=p, max_bytes=expansion_cap(size, max_bytes))
    return obj

# Prefixes that wrappers add around the real state dict keys.
_STRIP_PREFIXES = ("_orig_mod.", "module.")
# Container keys some scripts use to nest the state dict.
_NESTED_KEYS = ("model_state_dict", "state_dict", "model")

def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a raw checkpoint safely and return a flat {name: tensor} dict on CPU."""
    path = Path(path)
    if not path.is_file():
        raise FormatError("checkpoint file not found", path=path)
    obj = torch_load_path(path, why="cannot be read as a torch.save state dict")
    return normalize_state_dict(obj, source=str(path))


def normalize_state_dict(obj: Any, source: str = "state dict") -> dict[str, Tensor]:
    """Unwrap nested containers and compile/DDP prefixes; require a flat dict of tensors."""
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            if key in obj and isinstance(obj[key], dict) and not isinstance(obj[key], Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise FormatError(f"{source}: expected a non-empty dict of tensors, got {type(obj).__name__}")
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            raise FormatError(f"{source}: entry {k!r} is {type(v).__name__}, not a tensor")
        name = str(k)
        for p in _STRIP_PREFIXES:
            if name.startswith(p):
                name = name[len(p) :]
        out[name] = v.detach().cpu()
    return out


__all__ = ["MAX_TORCH_LOAD_BYTES", "MAX_ZIP_INFLATED_BYTES", "check_tensor_bytes", "check_zip_expansion", "expansion_cap",
           "load_state_dict", "normalize_state_dict", "torch_load_bytes", "torch_load_path"]
