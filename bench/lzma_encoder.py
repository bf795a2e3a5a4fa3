"""The LITERAL lzma encoder: artifact bytes and pack time with it offered (today) vs EXTREME only (before).

Per shared input and preset, `pack_file(codec="lzma")` twice in this process: once with the planner's lzma
variants cut to LzmaEncoder.EXTREME (the only encoder before), once as shipped (both encoders measured,
the smaller kept). `--scale 21.8M,36M` adds bench/search_scale.py's synthetic baseline-family checkpoints
(weights that copy a trained checkpoint's per-row statistics, NOT trained weights) with int6+tok8.
Wall and CPU seconds and the 1-minute load average beside each row. Prints a table, writes
bench/results/lzma_encoder.json.

    python bench/lzma_encoder.py [--presets int6+tok8,int6g+tok8,int8] [--scale 21.8M,36M]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from preset_hashes import INPUTS  # noqa: E402

OUT = REPO / "bench/results/lzma_encoder.json"


def pack_once(src: Path, preset: str, extreme_only: bool, out: Path) -> dict:
    import golfpack.formats.qgv3_plan as QP
    import golfpack.packer.policy as P
    from golfpack.formats.codecs import LzmaEncoder
    from golfpack.packer.pack import pack_file

    real = QP._variants
    if extreme_only:
        QP._variants = lambda *a: [v for v in real(*a) if v[1] == LzmaEncoder.EXTREME]  # type: ignore[assignment]
    try:
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        pack_file(src, out, policy=P.resolve_policy(preset), codec="lzma", budget=10**9, require_config=False)
        return {"bytes": out.stat().st_size, "wall_s": round(time.perf_counter() - t0, 2),
                "cpu_s": round(time.process_time() - c0, 2), "load1": round(load, 2)}
    finally:
        QP._variants = real


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="int6+tok8,int6g+tok8,int8")
    ap.add_argument("--scale", default="", help="also these synthetic sizes of bench/search_scale.py (int6+tok8)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="golfpack-lzenc-") as tmp:
        jobs = [(src, p) for src in INPUTS if src.is_file() for p in a.presets.split(",")]
        if a.scale:
            from search_scale import make_checkpoint

            for size in a.scale.split(","):
                ck = Path(tmp) / f"scale_{size}.pt"
                make_checkpoint(size, ck)
                jobs.append((ck, "int6+tok8"))
        print(f"{'input':<40} {'preset':<12} {'EXTREME only':>13} {'both':>11} {'change':>8} {'wall old':>9} {'wall new':>9} {'load1':>6}")
        for src, preset in jobs:
            old = pack_once(src, preset, True, Path(tmp) / "a.qg3")
            new = pack_once(src, preset, False, Path(tmp) / "b.qg3")
            row = {"input": src.name, "preset": preset, "extreme_only": old, "both": new,
                   "change_pct": round(100 * (new["bytes"] - old["bytes"]) / old["bytes"], 3),
                   "synthetic": src.name.startswith("scale_")}
            rows.append(row)
            print(f"{src.name:<40} {preset:<12} {old['bytes']:>13,} {new['bytes']:>11,} {row['change_pct']:>+7.2f}% "
                  f"{old['wall_s']:>8.1f}s {new['wall_s']:>8.1f}s {new['load1']:>6.2f}", flush=True)
            OUT.write_text(json.dumps({"bench": "lzma_encoder", "cpus": len(os.sched_getaffinity(0)), "rows": rows,
                                       "note": "scale_* inputs are synthetic (per-row statistics of a trained checkpoint)"},
                                      indent=1) + "\n")
    worse = [r for r in rows if r["change_pct"] > 0]
    print(f"{len(rows)} rows; smaller in {sum(r['change_pct'] < 0 for r in rows)}, equal in "
          f"{sum(r['change_pct'] == 0 for r in rows)}, larger in {len(worse)}; wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
