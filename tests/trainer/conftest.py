"""Trainer fixtures: training shards made from real English text (Python's own docs), never val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_file


@pytest.fixture(scope="session")
def sp1024_path() -> Path:
    return shared_file("tokenizers/fineweb_1024_bpe.model")


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory, sp1024_path) -> str:
    """Two shards of `pydoc_data.topics` tokenized with sp1024 (BOS between topics); returns the glob."""
    from pydoc_data.topics import topics

    import sentencepiece as spm

    from golfpack.formats.shards import write_shard

    sp = spm.SentencePieceProcessor(model_file=str(sp1024_path))
    ids: list[int] = []
    for key in sorted(topics):
        ids.append(1)
        ids.extend(sp.encode(topics[key]))
    arr = np.asarray(ids, dtype=np.uint16)
    d = tmp_path_factory.mktemp("train_shards")
    cut = arr.size * 9 // 10  # the last 10% is held out (see `heldout_path`)
    half = cut // 2
    write_shard(d / "train_000000.bin", arr[:half])
    write_shard(d / "train_000001.bin", arr[half:cut])
    write_shard(d / "heldout_000000.bin", arr[cut:])
    return str(d / "train_*.bin")


@pytest.fixture(scope="session")
def heldout_path(train_shards) -> str:
    """The last 10% of the same docs, never trained on: an in-domain validation set."""
    return train_shards.replace("train_*.bin", "heldout_000000.bin")


@pytest.fixture(scope="session")
def val_path() -> str:
    # Official val tokens: used for EVALUATION only (the trainer refuses to train on them).
    return str(shared_file("text/fineweb_val_000000_first1040298tok.bin"))


def tiny_overrides(train: str, out_dir: Path, val: str = "", tok: str = "", **extra) -> list[str]:
    """A `tiny` run cut down for tests: few steps, small batches."""
    sets = {
        "train_files": train,
        "val_files": val,
        "tokenizer_path": tok,
        "out_dir": str(out_dir),
        "train_seq_len": 64,
        "train_batch_tokens": 2048,
        "iterations": 20,
        "warmdown_iters": 5,
        "val_loss_every": 0,
        "val_max_tokens": 4097,
        "val_batch_tokens": 4096,
        "train_log_every": 1,
        "muon_momentum_warmup_steps": 10,
        "threads": 1,
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, train_shards, heldout_path, sp1024_path):
    """One 20-step `tiny` run with validation on the held-out docs every 10 steps: (config, TrainResult)."""
    from golfpack.trainer.config import load_config
    from golfpack.trainer.loop import train

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config("tiny", overrides=tiny_overrides(train_shards, out, heldout_path, str(sp1024_path), val_loss_every=10))
    return cfg, train(cfg, echo=None)
