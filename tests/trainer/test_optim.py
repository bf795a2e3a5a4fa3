from __future__ import annotations

import pytest
import torch

from golfpack.model import GPT
from golfpack.trainer.config import preset
from golfpack.trainer.optim import (
    Muon,
    build_optimizers,
    lr_multiplier,
    muon_momentum_at,
    newton_schulz,
    split_params,
)


@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32)])
def test_newton_schulz_flattens_singular_values(shape):
    torch.manual_seed(0)
    g = torch.randn(*shape) @ torch.diag(torch.logspace(-0.5, 0.5, shape[1]))  # badly conditioned
    s_in = torch.linalg.svdvals(g)
    s = torch.linalg.svdvals(newton_schulz(g, steps=5, dtype=torch.float32))
    assert s_in.max() / s_in.min() > 4
    # The quintic does not converge to exactly 1: it squeezes every singular value that is not tiny
    # relative to the largest into ~[0.6, 1.2] (the mapping is monotone, so sorted orders agree).
    keep = s_in > s_in.max() / 30
    assert keep.sum() >= 0.75 * len(s_in)
    assert s[keep].min() > 0.5 and s.max() < 1.25
    # Same singular vectors: U V^T of the input.
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cos = torch.nn.functional.cosine_similarity(newton_schulz(g, dtype=torch.float32).flatten(), (u @ vh).flatten(), dim=0)
    assert cos > 0.95


def test_newton_schulz_bf16_matches_fp32():
    torch.manual_seed(1)
    g = torch.randn(48, 80)
    a = newton_schulz(g, dtype=torch.bfloat16).float()
    b = newton_schulz(g, dtype=torch.float32)
    assert a.dtype == torch.float32 and (a - b).abs().max() < 0.05


def test_muon_step_is_nesterov_momentum_then_orthogonalised():
    torch.manual_seed(2)
    p = torch.nn.Parameter(torch.randn(16, 32))
    opt = Muon([p], lr=0.1, momentum=0.9, ns_dtype=torch.float32)
    g1, g2 = torch.randn(16, 32), torch.randn(16, 32)
    w0 = p.detach().clone()
    p.grad = g1.clone()
    opt.step()
    # step 1: buf = g1, update = NS(g1 + 0.9 * g1)
    exp1 = w0 - 0.1 * newton_schulz(g1 + 0.9 * g1, dtype=torch.float32)
    torch.testing.assert_close(p.detach(), exp1)
    p.grad = g2.clone()
    opt.step()
    buf = 0.9 * g1 + g2
    exp2 = exp1 - 0.1 * newton_schulz(g2 + 0.9 * buf, dtype=torch.float32)
    torch.testing.assert_close(p.detach(), exp2)


def test_muon_scales_tall_matrices():
    p = torch.nn.Parameter(torch.zeros(64, 16))
    p.grad = torch.randn(64, 16)
    Muon([p], lr=1.0, momentum=0.0, nesterov=False, ns_dtype=torch.float32).step()
    expected = -newton_schulz(p.grad, dtype=torch.float32) * 2.0  # sqrt(64 / 16)
    torch.testing.assert_close(p.detach(), expected)


def test_param_split_matches_the_baseline():
    cfg = preset("tiny").replace(tie_embeddings=False)
    model = GPT(cfg.model_config())
    groups = split_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    matrix = sorted(names[id(p)] for p in groups["matrix"])
    scalar = sorted(names[id(p)] for p in groups["scalar"])
    assert all(n.endswith((".c_q.weight", ".c_k.weight", ".c_v.weight", ".proj.weight", ".fc.weight")) for n in matrix)
    assert len(matrix) == 6 * cfg.num_layers
    # resid_mix is 2-D but a control tensor: Adam, not Muon.
    assert "blocks.0.resid_mix" in scalar and "skip_weights" in scalar and "blocks.1.attn.q_gain" in scalar
    opts = build_optimizers(model, cfg)
    assert len(opts) == 4  # tok_emb, Muon, scalars, untied head
    assert [g["base_lr"] for o in opts for g in o.param_groups] == [cfg.embed_lr, cfg.matrix_lr, cfg.scalar_lr, cfg.head_lr]
    assert sum(len(g["params"]) for o in opts for g in o.param_groups) == len(list(model.parameters()))


def test_warmdown_by_iterations():
    cfg = preset("tiny").replace(iterations=100, warmdown_iters=20, max_wallclock_seconds=0.0)
    assert lr_multiplier(cfg, 0, 0.0) == 1.0
    assert lr_multiplier(cfg, 79, 0.0) == 1.0
    assert lr_multiplier(cfg, 80, 0.0) == 1.0
    assert lr_multiplier(cfg, 90, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(cfg, 99, 0.0) == pytest.approx(0.05)
    assert lr_multiplier(cfg.replace(warmdown_iters=0), 99, 0.0) == 1.0


def test_warmdown_by_wallclock():
    cfg = preset("tiny").replace(iterations=10_000, warmdown_iters=100, max_wallclock_seconds=10.0)
    # 100 ms/step so far: warmdown covers the last 100 * 100 ms = 10 s, i.e. all of it.
    assert lr_multiplier(cfg, 10, 1000.0) == pytest.approx(0.9)
    # 10 ms/step: warmdown is the last 1 s; at 5 s elapsed the lr is still full, at 9.5 s it is half.
    assert lr_multiplier(cfg, 500, 5000.0) == 1.0
    assert lr_multiplier(cfg, 950, 9500.0) == pytest.approx(0.5)
    assert lr_multiplier(cfg, 1000, 10_000.0) == 0.0


def test_muon_momentum_warmup():
    cfg = preset("baseline")
    assert muon_momentum_at(cfg, 0) == pytest.approx(0.85)
    assert muon_momentum_at(cfg, 250) == pytest.approx(0.90)
    assert muon_momentum_at(cfg, 500) == pytest.approx(0.95)
    assert muon_momentum_at(cfg, 5000) == pytest.approx(0.95)
