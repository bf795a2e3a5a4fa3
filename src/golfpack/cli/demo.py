"""`golfpack demo`: the whole job on built-in material, no downloads.

text -> tokenizer + shards -> train the `tiny` preset -> pack (int6+tok8, lzma) -> fresh-process verify
with a held-out evaluation, raw vs packed val_bpb. Every stage uses the same code as the real
commands; at the end the equivalent CLI lines are printed so the user can replay any stage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from golfpack._progress import progress_option
from golfpack.errors import DataError, UsageError
from golfpack.packer.pack import DEFAULT_CODEC


def run_demo(out_dir: str | Path, *, steps: int | None = None, policy_name: str = "int6+tok8", codec: str = DEFAULT_CODEC,
             echo: Any = click.echo, progress: bool | None = None) -> dict[str, Any]:
    """Run every stage under out_dir and return the report (what `--json` prints)."""
    from golfpack.demo_data import make_demo_data
    from golfpack.evaluator.verify import EvalOptions, verify_artifact
    from golfpack.packer.pack import pack_file
    from golfpack.packer.policy import resolve_policy
    from golfpack.trainer.config import load_config
    from golfpack.trainer.loop import train

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder", param="out_dir")
    policy = resolve_policy(policy_name, [])  # bad names fail before any work
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    data = make_demo_data(out / "data")
    echo(f"[1/4] data: {data.train_tokens:,} train / {data.val_tokens:,} held-out tokens "
         f"(Python's own docs, disjoint documents), tokenizer {data.tokenizer.name} ({time.perf_counter() - t0:.1f}s)")

    sets = [f"train_files={data.train_pattern}", f"val_files={data.val_pattern}",
            f"tokenizer_path={data.tokenizer}", f"out_dir={out / 'run'}", "train_log_every=0"]
    if steps is not None:
        sets += [f"iterations={steps}", f"warmdown_iters={max(1, min(50, steps // 3))}"]
    cfg = load_config("tiny", overrides=sets)
    tr = train(cfg, echo=None, progress=progress)
    assert tr.checkpoint is not None and tr.final_val is not None
    ckpt = tr.checkpoint
    echo(f"[2/4] train: preset tiny, {tr.steps} steps, {tr.tokens:,} tokens in {tr.train_time_ms / 1000:.1f}s; "
         f"train loss {tr.train_losses[0][1]:.3f} -> {tr.train_losses[-1][1]:.3f}; {ckpt} ({ckpt.stat().st_size:,} bytes)")

    artifact = out / "model.qg3"
    t0 = time.perf_counter()
    res = pack_file(ckpt, artifact, policy=policy, codec=codec, progress=progress)
    echo(f"[3/4] pack: policy {res.policy.name}, codec {res.codec}: {res.model_bytes:,} bytes "
         f"({ckpt.stat().st_size / res.model_bytes:.1f}x smaller than the fp32 checkpoint), "
         f"headroom {res.headroom:,} of {res.budget:,} ({time.perf_counter() - t0:.1f}s)")

    t0 = time.perf_counter()
    ev = EvalOptions(val=data.val_pattern, tokenizer=str(data.tokenizer), seq_len=cfg.train_seq_len)
    ver = verify_artifact(artifact, against=ckpt, eval_options=ev)
    pre, post = ver["pre"], ver["post"]
    echo(f"[4/4] verify (fresh process): checksums ok, {ver['digests_checked'] - len(ver['digest_mismatches'])}/"
         f"{ver['digests_checked']} tensors exactly as packed; held-out val_bpb raw {pre['val_bpb']:.4f} -> "
         f"packed {post['val_bpb']:.4f} (gap {ver['val_bpb_gap']:+.4f}) over {post['tokens']:,} tokens "
         f"({time.perf_counter() - t0:.1f}s)")
    if not ver["ok"]:
        raise DataError("verify found problems: " + "; ".join(ver["problems"]))

    replay = [
        f"golfpack train --config tiny --train '{data.train_pattern}' --val '{data.val_pattern}' --tokenizer {data.tokenizer} -o {out / 'run'}",
        f"golfpack pack {ckpt} --policy {res.policy.name} --codec {res.codec} -o {artifact}",
        f"golfpack inspect {artifact}",
        f"golfpack verify {artifact} --against {ckpt} --eval --val '{data.val_pattern}' --tokenizer {data.tokenizer} --seq-len {cfg.train_seq_len}",
        f"golfpack search {ckpt} --budget {int(res.model_bytes * 0.9)} --calib '{data.train_pattern}' --tokenizer {data.tokenizer} -o {out / 'best.qg3'}",
    ]
    echo(f"done in {time.perf_counter() - t_all:.0f}s. Replay or vary any stage:")
    for line in replay:
        echo("  " + line)
    return {
        "out_dir": str(out),
        "data": {"tokenizer": str(data.tokenizer), "train": data.train_pattern, "val": data.val_pattern,
                 "train_tokens": data.train_tokens, "val_tokens": data.val_tokens},
        "train": tr.to_dict(),
        "pack": {**res.report(), "out": str(artifact), "checkpoint_bytes": ckpt.stat().st_size},
        "verify": {k: ver[k] for k in ("ok", "digests_checked", "digest_mismatches", "max_abs_err", "pre", "post", "val_bpb_gap", "val_loss_gap")},
        "seconds": round(time.perf_counter() - t_all, 1),
        "replay": replay,
    }


@click.command("demo")
@click.option("-o", "--out", "out_dir", default="golfpack-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's data, checkpoint and artifact.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps (default: the tiny preset's 150).")
@click.option("--policy", "policy_name", default="int6+tok8", show_default=True, help="Packing policy (preset or file).")
@click.option("--codec", default=DEFAULT_CODEC, show_default=True, help="Stream codec, a set such as lzma+rans, or 'best'.")
@progress_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report instead of the stage lines.")
def demo_cmd(out_dir: str, steps: int | None, policy_name: str, codec: str, progress: bool | None, as_json: bool) -> None:
    """Train a tiny GPT on built-in text, pack it, and verify + score the artifact in a fresh process."""
    from golfpack.cli._common import emit

    rep = run_demo(out_dir, steps=steps, policy_name=policy_name, codec=codec,
                   echo=(lambda s: None) if as_json else click.echo, progress=progress)
    if as_json:
        emit(rep, True)
