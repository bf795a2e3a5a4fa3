"""Pins of documented search behaviour that a one-line change could silently break: the held-out split,
halving an overflowing upgrade batch, regularized deltas into the solver, which layouts are compared,
the frontier every search prints, and SearchResult.artifact/.save replaying the search's bytes."""

from __future__ import annotations

import numpy as np
import pytest

from golfpack.budget import SearchConfig, run_search
from golfpack.budget.fit import Fitter
from golfpack.formats.shards import write_shard
from golfpack.packer import calibration
from golfpack.packer.pack import DEFAULT_CODEC
from golfpack.packer.policy import PRESETS


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    # distinct-ish tokens so the two halves never share a window
    d = tmp_path_factory.mktemp("cal")
    write_shard(d / "c_train_000000.bin", (np.arange(8_000) * 7 % 1024).astype(np.uint16))
    return str(d / "c_train_000000.bin")


BUDGET = 60_000  # binds: fp32 everywhere is ~161 KB, the floor ~25 KB


def _cfg(shard, **kw):
    base = dict(budget=10**6, calib=shard, bits=(8, 6, 4), clips=("quantile",), gptq=False, calib_batch=2, calib_seq=64,
                proxy_batch=2, select_batch=2, progress=False)
    return SearchConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def result(small_ckpt, shard):
    return run_search(small_ckpt, _cfg(shard, budget=BUDGET))


def _spy_batches(monkeypatch, module):
    seen = []
    real = calibration.make_batch

    def spy(tokens, *a, **k):
        seen.append(np.asarray(tokens).copy())
        return real(tokens, *a, **k)

    monkeypatch.setattr(module, "make_batch", spy)
    return seen


def test_measurement_and_selection_read_disjoint_halves(result, shard, monkeypatch):
    from golfpack.budget import measure, select, sensitivity

    measure_half, held_out = calibration.calib_halves(shard)
    zeros = {n: {s.label(): 0.0 for s in c} for n, c in result.problem.candidates.items()}
    monkeypatch.setattr(sensitivity, "measure_direct", lambda *a, **k: (5.0, {"kl": zeros, "nll": zeros}))  # only the tokens matter here
    seen = _spy_batches(monkeypatch, measure)
    cfg = _cfg(shard, sensitivity="direct")
    measure.sensitivity(result.problem, cfg, measure.Cache(None))
    assert seen and all(np.array_equal(t, measure_half) for t in seen)
    seen = _spy_batches(monkeypatch, calibration)  # joint_scorer imports it when called
    select.joint_scorer(result.problem, cfg)
    assert len(seen) == 1 and np.array_equal(seen[0], held_out)


def test_regularized_deltas_go_to_the_solver(result, shard, monkeypatch):
    from golfpack.budget import measure, sensitivity

    p = result.problem
    name = "blocks.0.mlp.fc.weight"
    labels = [s.label() for s in p.candidates[name]]
    assert labels == ["fp32", "fp16", "int8", "int8:sd12", "int6", "int6:sd12", "int4", "int4:sd12"]  # 32 columns: no g64
    raw = {n: {s.label(): 0.0 for s in c} for n, c in p.candidates.items()}
    raw[name] = {"fp32": 0.0, "fp16": -0.01, "int8": 0.3, "int6": 0.1, "int4": 0.5,  # noisy: negative, non-monotone
                 "int8:sd12": 0.2, "int6:sd12": 0.05, "int4:sd12": 0.4}
    monkeypatch.setattr(sensitivity, "measure_direct", lambda *a, **k: (5.0, {"kl": raw, "nll": raw}))
    out = measure.sensitivity(p, _cfg(shard, sensitivity="direct"), measure.Cache(None))
    assert out["direct"][name] == raw[name]
    assert out["deltas"][name] == {"fp32": 0.0, "fp16": 0.0, "int8": 0.3, "int6": 0.3, "int4": 0.5,
                                   "int8:sd12": 0.2, "int6:sd12": 0.2, "int4:sd12": 0.4}  # each clip rule on its own


