"""Phase 5, solve + fit: the multiple-choice knapsack's answer, packed exactly, and the solver's budget moved
(secant steps, bisection once bracketed) until the exact artifact fits with less than the target headroom;
then what is left is spent on upgrades, each batch checked by one exact pack (an overflowing batch is halved).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from golfpack.budget.config import SearchConfig
from golfpack.budget.costs import CostModel, cheapest_choice, fit_cost_model
from golfpack.budget.problem import Problem
from golfpack.budget.solver import InfeasibleBudget, Solution, floor_cost, solve


@dataclass
class Fit:
    """The fitted layout for one codec."""

    codec: str
    choice: tuple[int, ...]
    model_bytes: int  # exact artifact size
    predicted_loss: float  # sum of solver deltas (nats/token)
    packs: int  # exact packs spent fitting
    trace: list[dict[str, Any]]  # (solver budget, exact total, fits) per step
    cost_model: CostModel


# Headroom under this share of the budget is not spent on repairs (beside cfg.target_headroom // 4): each repair is
# an exact pack (~15 s at 21.8M parameters), and the last 0.01% of the bytes buys next to nothing. The 21.8M search
# spent 6 packs (90 s) moving its last 978 bytes of a 15.2 MB budget's headroom to 267.
REPAIR_MIN_SHARE = 1e-4


class Fitter:
    """Solve + exact-measure loop for one codec.

    `costs`/`losses` are per-group option tables; `size_of(choice)` returns the EXACT artifact bytes
    of a layout (an encode); `extra_choices` are layouts to try if nothing the solver proposes fits. `seed`: (table
    cost, exact bytes) points already known for this codec and cost table (another fit's `cost_model.points`): the
    cost model starts from them, so a second fit near the same budget starts where the first one ended.
    """

    def __init__(self, costs: list[list[int]], losses: list[list[float]], size_of: Callable[[tuple[int, ...]], int],
                 cfg: SearchConfig, *, codec: str = "", extra_choices: list[tuple[int, ...]] | None = None,
                 seed: list[tuple[int, int]] | None = None):
        self.costs, self.losses, self.cfg, self.codec = costs, losses, cfg, codec
        self.size_of = size_of
        self.extra = list(extra_choices or [])
        self.seed = sorted(set(seed or []))
        self.sizes: dict[tuple[int, ...], int] = {}

    @classmethod
    def for_problem(cls, p: Problem, codec: str, table: dict[str, dict[str, int]], deltas: dict[str, dict[str, float]], cfg: SearchConfig,
                    seed: list[tuple[int, int]] | None = None) -> Fitter:
        costs = [[int(table[n][s.label()]) for s in p.candidates[n]] for n in p.names]
        losses = [[float(deltas[n][s.label()]) for s in p.candidates[n]] for n in p.names]
        # Problem.size: a layout another fitter (or the floor) packed is not packed again
        return cls(costs, losses, lambda ch: p.size(ch, codec), cfg, codec=codec, extra_choices=[tuple(cheapest_choice(p, codec))],
                   seed=seed)

    def measure(self, choice: tuple[int, ...]) -> int:
        choice = tuple(choice)
        if choice not in self.sizes:
            self.sizes[choice] = int(self.size_of(choice))
        return self.sizes[choice]

    def cheapest(self) -> tuple[int, ...]:
        return tuple(min(range(len(c)), key=lambda j: (c[j], l[j])) for c, l in zip(self.costs, self.losses))

    def richest(self) -> tuple[int, ...]:
        return tuple(max(range(len(c)), key=lambda j: c[j]) for c in self.costs)

    def table_cost(self, choice: tuple[int, ...]) -> int:
        return sum(self.costs[g][j] for g, j in enumerate(choice))

    def loss(self, choice: tuple[int, ...]) -> float:
        return sum(self.losses[g][j] for g, j in enumerate(choice))

    def solve(self, table_budget: int) -> Solution:
        return solve(self.costs, self.losses, table_budget, method=self.cfg.solver)

    def calibrate(self) -> CostModel:
        """The first cost model: from the `seed` points (another fit's), else one exact pack of the cheapest layout;
        the fit loop adds every layout it measures."""
        if len({x for x, _ in self.seed}) >= 2:
            return fit_cost_model(self.seed)
        ch = self.cheapest()
        return fit_cost_model([(self.table_cost(ch), self.measure(ch))])

    def fit(self, model_budget: int) -> Fit:
        """Largest-loss-reduction layout whose exact artifact is <= model_budget, headroom minimised."""
        cm = self.calibrate()
        floor_t = floor_cost(self.costs)
        trace: list[dict[str, Any]] = []
        best: tuple[float, int, tuple[int, ...]] | None = None  # (loss, -size, choice) among fitting
        tb = max(floor_t, cm.solver_budget(model_budget))
        lo_ok, hi_bad = None, None  # table budgets known to fit / to overflow
        packs0 = len(self.sizes)
        for _ in range(self.cfg.max_fit_packs):
            try:
                sol = self.solve(tb)
            except InfeasibleBudget:
                tb = floor_t
                sol = self.solve(tb)
            size = self.measure(sol.choice)
            ok = size <= model_budget
            pts = set(self.seed) | {(self.table_cost(c), n) for c, n in self.sizes.items()}
            if len({x for x, _ in pts}) >= 2:
                cm = fit_cost_model(sorted(pts))
            trace.append({"solver_budget": tb, "table_cost": sol.cost, "model_bytes": size, "fits": ok, "predicted_loss": sol.loss})
            if ok:
                cand = (sol.loss, -size, sol.choice)
                if best is None or cand < best:
                    best = cand
                lo_ok = tb if lo_ok is None else max(lo_ok, tb)
                if model_budget - size < self.cfg.target_headroom:
                    break
                step = max(1, int((model_budget - size) / max(cm.a, 1e-6)))
                nxt = tb + step
            else:
                if tb <= floor_t:
                    break  # even the solver's cheapest answer overflows: nothing smaller exists
                hi_bad = tb if hi_bad is None else min(hi_bad, tb)
                step = max(1, int((size - model_budget) / max(cm.a, 1e-6)))
                nxt = tb - step
            if lo_ok is not None and hi_bad is not None:
                if hi_bad - lo_ok <= 1:
                    break
                if not (lo_ok < nxt < hi_bad):
                    nxt = (lo_ok + hi_bad) // 2
            nxt = max(floor_t, nxt)
            if nxt == tb:
                break
            tb = nxt
        if best is None:
            # the solver's cheapest layout overflows, but another cheap one may fit: try those
            sized = sorted((self.measure(ch), ch) for ch in [self.cheapest(), *self.extra])
            size, ch = sized[0]
            if size > model_budget:
                raise InfeasibleBudget(model_budget, size, f"model artifact with codec {self.codec or '?'}")
            best = (self.loss(ch), -size, ch)
        choice = self.spend_headroom(best[2], model_budget, trace, a=cm.a)
        return Fit(self.codec, choice, self.measure(choice), self.loss(choice), len(self.sizes) - packs0, trace, cm)

    def spend_headroom(self, choice: tuple[int, ...], model_budget: int, trace: list[dict[str, Any]], a: float = 1.0) -> tuple[int, ...]:
        """Exact repair: spend what is left of the budget on upgrades that lower (or keep) the predicted loss.

        Upgrades are ranked by loss reduction per predicted byte (table cost x the fitted slope `a`);
        as many as the room allows are applied together and checked by ONE exact pack (packs are the
        slow part); an overflow halves the batch, a single overflowing upgrade is dropped.
        """
        choice = tuple(choice)
        size = self.measure(choice)
        bad: set[tuple[int, int]] = set()
        limit = None  # max upgrades per batch after an overflow
        for _ in range(self.cfg.max_repair_packs):
            room = model_budget - size
            if room < 0 or room < max(self.cfg.target_headroom // 4, REPAIR_MIN_SHARE * model_budget):
                break
            opts = []
            for g in range(len(choice)):
                cur = choice[g]
                for j in range(len(self.costs[g])):
                    gain = self.losses[g][cur] - self.losses[g][j]
                    extra = a * (self.costs[g][j] - self.costs[g][cur])
                    # a zero-gain upgrade (e.g. fp16 -> fp32 where both measure harmless) only fills room:
                    # it comes after every real gain, largest first, and never raises the predicted loss
                    if j == cur or gain < 0 or (gain == 0 and extra <= 0) or (g, j) in bad or extra > room:
                        continue
                    opts.append((gain / max(extra, 1.0), gain, extra, g, j))
            if not opts:
                break
            opts.sort(reverse=True)
            picked: dict[int, int] = {}
            spent = gained = 0.0
            for _, gain, extra, g, j in opts:
                if g in picked or spent + extra > room:
                    continue
                picked[g] = j
                spent += extra
                gained += gain
                if limit is not None and len(picked) >= limit:
                    break
            new = tuple(picked.get(g, c) for g, c in enumerate(choice))
            s = self.measure(new)
            ok = s <= model_budget
            trace.append({"repair": True, "upgrades": len(picked), "gain": gained, "model_bytes": s, "fits": ok})
            if ok:
                choice, size, limit = new, s, None
            elif len(picked) == 1:
                bad.update(picked.items())
            else:
                limit = max(1, len(picked) // 2)
        return choice


__all__ = ["REPAIR_MIN_SHARE", "Fit", "Fitter"]
