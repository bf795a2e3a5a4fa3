"""lqer_gap: fresh-load val_bpb of named policies, LQER or not, side by side (issue #12 item 4).

    PYTHONPATH=src python bench/lqer_gap.py --model samtruss|nolanvild [--policies NAME=EMB/MAT,...]

quant_gap.py picks, per family, the widest member under a byte target; on SamTruss no GPTQ family with
an int8 embedding fits the int6+tok8 size, so nothing of it is evaluated. This packs each named policy
(embedding spec / block-matrix spec; 1-D and control tensors fp16, as quant_gap's families), writes the
QGv3 file, loads it fresh and evaluates it (same tokens and Hessians as quant_gap.py), whatever its size,
so an LQER point can be set against the line between two widths. Results: bench/results/lqer_gap.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from golfpack.loading import load_any  # noqa: E402
from golfpack.model import build_model  # noqa: E402
from golfpack.packer.pack import pack_state_dict  # noqa: E402
from golfpack.packer.policy import _layered  # noqa: E402
from quant_gap import MODELS, REPO, model_bench  # noqa: E402
from quant_gap_proto import calib_batches  # noqa: E402
from records_recipe import collect_hessians  # noqa: E402

DEFAULT = ("g64gptq3=int8:mse/int3:g64+gptq,g64gptq3+lqer4=int8:mse/int3:g64+gptq+lqer4,g64gptq4=int8:mse/int4:g64+gptq,"
           "g64gptq4+lqer4=int8:mse/int4:g64+gptq+lqer4")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), required=True)
    ap.add_argument("--policies", default=DEFAULT)
    ap.add_argument("--calib-seqs", type=int, default=16)
    args = ap.parse_args()
    m, sd, cfg, val, ev, log, t0 = model_bench(args.model)

    raw = ev(sd)
    hs = collect_hessians(build_model(cfg, sd), calib_batches(args.calib_seqs, m["seq"], shards=m["calib"]))
    rows = []
    for item in args.policies.split(","):
        name, specs = item.split("=")
        emb, mat = specs.split("/")
        art = pack_state_dict(sd, _layered(name, embed=emb, mlp=mat, attn=mat, other=mat), config=cfg, hessians=hs)
        path = Path(f"/tmp/lqer_gap_{os.getpid()}.qg3")
        path.write_bytes(art.data)
        bpb = ev(load_any(path).state_dict)
        path.unlink()
        rows.append({"policy": name, "embed": emb, "matrices": mat, "bytes": len(art.data), "val_bpb": bpb, "gap": bpb - raw,
                     "loadavg": os.getloadavg()[0]})
        print(f"[{args.model} {time.perf_counter() - t0:5.0f}s load {os.getloadavg()[0]:.1f}] {name}: {len(art.data):,} bytes, "
              f"gap {bpb - raw:+.4f}", flush=True)
    out = REPO / "bench" / "results" / "lqer_gap.json"
    allres = json.loads(out.read_text()) if out.exists() else {}
    allres[args.model] = {"raw_val_bpb": raw, "val_tokens": int(len(val)), "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    out.write_text(json.dumps(allres, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
