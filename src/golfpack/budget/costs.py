"""Phases 2 and 3, what layouts cost: the floor (the cheapest layout, packed exactly) and the cost tables.

The floor is checked before any model measurement, so a budget below it fails in seconds. A cost-table
entry is the bytes of a QGv3 artifact holding one record alone (same writer, the first codec): encoded for real
for small records and a few per record class, estimated from the levels' entropy for the rest. Grouped
compression is not additive, so every layout the fit packs exactly feeds an affine `CostModel`
(`artifact = a * sum(costs) + b`, per codec), through which the solver sees the budget.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
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
    narrowest width under several clip rules) are told apart by their size compressed alone (a tensor of more than
    EXACT_NUMEL values: by its zeroth-order entropy, which ranks same-width records like their compressed sizes at
    a fraction of the time - 21.8M parameters: the floor took 141 s with one-record encodes). The floor's bytes
    are still an exact pack of the layout chosen.

    GPTQ candidates are left out: same grid, so about the same bytes, but they need Hessians (model
    forwards) and the floor is checked before any measurement."""
    out = []
    for n in p.names:
        specs = p.candidates[n]
        plain = [j for j, s in enumerate(specs) if not s.gptq]
        est = {j: _payload_estimate(p.state_dict[n], specs[j]) for j in plain}
        lo = min(est.values())
        ties = [j for j in plain if est[j] == lo]
        if len(ties) == 1:
            out.append(ties[0])
        elif p.state_dict[n].numel() > EXACT_NUMEL:
            out.append(min(ties, key=lambda j: entropy_bytes(p.record(n, specs[j]))))
        else:
            out.append(min(ties, key=lambda j: p.alone_bytes(n, specs[j], codec)))
    return out


def _payload_estimate(t: Tensor, s: TensorSpec) -> float:
    return payload_bytes(s, tuple(t.shape), dtype_name(t.dtype))


def floor_bytes(p: Problem, codecs: list[str]) -> tuple[int, str, list[int]]:
    """(exact total bytes incl. code, codec, choice) of the cheapest layout over the codecs."""
    choice = cheapest_choice(p, codecs[0])
    best = None
    for c in codecs:
        n = p.size(choice, c) + p.code_bytes
        if best is None or n < best[0]:
            best = (n, c, choice)
    assert best is not None
    return best


# ------------------------------------------------------------------------------------------------
# phase 3: cost tables


POOL_MIN_NUMEL = 2_000_000  # below this many values to quantize/encode, starting worker processes costs more than it saves
EXACT_NUMEL = 1 << 16  # records this small are encoded for real (cheap; a header is most of their bytes)
CALIBRATION_RECORDS = 2  # per (codec, record class): real encodes that fit the class's bytes-per-entropy ratio


