"""Phase 6, joint selection: the solver's answer per codec, the greedy and proxy answers and every preset that
fits are scored JOINTLY (all tensors quantized at once) on the held-out half of the calibration tokens; the
lowest damage wins (within measurement noise, the layout that stores the most bytes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from golfpack._progress import bar as progress_bar
from golfpack.budget.config import SearchConfig
from golfpack.budget.fit import Fit, Fitter
from golfpack.budget.problem import Problem
from golfpack.budget.solver import InfeasibleBudget, floor_cost


@dataclass
class Alternative:
    """One complete layout that fits, and how it scores when ALL its tensors are quantized at once."""

    source: str  # where it came from: solver:<codec>, proxy:<codec>, greedy:<codec>, preset:<name>
    codec: str
    choice: tuple[int, ...]  # candidate index per tensor
    model_bytes: int  # exact artifact bytes
    predicted_loss: float  # sum of single-tensor deltas (what the solver minimised)
    joint: float = math.nan  # objective measured with every tensor quantized, on held-out calibration tokens
    joint_kl: float = math.nan  # the same forward's KL(raw || quantized) per token (= joint for objective kl)
    joint_nll: float = math.nan  # and its delta loss per token (= joint for objective nll); minus joint_kl: the first order
    exact: bool = True  # model_bytes is an exact pack (False: the fit's cost-model prediction, packed only if it can win)
    # how `settle` makes a predicted layout exact when it can win: None packs `choice` as it is (a preset); a solver's
    # answer on predicted bytes is fitted for real instead (exact packs, budget moved until it fits), returning
    # (choice, exact bytes, predicted loss): the fitted layout may differ from the predicted one, and is scored again
    refit: Callable[[], tuple[tuple[int, ...], int, float]] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "codec": self.codec, "model_bytes": self.model_bytes, "bytes_exact": self.exact,
                "predicted_loss": self.predicted_loss, "joint": self.joint, "joint_kl": self.joint_kl, "joint_delta_nll": self.joint_nll}


JOINT_TIE_ABS = 1e-6  # nats/token: joint scores closer than this (or JOINT_TIE_REL of the best) are a tie
JOINT_TIE_REL = 0.01
# A preset is packed exactly only when its bytes matter. The fit's cost model (artifact ~ a * table cost + b) predicts
# its size first: over (1 + PRESET_PREDICT_MARGIN) x the budget it is left out unpacked, under (1 - margin) x it is
# compared jointly on the prediction and packed only if its joint score ties the best (`settle`); in between it is
# packed at once. Every preset was packed before: at 21.8M parameters each pack is seconds of lzma and rans.
PRESET_PREDICT_MARGIN = 0.1


def near_best(alts: list[Alternative]) -> list[Alternative]:
    """The layouts whose joint score is within measurement resolution of the lowest."""
    best = min(a.joint for a in alts)
    return [a for a in alts if a.joint <= best + max(JOINT_TIE_ABS, JOINT_TIE_REL * abs(best))]


def pick(alts: list[Alternative]) -> Alternative:
    """The lowest joint damage; within measurement resolution of it, the layout that stores the most bytes
    (fewer bytes never buys fidelity, and the budget is there to be spent). Every tied layout must be exact
    (`settle` first when some are predictions)."""
    near = near_best(alts)
    assert all(a.exact for a in near), "pick: a tied layout's bytes are a prediction; settle() the alternatives first"
    return max(near, key=lambda a: (a.model_bytes, -a.joint))


def settle(p: Problem, alts: list[Alternative], model_budget: int,
           score: Callable[[list[Alternative]], None] | None = None) -> list[Alternative]:
    """`alts` with every layout that ties the best joint score made exact (`pick` compares their bytes): packed, or
    fitted for real when it has a `refit` (then `score` re-measures it if the fit changed the layout). One over
    `model_budget` (or that cannot be fitted) is dropped, a layout found twice is kept once, and the ties are
    looked at again."""
    alts = list(alts)
    while True:
        todo = [a for a in near_best(alts) if not a.exact]
        if not todo:
            return alts
        dropped: set[int] = set()
        for a in todo:
            if a.refit is None:
                a.model_bytes, a.exact = p.size(a.choice, a.codec), True
                continue
            try:
                choice, size, loss = a.refit()
            except InfeasibleBudget:
                dropped.add(id(a))
                continue
            a.refit, a.model_bytes, a.exact = None, size, True
            if choice != a.choice:
                if score is None:
                    raise ValueError("settle: a refitted layout changed and needs a joint re-score; pass `score`")
                a.choice, a.predicted_loss = choice, loss
                score([a])
        alts = _unique([a for a in alts if id(a) not in dropped and a.model_bytes <= model_budget])


def _unique(alts: list[Alternative]) -> list[Alternative]:
    """Each (choice, codec) once, under its first entry, in order."""
    first: dict[tuple[tuple[int, ...], str], Alternative] = {}
    for a in alts:
        first.setdefault((a.choice, a.codec), a)
    return list(first.values())


def preset_choice(p: Problem, name: str) -> tuple[int, ...] | None:
    """A policy preset as candidate indices, or None if one of its specs is not a candidate here."""
    from golfpack.packer.policy import Policy

    specs = Policy.preset(name).resolve(p.state_dict)
    out = []
    for n in p.names:
        labels = [s.label() for s in p.candidates[n]]
        if specs[n].label() not in labels:
            return None
        out.append(labels.index(specs[n].label()))
    return tuple(out)


def alternatives(p: Problem, cfg: SearchConfig, fits: dict[str, Fit], tables: dict[str, Any], sens: dict[str, Any], model_budget: int,
                 *, unique: bool = True) -> list[Alternative]:
    """Fitting layouts worth a joint measurement: the solver's answer per codec, the answers under the
    proxy estimate and the greedy solver (best codec; on predicted bytes, `exact=False`, fitted for real by `settle`
    only if they tie the best), and every preset that fits (one the cost model puts far under the budget with its
    predicted bytes too: see PRESET_PREDICT_MARGIN).

    Summed single-tensor deltas ignore interactions (quantizing many tensors at once usually hurts
    more than the sum), so these are compared on what actually matters: the joint effect. A layout found
    twice (same choice and codec) is kept once, under its first source (`unique=False`: every one found)."""
    from golfpack.budget.sensitivity import regularize
    from golfpack.packer.policy import PRESETS

    deltas = sens["deltas"]

    def pred(choice: tuple[int, ...]) -> float:
        return sum(deltas[n][p.candidates[n][j].label()] for n, j in zip(p.names, choice))

    out = [Alternative(f"solver:{f.codec}", f.codec, tuple(f.choice), f.model_bytes, f.predicted_loss) for f in fits.values()]
    best = min(fits.values(), key=lambda f: (f.predicted_loss, f.model_bytes))
    extra: list[tuple[str, dict[str, dict[str, float]], str]] = [(f"greedy:{best.codec}", deltas, "greedy")]
    if sens.get("proxy") is not None and cfg.sensitivity != "proxy":
        extra.append((f"proxy:{best.codec}", regularize({n: dict(sens["proxy"][n]) for n in p.names}), cfg.solver))
    cm = best.cost_model
    for source, table, method in extra:
        # seeded with the solver fit's packs: same table and budget, so its cost model is already calibrated here
        fitter = Fitter.for_problem(p, best.codec, tables[best.codec], table, cfg.replace(solver=method), seed=cm.points)
        # solved at the table budget the solver fit's cost model maps to the budget, on predicted bytes: at 21.8M
        # parameters a real fit is ~8 exact packs (2 minutes); the proxy's answer has never won a bench row, and the
        # greedy one wins only from a tie with the solver's (then `settle` fits it)
        try:
            sol = fitter.solve(max(floor_cost(fitter.costs), cm.solver_budget(model_budget)))
        except InfeasibleBudget:
            continue

        def refit(fitter: Fitter = fitter) -> tuple[tuple[int, ...], int, float]:
            f = fitter.fit(model_budget)
            return tuple(f.choice), f.model_bytes, pred(tuple(f.choice))

        ch = tuple(sol.choice)
        out.append(Alternative(source, best.codec, ch, int(round(cm.predict(sol.cost))), pred(ch), exact=False, refit=refit))
    for name in PRESETS:
        ch = preset_choice(p, name)
        if ch is None:
            continue
        guess = {c: f.cost_model.predict(sum(tables[c][n][p.candidates[n][j].label()] for n, j in zip(p.names, ch)))
                 for c, f in fits.items()}
        c = min(guess, key=guess.__getitem__)
        if guess[c] > (1 + PRESET_PREDICT_MARGIN) * model_budget:
            continue  # far over: no pack
        if guess[c] < (1 - PRESET_PREDICT_MARGIN) * model_budget:
            out.append(Alternative(f"preset:{name}", c, ch, int(round(guess[c])), pred(ch), exact=False))
            continue
        sizes = {c: p.size(ch, c) for c in fits}
        c = min(sizes, key=sizes.__getitem__)
        if sizes[c] <= model_budget:
            out.append(Alternative(f"preset:{name}", c, ch, sizes[c], pred(ch)))
    return _unique(out) if unique else out


def joint_scorer(p: Problem, cfg: SearchConfig) -> Callable[[list[Alternative]], None]:
    """A function that fills `joint` for layouts: the objective with every tensor of the layout quantized,
    on held-out calibration. The batch and the raw model's predictions are set up once."""
    from golfpack.budget import sensitivity as S
    from golfpack.packer.calibration import calib_halves, make_batch

    # the HELD-OUT half: every layout's parts were measured (and GPTQ fitted) on the other one
    batch = make_batch(calib_halves(cfg.calib, tokenizer=cfg.tokenizer)[1], cfg.select_batch, cfg.calib_seq, vocab_size=p.vocab_size)
    model = p.build(device=cfg.device)
    ref = S.reference_logprobs(model, batch, device=cfg.device)
    # the raw model's loss from its own predictions: `batch_scores`' number without a second forward
    base = -sum(float(r.gather(-1, batch.targets[i : i + 8].to(cfg.device).unsqueeze(-1)).double().sum())
                for r, i in zip(ref, range(0, batch.inputs.shape[0], 8))) / batch.tokens
    scored: dict[tuple[int, ...], tuple[float, float]] = {}  # choice -> (KL, delta NLL)

    def score(alts: list[Alternative]) -> None:
        for a in progress_bar(alts, desc="select (joint)", unit="layout", enabled=cfg.progress):
            if a.choice not in scored:
                sd = {n: p.record(n, p.candidates[n][j]).dequantize() for n, j in zip(p.names, a.choice)}
                nll, kl = S.batch_scores(p.build(sd, device=cfg.device), batch, ref, device=cfg.device)
                scored[a.choice] = (kl, nll - base)
            a.joint_kl, a.joint_nll = scored[a.choice]
            a.joint = a.joint_kl if cfg.objective == "kl" else a.joint_nll

    return score


