"""Budget search vs fixed presets: fresh-load val_bpb of each artifact at the bytes it takes.

Per checkpoint: the raw score, then uniform int8, uniform int6 and int6+tok8 (seed PR #160's layout)
packed as QGv3 (one codec for all, lzma by default), then `golfpack search` at budgets that BIND:
fractions of the smaller of the int6 / int6+tok8 artifacts, so every search artifact takes equal or
fewer bytes than both presets it is compared with. One more search runs at exactly the int6+tok8 size
(that row is compared with int6+tok8 only). Every artifact is scored in a fresh process by
`golfpack verify --eval` (the same path a submission's score takes).

Checkpoints:
- nolanvild (real, trained on FineWeb): scored on the first --eval-tokens official val tokens;
  calibration = `--calib self`, text sampled from the model itself (we hold no FineWeb train text,
  and never calibrate on val).
- --trained DIR (made by bench/train_code_model.py with golfpack itself): calibration = its TRAIN
  shards, scored on its held-out shard (files it never saw), as val_bpb of that domain.

    python bench/train_code_model.py --out runs/code-model
    python bench/search_frontier.py --trained runs/code-model

Prints a table and writes bench/results/search_frontier.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SP1024 = SHARED / "tokenizers" / "fineweb_1024_bpe.model"
VAL = SHARED / "text" / "fineweb_val_000000_first1040298tok.bin"
PRESETS = ("int8", "int6", "int6+tok8")


def bench_checkpoint(label: str, path: str, *, activation: str | None, seq_len: int, val: str, calib: str, fractions: list[float],
                     args: argparse.Namespace, work: Path) -> dict:
    from golfpack.budget import SearchConfig, run_search
    from golfpack.evaluator.api import evaluate_path
    from golfpack.evaluator.verify import EvalOptions, verify_artifact
    from golfpack.packer.pack import pack_file
    from golfpack.packer.policy import Policy

    ev = EvalOptions(val=val, tokenizer=str(SP1024), seq_len=seq_len, max_tokens=args.eval_tokens)

    def fresh_score(artifact: Path) -> dict:
        rep = verify_artifact(artifact, eval_options=ev, activation=activation)
        assert rep["ok"], rep["problems"]
        return rep["post"]

    raw = evaluate_path(path, val=val, tokenizer=str(SP1024), seq_len=seq_len, max_tokens=args.eval_tokens, activation=activation)
    print(f"\n== {label}: {path} (eval seq {seq_len}, {raw.tokens:,} tokens of {val}) raw val_bpb {raw.val_bpb:.5f}", flush=True)
    presets = {}
    for name in PRESETS:
        out = work / f"{label}-{name}.qg3"
        res = pack_file(path, out, policy=Policy.preset(name), codec=args.codec, activation=activation)
        post = fresh_score(out)
        presets[name] = {"bytes": res.model_bytes, "codec": res.codec, "val_loss": post["val_loss"], "val_bpb": post["val_bpb"],
                         "gap": post["val_bpb"] - raw.val_bpb}
        print(f"  preset {name:<10} {res.model_bytes:>9,} B  val_bpb {post['val_bpb']:.5f}  gap {presets[name]['gap']:+.5f}", flush=True)
    t6 = presets["int6+tok8"]
    bind = min(presets["int6"]["bytes"], t6["bytes"])
    which = "int6" if presets["int6"]["bytes"] <= t6["bytes"] else "int6+tok8"
    budgets = [(f"{f:.0%} of {which} bytes", int(f * bind)) for f in fractions]
    budgets.append(("= int6+tok8 bytes", t6["bytes"]))
    rows = []
    for i, (blabel, budget) in enumerate(budgets):
        t0 = time.perf_counter()
        cfg = SearchConfig(budget=budget, calib=calib, tokenizer=str(SP1024), cache_dir=str(Path(args.cache) / label),
                           calib_batch=args.calib_batch, calib_seq=args.calib_seq, progress=None, activation=activation,
                           codecs=(args.search_codec or args.codec,), screen=not args.no_screen)
        res = run_search(path, cfg)
        out = work / f"{label}-search-{i}.qg3"
        out.write_bytes(res.problem.encode(res.choice, res.codec))
        assert out.stat().st_size == res.model_bytes <= budget
        post = fresh_score(out)
        bpb = post["val_bpb"]
        gap = bpb - raw.val_bpb
        vs = {}
        for name in ("int6", "int6+tok8"):
            p = presets[name]
            vs[name] = {"lower_bpb": bpb < p["val_bpb"], "bytes_le": res.model_bytes <= p["bytes"]}
            vs[name]["pass"] = vs[name]["lower_bpb"] and vs[name]["bytes_le"]
        row = {
            "budget_label": blabel, "budget": budget, "bytes": res.model_bytes, "headroom": res.headroom, "codec": res.codec,
            "val_loss": post["val_loss"], "val_bpb": bpb, "gap": gap, "gap_ratio_vs_int6tok8": gap / t6["gap"] if t6["gap"] else None,
            "predicted_delta_loss": res.predicted_loss, "seconds": round(time.perf_counter() - t0, 1), "vs": vs,
            "layout_counts": _counts(res.specs), "layout": {n: sp.label() for n, sp in res.specs.items()},  # to re-score it later
            "chosen_from": res.chosen.source if res.chosen else None,
            "alternatives": [a.to_dict() for a in res.alternatives], "proxy_vs_direct": res.sens.get("agreement"),
            "screen": {k: v for k, v in (res.sens.get("screen") or {}).items() if k not in ("proxy_choice", "mu")},
        }
        rows.append(row)
        print(f"  search @ {blabel:<22} {budget:>9,}: {res.model_bytes:>9,} B (headroom {res.headroom:,}) val_bpb {bpb:.5f} "
              f"gap {gap:+.5f}  gap/(3) {row['gap_ratio_vs_int6tok8']:.3f}  [{row['seconds']:.0f}s]", flush=True)
    return {"label": label, "path": str(path), "activation": activation, "eval_seq_len": seq_len, "val": val, "calib": calib,
            "eval_tokens": raw.tokens, "raw_val_loss": raw.val_loss, "raw_val_bpb": raw.val_bpb, "presets": presets, "search": rows}


def compare(new: list[dict], old: list[dict], old_name: str) -> list[dict]:
    """Per checkpoint and budget label found in both: the fresh-load gaps and their ratio new/old (printed)."""
    rows = []
    print(f"\ngap vs {old_name} (ratio new/old; the target is <= 1.03)")
    for r in new:
        prev = {x["budget_label"]: x for o in old if o["label"] == r["label"] for x in o["search"]}
        for x in r["search"]:
            o = prev.get(x["budget_label"])
            if o is None:
                continue
            ratio = x["gap"] / o["gap"] if o["gap"] > 0 else None
            rows.append({"label": r["label"], "budget_label": x["budget_label"], "budget_old": o["budget"], "budget_new": x["budget"],
                         "gap_old": o["gap"], "gap_new": x["gap"], "ratio": ratio})
            print(f"  {r['label']:<10} {x['budget_label']:<22} budget {o['budget']:>9,} -> {x['budget']:>9,}  gap {o['gap']:+.5f} -> "
                  f"{x['gap']:+.5f}  x{ratio:.3f}" if ratio is not None else "")
    return rows


def _counts(specs: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in specs.values():
        out[s.label()] = out.get(s.label(), 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def print_table(results: list[dict]) -> None:
    hdr = f"{'checkpoint':<12} {'layout':<34} {'bytes':>9} {'val_bpb':>9} {'gap':>9} {'gap/(3)':>8}  {'vs (2) int6':<14} {'vs (3) int6+tok8':<16}"
    print("\nfresh-load val_bpb of every artifact (golfpack verify --eval)")
    print(hdr)
    print("-" * len(hdr))

    def verdict(v: dict | None) -> str:
        if v is None:
            return "-"
        if not v["bytes_le"]:
            return "(more bytes)"
        return "PASS" if v["lower_bpb"] else "FAIL"

    for r in results:
        t6gap = r["presets"]["int6+tok8"]["gap"]
        print(f"{r['label']:<12} {'raw':<34} {'':>9} {r['raw_val_bpb']:>9.5f}")
        for i, name in enumerate(PRESETS, 1):
            p = r["presets"][name]
            print(f"{'':<12} {f'({i}) {name}':<34} {p['bytes']:>9,} {p['val_bpb']:>9.5f} {p['gap']:>+9.5f} {p['gap'] / t6gap:>8.3f}")
        for x in r["search"]:
            print(f"{'':<12} {'(4) search @ ' + x['budget_label']:<34} {x['bytes']:>9,} {x['val_bpb']:>9.5f} {x['gap']:>+9.5f} "
                  f"{x['gap_ratio_vs_int6tok8']:>8.3f}  {verdict(x['vs']['int6']):<14} {verdict(x['vs']['int6+tok8']):<16}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nolanvild", default=str(SHARED / "checkpoints" / "nolanvild_final_model.pt"), help="'' to skip")
    ap.add_argument("--trained", default=None, help="folder written by bench/train_code_model.py")
    ap.add_argument("--fractions", default="1.0,0.95,0.9", help="budgets as fractions of the smaller of the int6 / int6+tok8 artifacts")
    ap.add_argument("--codec", default="lzma", help="artifact codec for presets and search alike")
    ap.add_argument("--search-codec", default=None, help="the search's codec when it differs (e.g. lzma+rans), the presets "
                    "(and so the budgets) staying on --codec: the same bytes as an earlier run, a better coder")
    ap.add_argument("--eval-tokens", type=int, default=65_537)
    ap.add_argument("--calib-batch", type=int, default=16)
    ap.add_argument("--calib-seq", type=int, default=256)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "golfpack_search_cache"), help="measurement cache (reused across budgets/runs)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "search_frontier.json"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-screen", action="store_true", help="SearchConfig(screen=False): measure every candidate directly")
    ap.add_argument("--compare", default=None, help="an earlier results JSON: print each budget's gap ratio new/old (target <= 1.03)")
    ap.add_argument("--merge", default=None, help="results JSONs (comma-separated) to combine into --out instead of running")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fractions = [float(x) for x in args.fractions.split(",")]
    results = []
    if args.merge:  # checkpoints run separately (e.g. side by side on a 2-core box), one results file
        for f in args.merge.split(","):
            results += json.loads(Path(f).read_text())["results"]
        meta = {"merged_from": args.merge.split(",")}
        if args.compare:
            meta["vs"] = compare(results, json.loads(Path(args.compare).read_text())["results"], args.compare)
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.nolanvild:
            results.append(bench_checkpoint("nolanvild", args.nolanvild, activation="relu3", seq_len=256, val=str(VAL),
                                            calib="self", fractions=fractions, args=args, work=work))
        if args.trained:
            d = Path(args.trained)
            results.append(bench_checkpoint("golfpack", str(d / "run" / "final_model.pt"), activation=None, seq_len=256,
                                            val=str(d / "shards" / "code_heldout_*.bin"), calib=str(d / "shards" / "code_train_*.bin"),
                                            fractions=fractions, args=args, work=work))
    print_table(results)
    from golfpack._io import write_bytes_atomic

    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "codec": args.codec,
            "search_codec": args.search_codec or args.codec, "fractions": fractions}
    if args.compare:
        meta["vs"] = compare(results, json.loads(Path(args.compare).read_text())["results"], args.compare)
    write_bytes_atomic(args.out, (json.dumps({"meta": meta, "results": results}, indent=2) + "\n").encode())
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
