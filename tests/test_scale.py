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


@pytest.mark.parametrize("block_rows", [None, 1, 50, 64, 1000])
def test_iter_features_and_gather_give_the_rows_of_features(tmp_path, block_rows):
    path, _ = _store(tmp_path)
    st = S.FeatureStore(path)
    whole = st.features(0)
    blocks = list(st.iter_features(0, block_rows))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), whole)
    assert [s for s, _ in blocks] == np.cumsum([0] + [len(b) for _, b in blocks])[:-1].tolist()
    if block_rows is not None:
        assert all(len(b) == block_rows for _, b in blocks[:-1]) and 0 < len(blocks[-1][1]) <= block_rows
    rows = np.array([299, 0, 5, 5, 130, -1])
    np.testing.assert_array_equal(st.gather(rows, 1), st.features(1)[rows])
    for a, z in ((0, 300), (50, 200), (63, 65), (64, 64), (299, 300)):  # across and within shards of 64
        np.testing.assert_array_equal(st.read_range(a, z, 1), st.features(1)[a:z])
    with pytest.raises(IndexError):
        st.read_range(10, 301)


def _refuse_whole_matrix(monkeypatch):
    def refuse(self, view=0):
        raise AssertionError(f"{self.path}: the whole feature matrix was loaded")

    monkeypatch.setattr(S.FeatureStore, "features", refuse)


def test_the_retrieval_baseline_streams_the_training_store(tmp_path, monkeypatch):
    # It loaded all training features (ImageNet: 10 GB float32) to find each condition's nearest row
    from rcdm.analysis.evaluation import feature_stats as F
    from rcdm.analysis.evaluation.spaces import retrieval_baseline

    path, _ = _store(tmp_path, n=500, shard_size=64)
    train = S.FeatureStore(path).features(0)
    conds = np.random.default_rng(3).standard_normal((40, 5)).astype(np.float32)
    want_nn, want_d = F.nearest_rows(conds, train)
    _refuse_whole_matrix(monkeypatch)
    base = retrieval_baseline(conds, S.FeatureStore(path), [])
    np.testing.assert_array_equal(base.rows, want_nn)
    np.testing.assert_array_equal(base.features, train[want_nn])
    assert base.info["mean_distance_condition_to_nearest_train"] == float(want_d.mean())