def first_order_note(a: Alternative, calib: str, objective: str) -> str | None:
    """What the report should say when the chosen layout's held-out loss change is mostly first order.

    delta NLL - KL is the first-order term g . dw of the calibration text's loss (to first order the two differ only
    where the text's next tokens differ from the model's own predictions). It is large when the model is far from a
    minimum of that text, and KL does not judge it: on Taleef7 (a barely trained model) it was the whole val gap of
    the default search's and the records' layouts (bench/first_order.py). On the model's own samples it is zero in expectation, so only real-text
    calibration with objective kl gets the note; None when the first order is at most the KL itself.
    """
    if calib == "self" or objective != "kl" or not (math.isfinite(a.joint_kl) and math.isfinite(a.joint_nll)):
        return None
    if abs(a.joint_nll - a.joint_kl) <= max(JOINT_TIE_ABS, a.joint_kl):
        return None
    return (f"on held-out calibration text the chosen layout changes the loss by {a.joint_nll:+.5f} nats/token, its KL is "
            f"{a.joint_kl:.5f}: the rest is first order (the model is not at a minimum of this text), which objective kl does "
            "not judge. If this text is like the scored text and the model did not train on it, objective nll judges it "
            "too (docs/search.md, 'When delta NLL')")


__all__ = ["JOINT_TIE_ABS", "JOINT_TIE_REL", "PRESET_PREDICT_MARGIN", "Alternative", "alternatives", "first_order_note", "joint_scorer", "near_best", "pick",
           "preset_choice", "settle"]
