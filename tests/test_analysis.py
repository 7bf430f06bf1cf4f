"""rcdm analyze: every experiment end to end on tiny synthetic data (random-rn50 on 32 px
images, an untrained tiny UNet). The pure parts are in test_analysis_parts.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rcdm.analysis.report import read_entry

# ---------------------------------------------------------------------------------- end to end

EXPERIMENTS = [
    "invariance",
    "probe",
    "adversarial",
    "manipulation",
    "interpolation",
    "distances",
    "neighbours",
    "class-mean",
    "training-dynamics",
]


def _pp32():
    from rcdm.data.images import Preprocess

    # random-rn50 on 32 px inputs: a real encoder, cheap enough for CPU tests
    return Preprocess(32, 32, "bicubic", (-1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _store(src_dir: Path, out: Path, enc, labels: bool = True) -> tuple[Path, dict]:
    from rcdm.data.images import open_source
    from rcdm.encoders.build import encode

    from tests.synthetic_store import make_store

    src = open_source(src_dir)
    pp = _pp32()
    feats = encode(enc, [src.load(i) for i in range(len(src))], pp, both_views=True)  # (N, 2, D)
    info = {**enc.info(), "preprocess": pp.to_dict()}
    lab = src.labels() if labels else np.full(len(src), -1)
    make_store(
        out,
        feats,
        keys=[it.key for it in src.items],
        labels=lab,
        encoder_info=info,
        preprocess=pp.to_dict(),
        source=src.describe(),
        dtype="float32",
    )
    return out, info


def _checkpoint(path: Path, info: dict, seed: int, cond_dim: int | None = None) -> Path:
    import torch
    from rcdm.model.config import preset
    from rcdm.model.unet import UNetModel
    from rcdm.model.weights import save_weights

    cfg = preset("tiny", cond="embed", cond_dim=cond_dim or int(info["dim"]), model_channels=32, image_size=16)
    torch.manual_seed(seed)
    model = UNetModel(cfg)
    return save_weights(path, model.state_dict(), {"unet": cfg.to_dict(), "encoder": info, "kimg": 0.0})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Image folders, train / val stores of random-rn50 (seed 0), an untrained tiny RCDM on
    them, and a second one on random-rn50 seed 1 (another "checkpoint" of the encoder)."""
    from rcdm.config import AnalyzeConfig
    from rcdm.encoders.build import load_encoder

    from tests.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("analysis")
    train_dir = make_image_folder(root / "img" / "train", n_classes=3, per_class=4, size=(40, 40), seed=0)
    val_dir = make_image_folder(root / "img" / "val", n_classes=3, per_class=2, size=(40, 40), seed=1)
    enc0 = load_encoder("random-rn50", seed=0)
    train, info0 = _store(train_dir, root / "stores" / "train", enc0)
    val, _ = _store(val_dir, root / "stores" / "val", enc0)
    unlabelled, _ = _store(val_dir, root / "stores" / "unlabelled", enc0, labels=False)
    info1 = {**info0, "seed": 1}  # random-rn50 with another seed: another encoder
    ck0 = _checkpoint(root / "runs" / "enc-seed0" / "ema.safetensors", info0, seed=0)
    ck1 = _checkpoint(root / "runs" / "enc-seed1" / "ema.safetensors", info1, seed=1)
    cfg = AnalyzeConfig(
        experiments=tuple(EXPERIMENTS),
        checkpoints=(str(ck0),),
        train_store=str(train),
        val_store=str(val),
        out=str(root / "analysis"),
        n_images=2,
        n_samples=2,
        steps="2",
        batch_size=32,
        transforms=("hflip", "zoom-in"),
        custom_transforms=("RandomRotation(20)",),
        epsilons=(0.0, 0.05, 0.2),
        probe_epochs=60,
        knn_k=4,
        knn_m=3,
        neighbours_k=3,
        n_distance=3,
        interp_steps=3,
        dynamics_checkpoints=(str(ck0), str(ck1)),
        device="cpu",
    )
    from rcdm import viz
    from rcdm.analysis import analyze

    with viz.recording() as labels:  # every label drawn into every figure
        report = analyze(cfg)
    return {
        "root": root,
        "cfg": cfg,
        "report": report,
        "train": train,
        "val": val,
        "labels": labels,
        "unlabelled": unlabelled,
        "ck0": ck0,
        "ck1": ck1,
        "info0": info0,
    }


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_writes_figure_json_and_entry(world, experiment):
    out = Path(world["cfg"].out)
    entry = read_entry(out / experiment / "entry.json")
    numbers = json.loads((out / experiment / f"{experiment}.json").read_text())
    assert entry.numbers == f"{experiment}/{experiment}.json" and numbers
    assert not entry.skipped
    if experiment != "probe":  # probe is a table only
        assert entry.figures
        for fig in entry.figures:
            arr = np.asarray(Image.open(out / fig.path))
            assert arr.ndim == 3 and arr.shape[0] >= 32 and arr.std() > 0
            # every caption states encoder, layer, checkpoint, sampler, steps and seeds
            for word in (
                "Encoder random-rn50",
                "layer trunk",
                "Checkpoint ",
                "Sampler ancestral, 2 steps.",  # Sampler.label(), as every caption
                "Noise seeds [0, 1]",
            ):
                assert word in fig.caption, (word, fig.caption)
    assert entry.tables and all(t.rows for t in entry.tables)
    page = world["report"].read_text()
    assert f'<section id="{experiment}">' in page


