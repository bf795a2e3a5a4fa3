"""Phase 4, sensitivity: the damage of every (tensor, spec) alone, on the measurement half of the calibration
tokens (direct forwards, the Taylor proxy, or both), cached, then regularized into what the solver minimises.

The measuring itself lives in `search/sensitivity.py`; this module runs it on a `Problem`.
"""

from __future__ import annotations

from typing import Any

from golfpack._version import __version__
from golfpack.packer.calibration import calib_halves, make_batch
from golfpack.search.cache import Cache, cache_key
from golfpack.search.config import SearchConfig
from golfpack.search.problem import Problem


def sensitivity(p: Problem, cfg: SearchConfig, cache: Cache) -> dict[str, Any]:
    """{'base_loss', 'direct' (maybe), 'proxy' (maybe), 'deltas' (what the solver uses), 'agreement', ...}.

    Direct measurement yields both objectives from the same forwards (cached together); the proxy for
    `kl` is 0.5 * F_true * dw^2 (Fisher with labels sampled from the model), for `nll` the Taylor
    estimate g . dw + 0.5 * F_emp * dw^2.
    """
    from golfpack.search import sensitivity as S

    # sensitivity and objective are valid: SearchConfig checked them when it was built
    toks = calib_halves(cfg.calib, tokenizer=cfg.tokenizer)[0]  # the measurement half; the other is held out
    batch = make_batch(toks, cfg.calib_batch, cfg.calib_seq, vocab_size=p.vocab_size)
    labels = {n: [s.label() for s in v] for n, v in p.candidates.items()}
    key = cache_key("sens", p.sha, p.config_dict, batch.digest, cfg.proxy_batch, __version__, p.calibration.digest)
    hit = cache.get("sens", key) or {}
    model = p.build(device=cfg.device)
    out: dict[str, Any] = {"calib_digest": batch.digest, "calib_tokens": batch.tokens, "cache_key": key, "objective": cfg.objective}

    def save(partial: dict[str, Any]) -> None:
        hit.update(partial)
        cache.put("sens", key, {k: v for k, v in hit.items() if k != "cache_version"})

    def complete(table: dict[str, dict[str, float]] | None) -> bool:
        return table is not None and all(l in table.get(n, {}) for n, ls in labels.items() for l in ls)

    direct = hit.get("direct", {})
    base = hit.get("base_loss")
    if cfg.sensitivity in ("direct", "both") and not all(complete(direct.get(o)) for o in S.OBJECTIVES):
        state = {"direct": direct}

        def on_tensor(name: str, rows: dict[str, dict[str, float]]) -> None:
            for o, row in rows.items():
                state["direct"].setdefault(o, {})[name] = row
            save({"direct": state["direct"]})

        base, direct = S.measure_direct(
            model, p.state_dict, p.candidates, batch, device=cfg.device, progress=cfg.progress, done=direct,
            values=lambda n, s: p.record(n, s).dequantize(), on_tensor=on_tensor,
        )
        save({"base_loss": base, "direct": direct})
    pkey = f"proxy_{cfg.objective}"
    if cfg.sensitivity in ("proxy", "both") or pkey in hit:
        proxy = hit.get(pkey)
        if not complete(proxy):
            pb = make_batch(toks, cfg.proxy_batch, cfg.calib_seq, vocab_size=p.vocab_size)
            values = lambda n, s: p.record(n, s).dequantize()  # noqa: E731
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
    if base is None:
        base = S.batch_loss(model, batch, device=cfg.device)
        save({"base_loss": base})
    out["base_loss"] = base
    if complete(direct.get(cfg.objective)):
        out["direct"] = direct[cfg.objective]
    if "direct" in out and "proxy" in out:
        out["agreement"] = S.compare(out["direct"], out["proxy"])
    raw = out["proxy"] if cfg.sensitivity == "proxy" else out["direct"]
    out["deltas"] = S.regularize({n: {l: raw[n][l] for l in labels[n]} for n in p.names})
    return out


__all__ = ["sensitivity"]
