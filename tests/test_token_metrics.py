"""rank / MRR for token representations: the token distance (mean over tokens of the squared
distance) and the pooled one (distance of the token means), both computed and both reported."""

from __future__ import annotations

import numpy as np
import pytest
from rcdm.analysis.evaluation import metrics


def test_token_distance_is_the_mean_over_tokens_of_squared_distances():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4 * 5)), rng.standard_normal((3, 4 * 5))
    want = [
        np.mean([np.sum((a[i, 5 * t : 5 * t + 5] - b[i, 5 * t : 5 * t + 5]) ** 2) for t in range(4)]) for i in range(3)
    ]
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


def test_evaluate_reports_token_and_pooled_ranks_for_a_tokens_reference(tmp_path):
    """`rcdm evaluate` against a tokens store (tiny DINOv2): rank / MRR under the token distance
    (the main figures) and under the pooled distance (``pooled``), each as the metrics compute it."""
    import json

    from rcdm.analysis import evaluate
    from rcdm.config import EvaluateConfig
    from rcdm.data.images import adm_center_crop, open_source
    from rcdm.encoders.build import encode, load_encoder

    from tests.evaluation_setup import write_samples
    from tests.synthetic import make_image_folder
    from tests.synthetic_store import make_store
    from tests.synthetic_vit_ckpt import save_dinov2
    from tests.test_vit_encoders import pp_for, randomized, tiny_spec

    spec = tiny_spec("dinov2-vits14")
    weights = save_dinov2(tmp_path / "w.pth", randomized(spec.arch, 4))
    enc = load_encoder(spec, str(weights), "tokens", preprocess=pp_for(spec, grid=2))
    src = open_source(make_image_folder(tmp_path / "val", n_classes=2, per_class=3, size=(48, 40), seed=1))
    imgs = [src.load(i) for i in range(len(src))]
    feats = encode(enc, imgs, enc.preprocess, both_views=True)
    store = make_store(
        tmp_path / "store",
        feats,
        keys=[it.key for it in src.items],
        encoder_info=enc.info(),
        preprocess=enc.preprocess.to_dict(),
    )
    images = np.stack([adm_center_crop(imgs[c], 32) for c in range(4)])
    rows = [
        {"sample": c, "condition": c, "kind": "store", "key": src.items[c].key, "store_index": c, "seed": c}
        for c in range(4)
    ]
    samples = write_samples(
        tmp_path / "samples", images, rows, feats[:4, 0], encoder=enc.info(), unet={"cond": "xattn"}
    )
    cfg = EvaluateConfig(
        samples=str(samples), reference=str(store), out=str(tmp_path / "eval"), fid="off", device="cpu"
    )
    rank = json.loads(evaluate(cfg).read_text())["rank"]
    q = encode(enc, images, enc.preprocess)
    from rcdm.store import FeatureStore

    ref = FeatureStore(store).features(0)
    want = metrics.token_ranks(q, ref, np.arange(4), (4, 32))
    assert rank["distance"] == "mean over tokens of the squared euclidean distance"
    assert rank["in_reference"]["mean_rank"] == pytest.approx(want["tokens"].mean())
    assert rank["pooled"]["in_reference"]["mrr"] == pytest.approx((1.0 / want["pooled"]).mean())
