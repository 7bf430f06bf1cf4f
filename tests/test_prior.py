"""The representation prior (rcdm train-prior): it learns a known Gaussian mixture, its folder
round-trips, and its draws condition ``rcdm sample --condition prior``."""

from __future__ import annotations

import numpy as np
import pytest
from rcdm.config import PriorConfig
from rcdm.errors import InvalidInput, MissingInput, OutputExists
from rcdm.prior.model import draw
from rcdm.run.priordir import check_store, load_prior
from rcdm.train.prior import train_prior

from tests.synthetic_store import make_store

D = 4
MEANS = np.array([[2.0, 0.0, 1.0, -1.0], [-2.0, 1.0, 0.0, 3.0], [0.0, -2.0, -1.0, 0.0]])
SCALES = np.array([0.3, 0.5, 0.4])


def mixture(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    comp = rng.integers(0, len(MEANS), n)
    return (MEANS[comp] + SCALES[comp, None] * rng.standard_normal((n, D))).astype(np.float32)


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior")
    store = make_store(root / "store", mixture(3000, 0), dtype="float32", shard_size=1024)
    cfg = PriorConfig(
        store=str(store),
        out=str(root / "prior"),
        width=128,
        blocks=3,
        iters=1500,
        batch_size=256,
        lr=2e-3,
        timesteps=200,
        sample_steps=50,
        device="cpu",
    )
    return train_prior(cfg), store


def test_prior_matches_mixture_mean_and_covariance(prior_dir):
    path, _ = prior_dir
    model, meta = load_prior(path)
    h = draw(model, 3000, seed=1, meta=meta)
    ref = mixture(20000, 2).astype(np.float64)
    assert h.shape == (3000, D) and np.isfinite(h).all()
    # The mixture's total std per dimension is 1.2-2.1: means within 0.2, covariances within 0.35.
    np.testing.assert_allclose(h.mean(0), ref.mean(0), atol=0.2)
    np.testing.assert_allclose(np.cov(h, rowvar=False), np.cov(ref, rowvar=False), atol=0.35)
    # It is a mixture, not one Gaussian: most draws sit near one of the three centres.
    near = np.linalg.norm(h[:, None] - MEANS[None], axis=-1).min(1)
    assert np.mean(near < 1.5) > 0.85
    assert meta["final_loss"] < meta["loss_curve"][0][1]


def test_prior_draws_are_seeded(prior_dir):
    model, meta = load_prior(prior_dir[0])
    a, b = draw(model, 8, seed=3, meta=meta), draw(model, 8, seed=3, meta=meta)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, draw(model, 8, seed=4, meta=meta))


def test_prior_refuses_overwrite_missing_and_other_store(prior_dir, tmp_path):
    path, store = prior_dir
    with pytest.raises(OutputExists, match="--overwrite"):
        train_prior(PriorConfig(store=str(store), out=str(path), iters=1, width=8, blocks=1))
    with pytest.raises(MissingInput, match="train-prior"):
        load_prior(tmp_path / "nothing")
    from rcdm.store import FeatureStore

    other = FeatureStore(make_store(tmp_path / "other", np.zeros((3, D + 1), np.float32)))
    _, meta = load_prior(path)
    with pytest.raises(InvalidInput, match="trained on 4-d"):
        check_store(meta, other, str(path))
    check_store(meta, FeatureStore(store), str(path))  # its own store fits


def test_prior_check_store_compares_the_whole_encoder(tmp_path):
    """The prior's store check is rcdm.run.conditioning's comparison: a prior of random-rn50
    seed 0 does not fit a store of seed 1 (review B #9; the seed was not compared)."""
    from rcdm.store import FeatureStore

    enc = {
        "name": "random-rn50",
        "arch": "resnet50",
        "layer": "trunk",
        "dim": D,
        "weights": None,
        "weights_sha256": None,
    }
    meta = {"spec": {"dim": D}, "encoder": {**enc, "seed": 0}}
    feats = np.zeros((3, D), np.float32)
    check_store(meta, FeatureStore(make_store(tmp_path / "s0", feats, encoder_info={**enc, "seed": 0})), "p")
    with pytest.raises(InvalidInput, match="trained on 4-d .*random encoder seed 0 vs 1"):
        check_store(meta, FeatureStore(make_store(tmp_path / "s1", feats, encoder_info={**enc, "seed": 1})), "p")


