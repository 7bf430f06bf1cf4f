"""Reading ``.pt`` / ``.pth`` files without pickle: one rule for every torch file rcdm reads
(encoder checkpoints, official RCDM / ADM UNets, the Inception weights for FID).

``torch.load(weights_only=True)`` reads tensors and plain containers only. A file holding other
Python objects is refused by it with a ``pickle.UnpicklingError``: that exception type (never its
wording, which changes between torch versions) marks a file that needs full pickle loading, which
can run code from the file. Such a file is an :class:`UntrustedCheckpoint` naming the objects and
the trust flag, unless the user passed it. A truncated or damaged file is an ``InvalidInput`` that
says so: when the file's pickles do not even parse (checked without running them), the
UnpicklingError means damage, not objects.
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rcdm.errors import InvalidInput, MissingInput, first_line

__all__ = ["TRUST_FLAG", "UntrustedCheckpoint", "load_weights_only", "needs_pickle"]

TRUST_FLAG = "--trust-checkpoint (trust_checkpoint=True)"


class UntrustedCheckpoint(InvalidInput):
    """The checkpoint needs full pickle loading, which can run code: refused unless trusted."""


def needs_pickle(path: str | Path, error: BaseException) -> list[str] | None:
    """Whether ``error``, raised by ``torch.load(path, weights_only=True)``, is the weights-only
    refusal: the Python objects the file holds (``[]`` where they cannot be listed), or None when
    the file is damaged instead (another exception, or a zip checkpoint whose pickle is unreadable).

    Call it where the refusal happened (inside the same ``safe_globals`` context), so allowed
    objects are not listed."""
    import torch

    if not isinstance(error, pickle.UnpicklingError):
        return None
    if not zipfile.is_zipfile(path):
        return [] if _legacy_file_parses(path) else None
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - the pickle does not parse: a damaged file
        return None


def _legacy_file_parses(path: str | Path) -> bool:
    """Whether ``path`` is a legacy (torch < 1.6, not zip) checkpoint whose pickles all parse:
    the magic number, the protocol version, the system info, then the saved object. Parsed with
    pickletools, which runs nothing; the objects are not listed."""
    import pickletools

    import torch

    try:
        with open(path, "rb") as f:
            first = list(pickletools.genops(f))
            if not any(arg == torch.serialization.MAGIC_NUMBER for _, arg, _ in first):
                return False
            for _ in range(3):
                for _ in pickletools.genops(f):
                    pass
    except Exception:  # noqa: BLE001 - truncated, or not a pickle at all
        return False
    return True


def _safe_globals(allowed: Sequence[Any]):
    """``torch.serialization.safe_globals(allowed)``, on the torch versions that have it."""
    import torch

    ser = torch.serialization
    if not allowed:
        return contextlib.nullcontext()
    if hasattr(ser, "safe_globals"):  # torch >= 2.5
        return ser.safe_globals(list(allowed))
    ser.add_safe_globals(list(allowed))  # torch 2.4: a process-wide allow-list
    return contextlib.nullcontext()


def load_weights_only(
    path: str | Path,
    *,
    trust_checkpoint: bool = False,
    safe_globals: Sequence[Any] = (),
    trust_hint: str = TRUST_FLAG,
    fix: str = "download it again or check the path",
) -> Any:
    """The object saved in ``path``, read on the CPU with ``torch.load(weights_only=True)``.

    ``safe_globals``: classes allowed besides tensors and containers (e.g. ``argparse.Namespace``).
    A file that needs pickle: :class:`UntrustedCheckpoint` naming ``trust_hint``, unless
    ``trust_checkpoint`` (then it is read once, with pickle). A missing file: ``MissingInput``; an
    empty, truncated or damaged one: ``InvalidInput`` ending with ``fix``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"checkpoint file {path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise InvalidInput(f"{path} is empty: the download or copy did not finish; {fix}")
    refused: list[str] | None = None
    try:
        if trust_checkpoint:
            return torch.load(path, map_location="cpu", weights_only=False)
        with _safe_globals(safe_globals):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                refused = needs_pickle(path, e)
                if refused is None:
                    raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever torch raises on a damaged file
        # (torch's words for a refusal would suggest weights_only=False: not what is wrong here)
        why = "its pickled data does not parse" if isinstance(e, pickle.UnpicklingError) else first_line(e, typed=True)
        raise InvalidInput(f"{path} is truncated or not a PyTorch checkpoint ({why}); {fix}") from e
    objects = f" ({', '.join(refused)})" if refused else ""
    raise UntrustedCheckpoint(
        f"{path} needs full pickle loading: it stores Python objects{objects}, not only tensors, and "
        f"unpickling them can run code from the file. If you trust where the file comes from, pass {trust_hint}"
    )
