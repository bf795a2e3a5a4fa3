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

    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=50, num_layers=1, model_dim=16, num_heads=2, num_kv_heads=1))
    a = self_tokens(m, sequences=5, length=7, seed=1, chunk=2)
    assert a.shape == (5 * 8,) and (a[::8] == 1).all() and a.max() < 50
    assert np.array_equal(a, self_tokens(m, sequences=5, length=7, seed=1, chunk=2))  # seeded: the same text again
    assert not np.array_equal(a, self_tokens(m, sequences=5, length=7, seed=2))


# ------------------------------------------------------------------------------------------------
# pins: the held-out split and where the windows come from


def test_halves_are_disjoint_and_cover_the_stream(tmp_path):
    toks = np.arange(10_001, dtype=np.uint16)  # every token distinct: overlap would show
    write_shard(tmp_path / "c_train_000000.bin", toks)
    measure, held_out = calib_halves(str(tmp_path / "c_train_000000.bin"))
    assert len(measure) == 5000 and len(held_out) == 5001
    assert np.array_equal(np.concatenate([measure, held_out]), toks)  # first half measured, the rest held out
    assert not set(measure.tolist()) & set(held_out.tolist())


def test_gptq_calibration_reads_the_measurement_half_only(tmp_path):
    toks = np.arange(20_000, dtype=np.uint16)
    write_shard(tmp_path / "c_train_000000.bin", toks)
    src = str(tmp_path / "c_train_000000.bin")
    b = calibration_batch(GptqCalibration(source=src, batch=4, seq=64))
    measure, held_out = calib_halves(src)
    assert b.digest == make_batch(measure, 4, 64).digest != make_batch(held_out, 4, 64).digest
    assert int(b.inputs.max()) == 9_996  # the last window ends inside the measurement half (the first 10,000 of 20,000)


def test_windows_spread_over_the_whole_stream():
    toks = np.arange(10_000)
    b = make_batch(toks, 4, 64)
    starts = b.inputs[:, 0].tolist()
    # evenly spaced from the first token to the last window (not 4 windows packed at the start)
    assert starts == [0, 3311, 6622, 9933] and int(b.targets[-1, -1]) == 9_997  # within a stride-rounding of the end (9,999)
    assert torch.equal(b.targets[0], torch.arange(1, 65))
    one = make_batch(toks, 1, 64)
    assert one.inputs[0, 0] == 0 and one.tokens == 64


def test_self_tokens_sample_all_sequences_together_when_their_cache_fits(monkeypatch) -> None:
    """generation_chunk: every sequence in one generate call when the KV cache fits GEN_CACHE_BYTES (from the
    architecture alone, so the same text on every machine), fewer per call when it does not."""
    from golfpack.packer import calibration as C

    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=50, num_layers=2, model_dim=16, num_heads=2, num_kv_heads=1))
    assert C.generation_chunk(m, 128, 256) == 128
    per_seq = 2 * 4 * 257 * 1 * 8 * 2
    monkeypatch.setattr(C, "GEN_CACHE_BYTES", 10 * per_seq)
    assert C.generation_chunk(m, 128, 256) == 10
    assert np.array_equal(C.self_tokens(m, sequences=5, length=7, seed=1), C.self_tokens(m, sequences=5, length=7, seed=1, chunk=5))
