"""Costs that grow with the data set (issue 22): each a small-size check of what made a stage
slower than N log N, or hold memory or file handles in proportion to N, at ImageNet's counts.
bench/scale.py measures the stages themselves at N = 10k .. 1.28M (docs/benchmarks.md)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from rcdm import store as S

from tests.synthetic_store import make_store


def _store(tmp_path, n=300, d=5, shard_size=64, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, 2, d)).astype(np.float32)
    keys = [f"c{i % 7}/img_{i:05d}" for i in range(n)]
    return make_store(tmp_path / "s", feats, keys, np.arange(n) % 7, shard_size=shard_size), feats


def test_keys_and_labels_are_read_without_a_copy_of_all_rows(tmp_path):
    # `store.keys[i]` in a loop over rows (choosing 50k sample conditions, the analyses' tables)
    # copied the whole key list and label array at every access: O(N) per row, O(N^2) per stage
    path, _ = _store(tmp_path)
    st = S.FeatureStore(path)
    assert st.keys is st.keys  # the one list, not a copy per access
    assert st.keys[5] == "c5/img_00005" and st.keys == [f"c{i % 7}/img_{i:05d}" for i in range(300)]
    with pytest.raises(TypeError, match="read-only"):
        st.keys.append("x")
    with pytest.raises(TypeError, match="read-only"):
        st.keys[0] = "x"
    labels = st.labels
    assert np.shares_memory(labels, st.labels) and not labels.flags.writeable
    with pytest.raises(ValueError):
        labels[0] = 3
    np.testing.assert_array_equal(st.labels, np.arange(300) % 7)
    again = pickle.loads(pickle.dumps(st))  # DataLoader workers get the store pickled
    assert again.keys == st.keys and copy.deepcopy(st.keys) == st.keys
