"""Train a golfpack checkpoint for the benches on text every machine has: Python's standard library.

The shared data holds FineWeb VAL tokens only, and we never train on val. So the golfpack-trained
checkpoint of `bench/search_frontier.py` learns the stdlib's .py sources (~13 MB, one document per
file, sp1024 tokenizer), with every 20th file (by a hash of its path) held out for scoring. Shards are
made with `golfpack prepare`, the model with `golfpack train`, i.e. the product's own path.

    python bench/train_code_model.py --out runs/code-model          # ~10-15 min on 2 CPU cores
    python bench/search_frontier.py --trained runs/code-model

Writes OUT/shards/code_{train,heldout}_*.bin and OUT/run/final_model.pt (+ .json, train.log).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SP1024 = REPO.parent / "shared" / "data" / "tokenizers" / "fineweb_1024_bpe.model"


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idle_test", "__pycache__")
    return sorted(p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts))


def held_out(path: Path) -> bool:
    return int(hashlib.sha1(path.name.encode() + str(path.parent.name).encode()).hexdigest(), 16) % 20 == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "code-model"))
    ap.add_argument("--tokenizer", default=str(SP1024))
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)

    from golfpack.prepare import prepare
    from golfpack.trainer.config import load_config
    from golfpack.trainer.loop import train

    out = Path(args.out)
    shards = out / "shards"
    t0 = time.perf_counter()
    if not list(shards.glob("code_train_*.bin")):
        files = stdlib_files()
        train_files = [f for f in files if not held_out(f)]
        # the loader reads shards in order: an alphabetical stream (all of encodings/, then all of
        # email/, ...) drifts, so shuffle the documents once, with a fixed seed
        random.Random(0).shuffle(train_files)
        split = {"train": train_files, "heldout": [f for f in files if held_out(f)]}
        for name, fs in split.items():
            jl = out / f"code_{name}.jsonl"
            jl.parent.mkdir(parents=True, exist_ok=True)
            with jl.open("w", encoding="utf-8") as fh:
                for f in fs:
                    fh.write(json.dumps({"path": str(f), "text": f.read_text(encoding="utf-8", errors="replace")}) + "\n")
            rep = prepare([str(jl)], tokenizer=args.tokenizer, out_dir=str(shards), prefix=f"code_{name}")
            print(f"{name}: {len(fs)} files -> {rep.tokens:,} tokens", flush=True)
    print(f"shards ready ({time.perf_counter() - t0:.0f}s)", flush=True)
    sets = [
        f"train_files={shards}/code_train_*.bin", f"val_files={shards}/code_heldout_*.bin", f"tokenizer_path={args.tokenizer}",
        f"out_dir={out / 'run'}", f"num_layers={args.layers}", f"model_dim={args.dim}", "num_heads=4", "num_kv_heads=2",
        f"train_seq_len={args.seq}", f"train_batch_tokens={args.batch_tokens}", f"iterations={args.iterations}",
        f"warmdown_iters={args.iterations // 4}", "val_loss_every=100", "val_batch_tokens=16384", "val_max_tokens=65536",
        "train_log_every=50", f"threads={args.threads}",
        # gentler than `tiny` (which is tuned for 150 steps): no loss spikes over a longer run
        "matrix_lr=0.02", "scalar_lr=0.02", "tied_embed_lr=0.03", "grad_clip_norm=1.0",
    ]
    res = train(load_config("tiny", overrides=sets), echo=print)
    print(json.dumps(res.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
