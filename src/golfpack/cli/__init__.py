"""`golfpack` command line: thin layers over the public API (argument parsing, printing, exit codes).

Each subcommand is its own module here, imported lazily, so `golfpack --help` stays fast and one stage's
import cost is not paid by another."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from golfpack._version import __version__
from golfpack.cli._common import command_flags, emit, run_module, user_errors

# name -> "module:attribute" of a click command.
COMMANDS: dict[str, str] = {
    "demo": "golfpack.cli.demo:demo_cmd",
    "prepare": "golfpack.cli.prepare:prepare_cmd",
    "train": "golfpack.cli.train:train_cmd",
    "pack": "golfpack.cli.pack:pack_cmd",
    "search": "golfpack.cli.search:search_cmd",
    "verify": "golfpack.cli.pack:verify_cmd",
    "inspect": "golfpack.cli.pack:inspect_cmd",
    "export-decoder": "golfpack.cli.pack:export_decoder_cmd",
    "eval": "golfpack.cli.eval:eval_cmd",
}


def _load(name: str) -> click.Command | None:
    module, _, attr = COMMANDS[name].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:  # the command's own module is absent from this build
            return None
        raise
    return getattr(mod, attr, None)


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n in COMMANDS if _load(n) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return _load(name) if name in COMMANDS else None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta["golfpack.command"] = cmd  # so a UsageError can be told in this subcommand's flags
        return name, cmd, rest

    def invoke(self, ctx: click.Context) -> Any:
        with user_errors(lambda: command_flags(ctx.meta.get("golfpack.command"))):
            return super().invoke(ctx)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="golfpack")
def main() -> None:
    """Pack a trained small GPT into the best-scoring artifact under a byte cap."""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["COMMANDS", "emit", "main", "run_module", "user_errors"]