@pytest.mark.slow
def test_every_figure_label_fits_whole_words(world):
    """Each label of each figure, as laid out: no line wider than its tile (cut when drawn) and
    no word broken inside ("color-jitt / er", "d(h)=2.01e / +03" before)."""
    from rcdm import viz

    labels = world["labels"]
    texts = {lab.text for lab in labels}
    assert {"original", "hflip", "eps 0"} <= {t.split("\n")[0] for t in texts}, texts  # drawn at all
    problems = [
        p for lab in labels for p in viz.label_problems(lab.text, lab.lines, lab.width, viz.font(lab.font_size))
    ]
    assert not problems, problems


@pytest.mark.slow
def test_adversarial_baseline_and_manipulation_selection(world):
    out = Path(world["cfg"].out)
    adv = json.loads((out / "adversarial" / "adversarial.json").read_text())
    assert adv["epsilons"][0] == 0.0
    for img in adv["images"]:
        base = [a["samples"] for a in img["attack"]][0]
        for a in img["attack"]:
            for ck, s in a["samples"].items():
                assert s["change_over_epsilon_0"] == pytest.approx(s["changed_fraction"] - base[ck]["changed_fraction"])
        assert img["class"].startswith("cls_")  # a class name (the image folder's), not an id
    entry = read_entry(out / "adversarial" / "entry.json")
    assert "baseline" in entry.figures[0].caption and "change over epsilon 0" in entry.tables[1].columns[3]
    man = json.loads((out / "manipulation" / "manipulation.json").read_text())
    for rec in (r for r in man["results"] if "selection" in r):
        sel = rec["selection"]
        assert sel["overlap"] == len(set(rec["dims_most"]) & set(rec["dims_least"]))
        assert sel["degenerate"] == bool(sel["overlap"] or sel["fraction_of_dims"] > 0.5 or not rec["dims_most"])
        assert (rec["key"] in " ".join(man["degenerate"])) == sel["degenerate"]
    assert man["active_quantile"] == 0.75


@pytest.mark.slow
def test_manifest_and_report(world):
    out = Path(world["cfg"].out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["experiments"]) == set(EXPERIMENTS)
    assert manifest["seed"] == 0 and manifest["noise_seeds"] == [0, 1]
    assert str(Path(world["val"]) / "manifest.json") in manifest["upstream"]
    assert (out / "config.yaml").is_file()
    # the manifest is written after the report (the finished marker)
    assert (out / "manifest.json").stat().st_mtime_ns >= world["report"].stat().st_mtime_ns
    page = world["report"].read_text()
    assert page.count("data:image/png;base64,") == sum(
        len(read_entry(out / e / "entry.json").figures) for e in EXPERIMENTS
    )


