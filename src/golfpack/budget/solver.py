"""Multiple-choice knapsack: pick one option per tensor, minimising predicted loss under a byte cap.

Each group (tensor) has options (spec candidates) with an integer byte cost and a predicted loss
increase. `solve` returns one option per group with total cost <= budget and, for budgets up to
`max_bins` bytes above the cheapest layout, the exact minimum of the summed loss (dynamic programming
over bytes). Larger instances are solved on a coarser byte grid with every cost rounded UP, so the
answer still never exceeds the budget; an exact-cost local search then spends the rounding slack.

The guarantee that matters for the challenge - never over budget - holds for every method: the DP
can only pick layouts whose rounded-up cost fits, the greedy starts from the cheapest layout and only
takes upgrades that fit, and `Solution` re-adds the exact costs and asserts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from golfpack.errors import BudgetError

# DP table width: (budget - floor) / granularity <= this many cells. 200k cells x a few hundred
# tensors of int16 back-pointers stays well under 100 MB and runs in about a second in numpy.
DEFAULT_MAX_BINS = 200_000


class InfeasibleBudget(BudgetError):
    """The budget is below the cheapest possible layout (`floor`).

    `knob` is what the message tells the user to raise: the parameter `budget` in the library; a CLI
    re-raises with its flag (`InfeasibleBudget(e.budget, e.floor, e.what, knob="--budget")`)."""

    def __init__(self, budget: int, floor: int, what: str = "layout", knob: str = "budget") -> None:
        self.budget = int(budget)
        self.floor = int(floor)
        self.what = what
        super().__init__(
            f"budget {budget:,} bytes is below the smallest possible {what}: {floor:,} bytes "
            f"(short by {floor - budget:,}); raise {knob} to at least {floor:,} or offer smaller specs"
        )


@dataclass(frozen=True)
class Solution:
    """One option index per group, with its exact summed cost and loss."""

    choice: tuple[int, ...]  # option index chosen for each group
    cost: int  # sum of the chosen options' costs (exact)
    loss: float  # sum of the chosen options' predicted losses
    budget: int  # the cap it was solved for
    method: str  # "dp" (exact), "dp~G" (grid of G bytes + exact local search), "greedy", "brute"

    @property
    def headroom(self) -> int:
        return self.budget - self.cost


def _check(costs: Sequence[Sequence[int]], losses: Sequence[Sequence[float]]) -> None:
    if len(costs) != len(losses):
        raise ValueError(f"{len(costs)} cost rows but {len(losses)} loss rows")
    for i, (c, l) in enumerate(zip(costs, losses)):
        if len(c) == 0 or len(c) != len(l):
            raise ValueError(f"group {i}: {len(c)} costs and {len(l)} losses (need the same, at least 1)")
        if any(int(x) != x or x < 0 for x in c):
            raise ValueError(f"group {i}: costs must be non-negative integers, got {list(c)}")
        if any(not math.isfinite(float(x)) for x in l):
            raise ValueError(f"group {i}: losses must be finite, got {list(l)}")


def floor_cost(costs: Sequence[Sequence[int]]) -> int:
    """Cost of the cheapest possible layout (every group at its cheapest option)."""
    return int(sum(min(c) for c in costs))


def _make(costs, losses, choice, budget, method) -> Solution:
    cost = int(sum(int(costs[g][j]) for g, j in enumerate(choice)))
    loss = float(sum(float(losses[g][j]) for g, j in enumerate(choice)))
    if cost > budget:  # the invariant every method maintains; a bug if it ever fires
        raise AssertionError(f"solver produced {cost} > budget {budget} ({method})")
    return Solution(tuple(int(j) for j in choice), cost, loss, int(budget), method)


def _cheapest(costs, losses) -> list[int]:
    # Cheapest option per group; among equally cheap ones the lowest loss.
    return [min(range(len(c)), key=lambda j: (c[j], l[j])) for c, l in zip(costs, losses)]


def improve(costs, losses, choice: list[int], budget: int) -> list[int]:
    """Exact-cost local search: apply the best single-group swap that fits until none lowers the loss.

    Only ever moves to layouts whose exact cost is <= budget, so it cannot break feasibility.
    """
    choice = list(choice)
    cost = sum(costs[g][j] for g, j in enumerate(choice))
    while True:
        best = None  # (loss gain, -extra cost, g, j)
        for g, (c, l) in enumerate(zip(costs, losses)):
            cur = choice[g]
            for j in range(len(c)):
                extra = c[j] - c[cur]
                gain = l[cur] - l[j]
                if j == cur or cost + extra > budget:
                    continue
                if gain > 1e-15 or (gain >= 0 and extra < 0):
                    key = (gain, -extra, g, j)
                    if best is None or key[:2] > best[:2]:
                        best = key
        if best is None:
            return choice
        _, _, g, j = best
        cost += costs[g][j] - costs[g][choice[g]]
        choice[g] = j


def solve_dp(costs, losses, budget: int, *, max_bins: int = DEFAULT_MAX_BINS) -> Solution:
    """Exact DP over bytes above the floor (on a grid of G bytes when that range exceeds max_bins)."""
    _check(costs, losses)
    floor = floor_cost(costs)
    if budget < floor:
        raise InfeasibleBudget(budget, floor)
    cap = int(budget - floor)
    gran = max(1, math.ceil(cap / max_bins))
    nbins = cap // gran  # scaled capacity
    ngroups = len(costs)
    # dp[k]: least loss of the groups so far with scaled extra cost <= k ("at most" form, so dp is
    # non-increasing in k and the answer is dp[nbins]).
    dp = np.zeros(nbins + 1, dtype=np.float64)
    back = np.zeros((ngroups, nbins + 1), dtype=np.int16)
    for g, (c, l) in enumerate(zip(costs, losses)):
        cmin = min(c)
        new = np.full(nbins + 1, np.inf)
        arg = np.zeros(nbins + 1, dtype=np.int16)
        # options sorted by cost so that on equal loss the cheaper option is kept (strict <)
        for j in sorted(range(len(c)), key=lambda j: (c[j], l[j])):
            w = -(-(int(c[j]) - cmin) // gran)  # ceil: rounded-up cost never under-counts
            if w > nbins:
                continue
            cand = dp[: nbins + 1 - w] + float(l[j])
            seg = new[w:]
            better = cand < seg
            seg[better] = cand[better]
            arg[w:][better] = j
        dp, back[g] = new, arg
    choice = [0] * ngroups
    k = nbins
    for g in range(ngroups - 1, -1, -1):
        j = int(back[g, k])
        choice[g] = j
        k -= -(-(int(costs[g][j]) - min(costs[g])) // gran)
    assert k >= 0
    if gran > 1:
        choice = improve(costs, losses, choice, budget)
    return _make(costs, losses, choice, budget, "dp" if gran == 1 else f"dp~{gran}")


def solve_greedy(costs, losses, budget: int) -> Solution:
    """Lagrangian-style greedy: from the cheapest layout, repeatedly take the fitting upgrade with the
    best loss decrease per extra byte (along each group's lower convex hull), then local search."""
    _check(costs, losses)
    floor = floor_cost(costs)
    if budget < floor:
        raise InfeasibleBudget(budget, floor)
    choice = _cheapest(costs, losses)
    cost = floor
    while True:
        best = None
        for g, (c, l) in enumerate(zip(costs, losses)):
            cur = choice[g]
            for j in range(len(c)):
                extra = c[j] - c[cur]
                gain = l[cur] - l[j]
                if extra <= 0 or gain <= 0 or cost + extra > budget:
                    continue
                rate = gain / extra
                if best is None or rate > best[0]:
                    best = (rate, g, j)
        if best is None:
            break
        _, g, j = best
        cost += costs[g][j] - costs[g][choice[g]]
        choice[g] = j
    choice = improve(costs, losses, choice, budget)
    return _make(costs, losses, choice, budget, "greedy")


def solve_brute(costs, losses, budget: int) -> Solution:
    """Enumerate every layout (tests only: product of option counts must be small)."""
    _check(costs, losses)
    floor = floor_cost(costs)
    if budget < floor:
        raise InfeasibleBudget(budget, floor)
    best = None
    for choice in itertools.product(*[range(len(c)) for c in costs]):
        cost = sum(costs[g][j] for g, j in enumerate(choice))
        if cost > budget:
            continue
        loss = sum(losses[g][j] for g, j in enumerate(choice))
        if best is None or loss < best[0] - 1e-12 or (abs(loss - best[0]) <= 1e-12 and cost < best[1]):
            best = (loss, cost, choice)
    assert best is not None
    return _make(costs, losses, list(best[2]), budget, "brute")


def solve(costs, losses, budget: int, *, method: str = "dp", max_bins: int = DEFAULT_MAX_BINS) -> Solution:
    """Solve with `method` ('dp' default, 'greedy', or 'best' = both, keep the lower loss)."""
    if method == "dp":
        return solve_dp(costs, losses, budget, max_bins=max_bins)
    if method == "greedy":
        return solve_greedy(costs, losses, budget)
    if method == "best":
        a = solve_dp(costs, losses, budget, max_bins=max_bins)
        b = solve_greedy(costs, losses, budget)
        return a if (a.loss, a.cost) <= (b.loss, b.cost) else b
    raise ValueError(f"unknown solver method {method!r}: use dp, greedy or best")


__all__ = [
    "DEFAULT_MAX_BINS",
    "InfeasibleBudget",
    "Solution",
    "floor_cost",
    "improve",
    "solve",
    "solve_brute",
    "solve_dp",
    "solve_greedy",
]
