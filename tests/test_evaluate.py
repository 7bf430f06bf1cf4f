"""`rcdm evaluate` end to end on synthetic samples + a synthetic store, and its bad inputs.

The Inception weights are a He-initialised state dict for torch-fidelity's
FeatureExtractorInceptionV3, saved where torch.hub's cache puts the real file
($TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth); nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rcdm.analysis import evaluate, table
from rcdm.analysis.evaluation.fid import expected_meta, load_reference_stats, plan_fid, save_reference_stats
from rcdm.analysis.evaluation.inception import INCEPTION_FILENAME, INCEPTION_URL, InceptionV3
from rcdm.config import EvaluateConfig

from tests.synthetic import make_image_folder
from tests.synthetic_store import make_store

RES = 32


# ----------------------------------------------------------------------------------- helpers
def make_inception_weights(path: Path, seed: int = 0) -> Path:
    """He-initialised weights for torch-fidelity's Inception (its constructor insists on loading
    a file, so build it with the loader patched out, then initialise and save the state dict)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(seed)
    cls = fe.FeatureExtractorInceptionV3
    orig_load, orig_url = cls.load_state_dict, fe.load_state_dict_from_url
    try:
        fe.load_state_dict_from_url = lambda *a, **k: {}
        cls.load_state_dict = lambda self, sd, strict=True: None
        model = cls("inception-v3-compat", ["2048"])
    finally:
        cls.load_state_dict, fe.load_state_dict_from_url = orig_load, orig_url
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
        elif isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_parameters()
            mod.reset_running_stats()
        elif isinstance(mod, torch.nn.Linear):
            torch.nn.init.kaiming_normal_(mod.weight)
            torch.nn.init.zeros_(mod.bias)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME holding the generated weights where torch-fidelity's cache would."""
    home = tmp_path_factory.mktemp("torch_home")
    make_inception_weights(home / "hub" / "checkpoints" / INCEPTION_FILENAME)
    return home


@pytest.fixture
def use_torch_home(monkeypatch, torch_home):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home


def write_samples(d: Path, images, rows: list[dict], conds, **manifest) -> Path:
    """A sample set written by the core writer (``rows``: IndexRow fields; ``conds``: one row per
    condition), with the sampler's manifest fields as sample/stage.py records them."""
    from rcdm.run.sampleset import IndexRow, write_sample_set

    record = {"checkpoint": "synthetic", "store": "synthetic", "sampler": {"steps": "100"}}
    return write_sample_set(d, images, [IndexRow(**r) for r in rows], conds, {**record, **manifest})


def simple_case(tmp: Path, n: int = 4, dim: int = 8):
    """A tiny samples dir and a synthetic store (no real encoder): for the input checks."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    store = make_store(tmp / "store", feats)
    rows = [{"sample": i, "condition": i, "kind": "store", "key": f"item_{i:05d}", "seed": i} for i in range(n)]
    images = rng.integers(0, 256, size=(n, RES, RES, 3), dtype=np.uint8)
    samples = write_samples(tmp / "samples", images, rows, feats)
    return samples, store, images, rows, feats


def cfg_for(samples, store, out, **kw) -> EvaluateConfig:
    base = dict(samples=str(samples), reference=str(store), out=str(out), fid="off", device="cpu")
    base.update(kw)
    return EvaluateConfig(**base)


def fake_evaluation(d: Path, metrics: dict, ranks=(1,), inside=(True,)) -> Path:
    """A finished evaluation folder holding ``metrics`` (the schema's other keys empty: ``{}`` for
    the blocks, None for the rest), written by the folder's owner as `rcdm evaluate` would."""
    from rcdm.run.evaldir import METRICS_KEYS, EvalDir

    blocks = ("samples", "reference", "fid", "is", "rank", "faithfulness", "fd")
    unknown = set(metrics) - set(METRICS_KEYS)
    assert not unknown, f"not metrics.json keys: {unknown}"
    full = {k: metrics.get(k, {} if k in blocks else None) for k in METRICS_KEYS if k not in ("complete", "created")}
    EvalDir(d).write(
        full,
        ranks=np.asarray(ranks, np.int64),
        rank_in_reference=np.asarray(inside, bool),
        csv="run\n",
        markdown="# test\n",
        config=EvaluateConfig(),
        upstream={"samples_manifest_sha256": None, "reference_manifest_sha256": None},
    )
    return Path(d)


