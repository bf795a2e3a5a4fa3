"""outliers: does a SpQR-style sparse fp16 side stream of the largest-error weights pay at equal bytes? (issue #12 item 5)

    PYTHONPATH=src python bench/outliers.py --model samtruss|nolanvild [--bases int4:g32s6,int5:g64s6] [--fracs 0.0025,0.01]

For each base spec of the block matrices (embedding int8:mse, as bench/subscales.py), the base artifact
is packed (real QGv3, lzma), loaded fresh and evaluated on the first 32,769 val tokens; then for each
fraction f, in every block matrix the f x numel weights with the largest |w - dequantized w| are put
back at their fp16 value (simulated, no format support) and the model re-evaluated. Their bytes are
ESTIMATED as the base artifact + lzma of the side stream (per tensor: uint16 column + uint16 row of each
outlier, delta-sorted, and its fp16 value) - a lower bound on what a real stream would cost. The
alternative use of those bytes is the base ladder itself (int4 -> int5 -> int6, g64 -> g32): the
outlier points are compared with the bytes-vs-gap curve of the bases (bench/results/subscales.json
has more). Results: bench/results/outliers.json (with the load average beside each timing).
The format has outliers now (`+out<k>`, docs/qgv3.md 8d): bench/outliers_real.py measures them with real bytes.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golfpack.loading import load_any  # noqa: E402
from quant_gap import model_bench  # noqa: E402
from subscales import _pack, policy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "outliers.json"


def side_stream_bytes(idx: np.ndarray, cols: int, vals: np.ndarray) -> bytes:
    """The outliers of one tensor as a side stream: sorted flat indices as (row delta, column) uint16 pairs + fp16 values."""
    order = np.sort(idx)
    r, c = order // cols, order % cols
    dr = np.diff(np.concatenate([[0], r])).astype(np.uint16)
    return dr.tobytes() + c.astype(np.uint16).tobytes() + vals.astype(np.float16).tobytes()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("samtruss", "nolanvild"), required=True)
    ap.add_argument("--bases", default="int4:g32s6,int5:g64s6,int5:g32s6")
    ap.add_argument("--fracs", default="0.0025,0.01")
    ap.add_argument("--tokens", type=int, default=32_769)
    args = ap.parse_args()
    m, sd, cfg, val, ev, log, t0 = model_bench(args.model, args.tokens)
    raw = ev(sd)
    log(f"raw {raw:.4f}")
    rows = []
    for base in args.bases.split(","):
        t = time.perf_counter()
        nb, info = _pack(sd, cfg, base)
        q_sd = dict(load_any(info["path"]).state_dict)
        bpb = ev(q_sd)
        rows.append({"config": base, "bytes": nb, "val_bpb": bpb, "gap": bpb - raw, "s": round(time.perf_counter() - t, 1),
                     "load": os.getloadavg()[0]})
        log(f"{base}: {nb:,} bytes, gap {bpb - raw:+.4f}")
        specs = policy(base).resolve(sd)
        mats = [n for n, s in specs.items() if s.kind == "int" and s.group and sd[n].ndim == 2]
        for f in (float(x) for x in args.fracs.split(",")):
            t = time.perf_counter()
            state = dict(q_sd)
            side = []
            for n in mats:
                w = sd[n].float()
                err = (w - q_sd[n].float()).abs().reshape(-1)
                k = max(1, int(f * err.numel()))
                idx = torch.topk(err, k).indices
                fixed = q_sd[n].float().reshape(-1).clone()
                fixed[idx] = w.reshape(-1)[idx].half().float()
                state[n] = fixed.view_as(w).to(sd[n].dtype)
                side.append(side_stream_bytes(idx.numpy(), w.shape[1], w.reshape(-1)[idx].numpy()))
            extra = len(lzma.compress(b"".join(side), preset=9 | lzma.PRESET_EXTREME))
            bpb = ev(state)
            rows.append({"config": f"{base} + outliers {f:.2%}", "bytes": nb + extra, "bytes_note": f"estimate: base + {extra:,} "
                         "lzma side stream", "val_bpb": bpb, "gap": bpb - raw, "s": round(time.perf_counter() - t, 1),
                         "load": os.getloadavg()[0]})
            log(f"{rows[-1]['config']}: ~{nb + extra:,} bytes, gap {bpb - raw:+.4f}")
    allres = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    allres[args.model] = {"raw_val_bpb": raw, "val_tokens": int(len(val)), "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
                          "loadavg_end": os.getloadavg()[0]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(allres, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
