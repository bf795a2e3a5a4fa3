"""Budget search vs fixed presets on real checkpoints: measured val_bpb at the bytes each takes.

For each checkpoint: raw val_bpb, then uniform int8, uniform int6 and int6+tok8 (seed PR #160's
layout) packed as QGv3 (same codec for all, lzma by default), then `golfpack search` at budgets that bind (fractions of the
int8 artifact, plus the int6+tok8 size itself). Every artifact is decoded from its bytes and scored on
the first --eval-tokens official val tokens; calibration uses Python's docs tokenized with sp1024
(never val). Prints a table and writes bench/results/search_frontier.json.

    python bench/search_frontier.py                          # nolanvild (+ --tiny runs/tiny/final_model.pt)
    python bench/search_frontier.py --tiny PATH --fractions 0.55,0.45,0.35
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SP1024 = SHARED / "tokenizers" / "fineweb_1024_bpe.model"
VAL = SHARED / "text" / "fineweb_val_000000_first1040298tok.bin"


def score_fn(config, val_tokens, luts, seq_len):
    from golfpack.evaluator.api import evaluate
    from golfpack.model import build_model

    toks = torch.from_numpy(np.asarray(val_tokens, dtype=np.int64))

    def score(sd):
        model = build_model(config, sd)
        r = evaluate(model, toks, luts, seq_len=seq_len, stride=None, batch_size=16, device="cpu")
        return float(r.val_loss), float(r.val_bpb)

    return score


def bench_checkpoint(label, path, activation, seq_len, fractions, args, calib="pydoc", heldout=None):
    from golfpack.evaluator.api import build_luts
    from golfpack.formats.qgv3 import decode_qgv3
    from golfpack.formats.shards import load_tokens
    from golfpack.packer.pack import load_input, pack_state_dict
    from golfpack.packer.policy import Policy
    from golfpack.packer.search import SearchConfig, run_search

    sd, config, _ = load_input(path, activation=activation)
    val = load_tokens(str(VAL), args.eval_tokens)
    score = score_fn(config, val, build_luts(str(SP1024), config.vocab_size), seq_len)
    raw_loss, raw_bpb = score(sd)
    # optional second scorer: held-out text of the checkpoint's own training domain (not val)
    score_ho = None
    if heldout:
        score_ho = score_fn(config, load_tokens(heldout), build_luts(str(SP1024), config.vocab_size), seq_len)
        ho_raw = score_ho(sd)[1]
    print(f"\n== {label}: {path} ({sum(t.numel() for t in sd.values()):,} params, {config.activation}, eval seq {seq_len}) raw val_bpb {raw_bpb:.5f}", flush=True)
    presets = {}
    for name in ("int8", "int6", "int6+tok8"):
        res = pack_state_dict(sd, Policy.preset(name), codec=args.codec, config=config)
        loss, bpb = score(decode_qgv3(res.data).state_dict())
        presets[name] = {"bytes": res.model_bytes, "codec": res.codec, "val_loss": loss, "val_bpb": bpb, "gap": bpb - raw_bpb}
        if score_ho:
            presets[name]["heldout_gap"] = score_ho(decode_qgv3(res.data).state_dict())[1] - ho_raw
        print(f"  preset {name:<10} {res.model_bytes:>9,} B ({res.codec})  val_bpb {bpb:.5f}  gap {bpb - raw_bpb:+.5f}"
              + (f"  held-out gap {presets[name]['heldout_gap']:+.5f}" if score_ho else ""), flush=True)
    int8_bytes = presets["int8"]["bytes"]
    t6 = presets["int6+tok8"]
    budgets = [(f"{f:.0%} of int8", int(f * int8_bytes)) for f in fractions]
    budgets.append(("= int6+tok8 bytes", t6["bytes"]))
    rows = []
    cache = Path(args.cache) / label
    for i, (blabel, budget) in enumerate(budgets):
        t0 = time.perf_counter()
        cfg = SearchConfig(
            budget=budget, calib=calib, tokenizer=str(SP1024), cache_dir=str(cache),
            sensitivity="both" if i == 0 else "direct", calib_batch=args.calib_batch, calib_seq=args.calib_seq,
            progress=not args.quiet, activation=activation, codecs=(args.codec,),
        )
        res = run_search(path, cfg)
        data = res.problem.encode(res.choice, res.codec)
        assert len(data) == res.model_bytes <= budget
        qsd = decode_qgv3(data).state_dict()
        loss, bpb = score(qsd)
        gap = bpb - raw_bpb
        row = {
            "budget_label": blabel, "budget": budget, "bytes": res.model_bytes, "headroom": res.headroom, "codec": res.codec,
            "val_loss": loss, "val_bpb": bpb, "gap": gap, "gap_ratio_vs_int6tok8": gap / t6["gap"] if t6["gap"] else None,
            "predicted_delta_loss": res.predicted_loss, "seconds": time.perf_counter() - t0,
            # the test: lower measured val_bpb than the preset, at equal or fewer bytes
            "lower_bpb_than_int6": bpb < presets["int6"]["val_bpb"],
            "lower_bpb_than_int6tok8": bpb < t6["val_bpb"],
            "bytes_le_int6": res.model_bytes <= presets["int6"]["bytes"],
            "bytes_le_int6tok8": res.model_bytes <= t6["bytes"],
            "layout_counts": _counts(res.specs), "chosen_from": res.chosen.source if res.chosen else None,
            "alternatives": [a.to_dict() for a in res.alternatives],
        }
        if score_ho:
            row["heldout_gap"] = score_ho(qsd)[1] - ho_raw
        if res.sens.get("agreement"):
            row["proxy_vs_direct"] = res.sens["agreement"]
        rows.append(row)
        print(f"  search @ {blabel:<17} budget {budget:>9,}: {res.model_bytes:>9,} B (headroom {res.headroom:,}, {res.codec}) "
              f"val_bpb {bpb:.5f} gap {gap:+.5f}  gap/int6+tok8 gap = {row['gap_ratio_vs_int6tok8']:.3f}"
              + (f"  held-out gap {row['heldout_gap']:+.5f}" if score_ho else "") + f"  [{row['seconds']:.0f}s]", flush=True)
    return {"label": label, "path": str(path), "activation": config.activation, "eval_seq_len": seq_len, "calib": calib,
            "heldout": heldout, "heldout_raw_bpb": ho_raw if score_ho else None,
            "eval_tokens": len(val), "raw_val_loss": raw_loss, "raw_val_bpb": raw_bpb, "presets": presets, "search": rows}


def _counts(specs):
    out = {}
    for s in specs.values():
        out[s.label()] = out.get(s.label(), 0) + 1
    return out


def print_table(results):
    print("\nmeasured val_bpb (fresh decode of each artifact, first %d official val tokens)" % results[0]["eval_tokens"])
    hdr = f"{'checkpoint':<14} {'layout':<30} {'bytes':>9} {'val_bpb':>9} {'gap':>9} {'gap/(3)':>8}  {'vs (2) int6':<22} {'vs (3) int6+tok8':<22}"
    print(hdr)
    print("-" * len(hdr))

    def verdict(lower, le_bytes):
        return ("lower bpb" if lower else "HIGHER bpb") + (", <= bytes" if le_bytes else ", more bytes")

    for r in results:
        t6gap = r["presets"]["int6+tok8"]["gap"]
        print(f"{r['label']:<14} {'raw':<30} {'':>9} {r['raw_val_bpb']:>9.5f}")
        for i, name in enumerate(("int8", "int6", "int6+tok8"), 1):
            p = r["presets"][name]
            print(f"{'':<14} {f'({i}) {name}':<30} {p['bytes']:>9,} {p['val_bpb']:>9.5f} {p['gap']:>+9.5f} {p['gap'] / t6gap if t6gap else float('nan'):>8.3f}")
        for x in r["search"]:
            print(f"{'':<14} {'(4) search @ ' + x['budget_label']:<30} {x['bytes']:>9,} {x['val_bpb']:>9.5f} {x['gap']:>+9.5f} {x['gap_ratio_vs_int6tok8']:>8.3f}  "
                  f"{verdict(x['lower_bpb_than_int6'], x['bytes_le_int6']):<22} {verdict(x['lower_bpb_than_int6tok8'], x['bytes_le_int6tok8']):<22}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nolanvild", default=str(SHARED / "checkpoints" / "nolanvild_final_model.pt"))
    ap.add_argument("--tiny", default=None, help="a checkpoint trained by `golfpack train --config tiny` (final_model.pt)")
    ap.add_argument("--tiny-activation", default=None)
    ap.add_argument("--tiny-seq-len", type=int, default=128)
    ap.add_argument("--tiny-calib", default="pydoc", help="calibration for the tiny checkpoint: its TRAIN shard glob, or pydoc")
    ap.add_argument("--tiny-heldout", default=None, help="held-out shard of the tiny checkpoint's own training text (extra, in-domain score)")
    ap.add_argument("--fractions", default="0.55,0.45,0.35")
    ap.add_argument("--codec", default="lzma", help="artifact codec for presets and search alike")
    ap.add_argument("--eval-tokens", type=int, default=65_537)
    ap.add_argument("--calib-batch", type=int, default=8)
    ap.add_argument("--calib-seq", type=int, default=256)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "golfpack_search_cache"), help="measurement cache (reused across budgets/runs)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "search_frontier.json"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fractions = [float(x) for x in args.fractions.split(",")]
    results = []
    if args.nolanvild:
        results.append(bench_checkpoint("nolanvild", args.nolanvild, "relu3", 256, fractions, args))
    if args.tiny:
        results.append(bench_checkpoint("golfpack-tiny", args.tiny, args.tiny_activation, args.tiny_seq_len, fractions, args,
                                        calib=args.tiny_calib, heldout=args.tiny_heldout))
    print_table(results)
    from golfpack._io import write_bytes_atomic

    write_bytes_atomic(args.out, (json.dumps({"results": results}, indent=2) + "\n").encode())
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
