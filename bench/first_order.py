"""first_order: how much of a layout's val gap is first order (g_val . dw), and which calibration text can see it.

    PYTHONPATH=src python bench/first_order.py [--models taleef,nolanvild,patho] [--results bench/results/first_order.json]

The loss change of a quantized model is g . dw + 1/2 dw' H dw (dw = dequantized - raw weights, g the gradient of the
mean loss). KL on the model's own samples sees only the second term: under the model's own distribution the expected
gradient of its log-likelihood is zero. A model far from a minimum of the scored text has a large g there, and then
the first term can be most of the gap. This bench measures, per model:

  - the raw model's mean-loss gradient on the val tokens (for this analysis only: no layout is fitted to it), and
    on each calibration source the search can use: `self` (the search's own samples), `pydoc` (Python's docs, real
    text the FineWeb models never trained on; the pathological model trained on its pages), `train` (the model's own
    train shard, where MODELS has one); per source
    its cosine with the val gradient and between the two halves of its measured tokens;
  - per layout (the search at each records row's bytes, with its defaults and with `--objective nll` on real text:
    `--calib pydoc` for the FineWeb models, the pathological model's train shard for it;
    the records recipe with and without LQER): the fresh-load val gap, the first-order term g_val . dw in bpb,
    the rest (gap - first order: second order and up), and the first-order term each source's gradient predicts.

The records rows' bytes are read from bench/results/quant_gap.json (run quant_gap first). Timings carry the load
average. docs/search.md, "When delta NLL", says what the numbers mean for `--objective`.
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

from golfpack.budget.problem import self_calibration  # noqa: E402
from golfpack.budget.sensitivity import gradient_stats  # noqa: E402
from golfpack.model import build_model  # noqa: E402
from golfpack.packer.calibration import calib_halves, make_batch  # noqa: E402
from golfpack.tokenizer import build_luts  # noqa: E402
from quant_gap import MODELS, QG_TOKENS, REPO, RESULTS, chunk_scores, fresh_state, model_bench  # noqa: E402
from quant_gap_proto import calib_batches  # noqa: E402
from records_recipe import collect_hessians, quantize_records_recipe  # noqa: E402

SEQ = 256  # SearchConfig.calib_seq's default


def flat_dot(g: dict, d: dict) -> float:
    return sum(float((g[n] * d[n]).sum()) for n in d if n in g)


def cosine(a: dict, b: dict) -> float:
    names = [n for n in a if n in b]
    dot = sum(float((a[n] * b[n]).sum()) for n in names)
    na = math.sqrt(sum(float((a[n] ** 2).sum()) for n in names))
    nb = math.sqrt(sum(float((b[n] ** 2).sum()) for n in names))
    return dot / (na * nb) if na and nb else math.nan


def mean_grad(model, tokens, seq: int) -> dict:
    """The mean per-token loss gradient over non-overlapping windows of `tokens` (product code: the search's proxy)."""
    b = make_batch(tokens, (len(tokens) - 1) // (seq + 1), seq)
    return gradient_stats(model, b)[0]


def run_model(name: str) -> dict:
    import golfpack as gp

    m, sd, cfg, val, _, log, _ = model_bench(name, QG_TOKENS.get(name))
    sd = {k: v.float() for k, v in sd.items()}
    luts = build_luts(m["tok"], cfg.vocab_size)

    def bpb_of(state) -> tuple[float, float]:
        """(val_bpb, val target bytes) of a state dict."""
        nll, nb = chunk_scores(build_model(cfg, state), val, luts, m["seq"])
        return sum(nll) / (math.log(2) * sum(nb)), sum(nb)

    raw, nbytes = bpb_of(sd)
    ntok = (len(val) - 1) // m["seq"] * m["seq"]
    fac = ntok / (math.log(2) * nbytes)  # mean nats/token -> bpb over these val tokens
    model = build_model(cfg, sd)
    g = {"val": mean_grad(model, val, m["seq"])}
    rec = {r["family"]: r["bytes"] for r in json.loads(RESULTS.read_text())[name]["rows"] if r["family"] in ("records", "records+lqer")}
    cache = tempfile.mkdtemp(prefix="first-order-")
    layouts: dict[str, dict] = {}
    rows = []
    # the defaults (self samples, or the pathological model's train shard) and delta NLL on real text: pydoc for the
    # FineWeb models, which never trained on it; the pathological model's own train shard (it trained on pydoc pages)
    searches = {"search": {"calib": m["calib"] or "self"},
                f"search_{'train' if m['calib'] else 'pydoc'}_nll": {"calib": m["calib"] or "pydoc", "objective": "nll"}}
    for fam, over in searches.items():
        for label, budget in rec.items():
            t = time.perf_counter()
            c = gp.SearchConfig(budget=budget, tokenizer=m["tok"], cache_dir=cache, progress=False, **over)
            res = gp.search(str(m["ckpt"]), c)
            layouts[f"{fam} = {label}"] = {k: v.float() for k, v in fresh_state(res.artifact).items()}
            rows.append({"layout": f"{fam} = {label}", "bytes": res.artifact.model_bytes, "search_s": round(time.perf_counter() - t, 1),
                         "load1": round(os.getloadavg()[0], 1), "joint_kl": res.chosen.joint_kl, "joint_delta_nll": res.chosen.joint_nll,
                         "first_order_note": bool(res.notes)})
            if over["calib"] == "self" and "self" not in g:
                g["self"] = halves_grads(model, str(self_calibration(res.problem, c)), m["tok"], g)
            log(f"{fam} @ {label}: {rows[-1]['bytes']:,} B")
    H = collect_hessians(model, calib_batches(16, m["seq"], shards=m["calib"]))
    for lq in (False, True):
        name = "records+lqer" if lq else "records"
        layouts[name] = {k: v.float() for k, v in quantize_records_recipe(sd, H, lqer=lq)[0].items()}
        rows.append({"layout": name, "bytes": rec[name]})
    g["pydoc"] = halves_grads(model, "pydoc", m["tok"], g)
    if m["calib"]:
        g["train"] = halves_grads(model, m["calib"], m["tok"], g)
    sources = {k: {"cos_val": v["cos_val"], "cos_halves": v["cos_halves"], "tokens": v["tokens"]} for k, v in g.items() if k != "val"}
    for r in rows:
        lay = layouts[r["layout"]]
        d = {n: lay[n] - sd[n] for n in sd if n in lay}
        r["gap"] = bpb_of(lay)[0] - raw
        r["first_order_val"] = flat_dot(g["val"], d) * fac
        r["rest"] = r["gap"] - r["first_order_val"]
        r["first_order_by"] = {k: flat_dot(v["grad"], d) * fac for k, v in g.items() if k != "val"}
        log(f"{r['layout']}: gap {r['gap']:+.5f}, first order {r['first_order_val']:+.5f}, rest {r['rest']:+.5f}")
    return {"raw_val_bpb": raw, "val_tokens": int(len(val)), "sources": sources, "rows": rows,
            "note": "gradients of the raw model's mean loss; val's only for this analysis (no layout is fitted to it)"}


def halves_grads(model, source: str, tok: str, g: dict) -> dict:
    """A calibration source's gradient on the tokens the search measures on, with its two halves' agreement."""
    meas = calib_halves(source, tokenizer=tok)[0]
    h = len(meas) // 2
    a, b = mean_grad(model, meas[:h], SEQ), mean_grad(model, meas[h:], SEQ)
    full = {n: (a[n] + b[n]) / 2 for n in a}
    return {"grad": full, "cos_val": cosine(full, g["val"]), "cos_halves": cosine(a, b), "tokens": int(len(meas))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="taleef,nolanvild,patho")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "first_order.json")
    args = ap.parse_args()
    out = json.loads(args.results.read_text()) if args.results.exists() else {}
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}: one of {', '.join(sorted(MODELS))}")
        out[name] = run_model(name)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(out, indent=1) + "\n")
    for name, r in out.items():
        srcs = list(r["sources"])
        print(f"\n### {name} (raw {r['raw_val_bpb']:.4f}, {r['val_tokens']:,} val tokens)\n")
        print("| source | cos with val gradient | cos between its halves |\n|---|---|---|")
        for k, v in r["sources"].items():
            print(f"| {k} | {v['cos_val']:.3f} | {v['cos_halves']:.3f} |")
        print("\n| layout | bytes | gap | first order (val) | rest | " + " | ".join(f"first order ({k})" for k in srcs) + " |")
        print("|---|---|---|---|---|" + "---|" * len(srcs))
        for row in r["rows"]:
            print(f"| {row['layout']} | {row['bytes']:,} | {row['gap']:+.5f} | {row['first_order_val']:+.5f} | {row['rest']:+.5f} | "
                  + " | ".join(f"{row['first_order_by'][k]:+.5f}" for k in srcs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
