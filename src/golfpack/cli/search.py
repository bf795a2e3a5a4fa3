"""`golfpack search`: find the per-tensor layout with the best predicted loss under a byte budget,
write it as a reusable policy file, pack the artifact, and report the frontier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from golfpack._progress import progress_option
from golfpack.cli._common import code_option, emit, model_option
from golfpack.errors import UsageError
from golfpack.model import ACTIVATIONS
from golfpack.packer.pack import DEFAULT_BUDGET


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--{what} must be a comma-separated list of integers, got {text!r}") from None
    if not vals or any(not 2 <= v <= 8 for v in vals):
        raise UsageError(f"--{what} values must be 2..8, got {text!r}")
    return vals


def make_scorer(
    val: str, tokenizer: str, *, seq_len: int, max_tokens: int | None, device: str, config: Any, problem: Any = None
) -> tuple[Any, Any]:
    """(scorer(state_dict) -> (val_loss, val_bpb), raw-eval function) over the official val tokens."""
    import numpy as np
    import torch

    from golfpack.evaluator.api import build_luts, evaluate
    from golfpack.formats.shards import load_tokens
    from golfpack.model import build_model

    tokens = load_tokens(val, max_tokens)
    luts = build_luts(tokenizer, config.vocab_size if problem is None else problem.vocab_size)
    tok_t = torch.from_numpy(np.asarray(tokens, dtype=np.int64))

    def score(sd: dict[str, Any]) -> tuple[float, float]:
        model = build_model(config, sd, device=device) if problem is None else problem.build(sd, device=device)
        r = evaluate(model, tok_t, luts, seq_len=seq_len, stride=None, batch_size=8, device=device)
        return float(r.val_loss), float(r.val_bpb)

    return score, tokens


@click.command("search")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option(
    "--budget", type=int, default=DEFAULT_BUDGET, show_default=True, help="Byte cap for artifact + code bytes."
)
@code_option()
@click.option(
    "--calib",
    default="self",
    show_default=True,
    help="Calibration tokens: 'self' (text sampled from the model itself; written to OUT.calib.bin), "
    "a TRAIN shard glob, or 'pydoc' (Python docs, needs --tokenizer). Never val.",
)
@click.option(
    "--tokenizer",
    type=click.Path(dir_okay=False),
    default=None,
    help="sentencepiece .model (for --calib pydoc and bpb).",
)
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None, help="Write the artifact here (.qg3).")
@click.option(
    "--policy-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Policy file to write (default: OUT with .policy.json).",
)
@click.option(
    "--codec",
    "codecs",
    default="lzma+rans",
    show_default=True,
    help="Artifact codec(s) to fit, comma-separated (lzma, rans, zstd, brotli; a set such as lzma+rans = per stream "
    "the smaller; best = per-stream choice of all), or 'all'.",
)
@click.option("--bits", default="8,7,6,5,4", show_default=True, help="Integer widths offered to every tensor.")
@click.option("--clips", default="quantile,mse", show_default=True, help="Clip rules offered for every width.")
@click.option(
    "--gptq/--no-gptq",
    default=True,
    show_default=True,
    help="Also offer every matrix spec with GPTQ rounding (Hessians from --calib).",
)
@click.option(
    "--gptq-calib",
    default=None,
    help="Tokens for the GPTQ Hessians when they should differ from --calib: 'pydoc' (real text, needs --tokenizer) "
    "or a TRAIN shard glob. Default: the --calib tokens.",
)
@click.option(
    "--gptq-batch",
    type=int,
    default=32,
    show_default=True,
    help="Calibration sequences (of --calib-seq tokens) for the GPTQ Hessians.",
)
@click.option(
    "--sensitivity",
    "sens_mode",
    type=click.Choice(["direct", "proxy", "both"]),
    default="both",
    show_default=True,
    help="Delta-loss estimate the solver uses (both: direct drives, the proxy's rank agreement with it is reported).",
)
@click.option(
    "--objective",
    type=click.Choice(["kl", "nll", "auto"]),
    default="kl",
    show_default=True,
    help="Damage measure: KL(raw || quantized) predictions, delta NLL on the calibration tokens, or auto: kl, then nll "
    "where kl's answer loses mostly first order on held-out real text (a model far from a minimum of it).",
)
@click.option(
    "--no-select",
    is_flag=True,
    help="Take the solver's layout as is (skip the joint comparison with greedy/proxy/preset layouts).",
)
@click.option("--calib-batch", type=int, default=16, show_default=True, help="Calibration sequences per forward.")
@click.option("--calib-seq", type=int, default=256, show_default=True, help="Tokens per calibration sequence.")
@click.option(
    "--target-headroom", type=int, default=2048, show_default=True, help="Fit until unused budget is below this."
)
@click.option(
    "--max-direct",
    type=int,
    default=None,
    help="Measure at most N candidates directly (those the proxy puts nearest the solution first); the rest come "
    "from the proxy. Faster on big models, at a quality cost (docs/search.md, Scale). Default: no cap.",
)
@click.option(
    "--coarse-batch",
    type=int,
    default=2,
    show_default=True,
    help="Screened search: measure every candidate within reach on this many of the --calib-batch sequences first, "
    "and on the rest only those the coarse values keep within --fine-margin (docs/search.md). 0: one pass.",
)
@click.option(
    "--fine-margin", type=float, default=1.1, show_default=True, help="The second pass's screen margin (over coarse values)."
)
@click.option("--solver", type=click.Choice(["dp", "greedy", "best"]), default="dp", show_default=True)
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep measurements here; a rerun with another budget reuses them.",
)
@click.option(
    "--val", default=None, help="Official val shard glob for the frontier's measured bpb and the final verify --eval."
)
@click.option("--eval-tokens", type=int, default=65_537, show_default=True, help="Val tokens scored per measurement.")
@click.option("--seq-len", type=int, default=1024, show_default=True, help="Evaluation context length.")
@click.option(
    "--frontier",
    "frontier_points",
    type=int,
    default=5,
    show_default=True,
    help="Budgets on the reported Pareto frontier (0: none).",
)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the frontier as a PNG.")
@click.option("--report", type=click.Path(dir_okay=False), default=None, help="Write the full JSON report here.")
@click.option("--no-verify", is_flag=True, help="Skip the final fresh-process `verify --eval`.")
@click.option("--num-heads", type=int, default=None, help="Override the inferred head count.")
@click.option(
    "--activation", type=click.Choice(ACTIVATIONS), default=None, help="MLP activation (not inferable from shapes)."
)
@model_option()
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@progress_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def search_cmd(
    ckpt: str,
    budget: int,
    code: tuple[str, ...],
    calib: str,
    tokenizer: str | None,
    out: str | None,
    policy_out: str | None,
    codecs: str,
    bits: str,
    clips: str,
    gptq: bool,
    gptq_batch: int,
    gptq_calib: str | None,
    sens_mode: str,
    objective: str,
    no_select: bool,
    calib_batch: int,
    calib_seq: int,
    target_headroom: int,
    max_direct: int | None,
    coarse_batch: int,
    fine_margin: float,
    solver: str,
    cache_dir: str | None,
    val: str | None,
    eval_tokens: int,
    seq_len: int,
    frontier_points: int,
    plot: str | None,
    report: str | None,
    no_verify: bool,
    num_heads: int | None,
    activation: str | None,
    model: str | None,
    device: str,
    threads: int | None,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Search per-tensor bit widths / clip rules / passthrough and the codec for the lowest loss under --budget."""
    import torch

    from golfpack.budget import InfeasibleBudget, SearchConfig, run_search

    if threads:
        torch.set_num_threads(threads)
    if budget <= 0:
        raise UsageError(f"--budget must be positive, got {budget}")
    if val and not tokenizer:
        raise UsageError("--val needs --tokenizer (the byte LUTs for bpb come from it)")
    if plot:  # fail now, not after a long search
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'golfpack[plot]' (or drop --plot)") from None
    from golfpack.formats.spec import CLIP_RULES

    clip_t = tuple(c.strip() for c in clips.split(",") if c.strip())
    if not clip_t or any(c not in CLIP_RULES for c in clip_t):
        raise UsageError(f"--clips must be a comma-separated list of {', '.join(CLIP_RULES)}, got {clips!r}")
    if gptq_batch < 1:
        raise UsageError(f"--gptq-batch must be at least 1, got {gptq_batch}")
    if policy_out is None and out is not None:
        policy_out = str(Path(out).with_suffix("")) + ".policy.json"
    # --calib self: the samples live next to the policy that names them, so a replay finds them
    stem = None if policy_out is None else str(Path(policy_out).with_suffix("")).removesuffix(".policy")
    cfg = SearchConfig(
        budget=budget,
        code=list(code),
        calib=calib,
        tokenizer=tokenizer,
        codecs=tuple(c.strip() for c in codecs.split(",") if c.strip()),
        bits=_int_list(bits, "bits"),
        clips=clip_t,
        gptq=gptq,
        gptq_batch=gptq_batch,
        gptq_calib=gptq_calib,
        calib_batch=calib_batch,
        calib_seq=calib_seq,
        sensitivity=sens_mode,
        objective=objective,
        select=not no_select,
        target_headroom=target_headroom,
        max_direct=max_direct,
        coarse_batch=coarse_batch,
        fine_margin=fine_margin,
        solver=solver,
        cache_dir=cache_dir,
        device=device,
        num_heads=num_heads,
        activation=activation,
        progress=progress,
        calib_out=None if stem is None else stem + ".calib.bin",
    )
    try:
        res = run_search(ckpt, cfg, model=model)
    except InfeasibleBudget as e:  # the library says what to raise by its parameter name; here it is a flag
        raise InfeasibleBudget(e.budget, e.floor, e.what, knob="--budget") from None
    rep = search_outputs(
        res,
        ckpt=ckpt,
        out=out,
        policy_out=policy_out,
        val=val,
        tokenizer=tokenizer,
        eval_tokens=eval_tokens,
        seq_len=seq_len,
        frontier_points=frontier_points,
        plot=plot,
        verify=not no_verify,
        device=device,
        progress=progress,
        model=model,
    )
    if report:
        from golfpack._io import write_bytes_atomic

        write_bytes_atomic(report, (json.dumps(rep, indent=2, default=str) + "\n").encode())
    emit(rep, as_json, human_lines(rep))