def cost_tables(p: Problem, codecs: list[str], cache: Cache, *, progress: bool | None,
                workers: int = 1, estimate: bool = True) -> dict[str, dict[str, dict[str, int]]]:
    """codec -> tensor -> spec label -> bytes of a one-record QGv3 artifact holding that record.

    Every record is quantized once (`Problem.quantize_all`, in `workers` spawned processes, 0 = one per core, at
    most 8, when there is enough to do) and kept on the Problem for the later phases. With `estimate`, only small
    records (EXACT_NUMEL) and CALIBRATION_RECORDS per (codec, class) are encoded for real; every other entry is
    its zeroth-order entropy (`entropy_bytes`) times its class's fitted ratio (`estimate_table`): the table ranks
    candidates and the fit corrects the total with exact packs. Without it, every record is encoded alone."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    todo = []
    for c in codecs:
        key = cache_key("cost", p.sha, c, __version__, {n: [s.label() for s in v] for n, v in p.candidates.items()},
                        p.calibration.digest, "estimate" if estimate else "exact")
        hit = cache.get("cost", key)
        if hit is not None:
            out[c] = hit["table"]
        else:
            todo.append((c, key))
    if not todo:
        return out
    cs = [c for c, _ in todo]
    n_workers = min(os.cpu_count() or 1, 8) if workers == 0 else workers
    todo_q = [(n, s) for n in p.names for s in p.candidates[n] if (n, s.label()) not in p.records]
    numel = sum(p.state_dict[n].numel() for n, _ in todo_q)
    use_pool = n_workers > 1 and numel >= POOL_MIN_NUMEL and len({n for n, _ in todo_q}) > 1
    pool = None
    if use_pool:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)
    try:
        bar = progress_bar(total=len(todo_q), desc="quantize", unit="rec", enabled=progress)
        p.quantize_all(pool, bar.update)
        bar.close()
        keys = [(n, s) for n in p.names for s in p.candidates[n]]
        if estimate:
            real = [(n, s) for n, s in keys if p.state_dict[n].numel() <= EXACT_NUMEL]
            real += calibration_records(p, [k for k in keys if p.state_dict[k[0]].numel() > EXACT_NUMEL])
        else:
            real = keys
        _encode_alone_all(p, real, cs, pool, progress)
    finally:
        if pool is not None:
            pool.shutdown()
    for c, key in todo:
        if estimate:
            table = estimate_table(p, c)
        else:
            table = {n: {s.label(): p.alone_bytes(n, s, c) for s in p.candidates[n]} for n in p.names}
        cache.put("cost", key, {"table": table})
        out[c] = table
    return out


def _encode_alone_all(p: Problem, keys: list[tuple[str, TensorSpec]], cs: list[str], pool: Any, progress: bool | None) -> None:
    # one-record encodes of `keys` for every codec of `cs` not yet in p.alone: in the pool per tensor, or here
    keys = [(n, s) for n, s in keys if any((n, s.label(), c) not in p.alone for c in cs)]
    bar = progress_bar(total=len(keys), desc="cost encodes", unit="rec", enabled=progress)
    if pool is not None and keys:
        from concurrent.futures import as_completed

        by: dict[str, list[TensorSpec]] = {}
        for n, s in keys:
            by.setdefault(n, []).append(s)
        futs = {pool.submit(encode_alone, [p.record(n, s) for s in specs], cs): (n, specs) for n, specs in by.items()}
        for f in as_completed(futs):
            n, specs = futs[f]
            for s, sizes in zip(specs, f.result()):
                for c, b in sizes.items():
                    p.alone[(n, s.label(), c)] = b
            bar.update(len(specs))
    else:
        for n, s in keys:
            for c in cs:
                p.alone_bytes(n, s, c)
            bar.update(1)
    bar.close()


def record_class(r: TensorRecord) -> str:
    """What an estimate's ratio is fitted per: int width, clip rule and scale layout (GPTQ or not: same grid), or
    the passthrough storage dtype. The clip matters: `quantile` at low widths rounds most levels to 0."""
    if r.q is not None:
        k = f"int{r.spec.bits}:{r.spec.clip}" + (":g" if r.grouped else (":t" if not r.per_row else ""))
        if r.sub_quantized:
            k += f"s{r.spec.subscale}"
        return k + (":lqer" if r.lqer_q is not None else "") + (":out" if r.outlier_idx is not None else "")
    assert r.data is not None
    return f"pt:{r.data.dtype.str}"


def _plane_entropy_bits(a: np.ndarray) -> float:
    # the sum over byte planes (byte k of every element) of each plane's zeroth-order entropy, in bits
    b = np.ascontiguousarray(a).reshape(-1).view(np.uint8).reshape(-1, a.dtype.itemsize)
    return sum(_h0_bits(b[:, k]) for k in range(b.shape[1]))


def _h0_bits(u8: np.ndarray) -> float:
    n = u8.size
    if n == 0:
        return 0.0
    c = np.bincount(u8, minlength=256).astype(np.float64)
    c = c[c > 0]
    return float(-(c * np.log2(c / n)).sum())


def entropy_bytes(r: TensorRecord) -> float:
    """Zeroth-order entropy of a record's stored values, in bytes: levels as one symbol each plus the scales' byte
    planes; passthrough values as byte planes. What the estimate scales by its class's ratio."""
    if r.q is not None:
        assert r.scales is not None
        bits = _h0_bits(np.ascontiguousarray(r.q).reshape(-1).view(np.uint8)) + _plane_entropy_bits(r.scales)
        if r.subscales is not None:  # k-bit sub-scales: one symbol each
            bits += _h0_bits(np.ascontiguousarray(r.subscales).reshape(-1).astype(np.uint8))
        if r.lqer_q is not None and r.lqer_scales is not None:  # LQER factor levels and their scales
            bits += _h0_bits(np.ascontiguousarray(r.lqer_q).reshape(-1).view(np.uint8)) + _plane_entropy_bits(r.lqer_scales)
        if r.outlier_idx is not None and r.outlier_vals is not None:  # (index delta, fp16 value) pairs, byte planes
            idx = np.asarray(r.outlier_idx, dtype=np.int64)
            bits += _plane_entropy_bits(np.diff(idx, prepend=0).astype("<u4")) + _plane_entropy_bits(np.asarray(r.outlier_vals))
        return bits / 8.0
    assert r.data is not None
    return _plane_entropy_bits(r.data) / 8.0


