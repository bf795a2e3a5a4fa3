"""Small file helpers shared by every writer: nothing is ever left half-written on disk."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Write to a temp file in the target's folder, fsync, then rename over the target.

    On any exception the temp file is removed and the target is untouched. The file gets the mode a
    plain open() would give (mkstemp's 0600 would hide artifacts from other users), and the folder is
    fsynced after the rename so the new name survives a crash too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


# mkstemp(prefix=".NAME.", suffix=".tmp") names: ours, and nothing a user would name a file.
_TEMP_RE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
STALE_TEMP_SECONDS = 600  # a temp this old belongs to a writer that was killed (no write takes this long between fsyncs)


def remove_stale_temps(folder: str | os.PathLike[str], older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete atomic_write temp files in `folder` untouched for `older_than` seconds (left by a SIGKILLed
    writer; a live writer's temp is younger). Returns what was removed; errors are ignored."""
    removed, now = [], time.time()
    with contextlib.suppress(OSError):
        for e in os.scandir(folder):
            if _TEMP_RE.fullmatch(e.name) and e.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    if now - e.stat(follow_symlinks=False).st_mtime > older_than:
                        os.unlink(e.path)
                        removed.append(Path(e.path))
    return removed


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem/OS lets a folder be opened or fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def load_table(path: str | os.PathLike[str], what: str) -> dict:
    """A .toml or .json file's top-level table (policy files, training configs); GolfpackError otherwise."""
    import json
    import tomllib

    from golfpack.errors import FormatError, UsageError

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {p}: not found")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".toml":
            d = tomllib.loads(text)
        elif p.suffix.lower() == ".json":
            d = json.loads(text)
        else:
            raise UsageError(f"{what} {p}: use a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{what}: cannot parse ({e})", path=p) from None
    if not isinstance(d, dict):
        raise FormatError(f"{what}: expected a table/object at the top level", path=p)
    return d
