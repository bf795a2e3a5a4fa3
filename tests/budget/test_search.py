"""Search: the exact fit loop, the policy it writes, and the end-to-end command on a real checkpoint."""

from __future__ import annotations

import json
import random

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from golfpack.budget import SearchConfig, write_policy
from golfpack.budget.cache import Cache
from golfpack.budget.costs import fit_cost_model
from golfpack.budget.fit import Fitter
from golfpack.budget.problem import exact_name_pattern, layout_policy
from golfpack.budget.solver import InfeasibleBudget
from golfpack.formats.spec import TensorSpec
from golfpack.packer.pack import DEFAULT_CODEC


def _nonadditive(costs):
    # A stand-in for grouped compression: cheaper than the sum of parts, plus a fixed header, plus a
    # layout-dependent wobble (as real codecs have) - NOT additive, NOT affine.
    def size_of(choice):
        s = sum(costs[g][j] for g, j in enumerate(choice))
        distinct = len(set(choice))
        wobble = (hash(choice) % 97) - 48
        return int(0.9 * s) + 400 + 13 * distinct + wobble

    return size_of


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 1.0))
def test_fit_never_over_budget(seed, frac):
    rng = random.Random(seed)
    n = rng.randint(1, 12)
    costs = [sorted(rng.sample(range(50, 20_000), 5)) for _ in range(n)]
    losses = [sorted((rng.random() for _ in range(5)), reverse=True) for _ in range(n)]
    f = Fitter(costs, losses, _nonadditive(costs), SearchConfig(budget=1, max_fit_packs=25))
    lo, hi = f.measure(f.cheapest()), f.measure(f.richest())
    budget = int(lo + frac * (hi - lo + 5000)) - 200
    try:
        fit = f.fit(budget)
    except InfeasibleBudget as e:
        assert e.floor > budget  # only when even the cheapest layout is over
        return
    assert fit.model_bytes == f.measure(fit.choice) <= budget
    assert fit.predicted_loss == pytest.approx(f.loss(fit.choice))


def test_fit_reaches_small_headroom():
    rng = random.Random(3)
    # 30 groups with fine-grained options (like many small tensors): the headroom can go below 2 KB
    costs = [sorted(rng.sample(range(200, 6_000), 6)) for _ in range(30)]
    losses = [sorted((rng.random() for _ in range(6)), reverse=True) for _ in range(30)]
    f = Fitter(costs, losses, _nonadditive(costs), SearchConfig(budget=1))
    lo, hi = f.measure(f.cheapest()), f.measure(f.richest())
    for frac in (0.2, 0.5, 0.8):
        budget = int(lo + frac * (hi - lo))
        fit = f.fit(budget)
        assert 0 <= budget - fit.model_bytes < 2048, (frac, budget - fit.model_bytes, fit.trace)


def test_cost_model_fit():
    cm = fit_cost_model([(1000, 1100), (3000, 2900)])
    assert cm.a == pytest.approx(0.9) and cm.predict(1000) == pytest.approx(1100)
    assert cm.solver_budget(2900) == 3000
    one = fit_cost_model([(1000, 1200)])
    assert one.a == 1.0 and one.solver_budget(1200) == 1000


def test_policy_file_round_trip(tmp_path):
    from golfpack.packer.policy import Policy

    sd = {
        "tok_emb.weight": torch.zeros(8, 4),
        "blocks.0.attn.c_q.weight": torch.zeros(4, 4),
        "blocks.0.attn_scale": torch.zeros(4),
        "odd[name]*": torch.zeros(2, 2),
        "steps": torch.zeros(1, dtype=torch.int64),
    }
    specs = {
        "tok_emb.weight": TensorSpec.parse("int7:mse"),
        "blocks.0.attn.c_q.weight": TensorSpec.parse("int4"),
        "blocks.0.attn_scale": TensorSpec.parse("fp16"),
        "odd[name]*": TensorSpec.parse("int5"),
        "steps": TensorSpec.parse("exact"),
    }
    assert exact_name_pattern("odd[name]*").startswith("re:")
    path = tmp_path / "best.policy.json"
    write_policy(path, layout_policy(specs))
    loaded = Policy.load(path)
    assert loaded.resolve(sd) == specs
    # exact names: a sibling tensor does not pick up the rule
    assert loaded.spec_for("blocks.1.attn.c_q.weight", torch.zeros(4, 4)).label() == "fp16"


