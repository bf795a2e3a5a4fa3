"""The budget-aware screen: which candidates phase 4 measures directly, chosen by the proxy's own solution.

Direct measurement costs a forward per candidate (about a second each at 21.8M parameters on a CPU); the proxy
costs nothing per candidate but ranks them only roughly. So the proxy deltas and the cost tables (both known
before any direct forward) are solved first: the knapsack's answer at the budget, and at a byte window either
side of it (the table-to-artifact cost model is not fitted yet), with the trade-off slope `mu` (proxy damage per
table byte) that reaches each of those budgets. A candidate j of a tensor whose proxy solution is k can enter
the real solution only if the proxy is wrong about them: it is kept when some error factor f <= `margin` (j's
damage f times smaller, k's f times larger) makes j win the tensor's Lagrangian, v_j / f + mu c_j <= f v_k + mu c_k.
The smallest such f is the candidate's priority (the chosen ones have f = 1), and at most `max_direct` are
measured, in rounds (each tensor's smallest f, then each one's second smallest, ...), a seeded random honesty
sample of the rest included. The others get the proxy
scaled to direct units (`fill`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from golfpack.budget.solver import InfeasibleBudget, solve

WINDOW = 0.15  # the proxy is also solved at budget +- this share of (budget - floor): the cost model's error before any fit
SAMPLE_SHARE = 0.1  # the honesty sample takes at most this share of max_direct (the rest goes by priority)


@dataclass
class Screen:
    """What to measure directly and why."""

    keep: dict[str, list[str]]  # tensor -> labels measured for their priority (f <= margin, within the cap)
    sample: list[tuple[str, str]]  # (tensor, label) measured anyway: the proxy's honesty check
    priority: dict[str, dict[str, float]]  # tensor -> label -> smallest proxy error factor that lets it in (inf: none)
    chosen: dict[str, str]  # tensor -> the proxy solution's label at the budget
    mu: tuple[float, ...]  # the trade-off slopes (proxy damage per table byte) at budget - window, budget, budget + window
    eligible: int  # candidates with priority <= margin (before the cap)
    capped: int  # eligible candidates the cap left out
    stats: dict[str, Any] = field(default_factory=dict)

    def wanted(self) -> dict[str, list[str]]:
        """tensor -> every label to measure (priority and sample)."""
        out = {n: list(v) for n, v in self.keep.items()}
        for n, l in self.sample:
            if l not in out[n]:
                out[n].append(l)
        return out


def lagrange(costs: Sequence[Sequence[int]], losses: Sequence[Sequence[float]], mu: float) -> tuple[list[int], int]:
    """Per group argmin loss + mu * cost (cheaper on ties) and the summed cost of that choice."""
    choice = [min(range(len(c)), key=lambda j: (l[j] + mu * c[j], c[j])) for c, l in zip(costs, losses)]
    return choice, sum(int(costs[g][j]) for g, j in enumerate(choice))


def slope_at(costs: Sequence[Sequence[int]], losses: Sequence[Sequence[float]], budget: int) -> float:
    """The smallest slope mu whose Lagrangian choice fits `budget` (bisection in log space; 0 when even mu = 0 fits)."""
    if lagrange(costs, losses, 0.0)[1] <= budget:
        return 0.0
    top = max((max(l) for l in losses), default=0.0)
    span = max(1, max(max(c) - min(c) for c in costs))
    lo, hi = 1e-12 * max(top, 1e-30) / span, 1e3 * max(top, 1e-30)  # hi: any byte saved is worth more than all damage
    for _ in range(80):
        mid = math.sqrt(lo * hi)
        (hi, lo) = (mid, lo) if lagrange(costs, losses, mid)[1] <= budget else (hi, mid)
        if hi / lo < 1 + 1e-6:
            break
    return hi


def error_factor(vj: float, cj: float, vk: float, ck: float, mu: float) -> float:
    """Smallest f >= 1 with vj / f + mu cj <= f vk + mu ck: how wrong the proxy must be for j to beat k (inf: never)."""
    d = mu * (cj - ck)  # j's extra bytes, in damage units
    if vj / 1.0 + d <= vk:
        return 1.0
    if vk <= 0:
        return vj / -d if d < 0 else math.inf  # only a cheaper j can win against a harmless k, and only by its savings
    f = (d + math.sqrt(d * d + 4.0 * vk * vj)) / (2.0 * vk)
    return max(1.0, f)


def budget_screen(
    costs: dict[str, dict[str, int]], proxy: dict[str, dict[str, float]], table_budget: int, *, margin: float = 2.0,
    max_direct: int | None = 300, sample: float = 0.05, seed: int = 0, method: str = "dp",
) -> Screen:
    """Screen `proxy` (regularized proxy deltas, tensor -> label -> damage) against `costs` (the cost table) at
    `table_budget` (the budget in table bytes). See the module doc."""
    names = list(proxy)
    labels = {n: list(proxy[n]) for n in names}
    C = [[int(costs[n][l]) for l in labels[n]] for n in names]
    V = [[max(0.0, float(proxy[n][l])) for l in labels[n]] for n in names]
    floor = sum(min(c) for c in C)
    top = sum(max(c) for c in C)
    tb = max(floor, int(table_budget))
    w = int(WINDOW * (tb - floor))
    budgets = sorted({max(floor, tb - w), tb, min(top, tb + w)})
    sols, mus = [], []
    for b in budgets:
        try:
            sols.append(list(solve(C, V, b, method=method).choice))
        except InfeasibleBudget:  # pragma: no cover - b >= floor
            sols.append(lagrange(C, V, math.inf)[0])
        mus.append(slope_at(C, V, b))
    chosen = sols[budgets.index(tb)]
    prio: dict[str, dict[str, float]] = {}
    for g, n in enumerate(names):
        row = {}
        for j, l in enumerate(labels[n]):
            row[l] = min(
                1.0 if sol[g] == j else error_factor(V[g][j], C[g][j], V[g][sol[g]], C[g][sol[g]], mu) for sol, mu in zip(sols, mus)
            )
        prio[n] = row
    # measured in rounds: every tensor's nearest candidate, then every tensor's second nearest, ... (error factors
    # of different tensors are not comparable enough to let one tensor's list starve another's under the cap)
    ranked = []
    for g, n in enumerate(names):
        row = sorted((f, abs(costs[n][l] - costs[n][labels[n][chosen[g]]]), j, l) for j, (l, f) in enumerate(prio[n].items()))
        ranked += [(r, f, d, g, j, n, l) for r, (f, d, j, l) in enumerate(row)]
    order = [x[1:] for x in sorted(ranked)]
    eligible = [(n, l) for f, *_, n, l in order if f <= margin]
    rest = [(n, l) for f, *_, n, l in order if f > margin]
    cap = len(order) if max_direct is None else int(max_direct)
    k = int(math.ceil(sample * len(rest))) if rest and sample > 0 else 0
    k = min(k, max(1, int(SAMPLE_SHARE * cap)) if max_direct is not None else k)
    n_keep = min(len(eligible), max(1, cap - k))
    kept, over = eligible[:n_keep], eligible[n_keep:]
    pool = rest + over  # the honesty sample comes from what is not measured for its priority
    rng = np.random.default_rng(seed)
    k = min(k, len(pool), max(0, cap - n_keep))
    picked = sorted(rng.choice(len(pool), size=k, replace=False).tolist()) if k else []
    keep: dict[str, list[str]] = {n: [] for n in names}
    for n, l in kept:
        keep[n].append(l)
    for n in names:  # candidate order, as the tensors list them
        keep[n] = [l for l in labels[n] if l in set(keep[n])]
    return Screen(keep=keep, sample=[pool[i] for i in picked], priority=prio,
                  chosen={n: labels[n][chosen[g]] for g, n in enumerate(names)}, mu=tuple(mus),
                  eligible=len(eligible), capped=len(over))


def fill(direct: dict[str, dict[str, float]], proxy: dict[str, dict[str, float]], costs: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """Every candidate's damage: measured where `direct` has it, else the proxy scaled to direct units by the
    tensor's own fitted ratio (least squares through 0 on its measured candidates; the global ratio when it has
    none), and never below a measured candidate of the tensor that costs no more and that the proxy rates no worse
    (a screened-out candidate the proxy puts behind a measured one cannot look better than it)."""
    def ratio(pairs: list[tuple[float, float]]) -> float | None:
        num = sum(p * d for p, d in pairs)
        den = sum(p * p for p, _ in pairs)
        return num / den if den > 0 and num > 0 else None

    allp = [(max(0.0, proxy[n][l]), max(0.0, v)) for n, r in direct.items() for l, v in r.items()]
    glob = ratio(allp) or 1.0
    out: dict[str, dict[str, float]] = {}
    for name, prow in proxy.items():
        d = direct.get(name, {})
        scale = ratio([(max(0.0, prow[l]), max(0.0, v)) for l, v in d.items()]) or glob
        row = {}
        for lbl, pv in prow.items():
            if lbl in d:
                row[lbl] = float(d[lbl])
                continue
            floor = max((max(0.0, v) for l, v in d.items() if costs[name][l] <= costs[name][lbl] and prow[l] <= pv), default=0.0)
            row[lbl] = max(floor, scale * max(0.0, float(pv)))
        out[name] = row
    return out


def misses(scr: Screen, direct: dict[str, dict[str, float]], proxy: dict[str, dict[str, float]], costs: dict[str, dict[str, int]]) -> int:
    """Sampled (screened-out) candidates that direct measurement says should have been kept: with their measured
    damage, they beat their tensor's proxy choice (its measured damage, or its proxy scaled by `fill`) in the
    Lagrangian at the budget's slope, converted to direct units by the global direct/proxy ratio."""
    est = fill(direct, proxy, costs)
    pairs = [(max(0.0, proxy[n][l]), max(0.0, v)) for n, r in direct.items() for l, v in r.items()]
    den = sum(p * p for p, _ in pairs)
    ratio = sum(p * d for p, d in pairs) / den if den > 0 else 1.0
    mu = scr.mu[len(scr.mu) // 2] * ratio
    out = 0
    for n, l in scr.sample:
        k = scr.chosen[n]
        if l != k and est[n][l] + mu * costs[n][l] < est[n][k] + mu * costs[n][k]:
            out += 1
    return out


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties counted once per side); nan with fewer than 2 pairs or a constant side."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError("kendall: lengths differ")
    if len(a) < 2:
        return math.nan
    i, j = np.triu_indices(len(a), 1)
    sa, sb = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n1, n2 = np.count_nonzero(sa), np.count_nonzero(sb)
    if n1 == 0 or n2 == 0:
        return math.nan
    return float((sa * sb).sum() / math.sqrt(n1 * n2))


def agreement(direct: dict[str, dict[str, float]], proxy: dict[str, dict[str, float]], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Rank agreement of proxy and direct damage on `pairs` (the honesty sample): Spearman and Kendall over them."""
    from golfpack.budget.sensitivity import spearman

    xs = [float(proxy[n][l]) for n, l in pairs]
    ys = [float(direct[n][l]) for n, l in pairs]
    return {"pairs": len(pairs), "spearman": spearman(xs, ys), "kendall": kendall(xs, ys)}


__all__ = ["SAMPLE_SHARE", "WINDOW", "Screen", "agreement", "budget_screen", "error_factor", "fill", "kendall", "lagrange", "misses", "slope_at"]
