"""One exception type for mistakes the user can fix.

The CLI prints a GolfpackError as a single `Error: ...` line and exits non-zero; anything
else is a bug and keeps its traceback.
"""


class GolfpackError(Exception):
    """A user-facing error: the message says what was wrong and what to do."""