def search_outputs(
    res: Any,
    *,
    ckpt: str,
    out: str | None,
    policy_out: str | None,
    val: str | None,
    tokenizer: str | None,
    eval_tokens: int,
    seq_len: int,
    frontier_points: int,
    plot: str | None,
    verify: bool,
    device: str,
    progress: bool | None,
    model: str | None = None,
) -> dict[str, Any]:
    """Write policy + artifact, build the frontier, verify; returns the report dict."""
    from golfpack.budget import write_policy
    from golfpack.budget.report import frontier, frontier_table, plot_frontier

    rep = res.report()
    if policy_out is None and out is not None:
        policy_out = str(Path(out).with_suffix("")) + ".policy.json"
    if policy_out:
        if not out:  # with an artifact, res.save writes the policy beside it
            write_policy(policy_out, res.policy)
        rep["policy_file"] = policy_out
        pydoc_gptq = res.policy.uses_gptq and res.policy.calibration.source == "pydoc"
        rep["replay"] = (
            f"golfpack pack {ckpt} --policy {policy_out} --codec {res.codec} --budget {res.budget}"
            + "".join(f" --code {c}" for c in res.code_files)
            + (f" --activation {res.config.activation}" if res.config is not None and res.config.activation != "relu2" else "")
            + (f" --model {model}" if model else "")
            + (f" --tokenizer {tokenizer}" if pydoc_gptq else "")
        )
    if out:
        res.save(
            out, policy_path=policy_out
        )  # packed as `golfpack pack --policy` replays it (checked against the search's bytes)
        rep["out"] = out
    scorer = base = None
    bpb_per_nat = None
    if val and tokenizer:
        score, _ = make_scorer(
            val, tokenizer, seq_len=seq_len, max_tokens=eval_tokens, device=device, config=res.config,
            problem=res.problem if model else None,
        )
        scorer = score
        base = score(res.state_dict)
        rep["raw_val_loss"], rep["raw_val_bpb"] = base
        bpb_per_nat = base[1] / base[0] if base[0] else None
        rep["predicted_delta_bpb"] = None if bpb_per_nat is None else res.predicted_loss * bpb_per_nat
    if frontier_points > 0 or plot:
        rows = frontier(
            res, points=max(frontier_points, 2), scorer=scorer, base=base, bpb_per_nat=bpb_per_nat, progress=progress
        )
        rep["frontier"] = rows
        rep["frontier_table"] = frontier_table(rows)
        if plot:
            plot_frontier(rows, plot, budget=res.budget, title=f"search frontier: {Path(ckpt).name}")
            rep["plot"] = plot
    if out and verify:
        from golfpack.evaluator.verify import EvalOptions, verify_artifact

        ev = (
            EvalOptions(val=val, tokenizer=tokenizer, seq_len=seq_len, max_tokens=eval_tokens, device=device)
            if (val and tokenizer)
            else None
        )
        cfg = res.config
        v = verify_artifact(out, against=ckpt, eval_options=ev, num_heads=None if cfg is None else cfg.num_heads,
                            activation=None if cfg is None else cfg.activation, model=model)
        rep["verify"] = {
            k: v.get(k)
            for k in ("ok", "problems", "digests_checked", "post", "pre", "val_bpb_gap", "val_loss_gap", "bytes")
        }
    return rep