def test_sample_condition_prior(tmp_path, ckpt, store_dir):
    """``rcdm sample --condition prior`` samples from the prior's draws, recorded in the index."""
    import rcdm.sample
    from rcdm.run.sampleset import read_samples

    from tests.sample_setup import run_cfg

    prior = train_prior(
        PriorConfig(
            store=str(store_dir),
            out=str(tmp_path / "prior"),
            width=16,
            blocks=1,
            iters=5,
            timesteps=20,
            sample_steps=4,
            device="cpu",
        )
    )
    out = rcdm.sample.run(
        run_cfg(ckpt, store_dir, tmp_path / "s", condition="prior", indices=(), prior=str(prior), prior_n=3)
    )
    ss = read_samples(out)
    model, meta = load_prior(prior)
    want = draw(model, 3, seed=0, meta=meta)  # sample.seed 0
    np.testing.assert_allclose(ss.conds[::2], want, rtol=1e-5, atol=1e-5)
    assert set(ss.kinds()) == {"prior"} and len(ss.images) == 6
    with pytest.raises(MissingInput, match="train-prior"):
        rcdm.sample.run(
            run_cfg(ckpt, store_dir, tmp_path / "s2", condition="prior", indices=(), prior=str(tmp_path / "none"))
        )


def test_prior_network_rows_are_independent_and_lr_decays():
    """Modulations computed once per distinct t give each row what it alone would get; the lr warms up, then decays."""
    import torch
    from rcdm.prior.model import PriorMLP, PriorSpec, linear_alphas_cumprod
    from rcdm.train.prior import lr_at

    torch.manual_seed(0)
    model = PriorMLP(PriorSpec(dim=6, width=16, blocks=2, timesteps=50))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)  # past the zero init, so every modulation matters
    x, t = torch.randn(7, 6), torch.tensor([3, 3, 10, 49, 3, 0, 10])
    rows = torch.cat([model(x[i : i + 1], t[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(model(x, t), rows, rtol=1e-5, atol=1e-6)
    assert [lr_at(1.0, s, 1000) for s in (0, 99)] == [0.01, 1.0 * 0.5 * (1 + np.cos(np.pi * 99 / 1000))]
    assert lr_at(1.0, 999, 1000) < 1e-4 and lr_at(1.0, 500, 1000) == 0.5
    abar = linear_alphas_cumprod(1000)  # RCG's schedule: alpha_bar from ~1 to ~1e-4
    assert abar[0] > 0.998 and 1e-5 < abar[-1] < 1e-3 and np.all(np.diff(abar) < 0)


def test_report_lists_the_fid_of_prior_and_kde_sample_sets(tmp_path):
    import json

    from rcdm.analysis.prior_entry import evaluated_rows

    from tests.evaluation_setup import fake_evaluation

    runs = []
    for cond, fid in (("prior", {"value": 12.5}), ("kde", {"skipped": True}), ("store", {"value": 3.0})):
        samples, ev = tmp_path / f"s-{cond}", tmp_path / f"e-{cond}"
        samples.mkdir()
        (samples / "manifest.json").write_text(json.dumps({"condition": cond}))  # the sample set's
        fake_evaluation(ev, {"samples": {"path": str(samples)}, "n_samples": 8, "fid": fid})
        runs.append(str(ev))
    runs.append(str(tmp_path / "not-evaluated"))  # left out
    assert evaluated_rows(tuple(runs)) == [["prior", runs[0], 8, 12.5], ["kde", runs[1], 8, "not computed"]]
