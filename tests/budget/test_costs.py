"""Phase 3's fast paths: every candidate quantized once gives the records one at a time gives, and the estimated
cost table is within a stated error of the real one-record bytes."""

from __future__ import annotations

import torch

from golfpack.budget import costs
from golfpack.budget.cache import Cache
from golfpack.budget.config import SearchConfig
from golfpack.budget.problem import load_problem
from golfpack.packer.quantize import hessian_from_activations, quantize_tensor

ESTIMATE_MEDIAN_ERROR = 0.05  # median |estimate - real| / real over the estimated entries (records of 4K+ values)
ESTIMATE_MAX_ERROR = 0.25  # the worst entry


def _problem(tmp_path, dim: int, bits: tuple[int, ...]):
    from dataclasses import replace

    from golfpack.model import GPT, ModelConfig

    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=128, num_layers=1, model_dim=dim, num_heads=2, num_kv_heads=1, mlp_hidden=2 * dim))
    with torch.no_grad():
        for prm in m.parameters():
            if prm.ndim == 2:
                prm.normal_(0, 0.05).mul_(torch.rand(prm.shape[0], 1) + 0.2)
    path = tmp_path / "m.pt"
    torch.save(m.state_dict(), path)
    p = load_problem(path, SearchConfig(budget=10**6, calib="synthetic", bits=bits))
    g = torch.Generator().manual_seed(1)
    p.hessians = {n: hessian_from_activations(torch.randn(256, p.state_dict[n].shape[1], generator=g))
                  for n, c in p.candidates.items() if any(s.needs_hessian for s in c)}
    p.calibration = replace(p.calibration, digest="synthetic")
    return p


def test_quantize_all_gives_the_records_of_one_at_a_time(tmp_path):
    p = _problem(tmp_path, 16, (6, 3))
    p.quantize_all()
    assert len(p.records) == sum(len(v) for v in p.candidates.values())
    assert any(s.gptq for v in p.candidates.values() for s in v)
    for n in p.names:
        for s in p.candidates[n]:
            r = p.records[(n, s.label())]
            one = quantize_tensor(n, p.state_dict[n], s, p.hessians.get(n) if s.needs_hessian else None)
            for a, b in ((r.q, one.q), (r.scales, one.scales), (r.data, one.data)):
                assert (a is None and b is None) or (a.dtype == b.dtype and (a == b).all()), (n, s.label())


def test_estimated_cost_table_is_near_the_real_bytes(tmp_path, monkeypatch):
    p = _problem(tmp_path, 48, (8, 4))
    monkeypatch.setattr(costs, "EXACT_NUMEL", 2000)  # the small model's matrices get estimated
    est = costs.cost_tables(p, ["lzma"], Cache(None), progress=False, workers=1)["lzma"]
    real_keys = {(n, lbl) for n, lbl, _ in p.alone}
    errs = []
    for n in p.names:
        for s in p.candidates[n]:
            if (n, s.label()) in real_keys:
                assert est[n][s.label()] == p.alone[(n, s.label(), "lzma")]  # what was encoded is exact
            else:
                errs.append(abs(est[n][s.label()] - p.alone_bytes(n, s, "lzma")) / p.alone_bytes(n, s, "lzma"))
    assert len(errs) > 30  # most of the table was estimated, not encoded
    errs.sort()
    assert errs[len(errs) // 2] < ESTIMATE_MEDIAN_ERROR and errs[-1] < ESTIMATE_MAX_ERROR, errs[-5:]
