"""Invariance as numbers: one score per (encoder, layer, augmentation) and one per (checkpoint,
augmentation), and their plot.

(a) representation movement: ``||h(T x) - h(x)|| / d_NN(h(x))``, the distance an augmentation
    moves h relative to the distance from h(x) to its nearest training neighbour (what "far" means
    in that space: above 1, the augmented image is further from the original than the nearest
    other image is).
(b) sample movement: the mean distance, in a second encoder's space, between RCDM samples from
    h(T x) and from h(x) drawn with the same noise seeds, relative to the diversity of the samples
    at a fixed h (the mean pairwise distance of the samples from h(x)). Near 0: the samples do not
    change; about 1 or more: the augmentation changes them as much as the noise does, or more.

An exactly invariant representation scores 0 on both (h does not move, so same-seed samples are
identical).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["StoreReference", "h_score", "nn_distance", "plot_scores", "sample_score"]


@dataclass(frozen=True)
class StoreReference:
    """View 0 of a feature store as an :func:`nn_distance` reference, read a block at a time (a
    training store too large to hold: ImageNet's is 10 GB of float32, 20 GB as float64), each block
    in float64 and mapped by ``transform`` (e.g. the checkpoint's standardisation) when given."""

    store: Any
    transform: Callable[[np.ndarray], np.ndarray] | None = None

    def mapped(self, fn: Callable[[np.ndarray], np.ndarray]) -> StoreReference:
        """The same rows with ``fn`` applied after this reference's own transform."""
        inner = self.transform
        return StoreReference(self.store, fn if inner is None else (lambda x: fn(inner(x))))

    def blocks(self, rows: int):
        for _, block in self.store.iter_features(0, rows):
            x = block.astype(np.float64)
            yield x if self.transform is None else self.transform(x)


def nn_distance(h: np.ndarray, reference: np.ndarray | StoreReference, chunk: int = 1 << 15) -> float:
    """Euclidean distance from ``h (D,)`` to its nearest row of ``reference (N, D)``, rows equal
    to ``h`` excluded (h's own entry, if the reference holds it). Computed in float64, ``chunk``
    rows at a time (no (N, D) temporary: the reference may be a whole train store); pass a float64
    reference when calling this repeatedly, so its rows are not converted on every call. A
    :class:`StoreReference` is read from its store on every call, a block at a time."""
    h = np.asarray(h, np.float64)
    best = float("inf")
    if isinstance(reference, StoreReference):
        blocks = reference.blocks(chunk)  # each row's distance is its own: the blocks do not change the minimum
    else:
        blocks = (reference[start : start + chunk] for start in range(0, len(reference), chunk))
    for block in blocks:
        d = np.linalg.norm(np.asarray(block, np.float64) - h[None], axis=1)
        d = d[d > 0]
        if d.size:
            best = min(best, float(d.min()))
    return best if best < float("inf") else float("nan")


def h_score(h0: np.ndarray, h1: np.ndarray, nn0: float) -> dict:
    """Score (a) for one image and one augmentation. ``h0, h1 (D,)``: the original's and the
    augmented image's representation (in the space the distances are meant in); ``nn0``: the
    original's nearest-training-neighbour distance."""
    dh = float(np.linalg.norm(np.asarray(h1, np.float64) - np.asarray(h0, np.float64)))
    return {"distance": dh, "nn_distance": nn0, "score": dh / nn0 if nn0 > 0 else float("nan")}


def sample_score(s0: np.ndarray, s1: np.ndarray) -> dict:
    """Score (b) for one image and one augmentation. ``s0, s1 (S, D2)``: second-space features of
    the samples from h0 and h1, row j drawn with the same noise seed."""
    a, b = np.asarray(s0, np.float64), np.asarray(s1, np.float64)
    move = float(np.linalg.norm(b - a, axis=1).mean())
    if len(a) > 1:
        pd = np.linalg.norm(a[:, None] - a[None], axis=-1)[np.triu_indices(len(a), 1)]
        div = float(pd.mean())
    else:
        div = float("nan")
    return {
        "sample_movement": move,
        "sample_diversity": div,
        "sample_score": move / div if div > 0 else (0.0 if move == 0 else float("nan")),
    }


def plot_scores(transforms: list[str], series: dict[str, list[float]], title: str) -> np.ndarray:
    """A grouped bar chart: one group per augmentation, one bar per series (e.g. "trunk (a)",
    "samples (b)"), a dashed line at 1: ``(H, W, 3)`` uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(transforms) + 1.5), 3.2), dpi=100)
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(transforms))
    for k, (label, vals) in enumerate(series.items()):
        ax.bar(x + (k - (n - 1) / 2) * width, np.nan_to_num(np.asarray(vals, float)), width, label=label)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(x, transforms, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("movement / reference distance", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