@pytest.mark.slow
def test_numbers_match_direct_computation(world):
    """distances: the JSON numbers are ||h - f||^2 of the store's features; probe: accuracy of
    a probe on 3 separable-enough classes is recorded; invariance: hflip of a flipped view."""
    from rcdm.store import FeatureStore

    out = Path(world["cfg"].out)
    val, train = FeatureStore(world["val"]), FeatureStore(world["train"])
    vf, tf = val.features(0).astype(np.float64), train.features(0).astype(np.float64)
    d = json.loads((out / "distances" / "distances.json").read_text())
    assert len(d["images"]) == 2
    for rec in d["images"]:
        h = vf[val.index_of(rec["key"])]
        for item in rec["groups"]["random val"] + rec["groups"]["same class"]:
            direct = ((vf[val.index_of(item["name"])] - h) ** 2).sum()
            assert item["squared_distance"] == pytest.approx(direct, rel=1e-5)
        nn = rec["groups"]["train NN"]
        all_d = np.sort(((tf - h) ** 2).sum(1))
        assert [x["squared_distance"] for x in nn] == pytest.approx(all_d[: len(nn)].tolist(), rel=1e-5)
        for item in rec["groups"]["same class"]:
            assert val.labels[val.index_of(item["name"])] == rec["label"]
        assert len(rec["groups"]["multi-crop"]) == 8 and len(rec["groups"]["single aug"]) == 6
    p = json.loads((out / "probe" / "probe.json").read_text())["probes"][0]
    assert p["n_train"] == 12 and p["n_val"] == 6 and 0.0 <= p["val_accuracy"] <= 1.0
    inv = json.loads((out / "invariance" / "invariance.json").read_text())
    for rec in inv["images"]:
        assert set(rec["transforms"]) == {*world["cfg"].transforms, "RandomRotation(20)"}
        hflip = rec["transforms"]["hflip"]["trunk_squared_distance"]
        # the store's view 1 is the flipped encoder input: the same distance, computed directly
        i = val.index_of(rec["key"])
        both = val.features(None)[i].astype(np.float64)
        assert hflip == pytest.approx(((both[1] - both[0]) ** 2).sum(), rel=1e-3, abs=1e-6)
    adv = json.loads((out / "adversarial" / "adversarial.json").read_text())
    for rec in adv["images"]:
        assert [a["epsilon"] for a in rec["attack"]] == [0.0, 0.05, 0.2]
        assert rec["attack"][0]["changed"] is False  # epsilon 0 is the clean image
        # a small FGSM step through the real encoder and the probe raises the probe's loss on the
        # true class (large steps leave the linear regime of a random network: no claim there)
        loss = [a["probe_loss"] for a in rec["attack"]]
        assert loss[1] > loss[0], loss
    dyn = json.loads((out / "training-dynamics" / "training-dynamics.json").read_text())
    assert [c["checkpoint"] for c in dyn["checkpoints"]] == [str(world["ck0"]), str(world["ck1"])]


@pytest.mark.slow
def test_same_command_same_figure(world, tmp_path):
    """Seeds are recorded and reused: re-running gives byte-identical figures."""
    from rcdm.analysis import analyze

    out0 = Path(world["cfg"].out)
    cfg = replace(world["cfg"], experiments=("interpolation",), out=str(tmp_path / "again"))
    analyze(cfg)
    for exp in cfg.experiments:
        for fig in read_entry(out0 / exp / "entry.json").figures:
            assert (tmp_path / "again" / fig.path).read_bytes() == (out0 / fig.path).read_bytes(), fig.path
    # another seed: other images or noise, so another figure
    analyze(replace(cfg, seed=1, out=str(tmp_path / "seed1")))
    fig = read_entry(out0 / "interpolation" / "entry.json").figures[0]
    assert (tmp_path / "seed1" / fig.path).read_bytes() != (out0 / fig.path).read_bytes()