# ----------------------------------------------------------------------- torch-fidelity path
def test_wrapper_matches_torch_fidelity_extractor(use_torch_home):
    from torch_fidelity.utils import create_feature_extractor

    w = use_torch_home / "hub" / "checkpoints" / INCEPTION_FILENAME
    x = np.random.default_rng(0).integers(0, 256, size=(2, RES, RES, 3), dtype=np.uint8)
    pool, logits = InceptionV3(w)(x, batch_size=1)  # two batches of one
    fe = create_feature_extractor(
        "inception-v3-compat",
        ["2048", "logits_unbiased"],
        cuda=False,
        feature_extractor_weights_path=str(w),
    )
    with torch.no_grad():
        ref_pool, ref_logits = fe(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    np.testing.assert_allclose(pool, ref_pool.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=1e-5, atol=1e-5)
    assert pool.std() > 0


def test_missing_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    want = tmp_path / "empty_home" / "hub" / "checkpoints" / INCEPTION_FILENAME
    with pytest.raises(FileNotFoundError) as e:
        plan_fid("on", None, allow_download=False)
    assert str(want) in str(e.value) and INCEPTION_URL in str(e.value)
    weights, why = plan_fid("auto", None, allow_download=False)
    assert weights is None and str(want) in why
    assert plan_fid("off", None, False) == (None, "evaluate.fid=off")
    with pytest.raises(FileNotFoundError, match="inception_weights points to"):
        plan_fid("auto", str(tmp_path / "nope.pth"), allow_download=False)


def test_weights_that_need_pickle_are_refused(tmp_path):
    bad = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(1), "x": object()}, bad)
    with pytest.raises(ValueError, match="trust_checkpoint"):
        InceptionV3(bad)


def test_reference_stats_cache_refuses_another_resolution_or_set(tmp_path):
    path = tmp_path / "fid-ref-64.npz"
    meta = expected_meta(tmp_path / "val", 64, "abc", None)
    save_reference_stats(path, np.zeros(2048), np.eye(2048), {**meta, "n": 5})
    mu, sigma, got = load_reference_stats(path, meta)
    assert got["n"] == 5 and sigma.shape == (2048, 2048)
    with pytest.raises(ValueError, match="resolution=64"):
        load_reference_stats(path, expected_meta(tmp_path / "val", 32, "abc", None))
    with pytest.raises(ValueError, match="source="):
        load_reference_stats(path, expected_meta(tmp_path / "other", 64, "abc", None))
    with pytest.raises(ValueError, match="weights_sha256"):
        load_reference_stats(path, expected_meta(tmp_path / "val", 64, "def", None))
    assert load_reference_stats(tmp_path / "absent.npz", meta) is None