def test_cache_round_trip(tmp_path):
    c = Cache(str(tmp_path))
    assert c.get("sens", "k") is None
    c.put("sens", "k", {"x": 1})
    assert c.get("sens", "k")["x"] == 1
    (tmp_path / "sens-k.json").write_text("{broken")
    assert c.get("sens", "k") is None  # damaged entries are re-measured
    assert Cache(None).get("sens", "k") is None


# ------------------------------------------------------------------------------------------------
# end to end


def _fast(extra):
    return ["--bits", "8,6,4", "--clips", "quantile", "--calib-batch", "2", "--calib-seq", "64", "--frontier", "0", "--threads", "1", *extra]


def test_impossible_budget_fails_before_measurement(nolanvild_pt, sp1024_model, tmp_path, monkeypatch):
    from golfpack.budget import sensitivity
    from golfpack.cli import main

    def boom(*a, **k):
        raise AssertionError("measured before checking the floor")

    monkeypatch.setattr(sensitivity, "measure_direct", boom)
    monkeypatch.setattr(sensitivity, "gradient_stats", boom)
    r = CliRunner().invoke(main, ["search", str(nolanvild_pt), "--budget", "20000", "--activation", "relu3",
                                  "--tokenizer", str(sp1024_model), "--cache", str(tmp_path / "c"), *_fast([])])
    assert r.exit_code == 1, r.output
    assert "Error: budget 20,000 bytes is below the smallest possible" in r.output
    assert "raise --budget to at least" in r.output
    assert not list((tmp_path / "c").glob("sens-*"))


def test_search_end_to_end_fits_and_caches(small_ckpt, sp1024_model, tmp_path, monkeypatch):
    from golfpack.budget import sensitivity
    from golfpack.cli import main
    from golfpack.formats.checkpoint import load_state_dict
    from golfpack.packer.policy import Policy

    code = tmp_path / "train_gpt.py"
    code.write_bytes(b"# code bytes count\n" * 200)
    out = tmp_path / "best.qg3"
    cache = tmp_path / "cache"
    base = [str(small_ckpt), "--tokenizer", str(sp1024_model), "--code", str(code), "--cache", str(cache), "--no-verify", "--json"]
    # 1) a generous budget
    budget = 1_000_000
    r = CliRunner().invoke(main, ["search", *base, "--budget", str(budget), "-o", str(out), *_fast([])])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    size = out.stat().st_size
    assert rep["model_bytes"] == size and rep["code_bytes"] == code.stat().st_size
    assert rep["total_bytes"] == size + rep["code_bytes"] <= budget
    assert rep["headroom"] == budget - rep["total_bytes"] >= 0
    assert rep["floor"] < rep["total_bytes"]
    pol = Policy.load(rep["policy_file"])
    assert {k: v.label() for k, v in pol.resolve(load_state_dict(small_ckpt)).items()} == rep["layout"]
    sources = {a["source"] for a in rep["alternatives"]}
    assert f"solver:{DEFAULT_CODEC}" in sources and "preset:int8" in sources  # compared jointly with the presets that fit
    # default calibration: the model's own samples, written next to the artifact (128 x [BOS + 64 tokens])
    from golfpack.formats.shards import read_shard

    cal = read_shard(tmp_path / "best.calib.bin")
    assert cal.size == 128 * 65 and int((cal[::65] == 1).sum()) == 128
    assert len(list(cache.glob("selfcal-*_train.bin"))) == 1
    assert all(a["joint"] >= -1e-7 for a in rep["alternatives"])
    # 2) a budget that binds: what the first search measured comes from the cache (never measured again; the
    #    budget-aware screen may want a few candidates the first budget did not); the artifact fits, and its
    #    unused budget is small
    real, asked = sensitivity.measure_direct, []

    def spy(model, sd, candidates, batch, **k):
        done = (k.get("done") or {}).get("kl", {})
        asked.append(("cached", sum(len(v) for v in done.values())))  # measure_direct skips what `done` holds
        return real(model, sd, candidates, batch, **k)

    monkeypatch.setattr(sensitivity, "measure_direct", spy)
    tight = (rep["floor"] + rep["total_bytes"]) // 2
    out2 = tmp_path / "b2.qg3"
    r2 = CliRunner().invoke(main, ["search", *base, "--budget", str(tight), "-o", str(out2), *_fast([])])
    assert r2.exit_code == 0, r2.output
    rep2 = json.loads(r2.output)
    assert rep2["total_bytes"] == out2.stat().st_size + rep2["code_bytes"] <= tight
    assert rep2["headroom"] == tight - rep2["total_bytes"] < 2048
    assert rep2["predicted_delta_loss"] >= rep["predicted_delta_loss"]
    if asked:  # it measured something new: handed every earlier measurement as done (a cache hit), none re-run
        assert asked[-1] == ("cached", rep["screen"]["measured"])
    # the policy file replays to the same bytes through `golfpack pack`
    out3 = tmp_path / "replay.qg3"
    r3 = CliRunner().invoke(main, ["pack", str(small_ckpt), "--policy", rep2["policy_file"], "--codec", rep2["codec"], "-o", str(out3)])
    assert r3.exit_code == 0, r3.output
    assert out3.read_bytes() == out2.read_bytes()


