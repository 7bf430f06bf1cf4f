"""Conditions: hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from rcdm.diffusion import conditions as C


def test_interpolate_full_path_linear():
    a = np.array([0.0, 2.0, -1.0], np.float32)
    b = np.array([4.0, 2.0, 1.0], np.float32)
    p = C.interpolate(a, b, 5)
    assert p.shape == (5, 3) and p.dtype == np.float32
    np.testing.assert_array_equal(p[0], a)
    np.testing.assert_array_equal(p[-1], b)
    np.testing.assert_allclose(p[:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(p[:, 2], [-1, -0.5, 0, 0.5, 1])
    with pytest.raises(ValueError, match="at least 2"):
        C.interpolate(a, b, 1)
    with pytest.raises(ValueError, match="shapes"):
        C.interpolate(a, b[:2], 3)


def test_kde_sample_sigma_is_std_and_seeded():
    feats = np.array([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]], np.float32)
    x, idx = C.kde_sample(feats, 20000, sigma=0.5, seed=3, return_index=True)
    assert x.shape == (20000, 2) and idx.shape == (20000,)
    resid = x - feats[idx]
    # sigma is the kernel's standard deviation: residual std ~ 0.5 (a variance would give ~0.71)
    assert abs(resid.std() - 0.5) < 0.01
    assert abs(resid.mean()) < 0.01
    assert set(np.unique(idx)) == {0, 1, 2}  # uniform over rows
    np.testing.assert_array_equal(x, C.kde_sample(feats, 20000, sigma=0.5, seed=3))
    assert not np.array_equal(x, C.kde_sample(feats, 20000, sigma=0.5, seed=4))
    # sigma 0: exact store rows
    x0, i0 = C.kde_sample(feats, 7, sigma=0.0, seed=0, return_index=True)
    np.testing.assert_array_equal(x0, feats[i0])


def test_class_mean_and_missing_label():
    feats = np.array([[1, 2], [3, 4], [10, 10], [5, 0]], np.float32)
    labels = np.array([0, 0, 1, 0])
    np.testing.assert_allclose(C.class_mean(feats, labels, 0), [3.0, 2.0])
    np.testing.assert_allclose(C.class_mean(feats, labels, 1), [10.0, 10.0])
    with pytest.raises(ValueError, match="no entry has label 7"):
        C.class_mean(feats, labels, 7)


def test_algebra():
    a, b, c = (np.array(v, np.float32) for v in ([1, 2, 3], [1, 1, 1], [0, 5, -3]))
    np.testing.assert_array_equal(C.algebra(a, b, c), [0, 6, -1])


def test_knn_euclidean_order_and_exclude():
    feats = np.array([[0, 0], [1, 0], [0, 3], [5, 5], [0.5, 0.1]], np.float32)
    np.testing.assert_array_equal(C.knn(feats, np.array([0.0, 0.0]), 3), [0, 4, 1])
    np.testing.assert_array_equal(C.knn(feats, feats[0], 2, exclude=0), [4, 1])
    q = np.array([[0, 0], [5, 4]], np.float32)
    np.testing.assert_array_equal(C.knn(feats, q, 1), [[0], [3]])
    with pytest.raises(ValueError, match="k=6"):
        C.knn(feats, feats[0], 6)


def test_common_dims_and_manipulate():
    nb = np.array(
        [[1, 0, 2, 0], [1, 0, 0, 0], [3, 1, 1, 0]],
        np.float32,
    )  # non-zero counts per dim: 3, 1, 2, 0
    np.testing.assert_array_equal(C.common_dims(nb, 2), [0, 2])
    np.testing.assert_array_equal(C.common_dims(nb, 3), [0])
    np.testing.assert_array_equal(C.common_dims(nb, 1), [0, 1, 2])
    with pytest.raises(ValueError, match="m=4"):
        C.common_dims(nb, 4)
    # per-dimension thresholds instead of "non-zero": active = above the dimension's threshold
    thr = np.array([2, -1, 0.5, -1], np.float32)  # counts above: 1, 3, 2, 3
    np.testing.assert_array_equal(C.common_dims(nb, 3, thresholds=thr), [1, 3])
    np.testing.assert_array_equal(C.active_mask(nb[0], thresholds=thr), [False, True, True, True])
    h = np.array([5, 6, 7, 8], np.float32)
    z = C.manipulate(h, np.array([0, 2]), "zero")
    np.testing.assert_array_equal(z, [0, 6, 0, 8])
    np.testing.assert_array_equal(h, [5, 6, 7, 8])  # input untouched
    t = np.array([-1, -2, -3, -4], np.float32)
    np.testing.assert_array_equal(C.manipulate(h, [0, 2], "replace", t), [-1, 6, -3, 8])
    hb = np.stack([h, h * 2])
    np.testing.assert_array_equal(C.manipulate(hb, [3], "zero")[:, 3], [0, 0])
    with pytest.raises(ValueError, match="target"):
        C.manipulate(h, [0], "replace")