# ------------------------------------------------------------------------------- bad input
def test_bad_sample_files(tmp_path):
    """The sample set's own checks are in test_sampleset.py: evaluate stops on them first."""
    samples, store, images, rows, feats = simple_case(tmp_path)
    out = tmp_path / "eval"
    cfg = cfg_for(samples, store, out)
    np.savez(samples / "samples.npz", images[::-1].copy())  # changed after the sampler wrote it
    with pytest.raises(ValueError, match="has changed since"):
        evaluate(cfg)
    write_samples(samples, images, rows, feats)
    (samples / "conds.npy").unlink()
    with pytest.raises(FileNotFoundError, match="conds.npy"):
        evaluate(cfg)
    (samples / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        evaluate(cfg)
    assert not (out / "manifest.json").exists()


def test_condition_dimension_must_match_reference(tmp_path):
    samples, store, images, rows, feats = simple_case(tmp_path)
    write_samples(samples, images, rows, np.zeros((len(images), 5), np.float32))
    with pytest.raises(ValueError, match="conditioned on 5-d"):
        evaluate(cfg_for(samples, store, tmp_path / "eval"))


def test_fid_on_without_weights_stops_before_any_output(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    samples, store, *_ = simple_case(tmp_path)
    out = tmp_path / "eval"
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILENAME):
        evaluate(cfg_for(samples, store, out, fid="on", reference_images=str(tmp_path)))
    assert not (out / "manifest.json").exists() and not (out / "metrics.json").exists()


def test_stale_reference_stats_refused_before_work(tmp_path, use_torch_home):
    from rcdm.utils import sha256_file

    samples, store, *_ = simple_case(tmp_path)
    val = make_image_folder(tmp_path / "val", n_classes=1, per_class=2)
    cache = tmp_path / "ref.npz"
    wsha = sha256_file(use_torch_home / "hub" / "checkpoints" / INCEPTION_FILENAME)
    save_reference_stats(cache, np.zeros(2048), np.eye(2048), expected_meta(val, 64, wsha, None))
    cfg = cfg_for(samples, store, tmp_path / "eval", fid="on", reference_images=str(val), fid_stats_cache=str(cache))
    with pytest.raises(ValueError, match="resolution=64"):
        evaluate(cfg)


def test_table_refuses_unfinished_evaluations(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(FileNotFoundError, match="not a finished evaluation"):
        table([str(tmp_path / "e")], str(tmp_path / "t"))
    with pytest.raises(ValueError, match="at least one"):
        table([], str(tmp_path / "t"))


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def e2e(tmp_path_factory, torch_home):
    """A random-rn50 reference store over 6 images, 10 samples at 32 px (8 conditioned on store
    rows, 2 on out-of-set images), evaluated twice (the second reuses the FID statistics)."""
    from PIL import Image
    from rcdm.data.images import PREPROCESS, adm_center_crop, open_source
    from rcdm.encoders.build import encode, load_encoder
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(torch_home))
    # Speed only: Inception resizes to 107 px here (the smallest its stride pattern takes is 75)
    # instead of 299; test_wrapper_matches_torch_fidelity_extractor covers the real size.
    mp.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 107)
    tmp = tmp_path_factory.mktemp("e2e")
    val = make_image_folder(tmp / "val", n_classes=2, per_class=3, size=(48, 40), seed=1)
    src = open_source(val)
    imgs = [src.load(i) for i in range(len(src))]
    # The store records a 64 px encoder input (RN50 takes any size); evaluate must re-encode
    # with exactly this recorded preprocessing, not the registry's 224 px default.
    pp = dataclasses.replace(PREPROCESS["rcdm"], resize=64, crop=64)
    enc = load_encoder("random-rn50", seed=0, preprocess=pp)
    feats = encode(enc, imgs, enc.preprocess, batch_size=8, both_views=True)  # (6, 2, D)
    store = make_store(
        tmp / "store",
        feats,
        keys=[it.key for it in src.items],
        encoder_info=enc.info(),
        preprocess=enc.preprocess.to_dict(),
    )
    ref = np.asarray(feats[:, 0], np.float32)
    rng = np.random.default_rng(0)
    images, rows = [], []
    for s in range(8):  # two noisy 32 px copies of each of the first 4 reference images
        c = s // 2
        base = adm_center_crop(imgs[c], RES).astype(np.int16)
        images.append(np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8))
        rows.append(
            {"sample": s, "condition": c, "kind": "store", "key": src.items[c].key, "store_index": c, "seed": s}
        )
    ood = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(2)]
    ood_feats = encode(enc, ood, enc.preprocess)  # (2, D)
    for j in range(2):
        images.append(adm_center_crop(ood[j], RES))
        rows.append(
            {
                "sample": 8 + j,
                "condition": 4 + j,
                "kind": "image",
                "key": f"/ood/{j}.png",
                "store_index": None,
                "seed": 8 + j,
            }
        )
    images = np.stack(images)
    conds = np.concatenate([ref[:4], ood_feats]).astype(np.float32)  # (6 conditions, D)
    samples = write_samples(tmp / "samples", images, rows, conds, encoder=enc.info(), unet={"cond": "embed"})
    cfg = cfg_for(
        samples, store, tmp / "eval", fid="on", reference_images=str(val), is_splits=5, fid_method="eigh", batch_size=8
    )
    first = json.loads(evaluate(cfg).read_text())
    second_path = evaluate(cfg)
    yield {
        "tmp": tmp,
        "cfg": cfg,
        "first": first,
        "second": json.loads(second_path.read_text()),
        "enc": enc,
        "images": images,
        "ref": ref,
        "conds": conds[[r["condition"] for r in rows]],
        "out": tmp / "eval",
        "store": store,
        "samples": samples,
    }
    mp.undo()


