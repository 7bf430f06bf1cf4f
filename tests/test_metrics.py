"""Pure metrics: FID from statistics, IS on known logits, rank / MRR on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rcdm.analysis.evaluation.metrics import (
    chance_mrr,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    inception_score,
    inception_score_from_probs,
    nearest_neighbour_ranks,
    rank_summary,
)
from rcdm.faithfulness import prepare_reference
from scipy import linalg


# ------------------------------------------------------------------------------------- FID
def _direct_fid(x: np.ndarray, y: np.ndarray) -> float:
    """FID written out from the definition with scipy, independent of feature_statistics."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1 = (x - mu1).T @ (x - mu1) / (len(x) - 1)
    s2 = (y - mu2).T @ (y - mu2) / (len(y) - 1)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_fid_from_statistics_matches_direct_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu1, s1 = feature_statistics(x)
    mu2, s2 = feature_statistics(y)
    fid = frechet_distance(mu1, s1, mu2, s2)
    assert fid == pytest.approx(_direct_fid(x, y), rel=1e-8)
    assert fid > 1.0


def test_fid_closed_form_for_diagonal_gaussians():
    # Diagonal covariances commute: Tr(s1 + s2 - 2 sqrt(s1 s2)) = sum (sqrt a - sqrt b)^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    fid = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert fid == pytest.approx(5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), abs=1e-9)


def test_fid_of_a_set_against_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(100, 8))
    mu, s = feature_statistics(x)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-6)


def test_fid_matches_torch_fidelity_statistics_to_metric():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(64, 5)), rng.normal(size=(64, 5)) * 2
    (mu1, s1), (mu2, s2) = feature_statistics(x), feature_statistics(y)
    ref = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref["frechet_inception_distance"], rel=1e-6)


def test_fid_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# -------------------------------------------------------------------------------------- IS
def test_is_uniform_logits_is_one():
    mean, std = inception_score(np.zeros((50, 1008)), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_is_one_hot_distinct_classes_is_number_of_classes():
    # 10 splits without shuffling, each split holds the 7 classes once: IS = 7 per split.
    k = 7
    probs = np.tile(np.eye(k), (10, 1))  # (70, 7)
    mean, std = inception_score_from_probs(probs, splits=10, shuffle=False)
    assert mean == pytest.approx(k, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)
    # One split over 5 distinct classes among 1008.
    probs = np.zeros((5, 1008))
    probs[np.arange(5), [3, 17, 99, 500, 1000]] = 1.0
    assert inception_score_from_probs(probs, splits=1)[0] == pytest.approx(5.0)


def test_is_matches_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = np.random.default_rng(3).normal(size=(103, 20)) * 3
    ref = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-10)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-8)


def test_is_needs_enough_samples():
    with pytest.raises(ValueError, match="at least 10 samples"):
        inception_score(np.zeros((5, 10)), splits=10)


# -------------------------------------------------------------------------------- rank / MRR
REF = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [1.0, 0.0]], dtype=np.float32)  # row 4 duplicates row 1


def test_rank_hand_made_cases():
    queries = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32)
    cond = np.array([0, 0, 3, 3])
    ranks = nearest_neighbour_ranks(queries, REF, cond)
    # q0 sits on its condition -> 1. q1: d_c = 2, closer: row 2 (0), rows 1/4 (1) -> 4.
    # q2: d_c = 1, nothing strictly closer (row 0 ties at 2? no: d = 2) -> 1.
    # q3 = (1, 1): d_c^2 = 1 + 4 = 5; closer: row 0 (2), rows 1 and 4 (1), row 2 (2) -> 5.
    np.testing.assert_array_equal(ranks, [1, 4, 1, 5])


def test_rank_ties_count_in_the_conditions_favour():
    # q = (1, 0) conditioned on row 1: its duplicate row 4 ties (d = 0) and is not counted.
    # Conditioned on row 0: rows 1 and 4 at 0 and row 2 at 1 are at d <= 1 = d_c; the strict
    # rule counts rows 1 and 4 (d = 0 < 1) but not row 2 (d = 1, a tie).
    q = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    ranks = nearest_neighbour_ranks(q, REF, np.array([1, 0]))
    np.testing.assert_array_equal(ranks, [1, 3])


