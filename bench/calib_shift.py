"""calib_shift: does the search's own judgement of a layout (KL on its held-out calibration tokens) order layouts the
way a val set does, when the val text is or is not like the calibration text?

    PYTHONPATH=src python bench/calib_shift.py [--model patho_topics] [--calib train|self] [--budgets 160797,175386,...]

For each budget: `golfpack.search` (one measurement cache per calibration source), then, with every tensor of the
chosen layout quantized at once, (a) KL(raw || quantized) per token on `--heldout` sequences of the held-out half of
the calibration tokens (the search's select step measures 32 of them), and (b) the val_bpb gap on each val set of
`--vals` (quant_gap MODELS entries sharing the checkpoint: the model's own val shard, and text it never saw).
Stop 15 ran it on stop 14's pathological model (topic pages only, 10 epochs over its train shard) against its own
val pages (`patho_topics`) and stdlib docstrings (`patho_docs`): docs/policies.md, "Stop 15".
Writes bench/results/calib_shift.json (--results to change).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from golfpack.budget import sensitivity as S  # noqa: E402
from golfpack.budget.problem import self_calibration  # noqa: E402
from golfpack.formats.shards import load_tokens  # noqa: E402
from golfpack.loading import load_any  # noqa: E402
from golfpack.model import build_model  # noqa: E402
from golfpack.packer.calibration import calib_halves, make_batch  # noqa: E402
from golfpack.tokenizer import build_luts  # noqa: E402
from quant_gap import MODELS, REPO, chunk_scores  # noqa: E402

SEQ = 256  # SearchConfig.calib_seq's default: the held-out KL is measured as the search measures it


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="patho_topics", choices=sorted(MODELS))
    ap.add_argument("--vals", default="patho_topics,patho_docs", help="MODELS entries whose val sets to score (same checkpoint)")
    ap.add_argument("--calib", default="train", help="train: the model's MODELS calib shard; self: the search's default")
    ap.add_argument("--budgets", default="160797,175386,182180,189174", help="search budgets (bytes)")
    ap.add_argument("--heldout", type=int, default=200, help="held-out calibration sequences for the KL")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "calib_shift.json")
    args = ap.parse_args()
    import golfpack as gp

    m = MODELS[args.model]
    calib = m["calib"] if args.calib == "train" else args.calib
    lm = load_any(m["ckpt"])
    luts = build_luts(m["tok"], lm.config.vocab_size)
    vals = {k: load_tokens(MODELS[k]["val"], MODELS[k]["tokens"]) for k in args.vals.split(",")}

    def val_bpb(sd: dict, k: str) -> float:
        nll, nb = chunk_scores(build_model(lm.config, sd), vals[k], luts, MODELS[k]["seq"])
        return sum(nll) / (math.log(2) * sum(nb))

    raw = {k: val_bpb(lm.state_dict, k) for k in vals}
    cache = tempfile.mkdtemp(prefix="calib-shift-")
    rows, ref = [], None
    for budget in [int(b) for b in args.budgets.split(",")]:
        t = time.perf_counter()
        cfg = gp.SearchConfig(budget=budget, calib=calib, tokenizer=m["tok"], cache_dir=cache, progress=False)
        res = gp.search(str(m["ckpt"]), cfg)
        p = res.problem
        if ref is None:  # calib 'self': the search's samples (self_calibration finds the shard it wrote)
            held = calib_halves(str(self_calibration(p, cfg)) if calib == "self" else calib, tokenizer=m["tok"])[1]
            batch = make_batch(held, min(args.heldout, len(held) // (SEQ + 1)), SEQ, vocab_size=p.vocab_size)
            ref = S.reference_logprobs(p.build(), batch)
        sd = {n: p.record(n, res.specs[n]).dequantize() for n in p.names}
        _, kl = S.batch_scores(p.build(sd), batch, ref)
        rows.append({"budget": budget, "bytes": res.model_bytes, "select_joint_kl": res.chosen.joint if res.chosen else None,
                     "heldout_kl": kl, "heldout_seqs": batch.inputs.shape[0],
                     **{f"gap_{k}": val_bpb(sd, k) - raw[k] for k in vals}, "search_s": round(time.perf_counter() - t, 1),
                     "load1": round(os.getloadavg()[0], 1)})
        print(" ".join(f"{k} {v:.5f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    out = json.loads(args.results.read_text()) if args.results.exists() else {}
    out[f"{args.model} calib={args.calib}"] = {"raw_val_bpb": raw, "val_tokens": {k: int(len(v)) for k, v in vals.items()}, "rows": rows}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=1) + "\n")
    print("| budget | bytes | held-out KL | " + " | ".join(f"gap {k}" for k in vals) + " |")
    for r in rows:
        print(f"| {r['budget']:,} | {r['bytes']:,} | {r['heldout_kl']:.4f} | " + " | ".join(f"{r[f'gap_{k}']:+.4f}" for k in vals) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
