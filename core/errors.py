"""The errors a user can act on.

Every mistake in the input (a bad config value, a missing file, a store that does not fit a run)
raises a :class:`UserError`: its message names the bad value and the fix, and the command line
prints it without a traceback. Anything else (out of memory, a bug in rcdm or torch) is not a
UserError and keeps its traceback.

The subclasses are also the built-in exception they stand for, so ``except ValueError`` and
``pytest.raises(FileNotFoundError)`` keep working.
"""

from __future__ import annotations

__all__ = ["UserError", "InvalidInput", "MissingInput", "OutputExists", "DiskFull", "first_line"]


class UserError(Exception):
    """A mistake in what the user asked for; the message says how to fix it."""


class InvalidInput(UserError, ValueError):
    """A value, file content or combination of settings that cannot be used."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named (or a stage needs) does not exist."""


class OutputExists(UserError, FileExistsError):
    """An output already holds something else; it is not overwritten without being asked."""


class DiskFull(UserError, OSError):
    """The disk (or the quota) filled up while writing an output; free space and re-run."""


def first_line(e: BaseException, limit: int = 200, *, typed: bool = False) -> str:
    """The gist of a library's error for a one-line message: its first sentence (torch and h5py
    run on for lines of advice), at most ``limit`` characters, ``Type: ...`` with ``typed``."""
    text = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text}" if typed else text
