"""How the analyses name a run: a short label for figure titles and table rows."""

from __future__ import annotations

from pathlib import Path

__all__ = ["GENERIC_RUN_NAMES", "checkpoint_label"]

GENERIC_RUN_NAMES = ("run", "runs", "model", "rcdm", "train", "checkpoints", "weights")


def checkpoint_label(path: str) -> str:
    """A short name for figure titles and table rows: the run folder's name for
    ``<run>/ema*.safetensors`` or a run directory, the file's stem otherwise; a generic folder
    name ("run", a ``step-N`` checkpoint) is prefixed by its parent's ("demo/run",
    "demo/run/checkpoints/step-64"), so the run is named, not "run" in every column."""
    p = Path(path)
    if p.is_file() and p.stem.split("-")[0] in ("ema", "model") and p.parent.name:
        p = p.parent
    elif p.is_file():
        return p.stem
    parts = [p.name or str(p)]
    while (parts[0] in GENERIC_RUN_NAMES or parts[0].startswith("step-")) and p.parent.name:
        p = p.parent
        parts.insert(0, p.name)
    return "/".join(parts)