def human_lines(rep: dict[str, Any]) -> list[str]:
    lines = [
        f"chosen codec {rep['codec']}; layout: "
        + ", ".join(f"{k}={v}" for k, v in _layout_summary(rep["layout"]).items()),
        f"model bytes {rep['model_bytes']:>12,}",
        f"code bytes  {rep['code_bytes']:>12,}",
        f"total       {rep['total_bytes']:>12,}  of budget {rep['budget']:,}",
        f"headroom    {rep['headroom']:>12,}  (floor {rep['floor']:,})",
        f"predicted damage {rep['predicted_delta_loss']:.5f} nats/token ({rep['objective']}, sum over tensors, {rep['calib_tokens']:,} calibration tokens)"
        + (f" (~{rep['predicted_delta_bpb']:.5f} bpb)" if rep.get("predicted_delta_bpb") is not None else ""),
    ]
    if rep.get("chosen_from"):
        lines.append(
            f"chosen from {rep['chosen_from']} by joint {rep['objective']} {rep['joint_objective']:.5f} on held-out calibration; compared:"
        )
        for a in rep["alternatives"]:
            lines.append(
                f"  {a['source']:<34} {'' if a.get('bytes_exact', True) else '~'}{a['model_bytes']:>10,} B  "
                f"predicted {a['predicted_loss']:.5f}  joint {a['joint']:.5f}"
            )
    lines += [f"note: {n}" for n in rep.get("notes") or []]
    ag = rep.get("proxy_vs_direct")
    if ag:
        lines.append(f"proxy vs direct: Spearman {ag['spearman']:.3f} over {ag['pairs']} (tensor, spec) pairs")
    sc = rep.get("screen")
    if sc:
        lines.append(screen_line(sc))
    if rep.get("timings"):
        lines.append(phase_line(rep))
    if rep.get("frontier_table"):
        lines.append("Pareto frontier:")
        lines += ["  " + ln for ln in rep["frontier_table"]]
    if rep.get("policy_file"):
        lines.append(f"policy {rep['policy_file']}  (replay: {rep['replay']})")
    if rep.get("out"):
        lines.append(f"wrote {rep['out']}")
    v = rep.get("verify")
    if v:
        line = (
            f"verify: {'ok' if v['ok'] else 'FAILED ' + '; '.join(v['problems'] or [])}, {v['digests_checked']} digests"
        )
        if v.get("post"):
            line += f", fresh-load val_bpb {v['post']['val_bpb']:.5f}"
            if v.get("val_bpb_gap") is not None:
                line += f" (raw {v['pre']['val_bpb']:.5f}, gap {v['val_bpb_gap']:+.5f})"
        lines.append(line)
    if rep.get("plot"):
        lines.append(f"plot {rep['plot']}")
    return lines


