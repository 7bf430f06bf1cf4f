"""``rcdm evaluate --curve RUN...``: faithfulness against training images, several runs on one plot.

Reads the ``"event": "faithfulness"`` lines training writes to each run's ``log.jsonl``
(``train.val_store``, every ``train.eval_kimg``) and draws mean rank and MRR against kimg:
one colour per run, solid unguided, dashed guided, grey the chance level. Writes ``curve.png``
and ``curve.json`` (the plotted numbers) into ``out``, so recipes and encoders are compared by
their curves.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from rcdm.errors import InvalidInput, MissingInput
from rcdm.run.evaldir import CURVE_JSON, CURVE_PNG
from rcdm.run.rundir import RunDir
from rcdm.utils import atomic_write_json, now_iso

__all__ = ["curve", "read_curve"]

_MRR = re.compile(r"^eval_mrr(_g[0-9p]+)?$")


def read_curve(run: str | Path) -> dict:
    """``{"run", "chance_mrr", "chance_mean_rank", "series": {label: {"kimg", "mrr", "mean_rank"}}}``
    of one run folder; labels are "unguided" and "guidance G"."""
    log = RunDir(run).log
    if not log.exists():
        raise MissingInput(f"{run} has no {log.name}: pass a run folder of rcdm train")
    series: dict[str, dict[str, list[float]]] = {}
    chance: dict[str, float] = {}
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
        if rec.get("event") != "faithfulness":
            continue
        for key, mrr in rec.items():
            m = _MRR.match(key)
            if not m or mrr is None:
                continue
            suffix = m.group(1) or ""
            label = "unguided" if not suffix else "guidance " + suffix[2:].replace("p", ".")
            s = series.setdefault(label, {"kimg": [], "mrr": [], "mean_rank": []})
            s["kimg"].append(float(rec["kimg"]))
            s["mrr"].append(float(mrr))
            s["mean_rank"].append(float(rec[f"eval_mean_rank{suffix}"]))
        chance = {"chance_mrr": rec["eval_chance_mrr"], "chance_mean_rank": rec["eval_chance_mean_rank"]}
    if not series:
        raise InvalidInput(
            f"{log} holds no faithfulness check: train with train.val_store set (it is derived from "
            "data.val) and train.eval_conditions > 0"
        )
    return {"run": str(run), **chance, "series": series}


def curve(runs: list[str], out: str | Path) -> Path:
    """Plot every run's curve into ``<out>/curve.png`` and ``curve.json``; returns the PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise InvalidInput("--curve needs run folders: rcdm evaluate --curve runs/a runs/b --out eval/curve")
    data = [read_curve(r) for r in runs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax_r, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = _short_names(runs)
    for i, d in enumerate(data):
        c = colours[i % len(colours)]
        for label, s in d["series"].items():
            style = "-" if label == "unguided" else "--"
            kw = dict(color=c, linestyle=style, marker="o", markersize=3, label=f"{names[i]} ({label})")
            ax_r.plot(s["kimg"], s["mean_rank"], **kw)
            ax_m.plot(s["kimg"], s["mrr"], **kw)
    for ax, key, title in (
        (ax_r, "chance_mean_rank", "mean rank (lower is better)"),
        (ax_m, "chance_mrr", "MRR (higher is better)"),
    ):
        for v in sorted({d[key] for d in data}):
            ax.axhline(v, color="grey", linewidth=1, linestyle=":")
        ax.set_xlabel("kimg (training images, thousands)")
        ax.set_title(title + "; dotted: chance")
        ax.grid(alpha=0.3)
    ax_r.set_yscale("log")
    ax_m.set_ylim(0, 1)
    ax_m.legend(fontsize=7, loc="best")
    fig.tight_layout()
    png = out / CURVE_PNG
    fig.savefig(png, dpi=110)
    plt.close(fig)
    atomic_write_json(out / CURVE_JSON, {"runs": data, "created": now_iso()})
    return png


def _short_names(runs: list[str]) -> list[str]:
    """The runs' folder names, or their paths when two share a name."""
    names = [Path(r).name or str(r) for r in runs]
    return names if len(set(names)) == len(names) else [str(r) for r in runs]