@pytest.mark.slow
def test_skipped_training_dynamics_is_recorded(world, tmp_path):
    from rcdm.analysis import analyze

    cfg = replace(world["cfg"], experiments=("training-dynamics",), dynamics_checkpoints=(), out=str(tmp_path / "skip"))
    page = analyze(cfg).read_text()
    entry = read_entry(tmp_path / "skip" / "training-dynamics" / "entry.json")
    assert entry.skipped and "dynamics_checkpoints" in entry.skipped and not entry.figures
    assert "Skipped: no analyze.dynamics_checkpoints" in page
    assert "data:image/png" not in page


@pytest.mark.slow
def test_inputs_that_do_not_fit_are_rejected(world, tmp_path):
    from rcdm.analysis import analyze

    base = replace(world["cfg"], out=str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="has none of the layers head"):
        analyze(replace(base, experiments=("invariance",), layers=("head",)))
    for exp in ("probe", "adversarial", "class-mean"):
        with pytest.raises(ValueError, match="without a label"):
            analyze(replace(base, experiments=(exp,), train_store=str(world["unlabelled"])))
    bad_ck = _checkpoint(tmp_path / "small" / "ema.safetensors", world["info0"], seed=0, cond_dim=16)
    with pytest.raises(ValueError, match="expects 16-d conditions"):
        analyze(replace(base, experiments=("interpolation",), checkpoints=(str(bad_ck),)))
    with pytest.raises(ValueError, match="unknown experiment"):
        analyze(replace(base, experiments=("invariance", "nope")))
    # a layer one encoder lacks is left out for it, with a note (a random trunk beside a trunk / head pair)
    entry = analyze(replace(base, experiments=("invariance",), layers=("trunk", "head"), n_images=1))
    assert "has no head layer: its movement is not measured" in entry.read_text()
    with pytest.raises(ValueError, match="not an allowed torchvision"):
        analyze(replace(base, experiments=("invariance",), custom_transforms=("eval('1')",)))
    with pytest.raises(ValueError, match="target_class"):
        analyze(replace(base, experiments=("adversarial",), target_class=7))
    # the stores' encoder differs from the checkpoint's: store-based experiments refuse
    with pytest.raises(ValueError, match="must come from a store of the checkpoint's encoder"):
        analyze(replace(base, experiments=("neighbours",), checkpoints=(str(world["ck1"]),)))
    assert not (tmp_path / "bad" / "manifest.json").exists()


@pytest.mark.slow
def test_report_in_browser(world):
    from tests.test_report_browser import check_in_browser, chromium_missing

    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    info = check_in_browser(world["report"])
    assert info["sections"] == len(EXPERIMENTS) and info["images"] > len(EXPERIMENTS)


@pytest.mark.slow
def test_several_checkpoints_side_by_side(world, tmp_path):
    """Two RCDMs on two encoders: image-conditioned experiments show both (the second one's
    conditions come from its own encoder), store-based ones keep the matching one with a note;
    the probe table has a row per store pair."""
    from rcdm.analysis import analyze

    cfg = replace(
        world["cfg"],
        experiments=("interpolation", "neighbours", "probe"),
        checkpoints=(str(world["ck0"]), str(world["ck1"])),
        out=str(tmp_path / "two"),
        probe_train_stores=(str(world["train"]),) * 2,
        probe_val_stores=(str(world["val"]),) * 2,
    )
    page = analyze(cfg).read_text()
    interp = read_entry(tmp_path / "two" / "interpolation" / "entry.json")
    # each figure names its run, the encoder and the layer
    assert [f.title.split(":")[0] for f in interp.figures] == [
        "enc-seed0 (random-rn50 trunk)",
        "enc-seed1 (random-rn50 trunk)",
    ]
    assert str(world["ck1"]) in interp.figures[1].caption
    nb = read_entry(tmp_path / "two" / "neighbours" / "entry.json")
    assert [f.title for f in nb.figures] == ["enc-seed0 (random-rn50 trunk)"]
    assert len(nb.notes) == 1 and "left out" in nb.notes[0] and str(world["ck1"]) in nb.notes[0]
    probe = read_entry(tmp_path / "two" / "probe" / "entry.json")
    assert len(probe.tables[0].rows) == 2 and probe.tables[0].rows[0] == probe.tables[0].rows[1]
    assert page.count('<div class="figs">') == 2


