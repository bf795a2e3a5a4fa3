"""Budget-aware screen vs the per-tensor-frontier screen it replaced: direct measurements, phase time and the
search's answer (artifact bytes, the joint held-out calibration loss it reports), side by side in one run.

"before" runs the search from another checkout's src (--before-src, default /work/main/src: the frontier screen),
"after" from this one; each in its own process, same config (defaults but `workers`, no cache), the load average
read beside each row. Budget: --fraction of the checkpoint's int6-preset artifact (lzma).

    python bench/screen_budget.py [--ckpts nolanvild,5.2M] [--fraction 0.9] [--before-src /work/main/src]
Writes bench/results/screen_budget.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GOLFPACK_SHARED_DATA", REPO.parent / "shared" / "data"))
SP1024 = SHARED / "tokenizers" / "fineweb_1024_bpe.model"
RESULTS = REPO / "bench" / "results" / "screen_budget.json"  # --ways after alone writes screen_budget_after.json

CHILD = r"""
import json, os, sys, time
from golfpack.budget import SearchConfig, run_search
ckpt, budget, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
r = run_search(ckpt, SearchConfig(budget=budget, tokenizer=sys.argv[4], workers=workers, progress=False))
sc = r.sens.get("screen") or {}
print("RESULT " + json.dumps({
    "wall": time.perf_counter() - t, "timings": r.timings, "cpu": r.cpu_timings, "model_bytes": r.model_bytes,
    "joint": None if r.chosen is None else r.chosen.joint, "chosen_from": None if r.chosen is None else r.chosen.source,
    "candidates": sc.get("candidates"), "measured": sc.get("measured"), "sampled": sc.get("sampled"),
    "sample_agreement": sc.get("sample_agreement"), "sample_misses": sc.get("sample_misses"), "capped": sc.get("capped"),
    "layout": {n: s.label() for n, s in r.specs.items()},
}, default=str))
"""


def ckpt_path(name: str, work: Path) -> Path:
    if name in ("nolanvild",):
        return SHARED / "checkpoints" / f"{name}_final_model.pt"
    sys.path.insert(0, str(REPO / "bench"))
    from search_scale import make_checkpoint

    path = work / f"synthetic_{name}.pt"
    make_checkpoint(name, path)
    return path


def int6_bytes(path: Path) -> int:
    from golfpack.packer.pack import pack_file
    from golfpack.packer.policy import Policy

    with tempfile.TemporaryDirectory() as d:
        return pack_file(path, Path(d) / "int6.qg3", policy=Policy.preset("int6"), codec="lzma").model_bytes


def job(src: Path, ckpt: Path, budget: int, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    load0 = os.getloadavg()[0]
    p = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(budget), str(workers), str(SP1024)], env=env,
                       capture_output=True, text=True, check=False)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise SystemExit(f"job failed ({src}):\n{p.stderr[-3000:]}")
    out = json.loads(line[0][7:])
    out["load"] = [load0, os.getloadavg()[0]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpts", default="nolanvild,5.2M")
    ap.add_argument("--fraction", type=float, default=0.9)
    ap.add_argument("--before-src", default="/work/main/src")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ways", default="before,after", help="which of before,after to run")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.ckpts.split(","):
            path = ckpt_path(name, Path(d))
            budget = int(args.fraction * int6_bytes(path))
            for way, src in [(w, s) for w, s in (("before", Path(args.before_src)), ("after", REPO / "src")) if w in args.ways.split(",")]:
                r = job(src, path, budget, args.workers)
                r.update(ckpt=name, way=way, budget=budget)
                rows.append(r)
                ag = r.get("sample_agreement") or {}
                print(f"{name:<10} {way:<6} budget {budget:>10,} measured {r['measured']}/{r['candidates']} "
                      f"sens {r['timings']['sensitivity']:7.1f} s  total {r['wall']:7.1f} s  bytes {r['model_bytes']:>10,} "
                      f"joint {r['joint']:.6f} ({r['chosen_from']})  sample rho {ag.get('spearman', float('nan')):.3f} "
                      f"tau {ag.get('kendall', float('nan')):.3f} misses {r.get('sample_misses')}  "
                      f"load {r['load'][0]:.2f}->{r['load'][1]:.2f}", flush=True)
        if len(args.ways.split(",")) == 2:
            same = {n: rows[2 * i]["layout"] == rows[2 * i + 1]["layout"] for i, n in enumerate(args.ckpts.split(","))}
            print("same layout:", same)
    res = RESULTS if args.ways == "before,after" else RESULTS.with_name(f"screen_budget_{args.ways.replace(',', '_')}.json")
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps({"rows": rows, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
