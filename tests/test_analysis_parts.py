"""The analyses' pure parts: dimension masking, distances, transforms, the report round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from rcdm.analysis.experiments.distances import squared_distances
from rcdm.analysis.experiments.manipulation import active_thresholds, select_dims, selection_check
from rcdm.analysis.experiments.transforms import NAMED, get_transform, parse_transform, seeded_apply
from rcdm.analysis.report import Entry, Figure, Table, read_entry, render, write_entry
from rcdm.viz import save_png


def test_masking_picks_expected_dims():
    """k = 4 neighbours in D = 8; dims 1 and 4 are non-zero in all four, dim 6 in three, dim 2
    in two, dim 7 in one, dims 0, 3, 5 in none."""
    nb = np.zeros((4, 8), np.float32)
    nb[:, 1] = 1.0
    nb[:, 4] = 0.5
    nb[:3, 6] = 2.0
    nb[1:3, 2] = -1.0  # negative values count as active too
    nb[0, 7] = 3.0
    h = np.array([0, 1, 1, 0, 1, 1, 1, 1], np.float32)  # h is active on 1, 2, 4, 5, 6, 7
    assert select_dims(h, nb, m=3, variant="most").tolist() == [1, 4, 6]
    assert select_dims(h, nb, m=4, variant="most").tolist() == [1, 4]
    assert select_dims(h, nb, m=2, variant="most").tolist() == [1, 2, 4, 6]
    # least-common: as many dims as "most", among h's active dims with the fewest active
    # neighbours: 5 (0 neighbours), 7 (1), 2 (2); ties broken by index
    assert select_dims(h, nb, m=3, variant="least").tolist() == [2, 5, 7]
    assert select_dims(h, nb, m=4, variant="least").tolist() == [5, 7]
    with pytest.raises(ValueError, match="variant"):
        select_dims(h, nb, m=3, variant="middle")


def test_dense_representation_selection_is_relative_and_degeneracy_is_detected():
    """A dense, standardised representation: every dimension is non-zero, so the paper's
    "non-zero" rule selects every dimension for both sets (degenerate, and reported so); the
    per-dimension threshold selects what the neighbours share, apart from what they lack."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 32)).astype(np.float32)  # standardised: nothing is zero
    nb = rng.normal(size=(5, 32)).astype(np.float32)
    nb[:, :4] = 3.0  # the neighbours share dims 0-3, far above those dims' usual values
    h = np.full(32, 3.0, np.float32)  # h is high everywhere
    most0, least0 = select_dims(h, nb, 4, "most"), select_dims(h, nb, 4, "least")
    assert len(most0) == 32  # "non-zero": everything
    c0 = selection_check(most0, least0, 32)
    assert c0["degenerate"] and c0["overlap"] == 32 and "100%" in c0["reason"]
    thr = active_thresholds(train)
    assert thr.shape == (32,) and np.allclose(thr, np.quantile(train, 0.75, axis=0))
    most, least = select_dims(h, nb, 5, "most", thr), select_dims(h, nb, 5, "least", thr)
    assert most.tolist() == [0, 1, 2, 3] and len(least) == 4 and not set(most) & set(least)
    c = selection_check(most, least, 32)
    assert not c["degenerate"] and c["overlap"] == 0 and c["fraction_of_dims"] == 4 / 32
    assert "nothing is edited" in selection_check(np.array([], int), np.array([], int), 32)["reason"]


def test_squared_distances_direct():
    rng = np.random.default_rng(0)
    h = rng.normal(size=16).astype(np.float32)
    f = rng.normal(size=(5, 16)).astype(np.float32)
    d = squared_distances(h, f)
    for i in range(5):
        assert d[i] == pytest.approx(sum((float(h[j]) - float(f[i, j])) ** 2 for j in range(16)), rel=1e-9)
    assert squared_distances(h, h[None])[0] == 0.0


def _img(seed: int = 0, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)


def test_named_transforms():
    img = _img()
    for name, t in NAMED.items():
        out = seeded_apply(t, img, 0, name)
        assert isinstance(out, Image.Image) and out.size == img.size, name
    a = np.asarray(img)
    assert np.array_equal(np.asarray(NAMED["hflip"](img)), a[:, ::-1])
    g = np.asarray(NAMED["grayscale"](img))
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    # vshift moves content down: the top quarter is black, the rest is the image shifted
    v = np.asarray(NAMED["vshift"](img))
    assert (v[:10] == 0).all() and np.array_equal(v[10:], a[:-10])
    # colour jitter is random but seeded: same seed same image, another seed another image
    j1 = np.asarray(seeded_apply(NAMED["color-jitter"], img, 0, "x"))
    j2 = np.asarray(seeded_apply(NAMED["color-jitter"], img, 0, "x"))
    j3 = np.asarray(seeded_apply(NAMED["color-jitter"], img, 1, "x"))
    assert np.array_equal(j1, j2) and not np.array_equal(j1, j3)


