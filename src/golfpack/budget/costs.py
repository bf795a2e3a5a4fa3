"""Phases 2 and 3, what layouts cost: the floor (the cheapest layout, packed exactly) and the cost tables.

The floor is checked before any model measurement, so a budget below it fails in seconds. A cost-table
entry is the bytes of a QGv3 artifact holding one record alone (same writer, the first codec). Grouped
compression is not additive, so every layout the fit packs exactly feeds an affine `CostModel`
(`artifact = a * sum(costs) + b`, per codec), through which the solver sees the budget.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from golfpack._progress import bar as progress_bar
from golfpack._version import __version__
from golfpack.budget.cache import Cache, cache_key
from golfpack.budget.problem import Problem
from golfpack.formats.records import TensorRecord, dtype_name, payload_bytes
from golfpack.formats.spec import TensorSpec

# ------------------------------------------------------------------------------------------------
# phase 2: floor


def cheapest_choice(p: Problem, codec: str) -> list[int]:
    """Per tensor, the round-to-nearest candidate with the fewest payload bytes; candidates that tie (the
    narrowest width under several clip rules) are told apart by their size compressed alone.

    GPTQ candidates are left out: same grid, so about the same bytes, but they need Hessians (model
    forwards) and the floor is checked before any measurement."""
    out = []
    for n in p.names:
        specs = p.candidates[n]
        plain = [j for j, s in enumerate(specs) if not s.gptq]
        est = {j: _payload_estimate(p.state_dict[n], specs[j]) for j in plain}
        lo = min(est.values())
        ties = [j for j in plain if est[j] == lo]
        out.append(ties[0] if len(ties) == 1 else min(ties, key=lambda j: p.alone_bytes(n, specs[j], codec)))
    return out


def _payload_estimate(t: Tensor, s: TensorSpec) -> float:
    return payload_bytes(s, tuple(t.shape), dtype_name(t.dtype))


def floor_bytes(p: Problem, codecs: list[str]) -> tuple[int, str, list[int]]:
    """(exact total bytes incl. code, codec, choice) of the cheapest layout over the codecs."""
    choice = cheapest_choice(p, codecs[0])
    best = None
    for c in codecs:
        n = len(p.encode(choice, c)) + p.code_bytes
        if best is None or n < best[0]:
            best = (n, c, choice)
    assert best is not None
    return best


# ------------------------------------------------------------------------------------------------
# phase 3: cost tables


POOL_MIN_NUMEL = 2_000_000  # below this many values to encode, starting worker processes costs more than it saves


def cost_tables(p: Problem, codecs: list[str], cache: Cache, *, progress: bool | None,
                workers: int = 1) -> dict[str, dict[str, dict[str, int]]]:
    """codec -> tensor -> spec label -> bytes of a one-record QGv3 artifact holding that record.

    Every record is quantized once, here in this process (the arithmetic `pack` repeats on replay), and kept
    on the Problem for the later phases; the one-record encodes (the slow part: one compression each) run in
    `workers` spawned processes (0 = one per core, at most 8) when there is enough to encode."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    todo = []
    for c in codecs:
        key = cache_key("cost", p.sha, c, __version__, {n: [s.label() for s in v] for n, v in p.candidates.items()}, p.calibration.digest)
        hit = cache.get("cost", key)
        if hit is not None:
            out[c] = hit["table"]
        else:
            todo.append((c, key))
    if not todo:
        return out
    cs = [c for c, _ in todo]
    jobs = [(n, [s for s in p.candidates[n] if any((n, s.label(), c) not in p.alone for c in cs)]) for n in p.names]
    jobs = [(n, specs) for n, specs in jobs if specs]
    bar = progress_bar(total=sum(len(v) for _, v in jobs), desc="cost tables", unit="rec", enabled=progress)
    n_workers = min(os.cpu_count() or 1, 8) if workers == 0 else workers
    numel = sum(p.state_dict[n].numel() * len(v) for n, v in jobs)
    if n_workers > 1 and numel >= POOL_MIN_NUMEL and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=n_workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            futs = {}
            for n, specs in jobs:  # quantize here, in order (GPTQ Hessians and all), encode there
                futs[pool.submit(encode_alone, [p.record(n, s) for s in specs], cs)] = (n, specs)
            for f in as_completed(futs):
                n, specs = futs[f]
                for s, sizes in zip(specs, f.result()):
                    for c, b in sizes.items():
                        p.alone[(n, s.label(), c)] = b
                bar.update(len(specs))
    else:
        for n, specs in jobs:
            for s in specs:
                for c in cs:
                    p.alone_bytes(n, s, c)
                bar.update(1)
    bar.close()
    for c, key in todo:
        table = {n: {s.label(): p.alone_bytes(n, s, c) for s in p.candidates[n]} for n in p.names}
        cache.put("cost", key, {"table": table})
        out[c] = table
    return out


def _worker_init() -> None:
    torch.set_num_threads(1)  # each worker is one core's worth of encoding


def encode_alone(records: list[TensorRecord], codecs: list[str]) -> list[dict[str, int]]:
    """Per record, {codec: bytes of a QGv3 artifact holding it alone} (what `Problem.alone_bytes` computes)."""
    from golfpack.formats.qgv3 import encode_qgv3

    return [{c: len(encode_qgv3([r], config=None, policy=None, codec=c, meta=None)) for c in codecs} for r in records]


@dataclass
class CostModel:
    """artifact bytes ~= a * sum(one-record costs) + b, fitted on exact packs of reference layouts."""

    a: float
    b: float
    points: list[tuple[int, int]]  # (sum of table costs, exact artifact bytes) used for the fit

    def predict(self, s: float) -> float:
        return self.a * s + self.b

    def solver_budget(self, model_budget: int) -> int:
        """The table-cost budget whose predicted artifact is model_budget."""
        return int(math.floor((model_budget - self.b) / self.a)) if self.a > 0 else model_budget


def fit_cost_model(points: list[tuple[int, int]]) -> CostModel:
    if len(points) == 1 or len({x for x, _ in points}) == 1:
        x, y = points[0]
        return CostModel(1.0, float(y - x), points)
    xs = torch.tensor([x for x, _ in points], dtype=torch.float64)
    ys = torch.tensor([y for _, y in points], dtype=torch.float64)
    xm, ym = xs.mean(), ys.mean()
    a = float(((xs - xm) * (ys - ym)).sum() / ((xs - xm) ** 2).sum())
    return CostModel(a, float(ym - a * xm), points)


__all__ = ["POOL_MIN_NUMEL", "CostModel", "cheapest_choice", "cost_tables", "encode_alone", "fit_cost_model", "floor_bytes"]