def calibration_records(p: Problem, keys: list[tuple[str, TensorSpec]]) -> list[tuple[str, TensorSpec]]:
    """Per record class, CALIBRATION_RECORDS of `keys` to encode for real: the smallest tensors' first (cheap to
    encode), each from a different tensor where it can."""
    by: dict[str, list[tuple[str, TensorSpec]]] = {}
    for n, s in sorted(keys, key=lambda k: p.state_dict[k[0]].numel()):
        by.setdefault(record_class(p.record(n, s)), []).append((n, s))
    out = []
    for ks in by.values():
        first: dict[str, tuple[str, TensorSpec]] = {}
        for k in ks:
            first.setdefault(k[0], k)  # the class's first record of each tensor, smallest tensor first
        pick = list(first.values())[:CALIBRATION_RECORDS]
        out += pick if len(pick) >= CALIBRATION_RECORDS else ks[:CALIBRATION_RECORDS]
    return out


def header_bytes(name: str, spec: TensorSpec, codec: str) -> int:
    """What a one-record artifact costs besides its values: the bytes of one holding a 2-element record of the same
    spec under the same name (preamble, header, block framing)."""
    from dataclasses import replace

    import torch as _t

    from golfpack.formats.qgv3 import encode_qgv3
    from golfpack.packer.quantize import quantize_tensor

    tiny = _t.zeros(1, 2) if spec.kind == "int" else _t.zeros(2)
    r = quantize_tensor(name, tiny, replace(spec, gptq=False))  # GPTQ needs a Hessian; its records store the same keys
    return len(encode_qgv3([r], config=None, policy=None, codec=codec, meta=None))


def estimate_table(p: Problem, codec: str) -> dict[str, dict[str, int]]:
    """tensor -> label -> bytes: real one-record bytes where `p.alone` has them, else header + entropy_bytes x the
    ratio (real - header) / entropy of its class's real encodes of records above EXACT_NUMEL (of all of them when
    the class has none). The header is measured once per (codec, bits) on a tiny record and corrected by name length."""
    hdr: dict[tuple[int, bool, int, bool, bool], int] = {}

    def head(n: str, s: TensorSpec) -> int:
        k = (s.bits if s.kind == "int" else -1, s.group > 0, s.subscale, s.lqer > 0, s.outliers > 0)
        if k not in hdr:
            hdr[k] = header_bytes("x", s, codec) - 1
        return hdr[k] + len(n)

    num: dict[str, float] = {}
    den: dict[str, float] = {}
    ent: dict[tuple[str, str], float] = {}
    for n in p.names:
        for s in p.candidates[n]:
            r = p.record(n, s)
            e = ent[(n, s.label())] = entropy_bytes(r)
            b = p.alone.get((n, s.label(), codec))
            if b is not None and p.state_dict[n].numel() > EXACT_NUMEL and e > 0:
                k = record_class(r)
                num[k], den[k] = num.get(k, 0.0) + max(0, b - head(n, s)), den.get(k, 0.0) + e
    overall = sum(num.values()) / sum(den.values()) if den else 1.0
    table: dict[str, dict[str, int]] = {}
    for n in p.names:
        row = table[n] = {}
        for s in p.candidates[n]:
            b = p.alone.get((n, s.label(), codec))
            if b is None:
                k = record_class(p.record(n, s))
                ratio = num[k] / den[k] if den.get(k) else overall
                b = max(1, int(round(head(n, s) + ratio * ent[(n, s.label())])))
            row[s.label()] = b
    return table


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


__all__ = ["CALIBRATION_RECORDS", "EXACT_NUMEL", "POOL_MIN_NUMEL", "CostModel", "calibration_records", "cheapest_choice", "cost_tables",
           "encode_alone", "entropy_bytes", "estimate_table", "fit_cost_model", "floor_bytes", "header_bytes",
           "record_class"]
