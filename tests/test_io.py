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


def test_atomic_write_removes_stale_temps_a_killed_writer_left(tmp_path):
    """A SIGKILL between mkstemp and the rename leaves `.NAME.XXXXXXXX.tmp`; the next write to the folder removes
    ours once stale (a live writer's temp is younger), and nothing else."""
    import os
    import subprocess
    import sys
    import time

    from golfpack._io import STALE_TEMP_SECONDS, write_bytes_atomic

    child = ("import os, sys\nfrom golfpack._io import atomic_write\n"
             "with atomic_write(sys.argv[1]) as f:\n    f.write(b'half'); f.flush(); os.kill(os.getpid(), 9)\n")
    r = subprocess.run([sys.executable, "-c", child, str(tmp_path / "a.bin")], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == -9
    left = [p for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".a.bin.") and left[0].name.endswith(".tmp")
    mine = tmp_path / ".notes.txt.tmp"  # a user's file, not our pattern
    mine.write_text("keep")
    fresh = tmp_path / ".b.bin.abcdefgh.tmp"  # ours but young: maybe a live writer's
    fresh.write_text("x")
    old = time.time() - STALE_TEMP_SECONDS - 5
    os.utime(left[0], (old, old))
    os.utime(mine, (old, old))
    write_bytes_atomic(tmp_path / "c.bin", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.bin.abcdefgh.tmp", ".notes.txt.tmp", "c.bin"]
