"""`golfpack eval`: score a checkpoint or artifact on val shards (also `torchrun -m golfpack.evaluator`)."""

from __future__ import annotations

import sys

import click

from golfpack._progress import progress_option
from golfpack.cli._common import model_option
from golfpack.errors import UsageError
from golfpack.model import ACTIVATIONS


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("path", metavar="CKPT_OR_ARTIFACT", type=click.Path(dir_okay=False))
@click.option("--val", required=True, metavar="PATTERN", help="Val shard path or quoted glob (e.g. 'data/fineweb_val_*.bin').")
@click.option("--tokenizer", required=True, type=click.Path(dir_okay=False), metavar="SP.model",
              help="sentencepiece model for the byte accounting (must match the model's vocab).")
@click.option("--seq-len", type=int, default=1024, show_default=True, help="Window length L.")
@click.option("--stride", type=int, default=None,
              help="Sliding-window stride S (must divide L). Default: L, the challenge's non-overlapping eval.")
@click.option("--max-tokens", type=int, default=None, help="Use only the first N val tokens.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Windows per forward pass.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cpu: fp32. cuda: bf16 autocast, fp32 loss.")
@click.option("--num-heads", type=int, default=None, help="Head count for raw checkpoints (default: from q_gain).")
@click.option("--activation", type=click.Choice(ACTIVATIONS), default=None,
              help="MLP activation for raw checkpoints (shapes cannot tell; default relu2).")
@model_option()
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@progress_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def eval_cmd(path, val, tokenizer, seq_len, stride, max_tokens, batch_size, device, num_heads, activation, model,
             threads, progress, as_json):
    """Score CKPT_OR_ARTIFACT (raw .pt, legacy .ptz or .qg3) on the val tokens: val_loss and val_bpb.

    Under torchrun the windows are split over ranks and the sums all-reduced (gloo on CPU,
    nccl on CUDA); rank 0 prints the result.
    """
    from golfpack.cli._common import command_flags, user_errors

    with user_errors(command_flags(eval_cmd)):  # also when run outside the `golfpack` group (python -m golfpack.evaluator)
        _run(path, val, tokenizer, seq_len, stride, max_tokens, batch_size, device, num_heads, activation, threads,
             progress, as_json, model)


def _run(path, val, tokenizer, seq_len, stride, max_tokens, batch_size, device, num_heads, activation, threads,
         progress, as_json, model=None) -> None:
    import torch

    from golfpack.cli._common import emit
    from golfpack.evaluator import dist as dist_mod
    from golfpack.evaluator.api import evaluate_path
    from golfpack.evaluator.windows import check_stride

    check_stride(seq_len, stride)
    if threads is not None:
        if threads <= 0:
            raise UsageError(f"threads must be positive, got {threads}", param="threads")
        torch.set_num_threads(threads)
    ctx = dist_mod.init(device)
    try:
        r = evaluate_path(path, val=val, tokenizer=tokenizer, seq_len=seq_len, stride=stride, max_tokens=max_tokens,
                          device=ctx.device, num_heads=num_heads, activation=activation, batch_size=batch_size,
                          dist=ctx, progress=progress, model=model)
    finally:
        dist_mod.finish(ctx)
    if not ctx.is_main:
        return
    report = {"path": str(path), **r.to_dict()}
    lines = [
        f"val_loss: {r.val_loss:.6f}  val_bpb: {r.val_bpb:.6f}",
        f"tokens: {r.tokens:,}  bytes: {r.bytes:,}  ({r.mode}: seq_len {r.seq_len}, stride {r.stride}, {r.windows:,} windows"
        + (f" over {r.world_size} ranks" if r.world_size > 1 else "") + ")",
        f"seconds: {r.seconds:.2f}  tokens/s: {r.tokens_per_s:,.0f}  device: {r.device}",
    ]
    if r.model is not None:
        lines.append(model_line(r.model))
    emit(report, as_json, lines)


def model_line(info: dict) -> str:
    """One text line naming the config the score used and where each part came from."""
    if info.get("adapter"):
        return (f"model: {info['adapter']} (sha256 {info['model_sha256'][:12]}), vocab {info['vocab_size']} "
                "read from its logits; your model code")
    c = info["config"]
    act = c["activation"]
    if "activation" in info["overridden"]:
        act += " (--activation)"
    elif "activation" in info["assumed"]:
        act += " (assumed default: raw weights do not record it; see --activation)"
    where = {"artifact": "from the artifact header", "inferred": "inferred from weight shapes"}.get(info["source"], info["source"])
    if info["overridden"]:
        where += ", overridden by " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in info["overridden"].items())
    return (f"model: {c['num_layers']} layers, dim {c['model_dim']}, {c['num_heads']} heads / {c['num_kv_heads']} kv, "
            f"mlp {c['mlp_hidden']}, vocab {c['vocab_size']}, activation {act}; config {where}")


def main(argv: list[str] | None = None) -> int:
    """`python -m golfpack.evaluator` / torchrun entry: same options, one `Error:` line on user errors."""
    from golfpack.cli._common import run_module

    return run_module(eval_cmd, argv, "golfpack.evaluator")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
