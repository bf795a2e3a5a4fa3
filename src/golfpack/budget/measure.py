"""Phase 4, sensitivity: the damage of every (tensor, spec) alone, on the measurement half of the calibration
tokens (direct forwards, the Taylor proxy, or both), cached, then regularized into what the solver minimises.

The measuring itself lives in `search/sensitivity.py`; this module runs it on a `Problem`.
"""

from __future__ import annotations

from typing import Any

from golfpack._version import __version__
from golfpack.budget.cache import Cache, cache_key
from golfpack.budget.config import SearchConfig
from golfpack.budget.problem import Problem
from golfpack.packer.calibration import calib_halves, make_batch


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
    direct = hit.get("direct", {})
    base = hit.get("base_loss")
    if cfg.sensitivity in ("direct", "both") and not all(complete(direct.get(o), want) for o in S.OBJECTIVES):
        state = {"direct": direct}

        def on_tensor(name: str, rows: dict[str, dict[str, float]]) -> None:
            for o, row in rows.items():
                state["direct"].setdefault(o, {})[name] = row
            save({"direct": state["direct"]})

        sub = {n: [s for s in p.candidates[n] if s.label() in set(want[n])] for n in p.names}
        base, direct = S.measure_direct(
            model, p.state_dict, sub, batch, device=cfg.device, progress=cfg.progress, done=direct,
            values=values, on_tensor=on_tensor, prefix_cache=cfg.prefix_cache,
        )
        save({"base_loss": base, "direct": direct})
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
            total = sum(len(v) for v in labels.values())
            got = sum(len(v) for v in want.values())
            out["screen"] = {
                "candidates": total, "measured": got, "filled": total - got, "sampled": len(sample), "margin": cfg.screen_margin,
                "max_direct": cfg.max_direct, "eligible": scr.eligible, "capped": scr.capped, "table_budget": tb,
                "mu": list(scr.mu), "proxy_choice": scr.chosen,
                "sample_agreement": SC.agreement(measured, proxy, sample) if sample else None,
                "sample_misses": SC.misses(scr, measured, proxy, table),  # sampled ones that should have been kept
            }
        else:
            out["direct"] = measured
    if "direct" in out and "proxy" in out:
        meas = {n: {l: out["direct"][n][l] for l in want[n]} for n in p.names}
        out["agreement"] = S.compare(meas, out["proxy"])
    raw = out["proxy"] if cfg.sensitivity == "proxy" else out["direct"]
    out["deltas"] = S.regularize({n: {l: raw[n][l] for l in labels[n]} for n in p.names})
    return out


__all__ = ["sensitivity"]
