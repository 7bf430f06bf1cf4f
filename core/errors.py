"""The errors a user can act on.

Every mistake in the input (a bad config value, a missing file, a store that does not fit a run)
raises a :class:`UserError`: its message names the bad value and the fix, and the command line
prints it without a traceback. Anything else (out of memory, a bug in rcdm or torch) is not a
UserError and keeps its traceback.

The subclasses are also the built-in exception they stand for, so ``except ValueError`` and
``pytest.raises(FileNotFoundError)`` keep working.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

__all__ = [
    "UserError",
    "InvalidInput",
    "MissingInput",
    "OutputExists",
    "DiskFull",
    "NotWritable",
    "disk_full_errno",
    "first_line",
    "write_error",
]


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


class NotWritable(UserError, PermissionError):
    """An output folder that cannot be written (read-only file system, no permission)."""


def write_error(error: OSError, path: str | Path) -> UserError | None:
    """The one-line user error for a failed write of ``path`` (a full disk, a read-only file system,
    no permission), or None when the error is something else (keep its traceback)."""
    if disk_full_errno(error, Path(path).parent if Path(path).parent.exists() else None):
        return DiskFull(
            f"no space left on the device writing {path}: free some space and re-run (the work done is kept)"
        )
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "it is on a read-only file system" if error.errno == errno.EROFS else "permission is denied"
        return NotWritable(f"cannot write {path}: {why}; choose an output folder you can write (--out) and re-run")
    return None


def first_line(e: BaseException, limit: int = 200, *, typed: bool = False) -> str:
    """The gist of a library's error for a one-line message: its first sentence (torch and h5py
    run on for lines of advice), at most ``limit`` characters, ``Type: ...`` with ``typed``."""
    text = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text}" if typed else text


def disk_full_errno(error: BaseException, folder: str | Path | None = None) -> int | None:
    """``errno.ENOSPC`` / ``EDQUOT`` if ``error`` is a write that found the disk (or the quota)
    full, else None. HDF5, torch and safetensors say so in their own words, which count too.
    With ``folder``, an error that names no cause (torch.save's "file write failed") counts as a
    full disk when under 64 MiB are left there."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return error.errno
    text = str(error)
    if any(w in text for w in ("No space left on device", "errno = 28,", "StorageFull", "os error 28")):
        return errno.ENOSPC
    if "Disk quota exceeded" in text or "os error 122" in text:
        return errno.EDQUOT
    if folder is not None and shutil.disk_usage(folder).free < 64 * 2**20:
        return errno.ENOSPC
    return None
