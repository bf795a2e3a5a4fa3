"""The search's speed-ups must not change its answers: the prefix-cached direct measurement equals the
full forward, the budget-aware proxy screen picks the layout the unscreened search picks (and measures what it uses), the pooled cost tables equal
the in-process ones, and every phase reports its wall and CPU seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from golfpack.budget import SearchConfig, run_search
from golfpack.budget import sensitivity as S
from golfpack.formats.shards import write_shard
from golfpack.formats.spec import TensorSpec
from golfpack.model import GPT, ModelConfig
from golfpack.packer.calibration import make_batch


def _model(tie: bool) -> GPT:
    torch.manual_seed(1)
    m = GPT(ModelConfig(vocab_size=64, num_layers=5, model_dim=16, num_heads=2, num_kv_heads=1, mlp_hidden=32, tie_embeddings=tie))
    with torch.no_grad():
        for prm in m.parameters():
            prm.add_(torch.randn_like(prm) * (0.1 if prm.ndim == 2 else 0.05))  # scales, mixes and skips off their init
    return m.eval()


@pytest.mark.parametrize("tie", [True, False])
def test_prefix_cached_sensitivity_equals_full_forward(tie):
    m = _model(tie)
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    batch = make_batch((np.arange(4000) * 13 % 64).astype(np.int64), 4, 24, vocab_size=64)
    specs = [TensorSpec("int", bits=b, clip="quantile") for b in (6, 3)]
    cands = {n: specs for n, t in sd.items() if t.is_floating_point() and t.numel() > 1}
    calls = {"n": 0}
    hooks = [b.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1)) for b in m.blocks]
    _, full = S.measure_direct(m, sd, cands, batch, prefix_cache=False)
    full_calls, calls["n"] = calls["n"], 0
    _, fast = S.measure_direct(m, sd, cands, batch, prefix_cache=True)
    for h in hooks:
        h.remove()
    assert set(cands) >= {"skip_weights", "blocks.0.attn.c_q.weight", "blocks.4.mlp.proj.weight", "tok_emb.weight"}
    for o in S.OBJECTIVES:
        for n in cands:
            for s in specs:
                assert abs(fast[o][n][s.label()] - full[o][n][s.label()]) <= 1e-6, (o, n, s.label())
    assert max(abs(v) for v in full["kl"]["blocks.4.mlp.proj.weight"].values()) > 1e-4  # the candidates do hurt
    # the prefix cache skips work: blocks before a candidate's own are not rerun (the head reruns none)
    assert calls["n"] < 0.75 * full_calls
    for k in sd:
        assert torch.equal(m.state_dict()[k], sd[k])  # weights restored


def test_start_layer_names_what_a_parameter_can_move():
    m = _model(False)
    assert S.start_layer(m, "blocks.3.attn.c_q.weight") == 3
    assert S.start_layer(m, "skip_weights") == m.num_encoder_layers
    assert S.start_layer(m, "lm_head.weight") == "head"
    assert S.start_layer(m, "tok_emb.weight") is None


def test_identical_values_cost_no_forward():
    m = _model(True)
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    batch = make_batch((np.arange(4000) * 13 % 64).astype(np.int64), 2, 16, vocab_size=64)
    n = "blocks.1.attn.c_k.weight"
    cands = {n: [TensorSpec("passthrough", dtype="fp32"), TensorSpec("int", bits=4, clip="quantile"), TensorSpec("int", bits=4, clip="mse")]}
    calls = {"n": 0}
    hooks = [b.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1)) for b in m.blocks]
    same = lambda name, s: sd[name] if s.kind == "passthrough" else sd[name].round(decimals=1)  # noqa: E731  (both ints store the same values)
    calls["n"] = 0
    _, out = S.measure_direct(m, sd, cands, batch, values=same)
    for h in hooks:
        h.remove()
    assert out["kl"][n]["fp32"] == 0.0 and out["nll"][n]["fp32"] == 0.0
    assert out["kl"][n]["int4"] == out["kl"][n]["int4:mse"] > 0
    # setup: the prefix cache (one full forward; its final hidden states give the raw predictions too), then
    # ONE forward from block 1 on for the two int candidates; the lossless one needs none
    assert calls["n"] == len(m.blocks) + (len(m.blocks) - 1)


def test_screen_keeps_the_proxy_frontier_and_samples_the_rest():
    costs = {"w": {"a": 100, "b": 50, "c": 50, "d": 10}}
    proxy = {"w": {"a": 0.0, "b": 1.0, "c": 5.0, "d": 1.5}}
    keep, sample = S.screen(costs, proxy, margin=2.0, sample=0.0)
    assert keep == {"w": ["a", "b", "d"]} and sample == []  # c: b costs the same and hurts 5x less
    keep, sample = S.screen(costs, proxy, margin=6.0, sample=0.0)
    assert keep["w"] == ["a", "b", "c", "d"]  # within the margin: measured
    _, sample = S.screen(costs, proxy, margin=2.0, sample=1.0)
    assert sample == [("w", "c")]
    est = S.fill_screened({"w": {"a": 0.0, "b": 0.3, "d": 0.9}}, proxy, costs)
    assert est["w"]["a"] == 0.0 and est["w"]["b"] == 0.3
    assert est["w"]["c"] >= 0.3  # never better than the candidate that screened it out


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    write_shard(d / "c_train_000000.bin", (np.arange(8_000) * 7 % 1024).astype(np.uint16))
    return str(d / "c_train_000000.bin")


def _cfg(shard, **kw):
    base = dict(budget=60_000, calib=shard, bits=(8, 6, 4), clips=("quantile", "mse"), gptq=False, calib_batch=2, calib_seq=64,
                proxy_batch=2, select_batch=2, progress=False)
    return SearchConfig(**{**base, **kw})


def test_screened_search_picks_the_unscreened_layout(small_ckpt, shard):
    fast = run_search(small_ckpt, _cfg(shard, workers=1))
    slow = run_search(small_ckpt, _cfg(shard, screen=False, prefix_cache=False, workers=1))
    sc = fast.sens["screen"]
    assert sc["measured"] < sc["candidates"] and "screen" not in slow.sens
    assert {n: s.label() for n, s in fast.specs.items()} == {n: s.label() for n, s in slow.specs.items()}
    assert fast.model_bytes == slow.model_bytes
    # the budget-aware screen measured every candidate the unscreened solution uses, within the cap
    assert all(s.label() in fast.sens["measured"][n] for n, s in slow.specs.items())
    assert sc["max_direct"] is None and sc["filled"] == sc["candidates"] - sc["measured"]  # no cap by default
    # the honesty sample's rank agreement is reported: in the JSON report and in the human report
    ag = sc["sample_agreement"]
    assert ag["pairs"] == sc["sampled"] >= 3 and -1 <= ag["spearman"] <= 1 and -1 <= ag["kendall"] <= 1
    assert fast.report()["screen"] is sc
    from golfpack.cli.search import human_lines

    line = [ln for ln in human_lines({**fast.report(), "predicted_delta_bpb": None}) if ln.startswith("screen:")]
    assert line == [f"screen: {sc['measured']} of {sc['candidates']} candidates measured directly ({sc['sampled']} sampled, no cap), "
                    f"{sc['filled']} filled from the proxy; honesty sample: "
                    f"Spearman {ag['spearman']:.3f}, Kendall {ag['kendall']:.3f} over {ag['pairs']}"]
    for r in (fast, slow):
        for phase in ("floor", "calibration", "costs", "sensitivity", "fit", "select"):
            assert r.timings[phase] >= 0 and r.cpu_timings[phase] >= 0
        assert r.report()["cpu_seconds"] == r.cpu_timings
    assert sum(fast.cpu_timings.values()) > 0


def test_gptq_calib_moves_only_the_hessians(small_ckpt, shard, sp1024_model):
    """gptq_calib='pydoc': the GPTQ Hessians (and the policy a replay reads) come from pydoc tokens, while the
    measurement and selection batches stay the calib shard's."""
    from golfpack.budget.problem import load_problem

    base = _cfg(shard, gptq=True, bits=(4,), clips=("quantile",), gptq_batch=2, tokenizer=str(sp1024_model))
    p_same, p_doc = load_problem(small_ckpt, base), load_problem(small_ckpt, base.replace(gptq_calib="pydoc"))
    assert p_same.calibration.source == shard and p_doc.calibration.source == "pydoc"
    p_same.pin_calibration(shard)
    p_doc.pin_calibration("pydoc")
    assert p_same.calibration.digest != p_doc.calibration.digest
    name = "blocks.0.mlp.fc.weight"
    assert not torch.equal(p_same.gptq_hessians()[name], p_doc.gptq_hessians()[name])
    res = run_search(small_ckpt, base.replace(gptq_calib="pydoc", workers=1, budget=40_000, passthrough=()))
    assert res.policy.uses_gptq and res.policy.calibration.to_dict() == p_doc.calibration.to_dict()


