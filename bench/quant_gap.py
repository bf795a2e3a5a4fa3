"""quant_gap: fresh-load val_bpb gap of golfpack's quantizers at equal bytes, per model (issue #12).

    PYTHONPATH=src python bench/quant_gap.py --model samtruss|nolanvild|taleef|patho|patho_topics|patho_docs [--families a,b] [--table]

For each model: the raw val_bpb (the model as loaded), then for each quantizer family the member (bit
width of the block matrices, from LADDER) with the most bits whose real QGv3 artifact fits each byte
target - the `int6+tok8` artifact's size (T) and 85% of it - packed by golfpack, written to a file,
loaded fresh (`load_any`) and evaluated on the first official val tokens (seq_len 1024; nolanvild and Taleef7 262,145,
SamTruss 32,769, --tokens to change; the pathological models, seq_len 128, all of their own demo val shard: `patho`, the
default recipe of bench/train_pathological.py, ~98K tokens; `patho_topics`, stop 14's topic-pages-only model, 11,580;
`patho_docs`, that model on ~267K tokens of stdlib docstrings it never saw, bench/patho_corpus.py). Every
score is kept per chunk of CHUNK_SEQS windows, so each search row also gets its ratio to the records row at its
bytes with a paired bootstrap 90% interval over chunks (the gaps of two layouts of one model on the same tokens
move together; the interval says how much of a difference is the eval's sampling). Members are tried from the widest down, so a
family costs a few packs. Families (embedding spec / block-matrix spec at b bits; 1-D and control
tensors fp16, as every int6-family preset):

    quantile   int8 / int<b>              the seed-exact rule (b = 6 is the int6+tok8 preset)
    mse        int8:mse / int<b>:mse
    sdclip     int8:mse / int<b>:sd12
    g32, g64, g128  int8:mse / int<b>:g32|g64|g128  (absmax scale per 32/64/128 input columns)
    gptq       int8:mse+gptq / int<b>:mse+gptq              (GPTQ act-order; the tied embedding through
    gptq_g64   int8:mse+gptq / int<b>:g64+gptq               the LM-head input's Hessian)
    gptq_lqer      int8:mse+gptq / int<b>:mse+gptq+lqer4     GPTQ + LQER: a rank-4 int8 correction of every
    gptq_g64_lqer  int8:mse+gptq / int<b>:g64+gptq+lqer4     block matrix's GPTQ residual (docs/qgv3.md 8b)
    records    bench/records_recipe.py (GPTQ act-order, SDClip k 12/13, GPTQ'd int8 k=20 embedding;
               +lqer: rank 4 on the 3 worst tensors), at ITS OWN size (an lzma estimate, no QGv3 file)
    search     `golfpack.search` with its defaults (self-calibration; the patho model: its train shard) at
               budget = each target and each records row's bytes, one measurement cache per model;
               --search-gptq-calib pydoc: the same searches with GPTQ Hessians from the records' own
               calibration text (family search_pydoc_hessians); --search-calib pydoc --search-objective nll|auto:
               calibrated on real text the FineWeb models never trained on, damage judged by delta loss, or by KL
               and then delta loss where KL's answer loses mostly first order (families search_pydoc_nll,
               search_pydoc_auto; on the model's own calib shard search_auto; docs/search.md, "When delta NLL")

Hessians from pydoc pages (16 x 1024 sp1024 tokens) or, for the pathological model, its TRAIN shard -
never val. Results: bench/results/quant_gap.json and .md, and a bytes-vs-gap plot per model
(bench/results/quant_gap_<model>.png). Timings carry the load average (os.getloadavg()).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golfpack.evaluator.api import evaluate  # noqa: E402
from golfpack.formats.shards import load_tokens  # noqa: E402
from golfpack.loading import load_any  # noqa: E402
from golfpack.model import build_model  # noqa: E402
from golfpack.packer.pack import pack_state_dict  # noqa: E402
from golfpack.packer.policy import PRESETS, _layered  # noqa: E402
from golfpack.tokenizer import build_luts  # noqa: E402
from quant_gap_proto import TOK, VAL, calib_batches, records_store_sizes  # noqa: E402
from records_recipe import collect_hessians, quantize_records_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GOLFPACK_SHARED_DATA", "/work/shared/data"))
RESULTS = REPO / "bench" / "results" / "quant_gap.json"
# bench/train_pathological.py --out ... : its default recipe (topics+docstrings corpus), and the stop 14 one on the topic
# pages alone (--corpus topics --val-every 10), kept for the out-of-distribution experiment `patho_docs`
PATHO = Path(os.environ.get("GOLFPACK_PATHO", "/tmp/gp_patho5"))
PATHO_TOPICS = Path(os.environ.get("GOLFPACK_PATHO_TOPICS", "/tmp/gp_patho3"))
MODELS = {
    "samtruss": dict(ckpt=SHARED / "artifacts/SamTruss_873402c_final_model.int8.ptz", val=str(VAL), tok=str(TOK), seq=1024,
                     tokens=32_769, calib=None),
    "nolanvild": dict(ckpt=SHARED / "checkpoints/nolanvild_final_model.pt", val=str(VAL), tok=str(TOK), seq=1024, tokens=32_769,
                      calib=None),
    # barely trained (val_bpb 4.03): 2 layers, d64, 107,080 params, every tensor fp16/fp32 in its own .pt
    "taleef": dict(ckpt=SHARED / "checkpoints/Taleef7_final_model.pt", val=str(VAL), tok=str(TOK), seq=1024, tokens=32_769,
                   calib=None),
    "patho": dict(ckpt=PATHO / "run/final_model.pt", val=str(PATHO / "data/demo_val_*.bin"), tok=str(PATHO / "data/demo_bpe1024.model"),
                  seq=128, tokens=None, calib=str(PATHO / "data/demo_train_*.bin")),
    "patho_topics": dict(ckpt=PATHO_TOPICS / "run/final_model.pt", val=str(PATHO_TOPICS / "data/demo_val_*.bin"),
                         tok=str(PATHO_TOPICS / "data/demo_bpe1024.model"), seq=128, tokens=None,
                         calib=str(PATHO_TOPICS / "data/demo_train_*.bin")),
    # the topics model on text unlike its training text: stdlib docstrings (bench/patho_corpus.py --out PATHO_TOPICS)
    "patho_docs": dict(ckpt=PATHO_TOPICS / "run/final_model.pt", val=str(PATHO_TOPICS / "data/heldout_docs_*.bin"),
                       tok=str(PATHO_TOPICS / "data/demo_bpe1024.model"), seq=128, tokens=None,
                       calib=str(PATHO_TOPICS / "data/demo_train_*.bin")),
}
LADDER = (6, 5, 4, 3)
FAMILIES = {  # name -> (embedding spec, block-matrix spec with {b})
    "quantile": ("int8", "int{b}"),
    "mse": ("int8:mse", "int{b}:mse"),
    "sdclip": ("int8:mse", "int{b}:sd12"),
    "g32": ("int8:mse", "int{b}:g32"),
    "g64": ("int8:mse", "int{b}:g64"),
    "g128": ("int8:mse", "int{b}:g128"),
    "gptq": ("int8:mse+gptq", "int{b}:mse+gptq"),
    "gptq_g64": ("int8:mse+gptq", "int{b}:g64+gptq"),
    "gptq_lqer": ("int8:mse+gptq", "int{b}:mse+gptq+lqer4"),
    "gptq_g64_lqer": ("int8:mse+gptq", "int{b}:g64+gptq+lqer4"),
}
TARGETS = (1.0, 0.85)
# this bench's val tokens where they differ from MODELS (the other quant_gap-family benches keep those): at 32,769 the
# stop 13 search's nolanvild gaps at two budgets came out in the wrong order (docs/policies.md)
QG_TOKENS = {"nolanvild": 262_145, "taleef": 262_145}
CHUNK_SEQS = 4  # windows per chunk of the paired bootstrap (chunks are independent: windows do not overlap)
BOOT = 2000  # bootstrap resamples


def chunk_scores(model: Any, val: Any, luts: Any, seq: int, chunk_seqs: int = CHUNK_SEQS) -> tuple[list[float], list[int]]:
    """Summed NLL (nats) and target bytes per chunk of `chunk_seqs` non-overlapping windows of `val`: their sums
    give the same val_bpb as one evaluate() over all of `val` (the same windows, each scored once)."""
    step = seq * chunk_seqs
    nll, nbytes = [], []
    for i in range(0, len(val) - 1 - seq + 1, step):
        r = evaluate(model, val[i: i + step + 1], luts, seq_len=seq, batch_size=8)
        nll.append(r.val_loss * r.tokens)
        nbytes.append(r.bytes)
    return nll, nbytes


def fresh_state(art: Any) -> dict:
    """The artifact's tensors as a fresh process sees them: its bytes written to a file and loaded back (load_any)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.qg3"
        p.write_bytes(art.data)
        return load_any(p).state_dict