def screen_line(sc: dict[str, Any]) -> str:
    """One line: how many candidates the screen measured directly and filled from the proxy, and the honesty sample."""
    cap = ("no cap" if sc.get("max_direct") is None
           else f"cap {sc['max_direct']:,}, {sc.get('capped', 0):,} within reach left out by the cap")
    line = (f"screen: {sc['measured']:,} of {sc['candidates']:,} candidates measured directly ({sc.get('sampled', 0)} sampled, "
            f"{cap}), {sc.get('filled', sc['candidates'] - sc['measured']):,} filled from the proxy")
    if sc.get("coarse_batch"):
        line += f"; {sc['fine']:,} of them on every sequence, the rest on {sc['coarse_batch']} (fine margin {sc['fine_margin']:g})"
    ag = sc.get("sample_agreement")
    if ag:
        line += f"; honesty sample: Spearman {ag['spearman']:.3f}, Kendall {ag.get('kendall', float('nan')):.3f} over {ag['pairs']}"
    return line


def phase_line(rep: dict[str, Any]) -> str:
    """One line: each phase's wall seconds and share of the whole, CPU seconds, and the peak RSS."""
    wall, cpu, rss = rep["timings"], rep.get("cpu_seconds") or {}, rep.get("peak_rss_mb") or {}
    total = sum(wall.values()) or 1e-9
    parts = [f"{ph} {w:.1f} s ({100 * w / total:.0f}%" + (f", CPU {cpu[ph]:.1f} s)" if ph in cpu else ")") for ph, w in wall.items()]
    peak = f"; peak RSS {max(rss.values()):,.0f} MiB" if rss else ""
    return f"phases ({total:.1f} s wall{' on ' + rep['device'] if rep.get('device') else ''}): " + ", ".join(parts) + peak


def _layout_summary(layout: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in layout.values():
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


__all__ = ["human_lines", "make_scorer", "phase_line", "screen_line", "search_cmd", "search_outputs"]