@pytest.mark.slow
def test_pooled_cost_tables_equal_in_process_ones(small_ckpt, shard, monkeypatch):
    from golfpack.budget import costs
    from golfpack.budget.cache import Cache
    from golfpack.budget.problem import load_problem

    cfg = _cfg(shard)
    tables = []
    for workers, floor in ((1, costs.POOL_MIN_NUMEL), (2, 0)):
        monkeypatch.setattr(costs, "POOL_MIN_NUMEL", floor)  # 0: the small model's encodes go through the spawned pool
        p = load_problem(small_ckpt, cfg)
        p.pin_calibration(shard)
        tables.append(costs.cost_tables(p, ["lzma"], Cache(None), progress=False, workers=workers)["lzma"])
    assert tables[0] == tables[1] and len(tables[0]) == len(p.names)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_prefix_cached_sensitivity_on_cuda_matches_cpu():
    m = _model(False)
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    batch = make_batch((np.arange(4000) * 13 % 64).astype(np.int64), 4, 24, vocab_size=64)
    cands = {n: [TensorSpec("int", bits=4, clip="quantile")] for n in ("blocks.2.mlp.fc.weight", "lm_head.weight", "skip_weights")}
    _, cpu = S.measure_direct(m, sd, cands, batch)
    _, gpu = S.measure_direct(m.to("cuda"), sd, cands, batch, device="cuda")
    for n in cands:
        assert gpu["kl"][n]["int4"] == pytest.approx(cpu["kl"][n]["int4"], rel=1e-3, abs=1e-7)