def _brute_force_ranks(q, ref, cond_index, conds):
    d = np.linalg.norm(q[:, None].astype(np.float64) - ref[None].astype(np.float64), axis=2)
    out = []
    for i, c in enumerate(cond_index):
        if c >= 0:
            out.append(1 + int(np.sum(np.delete(d[i], c) < d[i, c])))
        else:
            out.append(1 + int(np.sum(d[i] < np.linalg.norm(q[i] - conds[i]))))
    return np.array(out)


def test_e2e_outputs_and_rank(e2e):
    from rcdm.encoders.build import encode

    out, m = e2e["out"], e2e["first"]
    for f in (
        "metrics.json",
        "metrics.csv",
        "metrics.md",
        "ranks.npy",
        "rank_in_reference.npy",
        "config.yaml",
        "manifest.json",
    ):
        assert (out / f).is_file(), f
    man = json.loads((out / "manifest.json").read_text())
    from rcdm.utils import sha256_file

    assert man["samples_manifest_sha256"] == sha256_file(e2e["samples"] / "manifest.json")
    assert man["reference_manifest_sha256"] == sha256_file(e2e["store"] / "manifest.json")
    assert man["inception_weights_sha256"] == m["fid"]["weights_sha256"]
    assert Path(man["fid_reference_stats"]).is_file()
    ranks = np.load(out / "ranks.npy")
    inside = np.load(out / "rank_in_reference.npy")
    np.testing.assert_array_equal(inside, [True] * 8 + [False] * 2)
    q = encode(e2e["enc"], e2e["images"], e2e["enc"].preprocess, batch_size=8)
    cond_index = np.array([s // 2 for s in range(8)] + [-1, -1])
    np.testing.assert_array_equal(ranks, _brute_force_ranks(q, e2e["ref"], cond_index, e2e["conds"]))
    r = m["rank"]["in_reference"]
    assert r["n"] == 8 and r["N"] == 6
    assert r["mean_rank"] == pytest.approx(ranks[:8].mean())
    assert r["mrr"] == pytest.approx((1 / ranks[:8]).mean())
    assert r["chance_mean_rank"] == 3.5
    o = m["rank"]["outside_reference"]
    assert o["n"] == 2 and o["N"] == 7 and set(o["by_kind"]) == {"image"}
    assert m["n_samples"] == 10 and m["resolution"] == RES and m["complete"] is True
    assert m["method"] == "RCDM (random-rn50, embed)" and m["sampler"] == "ancestral, 100 steps"


def test_e2e_fid_is_and_cache_reuse(e2e):
    a, b = e2e["first"], e2e["second"]
    assert np.isfinite(a["fid"]["value"]) and a["fid"]["value"] > 0
    assert a["fid"]["reference"]["n"] == 6 and a["fid"]["reference"]["reused_cache"] is False
    assert b["fid"]["reference"]["reused_cache"] is True
    assert b["fid"]["value"] == pytest.approx(a["fid"]["value"], rel=1e-9)
    assert a["is"]["splits"] == 5 and a["is"]["mean"] >= 1.0
    stats = Path(a["fid"]["reference"]["stats"])
    assert stats == e2e["out"].resolve().parent / f"fid-ref-{RES}.npz" and stats.is_file()
    csv_text = (e2e["out"] / "metrics.csv").read_text()
    assert csv_text.startswith("run,method,encoder") and "random-rn50" in csv_text
    assert "Table 1a" in (e2e["out"] / "metrics.md").read_text()


def test_e2e_fid_auto_skips_without_weights(e2e, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    from dataclasses import replace

    cfg = replace(e2e["cfg"], fid="auto", out=str(tmp_path / "eval"))
    m = json.loads(evaluate(cfg).read_text())
    assert m["fid"]["skipped"] is True and INCEPTION_FILENAME in m["fid"]["how_to_enable"]
    assert m["is"]["skipped"] is True
    assert m["rank"]["in_reference"]["mean_rank"] == e2e["first"]["rank"]["in_reference"]["mean_rank"]
    assert "FID and IS skipped" in (tmp_path / "eval" / "metrics.md").read_text()


def test_e2e_table(e2e, tmp_path):
    md = table([str(e2e["out"]), str(e2e["out"])], str(tmp_path / "t"))
    text = md.read_text()
    assert "Table 1a" in text and "Table 1b" in text
    j = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert len(j["table_1a"]) == 2 and j["table_1a"][0]["steps"] == "100"
    assert j["table_1a"][0]["FID"] == f"{e2e['first']['fid']['value']:.2f}"
    assert j["table_1b"][0]["encoder"] == "random-rn50 (trunk)"
    assert (tmp_path / "t" / "manifest.json").is_file()
    assert len((tmp_path / "t" / "metrics.csv").read_text().strip().splitlines()) == 3


def test_match_conditions_uses_key_and_vector(tmp_path):
    from rcdm.analysis.evaluation.ranking import match_conditions
    from rcdm.run.sampleset import read_samples

    samples, store, images, rows, feats = simple_case(tmp_path)
    conds = feats.copy()
    conds[1] += 0.5  # a manipulated vector under a reference key: outside
    rows[2]["key"] = "somewhere/else.png"  # an image that is not in the reference: outside
    rows[3]["key"] = None
    write_samples(samples, images, rows, conds)
    ss = read_samples(samples)
    ref = feats.astype(np.float16).astype(np.float32)  # the store keeps float16
    idx = match_conditions(ss, [f"item_{i:05d}" for i in range(4)], ref)
    np.testing.assert_array_equal(idx, [0, -1, -1, -1])


def test_reference_stats_subset_and_unreadable_images(tmp_path):
    from rcdm.analysis.evaluation.fid import compute_reference_stats

    from tests.synthetic import corrupt_jpeg

    val = make_image_folder(tmp_path / "val", n_classes=2, per_class=3)  # 6 images, 2 classes
    corrupt_jpeg(val / "cls_1" / "img_002.jpg")  # the last one
    seen = []

    def fake_inception(images, batch_size):  # (B, H, W, 3) -> pool (B, 2048): records inputs
        seen.append(images.shape)
        pool = np.repeat(images.reshape(len(images), -1)[:, :8].astype(np.float64), 256, axis=1)
        return pool, np.zeros((len(images), 1008))

    mu, sigma, info = compute_reference_stats(fake_inception, val, RES, limit=3, batch_size=2)
    # Evenly spaced subset 0, 2, 5 of the sorted set (spanning both classes); 5 is unreadable.
    assert info["n"] == 2 and info["n_unreadable"] == 1 and "img_002" in info["unreadable"][0]
    assert all(s[1:] == (RES, RES, 3) for s in seen)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)


def test_missing_reference_images_stop_before_work(tmp_path, use_torch_home):
    samples, store, *_ = simple_case(tmp_path)
    cfg = cfg_for(samples, store, tmp_path / "eval", fid="auto", reference_images=str(tmp_path / "no_such_val"))
    with pytest.raises(FileNotFoundError, match="no_such_val"):
        evaluate(cfg)
    assert not (tmp_path / "eval" / "manifest.json").exists()


def test_missing_encoder_weights_stop_before_output(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 8)).astype(np.float32)
    info = {
        "name": "supervised-rn50",
        "arch": "resnet50",
        "layer": "trunk",
        "dim": 8,
        "weights": str(tmp_path / "gone.pth"),
        "weights_sha256": "0" * 64,
    }
    store = make_store(tmp_path / "store", feats, encoder_info=info)
    rows = [{"sample": i, "condition": i, "kind": "store", "key": f"item_{i:05d}", "seed": i} for i in range(3)]
    images = rng.integers(0, 256, size=(3, RES, RES, 3), dtype=np.uint8)
    samples = write_samples(tmp_path / "samples", images, rows, feats)
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        evaluate(cfg_for(samples, store, tmp_path / "eval"))
    assert not (tmp_path / "eval").exists()