def test_frontier_table_and_plot(tmp_path):
    from golfpack.budget.report import frontier_budgets, frontier_table, plot_frontier

    assert frontier_budgets(100, 400, 3) == [100, 200, 400]
    assert frontier_budgets(100, 200, 1, extra=[150]) == [150, 200]
    rows = [
        {"model_budget": b, "model_bytes": b - 10, "total_bytes": b, "predicted_delta_loss": 0.1 / i,
         "predicted_delta_bpb": 0.06 / i, "measured_delta_bpb": 0.07 / i, "measured_bpb": 2.6 + 0.07 / i, "chosen": i == 2}
        for i, b in ((1, 1000), (2, 2000), (3, 3000))
    ]
    lines = frontier_table(rows)
    assert len(lines) == 4 and "<- chosen" in lines[2] and "2,000" in lines[2]
    pytest.importorskip("matplotlib")
    png = tmp_path / "f.png"
    plot_frontier(rows, png, budget=2500)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_options(nolanvild_pt):
    from golfpack.cli import main

    cases = [  # (flags, what the message must say: every one of them)
        (["--budget", "0"], ["--budget must be positive"]),
        (["--bits", "9,4"], ["--bits values must be 2..8"]),
        (["--val", "x.bin"], ["--val needs --tokenizer"]),
        (["--code", "/nonexistent/train_gpt.py", "--activation", "relu3"], ["file not found"]),
        (["--clips", "quantile,median"], ["--clips must be a comma-separated list of absmax, quantile, mse"]),
        (["--max-direct", "0"], ["max_direct must be positive, got 0 (--max-direct)"]),
        (["--fine-margin", "0.5"], ["fine_margin must be a number in [1, inf], got 0.5 (--fine-margin)"]),
        (["--coarse-batch", "-1"], ["coarse_batch must be at least 0, got -1 (--coarse-batch)"]),
        (["--gptq-calib", "self"], ["gptq_calib must be 'pydoc', a train-shard glob or None", "(--gptq-calib)"]),
    ]
    for flags, says in cases:
        r = CliRunner().invoke(main, ["search", str(nolanvild_pt), *flags])
        assert r.exit_code == 1 and all(m in r.output for m in says), (flags, r.output)