def test_the_condition_statistics_of_a_large_store_are_streamed(tmp_path, monkeypatch):
    # Training's cond_norm statistics read both views of every row at once (ImageNet: 21 GB float32)
    import torch
    from rcdm.train.model import condition_statistics

    path, feats = _store(tmp_path, n=700, d=6)
    st = S.FeatureStore(path)
    small_mean, small_std = condition_statistics(st)  # fits: the whole matrix, as it always was
    whole = torch.from_numpy(st.features(None).reshape(-1, 6))
    assert torch.equal(small_mean, whole.mean(0)) and torch.equal(small_std, whole.std(0))
    _refuse_whole_matrix(monkeypatch)
    mean, std = condition_statistics(S.FeatureStore(path), in_memory_bytes=1000)
    assert mean.dtype == torch.float32 and mean.shape == (6,)
    torch.testing.assert_close(mean, small_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(std, small_std, rtol=1e-6, atol=1e-6)


def test_train_prior_streams_a_store_larger_than_memory(tmp_path, monkeypatch):
    # train-prior held every row of view 0 in float32 (ImageNet: 10 GB) for its random batches
    import torch
    from rcdm.config import PriorConfig
    from rcdm.prior.model import PriorMLP, PriorSpec
    from rcdm.run.priordir import is_prior
    from rcdm.train import prior as P

    path, _ = _store(tmp_path, n=400, d=6)
    whole = P.PriorRows(S.FeatureStore(path), tmp_path / "unused", "cpu")  # fits: in memory, as before
    ref = PriorMLP(PriorSpec(dim=6, width=8, blocks=1, timesteps=10))
    whole.standardise(ref)
    _refuse_whole_matrix(monkeypatch)
    streamed = P.PriorRows(S.FeatureStore(path), tmp_path / "p0", "cpu", in_memory_bytes=100)
    model = PriorMLP(PriorSpec(dim=6, width=8, blocks=1, timesteps=10))
    streamed.standardise(model)
    for name in ("mean", "std", "bound"):
        torch.testing.assert_close(getattr(model, name), getattr(ref, name), rtol=1e-6, atol=1e-6)
    idx = torch.tensor([399, 0, 7, 7, 250])
    torch.testing.assert_close(streamed.batch(idx), whole.batch(idx), rtol=1e-5, atol=1e-5)
    streamed.close()
    assert not (tmp_path / "p0" / P.SCRATCH).exists()
    monkeypatch.setattr(P, "IN_MEMORY_BYTES", 100)  # the whole command, streamed
    out = P.train_prior(PriorConfig(store=str(path), out=str(tmp_path / "p"), iters=3, width=8, blocks=1))
    assert is_prior(out) and not (out / P.SCRATCH).exists()


def test_store_kde_and_class_mean_conditions_read_only_their_rows(tmp_path, monkeypatch):
    # sample's conditions read the whole store first (store.features: 10 GB for ImageNet's training
    # store) to use a few of its rows
    from rcdm.config import SampleConfig
    from rcdm.diffusion import conditions as C
    from rcdm.sample.conds import build

    path, _ = _store(tmp_path, n=500)
    whole = S.FeatureStore(path).features(0)
    want_kde = C.kde_sample(whole, 20, 0.3, 4)
    _refuse_whole_matrix(monkeypatch)
    kde = build(SampleConfig(condition="kde", kde_n=20, kde_sigma=0.3, seed=4), S.FeatureStore(path))
    np.testing.assert_array_equal(kde.vectors, want_kde)
    st = build(SampleConfig(condition="store", subset=50, seed=2), S.FeatureStore(path))
    rows = [c.store_index for c in st.conditions]
    np.testing.assert_array_equal(st.vectors, whole[rows])
    assert [c.key for c in st.conditions] == [f"c{i % 7}/img_{i:05d}" for i in rows]
    means = build(SampleConfig(condition="class-mean", labels=(3, 0)), S.FeatureStore(path))
    labels = np.arange(500) % 7
    np.testing.assert_array_equal(means.vectors, [C.class_mean(whole, labels, 3), C.class_mean(whole, labels, 0)])
    with pytest.raises(ValueError, match=r"no entry has label 9; labels present: \[0, 1, 2, 3, 4, 5, 6\]"):
        build(SampleConfig(condition="class-mean", labels=(9,)), S.FeatureStore(path))


def test_the_neighbours_search_streams_the_training_store(tmp_path, monkeypatch):
    # the neighbours and distances analyses loaded every training row to find the nearest of a few samples
    from rcdm.analysis.experiments.common import nearest_training_rows
    from rcdm.diffusion import conditions as C

    path, _ = _store(tmp_path, n=500)
    whole = S.FeatureStore(path).features(0)
    hs = np.random.default_rng(5).standard_normal((9, 5)).astype(np.float32)
    hs[0] = whole[17]  # a sample on a training row, and ties: rows 3 and 4 made equal
    want = C.knn(whole, hs, 6)
    _refuse_whole_matrix(monkeypatch)
    monkeypatch.setattr(C, "KNN_CHUNK", 64)  # many blocks
    np.testing.assert_array_equal(nearest_training_rows(S.FeatureStore(path), hs, 6), want)
    assert want[0, 0] == 17


def test_knn_over_blocks_equals_knn_with_ties_and_exclusion():
    from rcdm.diffusion import conditions as C

    feats = np.repeat(np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32), 2, axis=0)  # ties
    q = feats[[5, 60]]
    for exclude in (None, 5):
        want = np.argsort(((feats.astype(np.float64)[None] - q.astype(np.float64)[:, None]) ** 2).sum(-1), 1, "stable")
        if exclude is not None:
            want = np.array([[j for j in w if j != exclude] for w in want])
        got = C.knn(feats, q, 7, exclude=exclude, chunk=9)
        np.testing.assert_array_equal(got, want[:, :7])