def test_rank_conditions_outside_the_reference_set():
    q = np.array([[5.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    h = np.array([[4.0, 0.0], [10.0, 10.0]], dtype=np.float32)  # OOD conditions
    ranks = nearest_neighbour_ranks(q, REF, np.array([-1, -1]), h)
    # q0: d_c = 1, nothing closer -> 1. q1: d_c^2 = 100 + 49; all 5 reference rows closer -> 6.
    np.testing.assert_array_equal(ranks, [1, 6])


def test_rank_chunking_and_random_data_match_brute_force():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(300, 16)).astype(np.float32)
    q = rng.normal(size=(57, 16)).astype(np.float32)
    cond = rng.integers(-1, 300, size=57)
    vec = rng.normal(size=(57, 16)).astype(np.float32)
    small = nearest_neighbour_ranks(q, ref, cond, vec, max_chunk_bytes=4 * 300 * 5)  # 5 rows
    big = nearest_neighbour_ranks(q, ref, cond, vec)
    d = np.linalg.norm(q[:, None].astype(np.float64) - ref[None], axis=2)  # (57, 300)
    want = []
    for i, c in enumerate(cond):
        if c >= 0:
            dc = d[i, c]
            want.append(1 + int(np.sum(np.delete(d[i], c) < dc)))
        else:
            want.append(1 + int(np.sum(d[i] < np.linalg.norm(q[i] - vec[i]))))
    np.testing.assert_array_equal(small, want)
    np.testing.assert_array_equal(big, want)
    # a reference prepared once (the training check's) gives the same ranks, call after call
    prepared = prepare_reference(ref)
    assert len(prepared) == 300 and prepared.shape == (300, 16)
    for _ in range(2):
        np.testing.assert_array_equal(
            nearest_neighbour_ranks(q, prepared, cond, vec, max_chunk_bytes=4 * 300 * 5), want
        )


def test_rank_bad_inputs():
    q = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="cond_vectors"):
        nearest_neighbour_ranks(q, REF, np.array([-1, 0]))
    with pytest.raises(ValueError, match="must be"):
        nearest_neighbour_ranks(np.zeros((2, 3), np.float32), REF, np.array([0, 0]))
    with pytest.raises(ValueError, match=r"\[-1, 4\]"):
        nearest_neighbour_ranks(q, REF, np.array([0, 5]))
    with pytest.raises(ValueError, match="must be"):
        nearest_neighbour_ranks(np.zeros((2, 3), np.float32), prepare_reference(REF), np.array([0, 0]))


def test_rank_summary_and_chance_levels():
    s = rank_summary(np.array([1, 2, 4, 1]), n_reference=4)
    assert s["mean_rank"] == pytest.approx(2.0)
    assert s["mrr"] == pytest.approx((1 + 0.5 + 0.25 + 1) / 4)
    assert s["median_rank"] == pytest.approx(1.5)
    assert s["chance_mean_rank"] == pytest.approx(2.5)
    assert s["chance_mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # The chance MRR is the mean of 1/rank over a uniform rank.
    assert chance_mrr(50) == pytest.approx(np.mean(1 / np.arange(1, 51)))
    assert rank_summary(np.array([], dtype=np.int64), 10)["mean_rank"] is None


def test_fid_eigh_matches_sqrtm_including_singular_covariances():
    rng = np.random.default_rng(5)
    for n in (100, 5):  # n = 5 < D + 1: singular covariances
        x, y = rng.normal(size=(n, 12)), rng.normal(size=(n + 3, 12)) * 1.5 + 0.2
        (mu1, s1), (mu2, s2) = feature_statistics(x), feature_statistics(y)
        a = frechet_distance(mu1, s1, mu2, s2, method="sqrtm")
        b = frechet_distance(mu1, s1, mu2, s2, method="eigh")
        assert b == pytest.approx(a, rel=1e-5)
    with pytest.raises(ValueError, match="unknown"):
        frechet_distance(mu1, s1, mu2, s2, method="svd")


def test_fid_from_features_matches_statistics_form():
    rng = np.random.default_rng(6)
    y = rng.normal(size=(80, 10)) * 1.3 + 0.1
    mu2, s2 = feature_statistics(y)
    for n in (40, 6):  # n = 6 < D: the low-rank case it is meant for
        x = rng.normal(size=(n, 10))
        mu1, s1 = feature_statistics(x)
        want = frechet_distance(mu1, s1, mu2, s2, method="eigh")
        assert frechet_distance_from_features(x, mu2, s2) == pytest.approx(want, rel=1e-8)
    assert frechet_distance_from_features(y, mu2, s2) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rank_on_gpu_matches_cpu():
    rng = np.random.default_rng(7)
    ref = rng.random(size=(2000, 256)).astype(np.float32)  # non-negative, like pooled features
    q = ref[rng.integers(0, 2000, 300)] + 0.05 * rng.normal(size=(300, 256)).astype(np.float32)
    cond = rng.integers(-1, 2000, size=300)
    vec = rng.random(size=(300, 256)).astype(np.float32)
    cpu = nearest_neighbour_ranks(q, ref, cond, vec)
    gpu = nearest_neighbour_ranks(q, ref, cond, vec, device="cuda", max_chunk_bytes=1 << 20)
    np.testing.assert_array_equal(gpu, cpu)
