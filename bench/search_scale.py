"""How `golfpack search` (defaults) and `pack --codec lzma|best` scale with model size, and old vs new search.

Checkpoints: the baseline family (d512, MLP 3x, vocab 1024, 1/2/4/9 layers = 2.9M/5.2M/10.0M/21.8M parameters;
`--sizes 36M` adds 11 layers MLP 4x vocab 8192). Their weights are SYNTHETIC: every matrix row copies the per-row
std distribution and tail weight (kurtosis) of the same matrix kind in the trained nolanvild checkpoint (the maker
of bench/pack_bytes.py, generalised to any shape); control tensors keep their init values.

Each job runs in its own process (clean peak RSS); a sampling thread records RSS and CPU seconds (this process and
its finished workers) so each phase gets its wall, CPU and peak RSS; the load average is read beside each row.
"old" is the search as it was before the scale work (commit OLD_COMMIT, extracted with `git archive` into a temp
folder and imported from there), run only for the sizes in --old-sizes and cut off after --old-timeout seconds.

    python bench/search_scale.py [--sizes 2.9M,5.2M,10M,21.8M] [--old-sizes 2.9M] [--jobs search,old,pack] [--old-commit REV]
    python bench/search_scale.py --sizes 21.8M --jobs search      # one whole default search: the per-phase table + JSON
    python bench/search_scale.py --sizes 36M                       # per-phase old vs new (--mode phases)
--jobs implies --mode e2e (whole searches in child processes); without it the default is --mode phases. In e2e each
phase row has the wall/CPU the search itself reports (`cpu_seconds`, its own peak-RSS high-water mark) beside the
sampled ones. Prints a table and writes bench/results/search_scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GOLFPACK_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results" / "search_scale.json"
OLD_COMMIT = "3196fde"  # the last commit before the prefix cache / screen / pooled cost tables
SIZES = {  # name -> (layers, dim, mlp hidden, vocab)
    "2.9M": (1, 512, 1536, 1024),
    "5.2M": (2, 512, 1536, 1024),
    "10M": (4, 512, 1536, 1024),
    "21.8M": (9, 512, 1536, 1024),
    "36M": (11, 512, 2048, 8192),
}
PHASES = ("floor", "calibration", "costs", "sensitivity", "fit", "select")


def make_checkpoint(size: str, path: Path) -> int:
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from golfpack.formats.checkpoint import load_state_dict
    from pack_bytes import row_stats, synthetic_baseline

    stats = row_stats(load_state_dict(SHARED / "checkpoints/nolanvild_final_model.pt"))
    L, d, hidden, vocab = SIZES[size]
    sd = synthetic_baseline(stats, 0, layers=L, dim=d, hidden=hidden, vocab=vocab)
    torch.save(sd, path)
    return sum(int(t.numel()) for t in sd.values())


# ------------------------------------------------------------------------------------------------
# child: one job, sampled


class Sampler:
    """(wall, rss bytes, cpu seconds, 1-minute load average) every `dt` seconds, in a thread."""

    def __init__(self, dt: float = 0.1) -> None:
        self.samples: list[tuple[float, int, float, float]] = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, args=(dt,), daemon=True)

    def snap(self) -> None:
        o = os.times()
        rss = 0
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        self.samples.append((time.perf_counter(), rss, o.user + o.system + o.children_user + o.children_system, os.getloadavg()[0]))

    def run(self, dt: float) -> None:
        while not self.stop.wait(dt):
            self.snap()

    def window(self, a: float, b: float) -> dict:
        inside = [s for s in self.samples if a <= s[0] <= b] or [min(self.samples, key=lambda s: abs(s[0] - b))]
        before = max((s for s in self.samples if s[0] <= a), key=lambda s: s[0], default=inside[0])
        return {"peak_rss_mb": max(s[1] for s in inside) / 2**20, "cpu_s": inside[-1][2] - before[2],
                "load1": sum(s[3] for s in inside) / len(inside)}


def child(job: str, ckpt: str, budget: int, codec: str) -> dict:
    import torch

    sm = Sampler()
    sm.snap()
    sm.t.start()
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    out: dict = {"job": job, "load_start": load0}
    if job in ("search", "old"):
        try:
            from golfpack.budget import SearchConfig, run_search
        except ModuleNotFoundError:  # the old commit, from before golfpack.search was renamed golfpack.budget
            from golfpack.search import SearchConfig, run_search  # type: ignore[no-redef]

        r = run_search(ckpt, SearchConfig(budget=budget, progress=False))
        phases, at = {}, t0
        for ph in PHASES:  # the phases run back to back in this order
            w = r.timings[ph]
            phases[ph] = {"wall_s": w, **sm.window(at, at + w)}
            if getattr(r, "cpu_timings", None):
                phases[ph]["cpu_s_reported"] = r.cpu_timings[ph]
            if getattr(r, "peak_rss", None):
                phases[ph]["peak_rss_mb_reported"] = r.peak_rss[ph]
            at += w
        out.update(phases=phases, model_bytes=r.model_bytes, layout=r.report()["layout"],
                   screen=r.sens.get("screen"), agreement=r.sens.get("agreement"),
                   alternatives=r.report().get("alternatives"), chosen_from=r.report().get("chosen_from"),
                   fits={c: {"packs": f.packs, "trace": f.trace} for c, f in r.fits.items()},
                   exact_packs={c: len(v) for c, v in getattr(r.problem, "sizes", {}).items()})
    else:
        import golfpack

        art = golfpack.pack(ckpt, codec=codec)
        out.update(model_bytes=art.model_bytes)
    sm.stop.set()
    sm.snap()
    out.update(wall_s=time.perf_counter() - t0, cpu_s=sm.samples[-1][2] - sm.samples[0][2],
               peak_rss_mb=max(s[1] for s in sm.samples) / 2**20, load_end=os.getloadavg()[0], threads=torch.get_num_threads())
    return out


# ------------------------------------------------------------------------------------------------
# phases: old vs new per phase on one problem, in one process (what fits a busy 2-core box)


def _clock() -> tuple[float, float]:
    o = os.times()
    return time.perf_counter(), o.user + o.system + o.children_user + o.children_system


def _lap(c0: tuple[float, float], **extra) -> dict:
    w, c = _clock()
    out = {"wall_s": w - c0[0], "cpu_s": c - c0[1], "load1": os.getloadavg()[0], **extra}
    print(f"  {out}", file=sys.stderr, flush=True)
    return out


def phases(size: str, ckpt: Path, budget: int, *, sample: int, self_sequences: int, workers: int) -> dict:
    """The default search's phases on one checkpoint: calibration, quantize every candidate once, cost tables
    (a sample of records encoded in-process = the old way, the same sample through the pool), the proxy, the
    screen, and direct measurement (a sample of candidates by full forward = old, by prefix cache = new; the
    phase totals are the per-candidate rates times the candidates each way measures: EXTRAPOLATED, labelled)."""
    import random

    from golfpack.budget import SearchConfig
    from golfpack.budget import costs as C
    from golfpack.budget import sensitivity as S
    from golfpack.budget.problem import load_problem, self_calibration
    from golfpack.packer.calibration import calib_halves, make_batch

    cfg = SearchConfig(budget=budget, progress=False, self_sequences=self_sequences)
    out: dict = {"size": size, "self_sequences": self_sequences}
    c0 = _clock()
    p = load_problem(ckpt, cfg)
    out["load"] = _lap(c0)
    c0 = _clock()
    shard = self_calibration(p, cfg)
    p.pin_calibration(str(shard))
    out["calibration"] = _lap(c0, note=f"self, {self_sequences} sequences (default 128)")
    cands = [(n, s) for n in p.names for s in p.candidates[n]]
    out["candidates"] = len(cands)
    c0 = _clock()
    p.gptq_hessians()
    out["hessians"] = _lap(c0)
    c0 = _clock()
    for n, s in cands:
        p.record(n, s)
    out["quantize_all_once"] = _lap(c0)
    rng = random.Random(0)
    samp = rng.sample(cands, min(sample, len(cands)))
    c0 = _clock()
    sizes_old = {(n, s.label()): p.alone_bytes(n, s, "lzma") for n, s in samp}
    old = _lap(c0)
    p.alone.clear()
    sub = {n: [s for m, s in samp if m == n] for n in {n for n, _ in samp}}
    p2 = type(p)(**{**p.__dict__, "candidates": {n: sub.get(n, []) for n in p.names}, "alone": {}})
    C.POOL_MIN_NUMEL = 0
    from golfpack.budget.cache import Cache

    c0 = _clock()
    t = C.cost_tables(p2, ["lzma"], Cache(None), progress=False, workers=workers)["lzma"]
    new = _lap(c0)
    assert all(t[n][lbl] == b for (n, lbl), b in sizes_old.items()), "pooled cost entries differ from in-process ones"
    k = len(cands) / len(samp)
    out["cost_tables"] = {"sample": len(samp), "old_sample": old, "new_sample": new, "workers": workers,
                          "old_extrapolated_wall_s": old["wall_s"] * k, "new_extrapolated_wall_s": new["wall_s"] * k}
    # proxy (new path runs it first; old ran it too, with sensitivity 'both')
    toks = calib_halves(str(shard))[0]
    batch = make_batch(toks, cfg.calib_batch, cfg.calib_seq, vocab_size=p.config.vocab_size)
    from golfpack.model import build_model

    model = build_model(p.config, p.state_dict)
    values = lambda n, s: p.record(n, s).dequantize()  # noqa: E731
    c0 = _clock()
    pb = make_batch(toks, cfg.proxy_batch, cfg.calib_seq, vocab_size=p.config.vocab_size)
    _, fisher = S.gradient_stats(model, pb, sample=True)
    proxy = S.proxy_deltas(p.state_dict, fisher, p.candidates, values=values)
    out["proxy"] = _lap(c0)
    from golfpack.budget.costs import _payload_estimate

    # payload bytes stand in for the cost table here (the bench encodes only a sample of it)
    table = {n: {s.label(): int(_payload_estimate(p.state_dict[n], s)) for s in p.candidates[n]} for n in p.names}
    keep, smp = S.screen(table, proxy, margin=cfg.screen_margin, sample=cfg.screen_sample)
    kept = sum(len(v) for v in keep.values()) + len(smp)
    out["screen"] = {"candidates": len(cands), "measured": kept, "sampled": len(smp), "cost_stand_in": "payload bytes"}
    # the budget-aware screen (the search's own since h-screen): the proxy solved at the budget, in payload bytes
    # shifted by the floor layout's exact pack (artifact = payload + b)
    from golfpack.budget.screen import budget_screen

    fl, _, fch = C.floor_bytes(p, ["lzma"])
    tb = budget - (fl - sum(table[n][p.candidates[n][j].label()] for n, j in zip(p.names, fch)))
    scr = budget_screen(table, S.regularize(proxy), tb, margin=cfg.screen_margin, max_direct=cfg.max_direct,
                        sample=cfg.screen_sample)
    out["budget_screen"] = {"measured": sum(map(len, scr.wanted().values())), "eligible": scr.eligible, "capped": scr.capped,
                            "sampled": len(scr.sample), "max_direct": cfg.max_direct, "cost_stand_in": "payload bytes + floor offset"}
    # direct: per-candidate cost old (full forward) vs new (prefix cache), on a sample spread over the layers
    ref = S.reference_logprobs(model, batch)
    pc = S.PrefixCache(model, batch)
    params = dict(model.named_parameters())
    dsamp = rng.sample([(n, s) for n, s in cands if s.kind == "int"], min(sample // 2, len(cands)))
    res = {"old": [0.0, 0.0], "new": [0.0, 0.0]}
    diffs = []
    for n, s in dsamp:
        prm = params[n]
        orig = prm.data.clone()
        prm.data.copy_(values(n, s).float())
        a0 = _clock()
        full = S.batch_scores(model, batch, ref)
        a1 = _clock()
        fast = pc.scores(n, ref)
        a2 = _clock()
        prm.data.copy_(orig)
        res["old"][0] += a1[0] - a0[0]
        res["old"][1] += a1[1] - a0[1]
        res["new"][0] += a2[0] - a1[0]
        res["new"][1] += a2[1] - a1[1]
        diffs.append(max(abs(full[0] - fast[0]), abs(full[1] - fast[1])))
    m = len(dsamp)
    out["direct"] = {
        "sample": m, "max_abs_diff_prefix_vs_full": max(diffs),
        "old_per_candidate_wall_s": res["old"][0] / m, "old_per_candidate_cpu_s": res["old"][1] / m,
        "new_per_candidate_wall_s": res["new"][0] / m, "new_per_candidate_cpu_s": res["new"][1] / m,
        "old_extrapolated_wall_s": res["old"][0] / m * len(cands),
        "new_extrapolated_wall_s": res["new"][0] / m * kept,
        "load1": os.getloadavg()[0],
    }
    return out


def direct_rates(size: str, ckpt: Path, *, per_layer: int = 1) -> dict:
    """Direct measurement only, per candidate: full forward (old) vs prefix cache (new), int6 candidates of one matrix
    per layer plus the embedding, on the default 16 x 256 calibration batch of seeded random token ids (timing only)."""
    import numpy as np

    from golfpack.budget import sensitivity as S
    from golfpack.formats.spec import TensorSpec
    from golfpack.model import build_model
    from golfpack.packer.calibration import make_batch
    from golfpack.packer.pack import load_input
    from golfpack.packer.quantize import fake_quantize

    sd, config, _ = load_input(ckpt)
    model = build_model(config, sd).eval()
    toks = np.random.default_rng(0).integers(0, config.vocab_size, size=16 * 257 * 2).astype(np.int64)
    batch = make_batch(toks, 16, 256, vocab_size=config.vocab_size)
    c0 = _clock()
    ref = S.reference_logprobs(model, batch)
    setup_ref = _lap(c0)
    c0 = _clock()
    pc = S.PrefixCache(model, batch)
    setup_pc = _lap(c0)
    params = dict(model.named_parameters())
    rows = []
    names = [f"blocks.{i}.mlp.fc.weight" for i in range(config.num_layers)] + ["tok_emb.weight"]
    for n in names:
        prm = params[n]
        orig = prm.data.clone()
        prm.data.copy_(fake_quantize(sd[n], TensorSpec("int", bits=6, clip="quantile")).float())
        a0 = _clock()
        full = S.batch_scores(model, batch, ref)
        old = _lap(a0)
        a1 = _clock()
        fast = pc.scores(n, ref)
        new = _lap(a1)
        prm.data.copy_(orig)
        rows.append({"tensor": n, "old": old, "new": new, "abs_diff": max(abs(full[0] - fast[0]), abs(full[1] - fast[1]))})
    return {"size": size, "setup_ref": setup_ref, "setup_prefix_cache": setup_pc, "rows": rows}


# ------------------------------------------------------------------------------------------------
# parent


def run_job(job: str, ckpt: Path, budget: int, codec: str, timeout: float, pythonpath: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        res = Path(f.name)
    cmd = [sys.executable, __file__, "--child", job, "--ckpt", str(ckpt), "--budget", str(budget), "--codec", codec, "--child-out", str(res)]
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    try:
        p = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": pythonpath}, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"job": job, "timed_out": True, "wall_s": time.perf_counter() - t0, "load_start": load, "load_end": os.getloadavg()[0]}
    if p.returncode != 0:
        return {"job": job, "error": p.stderr[-2000:], "wall_s": time.perf_counter() - t0}
    return json.loads(res.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2.9M,5.2M,10M,21.8M")
    ap.add_argument("--old-sizes", default="2.9M")
    ap.add_argument("--old-timeout", type=float, default=900.0)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--jobs", default=None, help="e2e jobs: search,old,pack (default all three; implies --mode e2e)")
    ap.add_argument("--old-commit", default=OLD_COMMIT, help="the commit 'old' runs (git archive of its src/golfpack)")
    ap.add_argument("--budget-frac", type=float, default=0.7, help="budget = this x parameters (bytes): binds between int5 and int6")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--mode", default=None, choices=("phases", "e2e", "direct"),
                    help="phases: old vs new per phase, one process; e2e: whole searches (default: e2e with --jobs, else phases)")
    ap.add_argument("--sample", type=int, default=24, help="phases: records encoded / candidates measured per way")
    ap.add_argument("--self-sequences", type=int, default=72, help="phases: self-calibration sequences (search default 128; 66 at least)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--child", default=None)
    ap.add_argument("--ckpt")
    ap.add_argument("--budget", type=int)
    ap.add_argument("--codec", default="lzma")
    ap.add_argument("--child-out")
    ap.add_argument("--merge", default=None, help="e2e results JSONs (comma-separated) to combine into --out: one table, one growth fit")
    args = ap.parse_args(argv)
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge.split(",")]
        merged = {**parts[0], "rows": [r for p in parts for r in p["rows"]], "merged_from": args.merge.split(",")}
        report(merged)
        Path(args.out).write_text(json.dumps(merged, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    if args.mode is None:
        args.mode = "e2e" if args.jobs else "phases"
    args.jobs = args.jobs or "search,old,pack"
    if args.child:
        import torch

        torch.set_num_threads(int(os.environ.get("GOLFPACK_BENCH_THREADS", "2")))
        Path(args.child_out).write_text(json.dumps(child(args.child, args.ckpt, args.budget, args.codec)))
        return 0
    if args.mode == "direct":
        import torch

        torch.set_num_threads(2)
        tmp = Path(tempfile.mkdtemp(prefix="golfpack-scale-"))
        res = {"bench": "search_scale/direct", "weights": "synthetic: per-row std/kurtosis of the trained nolanvild checkpoint", "rows": []}
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            ckpt = tmp / f"scale_{size}.pt"
            n = make_checkpoint(size, ckpt)
            print(f"# {size}: {n:,} parameters (synthetic weights copying nolanvild's per-row statistics)", file=sys.stderr)
            r = direct_rates(size, ckpt)
            r["params"] = n
            res["rows"].append(r)
            Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
            print(f"{'size':>6} {'tensor':<26} {'old wall':>9} {'old cpu':>8} {'new wall':>9} {'new cpu':>8} {'load1':>6} {'|diff|':>8}")
            for x in r["rows"]:
                print(f"{size:>6} {x['tensor']:<26} {x['old']['wall_s']:>9.2f} {x['old']['cpu_s']:>8.2f} {x['new']['wall_s']:>9.2f} "
                      f"{x['new']['cpu_s']:>8.2f} {x['new']['load1']:>6.2f} {x['abs_diff']:>8.1e}")
        return 0
    if args.mode == "phases":
        import torch

        torch.set_num_threads(2)
        tmp = Path(tempfile.mkdtemp(prefix="golfpack-scale-"))
        res: dict = {"bench": "search_scale/phases", "weights": "synthetic: per-row std/kurtosis of the trained nolanvild checkpoint, per matrix kind",
                     "cores": os.cpu_count(), "rows": []}
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            ckpt = tmp / f"scale_{size}.pt"
            n = make_checkpoint(size, ckpt)
            print(f"# {size}: {n:,} parameters (synthetic weights copying nolanvild's per-row statistics)", file=sys.stderr)
            r = phases(size, ckpt, int(args.budget_frac * n), sample=args.sample, self_sequences=args.self_sequences, workers=args.workers)
            r["params"] = n
            res["rows"].append(r)
            Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
            print(json.dumps(r, indent=1), file=sys.stderr)
        _phase_table(res["rows"])
        return 0
    jobs = args.jobs.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="golfpack-scale-"))
    new_path = str(REPO / "src")
    old_path = ""
    if "old" in jobs:
        old = tmp / "old"
        old.mkdir()
        arch = subprocess.run(["git", "-C", str(REPO), "archive", args.old_commit, "src/golfpack"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=arch, check=True)
        old_path = str(old / "src")
    rows = []
    results: dict = {"bench": "search_scale", "weights": "synthetic: per-row std/kurtosis of the trained nolanvild checkpoint, per matrix kind",
                     "old_commit": args.old_commit, "cores": os.cpu_count(), "rows": rows}

    def save() -> None:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        ckpt = tmp / f"scale_{size}.pt"
        n = make_checkpoint(size, ckpt)
        budget = int(args.budget_frac * n)
        print(f"# {size}: {n:,} parameters (synthetic weights copying nolanvild's per-row statistics), budget {budget:,}", file=sys.stderr)
        todo = []
        if "search" in jobs:
            todo.append(("search", "default", args.timeout, new_path))  # the search's own default codecs
        if "old" in jobs and size in args.old_sizes.split(","):
            todo.append(("old", "default", args.old_timeout, old_path))
        if "pack" in jobs:
            todo += [("pack", c, args.timeout, new_path) for c in ("lzma", "lzma+rans", "best")]
        for job, codec, tmo, pp in todo:
            r = run_job(job, ckpt, budget, codec, tmo, pp)
            r.update(size=size, params=n, budget=budget, codec=codec)
            rows.append(r)
            save()
            print(json.dumps({k: r.get(k) for k in ("size", "job", "codec", "wall_s", "cpu_s", "peak_rss_mb", "load_start", "timed_out")}),
                  file=sys.stderr)
    report(results)
    save()
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def report(results: dict) -> None:
    """The per-phase table, the growth exponents (stored in `results`) and old vs new, from `results['rows']`."""
    rows = results["rows"]
    print(f"{'size':>6} {'params':>11} {'job':<12} {'phase':<12} {'wall s':>9} {'cpu s':>9} {'cpu rep':>8} {'peak MB':>8} {'load1':>6}")
    for r in rows:
        name = r["job"] + (f":{r['codec']}" if r["job"] == "pack" else "")
        if r.get("timed_out") or r.get("error"):
            print(f"{r['size']:>6} {r['params']:>11,} {name:<12} {'(timed out)' if r.get('timed_out') else '(error)':<12} {r['wall_s']:>9.1f}")
            continue
        head = f"{r['size']:>6} {r['params']:>11,} {name:<12}"
        for ph, v in (r.get("phases") or {}).items():
            rep = v.get("cpu_s_reported")
            print(f"{head} {ph:<12} {v['wall_s']:>9.1f} {v['cpu_s']:>9.1f} {'' if rep is None else f'{rep:.1f}':>8} {v['peak_rss_mb']:>8.0f} "
                  f"{v.get('load1', r['load_start']):>6.2f}")
        print(f"{head} {'TOTAL':<12} {r['wall_s']:>9.1f} {r['cpu_s']:>9.1f} {'':>8} {r['peak_rss_mb']:>8.0f} {r['load_start']:>6.2f}")
    # growth exponents: wall ~ params^k, least squares in log-log over the sizes that finished
    fits = {}
    for job in ("search", "pack:lzma", "pack:lzma+rans", "pack:best"):
        pts = [(r["params"], r["wall_s"]) for r in rows if (r["job"] + (f":{r['codec']}" if r["job"] == "pack" else "")) == job
               and not r.get("timed_out") and not r.get("error")]
        if len(pts) >= 2:
            xs, ys = [math.log(x) for x, _ in pts], [math.log(y) for _, y in pts]
            xm, ym = sum(xs) / len(xs), sum(ys) / len(ys)
            fits[job] = sum((x - xm) * (y - ym) for x, y in zip(xs, ys)) / sum((x - xm) ** 2 for x in xs)
            print(f"growth exponent {job}: wall ~ params^{fits[job]:.2f}")
    results["growth_exponent"] = fits
    for size in {r["size"] for r in rows if r["job"] == "old"}:
        o = next(r for r in rows if r["size"] == size and r["job"] == "old")
        nw = next((r for r in rows if r["size"] == size and r["job"] == "search"), None)
        if nw and not o.get("timed_out") and not o.get("error"):
            same = o.get("layout") == nw.get("layout")
            print(f"old vs new at {size}: {o['wall_s']:.0f} s -> {nw['wall_s']:.0f} s wall ({o['wall_s'] / nw['wall_s']:.1f}x), "
                  f"{o['cpu_s']:.0f} -> {nw['cpu_s']:.0f} CPU s; same layout: {same}; bytes {o['model_bytes']:,} vs {nw['model_bytes']:,}")


def _phase_table(rows: list[dict]) -> None:
    print(f"{'size':>6} {'params':>11} {'phase':<26} {'wall s':>9} {'cpu s':>9} {'load1':>6}  note")
    for r in rows:
        for ph in ("load", "calibration", "hessians", "quantize_all_once", "proxy"):
            v = r[ph]
            print(f"{r['size']:>6} {r['params']:>11,} {ph:<26} {v['wall_s']:>9.1f} {v['cpu_s']:>9.1f} {v['load1']:>6.2f}  {v.get('note', '')}")
        c = r["cost_tables"]
        for way in ("old", "new"):
            v = c[f"{way}_sample"]
            print(f"{r['size']:>6} {r['params']:>11,} {'cost tables ' + way + ' (sample)':<26} {v['wall_s']:>9.1f} {v['cpu_s']:>9.1f} {v['load1']:>6.2f}"
                  f"  {c['sample']} records; all {r['candidates']}: ~{c[way + '_extrapolated_wall_s']:.0f} s wall")
        d = r["direct"]
        for way in ("old", "new"):
            n = r["candidates"] if way == "old" else r["screen"]["measured"]
            print(f"{r['size']:>6} {r['params']:>11,} {'direct ' + way + ' per candidate':<26} {d[way + '_per_candidate_wall_s']:>9.2f} "
                  f"{d[way + '_per_candidate_cpu_s']:>9.2f} {d['load1']:>6.2f}  x {n} candidates = ~{d[way + '_extrapolated_wall_s']:.0f} s wall")
        print(f"{r['size']:>6} {r['params']:>11,} {'prefix vs full max |diff|':<26} {d['max_abs_diff_prefix_vs_full']:.1e}")


if __name__ == "__main__":
    sys.exit(main())