@pytest.mark.parametrize("tie", [True, False])
def test_batched_candidates_score_like_one_at_a_time(tie):
    """scores_many stacks candidates of one block weight along the batch after that block (encoder and
    decoder blocks, groups split by batch_rows; on the CPU only when asked): the numbers of `scores`, one candidate at a time, to 1e-6."""
    m = _model(tie)
    batch = make_batch((np.arange(4000) * 13 % 64).astype(np.int64), 4, 24, vocab_size=64)
    ref = S.reference_logprobs(m, batch, micro=2)
    pc = S.PrefixCache(m, batch, micro=2, batch_rows=4)  # two candidates per batched forward: 3 candidates make 2 groups
    assert all(torch.equal(a, b) for a, b in zip(pc.reference(), ref))  # the raw predictions from the cache: no extra forward
    params = dict(m.named_parameters())
    for name in ("blocks.0.attn.c_q.weight", "blocks.1.mlp.fc.weight", "blocks.2.attn.proj.weight", "blocks.4.mlp.proj.weight"):
        p = params[name]
        orig = p.data.clone()
        vals = [orig + 0.05 * torch.randn_like(orig) for _ in range(3)]
        one = []
        for v in vals:
            p.data.copy_(v)
            one.append(pc.scores(name, ref))
        many = pc.scores_many(name, p.data, vals, ref)
        p.data.copy_(orig)
        for (a, b), (c, d) in zip(one, many):
            assert abs(a - c) <= 1e-6 and abs(b - d) <= 1e-6, name
        assert len({round(b, 9) for _, b in many}) == 3  # three different candidates, three different scores


def test_the_device_reaches_every_phase(small_ckpt, shard, monkeypatch):
    """--device reaches calibration sampling, the GPTQ Hessians, the proxy and direct forwards and the joint
    selection: every model the search builds is built on it, and the Hessians' forwards run on it ('cpu:0' is
    the CPU under another name, so a CPU run proves the string is passed along, not defaulted)."""
    from golfpack.budget import problem as P
    from golfpack.packer import hessian as H

    seen: list[tuple[str, str]] = []
    build, hess = P.Problem.build, H.hessians_for

    def rec_build(self, state_dict=None, device="cpu"):
        seen.append(("build", str(device)))
        return build(self, state_dict, device=device)

    def rec_hess(*a, **kw):
        seen.append(("hessians", str(kw.get("device", "cpu"))))
        return hess(*a, **kw)

    monkeypatch.setattr(P.Problem, "build", rec_build)
    monkeypatch.setattr(H, "hessians_for", rec_hess)
    r = run_search(small_ckpt, _cfg(shard, device="cpu:0", gptq=True, gptq_batch=2, calib="self", self_sequences=8, workers=1,
                               bits=(4,), clips=("quantile",), passthrough=()))
    assert r.report()["device"] == "cpu:0"
    assert ("hessians", "cpu:0") in seen
    builds = [d for k, d in seen if k == "build"]
    assert len(builds) >= 3 and set(builds) == {"cpu:0"}  # self-calibration, sensitivity, joint selection (+ each layout)
    assert set(r.peak_rss) == set(r.timings) and all(v > 0 for v in r.peak_rss.values())


def test_phase_line_tells_each_phases_share():
    from golfpack.cli.search import phase_line

    rep = {"timings": {"floor": 1.0, "sensitivity": 3.0}, "cpu_seconds": {"floor": 0.5, "sensitivity": 5.9},
           "peak_rss_mb": {"floor": 300.0, "sensitivity": 1234.0}, "device": "cpu"}
    assert phase_line(rep) == "phases (4.0 s wall on cpu): floor 1.0 s (25%, CPU 0.5 s), sensitivity 3.0 s (75%, CPU 5.9 s); peak RSS 1,234 MiB"


