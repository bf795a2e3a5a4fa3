"""golfpack's error types: one hierarchy for mistakes the user can fix.

Every user-facing failure is a `GolfpackError`; the CLI prints it as one `Error: ...` line and exits
non-zero (so is an OSError: `Error: <path>: <reason>`). Library messages name the Python parameter
(`batch_size`), and the CLI adds the flag it came from (`--batch-size`) via `UsageError.param`.
Anything else is a bug and keeps its traceback.

    GolfpackError
    +-- UsageError   an argument or config value out of range / of the wrong type
    +-- FormatError  a file that is not what it claims (path and byte offset when known)
    +-- BudgetError  an artifact (or the cheapest layout) that does not fit the byte cap
    +-- DataError    tokens, text, tokenizer or calibration data that cannot be used
"""

from __future__ import annotations

import os


class GolfpackError(Exception):
    """A user-facing error: the message says what was wrong and what to do."""


class UsageError(GolfpackError, ValueError):
    """A bad argument or config value. `param` names the library parameter, so a CLI can name its flag."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param  # the Python parameter name the message is about (None: not one parameter)


class FormatError(GolfpackError, ValueError):
    """A file (or in-memory blob) that fails validation. `path`/`offset` locate it when known."""

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, offset: int | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None  # the file, when the bytes came from one
        self.offset = offset  # byte offset of the offending field or block, when one is known
        where = ""
        if self.path is not None:
            where = f"{self.path}: "
        if offset is not None:
            where += f"at byte {offset}: "
        super().__init__(where + message)
        self.detail = message  # the message without the location prefix


class BudgetError(GolfpackError):
    """The byte cap cannot be met (the artifact, or even the cheapest layout, is over budget)."""


class DataError(GolfpackError):
    """Input data that cannot be used: token shards, text, tokenizer, calibration tokens."""


def os_error_message(e: OSError) -> str:
    """`<path>: <reason>` for a failed file operation, e.g. `out/x: Not a directory`."""
    reason = e.strerror or str(e) or type(e).__name__
    names = [os.fsdecode(f) if isinstance(f, (str, bytes, os.PathLike)) else str(f)
             for f in (e.filename, e.filename2) if f is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


__all__ = ["BudgetError", "DataError", "FormatError", "GolfpackError", "UsageError", "os_error_message"]
