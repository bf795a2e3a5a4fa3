"""Sliding-window eval throughput: golfpack's batched evaluator vs a plain per-window loop.

Both score the same targets of the same model on the same device with the same window plan
(seq-len L, stride S: the first window scores all L targets, every later one its last S):
- plain loop: one window at a time, full forward (logits for every position), keep the scored NLLs;
- golfpack: `golfpack.evaluator.api.evaluate` (windows batched, the LM head only on scored rows);
plus the non-overlapping reference eval (stride = L) for scale. Each is timed best-of --repeats
after one warm-up window; the two sliding runs must agree on val_bpb (checked, printed).

    python bench/eval_speed.py [--ckpt PATH --activation relu3] [--tokens 65537] [--seq-len 256]
                               [--stride 64] [--batch-size 32] [--device cpu|cuda] [--repeats 2] [--threads N]
Prints a table and writes bench/results/eval_speed.json (eval_speed_cuda.json on CUDA).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from golfpack._io import write_bytes_atomic
from golfpack.evaluator.api import build_luts, evaluate, load_model
from golfpack.evaluator.windows import plan_windows, usable_targets
from golfpack.formats.shards import load_tokens

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GOLFPACK_SHARED_DATA", REPO.parent / "shared" / "data"))


def plain_loop(model, tokens: np.ndarray, luts, seq_len: int, stride: int, device: torch.device) -> tuple[float, int, float]:
    """(val_bpb, tokens scored, seconds): one window per forward, full logits, the scored tail kept."""
    plan = plan_windows(usable_targets(tokens.size, seq_len), seq_len, stride)
    t = torch.from_numpy(tokens[: plan.num_targets + 1].astype(np.int64)).to(device)
    lut = luts.to(device)
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    byte_sum = torch.zeros((), dtype=torch.float64, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    model.eval()
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad(), amp:
        for s, f in zip(plan.starts.tolist(), plan.score_from.tolist()):
            x, y = t[s : s + seq_len][None], t[s + 1 : s + seq_len + 1][None]
            nll = model.token_nll(x, y)[0, f:]
            nll_sum += nll.double().sum()
            byte_sum += lut.token_bytes(x[0, f:], y[0, f:]).double().sum()
    _sync(device)
    secs = time.perf_counter() - t0
    return float(nll_sum) / (math.log(2) * float(byte_sum)), plan.scored, secs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=str(SHARED / "checkpoints" / "nolanvild_final_model.pt"))
    ap.add_argument("--activation", default="relu3", help="MLP activation of --ckpt (nolanvild: relu3)")
    ap.add_argument("--val", default=str(SHARED / "text" / "fineweb_val_000000_first1040298tok.bin"))
    ap.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "fineweb_1024_bpe.model"))
    ap.add_argument("--tokens", type=int, default=65_537)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model(args.ckpt, activation=args.activation, device=device)
    luts = build_luts(args.tokenizer, model.config.vocab_size)
    tokens = np.asarray(load_tokens(args.val, args.tokens))
    L, S = args.seq_len, args.stride
    plain_loop(model, tokens[: 2 * L + 1], luts, L, L, device)  # warm-up (kernels, caches)

    rows: dict[str, dict] = {}

    def record(name: str, bpb: float, ntok: int, secs: float) -> None:
        best = rows.get(name)
        if best is None or secs < best["seconds"]:
            rows[name] = {"val_bpb": bpb, "tokens": ntok, "seconds": secs, "tokens_per_s": ntok / secs}

    for _ in range(args.repeats):
        bpb, ntok, secs = plain_loop(model, tokens, luts, L, S, device)
        record(f"plain per-window loop (stride {S})", bpb, ntok, secs)
        r = evaluate(model, tokens, luts, seq_len=L, stride=S, batch_size=args.batch_size, device=device)
        record(f"golfpack sliding (stride {S}, batch {args.batch_size})", r.val_bpb, r.tokens, r.seconds)
        r0 = evaluate(model, tokens, luts, seq_len=L, stride=None, batch_size=args.batch_size, device=device)
        record(f"golfpack non-overlapping (stride {L})", r0.val_bpb, r0.tokens, r0.seconds)

    names = list(rows)
    plain, ours = rows[names[0]], rows[names[1]]
    agree = abs(plain["val_bpb"] - ours["val_bpb"])
    speedup = ours["tokens_per_s"] / plain["tokens_per_s"]
    w = max(map(len, names))
    print(f"eval speed: {Path(args.ckpt).name} ({model.config.num_layers}L d{model.config.model_dim}), "
          f"{rows[names[0]]['tokens']:,} targets, seq_len {L}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'method':<{w}}  {'val_bpb':>9}  {'seconds':>8}  {'tokens/s':>10}")
    for n in names:
        r = rows[n]
        print(f"{n:<{w}}  {r['val_bpb']:>9.6f}  {r['seconds']:>8.2f}  {r['tokens_per_s']:>10,.0f}")
    print(f"sliding speedup vs plain loop: {speedup:.2f}x   |val_bpb difference|: {agree:.2e}")

    out = Path(args.out) if args.out else REPO / "bench" / "results" / ("eval_speed.json" if device.type == "cpu" else f"eval_speed_{device.type}.json")
    report = {
        "checkpoint": str(Path(args.ckpt).name), "activation": args.activation, "tokens": args.tokens,
        "seq_len": L, "stride": S, "batch_size": args.batch_size, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "rows": rows, "speedup_vs_plain": speedup, "val_bpb_abs_diff": agree,
    }
    write_bytes_atomic(out, (json.dumps(report, indent=2) + "\n").encode())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
