"""`golfpack train`: train a baseline-family GPT and write final_model.pt + final_model.json.

Single process: `golfpack train --config tiny --train 'shards/train_*.bin' ...`.
Multi-process: `torchrun --nproc_per_node=N -m golfpack.trainer --config ...` (same options).
"""

from __future__ import annotations

import sys

import click

from golfpack._progress import progress_option

# Library parameters (TrainConfig fields) as this command spells them; every other field is a `--set`.
PARAM_FLAGS = {"tokenizer_path": "--tokenizer"}


def param_flag(param: str) -> str:
    return f"--set {param}=..."


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", default=None, metavar="PRESET|FILE",
              help="Preset name (baseline, mlp3x-seq2048, tiny) or a .toml/.json config file.")
@click.option("--train", "train_files", default=None, help="Glob of training shards (overrides train_files).")
@click.option("--val", "val_files", default=None, help="Glob of val shards, '' for none (overrides val_files).")
@click.option("--tokenizer", "tokenizer", default=None, help="SentencePiece model (overrides tokenizer_path).")
@click.option("-o", "--out-dir", "out_dir", default=None, help="Output folder (overrides out_dir).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any config field; repeatable.")
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
@click.option("--help-config", is_flag=True, help="List every config field with its default and meaning, then exit.")
@progress_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report at the end instead of a summary.")
def train_cmd(config, train_files, val_files, tokenizer, out_dir, overrides, print_config, help_config, progress, as_json):
    """Train with the challenge baseline's recipe (Muon + Adam, warmdown, optional QAT/EMA)."""
    from golfpack.cli._common import emit
    from golfpack.trainer.config import config_help, load_config

    if help_config:
        click.echo(config_help())
        return
    sets = list(overrides)
    for key, val in (("train_files", train_files), ("val_files", val_files), ("tokenizer_path", tokenizer), ("out_dir", out_dir)):
        if val is not None:
            sets.append(f"{key}={val}")
    cfg = load_config(config, overrides=sets)
    if print_config:
        emit(cfg.to_dict(), as_json)
        return
    from golfpack.trainer.loop import train

    # Log lines go to stdout; with --json they go to stderr so stdout is one JSON object.
    echo = (lambda s: click.echo(s, err=True)) if as_json else click.echo
    result = train(cfg, echo=echo, progress=progress)
    if result.checkpoint is None:  # not rank 0
        return
    report = result.to_dict()
    lines = [
        f"steps: {result.steps}  tokens: {result.tokens:,}  train_time: {result.train_time_ms / 1000:.1f}s",
        f"train_loss: {report['first_train_loss']:.4f} -> {report['last_train_loss']:.4f}" if result.train_losses else "train_loss: -",
    ]
    if result.final_val:
        lines.append(f"final val_loss: {result.final_val['val_loss']:.4f}  val_bpb: {result.final_val['val_bpb']:.4f}")
    lines += [f"checkpoint: {result.checkpoint}", f"metadata: {result.metadata}", f"log: {result.log_path}"]
    emit(report, as_json, lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m golfpack.trainer` (torchrun): same options, errors as one line."""
    from golfpack.cli._common import run_module

    return run_module(train_cmd, argv, "golfpack.trainer")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