def test_headroom_is_filled_by_harmless_upgrades():
    # every option measures harmless (as fp16 vs fp32 often do): the repair still spends the room,
    # largest upgrade first, and never goes over
    costs = [[100, 300], [100, 900], [100, 1500]]
    losses = [[0.0, 0.0]] * 3
    f = Fitter(costs, losses, lambda ch: sum(costs[g][j] for g, j in enumerate(ch)), SearchConfig(budget=1))
    ch = f.spend_headroom((0, 0, 0), 1400, [])
    assert ch == (1, 1, 0) and f.measure(ch) == 1300  # 1500 would overflow; 900 then 300 fill it
    # a real gain always comes before a zero-gain filler
    losses2 = [[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]
    f2 = Fitter(costs, losses2, lambda ch: sum(costs[g][j] for g, j in enumerate(ch)), SearchConfig(budget=1))
    assert f2.spend_headroom((0, 0, 0), 1200, [])[0] == 1


def test_headroom_under_a_ten_thousandth_of_the_budget_is_not_repaired():
    """REPAIR_MIN_SHARE: at a 15 MB budget, 1,000 bytes of headroom (over target_headroom // 4) cost no exact pack;
    the same room at a budget where it is a real share is spent."""
    from golfpack.budget.fit import REPAIR_MIN_SHARE

    big = 15_000_000
    base = big - 1_000  # room 1,000 > 2048 // 4, but < 1e-4 x 15 MB = 1,500
    assert SearchConfig(budget=1).target_headroom // 4 < 1_000 < REPAIR_MIN_SHARE * big
    costs = [[base, base + 600], [0, 300]]
    losses = [[1.0, 0.0], [1.0, 0.0]]
    packs: list[tuple[int, ...]] = []

    def size_of(ch):
        packs.append(ch)
        return sum(costs[g][j] for g, j in enumerate(ch))

    trace: list[dict] = []
    assert Fitter(costs, losses, size_of, SearchConfig(budget=1)).spend_headroom((0, 0), big, trace) == (0, 0)
    assert packs == [(0, 0)] and trace == []  # only the starting layout's size, no repair pack
    small = [[0, 600], [0, 300]]  # the same 1,000 bytes of room at a 1,000-byte budget: spent, gain in the trace
    f = Fitter(small, losses, lambda ch: sum(small[g][j] for g, j in enumerate(ch)), SearchConfig(budget=1))
    assert f.spend_headroom((0, 0), 1_000, trace) == (1, 1) and trace[0]["gain"] == 2.0


def test_pick_prefers_more_bytes_within_measurement_noise():
    from golfpack.budget.select import Alternative, pick

    a = Alternative("solver:lzma", "lzma", (0,), 84_727, 3.9e-8, joint=3.1e-8)
    b = Alternative("preset:int8", "lzma", (1,), 82_875, 4.9e-8, joint=2.4e-8)
    c = Alternative("preset:int6", "lzma", (2,), 20_671, 5.9e-3, joint=7.0e-3)
    assert pick([a, b, c]) is a  # 7e-9 nats/token apart is noise: keep the layout that uses the budget
    d = Alternative("greedy:lzma", "lzma", (3,), 80_000, 1e-3, joint=1.0e-4)
    e = Alternative("solver:lzma", "lzma", (4,), 84_000, 1e-3, joint=3.0e-4)
    assert pick([d, e]) is d  # a real difference wins over bytes


def test_settle_packs_only_the_predicted_layouts_that_tie_the_best():
    """A preset compared on its predicted bytes is packed only when its joint score ties the best (pick compares the
    tied layouts' bytes); one that the exact pack puts over the budget is dropped and the ties are looked at again."""
    from golfpack.budget.select import Alternative, pick, settle

    class P:  # the one Problem method settle uses: exact bytes per (layout, codec), counted
        def __init__(self, sizes):
            self.sizes, self.packed = sizes, []

        def size(self, choice, codec):
            self.packed.append(choice)
            return self.sizes[choice]

    solver = Alternative("solver:lzma", "lzma", (0,), 90_000, 1e-3, joint=2.00e-4)
    tied = Alternative("preset:int6g+tok8", "lzma", (1,), 80_000, 1e-3, joint=2.01e-4, exact=False)
    far = Alternative("preset:int6", "lzma", (2,), 70_000, 5e-3, joint=9e-3, exact=False)
    with pytest.raises(AssertionError, match="settle"):
        pick([solver, tied, far])  # a tie on predicted bytes is not decided
    p = P({(1,): 95_000, (2,): 70_500})
    alts = settle(p, [solver, tied, far], 100_000)
    assert p.packed == [(1,)] and tied.exact and tied.model_bytes == 95_000 and not far.exact  # `far` cannot win: never packed
    assert pick(alts) is tied  # tied, and the exact pack stores more bytes
    over = Alternative("preset:int6sd+tok8", "lzma", (3,), 80_000, 1e-3, joint=1.9e-4, exact=False)
    p = P({(3,): 100_001})
    alts = settle(p, [solver, over], 100_000)
    assert alts == [solver] and pick(alts) is solver  # packed over the budget: out


def test_settle_fits_a_predicted_solver_answer_only_when_it_ties_and_rescores_it():
    """A greedy/proxy answer on predicted bytes is fitted for real (its `refit`) only when its joint score ties the
    best; a fit that changes the layout is scored again, and a fitted layout equal to another is kept once."""
    from golfpack.budget.select import Alternative, pick, settle

    calls: list[str] = []
    scored: list[tuple[int, ...]] = []

    def refit(choice, size, name):
        def f():
            calls.append(name)
            return choice, size, 1e-3
        return f

    def score(alts):
        for a in alts:
            scored.append(a.choice)
            a.joint = {(5,): 1.5e-4, (0,): 2.0e-4}[a.choice]

    solver = Alternative("solver:lzma", "lzma", (0,), 90_000, 1e-3, joint=2.00e-4)
    tied = Alternative("greedy:lzma", "lzma", (1,), 90_500, 1e-3, joint=2.01e-4, exact=False, refit=refit((5,), 99_000, "greedy"))
    far = Alternative("proxy:lzma", "lzma", (2,), 89_000, 1e-3, joint=9e-3, exact=False, refit=refit((6,), 1, "proxy"))
    alts = settle(None, [solver, tied, far], 100_000, score)  # type: ignore[arg-type]  # no pack is needed here
    assert calls == ["greedy"] and scored == [(5,)]  # `far` cannot win: never fitted
    assert tied.exact and tied.choice == (5,) and tied.model_bytes == 99_000 and tied.refit is None
    assert pick(alts) is tied  # its re-score (1.5e-4) beats the solver's
    # the fit lands on the solver's own layout: one copy is kept, and the re-score needs `score`
    same = Alternative("greedy:lzma", "lzma", (1,), 90_500, 1e-3, joint=2.0e-4, exact=False, refit=refit((0,), 90_000, "same"))
    with pytest.raises(ValueError, match="score"):
        settle(None, [Alternative("solver:lzma", "lzma", (0,), 90_000, 1e-3, joint=2.0e-4), same], 100_000)  # type: ignore[arg-type]
    same = Alternative("greedy:lzma", "lzma", (1,), 90_500, 1e-3, joint=2.0e-4, exact=False, refit=refit((0,), 90_000, "same"))
    solver = Alternative("solver:lzma", "lzma", (0,), 90_000, 1e-3, joint=2.0e-4)
    assert settle(None, [solver, same], 100_000, score) == [solver]  # type: ignore[arg-type]


def test_floor_is_reachable_and_gptq_layouts_replay(small_ckpt, sp1024_model, tmp_path):
    """The floor the error prints is a budget that works; a +gptq layout's policy names its tokens and
    `golfpack pack --policy` rebuilds the search's bytes exactly."""
    import re

    from golfpack.budget.problem import load_problem
    from golfpack.cli import main

    common = [str(small_ckpt), "--tokenizer", str(sp1024_model), "--no-verify", "--no-select", "--sensitivity", "direct", *_fast([])]
    r = CliRunner().invoke(main, ["search", *common, "--budget", "1000"])
    floor = int(re.search(r"at least ([\d,]+)", r.output).group(1).replace(",", ""))
    out = tmp_path / "floor.qg3"
    r = CliRunner().invoke(main, ["search", *common, "--budget", str(floor), "--json", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size == json.loads(r.output)["model_bytes"] <= floor

    cfg = SearchConfig(budget=10**6, calib="pydoc", tokenizer=str(sp1024_model), bits=(4,), clips=("quantile",), calib_seq=64, gptq_batch=4, progress=False)
    p = load_problem(small_ckpt, cfg)
    p.pin_calibration("pydoc")
    assert any(s.gptq for s in p.candidates["blocks.0.mlp.fc.weight"]) and not any(s.gptq for s in p.candidates["blocks.0.attn_scale"])
    specs = {n: (next(s for s in c if s.gptq) if any(s.gptq for s in c) else c[0]) for n, c in p.candidates.items()}
    data = p.encode_specs(specs, DEFAULT_CODEC)
    pol = p.policy_of(specs)
    assert pol.calibration.to_dict() == {"source": "pydoc", "batch": 4, "seq": 64, "digest": p.calibration.digest} and len(p.calibration.digest) == 64
    write_policy(tmp_path / "g.policy.json", pol)
    r = CliRunner().invoke(main, ["pack", str(small_ckpt), "--policy", str(tmp_path / "g.policy.json"), "--tokenizer", str(sp1024_model),
                                  "-o", str(tmp_path / "g.qg3")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.qg3").read_bytes() == data


def test_search_cli_defaults_are_search_config_defaults():
    """Every `golfpack search` flag that maps onto a SearchConfig field defaults to that field's default (the CLI
    spells them out for --help; a default changed in one place only would make the CLI search differ from the API's)."""
    import dataclasses

    from golfpack.cli.search import search_cmd

    fields = {f.name: f for f in dataclasses.fields(SearchConfig)}
    renamed = {"sens_mode": "sensitivity"}
    parsed = {"codecs": lambda s: tuple(s.split(",")), "bits": lambda s: tuple(int(b) for b in s.split(",")),
              "clips": lambda s: tuple(s.split(","))}
    checked = []
    for p in search_cmd.params:
        name = renamed.get(p.name or "", p.name or "")
        f = fields.get(name)
        if f is None or f.default is dataclasses.MISSING or name == "progress":
            continue
        got = parsed[name](p.default) if name in parsed else p.default
        assert got == f.default, f"--{name.replace('_', '-')}: CLI default {p.default!r}, SearchConfig default {f.default!r}"
        checked.append(name)
    assert {"coarse_batch", "fine_margin", "calib_batch", "codecs", "sensitivity"} <= set(checked)
