"""What every command line shares: user errors as one `Error:` line, `python -m` entry points, reports."""

from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator

import click

from golfpack.errors import GolfpackError, os_error_message


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
