"""One progress bar for every long stage: tqdm on stderr, shown only on an interactive terminal.

Scripts, pipes, CI logs and `--json` consumers read stdout/stderr as text; a bar's carriage-return
frames would land there as garbage lines, so off a TTY the bar is silent (tqdm's ``disable=None``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str, unit: str,
        enabled: bool | None = None, unit_scale: bool = False) -> Any:
    """A tqdm bar (usable as an iterator or with `.update`).

    enabled: None draws only when stderr is a terminal (the CLI default), True always (`--progress`),
    False never (`--no-progress`).
    """
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=sys.stderr,
                leave=False, dynamic_ncols=True, disable=None if enabled is None else not enabled)


def progress_option(f: Any) -> Any:
    """The `--progress/--no-progress` flag every long-running command takes (default: auto)."""
    import click

    return click.option("--progress/--no-progress", default=None,
                        help="Progress bar on stderr (default: only when stderr is a terminal).")(f)
