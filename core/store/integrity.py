"""Is a shard what its manifest records? The sha256 check every reader of a store makes.

A finished store's manifest records each shard's sha256. Readers (:class:`~rcdm.store.FeatureStore`)
check a shard the first time their process opens it, with one streamed hash, and never on row
access; shards a process never touches are never hashed. :func:`check_shard` remembers the files
it has checked, keyed by path, size, mtime and inode, so the other readers of the same store in
that process (training opens it in its loop, its data set and its grids) do not hash it again.

The memory is per process. A DataLoader worker started by fork inherits it; one started by spawn
(or a worker of another node) hashes each shard it touches once more. That is accepted: a worker
reads for hours, and a 1024-row shard hashes in milliseconds.

``rcdm store verify`` and ``rcdm extract``'s check of a store it would call finished use
:func:`shard_problem` too, so all of them name the same shard in the same words.
"""

from __future__ import annotations

import os
from pathlib import Path

from rcdm.errors import InvalidInput, MissingInput
from rcdm.utils import sha256_file

__all__ = ["REPAIR", "bad_shards", "check_shard", "shard_problem", "unreadable"]

REPAIR = (
    "re-encode the bad shards with the same `rcdm extract` command plus --repair (it keeps every "
    "other shard), or delete them and re-run that command"
)
# (real path, size, mtime_ns, inode, expected sha256) of the shard files checked in this process
_CHECKED: set[tuple] = set()


def shard_problem(path: Path, expected_sha256: str) -> str | None:
    """What is wrong with the shard file ``path`` (missing, or another sha256), or None."""
    path = Path(path)
    if not path.is_file():
        return "is missing"
    digest = sha256_file(path)  # streamed, 1 MiB at a time
    if digest != expected_sha256:
        return f"has sha256 {digest[:16]}..., not the {expected_sha256[:16]}... its manifest records"
    return None


def bad_shards(store_dir: Path, shards: list[dict]) -> dict[str, str]:
    """``{file: problem}`` for the shards (manifest or record entries) that are not as recorded."""
    found = {}
    for s in shards:
        problem = shard_problem(Path(store_dir) / s["file"], s["sha256"])
        if problem:
            found[s["file"]] = problem
    return found


def check_shard(path: Path, expected_sha256: str) -> None:
    """Raise naming ``path`` and the fix unless it is the file its manifest records.

    Hashes a given file once per process (see the module docstring)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise MissingInput(f"shard {path} is missing; {REPAIR}") from None
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino, expected_sha256)
    if key in _CHECKED:
        return
    problem = shard_problem(path, expected_sha256)
    if problem == "is missing":  # removed since the stat
        raise MissingInput(f"shard {path} is missing; {REPAIR}")
    if problem:
        raise InvalidInput(f"shard {path} {problem}: it is damaged; {REPAIR}")
    _CHECKED.add(key)


def unreadable(path: Path, error: BaseException) -> InvalidInput:
    """The error for a shard that h5py / tarfile / numpy cannot read (its sha256 was not enough)."""
    reason = " ".join(str(error).split()) or type(error).__name__
    return InvalidInput(f"shard {path} cannot be read ({type(error).__name__}: {reason}): it is damaged; {REPAIR}")
