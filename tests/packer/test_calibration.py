"""Calibration tokens: sources, the val guard, fixed batches, and the held-out split the search relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from golfpack.errors import GolfpackError
from golfpack.formats.shards import write_shard
from golfpack.model import ModelConfig, build_model
from golfpack.packer.calibration import (
    GptqCalibration,
    calib_halves,
    calib_tokens,
    calibration_batch,
    make_batch,
    self_tokens,
)


def test_make_batch_and_val_guard(tmp_path):
    toks = np.arange(10_000) % 97
    b = make_batch(toks, 4, 64)
    assert b.inputs.shape == (4, 64) and torch.equal(b.targets[:, :-1], b.inputs[:, 1:])
    assert b.digest == make_batch(toks, 4, 64).digest != make_batch(toks, 4, 63).digest
    with pytest.raises(GolfpackError, match="need"):
        make_batch(toks[:100], 4, 64)
    with pytest.raises(GolfpackError, match="vocab"):
        make_batch(toks, 2, 8, vocab_size=50)
    with pytest.raises(GolfpackError, match="validation"):
        calib_tokens(str(tmp_path / "fineweb_val_*.bin"))
    with pytest.raises(GolfpackError, match="tokenizer"):
        calib_tokens("pydoc")


def test_pydoc_calibration_tokens(sp1024_model):
    toks = calib_tokens("pydoc", tokenizer=str(sp1024_model))
    assert len(toks) > 150_000 and toks.max() < 1024 and toks.min() >= 0


@pytest.mark.parametrize("name,refused", [
    ("fineweb_val_000000.bin", True), ("fineweb_val_*.bin", True), ("val_*.bin", True), ("x.val.bin", True),
    ("validation-1.bin", True), ("fineweb_train_*.bin", False), ("interval_train.bin", False), ("eval_run.calib.bin", False),
    ("val_best.calib.bin", False),  # the search's own file of model samples, named after OUT
])
def test_calibration_refuses_val_named_files(tmp_path, name: str, refused: bool) -> None:
    real = name.replace("*", "000000")
    write_shard(tmp_path / real, np.arange(100, dtype=np.uint16))
    if refused:
        with pytest.raises(GolfpackError, match="looks like validation data"):
            calib_tokens(str(tmp_path / name))
    else:
        assert calib_tokens(str(tmp_path / name)).size == 100


def test_self_tokens_are_the_models_own_seeded_samples() -> None:
    from golfpack.model import ModelConfig, build_model

    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=50, num_layers=1, model_dim=16, num_heads=2, num_kv_heads=1))
    a = self_tokens(m, sequences=5, length=7, seed=1, chunk=2)
    assert a.shape == (5 * 8,) and (a[::8] == 1).all() and a.max() < 50
    assert np.array_equal(a, self_tokens(m, sequences=5, length=7, seed=1, chunk=2))  # seeded: the same text again
    assert not np.array_equal(a, self_tokens(m, sequences=5, length=7, seed=2))
