"""How the two-pass screen's defaults were chosen: screening policies simulated over a COMPLETE direct table.

The tables (bench/results/screen_two_pass_tables.json) are nolanvild's: every one of its 1,284 candidates
measured directly on the 16 x 256 calibration tokens of a default search (a `--no-screen` run of
bench/search_frontier.py), the same candidates on 4 and on 2 of those 16 rows (evenly spaced, as
`measure.split_rows` takes them), its proxy and its cost table. A policy picks what it would measure
(the coarse value where it measures the coarse rows only), `screen.fill` estimates the rest, and the
knapsack is solved at the budget. The policy's layout is then scored with the full table: its true summed
damage against the full table's own optimum ("+x%"). A policy's cost is in full forwards: a coarse-only
candidate costs k/16 of one.

    python bench/screen_two_pass.py [--tables FILE] [--out bench/results/screen_two_pass.json]

Budgets are table bytes at fractions x of the way from the cheapest to the richest layout (0.03-0.2 spans
the frontier bench's budgets and more).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from golfpack.budget import screen as SC  # noqa: E402
from golfpack.budget.sensitivity import regularize  # noqa: E402
from golfpack.budget.solver import solve  # noqa: E402

FRACTIONS = (0.03, 0.05, 0.08, 0.12, 0.2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default=str(REPO / "bench" / "results" / "screen_two_pass_tables.json"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "screen_two_pass.json"))
    args = ap.parse_args(argv)
    T = json.loads(Path(args.tables).read_text())
    C, proxy, direct = T["cost_table"], T["proxy_kl"], T["direct_kl_16"]
    coarse = {4: T["direct_kl_rows4"], 2: T["direct_kl_rows2"]}
    names = list(proxy)
    labels = {n: list(proxy[n]) for n in names}
    D, P = regularize({n: direct[n] for n in names}), regularize({n: proxy[n] for n in names})
    floor = sum(min(C[n].values()) for n in names)
    top = sum(max(C[n].values()) for n in names)

    def layout(vals: dict[str, dict[str, float]], tb: int) -> list[str]:
        costs = [[C[n][lbl] for lbl in labels[n]] for n in names]
        losses = [[vals[n][lbl] for lbl in labels[n]] for n in names]
        return [labels[n][j] for n, j in zip(names, solve(costs, losses, tb).choice)]

    def true(ch: list[str]) -> float:
        return sum(D[n][lbl] for n, lbl in zip(names, ch))

    def one_pass(tb: int, margin: float) -> tuple[dict[str, dict[str, float]], float]:
        want = SC.budget_screen(C, P, tb, margin=margin, max_direct=None, sample=0.05).wanted()
        meas = {n: {lbl: direct[n][lbl] for lbl in want[n]} for n in names}
        return meas, float(sum(map(len, meas.values())))

    def two_pass(tb: int, rows: int, fine_margin: float) -> tuple[dict[str, dict[str, float]], float]:
        want = SC.budget_screen(C, P, tb, margin=2.0, max_direct=None, sample=0.05).wanted()
        co = {n: {lbl: coarse[rows][n][lbl] for lbl in want[n]} for n in names}
        again = SC.budget_screen(C, regularize(SC.fill(co, P, C)), tb, margin=fine_margin, max_direct=None, sample=0.0).wanted()
        meas = {n: {lbl: (direct[n][lbl] if lbl in again[n] else co[n][lbl]) for lbl in want[n]} for n in names}
        n_coarse, n_fine = sum(map(len, want.values())), sum(len(set(again[n]) & set(want[n])) for n in names)
        return meas, n_coarse * rows / 16 + n_fine * (1 - rows / 16)

    policies = {"one pass, margin 2.0 (before)": lambda tb: one_pass(tb, 2.0), "one pass, margin 1.5": lambda tb: one_pass(tb, 1.5)}
    for rows in (4, 2):
        for fm in (1.1, 1.25, 1.5, 2.0):
            policies[f"two pass, {rows} rows, fine margin {fm}"] = lambda tb, r=rows, f=fm: two_pass(tb, r, f)
    rows_out = []
    for x in FRACTIONS:
        tb = int(floor + x * (top - floor))
        best = true(layout(D, tb))
        for name, pol in policies.items():
            meas, cost = pol(tb)
            got = true(layout(regularize(SC.fill(meas, P, C)), tb))
            rows_out.append({"fraction": x, "table_budget": tb, "policy": name, "forwards": round(cost, 1),
                             "true_damage": got, "optimum": best, "excess_pct": 100 * (got / best - 1)})
    print(f"nolanvild, {sum(map(len, labels.values())):,} candidates; excess over the full table's optimum, forwards (full-forward units)")
    print(f"{'policy':<40}" + "".join(f"  x={x:<13}" for x in FRACTIONS))
    for name in policies:
        cells = [r for r in rows_out if r["policy"] == name]
        print(f"{name:<40}" + "".join(f"  {r['excess_pct']:+6.2f}% {r['forwards']:>5.0f}" for r in cells))
    Path(args.out).write_text(json.dumps({"tables": str(args.tables), "rows": rows_out}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