def test_an_overflowing_upgrade_batch_is_halved():
    # four upgrades of 100 predicted bytes each; applying all four at once costs 300 bytes more than predicted
    costs, losses = [[100, 200]] * 4, [[1.0, 0.0]] * 4

    def size_of(ch):
        k = sum(ch)
        return 400 + 100 * k + (300 if k >= 4 else 0)

    f = Fitter(costs, losses, size_of, SearchConfig(budget=1, target_headroom=4))
    trace: list[dict] = []
    ch = f.spend_headroom((0, 0, 0, 0), 800, trace)
    steps = [(t["upgrades"], t["fits"]) for t in trace]
    # 4 overflow -> 2 fit -> 2 (all that is left) overflow -> 1 fits -> the last one alone overflows and is dropped
    assert steps == [(4, False), (2, True), (2, False), (1, True), (1, False)]
    assert sum(ch) == 3 and f.measure(ch) == 700


def test_joint_selection_compares_solver_greedy_proxy_and_every_fitting_preset(result, shard):
    from golfpack.budget.select import alternatives

    cfg = _cfg(shard, budget=BUDGET)
    found = alternatives(result.problem, cfg, result.fits, result.tables, result.sens, cfg.budget, unique=False)
    presets = [f"preset:{n}" for n in PRESETS if _preset_fits(result.problem, n, cfg.budget)]
    c = DEFAULT_CODEC
    assert [a.source for a in found] == [f"solver:{c}", f"greedy:{c}", f"proxy:{c}", *presets]
    assert "preset:int6" in presets and "preset:int8" not in presets  # int8 everywhere is over this budget
    assert all(a.model_bytes <= cfg.budget for a in found if a.exact)
    # greedy and proxy come on predicted bytes, each with the real fit `settle` runs only if it ties the best
    assert [a.exact for a in found[1:3]] == [False, False] and all(a.refit is not None for a in found[1:3])
    # a layout found twice is compared once; the search scored every distinct one jointly
    # (or, for a predicted answer that tied the best, its real fit replaced it: settle's test covers that)
    kept = {(a.choice, a.codec) for a in result.alternatives}
    assert all((a.choice, a.codec) in kept for a in found if a.refit is None)
    assert all(a.joint == a.joint for a in result.alternatives)  # scored (not nan)
    # without a proxy estimate (sensitivity='direct' drives and no proxy exists) it is left out
    sens = {k: v for k, v in result.sens.items() if k != "proxy"}
    assert f"proxy:{DEFAULT_CODEC}" not in [a.source for a in alternatives(result.problem, cfg, result.fits, result.tables, sens, cfg.budget, unique=False)]


def test_presets_far_from_the_budget_are_not_packed(result, shard):
    """alternatives(): a preset the fit's cost model puts over (1 + margin) x the budget is left out unpacked; one far
    under comes with its predicted bytes (exact=False), within PRESET_PREDICT_MARGIN of its exact pack."""
    from golfpack.budget.select import PRESET_PREDICT_MARGIN, alternatives, preset_choice
    from golfpack.packer.policy import PRESETS

    r, cfg = result, _cfg(shard, budget=BUDGET)
    p = r.problem
    packed_before = dict(p.sizes[DEFAULT_CODEC])
    found = {a.source: a for a in alternatives(p, cfg, r.fits, r.tables, r.sens, cfg.budget, unique=False)}
    assert p.sizes[DEFAULT_CODEC].keys() - packed_before.keys() <= {found[s].choice for s in found if found[s].exact}
    for name in PRESETS:
        ch = preset_choice(p, name)
        if ch is None:
            continue
        exact = p.size(ch, DEFAULT_CODEC)
        a = found.get(f"preset:{name}")
        if exact > (1 + 2 * PRESET_PREDICT_MARGIN) * cfg.budget:
            assert a is None
        if a is not None and not a.exact:
            assert abs(a.model_bytes / exact - 1) < PRESET_PREDICT_MARGIN and exact <= cfg.budget
    assert any(not a.exact for a in found.values()), "no preset was compared on its prediction: the test proves nothing"


