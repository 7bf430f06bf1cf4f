"""rank / MRR for token representations: the token distance (mean over tokens of the squared
distance) and the pooled one (distance of the token means), both computed and both reported."""

from __future__ import annotations

import numpy as np
import pytest
from rcdm.analysis import metrics


def test_token_distance_is_the_mean_over_tokens_of_squared_distances():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4 * 5)), rng.standard_normal((3, 4 * 5))
    want = [np.mean([np.sum((a[i, 5 * t : 5 * t + 5] - b[i, 5 * t : 5 * t + 5]) ** 2) for t in range(4)]) for i in range(3)]
    np.testing.assert_allclose(metrics.token_sq_distance(a, b, (4, 5)), want)
    np.testing.assert_allclose(metrics.pool_tokens(a, (4, 5)), a.reshape(3, 4, 5).mean(1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"token grids must be \(M, 4 x 6 = 24\)"):
        metrics.pool_tokens(a, (4, 6))


def test_a_rearranged_grid_is_found_by_the_pooled_distance_only():
    """The sample's tokens are its condition's, moved around: the token means agree (pooled rank
    1), the positions do not (a reference row with the sample's layout but another mean wins)."""
    rng = np.random.default_rng(1)
    t, d, n = 4, 6, 8
    ref = rng.standard_normal((n, t, d)).astype(np.float32)
    cond = ref[0].copy()
    query = cond[[2, 3, 0, 1]][None]  # the same tokens, rearranged
    ref[1] = query[0] + 0.3 * rng.standard_normal((t, d))  # the sample's layout, slightly off ...
    ref[1] += cond.mean(0) + 0.5 - ref[1].mean(0)  # ... with a clearly different mean
    flat = ref.reshape(n, -1)
    both = metrics.token_ranks(query.reshape(1, -1), flat, np.array([0]), (t, d))
    assert both["pooled"][0] == 1 and both["tokens"][0] > 1
    assert both["tokens"][0] == metrics.nearest_neighbour_ranks(query.reshape(1, -1), flat, np.array([0]))[0]
    # conditions outside the reference set are pooled the same way
    out = metrics.token_ranks(query.reshape(1, -1), flat[1:], np.array([-1]), (t, d), cond.reshape(1, -1))
    assert out["pooled"][0] == 1 and out["tokens"][0] > 1