def _tar(path, members, fmt=None):
    """A tar of ``members``: (name, bytes) files, or (name, "dir" | "sym:TARGET" | "link:TARGET")."""
    import io
    import tarfile

    with tarfile.open(path, "w", **({"format": fmt} if fmt is not None else {})) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            if data == "dir":
                ti.type = tarfile.DIRTYPE
            elif isinstance(data, str):
                ti.type = tarfile.SYMTYPE if data.startswith("sym:") else tarfile.LNKTYPE
                ti.linkname = data.split(":", 1)[1]
            else:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if isinstance(data, bytes) else None)
    return str(path)


def test_the_webdataset_scan_reads_plain_headers_itself_and_agrees_with_tarfile(tmp_path):
    # tarfile's header parsing took 3 minutes over ImageNet's 2.56M members; plain ustar headers are
    # now read directly, and every other tar still goes through tarfile, with the same result
    import tarfile

    from rcdm.data import images as I

    deep = "a" * 90 + "/" + "b" * 60  # over 100 characters: a ustar prefix, still a plain header
    plain = [("d", "dir"), ("s0.jpg", b"x" * 700), ("s0.cls", b"3"), ("s1.jpg", b"y"), ("s1.cls", b"oops")]
    plain += [("s2.jpg", "sym:s0.jpg"), ("s3.jpg", "link:s0.jpg")]
    long = plain + [(f"{deep}.jpg", b"z" * 513), (f"{deep}.cls", b"7")]
    cases = {
        "pax": (_tar(tmp_path / "pax.tar", plain), True),  # tarfile's default: pax headers only when needed
        "ustar": (_tar(tmp_path / "ustar.tar", long, tarfile.USTAR_FORMAT), True),
        "gnu": (_tar(tmp_path / "gnu.tar", plain, tarfile.GNU_FORMAT), True),
        "pax long name": (_tar(tmp_path / "long.tar", long), False),
        "gnu long name": (_tar(tmp_path / "gnulong.tar", long, tarfile.GNU_FORMAT), False),
        "utf-8 name": (_tar(tmp_path / "utf.tar", [("é.jpg", b"q")]), False),
    }
    for what, (path, fast) in cases.items():
        assert (I._ustar_members(path) is not None) == fast, what
        a, b = dict.fromkeys(I._WDS_SKIPS, 0), dict.fromkeys(I._WDS_SKIPS, 0)
        assert I._scan_tar(path, a) == I._scan_tarfile(path, b), what
        assert a == b, what
    counts = dict.fromkeys(I._WDS_SKIPS, 0)
    got = dict(I._scan_tar(cases["ustar"][0], counts))
    assert got["s0"]["__cls__"] == 3 and got["s1"]["__cls__"] == -1 and got[deep]["__cls__"] == 7
    assert counts["n_link_members"] == 2 and counts["n_unreadable_cls"] == 1
    # damaged tars are left to tarfile: a flipped header byte, a member cut short, an empty file
    data = bytearray(open(cases["ustar"][0], "rb").read())
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data[:600]))  # s0.jpg's data cut short
    assert I._ustar_members(str(bad)) is None
    data[5] ^= 1  # the first header's name: its checksum no longer agrees
    bad.write_bytes(bytes(data))
    assert I._ustar_members(str(bad)) is None
    bad.write_bytes(b"")
    assert I._ustar_members(str(bad)) is None


