"""Foreign architectures through golfpack (docs/models.md): does the search help them as it helps the baseline family?

A. The foreign test LM (tests/adapters/foreign_lm.py: SwiGLU, two shared blocks looped three times,
   bigram-hash and value embeddings, untied head) and a baseline-family GPT of about the same parameter
   count, both trained with the same few CPU steps on Python's docs (never val). For each: pack the
   int6+tok8 preset, run the search at exactly the preset's byte size (calibration: a held-out part of the
   docs), and score raw / preset / search after a fresh load from the artifact file on the official val
   tokens (evaluation only). Reported: the fresh-load gap (artifact - raw val_bpb) at equal bytes.
B. GPTQ Hessian collection on a real baseline checkpoint (nolanvild, 3 blocks x 512): linear layers found
   by hooks (parameter identity, `weight_inputs`) vs the old hard-coded discovery (`CastedLinear` +
   tied head), same forwards, timed alternately in one run; the load average beside each.

    python bench/foreign_arch.py [--steps 120] [--val-tokens 32769]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("GOLFPACK_SHARED_DATA", ROOT.parent / "shared" / "data"))
TOK = SHARED / "tokenizers" / "fineweb_1024_bpe.model"
VAL = SHARED / "text" / "fineweb_val_000000_first1040298tok.bin"
NOLAN = SHARED / "checkpoints" / "nolanvild_final_model.pt"
FOREIGN = ROOT / "tests" / "adapters" / "foreign_lm.py"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def train(net: torch.nn.Module, logits, ids: np.ndarray, steps: int, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    t = torch.from_numpy(ids.astype(np.int64))
    for _ in range(steps):
        starts = rng.integers(0, len(ids) - 129, size=8)
        w = torch.stack([t[s : s + 129] for s in starts])
        out = logits(net, w[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.size(-1)), w[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def part_a(args, tmp: Path) -> list[dict]:
    from golfpack.adapters import load_adapter
    from golfpack.budget import SearchConfig, run_search
    from golfpack.evaluator.api import evaluate_path
    from golfpack.formats.shards import write_shard
    from golfpack.model import GPT, ModelConfig
    from golfpack.packer.calibration import pydoc_tokens
    from golfpack.packer.pack import pack_file
    from golfpack.packer.policy import resolve_policy

    ids = pydoc_tokens(str(TOK))
    cut = int(len(ids) * 0.8)  # train on the first 80% of the docs, calibrate on the rest
    write_shard(tmp / "docs_train_000000.bin", ids[cut:].astype(np.uint16))
    calib = str(tmp / "docs_train_*.bin")
    foreign_net = load_adapter(str(FOREIGN)).module.ForeignLM()
    base_cfg = ModelConfig(vocab_size=1024, num_layers=6, model_dim=64, num_heads=4, num_kv_heads=2, mlp_hidden=192)
    torch.manual_seed(0)
    base_net = GPT(base_cfg)
    models = [
        ("foreign (SwiGLU, 2 blocks x3 loops, bigram+value emb)", foreign_net, lambda m, x: m(x), str(FOREIGN)),
        ("baseline family (6 x 64, relu2, tied)", base_net, lambda m, x: m.logits(x), None),
    ]
    rows = []
    for label, net, fwd, model in models:
        t0 = time.perf_counter()
        sd = train(net, fwd, ids[:cut], args.steps)
        ckpt = tmp / f"{len(rows)}.pt"
        torch.save(sd, ckpt)
        ev = dict(val=str(VAL), tokenizer=str(TOK), seq_len=128, max_tokens=args.val_tokens, model=model)
        raw = evaluate_path(ckpt, **ev)
        preset = pack_file(ckpt, tmp / "preset.qg3", policy=resolve_policy("int6+tok8"), model=model)
        post_preset = evaluate_path(tmp / "preset.qg3", **ev)
        cfg = SearchConfig(budget=preset.model_bytes, calib=calib, tokenizer=str(TOK), calib_batch=8, calib_seq=128,
                           gptq_batch=16, progress=False)
        res = run_search(ckpt, cfg, model=model)
        res.save(tmp / "search.qg3")
        post_search = evaluate_path(tmp / "search.qg3", **ev)
        rows.append({
            "model": label, "params": sum(int(v.numel()) for v in sd.values()), "raw_val_bpb": raw.val_bpb,
            "preset_bytes": preset.model_bytes, "preset_gap": post_preset.val_bpb - raw.val_bpb,
            "search_bytes": (tmp / "search.qg3").stat().st_size, "search_gap": post_search.val_bpb - raw.val_bpb,
            "search_layout": {s: sum(1 for v in res.specs.values() if v.label() == s) for s in {v.label() for v in res.specs.values()}},
            "seconds": round(time.perf_counter() - t0, 1), "loadavg": load(), "val_tokens": raw.tokens,
        })
    return rows


def part_b(args) -> dict:
    from golfpack.formats.checkpoint import load_state_dict
    from golfpack.loading import infer_config
    from golfpack.model import build_model
    from golfpack.packer import calibration as C
    from golfpack.packer.hessian import _baseline_weight_inputs, collect_hessians, weight_inputs

    sd = load_state_dict(NOLAN)
    model = build_model(infer_config(sd, activation="relu3"), sd)
    batch = C.make_batch(C.pydoc_tokens(str(TOK)), 16, 256)
    times: dict[str, list[float]] = {"hooks (found)": [], "old (hard-coded)": []}
    loads: dict[str, list[float]] = {k: [] for k in times}
    for _ in range(args.repeats):
        for k in times:  # alternate: both paths see the same machine state
            t0 = time.perf_counter()
            feeds = weight_inputs(model) if k.startswith("hooks") else _baseline_weight_inputs(model)
            H = collect_hessians(model, batch, feeds=feeds)
            times[k].append(time.perf_counter() - t0)
            loads[k].append(load())
    ref = collect_hessians(model, batch, feeds=_baseline_weight_inputs(model))
    same = all(torch.equal(H[n], ref[n]) for n in ref) and set(H) == set(ref)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"checkpoint": NOLAN.name, "tokens": batch.tokens, "weights": len(ref), "repeats": args.repeats,
            "median_s": med, "loadavg": {k: statistics.mean(v) for k, v in loads.items()},
            "ratio_hooks_over_old": med["hooks (found)"] / med["old (hard-coded)"], "hessians_bit_identical": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=120, help="training steps per model (8 x 128 tokens each)")
    ap.add_argument("--val-tokens", type=int, default=32_769)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-a", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict = {"args": vars(args)}
    with tempfile.TemporaryDirectory() as d:
        if not args.skip_a:
            out["search_vs_preset"] = rows = part_a(args, Path(d))
            print(f"{'model':<54} {'params':>8} {'raw bpb':>8} {'bytes':>8} {'int6+tok8 gap':>13} {'bytes':>8} "
                  f"{'search gap':>10} {'load':>5}")
            for r in rows:
                print(f"{r['model']:<54} {r['params']:>8,} {r['raw_val_bpb']:>8.4f} {r['preset_bytes']:>8,} "
                      f"{r['preset_gap']:>+13.5f} {r['search_bytes']:>8,} {r['search_gap']:>+10.5f} {r['loadavg']:>5}")
    b = out["hessian_overhead"] = part_b(args)
    print(f"\nHessians, {b['checkpoint']} ({b['weights']} weights, {b['tokens']:,} tokens, median of {b['repeats']}):")
    for k, v in b["median_s"].items():
        print(f"  {k:<18} {v:8.3f} s   load {b['loadavg'][k]:.2f}")
    print(f"  ratio hooks/old {b['ratio_hooks_over_old']:.3f}; Hessians bit-identical: {b['hessians_bit_identical']}")
    dest = ROOT / "bench" / "results" / "foreign_arch.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
