"""The challenge's token shard format.

Layout: 256 little-endian int32 header words (word 0 = magic 20240520, word 1 = version 1,
word 2 = token count, the rest 0), then `count` little-endian uint16 tokens. The file size must
be exactly 1024 + 2 * count. Readers memory-map, so a 200 MB shard costs no RAM until touched.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from golfpack._io import atomic_write
from golfpack.errors import DataError, FormatError, UsageError

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_TOKEN_ID = 65535


def read_shard_header(path: str | os.PathLike[str]) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    if path.is_dir():  # e.g. --val data/ : name the shards, not their folder
        raise DataError(f"shard {path}: is a folder, not a shard file: pass a shard path or a quoted glob like '{path}/*.bin'")
    if not path.is_file():
        raise DataError(f"shard {path}: file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise FormatError(f"shard: truncated header ({size} bytes, need {HEADER_BYTES})", path=path, offset=size)
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != SHARD_MAGIC:
        raise FormatError(f"shard: bad magic {int(header[0])} in header word 0 (expected {SHARD_MAGIC})", path=path, offset=0)
    if int(header[1]) != SHARD_VERSION:
        raise FormatError(
            f"shard: unsupported version {int(header[1])} in header word 1 (expected {SHARD_VERSION})", path=path, offset=4
        )
    count = int(header[2])
    if count < 0:
        raise FormatError(f"shard: negative token count {count} in header word 2", path=path, offset=8)
    expected = HEADER_BYTES + count * TOKEN_DTYPE.itemsize
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise FormatError(
            f"shard: {what}: header word 2 says {count} tokens = {expected} bytes, file is {size} bytes",
            path=path,
            offset=min(size, expected),
        )
    return count


def read_shard(path: str | os.PathLike[str], mmap: bool = True) -> np.ndarray:
    """Return the shard's tokens as a read-only uint16 array (memory-mapped by default)."""
    count = read_shard_header(path)
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    if mmap:
        return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))
    return np.fromfile(path, dtype=TOKEN_DTYPE, count=count, offset=HEADER_BYTES)


def write_shard(path: str | os.PathLike[str], tokens: np.ndarray | list[int]) -> int:
    """Write tokens as a shard atomically; return the token count."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise UsageError(f"shard {path}: tokens must be 1-D, got shape {arr.shape}", param="tokens")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > MAX_TOKEN_ID):
        raise UsageError(f"shard {path}: token ids must be in 0..{MAX_TOKEN_ID} to fit uint16", param="tokens")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, arr.size
    with atomic_write(path) as f:
        f.write(header.tobytes())
        f.write(arr.astype(TOKEN_DTYPE, copy=False).tobytes())
    return int(arr.size)


def expand_pattern(pattern: str | os.PathLike[str]) -> list[Path]:
    """Sorted shard files for a glob (or a single path); error if nothing matches."""
    files = sorted(Path(p) for p in glob.glob(str(pattern)))
    for folder in sorted({f.parent for f in files}):
        journals = sorted(folder.glob(".*.swap.json"))
        if journals:  # a prepare --overwrite was killed mid-swap: the set may be half old, half new
            raise DataError(f"{journals[0]}: an interrupted `prepare --overwrite` left this shard set half swapped; "
                            "rerun prepare (or golfpack.prepare.recover_shard_set) to finish it")
    if not files:
        raise DataError(f"no shard files match {str(pattern)!r}: check the path or quote the glob")
    return files


def load_tokens(pattern: str | os.PathLike[str], max_tokens: int | None = None) -> np.ndarray:
    """Concatenate all shards matching `pattern` in sorted order (at most `max_tokens`)."""
    parts: list[np.ndarray] = []
    total = 0
    for f in expand_pattern(pattern):
        toks = read_shard(f)
        if max_tokens is not None:
            toks = toks[: max_tokens - total]
        parts.append(toks)
        total += toks.size
        if max_tokens is not None and total >= max_tokens:
            break
    return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])