def gap_ratio(q: list[float], ref: list[float], raw: list[float], seed: int = 0) -> tuple[float, float, float]:
    """(gap(q) / gap(ref), 5th and 95th percentile of that ratio over BOOT resamples of the chunks, paired)."""
    import numpy as np

    dq, dr = np.asarray(q) - np.asarray(raw), np.asarray(ref) - np.asarray(raw)
    idx = np.random.default_rng(seed).integers(0, len(dq), size=(BOOT, len(dq)))
    ratios = dq[idx].sum(1) / dr[idx].sum(1)
    return float(dq.sum() / dr.sum()), float(np.percentile(ratios, 5)), float(np.percentile(ratios, 95))


class ModelBench(NamedTuple):
    """The shared setup of the quant_gap-family benches (model_bench)."""

    m: dict  # the MODELS entry
    sd: dict  # the state dict as loaded
    cfg: Any  # its ModelConfig
    val: Any  # the val tokens evaluated on
    ev: Callable[[dict], float]  # state dict -> val_bpb on `val`
    log: Callable[[str], None]  # print with elapsed seconds and the load average
    t0: float  # perf_counter at the start


def model_bench(model: str, tokens: int | None = None) -> ModelBench:
    """Load MODELS[model], its first `tokens` val tokens (default: the model's own count) and its byte LUTs."""
    m = MODELS[model]
    t0 = time.perf_counter()
    lm = load_any(m["ckpt"])
    sd, cfg = lm.state_dict, lm.config
    val = load_tokens(m["val"], m["tokens"] if tokens is None else tokens)
    luts = build_luts(m["tok"], cfg.vocab_size)

    def ev(state) -> float:
        return evaluate(build_model(cfg, state), val, luts, seq_len=m["seq"], batch_size=8).val_bpb

    def log(msg: str) -> None:
        print(f"[{model} {time.perf_counter() - t0:6.0f}s load {os.getloadavg()[0]:.1f}] {msg}", flush=True)

    return ModelBench(m, sd, cfg, val, ev, log, t0)


