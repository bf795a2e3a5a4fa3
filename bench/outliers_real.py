"""outliers_real: `+out<k>` in the REAL format (QGv3 OUTLIERS stream, fresh load) against the same bytes spent otherwise.

    PYTHONPATH=src python bench/outliers_real.py --model nolanvild [--configs int4:g64,int4:g64+out3,...] [--calib-seqs 16]

bench/outliers.py simulated the side stream (lower-bound bytes); this packs every config with golfpack's packer
(embedding int8:mse, every block matrix the config, as bench/subscales.py), writes the artifact, loads it fresh and
evaluates on the first 32,769 val tokens. The rows compare, at real artifact bytes, outliers on int4:g64 (with and
without GPTQ) against finer groups (g32) and one more bit (int5). `per_kb` is the bpb a row gains over its base per
1,000 extra bytes. Results: bench/results/outliers_real.json (load average beside each timing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golfpack.formats.qgv3 import read_qgv3  # noqa: E402
from golfpack.loading import load_any  # noqa: E402
from golfpack.model import build_model  # noqa: E402
from golfpack.packer.pack import pack_state_dict  # noqa: E402
from quant_gap import model_bench  # noqa: E402
from quant_gap_proto import calib_batches  # noqa: E402
from records_recipe import collect_hessians  # noqa: E402
from subscales import policy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "outliers_real.json"
CONFIGS = ("int4:g64,int4:g64+out1,int4:g64+out3,int4:g64+out10,int4:g32,int5:g64,"
           "int4:g64+gptq,int4:g64+gptq+out3,int4:g64+gptq+out10,int4:g32+gptq")


def base_of(cfg: str) -> str:
    """The config without its +out<k> (what an outlier row is compared with)."""
    return "+".join(p for p in cfg.split("+") if not p.startswith("out"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("samtruss", "nolanvild"), required=True)
    ap.add_argument("--configs", default=CONFIGS)
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32_769)
    args = ap.parse_args()
    m, sd, cfg, val, ev, log, t0 = model_bench(args.model, args.tokens)
    raw = ev(sd)
    log(f"raw {raw:.4f}")
    configs = args.configs.split(",")
    H = None
    if any("gptq" in c for c in configs):
        model = build_model(cfg, sd)
        H = collect_hessians(model, calib_batches(args.calib_seqs, m["seq"], shards=m["calib"]))
        del model
        log(f"{len(H)} hessians")
    rows: dict[str, dict] = {}
    for c in configs:
        t = time.perf_counter()
        art = pack_state_dict(sd, policy(c), config=cfg, hessians=H)
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "m.qg3"
            p.write_bytes(art.data)
            ob = sum(s["stored_bytes"] for s in read_qgv3(p).streams if s["kind"] == "outliers")  # solid: apportioned
            bpb = ev(load_any(p).state_dict)
        row = {"config": c, "bytes": len(art.data), "outlier_stream_bytes": ob, "val_bpb": bpb, "gap": bpb - raw,
               "s": round(time.perf_counter() - t, 1), "load": round(os.getloadavg()[0], 2)}
        b = rows.get(base_of(c))
        if b is not None and b is not row and c != base_of(c):
            row["per_kb_vs_base"] = (b["gap"] - row["gap"]) / (row["bytes"] - b["bytes"]) * 1000
        rows[c] = row
        log(f"{c}: {len(art.data):,} bytes, gap {bpb - raw:+.4f}" + (f", {row['per_kb_vs_base']:+.5f} bpb/KB vs base"
                                                                       if "per_kb_vs_base" in row else ""))
    for c in ("int4:g32", "int5:g64", "int4:g32+gptq"):  # the other uses of the bytes, against their int4:g64 base
        b = rows.get("int4:g64+gptq" if "gptq" in c else "int4:g64")
        if c in rows and b is not None:
            rows[c]["per_kb_vs_base"] = (b["gap"] - rows[c]["gap"]) / (rows[c]["bytes"] - b["bytes"]) * 1000
    allres = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    allres[args.model] = {"raw_val_bpb": raw, "val_tokens": int(len(val)), "embedding": "int8:mse", "rows": list(rows.values()),
                          "seconds": round(time.perf_counter() - t0, 1), "loadavg_end": round(os.getloadavg()[0], 2)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(allres, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
