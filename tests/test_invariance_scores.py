"""Invariance scores (a) and (b) on a synthetic encoder that is exactly invariant to horizontal
flips (it keeps only the mean of each image row) and not to vertical shifts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from rcdm.analysis.experiments.invariance_scores import (
    h_score,
    nn_distance,
    plot_scores,
    sample_score,
)
from rcdm.analysis.experiments.transforms import get_transform


def row_means(img: Image.Image) -> np.ndarray:
    """A flip-invariant 'encoder': the mean of each pixel row (flipping reorders within rows)."""
    return np.asarray(img.convert("L"), np.float64).mean(axis=1) / 255.0


def sampler(h: np.ndarray, seeds: list[int]) -> np.ndarray:
    """A stand-in RCDM: a fixed function of h plus noise that depends on the seed only."""
    w = np.random.default_rng(123).normal(size=(24, h.shape[0]))
    return np.stack([np.tanh(w @ h) + 0.3 * np.random.default_rng(s).normal(size=24) for s in seeds])


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(21)]


def test_flip_invariant_encoder_scores_zero_and_shift_does_not(images):
    img, others = images[0], images[1:]
    ref = np.stack([row_means(o) for o in others])
    h0 = row_means(img)
    nn0 = nn_distance(h0, ref)
    assert nn0 == pytest.approx(np.linalg.norm(ref - h0, axis=1).min())
    seeds = [0, 1, 2, 3]
    s0 = sampler(h0, seeds)
    scores = {}
    for t in ("hflip", "vshift"):
        h1 = row_means(get_transform(t)(img))
        scores[t] = {**h_score(h0, h1, nn0), **sample_score(s0, sampler(h1, seeds))}
    flip, shift = scores["hflip"], scores["vshift"]
    assert flip["distance"] == 0.0 and flip["score"] == 0.0
    assert flip["sample_movement"] == 0.0 and flip["sample_score"] == 0.0
    assert shift["score"] > 0.1 and shift["sample_score"] > 0.05
    # (b) is relative to the diversity of the samples at a fixed h: computed directly
    pd = [np.linalg.norm(s0[i] - s0[j]) for i in range(4) for j in range(i + 1, 4)]
    assert shift["sample_diversity"] == pytest.approx(np.mean(pd))
    s1 = sampler(row_means(get_transform("vshift")(img)), seeds)
    assert shift["sample_movement"] == pytest.approx(np.linalg.norm(s1 - s0, axis=1).mean())


def test_nn_distance_leaves_out_the_entry_itself():
    ref = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert nn_distance(ref[1], ref) == 5.0


def test_plot_is_an_image():
    arr = plot_scores(["hflip", "vshift"], {"trunk h (a)": [0.0, 1.5], "samples (b)": [0.0, float("nan")]}, "x")
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.std() > 0


def test_nn_distance_in_chunks_is_the_same_number():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(50, 7)).astype(np.float32)
    whole = nn_distance(ref[3], ref)
    assert nn_distance(ref[3], ref, chunk=4) == whole
    assert whole == np.sort(np.linalg.norm(ref.astype(np.float64) - ref[3].astype(np.float64), axis=1))[1]
