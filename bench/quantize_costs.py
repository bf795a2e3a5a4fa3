"""Issue 10, phases 1 and 3 of `golfpack search`: quantize every candidate once, and the cost tables, old vs new.

Synthetic baseline-family checkpoints (bench/search_scale.py's make_checkpoint: every matrix row copies the per-row
statistics of the trained nolanvild checkpoint) and SYNTHETIC GPTQ Hessians (random correlated activations, same for
old and new): this times quantization and pricing, not calibration. Each side runs in its own process, one after
the other; load average beside each row.

- quantize, old: the code at OLD (before this work), candidate by candidate, on a sample of tensors (extrapolated by
  candidate count x numel); new: Problem.quantize_all (GPTQ candidates of a tensor batched), all of it, in a pool.
- costs, old: every record encoded alone (a sample, extrapolated); new: cost_tables(estimate=True) in full, then
  the estimate's relative error against real one-record encodes of a random sample of the estimated entries.

    python bench/quantize_costs.py [--sizes 2.9M,21.8M] [--sides old,new] [--workers 2] [--sample 12]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD = os.environ.get("GOLFPACK_OLD_SRC", "/tmp/costs/old/src")  # `git archive b2e3a81 src` extracted here


def _clock() -> tuple[float, float]:
    o = os.times()
    return time.perf_counter(), o.user + o.system + o.children_user + o.children_system


def _lap(c0: tuple[float, float], **extra) -> dict:
    w, c = _clock()
    return {"wall_s": round(w - c0[0], 2), "cpu_s": round(c - c0[1], 2), "load1": round(os.getloadavg()[0], 2), **extra}


def _problem(ckpt: str):
    from dataclasses import replace

    import torch

    from golfpack.budget.config import SearchConfig
    from golfpack.budget.problem import load_problem

    p = load_problem(ckpt, SearchConfig(budget=16_000_000, calib="synthetic"))
    g = torch.Generator().manual_seed(0)
    hs = {}
    for n, c in p.candidates.items():
        if any(s.needs_hessian for s in c):
            cols = p.state_dict[n].shape[1]
            x = torch.randn(1024, cols, generator=g) * torch.rand(cols, generator=g)
            hs[n] = (2.0 / 1024) * x.T @ x
    p.hessians = hs
    p.calibration = replace(p.calibration, digest="synthetic")
    return p


def child(side: str, ckpt: str, workers: int, sample: int) -> dict:
    import torch

    p = _problem(ckpt)
    cands = sum(len(v) for v in p.candidates.values())
    out: dict = {"candidates": cands, "params": sum(int(t.numel()) for t in p.state_dict.values())}
    rng = random.Random(0)
    if side == "old":
        from golfpack.packer.quantize import quantize_tensor

        mats = [n for n in p.names if p.state_dict[n].ndim == 2]
        names = rng.sample(mats, min(2, len(mats)))
        c0 = _clock()
        done = 0
        for n in names:
            for s in p.candidates[n]:
                quantize_tensor(n, p.state_dict[n], s, p.hessians.get(n) if s.needs_hessian else None)
                done += p.state_dict[n].numel()
        total = sum(p.state_dict[n].numel() * len(p.candidates[n]) for n in p.names)
        out["quantize"] = _lap(c0, sampled_tensors=names, extrapolated_by=round(total / done, 2))
        recs = [(n, s) for n in names for s in p.candidates[n]]
        keys = rng.sample(recs, min(sample, len(recs)))
        c0 = _clock()
        for n, s in keys:
            p.alone_bytes(n, s, "lzma")
        done = sum(p.state_dict[n].numel() for n, _ in keys)
        total = sum(p.state_dict[n].numel() * len(p.candidates[n]) for n in p.names)
        out["costs"] = _lap(c0, sampled_records=len(keys), extrapolated_by=round(total / done, 2))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from golfpack.budget import costs
    from golfpack.budget.cache import Cache

    c0 = _clock()
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=costs._worker_init) as pool:
        p.quantize_all(pool if workers > 1 else None)
    out["quantize"] = _lap(c0)
    c0 = _clock()
    table = costs.cost_tables(p, ["lzma"], Cache(None), progress=False, workers=workers, estimate=True)["lzma"]
    out["costs"] = _lap(c0, real_encodes=len(p.alone))
    est_keys = [(n, s) for n in p.names for s in p.candidates[n] if (n, s.label(), "lzma") not in p.alone]
    keys = rng.sample(est_keys, min(sample, len(est_keys)))
    errs = []
    for n, s in keys:
        real = p.alone_bytes(n, s, "lzma")
        errs.append((table[n][s.label()] - real) / real)
    a = sorted(abs(e) for e in errs)
    out["estimate_error"] = {"checked": len(errs), "median_abs_rel": round(a[len(a) // 2], 4) if a else None,
                             "max_abs_rel": round(a[-1], 4) if a else None, "mean_rel": round(sum(errs) / max(1, len(errs)), 4)}
    rss = [line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM")]
    out["peak_rss_main"] = rss[0].split(None, 1)[1] if rss else None
    del torch
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2.9M,21.8M")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sample", type=int, default=12)
    ap.add_argument("--sides", default="old,new", help="old,new or one of them (old takes minutes per size)")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "CKPT"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "quantize_costs.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.workers, args.sample)))
        return 0
    sys.path.insert(0, str(REPO / "bench"))
    import search_scale as ss

    rows = []
    for size in args.sizes.split(","):
        ckpt = Path(f"/tmp/costs/ck_{size}.pt")
        if not ckpt.exists():
            ss.make_checkpoint(size, ckpt)
        row = {"size": size}
        for side, src in (("old", OLD), ("new", str(REPO / "src"))):
            if side not in args.sides.split(","):
                continue
            env = {**os.environ, "PYTHONPATH": src}
            r = subprocess.run([sys.executable, __file__, "--child", side, str(ckpt), "--workers", str(args.workers),
                                "--sample", str(args.sample)], env=env, capture_output=True, text=True, check=False)
            if r.returncode:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            row[side] = json.loads(r.stdout.strip().splitlines()[-1])
            print(size, side, json.dumps(row[side]), flush=True)
        rows.append(row)
    args.out.write_text(json.dumps({"bench": "quantize_costs", "cores": os.cpu_count(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
