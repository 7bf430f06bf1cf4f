"""The training recipe of a checkpoint in words, for the report's header: which of the paper's
settings the run changed (docs/recipes.md), so a reader knows what the samples come from."""

from __future__ import annotations

from pathlib import Path

import yaml
from rcdm.run.rundir import RunDir

__all__ = ["recipe_label"]


def recipe_label(checkpoint: str | Path | None) -> str | None:
    """One line from the run's ``config.yaml`` (a run directory, or a checkpoint inside one);
    None when the checkpoint has none (an official ``.pt``, a lone weights file)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    found = next(
        (p / RunDir.CONFIG for p in (path, path.parent, path.parent.parent) if (p / RunDir.CONFIG).is_file()), None
    )
    if found is None:
        return None
    t = yaml.safe_load(found.read_text()) or {}
    if "preset" not in t:  # not a training config
        return None
    changes = []
    if t.get("prediction", "eps") != "eps":
        changes.append(f"{t['prediction']}-prediction")
    if t.get("zero_terminal_snr"):
        changes.append("zero-terminal-SNR schedule")
    if t.get("min_snr_gamma"):
        changes.append(f"min-SNR-{t['min_snr_gamma']:g} weighting")
    if t.get("p2_gamma"):
        changes.append(f"P2 weighting (gamma {t['p2_gamma']:g})")
    cond = f"{'standardised ' if t.get('cond_norm') == 'standardize' else ''}h enters by {t.get('cond', 'embed')}"
    if t.get("cond_image"):
        cond += f" and a fitted {t['cond_image']}x{t['cond_image']} image of h as input channels"
    drop = f"; {t['cond_drop']:.0%} null condition" if t.get("cond_drop") else ""
    name = t.get("recipe", "paper")
    what = "the paper's" if not changes else ", ".join(changes)
    extra = " (rcdm additions, docs/recipes.md)" if changes or t.get("cond_image") or t.get("cond") == "both" else ""
    return f"recipe {name}: {what}; {cond}{drop}{extra}"
