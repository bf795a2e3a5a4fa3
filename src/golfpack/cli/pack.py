"""`golfpack pack | verify | inspect | export-decoder`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from golfpack._progress import progress_option
from golfpack.cli._common import code_option, emit, model_option
from golfpack.errors import UsageError
from golfpack.model import ACTIVATIONS
from golfpack.packer.pack import BEST_FULL_MARGIN, DEFAULT_BUDGET, DEFAULT_CODEC

# Library parameters these commands spell differently from their option names.
PARAM_FLAGS = {"require_config": "--no-config"}


def _shown(text: Any) -> str:
    """A name from a file as it may reach a terminal: every non-printable character (control codes, so ANSI/OSC
    escapes; lone surrogates, which cannot even be encoded) written as a \\x/\\u escape. Legacy files have no name rules."""
    text = str(text)
    return "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else ascii(c)[1:-1] for c in text)


def _fmt_bytes(n: float) -> str:
    return f"{int(round(n)):,}"


def _budget_lines(rep: dict[str, Any]) -> list[str]:
    status = "fits" if rep["fits"] else "OVER BUDGET"
    return [
        f"model bytes {rep['model_bytes']:>12,}",
        f"code bytes  {rep['code_bytes']:>12,}" + (f"  ({', '.join(rep['code_files'])})" if rep["code_files"] else ""),
        f"total       {rep['total_bytes']:>12,}  of budget {rep['budget']:,}",
        f"headroom    {rep['headroom']:>12,}  {status}",
    ]


@click.command("pack")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option(
    "--policy", "policy_name", default="int6+tok8", show_default=True, help="Preset name or .toml/.json policy file."
)
@click.option("--codec", default=DEFAULT_CODEC, show_default=True,
              help="Stream codec (raw, zlib, lzma, rans, zstd, brotli), a set chosen from per stream (lzma+rans), or 'best' to try all.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None, help="Output artifact (.qg3).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="PATTERN=SPEC",
    help="Override, e.g. 'blocks.*.mlp.fc.weight=int5' (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Print the per-tensor plan and exact byte total; write nothing.")
@click.option("--budget", type=int, default=DEFAULT_BUDGET, show_default=True, help="Byte cap for model + code bytes.")
@code_option()
@click.option("--num-heads", type=int, default=None, help="Override the inferred head count.")
@click.option(
    "--activation", type=click.Choice(ACTIVATIONS), default=None, help="MLP activation (not inferable from shapes)."
)
@click.option("--no-config", is_flag=True, help="Pack tensors of a foreign schema without a model config.")
@click.option(
    "--calib",
    default=None,
    metavar="GLOB|pydoc",
    help="Calibration tokens for +gptq specs (train shards, never val); a search-written policy names its own.",
)
@click.option(
    "--tokenizer", default=None, type=click.Path(dir_okay=False), help="SentencePiece model (for --calib pydoc)."
)
@model_option()
@progress_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def pack_cmd(
    ckpt: str,
    policy_name: str,
    codec: str,
    out: str | None,
    overrides: tuple[str, ...],
    dry_run: bool,
    budget: int,
    code: tuple[str, ...],
    num_heads: int | None,
    activation: str | None,
    no_config: bool,
    calib: str | None,
    tokenizer: str | None,
    model: str | None,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Quantize CKPT (.pt, legacy .ptz or .qg3) with a policy and write a QGv3 artifact."""
    from golfpack.packer.pack import pack_file
    from golfpack.packer.policy import resolve_policy

    if budget <= 0:
        raise UsageError(f"budget must be positive, got {budget}", param="budget")
    policy = resolve_policy(policy_name, list(overrides))
    if not Path(ckpt).is_file():
        raise UsageError(f"{ckpt}: file not found")
    res = pack_file(
        ckpt,
        out,
        policy=policy,
        codec=codec,
        budget=budget,
        code=list(code),
        dry_run=dry_run,
        num_heads=num_heads,
        activation=activation,
        require_config=not no_config,
        overrides=list(overrides),
        calib=calib,
        tokenizer=tokenizer,
        progress=progress,
        model=model,
    )
    rep = res.report()
    rep.update(
        {
            "source": ckpt,
            "out": None if dry_run else out,
            "dry_run": dry_run,
            "config": None if res.config is None else res.config.to_dict(),
        }
    )
    lines = [f"policy {res.policy.name}  codec {res.codec}  ({len(res.records)} tensors, {rep['params']:,} params)"]
    if dry_run or not as_json:
        lines += _plan_table(rep["tensors"])
    if len(res.codec_sizes) > 1:
        lines.append(
            "codecs: " + ", ".join(f"{c} {n:,}" for c, n in sorted(res.codec_sizes.items(), key=lambda kv: kv[1]))
            + (f"; not encoded in full (sampled streams > {BEST_FULL_MARGIN:.0%} over the per-stream choice): "
               + ", ".join(f"{c} ~{n:,} stream bytes" for c, n in sorted(res.codec_estimates.items(), key=lambda kv: kv[1]))
               if res.codec_estimates else "")
        )
    lines += [f"warning: {w}" for w in res.warnings]
    lines += _budget_lines(rep)
    lines.append("dry run: nothing written" if dry_run else f"wrote {out}")
    emit(rep, as_json, lines)