def _preset_fits(p, name, budget):
    from golfpack.budget.select import preset_choice

    ch = preset_choice(p, name)
    return ch is not None and len(p.encode(ch, DEFAULT_CODEC)) <= budget


def test_frontier_in_process(result):
    from golfpack.budget.report import frontier, frontier_table
    from golfpack.formats.qgv3 import decode_qgv3

    scored = []

    def scorer(sd):  # a real function of the decoded weights: the mean squared error against the raw model
        err = sum(float(((sd[n].float() - t.float()) ** 2).sum()) for n, t in result.state_dict.items()) / len(sd)
        scored.append(err)
        return err, None

    rows = frontier(result, points=3, scorer=scorer, base=(0.0, None), bpb_per_nat=0.5, progress=False)
    assert [r["model_bytes"] for r in rows] == sorted(r["model_bytes"] for r in rows)
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["model_bytes"] == result.model_bytes == len(result.artifact.data)
    assert chosen[0]["predicted_delta_loss"] == result.predicted_loss
    assert chosen[0]["predicted_delta_bpb"] == pytest.approx(0.5 * result.predicted_loss)
    for r in rows:
        assert r["total_bytes"] == r["model_bytes"] + result.code_bytes and r["model_bytes"] <= r["model_budget"]
        assert r["measured_delta_loss"] == r["measured_loss"] >= 0.0
    # the chosen row is scored on exactly the artifact's decoded tensors
    assert chosen[0]["measured_loss"] == scorer(decode_qgv3(result.artifact.data).state_dict())[0] > 0
    # the smallest row is the floor layout: the most damage, measured and predicted
    assert rows[0]["measured_loss"] == max(r["measured_loss"] for r in rows) > 0
    assert rows[0]["predicted_delta_loss"] == max(r["predicted_delta_loss"] for r in rows)
    assert len(rows) >= 2 and len(frontier_table(rows)) == len(rows) + 1


def test_result_artifact_and_save_replay_the_search(result, small_ckpt, tmp_path):
    from golfpack.packer.pack import pack_file
    from golfpack.packer.policy import Policy

    art = result.artifact
    assert art is result.artifact  # packed once
    assert art.model_bytes == result.model_bytes and art.codec == result.codec and art.budget == result.budget
    assert [r.spec.label() for r in art.records] == [result.specs[n].label() for n in result.problem.names]
    out = result.save(tmp_path / "a.qg3", policy_path=tmp_path / "a.policy.json")
    assert out.read_bytes() == art.data
    replay = pack_file(small_ckpt, tmp_path / "r.qg3", policy=Policy.load(tmp_path / "a.policy.json"), codec=result.codec)
    assert replay.data == art.data  # what `golfpack pack --policy` writes, byte for byte
    result.save(tmp_path / "b.qg3")
    assert (tmp_path / "b.qg3").read_bytes() == art.data and not (tmp_path / "b.policy.json").exists()


def test_joint_scores_carry_kl_and_delta_nll_and_a_far_from_minimum_model_gets_the_first_order_note(result):
    """Every compared layout keeps both numbers of its held-out forward; with objective kl the joint score is the KL.
    The small model is random weights on a token pattern it never saw, so its held-out loss change is mostly first
    order: the report says so, with the chosen layout's numbers, and the CLI prints it."""
    from golfpack.cli.search import human_lines

    assert all(a.joint == a.joint_kl and a.joint_nll == a.joint_nll for a in result.alternatives)
    c = result.chosen
    assert abs(c.joint_nll - c.joint_kl) > c.joint_kl > 0
    assert len(result.notes) == 1 and f"{c.joint_nll:+.5f} nats/token" in result.notes[0] and f"{c.joint_kl:.5f}" in result.notes[0]
    rep = result.report()
    assert rep["notes"] == result.notes and rep["joint_kl"] == c.joint_kl and rep["joint_delta_nll"] == c.joint_nll
    assert rep["alternatives"][0]["joint_delta_nll"] == result.alternatives[0].joint_nll
    assert f"note: {result.notes[0]}" in human_lines({**rep, "predicted_delta_bpb": None})


