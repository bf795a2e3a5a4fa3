"""Solver: never over budget (property test), optimal on tiny instances (brute force), fails fast below the floor."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golfpack.budget.solver import (
    InfeasibleBudget,
    floor_cost,
    solve,
    solve_brute,
    solve_dp,
    solve_greedy,
)
from golfpack.errors import GolfpackError


@st.composite
def instances(draw, max_groups=6, max_opts=4, max_cost=400):
    n = draw(st.integers(1, max_groups))
    costs, losses = [], []
    for _ in range(n):
        k = draw(st.integers(1, max_opts))
        costs.append(draw(st.lists(st.integers(0, max_cost), min_size=k, max_size=k)))
        losses.append(draw(st.lists(st.floats(-1.0, 5.0, allow_nan=False), min_size=k, max_size=k)))
    lo = floor_cost(costs)
    hi = sum(max(c) for c in costs)
    budget = draw(st.integers(max(0, lo - 50), hi + 50))
    return costs, losses, budget


@settings(max_examples=300, deadline=None)
@given(instances())
def test_never_over_budget_and_dp_is_optimal(inst):
    costs, losses, budget = inst
    floor = floor_cost(costs)
    if budget < floor:
        for m in ("dp", "greedy", "best"):
            with pytest.raises(InfeasibleBudget) as e:
                solve(costs, losses, budget, method=m)
            assert e.value.floor == floor
        return
    brute = solve_brute(costs, losses, budget)
    for m in ("dp", "greedy", "best"):
        s = solve(costs, losses, budget, method=m)
        assert s.cost <= budget and s.headroom == budget - s.cost
        assert s.cost == sum(costs[g][j] for g, j in enumerate(s.choice))
        assert s.loss >= brute.loss - 1e-9  # nothing beats the exhaustive optimum
    # the byte-exact DP IS the optimum
    assert solve_dp(costs, losses, budget).loss == pytest.approx(brute.loss, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(instances(max_groups=8, max_opts=5, max_cost=5000), st.integers(1, 50))
def test_coarse_grid_never_over_budget(inst, max_bins):
    costs, losses, budget = inst
    if budget < floor_cost(costs):
        return
    s = solve_dp(costs, losses, budget, max_bins=max_bins)
    assert s.cost <= budget
    assert s.loss >= solve_brute(costs, losses, budget).loss - 1e-9 if len(costs) <= 5 else True


def test_known_instance():
    # two tensors, options (cost, loss): the cap forces exactly one of them down
    costs = [[100, 60, 40], [200, 120, 80]]
    losses = [[0.0, 0.1, 0.5], [0.0, 0.05, 0.9]]
    assert solve_dp(costs, losses, 300).choice == (0, 0)
    s = solve_dp(costs, losses, 299)
    assert s.choice == (0, 1) and s.cost == 220 and s.loss == pytest.approx(0.05)
    s = solve_dp(costs, losses, 190)
    assert s.choice == (1, 1) and s.cost == 180 and s.loss == pytest.approx(0.15)
    assert solve_greedy(costs, losses, 190).loss == pytest.approx(0.15)


def test_infeasible_message_prints_floor():
    costs = [[100, 60], [200, 120]]
    with pytest.raises(GolfpackError, match=r"smallest possible layout: 180 bytes"):
        solve(costs, [[0, 1], [0, 1]], 179)


def test_bad_tables_rejected():
    with pytest.raises(ValueError):
        solve_dp([[1, 2]], [[0.0]], 10)
    with pytest.raises(ValueError):
        solve_dp([[1.5]], [[0.0]], 10)
    with pytest.raises(ValueError):
        solve_dp([[1]], [[float("nan")]], 10)


def test_large_instance_uses_grid_and_fits():
    import random

    rng = random.Random(0)
    costs = [[rng.randint(10_000, 2_000_000) for _ in range(6)] for _ in range(40)]
    losses = [[rng.random() for _ in range(6)] for _ in range(40)]
    budget = floor_cost(costs) + 5_000_000
    s = solve_dp(costs, losses, budget, max_bins=20_000)
    assert s.method.startswith("dp~") and s.cost <= budget
    # the grid answer is close to the greedy one or better
    assert s.loss <= solve_greedy(costs, losses, budget).loss + 0.05
