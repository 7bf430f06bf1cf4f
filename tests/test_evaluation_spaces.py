"""Faithfulness beyond the conditioning encoder (metrics.json's ``faithfulness``): the feature
statistics on hand-made cases (top-k, cosine, nearest rows, diversity, precision / recall), and
`rcdm evaluate` end to end with a second encoder's store, a training store (the retrieval
baseline) and the pixel space."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from rcdm.analysis import evaluate
from rcdm.analysis.evaluation import feature_stats as F
from rcdm.analysis.evaluation.metrics import nearest_neighbour_ranks
from rcdm.analysis.evaluation.spaces import space_metrics

from tests.evaluation_setup import RES, cfg_for, write_samples
from tests.synthetic import make_image_folder
from tests.synthetic_store import make_store


# ------------------------------------------------------------------------- feature statistics
def test_second_space_ranks_topk_cosine_by_hand():
    # reference on a line: r_j = (j, 0); each sample's condition and where it lands
    ref = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    q = np.array([[0.1, 0.0], [2.4, 0.0], [3.0, 1.0], [9.0, 0.0]])
    target = np.array([0, 1, 1, 4])
    ranks = nearest_neighbour_ranks(q, ref, target)
    # 0.1 -> row 0 nearest (rank 1); 2.4 -> rows 2, 3 nearer than 1 (rank 3);
    # (3, 1) -> d to row 1 = sqrt(5) ~ 2.24: rows 2 (1.41) and 3 (1.0) nearer (rank 3); 9 -> row 4 (rank 1)
    np.testing.assert_array_equal(ranks, [1, 3, 3, 1])
    acc = F.topk_accuracy(ranks, (1, 5), n_reference=5)
    assert acc == {"top1": 0.5, "chance_top1": 0.2, "top5": 1.0, "chance_top5": 1.0}
    cos = F.cosine_to_targets(np.array([[1.0, 1.0], [0.0, 2.0]]), np.array([[2.0, 0.0], [0.0, 5.0]]), np.array([0, 1]))
    np.testing.assert_allclose(cos, [1 / np.sqrt(2), 1.0])
    m = space_metrics(q, ref, target, groups=np.array([0, 1, 1, 2]), baseline=ref[target])
    assert m["mean_rank"] == pytest.approx(2.0) and m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 3 + 1) / 4)
    assert m["top1"] == 0.5 and m["baseline"]["top1"] == 1.0 and m["baseline"]["mean_rank"] == 1.0
    # diversity: only condition 1 has two samples, |(2.4, 0) - (3, 1)|
    assert m["diversity"]["samples_per_condition"] == pytest.approx(np.hypot(0.6, 1.0))
    assert m["diversity"]["conditions"] == 1


def test_retrieval_baseline_and_diversity_equal_direct_computation():
    rng = np.random.default_rng(0)
    train, conds = rng.normal(size=(300, 7)), rng.normal(size=(25, 7))
    idx, dist = F.nearest_rows(conds, train, block_bytes=4 * 25 * 16)  # many blocks of train rows
    d = np.linalg.norm(conds[:, None] - train[None], axis=-1)
    np.testing.assert_array_equal(idx, d.argmin(1))
    np.testing.assert_allclose(dist, d.min(1), rtol=1e-4)
    x, groups = rng.normal(size=(12, 5)), np.repeat([3, 1, 2], 4)
    direct = [
        np.mean([np.linalg.norm(a - b) for i, a in enumerate(x[groups == g]) for b in x[groups == g][i + 1 :]])
        for g in (1, 2, 3)
    ]
    np.testing.assert_allclose(F.group_diversity(x, groups), direct)
    i, j = F.random_pair_indices(12, 500, seed=1)
    assert (i != j).all()
    assert F.random_pair_distance(x, 500, 1) == pytest.approx(np.linalg.norm(x[i] - x[j], axis=1).mean())


def test_precision_recall_by_hand():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [1.5], [2.5], [100.0]])
    # k=1 radii: real 1 each; fake: 1, 1, 1, 97.5. Precision: 3 of 4 fakes inside a real ball.
    # Recall: every real point is within 1 of a fake (and inside the far fake's huge ball).
    pr = F.precision_recall(real, fake, k=1)
    assert pr["precision"] == 0.75 and pr["recall"] == 1.0


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def second(tmp_path_factory):
    """Reference images encoded by two random ResNets (conditioning seed 0, second seed 1), a
    training store with its images, and 8 samples (2 noisy copies of each of 4 reference images)."""
    from rcdm.data.images import PREPROCESS, adm_center_crop, open_source
    from rcdm.encoders.build import encode, load_encoder

    tmp = tmp_path_factory.mktemp("second")
    pp = dataclasses.replace(PREPROCESS["rcdm"], resize=64, crop=64)
    encs = [load_encoder("random-rn50", seed=s, preprocess=pp) for s in (0, 1)]
    val, train = (
        open_source(make_image_folder(tmp / n, n_classes=2, per_class=3, size=(48, 40), seed=s))
        for n, s in (("val", 1), ("train", 2))
    )
    vimgs, timgs = [val.load(i) for i in range(len(val))], [train.load(i) for i in range(len(train))]

    def store(name, enc, src, imgs):
        feats = encode(enc, imgs, enc.preprocess, batch_size=8, both_views=True)
        source = {"kind": "folder", "root": src.root, "split": name, "key_rule": "synthetic"}
        return make_store(
            tmp / name,
            feats,
            keys=[it.key for it in src.items],
            encoder_info=enc.info(),
            preprocess=enc.preprocess.to_dict(),
            source=source,
        )

    ref, ref2 = store("ref", encs[0], val, vimgs), store("ref2", encs[1], val, vimgs)
    tr = store("trainstore", encs[0], train, timgs)
    rng = np.random.default_rng(0)
    images, rows = [], []
    for s in range(8):
        c = s // 2
        base = adm_center_crop(vimgs[c], RES).astype(np.int16)
        images.append(np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8))
        rows.append(
            {"sample": s, "condition": c, "kind": "store", "key": val.items[c].key, "store_index": c, "seed": s}
        )
    from rcdm.store import FeatureStore

    conds = FeatureStore(ref).features(0)[:4]
    samples = write_samples(
        tmp / "samples", np.stack(images), rows, conds, encoder=encs[0].info(), unet={"cond": "embed"}
    )
    cfg = cfg_for(samples, ref, tmp / "eval", second_references=(str(ref2),), train_store=str(tr), batch_size=8)
    m = json.loads(evaluate(cfg).read_text())
    return {
        "m": m,
        "encs": encs,
        "images": np.stack(images),
        "ref": ref,
        "ref2": ref2,
        "train": tr,
        "timgs": timgs,
        "vimgs": vimgs,
    }


def test_evaluate_ranks_the_conditioning_image_in_pixel_space(second):
    """The pixels space: each sample ranks its conditioning image among the reference images
    (ADM-resized to the samples' resolution) by distance in [0, 1] RGB; no encoder involved."""
    from rcdm.analysis.evaluation.spaces import pixel_space
    from rcdm.data.images import adm_center_crop
    from rcdm.store import FeatureStore

    px = second["m"]["faithfulness"]["spaces"][2]
    assert (px["space"], px["encoder"], px["dim"], px["N"]) == ("pixels", "pixels", 3 * RES * RES, 6)
    ref = np.stack([adm_center_crop(im, RES) for im in second["vimgs"]]).reshape(6, -1) / 255.0
    target = np.arange(8) // 2
    want = nearest_neighbour_ranks(second["images"].reshape(8, -1) / 255.0, ref, target)
    assert px["mean_rank"] == pytest.approx(want.mean()) and px["mean_rank"] < 2  # noisy copies: near rank 1
    assert "baseline" in px and px["baseline"]["n"] == 8
    # far from the conditioning images, the rank falls: the space measures the images, not a constant
    flipped = second["images"][:, ::-1, ::-1].copy()
    far = pixel_space(FeatureStore(second["ref"]), RES, flipped, target, target)
    assert far["mean_rank"] == pytest.approx(
        nearest_neighbour_ranks(flipped.reshape(8, -1) / 255.0, ref, target).mean()
    )
    assert far["mean_rank"] > px["mean_rank"]
    # too many pixels to hold, or images that cannot be read: a note that says so, no number
    import rcdm.analysis.evaluation.spaces as sp

    old, sp.PIXEL_SPACE_BYTES = sp.PIXEL_SPACE_BYTES, 1000
    try:
        assert pixel_space(FeatureStore(second["ref"]), RES, second["images"], target, target).startswith(
            "pixel-space rank not computed: the 6 reference images"
        )
    finally:
        sp.PIXEL_SPACE_BYTES = old


def test_evaluate_reports_second_space_beside_conditioning(second):
    from rcdm.encoders.build import encode
    from rcdm.store import FeatureStore

    f = second["m"]["faithfulness"]
    cond, sec, _ = f["spaces"]
    assert (cond["space"], sec["space"]) == ("conditioning", "second") and sec["store"].endswith("ref2")
    target = np.arange(8) // 2
    ref2 = FeatureStore(second["ref2"]).features(0)
    q2 = encode(second["encs"][1], second["images"], second["encs"][1].preprocess, batch_size=8)
    ranks = nearest_neighbour_ranks(q2, ref2, target)
    assert sec["mean_rank"] == pytest.approx(ranks.mean()) and sec["N"] == 6 and sec["chance_top1"] == 1 / 6
    assert sec["cosine"] == pytest.approx(F.cosine_to_targets(q2, ref2, target).mean(), rel=1e-5)
    # retrieval baseline: the nearest training image to each condition, as the "sample"
    train = FeatureStore(second["train"]).features(0)
    nn = F.nearest_rows(FeatureStore(second["ref"]).features(0)[target], train)[0]
    base_q2 = encode(second["encs"][1], [second["timgs"][i] for i in nn], second["encs"][1].preprocess)
    assert sec["baseline"]["mean_rank"] == pytest.approx(nearest_neighbour_ranks(base_q2, ref2, target).mean())
    assert cond["baseline"]["mean_rank"] == pytest.approx(
        nearest_neighbour_ranks(train[nn], FeatureStore(second["ref"]).features(0), target).mean()
    )
    assert sec["diversity"]["conditions"] == 4 and sec["diversity"]["random_reference_pairs"] > 0
    px = f["pixel_diversity"]
    assert px["samples_per_condition"] > 0 and px["random_reference_pairs"] > 0
    assert set(second["m"]["fd"]) == {"dinov2-vit-b-14"}  # skipped: fid=off


def test_colour_spread_within_against_between():
    """Samples that keep their condition's colour: ratio near 0; samples whose colour is drawn at
    random, whatever the condition: ratio near 1."""
    from rcdm.analysis.evaluation.feature_stats import colour_spread

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 4)
    base = rng.uniform(0, 255, (20, 3))
    kept = np.clip(base[groups] + rng.normal(0, 2, (80, 3)), 0, 255)
    dropped = rng.uniform(0, 255, (80, 3))
    img = lambda c: np.broadcast_to(c[:, None, None, :], (80, 4, 4, 3)).astype(np.uint8)  # noqa: E731
    a, b = colour_spread(img(kept), groups), colour_spread(img(dropped), groups)
    assert a["ratio"] < 0.05 and 0.7 < b["ratio"] < 3 and a["n_conditions"] == 20
    assert abs(a["between"] - base.std(0, ddof=1).mean() / 255) < 0.05
