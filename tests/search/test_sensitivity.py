"""Sensitivity: calibration tokens, candidates, direct measurement vs the Taylor proxy on a real checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from golfpack.errors import GolfpackError
from golfpack.packer.sensitivity import (
    calib_tokens,
    candidate_specs,
    compare,
    gradient_stats,
    make_batch,
    measure_direct,
    proxy_deltas,
    regularize,
    spearman,
)
from golfpack.formats.spec import TensorSpec


def test_candidates_by_dtype():
    labels = [s.label() for s in candidate_specs(torch.zeros(4, 4), bits=(8, 6), clips=("quantile", "mse"))]
    assert labels == ["fp32", "fp16", "int8", "int8:mse", "int6", "int6:mse"]
    assert [s.label() for s in candidate_specs(torch.zeros(4, dtype=torch.bfloat16), bits=(5,), clips=("quantile",))] == ["bf16", "fp16", "int5"]
    assert [s.label() for s in candidate_specs(torch.zeros(3, dtype=torch.int64))] == ["exact"]
    # a scalar has nothing to gain from integer levels + a scale
    assert [s.label() for s in candidate_specs(torch.zeros(()))] == ["fp32", "fp16"]


def test_spearman_and_regularize():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254)  # ties share ranks
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    r = regularize({"w": {"fp32": 0.0, "int8": -0.01, "int6": 0.02, "int5": 0.01, "int4": 0.5, "int6:mse": 0.03, "int4:mse": 0.0}})["w"]
    assert r["int8"] == 0.0  # negative harm clamped
    assert r["int5"] == 0.02  # narrower never predicted better than wider (same clip)
    assert r["int4"] == 0.5 and r["int4:mse"] == 0.03  # per clip rule


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


@pytest.fixture(scope="module")
def nolan(nolanvild_pt, sp1024_model):
    from golfpack.formats.checkpoint import load_state_dict
    from golfpack.loading import infer_config
    from golfpack.model import build_model

    sd = load_state_dict(nolanvild_pt)
    model = build_model(infer_config(sd, activation="relu3"), sd)
    toks = calib_tokens("pydoc", tokenizer=str(sp1024_model))
    return sd, model, toks


def test_direct_vs_proxy_on_real_checkpoint(nolan):
    sd, model, toks = nolan
    batch = make_batch(toks, 4, 128)
    names = ["tok_emb.weight", "blocks.0.mlp.fc.weight", "blocks.2.mlp.proj.weight", "blocks.1.attn.c_v.weight"]
    cands = {n: [TensorSpec.parse(x) for x in ("fp32", "fp16", "int8", "int6", "int4", "int3")] for n in names}
    before = model.token_nll(batch.inputs, batch.targets).detach().clone()
    base, both = measure_direct(model, sd, cands, batch)
    # parameters are restored exactly after measuring
    assert torch.equal(model.token_nll(batch.inputs, batch.targets).detach(), before)
    assert 4.0 < base < 6.5
    nll, kl = both["nll"], both["kl"]
    for n in names:
        assert nll[n]["fp32"] == 0.0 and abs(kl[n]["fp32"]) < 1e-9  # lossless store: no change at all
        assert abs(nll[n]["fp16"]) < 1e-3 and -1e-7 <= kl[n]["fp16"] < 1e-4
        assert all(v >= -1e-7 for v in kl[n].values())  # KL is never negative (up to fp32 rounding)
    # the embedding at 3 bits is clearly harmful, and much more than at 8 bits
    assert nll["tok_emb.weight"]["int3"] > 0.05 > abs(nll["tok_emb.weight"]["int8"])
    assert kl["tok_emb.weight"]["int3"] > 100 * kl["tok_emb.weight"]["int8"]
    # Taylor proxy (gradient + empirical Fisher) vs delta NLL
    grad, fisher = gradient_stats(model, make_batch(toks, 8, 128), names=names)
    proxy = proxy_deltas(sd, fisher, cands, grad=grad)
    assert proxy["tok_emb.weight"]["fp32"] == 0.0
    agree = compare(nll, proxy)
    assert agree["pairs"] == 16 and agree["spearman"] > 0.5, agree
    # true-Fisher proxy (labels sampled from the model) vs KL: close to exact, also in scale
    _, tfisher = gradient_stats(model, make_batch(toks, 8, 128), names=names, sample=True)
    agree = compare(kl, proxy_deltas(sd, tfisher, cands))
    assert agree["spearman"] > 0.9 and 0.3 < agree["proxy_to_direct_scale"] < 3, agree


@pytest.mark.parametrize("name,refused", [
    ("fineweb_val_000000.bin", True), ("fineweb_val_*.bin", True), ("val_*.bin", True), ("x.val.bin", True),
    ("validation-1.bin", True), ("fineweb_train_*.bin", False), ("interval_train.bin", False), ("eval_run.calib.bin", False),
    ("val_best.calib.bin", False),  # the search's own file of model samples, named after OUT
])
def test_calibration_refuses_val_named_files(tmp_path, name: str, refused: bool) -> None:
    from golfpack.formats.shards import write_shard
    from golfpack.packer.sensitivity import calib_tokens

    real = name.replace("*", "000000")
    write_shard(tmp_path / real, np.arange(100, dtype=np.uint16))
    if refused:
        with pytest.raises(GolfpackError, match="looks like validation data"):
            calib_tokens(str(tmp_path / name))
    else:
        assert calib_tokens(str(tmp_path / name)).size == 100


def test_self_tokens_are_the_models_own_seeded_samples() -> None:
    from golfpack.model import ModelConfig, build_model
    from golfpack.packer.sensitivity import self_tokens

    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=50, num_layers=1, model_dim=16, num_heads=2, num_kv_heads=1))
    a = self_tokens(m, sequences=5, length=7, seed=1, chunk=2)
    assert a.shape == (5 * 8,) and (a[::8] == 1).all() and a.max() < 50
    assert np.array_equal(a, self_tokens(m, sequences=5, length=7, seed=1, chunk=2))  # seeded: the same text again
    assert not np.array_equal(a, self_tokens(m, sequences=5, length=7, seed=2))