def _plan_table(rows: list[dict[str, Any]]) -> list[str]:
    w = max([len(r["name"]) for r in rows] + [6])
    out = [f"{'tensor':<{w}}  {'shape':<12} {'dtype':<9} {'spec':<11} {'params':>10} {'payload B':>11}"]
    for r in rows:
        shape = "x".join(str(d) for d in r["shape"]) or "()"
        out.append(
            f"{r['name']:<{w}}  {shape:<12} {r['dtype']:<9} {r['spec']:<11} {r['params']:>10,} {_fmt_bytes(r['payload_bytes']):>11}"
        )
    return out


@click.command("verify")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option(
    "--against",
    type=click.Path(dir_okay=False),
    default=None,
    help="Raw checkpoint to compare tensors (and score) against.",
)
@click.option(
    "--eval", "do_eval", is_flag=True, help="Also score the fresh-loaded model (needs --val and --tokenizer)."
)
@click.option("--val", default=None, help="Val shard path or glob for --eval.")
@click.option("--tokenizer", default=None, help="SentencePiece model for --eval.")
@click.option("--seq-len", type=int, default=1024, show_default=True)
@click.option("--stride", type=int, default=None, help="Sliding-window stride (default: non-overlapping).")
@click.option("--max-tokens", type=int, default=None, help="Evaluate only the first N val tokens.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--num-heads", type=int, default=None)
@click.option("--activation", type=click.Choice(ACTIVATIONS), default=None)
@model_option("Your model code for --eval (imported in the fresh process; docs/models.md).")
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(
    artifact: str,
    against: str | None,
    do_eval: bool,
    val: str | None,
    tokenizer: str | None,
    seq_len: int,
    stride: int | None,
    max_tokens: int | None,
    device: str,
    num_heads: int | None,
    activation: str | None,
    model: str | None,
    as_json: bool,
) -> None:
    """Fresh-process load of ARTIFACT: checksums, exact tensors, errors vs a checkpoint, optional eval."""
    from golfpack.evaluator.verify import EvalOptions, verify_artifact

    ev = None
    if do_eval or val or tokenizer:
        if not (val and tokenizer):
            raise UsageError("--eval needs both --val PATTERN and --tokenizer SP.model")
        ev = EvalOptions(
            val=val, tokenizer=tokenizer, seq_len=seq_len, stride=stride, max_tokens=max_tokens, device=device
        )
    rep = verify_artifact(artifact, against=against, eval_options=ev, num_heads=num_heads, activation=activation,
                          model=model)
    lines = [
        f"{artifact}: {rep['kind']}, {rep['bytes']:,} bytes, {rep['tensors']} tensors, {rep['params']:,} params (fresh load {rep['load_seconds']}s)"
    ]
    if rep["kind"] == "qgv3":
        lines.append(
            f"checksums ok; digests {rep['digests_checked'] - len(rep['digest_mismatches'])}/{rep['digests_checked']} match the packer"
        )
    if against:
        lines.append(f"against {against}: max |error| {rep['max_abs_err']:.6g}")
        worst = sorted((r for r in rep["per_tensor"] if "max_abs_err" in r), key=lambda r: -r["max_abs_err"])[:5]
        for r in worst:
            lines.append(
                f"  {r['name']:<32} {r.get('spec', ''):<10} max {r['max_abs_err']:.6g}  rel-rms {r['rel_rms_err']:.4g}"
            )
    if "post" in rep:
        post = rep["post"]
        if "pre" in rep:
            pre = rep["pre"]
            lines.append(
                f"val_bpb  pre {pre['val_bpb']:.6f}  post {post['val_bpb']:.6f}  gap {rep['val_bpb_gap']:+.6f}  ({post['tokens']:,} tokens)"
            )
            lines.append(
                f"val_loss pre {pre['val_loss']:.6f}  post {post['val_loss']:.6f}  gap {rep['val_loss_gap']:+.6f}"
            )
        else:
            lines.append(f"val_bpb {post['val_bpb']:.6f}  val_loss {post['val_loss']:.6f}  ({post['tokens']:,} tokens)")
    for p in rep["problems"]:
        lines.append(f"PROBLEM: {p}")
    lines.append("OK" if rep["ok"] else "FAILED")
    emit(rep, as_json, lines)
    if not rep["ok"]:
        raise SystemExit(1)


