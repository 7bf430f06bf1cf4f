"""`rcdm evaluate` end to end on a random-rn50 reference store: the evaluation folder it writes
(every file, the manifest's record, metrics.json's keys the schema's), the ranks against brute
force, FID / IS and the reference statistics cache, and Table 1 over it.

The checks before work are in test_evaluate_checks.py, the folder's contract in test_evaldir.py,
faithfulness in other spaces in test_evaluation_spaces.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from rcdm.analysis import evaluate, table
from rcdm.analysis.evaluation.inception import INCEPTION_FILENAME
from rcdm.run.evaldir import METRICS_KEYS, EvalDir

from tests.evaluation_setup import RES, cfg_for, simple_case, write_samples
from tests.synthetic import make_image_folder
from tests.synthetic_store import make_store


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
    # instead of 299; test_inception.py::test_wrapper_matches_torch_fidelity_extractor covers the real size.
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


# ------------------------------------------------------------------------------- the folder
def test_the_folder_holds_every_file_and_records_its_inputs(e2e):
    from rcdm.utils import sha256_file

    folder, m = EvalDir(e2e["out"]), e2e["first"]
    for f in (
        "metrics.json",
        "metrics.csv",
        "metrics.md",
        "ranks.npy",
        "rank_in_reference.npy",
        "config.yaml",
        "manifest.json",
    ):
        assert (folder.path / f).is_file(), f
    assert folder.finished() and folder.metrics() == e2e["second"]  # the folder holds the last run
    assert list(m) == list(METRICS_KEYS)  # the schema, in its order
    man = json.loads(folder.manifest.read_text())
    assert man["stage"] == "evaluate" and man["files"][0] == "metrics.json"
    assert man["samples_manifest_sha256"] == sha256_file(e2e["samples"] / "manifest.json")
    assert man["reference_manifest_sha256"] == sha256_file(e2e["store"] / "manifest.json")
    assert man["inception_weights_sha256"] == m["fid"]["weights_sha256"]
    assert Path(man["fid_reference_stats"]).is_file()
    assert m["n_samples"] == 10 and m["resolution"] == RES and m["complete"] is True
    assert m["method"] == "RCDM (random-rn50, embed)" and m["sampler"] == "ancestral, 100 steps"


# ------------------------------------------------------------------------------ the ranking
def test_ranks_equal_brute_force_inside_and_outside_the_reference(e2e):
    from rcdm.encoders.build import encode

    folder, m = EvalDir(e2e["out"]), e2e["first"]
    ranks = np.load(folder.ranks_file)
    inside = np.load(folder.rank_in_reference_file)
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


def test_match_conditions_uses_key_and_vector(tmp_path):
    from rcdm.analysis.evaluation.ranking import match_conditions
    from rcdm.run.sampleset import read_samples

    samples, store, images, rows, feats = simple_case(tmp_path, n=4)
    conds = feats.copy()
    conds[1] += 0.5  # a manipulated vector under a reference key: outside
    rows[2]["key"] = "somewhere/else.png"  # an image that is not in the reference: outside
    rows[3]["key"] = None
    write_samples(samples, images, rows, conds)
    ss = read_samples(samples)
    ref = feats.astype(np.float16).astype(np.float32)  # the store keeps float16
    idx = match_conditions(ss, [f"item_{i:05d}" for i in range(4)], ref)
    np.testing.assert_array_equal(idx, [0, -1, -1, -1])


# ------------------------------------------------------------------------------- FID / IS
def test_e2e_fid_is_and_cache_reuse(e2e):
    a, b = e2e["first"], e2e["second"]
    assert np.isfinite(a["fid"]["value"]) and a["fid"]["value"] > 0
    assert a["fid"]["reference"]["n"] == 6 and a["fid"]["reference"]["reused_cache"] is False
    assert b["fid"]["reference"]["reused_cache"] is True
    assert b["fid"]["value"] == pytest.approx(a["fid"]["value"], rel=1e-9)
    assert a["is"]["splits"] == 5 and a["is"]["mean"] >= 1.0
    stats = Path(a["fid"]["reference"]["stats"])
    assert stats == e2e["out"].resolve().parent / f"fid-ref-{RES}.npz" and stats.is_file()
    csv_text = EvalDir(e2e["out"]).csv_file.read_text()
    assert csv_text.startswith("run,method,encoder") and "random-rn50" in csv_text
    assert "Table 1a" in EvalDir(e2e["out"]).markdown_file.read_text()


def test_e2e_fid_auto_skips_without_weights(e2e, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    cfg = dataclasses.replace(e2e["cfg"], fid="auto", out=str(tmp_path / "eval"))
    m = json.loads(evaluate(cfg).read_text())
    assert m["fid"]["skipped"] is True and INCEPTION_FILENAME in m["fid"]["how_to_enable"]
    assert m["is"]["skipped"] is True
    assert m["rank"]["in_reference"]["mean_rank"] == e2e["first"]["rank"]["in_reference"]["mean_rank"]
    assert "FID and IS skipped" in EvalDir(tmp_path / "eval").markdown_file.read_text()


# ------------------------------------------------------------------------------- Table 1
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