def test_listing_a_source_runs_without_the_cyclic_collector(tmp_path, monkeypatch):
    # with it on, each collection walked every item made so far: 181 s for ImageNet's tars, 103 s off
    import gc

    from rcdm.data import images as I

    seen = []
    real = I._scan_tar
    monkeypatch.setattr(I, "_scan_tar", lambda *a: seen.append(gc.isenabled()) or real(*a))
    _tar(tmp_path / "a.tar", [("s0.jpg", b"x"), ("s0.cls", b"1")])
    assert gc.isenabled()
    assert len(I.open_source(tmp_path / "a.tar")) == 1
    assert seen == [False] and gc.isenabled()


def test_the_probe_of_a_large_store_streams_through_a_bounded_buffer(tmp_path, monkeypatch):
    # the probe held every training row in float32 (ImageNet: 10 GB) for its minibatches
    from rcdm.analysis.experiments.probe import store_probe

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, size=(6, 8))
    y = np.repeat(np.arange(6), 100)  # class after class, as an ImageFolder store is written
    scale = rng.uniform(0.1, 20, size=8)  # very different per-dimension scales: standardisation matters
    x = (centres[y] + rng.normal(0, 1, size=(600, 8))) * scale + 5
    yv = np.repeat(np.arange(6), 20)
    xv = (centres[yv] + rng.normal(0, 1, size=(120, 8))) * scale + 5
    keys = [f"c{c}/img_{i:04d}" for i, c in enumerate(y)]
    train = make_store(tmp_path / "tr", x.astype(np.float32), keys, y, shard_size=64, dtype="float32")
    val = make_store(tmp_path / "va", xv.astype(np.float32), [f"v{i}" for i in range(120)], yv, dtype="float32")
    kw = {"epochs": 30, "lr": 0.05, "seed": 1, "batch_size": 32}
    whole = store_probe(S.FeatureStore(train), y, S.FeatureStore(val), yv, **kw)  # fits: in memory
    _refuse_whole_matrix(monkeypatch)
    from rcdm.analysis import probe as P

    buffers = []
    real_read = P.read_buffer
    monkeypatch.setattr(P, "read_buffer", lambda st, blocks: buffers.append(real_read(st, blocks)) or buffers[-1])
    budget = 150 * 8 * 4  # a buffer of 150 rows: a quarter of the store
    streamed = store_probe(S.FeatureStore(train), y, S.FeatureStore(val), yv, in_memory_bytes=budget, **kw)
    assert buffers and max(len(r) for _, r in buffers) <= 150  # what it holds at once: one buffer
    epoch_rows: list[int] = []
    for _, rows in buffers:  # every row once an epoch
        epoch_rows += rows.tolist()
        if len(epoch_rows) >= 600:
            assert sorted(epoch_rows) == list(range(600))
            epoch_rows = []
    assert not epoch_rows and sum(len(r) for _, r in buffers) == 30 * 600
    feats, rows = buffers[7]
    np.testing.assert_array_equal(feats, x.astype(np.float32)[rows])
    assert whole.val_accuracy >= 0.95 and whole.train_accuracy >= 0.95
    assert abs(streamed.val_accuracy - whole.val_accuracy) <= 0.03
    assert abs(streamed.train_accuracy - whole.train_accuracy) <= 0.03
    torch = pytest.importorskip("torch")
    feats = torch.from_numpy(x.astype(np.float32))
    torch.testing.assert_close(streamed.probe.mean, feats.mean(0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(streamed.probe.std, feats.std(0, unbiased=False), rtol=1e-5, atol=1e-4)
    again = store_probe(S.FeatureStore(train), y, S.FeatureStore(val), yv, in_memory_bytes=budget, **kw)
    assert torch.equal(again.probe.linear.weight, streamed.probe.linear.weight)  # seeded


def test_the_manipulate_condition_searches_the_store_a_block_at_a_time(tmp_path, monkeypatch):
    # sampling's manipulate condition read the whole store (10 GB for ImageNet's) for k nearest rows
    from rcdm.config import SampleConfig
    from rcdm.diffusion import conditions as C
    from rcdm.sample.conds import build

    path, _ = _store(tmp_path, n=500)
    whole = S.FeatureStore(path).features(0)
    want = []
    for i in (3, 400):  # the old arithmetic: knn over the whole matrix, its own row left out
        nb = C.knn(whole, whole[i], 6, exclude=i)
        want.append((nb, C.manipulate(whole[i], C.common_dims(whole[nb], 2), "replace", whole[77])))
    _refuse_whole_matrix(monkeypatch)
    monkeypatch.setattr(C, "KNN_CHUNK", 64)  # many blocks
    cfg = SampleConfig(condition="manipulate", indices=(3, 400, 77), knn_k=6, knn_m=2, manipulate_mode="replace")
    got = [c for c in build(cfg, S.FeatureStore(path)).conditions if c.kind == "manipulate"]
    assert len(got) == 2
    for c, (nb, v) in zip(got, want, strict=True):
        assert c.extra["neighbours"] == nb.tolist()
        np.testing.assert_array_equal(c.vector, v)


def _analysis_context(tmp_path, path):
    """An analysis Context over the train store ``path``, and an RCDM stand-in conditioned on it."""
    import torch
    from rcdm.analysis.experiments.common import RCDM, Context
    from rcdm.config import AnalyzeConfig
    from rcdm.run.conditioning import Conditioning

    ctx = Context(AnalyzeConfig(train_store=str(path), val_store=str(path)), tmp_path / "out", torch.device("cpu"))
    train = ctx.store("train")
    info = dict(train.encoder_info, layer=train.layer, dim=train.dim)
    r = RCDM("ck", "ck", None, None, {}, info, "", Conditioning.of_store(train), train.dim, 16)
    return ctx, r


def test_the_invariance_reference_streams_a_large_training_store(tmp_path, monkeypatch):
    # invariance's nearest-neighbour reference held every training row in float64 (ImageNet: 20 GB)
    from rcdm.analysis.experiments import common
    from rcdm.analysis.experiments import invariance as I
    from rcdm.analysis.experiments.invariance_scores import StoreReference, nn_distance

    path, _ = _store(tmp_path, n=500)
    ctx, r = _analysis_context(tmp_path, path)
    held, what = I._nn_reference(ctx, r, r.encoder_info["layer"])  # fits: the whole matrix, as before
    assert isinstance(held, np.ndarray) and what == "all 500 entries of the train store"
    hs = np.random.default_rng(1).standard_normal((4, 5))
    hs[0] = held[42]  # its own entry is left out
    mean, std = held.mean(0), held.std(0) + 0.5
    standardise = lambda x: (x - mean) / std  # noqa: E731
    want = [nn_distance(h, held, chunk=100) for h in hs] + [nn_distance(standardise(h), standardise(held)) for h in hs]
    _refuse_whole_matrix(monkeypatch)
    monkeypatch.setattr(common, "IN_MEMORY_BYTES", 100)
    ctx, r = _analysis_context(tmp_path, path)
    ref, what2 = I._nn_reference(ctx, r, r.encoder_info["layer"])
    assert isinstance(ref, StoreReference) and what2 == what
    seen = ref.mapped(standardise)
    got = [nn_distance(h, ref, chunk=64) for h in hs] + [nn_distance(standardise(h), seen, chunk=64) for h in hs]
    assert got == want


def test_the_manipulation_analysis_streams_a_large_training_store(tmp_path, monkeypatch):
    # manipulation's per-dimension thresholds and neighbours read every training row at once
    from rcdm.analysis.experiments import common
    from rcdm.analysis.experiments import manipulation as M
    from rcdm.diffusion.conditions import knn

    path, _ = _store(tmp_path, n=500)
    whole = S.FeatureStore(path).features(0)
    ctx, _ = _analysis_context(tmp_path, path)
    held = M.TrainRows(ctx.store("train"), ctx.held_features(ctx.store("train")))
    assert held.features is not None  # fits: the whole matrix, as before
    hs = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
    want_t = M.active_thresholds(whole)
    want_nn = [knn(whole, h, 7) for h in hs]
    np.testing.assert_array_equal(held.thresholds(), want_t)
    _refuse_whole_matrix(monkeypatch)
    monkeypatch.setattr(common, "IN_MEMORY_BYTES", 4 * 500 * 2)  # two columns of every row a pass
    ctx, _ = _analysis_context(tmp_path, path)
    streamed = M.TrainRows(ctx.store("train"), ctx.held_features(ctx.store("train")))
    assert streamed.features is None
    np.testing.assert_array_equal(streamed.thresholds(), want_t)
    for h, nn in zip(hs, want_nn, strict=True):
        np.testing.assert_array_equal(streamed.knn(h, 7), nn)
        np.testing.assert_array_equal(streamed.rows(nn), whole[nn])


def test_the_retrieval_baseline_runs_on_the_evaluate_device(tmp_path, monkeypatch):
    # 50k conditions x 1.28M training rows x 2048-d is 2.6e14 flops: numpy on a CPU takes hours
    from rcdm.analysis.evaluation import feature_stats as F
    from rcdm.analysis.evaluation.spaces import retrieval_baseline

    rng = np.random.default_rng(4)
    train = rng.standard_normal((700, 12)).astype(np.float32)
    q = rng.standard_normal((1500, 12)).astype(np.float32)  # more than one chunk of 1024 queries
    q[5] = train[321]  # distance 0
    train[600] = train[321]  # a tie: the first row wins
    blocks = [(s, train[s : s + 64]) for s in range(0, 700, 64)]
    want_nn, want_d = F.nearest_rows_streamed(q, blocks)  # numpy
    nn, d = F.nearest_rows_streamed(q, blocks, device="cpu")  # torch, the same arithmetic
    np.testing.assert_array_equal(nn, want_nn)
    # float32 rounding of ||q||^2 + ||r||^2 - 2 q.r: equal to a few ulps of the squared norms
    np.testing.assert_allclose(d**2, want_d**2, rtol=1e-5, atol=1e-5 * 24)
    assert nn[5] == 321
    seen = []
    real = F._nearest_rows_torch
    monkeypatch.setattr(F, "_nearest_rows_torch", lambda q_, b, dev: seen.append(str(dev)) or real(q_, b, "cpu"))
    path, _ = _store(tmp_path, n=300)
    conds = rng.standard_normal((20, 5)).astype(np.float32)
    on_cpu = retrieval_baseline(conds, S.FeatureStore(path), [], device="cpu")
    assert seen == []  # a CPU keeps numpy's arithmetic, bit for bit
    on_gpu = retrieval_baseline(conds, S.FeatureStore(path), [], device="cuda:0")
    assert seen == ["cuda:0"]
    np.testing.assert_array_equal(on_gpu.rows, on_cpu.rows)


def test_the_streamed_knn_holds_one_float64_block(tmp_path):
    # at 2048-d a block of KNN_CHUNK rows is 1 GB in float64: the neighbours search held the last
    # block's copy, f**2 and the next block at once (4.2 GB peak at 200k x 2048, bench/scale.py)
    import tracemalloc

    from rcdm.diffusion import conditions as C

    rows, d = 20000, 64
    f64_block = rows * d * 8

    def blocks():
        for b in range(4):
            yield b * rows, np.random.default_rng(b).standard_normal((rows, d), dtype=np.float32)

    q = np.random.default_rng(9).standard_normal((3, d)).astype(np.float32)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        got = C.knn_streamed(blocks(), q, 5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    want = C.knn(np.concatenate([b for _, b in blocks()]), q, 5)
    np.testing.assert_array_equal(got, want)
    assert peak < 1.8 * f64_block, f"peak {peak / f64_block:.2f} float64 blocks"