@click.command("inspect")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option(
    "--plot", type=click.Path(dir_okay=False), default=None, help="Draw the byte breakdown to a PNG (needs matplotlib)."
)
@click.option("--json", "as_json", is_flag=True)
def inspect_cmd(artifact: str, plot: str | None, as_json: bool) -> None:
    """Per-tensor table of ARTIFACT: spec, params, bytes before/after compression, share; group totals."""
    from golfpack.packer.pack import describe_artifact, plot_breakdown

    rep = describe_artifact(artifact)
    lines = [
        f"{artifact}: {rep['kind']}, {rep['bytes']:,} bytes, {rep['params']:,} params"
        + (f", codec {rep['codec']}" if rep.get("codec") else "")
    ]
    rows = rep["tensors"]
    w = max([len(_shown(r["name"])) for r in rows] + [6])
    lines.append(f"{'tensor':<{w}}  {'spec':<11} {'params':>10} {'raw B':>11} {'stored B':>11} {'share':>7}")
    for r in rows:
        lines.append(
            f"{_shown(r['name']):<{w}}  {_shown(r['spec']):<11} {r['params']:>10,} {_fmt_bytes(r['raw_bytes']):>11} "
            f"{_fmt_bytes(r['stored_bytes']):>11} {100 * r['share']:>6.2f}%"
        )
    lines.append("groups:")
    for g in rep["groups"]:
        lines.append(
            f"  {_shown(g['group']):<{w - 2}}  {'':<11} {g['params']:>10,} {_fmt_bytes(g['raw_bytes']):>11} "
            f"{_fmt_bytes(g['stored_bytes']):>11} {100 * g['share']:>6.2f}%"
        )
    lq = [r for r in rows if "lqer_rank" in r]
    if lq:  # LQER corrections: their factor bytes are inside each tensor's row above
        lines.append("LQER corrections (factor levels + scales, included above):")
        for r in lq:
            lines.append(f"  {_shown(r['name']):<{w}}  rank {r['lqer_rank']:<3} raw B {_fmt_bytes(r['lqer_raw_bytes']):>9}  "
                         f"stored B {_fmt_bytes(r['lqer_stored_bytes']):>9}")
    ol = [r for r in rows if "outliers" in r]
    if ol:  # +out<k>: their (index delta, fp16) entries are inside each tensor's row above
        lines.append("outliers (index + fp16 value entries, included above):")
        for r in ol:
            lines.append(f"  {_shown(r['name']):<{w}}  {r['outliers']:>7,} raw B {_fmt_bytes(r['outlier_raw_bytes']):>9}  "
                         f"stored B {_fmt_bytes(r['outlier_stored_bytes']):>9}")
    if rep.get("overhead_bytes") is not None:
        lines.append(f"header/framing bytes {rep['overhead_bytes']:,}")
    if plot:
        plot_breakdown(rep, plot)
        rep["plot"] = plot
        lines.append(f"wrote {plot}")
    emit(rep, as_json, lines)


@click.command("export-decoder")
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False),
    default="qgv3_decoder.py",
    show_default=True,
    help="Where to write the standalone decoder.",
)
@click.option("--minify", is_flag=True, help="The same decoder in ~40% fewer bytes (needs python-minifier).")
@click.option("--json", "as_json", is_flag=True)
def export_decoder_cmd(out: str, minify: bool, as_json: bool) -> None:
    """Write the standalone QGv3 decoder (to ship with a submission) and report its size."""
    from golfpack.packer.decoder import export_decoder

    res = export_decoder(out, minify=minify)
    size = Path(out).stat().st_size if Path(out).is_file() else None
    rep: dict[str, Any] = {"out": out, "bytes": size}
    if isinstance(res, dict):
        rep.update({k: v for k, v in res.items() if k not in rep})
    emit(
        rep,
        as_json,
        [f"wrote {out}: {size:,} bytes (count them in --code when packing)" if size is not None else f"wrote {out}"],
    )
