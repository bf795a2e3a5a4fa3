"""What every command line shares: user errors as one `Error:` line, `python -m` entry points, reports."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import click

from golfpack.errors import GolfpackError, UsageError, os_error_message

# What a library parameter is called on a command line: a mapping, or a callable that builds one late
# (the group learns which subcommand runs only after parsing).
Flags = Mapping[str, str] | Callable[[], Mapping[str, str]] | None


def default_flag(param: str) -> str:
    """`batch_size` -> `--batch-size`: the flag a parameter has when no command says otherwise."""
    return "--" + param.replace("_", "-")


class _FlagTable(dict):
    """A flag table whose misses ask the command module's `param_flag` (e.g. train: `--set KEY=...`)."""

    def __init__(self, flags: dict[str, str], fallback: Callable[[str], str]) -> None:
        super().__init__(flags)
        self.fallback = fallback

    def __missing__(self, param: str) -> str:
        return self.fallback(param)


def command_flags(cmd: click.Command | None) -> dict[str, str]:
    """Parameter name -> flag for one click command: its options' long names (`overrides` -> `--set`),
    then the command module's `PARAM_FLAGS` (library parameters its options do not name one to one) and
    its `param_flag(param)` for every other parameter."""
    if cmd is None:
        return {}
    flags: dict[str, str] = {}
    for p in cmd.params:
        if isinstance(p, click.Option) and p.name:
            longs = [o for o in p.opts if o.startswith("--")]
            flags[p.name] = max(longs, key=len) if longs else p.opts[0]
    module = sys.modules.get(getattr(cmd.callback, "__module__", "") or "")
    flags.update(getattr(module, "PARAM_FLAGS", {}))
    fallback = getattr(module, "param_flag", None)
    return _FlagTable(flags, fallback) if fallback is not None else flags


def usage_text(e: UsageError, flags: Flags = None) -> str:
    """The library message, plus the flag its parameter came from: `batch_size must be ... (--batch-size)`."""
    if e.param is None:
        return str(e)
    table = flags() if callable(flags) else (flags or {})
    try:
        flag = table[e.param]
    except KeyError:
        flag = default_flag(e.param)
    return f"{e} ({flag})" if flag else str(e)  # "" in a table: the parameter has no flag on this command


@contextlib.contextmanager
def user_errors(flags: Flags = None) -> Iterator[None]:
    """User errors become one `Error:` line (click.ClickException), never a traceback. A UsageError about
    one parameter also names its flag: from `flags`, else `--` + the parameter with dashes."""
    try:
        yield
    except UsageError as e:
        raise click.ClickException(usage_text(e, flags)) from None
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
        with user_errors(command_flags(cmd)):
            cmd.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        return 1
    return 0


MODEL_HELP = "Your model code, for a model outside the baseline family (docs/models.md)."


def model_option(help: str = MODEL_HELP) -> Callable[[Any], Any]:
    """`--model FILE.py[:NAME][@CONFIG.json]`: the user's model code (golfpack.adapters), on every command that builds a model."""
    return click.option("--model", "model", default=None, metavar="FILE.py[:NAME]", help=help)


def code_option() -> Callable[[Any], Any]:
    """`--code PATH` (repeatable): submission code files counted in the byte budget."""
    return click.option("--code", "code", multiple=True, type=click.Path(dir_okay=False), metavar="PATH",
                        help="Submission code file counted in the budget (repeatable).")


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