@pytest.mark.slow
def test_checkpoint_without_encoder_uses_the_val_store(world, tmp_path, monkeypatch):
    """Official checkpoints record no encoder: the val store's is used (and said so in captions),
    unless the file's name hints at another encoder."""
    import rcdm.run.models
    import torch
    from rcdm.analysis.experiments.common import Context

    real = rcdm.run.models.load_for_sampling
    hint: dict = {}

    def official(*args, **kwargs):
        model, diffusion, meta = real(*args, **kwargs)
        return model, diffusion, {**meta, "encoder": None, "encoder_hint": dict(hint)}

    monkeypatch.setattr(rcdm.run.models, "load_for_sampling", official)
    ctx = Context(cfg=world["cfg"], out=tmp_path, device=torch.device("cpu"))
    r = ctx.rcdm(str(world["ck0"]))
    assert r.encoder_info == world["info0"]
    assert "not recorded in the checkpoint" in ctx.caption(r, [0], "x")
    hint.update(name="dino", layer="trunk")
    with pytest.raises(ValueError, match="named for encoder dino"):
        Context(cfg=world["cfg"], out=tmp_path, device=torch.device("cpu")).rcdm(str(world["ck0"]))


def test_cached_features_condition_only_a_matching_run(tmp_path):
    """A store's cached features condition an RCDM only when they are what it was trained on:
    stores of random-rn50 with another seed, input size or preprocessing are left out (and
    refused when an experiment needs one), a store made the same way is used."""
    from dataclasses import replace as dc_replace

    import torch
    from rcdm.analysis.experiments.common import RCDM, Context, same_encoder
    from rcdm.config import AnalyzeConfig
    from rcdm.data.images import PREPROCESS
    from rcdm.run.conditioning import Conditioning
    from rcdm.store import FeatureStore

    from tests.synthetic_store import make_store

    info = {
        "name": "random-rn50",
        "arch": "resnet50",
        "layer": "trunk",
        "dim": 2048,
        "weights": None,
        "weights_sha256": None,
        "seed": 0,
    }
    pp = PREPROCESS["rcdm"]
    meta = {"unet": {"cond": "embed", "cond_dim": 2048}, "encoder": info, "preprocess": pp.to_dict()}
    r = RCDM(
        path="runs/a",
        label="a",
        model=None,
        diffusion=None,
        meta=meta,
        encoder_info=info,
        encoder_note="recorded in the checkpoint",
        conditioning=Conditioning.of_run(meta),
        cond_dim=2048,
        image_size=32,
    )
    ctx = Context(cfg=AnalyzeConfig(checkpoints=("runs/a",)), out=tmp_path, device=torch.device("cpu"))
    assert ctx.cached(("rcdm", "runs/a"), lambda: r) is r  # as if loaded: ctx.rcdm("runs/a") is r
    feats = np.random.default_rng(0).standard_normal((3, 2048)).astype(np.float32)
    variants = {
        "same": (info, pp),
        "seed": ({**info, "seed": 1}, pp),
        "size": (info, dc_replace(pp, resize=112, crop=112)),
        "preprocessing": (info, PREPROCESS["imagenet"]),
    }
    for name, (enc, p) in variants.items():
        store = FeatureStore(
            make_store(tmp_path / name, feats, encoder_info=enc, preprocess=p.to_dict(), dtype="float32")
        )
        assert same_encoder(store, r) == (name == "same"), name
        if name == "same":
            assert ctx.store_rcdms(store, "neighbours")[0] == [r]
            np.testing.assert_array_equal(ctx.conditions(r, store, [2, 0]), feats[[2, 0]])
        else:
            ok, notes = ctx.store_rcdms(store, "neighbours", required=False)
            assert ok == [] and "left out" in notes[0]
            with pytest.raises(ValueError, match="must come from a store of the checkpoint's encoder"):
                ctx.store_rcdms(store, "neighbours")
