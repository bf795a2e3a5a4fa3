"""`golfpack pack --codec lzma|best` wall and CPU time, old code vs new, side by side in one run.

Checkpoints: bench/search_scale.py's synthetic baseline-family models (weights that copy a trained
checkpoint's per-row statistics, NOT trained weights) at 21.8M and 36M parameters. Each (size, codec)
runs the old source tree (a `git archive` of --old-rev) then this tree's, each in a fresh process,
the 1-minute load average beside each timing, and both artifacts' bytes and sha256: the thread pool
changed no byte; the LITERAL lzma encoder (taken where it measures smaller) does, so the row says by how
much. Prints a table and writes bench/results/pack_speed.json.

    python bench/pack_speed.py [--sizes 21.8M,36M] [--codecs lzma,rans,best] [--old-rev REV] [--ckpt-dir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench/results/pack_speed.json"
POLICY = "int6+tok8"


def old_tree(rev: str, into: Path) -> Path:
    """src/ of `rev` unpacked under `into` (no checkout touched)."""
    tar = into / "old.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(tar), rev, "src"], check=True)
    with tarfile.open(tar) as t:
        t.extractall(into / "old", filter="data")
    return into / "old/src"


def one(src: Path, ckpt: Path, codec: str, out: Path) -> dict | None:
    """One `golfpack pack` in a fresh process: wall, CPU (user+sys of the child), load average, sha256
    (None when that tree does not know the codec: the old tree predates `rans`)."""
    cmd = [sys.executable, "-c", "import sys; from golfpack.cli import main; sys.exit(main())", "pack", str(ckpt),
           "--policy", POLICY, "--codec", codec, "--budget", str(10**9), "-o", str(out), "--no-progress"]
    load = os.getloadavg()[0]
    r0, t0 = os.times(), time.perf_counter()
    p = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True)
    wall, r1 = time.perf_counter() - t0, os.times()
    if p.returncode != 0 and "unknown or unavailable codec" in p.stderr + p.stdout:
        return None
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{p.stderr[-2000:]}")
    data = out.read_bytes()
    return {"wall_s": round(wall, 2), "cpu_s": round(r1.children_user + r1.children_system - r0.children_user - r0.children_system, 2),
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="21.8M,36M")
    ap.add_argument("--codecs", default="lzma,best")
    ap.add_argument("--old-rev", default="4f213bb", help="the code before the speedups")
    ap.add_argument("--ckpt-dir", default=None, help="reuse/keep checkpoints here (scale_<size>.pt)")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    from search_scale import make_checkpoint

    rows = []
    with tempfile.TemporaryDirectory(prefix="golfpack-packspeed-") as tmp:
        tmpd = Path(tmp)
        old = old_tree(a.old_rev, tmpd)
        ck_dir = Path(a.ckpt_dir) if a.ckpt_dir else tmpd
        for size in a.sizes.split(","):
            ckpt = ck_dir / f"scale_{size}.pt"
            if not ckpt.is_file():
                make_checkpoint(size, ckpt)
            for codec in a.codecs.split(","):
                old_r = one(old, ckpt, codec, tmpd / "old.qg3")
                new_r = one(REPO / "src", ckpt, codec, tmpd / "new.qg3")
                assert new_r is not None, codec
                new_s = f"new {new_r['wall_s']:7.1f}s wall {new_r['cpu_s']:7.1f} CPU-s (load {new_r['load_before']:.2f})"
                if old_r is None:
                    rows.append({"size": size, "codec": codec, "old": None, "new": new_r})
                    print(f"{size:>6} {codec:<6} old: no such codec | {new_s} | bytes {new_r['bytes']:,}", flush=True)
                else:
                    row = {"size": size, "codec": codec, "old": old_r, "new": new_r, "same_bytes": old_r["sha256"] == new_r["sha256"],
                           "bytes_change": new_r["bytes"] - old_r["bytes"], "speedup_wall": round(old_r["wall_s"] / new_r["wall_s"], 2)}
                    rows.append(row)
                    print(f"{size:>6} {codec:<6} old {old_r['wall_s']:7.1f}s wall {old_r['cpu_s']:7.1f} CPU-s (load {old_r['load_before']:.2f})"
                          f" | {new_s} | x{row['speedup_wall']:.2f} wall | bytes {old_r['bytes']:,} -> {new_r['bytes']:,}"
                          f" ({row['bytes_change']:+,})", flush=True)
                write(rows, a.old_rev, Path(a.out))  # after every row: a long run cut short keeps what it measured
    print(f"wrote {a.out}")


def write(rows: list[dict], old_rev: str, out: Path = OUT) -> None:
    res = {"policy": POLICY, "old_rev": old_rev, "cpus": len(os.sched_getaffinity(0)),
           "checkpoints": "synthetic baseline family (bench/search_scale.make_checkpoint): per-row statistics of a trained model",
           "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
