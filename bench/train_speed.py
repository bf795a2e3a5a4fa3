"""Training throughput of a preset (default: the challenge baseline) on the device at hand.

Runs the real trainer (`golfpack.trainer.loop.train`) for a few steps on shards made from Python's
own documentation (tokenized with sp1024; never val tokens) and reports step_avg the way the
baseline log does (training time / steps, validation excluded) and tokens/s.

On CUDA the full global batch is used (524,288 tokens/step for `baseline`, with grad accumulation
8 // world_size) and a comparison row is printed against the baseline's published 8xH100 step average
(43.5 ms/step for the naive baseline) scaled by GPU count: one GPU doing all 8 micro-batches should
take ~8 x 43.5 = 348 ms/step at equal per-GPU speed. On CPU the batch is cut to --batch-tokens
(default 8,192 = 8 sequences of 1024) so a step finishes in reasonable time; tokens/s is the figure
that transfers.

    python bench/train_speed.py [--preset baseline] [--steps 20] [--warmup 10] [--batch-tokens N]
    torchrun --nproc_per_node=8 bench/train_speed.py   # multi-GPU: same comparison, scaled by 8
Prints a table and writes bench/results/train_speed_<device>.json (rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from golfpack._io import write_bytes_atomic
from golfpack.formats.shards import write_shard
from golfpack.trainer.config import load_config
from golfpack.trainer.loop import train

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GOLFPACK_SHARED_DATA", REPO.parent / "shared" / "data"))
TOKENIZER = SHARED / "tokenizers" / "fineweb_1024_bpe.model"
# Published step average of the naive baseline on 8xH100 (challenge README / baseline log).
BASELINE_8XH100_STEP_MS = 43.5
BASELINE_GPUS = 8


def make_shards(d: Path, vocab_size: int) -> str:
    """Shards of pydoc text (sp1024), or, without the tokenizer, a fixed-seed random token stream."""
    if TOKENIZER.is_file() and vocab_size == 1024:
        import sentencepiece as spm
        from pydoc_data.topics import topics

        sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
        ids: list[int] = []
        for key in sorted(topics):
            ids.append(1)
            ids.extend(sp.encode(topics[key]))
        arr = np.asarray(ids, dtype=np.uint16)
    else:
        arr = np.random.default_rng(0).integers(0, vocab_size, 1 << 20, dtype=np.uint16)
    write_shard(d / "train_000000.bin", arr)
    return str(d / "train_*.bin")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="baseline")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 2 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="compile-priming steps, not timed (default 10 CUDA, 0 CPU)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="global tokens/step (default: preset on CUDA, 8192 on CPU)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra KEY=VALUE config overrides")
    ap.add_argument("--out", default=None, help="result JSON (default bench/results/train_speed_<device>.json)")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    steps = args.steps if args.steps is not None else (20 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 0)
    base = load_config(args.preset)
    batch = args.batch_tokens or (base.train_batch_tokens if cuda else 8 * base.train_seq_len)

    with tempfile.TemporaryDirectory() as tmp:
        # Every rank writes the same deterministic shard into its own temp dir (no cross-rank file race).
        pattern = make_shards(Path(tmp), base.vocab_size)
        sets = [
            f"train_files={pattern}", "val_files=", "tokenizer_path=", f"out_dir={Path(tmp) / 'out'}",
            f"iterations={steps}", f"warmup_steps={warmup}", f"train_batch_tokens={batch}", "max_wallclock_seconds=0",
            f"train_log_every={max(1, steps // 4)}", f"compile={args.compile}", "device=auto",
        ] + args.sets
        cfg = load_config(args.preset, overrides=sets)
        result = train(cfg, echo=print if rank == 0 else None)
    if rank != 0:
        return 0

    step_ms = result.train_time_ms / max(result.steps, 1)
    tok_s = result.tokens / max(result.train_time_ms / 1000.0, 1e-9)
    device_name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
    rec = {
        "preset": args.preset,
        "device": "cuda" if cuda else "cpu",
        "device_name": device_name,
        "world_size": world,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "compile": cfg.compile,
        "train_batch_tokens": batch,
        "preset_batch_tokens": base.train_batch_tokens,
        "train_seq_len": cfg.train_seq_len,
        "steps": result.steps,
        "warmup_steps": warmup,
        "step_ms": round(step_ms, 2),
        "tokens_per_s": round(tok_s, 1),
        "ms_per_full_batch_step": round(base.train_batch_tokens / tok_s * 1000.0, 1),
        "first_loss": result.train_losses[0][1],
        "last_loss": result.train_losses[-1][1],
    }
    print()
    print(f"{'device':<28} {'world':>5} {'batch tok':>10} {'steps':>5} {'step_ms':>10} {'tokens/s':>12} {'ms/full step':>13}")
    print(f"{device_name[:28]:<28} {world:>5} {batch:>10,} {result.steps:>5} {step_ms:>10.1f} {tok_s:>12,.0f} "
          f"{rec['ms_per_full_batch_step']:>13,.1f}")
    if cuda:
        ref = BASELINE_8XH100_STEP_MS * BASELINE_GPUS / world
        rec["reference"] = {
            "published_8xH100_step_ms": BASELINE_8XH100_STEP_MS,
            "scaled_to_world_size_step_ms": ref,
            "ratio_measured_over_scaled": round(step_ms / ref, 3),
        }
        print(f"{'baseline 8xH100 (published)':<28} {BASELINE_GPUS:>5} {base.train_batch_tokens:>10,} {'':>5} "
              f"{BASELINE_8XH100_STEP_MS:>10.1f}")
        print(f"{'  scaled to ' + str(world) + ' GPU(s)':<28} {world:>5} {base.train_batch_tokens:>10,} {'':>5} {ref:>10.1f}"
              f"   measured/scaled = {step_ms / ref:.2f}")
        if batch != base.train_batch_tokens:
            print("  (batch differs from the preset's: compare ms/full step instead)")
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"train_speed_{rec['device']}.json"
    write_bytes_atomic(out, (json.dumps(rec, indent=2) + "\n").encode())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
