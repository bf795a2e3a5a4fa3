"""Phase 4, sensitivity: the damage of every (tensor, spec) alone, on the measurement half of the calibration
tokens (direct forwards, the Taylor proxy, or both), cached, then regularized into what the solver minimises.

The measuring itself lives in `search/sensitivity.py`; this module runs it on a `Problem`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from golfpack._version import __version__
from golfpack.budget.cache import Cache, cache_key
from golfpack.budget.config import SearchConfig
from golfpack.budget.problem import Problem
from golfpack.formats.spec import TensorSpec
from golfpack.packer.calibration import CalibBatch, calib_halves, make_batch


def sensitivity(p: Problem, cfg: SearchConfig, cache: Cache, table: dict[str, dict[str, int]] | None = None,
                table_budget: int | None = None) -> dict[str, Any]:
    """{'base_loss', 'direct' (maybe), 'proxy' (maybe), 'deltas' (what the solver uses), 'agreement', 'screen', ...}.

    Direct measurement yields both objectives from the same forwards (cached together); the proxy for
    `kl` is 0.5 * F_true * dw^2 (Fisher with labels sampled from the model), for `nll` the Taylor
    estimate g . dw + 0.5 * F_emp * dw^2. With sensitivity 'both', `cfg.screen` and a cost `table`, the
    proxy runs first and is solved at `table_budget` (the budget in table bytes; default the model budget):
    only the candidates that solution puts within `cfg.screen_margin` of entering it, at most `cfg.max_direct`
    with a random honesty sample among them, are measured directly (`screen.budget_screen`); the others get
    `screen.fill` estimates. 'screen' in the output says how many were measured and filled, and the sample's
    rank agreement.
    """
    from golfpack.budget import screen as SC
    from golfpack.budget import sensitivity as S

    # sensitivity and objective are valid: SearchConfig checked them when it was built
    toks = calib_halves(cfg.calib, tokenizer=cfg.tokenizer)[0]  # the measurement half; the other is held out
    batch = make_batch(toks, cfg.calib_batch, cfg.calib_seq, vocab_size=p.vocab_size)
    labels = {n: [s.label() for s in v] for n, v in p.candidates.items()}
    key = cache_key("sens", p.sha, p.config_dict, batch.digest, cfg.proxy_batch, __version__, p.calibration.digest)
    hit = cache.get("sens", key) or {}
    model = p.build(device=cfg.device)
    out: dict[str, Any] = {"calib_digest": batch.digest, "calib_tokens": batch.tokens, "cache_key": key, "objective": cfg.objective}
    values = lambda n, s: p.record(n, s).dequantize()  # noqa: E731

    def save(partial: dict[str, Any]) -> None:
        hit.update(partial)
        cache.put("sens", key, {k: v for k, v in hit.items() if k != "cache_version"})

    def complete(table_: dict[str, dict[str, float]] | None, want: dict[str, list[str]]) -> bool:
        return table_ is not None and all(l in table_.get(n, {}) for n, ls in want.items() for l in ls)

    pkey = f"proxy_{cfg.objective}"
    proxy = None
    screening = cfg.screen and cfg.sensitivity == "both" and table is not None
    if cfg.sensitivity in ("proxy", "both") or pkey in hit:
        proxy = hit.get(pkey)
        if not complete(proxy, labels):
            pb = make_batch(toks, cfg.proxy_batch, cfg.calib_seq, vocab_size=p.vocab_size)
            if cfg.objective == "kl":
                _, fisher = S.gradient_stats(model, pb, device=cfg.device, progress=cfg.progress, sample=True)
                proxy = S.proxy_deltas(p.state_dict, fisher, p.candidates, values=values)
            else:
                # first-order term from the calibration batch itself, curvature from a larger batch
                grad, _ = S.gradient_stats(model, batch, device=cfg.device, progress=cfg.progress)
                _, fisher = S.gradient_stats(model, pb, device=cfg.device, progress=cfg.progress)
                proxy = S.proxy_deltas(p.state_dict, fisher, p.candidates, grad=grad, values=values)
            save({pkey: proxy})
        out["proxy"] = proxy
    want = labels
    sample: list[tuple[str, str]] = []
    if screening:
        assert proxy is not None and table is not None
        tb = cfg.budget - p.code_bytes if table_budget is None else table_budget
        scr = SC.budget_screen(table, S.regularize({n: proxy[n] for n in p.names}), tb, margin=cfg.screen_margin,
                               max_direct=cfg.max_direct, sample=cfg.screen_sample, seed=cfg.self_seed, method=cfg.solver)
        sample = scr.sample
        keep = scr.wanted()
        want = {n: [l for l in labels[n] if l in keep[n]] for n in p.names}
    two_pass = screening and 0 < cfg.coarse_batch < cfg.calib_batch and cfg.sensitivity in ("direct", "both")
    fine: dict[str, list[str]] | None = None
    base: float | None
    if two_pass:
        assert proxy is not None and table is not None
        base, direct, fine = _two_pass(p, cfg, model, batch, want, proxy, table, tb, hit, save, values)
    elif cfg.sensitivity in ("direct", "both"):
        base, direct = _measure_cached(p, cfg, model, batch, want, hit, save, values, "direct", "base_loss")
    else:
        direct, base = hit.get("direct", {}), hit.get("base_loss")
        if base is None:
            base = S.batch_loss(model, batch, device=cfg.device)
            save({"base_loss": base})
    out["base_loss"] = base
    if cfg.sensitivity in ("direct", "both") and complete(direct.get(cfg.objective), want):
        measured = {n: {l: direct[cfg.objective][n][l] for l in want[n]} for n in p.names}
        if screening:
            assert proxy is not None and table is not None
            out["direct"] = SC.fill(measured, {n: proxy[n] for n in p.names}, table)
            out["measured"] = want  # tensor -> labels measured directly (the rest are filled)
            if fine is not None:
                out["fine"] = fine  # tensor -> labels measured on every sequence (the rest of `measured`: the coarse rows)
            total = sum(len(v) for v in labels.values())
            got = sum(len(v) for v in want.values())
            out["screen"] = {
                "candidates": total, "measured": got, "filled": total - got, "sampled": len(sample), "margin": cfg.screen_margin,
                "max_direct": cfg.max_direct, "eligible": scr.eligible, "capped": scr.capped, "table_budget": tb,
                "mu": list(scr.mu), "proxy_choice": scr.chosen,
                "sample_agreement": SC.agreement(measured, proxy, sample) if sample else None,
                "sample_misses": SC.misses(scr, measured, proxy, table),  # sampled ones that should have been kept
                # two-pass: how many of the measured ones were measured on every sequence (the rest: coarse rows only)
                "coarse_batch": cfg.coarse_batch if fine is not None else None,
                "fine": got if fine is None else sum(len(v) for v in fine.values()),
                "fine_margin": cfg.fine_margin if fine is not None else None,
            }
        else:
            out["direct"] = measured
    if "direct" in out and "proxy" in out:
        meas = {n: {l: out["direct"][n][l] for l in want[n]} for n in p.names}
        out["agreement"] = S.compare(meas, out["proxy"])
    raw = out["proxy"] if cfg.sensitivity == "proxy" else out["direct"]
    out["deltas"] = S.regularize({n: {l: raw[n][l] for l in labels[n]} for n in p.names})
    return out


def split_rows(batch: CalibBatch, k: int) -> tuple[CalibBatch, CalibBatch]:
    """(k evenly spaced sequences of `batch`, the others): the coarse pass's rows and the rest."""
    B = batch.inputs.shape[0]
    rows = sorted({(i * B) // k for i in range(k)})
    other = [i for i in range(B) if i not in set(rows)]

    def sub(ix: list[int], tag: str) -> CalibBatch:
        return CalibBatch(batch.inputs[ix], batch.targets[ix], f"{batch.digest}:{tag}{','.join(map(str, ix))}")

    return sub(rows, "rows"), sub(other, "rows")


def combine(a: float, ta: int, b: float, tb: int) -> float:
    """The per-token mean over two disjoint token sets from each one's mean (KL and delta NLL are both means)."""
    return (a * ta + b * tb) / (ta + tb)


def _measure_cached(p: Problem, cfg: SearchConfig, model: torch.nn.Module, b: CalibBatch, wanted: dict[str, list[str]],
                    hit: dict[str, Any], save: Callable[[dict[str, Any]], None], values: Callable[[str, TensorSpec], Tensor],
                    key: str, base_key: str) -> tuple[float, dict[str, dict[str, dict[str, float]]]]:
    """(raw loss on `b`, {objective: tensor -> label -> value}) of the `wanted` candidates measured directly on `b`,
    resumable: hit[key] holds what was measured before (each tensor is saved as it finishes, so an interrupted
    search goes on where it stopped) and hit[base_key] the raw model's loss on `b`."""
    from golfpack.budget import sensitivity as S

    d = hit.get(key, {})
    if all(S.have_(d, n, l) for n, ls in wanted.items() for l in ls):
        base = hit.get(base_key)
        if base is None:
            base = S.batch_loss(model, b, device=cfg.device)
            save({base_key: base})
        return float(base), d
    state = {"d": d}

    def on_tensor(name: str, rows: dict[str, dict[str, float]]) -> None:
        for o, row in rows.items():
            state["d"].setdefault(o, {})[name] = row
        save({key: state["d"]})

    sub = {n: [s for s in p.candidates[n] if s.label() in set(wanted[n])] for n in p.names}
    base, d = S.measure_direct(model, p.state_dict, sub, b, device=cfg.device, progress=cfg.progress, done=d,
                               values=values, on_tensor=on_tensor, prefix_cache=cfg.prefix_cache)
    save({key: d, base_key: base})
    return base, d


def _two_pass(p: Problem, cfg: SearchConfig, model: torch.nn.Module, batch: CalibBatch, want: dict[str, list[str]],
              proxy: dict[str, dict[str, float]], table: dict[str, dict[str, int]], tb: int, hit: dict[str, Any],
              save: Callable[[dict[str, Any]], None], values: Callable[[str, TensorSpec], Tensor],
              ) -> tuple[float, dict[str, dict[str, dict[str, float]]], dict[str, list[str]]]:
    """Direct values of `want` in two passes (SearchConfig.coarse_batch): every one on the coarse rows; then the
    proxy solve is redone with those values (`budget_screen` at `fine_margin`) and only what it keeps is measured on
    the other rows too. Returns (base loss, {objective: tensor -> label -> value}, tensor -> fine labels); a fine
    value is the mean over every row, any other the coarse rows' mean. Both passes are cached apart."""
    from golfpack.budget import screen as SC
    from golfpack.budget import sensitivity as S

    cb, rb = split_rows(batch, cfg.coarse_batch)
    k = cfg.coarse_batch  # cached apart per k: other rows, other values
    cbase, coarse = _measure_cached(p, cfg, model, cb, want, hit, save, values, f"coarse{k}", f"coarse{k}_base")
    est = SC.fill({n: {l: coarse[cfg.objective][n][l] for l in want[n]} for n in p.names}, {n: proxy[n] for n in p.names}, table)
    again = SC.budget_screen(table, S.regularize(est), tb, margin=cfg.fine_margin, max_direct=None, sample=0.0,
                             seed=cfg.self_seed, method=cfg.solver).wanted()
    fine = {n: [l for l in want[n] if l in set(again[n])] for n in p.names}
    rbase, rest = _measure_cached(p, cfg, model, rb, fine, hit, save, values, f"rest{k}", f"rest{k}_base")
    tc, tr = cb.tokens, rb.tokens
    direct: dict[str, dict[str, dict[str, float]]] = {o: {} for o in S.OBJECTIVES}
    for o in S.OBJECTIVES:
        for n in p.names:
            direct[o][n] = {l: (combine(coarse[o][n][l], tc, rest[o][n][l], tr) if l in set(fine[n]) else coarse[o][n][l]) for l in want[n]}
    return combine(cbase, tc, rbase, tr), direct, fine


__all__ = ["combine", "sensitivity", "split_rows"]