@pytest.mark.parametrize("calib, objective, kl, nll, fires", [
    ("shard.bin", "kl", 0.001, -0.010, True),  # first order -0.011: ten times the KL
    ("shard.bin", "kl", 0.001, 0.0035, True),  # +0.0025 > KL: a loss the KL misses, too
    ("shard.bin", "kl", 0.001, 0.0018, False),  # first order 0.0008 <= KL: KL judges most of it
    ("self", "kl", 0.001, -0.010, False),  # the model's own samples: first order is sampling noise there
    ("shard.bin", "nll", 0.001, -0.010, False),  # objective nll already judges it
    ("shard.bin", "kl", float("nan"), -0.010, False),  # not scored jointly (select off)
])
def test_first_order_note_fires_only_for_real_text_kl_searches_whose_first_order_exceeds_the_kl(calib, objective, kl, nll, fires):
    from golfpack.budget.select import Alternative, first_order_note

    a = Alternative("solver:lzma", "lzma", (0,), 100, 0.0, joint=kl, joint_kl=kl, joint_nll=nll)
    note = first_order_note(a, calib, objective)
    assert (note is not None) == fires
    if fires:
        assert note.startswith(f"on held-out calibration text the chosen layout changes the loss by {nll:+.5f} nats/token")
        assert "objective nll" in note and "When delta NLL" in note


def test_objective_auto_searches_again_by_nll_when_the_kl_answer_is_mostly_first_order(small_ckpt, shard, tmp_path):
    """auto on real text: the kl pass's note fires on this far-from-minimum model, so the answer is the nll pass's,
    judged by delta NLL, and its note says why; both passes shared the given cache."""
    cfg = _cfg(shard, budget=BUDGET, objective="auto", cache_dir=str(tmp_path / "cache"))
    res = run_search(small_ckpt, cfg)
    nll = run_search(small_ckpt, cfg.replace(objective="nll"))
    assert res.report()["objective"] == "nll" and res.chosen.joint == res.chosen.joint_nll
    assert res.specs == nll.specs and res.model_bytes == nll.model_bytes
    assert len(res.notes) == 1 and res.notes[0].startswith("objective auto: judged by nll, because judged by kl on held-out")
    assert f"{res.chosen.joint_nll:+.5f} nats/token, KL {res.chosen.joint_kl:.5f}" in res.notes[0]


def test_objective_auto_keeps_kl_when_the_note_is_silent_and_on_self_samples(small_ckpt, shard, monkeypatch):
    from golfpack.budget import run as R

    monkeypatch.setattr(R, "first_order_note", lambda *a: None)
    res = run_search(small_ckpt, _cfg(shard, budget=BUDGET, objective="auto"))
    assert res.report()["objective"] == "kl" and res.notes == ["objective auto: judged by kl (the held-out first order is within the KL)"]
    assert len(res.artifact.data) == res.model_bytes  # packs after auto's temporary measurement cache is gone
    seen = []
    real = R.run_search
    monkeypatch.setattr(R, "run_search", lambda ckpt, cfg, model=None: seen.append((cfg.calib, cfg.objective)) or real(ckpt, cfg, model=model))
    from golfpack.errors import UsageError

    with pytest.raises(UsageError, match="file not found"):  # the spy sees the one pass auto asks for; the missing file stops it
        R._auto_objective(str(small_ckpt) + ".missing", _cfg(shard, objective="auto").replace(calib="self"), None)
    assert seen == [("self", "kl")]
