"""Pareto frontier of a finished search: bytes vs predicted and measured delta bpb, as rows, a text
table and (with matplotlib) a PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from golfpack.errors import BudgetError, GolfpackError

# score(state_dict) -> (loss nats/token, bpb or None) on the held-out measurement tokens
Scorer = Callable[[dict[str, Tensor]], tuple[float, float | None]]


def frontier_budgets(floor_model: int, top_model: int, points: int, extra: list[int] | None = None) -> list[int]:
    """`points` model-byte budgets from the floor to the richest layout, geometrically spaced (the
    interesting trade-offs sit near the floor: the top is fp32 everywhere), plus `extra`."""
    if points <= 0:
        return sorted(set(extra or []))
    if points == 1 or floor_model <= 0:
        out = [top_model]
    else:
        r = top_model / floor_model
        out = [int(round(floor_model * r ** (i / (points - 1)))) for i in range(points)]
    return sorted(set(out + list(extra or [])))


def frontier(
    result: Any,
    *,
    points: int = 6,
    scorer: Scorer | None = None,
    base: tuple[float, float | None] | None = None,
    bpb_per_nat: float | None = None,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Solve + exactly pack the search's layout problem at several budgets (chosen codec).

    Each row: model/total bytes, predicted delta loss (calibration, nats), predicted delta bpb (via
    `bpb_per_nat` = raw bpb / raw loss on the measurement set), and - with a scorer - the measured
    loss/bpb of the decoded artifact and its delta to `base` (the raw model's score).
    """
    from golfpack._progress import bar as progress_bar
    from golfpack.budget.config import SearchConfig
    from golfpack.budget.costs import cheapest_choice
    from golfpack.budget.fit import Fitter
    from golfpack.formats.qgv3 import decode_qgv3

    p = result.problem
    cfg = SearchConfig(budget=result.budget, max_fit_packs=6, max_repair_packs=0)
    fitter = Fitter.for_problem(p, result.codec, result.tables[result.codec], result.sens["deltas"], cfg)
    lo = min(fitter.measure(tuple(cheapest_choice(p, result.codec))), fitter.measure(fitter.cheapest()))
    # top of the range: the least-damage layout (cheapest among equally harmless specs), not fp32 everywhere
    best_loss = tuple(
        min(range(len(c)), key=lambda j: (round(l[j] / 1e-6), c[j])) for c, l in zip(fitter.costs, fitter.losses)
    )
    hi = fitter.measure(best_loss)
    budgets = frontier_budgets(lo, hi, points)
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[int, ...], dict[str, Any]] = {}
    done: set[tuple[int, ...]] = set()

    def row(choice: tuple[int, ...], model_bytes: int, pred: float, mb: int, chosen: bool) -> dict[str, Any]:
        return _row(p, choice, model_bytes, pred, mb, result, seen, scorer, base, bpb_per_nat, decode_qgv3, chosen)

    for mb in progress_bar(budgets, desc="frontier", unit="pt", enabled=progress):
        cfg.target_headroom = max(2048, mb // 50)  # a frontier point need not be fitted to the byte
        try:
            f = fitter.fit(mb)
        except BudgetError:
            continue  # no layout this small
        if f.choice == result.choice or f.choice in done:
            continue  # the same layout twice (a budget above what any better layout needs)
        done.add(f.choice)
        rows.append(row(f.choice, f.model_bytes, f.predicted_loss, mb, chosen=False))
    rows.append(row(result.choice, result.model_bytes, result.predicted_loss, result.budget - result.code_bytes,
                    chosen=True))
    rows.sort(key=lambda r: r["model_bytes"])
    return rows


def _row(p, choice, model_bytes, pred, mb, result, seen, scorer, base, bpb_per_nat, decode, chosen) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model_budget": mb,
        "model_bytes": model_bytes,
        "total_bytes": model_bytes + result.code_bytes,
        "predicted_delta_loss": pred,
        "predicted_delta_bpb": None if bpb_per_nat is None else pred * bpb_per_nat,
        "chosen": chosen,
    }
    if scorer is not None:
        if choice not in seen:
            sd = decode(p.encode(choice, result.codec)).state_dict()
            loss, bpb = scorer(sd)
            seen[choice] = {"measured_loss": loss, "measured_bpb": bpb}
        row.update(seen[choice])
        if base is not None:
            row["measured_delta_loss"] = row["measured_loss"] - base[0]
            if base[1] is not None and row["measured_bpb"] is not None:
                row["measured_delta_bpb"] = row["measured_bpb"] - base[1]
    return row


def frontier_table(rows: list[dict[str, Any]]) -> list[str]:
    def f(v: Any, nd: int = 5) -> str:
        return "-" if v is None else f"{v:.{nd}f}"

    out = [
        f"{'total bytes':>12} {'model bytes':>12} {'pred dloss':>11} {'pred dbpb':>10} {'meas dbpb':>10} {'meas bpb':>9}"
    ]
    for r in rows:
        out.append(
            f"{r['total_bytes']:>12,} {r['model_bytes']:>12,} {f(r['predicted_delta_loss']):>11} {f(r['predicted_delta_bpb']):>10} "
            f"{f(r.get('measured_delta_bpb')):>10} {f(r.get('measured_bpb'), 4):>9}"
            + ("  <- chosen" if r["chosen"] else "")
        )
    return out


def plot_frontier(
    rows: list[dict[str, Any]], path: str | Path, *, title: str = "golfpack search frontier", budget: int | None = None
) -> None:
    """Bytes vs delta bpb (predicted and measured) as a PNG; needs matplotlib (`pip install golfpack[plot]`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GolfpackError("plot_frontier needs matplotlib: pip install matplotlib (or golfpack[plot])") from None
    from golfpack._io import atomic_write

    xs = [r["total_bytes"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    key_pred = (
        "predicted_delta_bpb" if any(r.get("predicted_delta_bpb") is not None for r in rows) else "predicted_delta_loss"
    )
    ax.plot(
        xs,
        [r[key_pred] for r in rows],
        "o--",
        label="predicted " + ("delta bpb" if key_pred.endswith("bpb") else "delta loss (nats)"),
    )
    if any(r.get("measured_delta_bpb") is not None for r in rows):
        ax.plot(xs, [r.get("measured_delta_bpb") for r in rows], "s-", label="measured delta bpb")
    elif any(r.get("measured_delta_loss") is not None for r in rows):
        ax.plot(xs, [r.get("measured_delta_loss") for r in rows], "s-", label="measured delta loss (nats)")
    for r in rows:
        if r["chosen"]:
            y = r.get("measured_delta_bpb", r[key_pred])
            ax.plot([r["total_bytes"]], [y], "r*", markersize=14, label="chosen")
    if budget is not None:
        ax.axvline(budget, color="grey", linestyle=":", label=f"budget {budget:,}")
    # the floor layout's damage dwarfs the rest: a log scale (linear near 0) keeps every point readable
    ax.set_yscale("symlog", linthresh=1e-4)
    ys = [
        v
        for r in rows
        for v in (r.get(key_pred), r.get("measured_delta_bpb"), r.get("measured_delta_loss"))
        if v is not None
    ]
    if ys:
        ax.set_ylim(bottom=min(0.0, min(ys)) * 1.5, top=max(ys) * 1.5 if max(ys) > 0 else None)
    ax.set_xlabel("artifact + code bytes")
    ax.set_ylabel("delta vs raw checkpoint")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


__all__ = ["frontier", "frontier_budgets", "frontier_table", "plot_frontier"]
