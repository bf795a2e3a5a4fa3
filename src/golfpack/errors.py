"""One exception type for mistakes the user can fix.

The CLI prints a GolfpackError as a single `Error: ...` line and exits non-zero; so is an OSError
(a path that is missing, unreadable, or a file where a folder is needed): `Error: <path>: <reason>`.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class GolfpackError(Exception):
    """A user-facing error: the message says what was wrong and what to do."""


def os_error_message(e: OSError) -> str:
    """`<path>: <reason>` for a failed file operation, e.g. `out/x: Not a directory`."""
    reason = e.strerror or str(e) or type(e).__name__
    names = [os.fsdecode(f) if isinstance(f, (str, bytes, os.PathLike)) else str(f)
             for f in (e.filename, e.filename2) if f is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason
