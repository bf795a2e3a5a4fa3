"""`golfpack` command line. Each subcommand lives beside the code it drives and is imported lazily,
so `golfpack --help` stays fast and one stage's import cost is not paid by another."""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from typing import Any, Iterator

import click

from golfpack import __version__
from golfpack.errors import GolfpackError, os_error_message

# name -> "module:attribute" of a click command.
COMMANDS: dict[str, str] = {
    "demo": "golfpack.demo:demo_cmd",
    "prepare": "golfpack.formats.cli:prepare_cmd",
    "train": "golfpack.trainer.cli:train_cmd",
    "pack": "golfpack.packer.cli:pack_cmd",
    "search": "golfpack.packer.search_cli:search_cmd",
    "verify": "golfpack.packer.cli:verify_cmd",
    "inspect": "golfpack.packer.cli:inspect_cmd",
    "export-decoder": "golfpack.packer.cli:export_decoder_cmd",
    "eval": "golfpack.evaluator.cli:eval_cmd",
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

    def invoke(self, ctx: click.Context) -> Any:
        with user_errors():
            return super().invoke(ctx)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """User errors become one `Error:` line (click.ClickException), never a traceback."""
    try:
        yield
    except GolfpackError as e:
        raise click.ClickException(str(e)) from None
    except BrokenPipeError:
        raise  # stdout closed by the reader (`| head`): click's own handling exits quietly
    except OSError as e:
        # A path the OS refused (missing, unreadable, a file used as a folder): `Error: <path>: <reason>`.
        raise click.ClickException(os_error_message(e)) from None


def run_module(cmd: click.Command, argv: list[str] | None, prog_name: str) -> int:
    """Entry point of `python -m golfpack.<stage>` (what torchrun launches): the command's own options,
    user errors as one `Error:` line on stderr, and an exit status instead of SystemExit."""
    try:
        with user_errors():
            cmd.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        return 1
    return 0


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="golfpack")
def main() -> None:
    """Pack a trained small GPT into the best-scoring artifact under a byte cap."""


def emit(report: dict[str, Any], as_json: bool, lines: list[str] | None = None) -> None:
    """Print a report: JSON (one object on stdout) for scripts, or human lines."""
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=False, default=_json_default))
    else:
        for line in lines if lines is not None else [f"{k}: {v}" for k, v in report.items()]:
            click.echo(line)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
