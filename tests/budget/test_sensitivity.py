"""Sensitivity: candidates, direct measurement vs the Taylor proxy on a real checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from golfpack.budget.sensitivity import (
    candidate_specs,
    compare,
    gradient_stats,
    measure_direct,
    proxy_deltas,
    regularize,
    spearman,
)
from golfpack.formats.spec import TensorSpec
from golfpack.packer.calibration import calib_tokens, make_batch


def test_candidates_by_dtype():
    labels = [s.label() for s in candidate_specs(torch.zeros(4, 4), bits=(8, 6), clips=("quantile", "mse"))]
    assert labels == ["fp32", "fp16", "int8", "int8:mse", "int8:sd12", "int6", "int6:mse", "int6:sd12"]  # 4 columns: no g64
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