def policy(family: str, b: int):
    emb, mat = FAMILIES[family]
    m = mat.format(b=b)
    return _layered(f"{family}@int{b}", embed=emb, mlp=m, attn=m, other=m)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS))
    ap.add_argument("--families", default=",".join([*FAMILIES, "records", "presets", "search"]))
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--search-at", default="100%,85%,records,records+lqer",
                    help="the search rows' budgets: the int6+tok8 size (100%%), 85%% of it, the records rows' bytes")
    ap.add_argument("--tokens", type=int, default=None, help="val tokens (default: QG_TOKENS, else the model's MODELS count)")
    ap.add_argument("--search-gptq-calib", default=None,
                    help="the search's GPTQ Hessian tokens (SearchConfig.gptq_calib), e.g. pydoc: the records recipe's own "
                         "calibration text; its rows are family search_<it>_hessians, beside the default search's")
    ap.add_argument("--search-calib", default=None,
                    help="the search's calibration (SearchConfig.calib), e.g. pydoc; default: the model's MODELS calib, else self")
    ap.add_argument("--search-objective", default="kl", choices=("kl", "nll", "auto"), help="the search's objective (SearchConfig.objective)")
    ap.add_argument("--ladder", default=",".join(map(str, LADDER)), help="block-matrix widths to try, widest first")
    ap.add_argument("--results", type=Path, default=None, help="results JSON to write (default bench/results/quant_gap.json)")
    ap.add_argument("--table", action="store_true", help="only print the tables and draw the plots from the results file")
    ap.add_argument("--curves", action="store_true",
                    help="evaluate every width of every family, not only those that fit a target: the plot draws each "
                         "family's whole bytes-vs-gap curve (cheap on the small models; ~25 s an eval on nolanvild)")
    args = ap.parse_args()
    if args.results is not None:
        global RESULTS
        RESULTS = args.results
    if args.table:
        tables()
        return 0
    m, sd, cfg, val, ev, log, t0 = model_bench(args.model, args.tokens or QG_TOKENS.get(args.model))
    luts = build_luts(m["tok"], cfg.vocab_size)
    chunks: dict[str, list[float]] = {}  # row key -> summed NLL per chunk (the paired bootstrap's data)

    def evc(state, key: str) -> float:
        nll, nb = chunk_scores(build_model(cfg, state), val, luts, m["seq"])
        chunks[key] = nll
        return sum(nll) / (math.log(2) * sum(nb))

    def fresh(art, key: str) -> float:
        return evc(fresh_state(art), key)

    raw = evc(sd, "raw")
    assert abs(raw - ev(sd)) < 1e-6, "chunked scores must add up to the one-pass eval"
    log(f"raw {raw:.4f} ({len(chunks['raw'])} chunks of {CHUNK_SEQS} windows)")
    model = build_model(cfg, sd)
    H = collect_hessians(model, calib_batches(args.calib_seqs, m["seq"], shards=m["calib"]))
    del model
    log(f"{len(H)} hessians")
    want = set(args.families.split(","))
    rows: list[dict] = []
    packs: dict[tuple[str, int], tuple[int, list[str], float]] = {}  # (family, b) -> (bytes, warnings, pack s)
    evals: dict[tuple[str, int], float] = {}

    def pack(family: str, b: int):
        t = time.perf_counter()
        art = pack_state_dict(sd, policy(family, b), config=cfg, hessians=H)
        packs[(family, b)] = (len(art.data), art.warnings, round(time.perf_counter() - t, 1))
        return art

    base = pack("quantile", 6)
    T = len(base.data)
    evals[("quantile", 6)] = fresh(base, "quantile int6")
    log(f"int6+tok8: {T:,} bytes, gap {evals[('quantile', 6)] - raw:+.4f}")
    for fam in FAMILIES:
        if fam not in want:
            continue
        for frac in TARGETS:
            target = int(T * frac)
            chosen = None
            for b in [int(x) for x in args.ladder.split(",")]:
                if (fam, b) not in packs:
                    art = pack(fam, b)
                    if (fam, b) not in evals and (packs[(fam, b)][0] <= target or args.curves):
                        evals[(fam, b)] = fresh(art, f"{fam} int{b}")
                    log(f"{fam} int{b}: {packs[(fam, b)][0]:,} bytes" + (f", gap {evals[(fam, b)] - raw:+.4f}" if (fam, b) in evals else ""))
                if packs[(fam, b)][0] <= target:
                    chosen = b
                    break
            if chosen is None:
                rows.append({"family": fam, "target": frac, "target_bytes": target, "bits": None})
                continue
            nb, warns, ps = packs[(fam, chosen)]
            rows.append({"family": fam, "target": frac, "target_bytes": target, "bits": chosen, "bytes": nb,
                         "val_bpb": evals[(fam, chosen)], "gap": evals[(fam, chosen)] - raw, "pack_s": ps, "floor_warnings": len(warns)})
        for b in [int(x) for x in args.ladder.split(",")] if args.curves else []:  # the widths no target stopped at
            if (fam, b) not in evals:
                evals[(fam, b)] = fresh(pack(fam, b), f"{fam} int{b}")  # first pack: the target loop evaluates all it packs
                log(f"{fam} int{b} (curve): {packs[(fam, b)][0]:,} bytes, gap {evals[(fam, b)] - raw:+.4f}")
    if "presets" in want:
        for name in ("int6+tok8", "int6sd+tok8", "int6g+tok8"):
            art = pack_state_dict(sd, PRESETS[name], config=cfg)
            bpb = fresh(art, f"preset {name}")
            rows.append({"family": f"preset {name}", "target": None, "bytes": len(art.data), "val_bpb": bpb, "gap": bpb - raw,
                         "floor_warnings": len(art.warnings)})
            log(f"preset {name}: {len(art.data):,} bytes, gap {bpb - raw:+.4f}")
    if "records" in want:
        for lq in (False, True):
            dq, rep = quantize_records_recipe(sd, H, lqer=lq)
            bpb = evc(dq, "records" + ("+lqer" if lq else ""))
            nb = min(records_store_sizes(rep).values())
            rows.append({"family": "records" + ("+lqer" if lq else ""), "target": None, "bytes": nb, "val_bpb": bpb, "gap": bpb - raw,
                         "bytes_note": "lzma estimate of int8 containers + fp16 scales (no QGv3 file)"})
            log(f"records{'+lqer' if lq else ''}: ~{nb:,} bytes, gap {bpb - raw:+.4f}")
    allres = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    before = allres.get(args.model, {})
    if "search" in want:
        # golfpack's search (its defaults) at the byte targets and at the records recipe's own sizes (from this run or
        # the results file), one measurement cache for all budgets so the later ones reuse the first one's work.
        import golfpack as gp

        known = rows + [r for r in before.get("rows", []) if r["family"].startswith("records")]
        rec = {r["family"]: r["bytes"] for r in reversed(known) if r["family"].startswith("records")}
        budgets = [("100%", int(T)), ("85%", int(T * 0.85))] + [(f, b) for f, b in rec.items()]
        budgets = [(label, b) for label, b in budgets if label in args.search_at.split(",")]
        cache = tempfile.mkdtemp(prefix="qg-search-cache-")
        calib = args.search_calib or m["calib"] or "self"
        # a search off the defaults is a family of its own, named by what differs: search_pydoc_nll, search_pydoc_hessians
        fam = "_".join(["search", *([Path(calib).stem] if args.search_calib else []),
                        *([args.search_objective] if args.search_objective != "kl" else []),
                        *([f"{Path(args.search_gptq_calib).stem}_hessians"] if args.search_gptq_calib else [])])
        for label, budget in budgets:
            t = time.perf_counter()
            res = gp.search(str(m["ckpt"]), gp.SearchConfig(budget=budget, calib=calib, tokenizer=m["tok"], objective=args.search_objective,
                                                            gptq_calib=args.search_gptq_calib, cache_dir=cache, progress=False))
            art = res.artifact
            bpb = fresh(art, f"search {label}")
            frac = {"100%": 1.0, "85%": 0.85}.get(label)
            rows.append({"family": fam, "target": frac, "target_bytes": budget, "target_label": label, "bits": "mixed",
                         "bytes": art.model_bytes, "val_bpb": bpb, "gap": bpb - raw, "search_s": round(time.perf_counter() - t, 1),
                         "load1": round(os.getloadavg()[0], 1), "floor_warnings": len(art.warnings),
                         "layout": {n: sp.label() for n, sp in res.specs.items()}, "joint_kl": res.chosen.joint_kl if res.chosen else None,
                         "joint_delta_nll": res.chosen.joint_nll if res.chosen else None, "notes": res.notes})
            if label in chunks:  # a records row of this run: the ratio at its bytes, with the eval's sampling interval
                r, lo, hi = gap_ratio(chunks[f"search {label}"], chunks[label], chunks["raw"])
                rows[-1].update(ratio_vs=label, ratio=r, ratio_ci90=[lo, hi])
            log(f"search @ {label} ({budget:,} B): {art.model_bytes:,} bytes, gap {bpb - raw:+.4f}, {rows[-1]['search_s']} s")
    # a partial run (--families) replaces only its families' rows
    fams_run = {r["family"].split(" ")[0].split("+")[0] for r in rows}
    rows = rows + [r for r in before.get("rows", []) if r["family"].split(" ")[0].split("+")[0] not in fams_run]
    allres[args.model] = {"raw_val_bpb": raw, "chunk_windows": CHUNK_SEQS, "chunks": len(chunks["raw"]),
                          "int6_tok8_bytes": T, "val_tokens": int(len(val)), "seq_len": m["seq"],
                          "ladder": {f"{f} int{b}": v[0] for (f, b), v in packs.items()}, "rows": rows,
                          "curves": {f"{f} int{b}": [packs[(f, b)][0], v - raw] for (f, b), v in evals.items()}
                          if args.curves else before.get("curves", {}),
                          "seconds": round(time.perf_counter() - t0, 1), "loadavg_end": os.getloadavg()[0]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(allres, indent=1) + "\n")
    tables()
    return 0