def test_two_pass_keeps_one_pass_values_where_it_measures_all_rows(small_ckpt, shard):
    """coarse_batch: every candidate within reach is measured on the coarse rows, and those the coarse values keep
    within fine_margin on the other rows too; a fine value is the one-pass value over all rows (to 1e-6), any other
    the coarse rows' own value."""
    from golfpack.budget.measure import split_rows
    from golfpack.packer.calibration import calib_halves

    cfg = _cfg(shard, calib_batch=4, coarse_batch=2, fine_margin=1.05, workers=1)
    res = run_search(small_ckpt, cfg)
    sens, p = res.sens, res.problem
    fine, measured = sens["fine"], sens["measured"]
    n_fine, n_meas = sum(map(len, fine.values())), sum(map(len, measured.values()))
    assert 0 < n_fine < n_meas and sens["screen"]["fine"] == n_fine and sens["screen"]["coarse_batch"] == 2
    assert all(set(fine[n]) <= set(measured[n]) for n in p.names)
    batch = make_batch(calib_halves(cfg.calib)[0], 4, 64, vocab_size=p.vocab_size)
    coarse_rows, rest_rows = split_rows(batch, 2)
    assert coarse_rows.inputs.shape[0] == rest_rows.inputs.shape[0] == 2
    assert torch.equal(coarse_rows.inputs, batch.inputs[[0, 2]]) and torch.equal(rest_rows.inputs, batch.inputs[[1, 3]])
    model = p.build()
    values = lambda n, s: p.record(n, s).dequantize()  # noqa: E731
    sub = {n: [s for s in p.candidates[n] if s.label() in set(measured[n])] for n in p.names}
    _, full = S.measure_direct(model, p.state_dict, sub, batch, values=values)
    _, part = S.measure_direct(model, p.state_dict, sub, coarse_rows, values=values)
    checked = {"fine": 0, "coarse": 0}
    for n in p.names:
        for lbl in measured[n]:
            want = full["kl"][n][lbl] if lbl in fine[n] else part["kl"][n][lbl]
            assert abs(sens["direct"][n][lbl] - want) <= 1e-6, (n, lbl)
            checked["fine" if lbl in fine[n] else "coarse"] += 1
    assert checked["fine"] > 0 and checked["coarse"] > 0
    from golfpack.cli.search import screen_line

    assert screen_line(sens["screen"]).endswith(
        f"filled from the proxy; {n_fine:,} of them on every sequence, the rest on 2 (fine margin 1.05)"
        + screen_line({**sens["screen"], "coarse_batch": None}).split("filled from the proxy")[1])


def test_fitters_share_exact_packs(small_ckpt, shard, monkeypatch):
    """Problem.size packs a layout once per codec for the whole search, and a fit seeded with another's packs (its
    cost model's points) starts from them instead of packing the cheapest layout."""
    from golfpack.budget.cache import Cache
    from golfpack.budget.costs import cost_tables
    from golfpack.budget.fit import Fitter
    from golfpack.budget.problem import Problem, load_problem

    cfg = _cfg(shard, workers=1)
    p = load_problem(small_ckpt, cfg)
    p.pin_calibration(shard)
    table = cost_tables(p, ["lzma"], Cache(None), progress=False, workers=1)["lzma"]
    # a smooth frontier: damage ~ values x 4^-bits, weighted differently per tensor
    deltas = {n: {s.label(): (1 + k % 5) * p.state_dict[n].numel() * 4.0 ** -s.bits if s.kind == "int" else 0.0 for s in p.candidates[n]}
              for k, n in enumerate(p.names)}
    calls = {"n": 0}
    enc = Problem.encode

    def counting(self, choice, codec):
        calls["n"] += 1
        return enc(self, choice, codec)

    monkeypatch.setattr(Problem, "encode", counting)
    first = Fitter.for_problem(p, "lzma", table, deltas, cfg).fit(cfg.budget)
    n1 = calls["n"]
    assert n1 == first.packs + 1 >= 3 and len(p.sizes["lzma"]) == n1  # the calibration pack + the fit's: each a new layout
    again = Fitter.for_problem(p, "lzma", table, deltas, cfg).fit(cfg.budget)
    assert again.choice == first.choice and calls["n"] == n1  # unseeded: the same packs, all from the memo
    seeded = Fitter.for_problem(p, "lzma", table, deltas, cfg, seed=first.cost_model.points)
    cm = seeded.calibrate()
    assert seeded.sizes == {} and cm.points == sorted(set(first.cost_model.points))  # no pack: the seed is the first model
    second = seeded.fit(cfg.budget)
    assert second.model_bytes <= cfg.budget and calls["n"] == len(p.sizes["lzma"])  # every encode a layout new to the search
    n2 = calls["n"]
    assert p.size(first.choice, "lzma") == first.model_bytes and calls["n"] == n2  # memo: no pack
