"""Atomic writes: all or nothing, and the file mode a plain open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from golfpack._io import atomic_write, write_bytes_atomic


def test_atomic_write_mode_follows_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"abc")
        os.umask(0o077)
        write_bytes_atomic(tmp_path / "b.bin", b"abc")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o600
    assert (tmp_path / "a.bin").read_bytes() == b"abc"


def test_failed_write_leaves_target_and_no_temp(tmp_path) -> None:
    target = tmp_path / "model.qg3"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.qg3"]


def test_creates_missing_folders(tmp_path) -> None:
    write_bytes_atomic(tmp_path / "x" / "y" / "z.bin", b"1")
    assert (tmp_path / "x" / "y" / "z.bin").read_bytes() == b"1"