def tables() -> None:
    allres = json.loads(RESULTS.read_text())
    md = ["# quant_gap: fresh-load gap at equal bytes (issue #12)", "",
          "`PYTHONPATH=src python bench/quant_gap.py --model M`; see the script's docstring for the families.", ""]
    for model, res in allres.items():
        md += [f"### {model} (raw val_bpb {res['raw_val_bpb']:.4f}; int6+tok8 artifact {res['int6_tok8_bytes']:,} bytes; "
               f"{res['val_tokens']:,} val tokens, seq_len {res['seq_len']}; {res['seconds']:.0f} s, load {res['loadavg_end']:.1f})", "",
               "| family | target | bits | bytes | val_bpb | gap | vs records at its bytes [90% interval] | floor warnings |",
               "|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            tgt = "" if r.get("target") is None else f"{r['target']:.0%} ({r['target_bytes']:,})"
            if r.get("target_label", "").startswith("records"):
                tgt = f"= {r['target_label']} ({r['target_bytes']:,})"
            if r.get("bits", 0) is None:
                md.append(f"| {r['family']} | {tgt} | none fits | | | | | |")
                continue
            ratio = f"{r['ratio']:.2f}x [{r['ratio_ci90'][0]:.2f}, {r['ratio_ci90'][1]:.2f}]" if "ratio" in r else ""
            md.append(f"| {r['family']} | {tgt} | {r.get('bits', '')} | {r['bytes']:,} | {r['val_bpb']:.4f} | {r['gap']:+.4f} | "
                      f"{ratio} | {r.get('floor_warnings', '')} |")
        md += [f"Note: {n}" for n in res.get("notes", [])]
        md.append("")
        plot(model, res)
    out = RESULTS.with_suffix(".md")
    out.write_text("\n".join(md) + "\n")
    print("\n".join(md))


def plot(model: str, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    fams = list(dict.fromkeys(r["family"] for r in res["rows"]))
    colour = {f: plt.get_cmap("tab20")(i % 20) for i, f in enumerate(fams)}
    seen = set()
    for r in res["rows"]:
        if r.get("gap") is None:
            continue
        marker = "s" if r.get("target") == 0.85 else "o"
        ax.scatter(r["bytes"] / 1e6, r["gap"], color=colour[r["family"]], marker=marker, s=30,
                   label=r["family"] if r["family"] not in seen else None)
        seen.add(r["family"])
    curves: dict[str, list[tuple[int, float]]] = {}  # family -> (bytes, gap) of every width evaluated (--curves)
    for key, (nb, gap) in res.get("curves", {}).items():
        curves.setdefault(key.split(" ")[0], []).append((nb, gap))
    for fam, pts in curves.items():
        pts.sort()
        ax.plot([b / 1e6 for b, _ in pts], [g for _, g in pts], color=colour.get(fam, "grey"), lw=0.7, alpha=0.6,
                marker=".", ms=3, label=None if fam in seen else fam)
    ax.axvline(res["int6_tok8_bytes"] / 1e6, color="grey", ls="--", lw=0.8)
    ax.axvline(0.85 * res["int6_tok8_bytes"] / 1e6, color="grey", ls=":", lw=0.8)
    ax.set_yscale("symlog", linthresh=1e-4)  # log both ways, linear within +-1e-4: a layout can beat the raw model
    ax.axhline(0, color="grey", lw=0.5)
    ax.margins(y=0.15)
    ax.set_xlabel("artifact bytes (MB)")
    ax.set_ylabel("fresh-load val_bpb gap (symlog: linear within +-1e-4)")
    ax.set_title(f"{model}: bytes vs gap (dashed: int6+tok8 size, dotted: 85%; squares: the 85% pick; lines: each "
                 "family's widths)" if curves else f"{model}: bytes vs gap (dashed: int6+tok8 size, dotted: 85%; squares: the 85% pick)",
                 fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: no point hidden under it
    fig.tight_layout()
    fig.savefig(RESULTS.parent / f"{RESULTS.stem}_{model}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