def test_custom_transform_parsing_is_safe():
    img = _img()
    t = parse_transform("RandomRotation(30)")
    assert seeded_apply(t, img, 0).size == img.size
    t = parse_transform("T.Compose([CenterCrop(20), Resize(size=(40, 48))])")
    assert t(img).size == (48, 40)
    assert get_transform("transforms.RandomHorizontalFlip(p=1.0)")(img).size == img.size
    bad = [
        "__import__('os').system('true')",  # not a transforms class
        "os.system('true')",
        "RandomRotation(degrees=abs(-30))",  # a non-literal argument
        "ToTensor()",  # does not return a PIL image
        "Lambda(print)",
        "RandomRotation(**{'degrees': 3})",
        "RandomRotation(",  # syntax
        "numpy.transforms.RandomRotation(3)",  # wrong module
        "RandomRotation",  # not a call
    ]
    for expr in bad:
        with pytest.raises(ValueError):
            get_transform(expr)
    with pytest.raises(ValueError, match="unknown transform"):
        get_transform("zoom-sideways")


def test_report_round_trip_and_render(tmp_path):
    fig = np.zeros((8, 12, 3), np.uint8)
    fig[:, :6] = 255
    save_png(fig, tmp_path / "exp" / "a.png")
    (tmp_path / "exp" / "exp.json").write_text(json.dumps({"x": 1.5}))
    e = Entry(
        experiment="exp",
        title="An <experiment>",
        description="d",
        figures=[Figure("exp/a.png", "caption & seeds [0]", "ckpt")],
        tables=[Table("t", ["a", "b"], [["r", 0.123456]])],
        numbers="exp/exp.json",
    )
    write_entry(tmp_path, e)
    assert read_entry(tmp_path / "exp" / "entry.json") == e
    skipped = Entry(experiment="dyn", title="Dynamics", skipped="nothing configured")
    page = render([e, skipped], tmp_path, {"seed": 0})
    assert "data:image/png;base64," in page
    assert "An &lt;experiment&gt;" in page and "caption &amp; seeds [0]" in page
    assert "0.1235" in page and "Skipped: nothing configured" in page
    e.figures.append(Figure("exp/missing.png", "c"))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        render([e], tmp_path)


def test_runs_are_named_not_run_in_every_column(tmp_path):
    from rcdm.analysis.experiments.names import checkpoint_label

    run = tmp_path / "demo" / "run"
    (run / "checkpoints" / "step-64").mkdir(parents=True)
    (run / "ema.safetensors").write_bytes(b"")
    (tmp_path / "dino-rn50").mkdir()
    assert checkpoint_label(str(run / "ema.safetensors")) == "demo/run"
    assert checkpoint_label(str(run)) == "demo/run"
    assert checkpoint_label(str(run / "checkpoints" / "step-64")) == "demo/run/checkpoints/step-64"
    assert checkpoint_label(str(tmp_path / "dino-rn50")) == "dino-rn50"


def test_layers_verdict_states_only_what_the_numbers_show():
    """The trunk / head verdict compares pixel MRR (one space for both), and calls the head's
    colour 'dropped' only when its spread is clearly larger (the demo's 0.13 vs 0.16 is not)."""
    from rcdm.analysis.experiments.layers import verdict_of

    def n(mrr, pixels, ratio):
        return {"mrr": mrr, "mrr_pixels": pixels, "colour": {"ratio": ratio}}

    demo = verdict_of(n(0.654, 0.556, 0.133), n(0.369, 0.257, 0.159))
    assert demo.startswith("As in the paper, the head keeps less than the trunk, but its samples' colour varies only")
    assert "pixel MRR 0.556 (trunk) vs 0.257 (head)" in demo
    assert verdict_of(n(0.6, 0.5, 0.1), n(0.3, 0.2, 0.4)).startswith(
        "As in the paper, the head keeps less than the trunk and drops colour"
    )
    # the head ranks higher by its own space but lower by pixels: pixels decide
    assert "keeps less" in verdict_of(n(0.5, 0.5, 0.1), n(0.7, 0.2, 0.1))
    assert verdict_of(n(0.3, 0.2, 0.1), n(0.4, 0.3, 0.1)).startswith("At this scale the numbers do not show")
    # without pixel numbers, the encoder-space MRR
    assert "MRR 0.600 (trunk)" in verdict_of(n(0.6, None, 0.1), n(0.3, None, 0.1))
    assert "missing" in verdict_of({}, n(0.3, 0.2, 0.1))
