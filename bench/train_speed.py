"""Training throughput of a preset (default: the challenge baseline) on the device at hand.

Runs the real trainer (`golfpack.trainer.loop.train`) on shards made from Python's own documentation
(tokenized with sp1024; never val tokens). The trainer's warmup steps (at least one; they prime
allocation/compilation and are then undone) are not timed. Each timed step is stamped when its log
line is printed, which happens after the step's loss is read back (a device sync), so consecutive
stamps give one synced step each; the report is the MEDIAN step time and tokens/s = batch / median.

On CUDA the full global batch is used (524,288 tokens/step for `baseline`, with grad accumulation
8 // world_size) and a comparison row is printed against the baseline's published 8xH100 step average
(43.5 ms/step for the naive baseline) scaled by GPU count: one GPU doing all 8 micro-batches should
take ~8 x 43.5 = 348 ms/step at equal per-GPU speed. On CPU the batch is cut to --batch-tokens
(default 8,192 = 8 sequences of 1024) so a step finishes in reasonable time; tokens/s is the figure
that transfers. The JSON records os.getloadavg() and torch's thread count, so a figure taken on a
busy, shared CPU can be recognised as such.

    python bench/train_speed.py [--preset baseline] [--steps 5] [--warmup 1] [--batch-tokens N]
    python bench/train_speed.py --preset tiny --steps 3 --out /tmp/smoke.json   # quick smoke run
    torchrun --nproc_per_node=8 bench/train_speed.py   # multi-GPU: same comparison, scaled by 8
Prints a table and writes bench/results/train_speed_<device>.json (rank 0) unless --out is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
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
STEP_LINE = re.compile(r"^step:(\d+)/\d+ train_loss:")


def make_shards(d: Path, vocab_size: int) -> str:
    """Shards of pydoc text (sp1024), or, without the tokenizer, a fixed-seed random token stream."""
    if TOKENIZER.is_file() and vocab_size == 1024:
        from pydoc_data.topics import topics

        import sentencepiece as spm

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
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 5 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed warmup steps, at least 1 (default 10 CUDA, 1 CPU)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="global tokens/step (default: preset on CUDA, 8192 on CPU)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra KEY=VALUE config overrides")
    ap.add_argument("--out", default=None, help="result JSON (default bench/results/train_speed_<device>.json)")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    steps = args.steps if args.steps is not None else (20 if cuda else 5)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    if steps < 1 or warmup < 1:
        ap.error("need --steps >= 1 and --warmup >= 1 (untimed steps come first)")
    base = load_config(args.preset)
    batch = args.batch_tokens or (base.train_batch_tokens if cuda else 8 * base.train_seq_len)
    load_before = os.getloadavg()

    # Rank 0 stamps each step line as it is printed: the line is built after reading the step's loss
    # back from the device, so the gap between two stamps is one fully synced step. The run has
    # steps + 1 iterations: step 1's stamp only starts the clock.
    stamps: dict[int, float] = {}

    def echo(line: str) -> None:
        now = time.perf_counter()
        m = STEP_LINE.match(line)
        if m:
            stamps[int(m.group(1))] = now
        print(line)

    with tempfile.TemporaryDirectory() as tmp:
        # Every rank writes the same deterministic shard into its own temp dir (no cross-rank file race).
        pattern = make_shards(Path(tmp), base.vocab_size)
        sets = [
            f"train_files={pattern}", "val_files=", "tokenizer_path=", f"out_dir={Path(tmp) / 'out'}",
            f"iterations={steps + 1}", f"warmup_steps={warmup}", f"train_batch_tokens={batch}", "max_wallclock_seconds=0",
            "train_log_every=1", f"compile={args.compile}", "device=auto",
        ] + args.sets
        cfg = load_config(args.preset, overrides=sets)
        t_train = time.perf_counter()
        result = train(cfg, echo=echo if rank == 0 else None)
    if rank != 0:
        return 0

    step_times = [1000.0 * (stamps[k] - stamps[k - 1]) for k in range(2, result.steps + 1) if k in stamps and k - 1 in stamps]
    if not step_times:
        raise SystemExit("no step lines were captured: cannot time steps")
    step_ms = statistics.median(step_times)
    tok_s = batch / (step_ms / 1000.0)
    device_name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
    rec = {
        "preset": args.preset,
        "device": "cuda" if cuda else "cpu",
        "device_name": device_name,
        "world_size": world,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15_before": [round(v, 2) for v in load_before],
        "loadavg_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "compile": cfg.compile,
        "train_batch_tokens": batch,
        "preset_batch_tokens": base.train_batch_tokens,
        "train_seq_len": cfg.train_seq_len,
        "warmup_steps": warmup,
        "timed_steps": len(step_times),
        "step_ms_median": round(step_ms, 2),
        "step_ms_all": [round(t, 2) for t in step_times],
        "trainer_step_avg_ms": round(result.train_time_ms / max(result.steps, 1), 2),
        "tokens_per_s": round(tok_s, 1),
        "ms_per_full_batch_step": round(base.train_batch_tokens / tok_s * 1000.0, 1),
        "wall_s": round(time.perf_counter() - t_train, 1),
        "first_loss": result.train_losses[0][1],
        "last_loss": result.train_losses[-1][1],
    }
    print()
    print(f"{'device':<28} {'world':>5} {'batch tok':>10} {'steps':>5} {'median ms':>10} {'tokens/s':>12} {'ms/full step':>13}")
    print(f"{device_name[:28]:<28} {world:>5} {batch:>10,} {len(step_times):>5} {step_ms:>10.1f} {tok_s:>12,.0f} "
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
    print(f"load average (1/5/15 min) before {rec['loadavg_1_5_15_before']} after {rec['loadavg_1_5_15_after']}, "
          f"torch threads {rec['torch_threads']} of {rec['cpu_count']} CPUs")
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"train_speed_{rec['device']}.json"
    write_bytes_atomic(out, (json.dumps(rec, indent=2) + "\n").encode())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
