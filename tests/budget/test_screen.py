"""The budget-aware screen (budget/screen.py): it keeps what the proxy's solution could use, measures at most
max_direct candidates (nearest to entering the solution first, an honesty sample among them), fills the rest
from the proxy in direct units, and reports the sample's rank agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from golfpack.budget import screen as SC
from golfpack.budget.solver import solve_brute


def _problem(seed: int = 0, groups: int = 6, options: int = 5):
    """Random knapsack groups: cost falls, damage rises along the options (a width ladder)."""
    rng = np.random.default_rng(seed)
    costs, damage = {}, {}
    for g in range(groups):
        c = np.sort(rng.integers(100, 1000, size=options))[::-1]
        v = np.sort(rng.exponential(1.0, size=options)) * rng.uniform(0.1, 10)
        v[0] = 0.0  # the widest is lossless
        costs[f"t{g}"] = {f"s{j}": int(c[j]) for j in range(options)}
        damage[f"t{g}"] = {f"s{j}": float(v[j]) for j in range(options)}
    return costs, damage


def _solve(costs, damage, budget):
    names = list(costs)
    C = [[costs[n][l] for l in costs[n]] for n in names]
    V = [[damage[n][l] for l in costs[n]] for n in names]
    sol = solve_brute(C, V, budget)
    return {n: list(costs[n])[j] for n, j in zip(names, sol.choice)}


def test_error_factor_is_how_wrong_the_proxy_must_be():
    # j is 1 byte-unit cheaper (mu = 1) and hurts 3 vs k's 1: v_j / f - 1 <= f * 1  ->  f^2 + f - 3 >= 0
    f = SC.error_factor(3.0, 9.0, 1.0, 10.0, 1.0)
    assert f == pytest.approx((-1 + math.sqrt(13)) / 2) and 3.0 / f - 1.0 == pytest.approx(f)
    assert SC.error_factor(0.5, 10.0, 1.0, 10.0, 1.0) == 1.0  # already better: no error needed
    assert SC.error_factor(1.0, 20.0, 0.0, 10.0, 1.0) == math.inf  # dearer and worse than a harmless choice: never
    assert SC.error_factor(4.0, 8.0, 0.0, 10.0, 1.0) == pytest.approx(2.0)  # cheaper by 2: wins once its damage is halved


def test_slope_reaches_the_budget():
    costs, damage = _problem()
    names = list(costs)
    C = [[costs[n][l] for l in costs[n]] for n in names]
    V = [[damage[n][l] for l in costs[n]] for n in names]
    budget = (sum(min(c) for c in C) + sum(max(c) for c in C)) // 2
    mu = SC.slope_at(C, V, budget)
    assert SC.lagrange(C, V, mu)[1] <= budget < SC.lagrange(C, V, mu / 1.01)[1]
    assert SC.slope_at(C, V, sum(max(c) for c in C)) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_screen_keeps_the_solution_and_caps_the_rest(seed):
    costs, damage = _problem(seed)
    names = list(costs)
    floor, top = sum(min(r.values()) for r in costs.values()), sum(max(r.values()) for r in costs.values())
    budget = floor + (top - floor) // 3
    # the proxy: the truth times a per-candidate error within 1.5x (and a global scale it cannot know)
    rng = np.random.default_rng(100 + seed)
    proxy = {n: {l: 7.0 * v * rng.uniform(1 / 1.5, 1.5) for l, v in r.items()} for n, r in damage.items()}
    truth = _solve(costs, damage, budget)
    scr = SC.budget_screen(costs, proxy, budget, margin=2.0, max_direct=None, sample=0.0, method="dp")
    assert all(truth[n] in scr.keep[n] for n in names)  # within the margin: the true solution is measured
    assert all(scr.chosen[n] in scr.keep[n] for n in names)
    assert sum(map(len, scr.keep.values())) < sum(map(len, costs.values()))  # and not everything is
    # the cap: at most max_direct in all, the proxy's own choice first, the sample among them
    capped = SC.budget_screen(costs, proxy, budget, margin=2.0, max_direct=len(names) + 2, sample=1.0, method="dp")
    want = capped.wanted()
    assert sum(map(len, want.values())) <= len(names) + 2 and len(capped.sample) >= 1
    assert all(capped.chosen[n] in capped.keep[n] for n in names)
    assert all(l not in capped.keep[n] for n, l in capped.sample)  # the sample is drawn from what was not kept
    assert capped.capped == capped.eligible - sum(map(len, capped.keep.values()))


def test_fill_scales_the_proxy_per_tensor_and_keeps_the_measured_values():
    costs = {"w": {"a": 100, "b": 50, "c": 40, "d": 10}, "u": {"a": 100, "b": 10}}
    proxy = {"w": {"a": 0.0, "b": 1.0, "c": 3.0, "d": 2.0}, "u": {"a": 0.0, "b": 2.0}}
    est = SC.fill({"w": {"a": 0.0, "b": 0.5}, "u": {"a": 0.0}}, proxy, costs)
    assert est["w"]["a"] == 0.0 and est["w"]["b"] == 0.5  # measured: kept as measured
    assert est["w"]["c"] == pytest.approx(1.5) and est["w"]["d"] == pytest.approx(1.0)  # the tensor's ratio 0.5
    assert est["u"]["b"] == pytest.approx(1.0)  # no measured damage on u: the global ratio
    # a screened-out candidate the proxy puts behind a cheaper-or-equal measured one is never better than it
    est = SC.fill({"w": {"d": 5.0, "b": 0.5}}, proxy, costs)
    assert est["w"]["c"] >= 5.0 and est["w"]["a"] == 0.0


def test_kendall_and_the_sample_agreement():
    assert SC.kendall([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert SC.kendall([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert SC.kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert math.isnan(SC.kendall([1], [1])) and math.isnan(SC.kendall([1, 1], [1, 2]))
    ag = SC.agreement({"w": {"a": 1.0, "b": 2.0}, "u": {"a": 3.0}}, {"w": {"a": 0.1, "b": 0.3}, "u": {"a": 0.2}},
                      [("w", "a"), ("w", "b"), ("u", "a")])
    assert ag["pairs"] == 3 and ag["spearman"] == pytest.approx(0.5) and ag["kendall"] == pytest.approx(1 / 3)
