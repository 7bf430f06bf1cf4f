"""Sampling: per-seed determinism, DDIM, condition building, and `rcdm.sample.run` end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rcdm.config import SampleConfig, Sampler, Steps
from rcdm.diffusion.gaussian import create_diffusion
from rcdm.diffusion.generate import generate, sample_loop
from rcdm.utils import seed_generator

from tests.sample_setup import N_ROWS, D, run_cfg, tiny_model
from tests.synthetic import corrupt_jpeg, random_image
from tests.synthetic_store import make_store


def _conds(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


# ------------------------------------------------------------------------------ generate
def test_sample_depends_on_its_seed_only(model):
    diffusion = create_diffusion("linear", 1000, "4")
    conds, seeds = _conds(4), np.array([10, 11, 12, 13])
    kw = dict(device="cpu", progress=False)
    s4 = Sampler(Steps.parse("4"))
    a = generate(model, diffusion, conds, seeds, s4, batch_size=4, **kw)
    b = generate(model, diffusion, conds, seeds, s4, batch_size=1, **kw)
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # position in the batch and batch companions do not matter either
    perm = [2, 0, 3, 1]
    c = generate(model, diffusion, conds[perm], seeds[perm], s4, batch_size=3, **kw)
    np.testing.assert_array_equal(c, a[perm])
    # and the seed does: same condition, different seeds -> different images
    d = generate(model, diffusion, conds[[0, 0]], np.array([10, 99]), s4, batch_size=2, **kw)
    np.testing.assert_array_equal(d[0], a[0])
    assert np.abs(d[0].astype(int) - d[1].astype(int)).max() > 0


def test_ddim_eta0_ignores_step_noise(model):
    diffusion = create_diffusion("linear", 1000, "ddim4")
    cond = torch.as_tensor(_conds(2))
    noise = torch.randn(2, 3, 32, 32, generator=seed_generator(5))

    def run(eta, gen_seeds):
        gens = [seed_generator(s) for s in gen_seeds]
        return sample_loop(
            model, diffusion, cond, noise.clone(), Sampler(Steps.parse("ddim4"), eta=eta), generators=gens
        )

    # eta = 0: x_0 is a function of x_T alone (the generators' step noise is not used)
    torch.testing.assert_close(run(0.0, [1, 2]), run(0.0, [3, 4]), rtol=0, atol=0)
    # eta > 0 uses it
    assert not torch.equal(run(1.0, [1, 2]), run(1.0, [3, 4]))
    # and generate() with ddim + eta 0 repeats exactly
    ddim4 = Sampler(Steps.parse("ddim4"), eta=0.0)
    g1 = generate(model, diffusion, _conds(2), [7, 8], ddim4, progress=False)
    g2 = generate(model, diffusion, _conds(2), [7, 8], ddim4, progress=False, batch_size=1)
    np.testing.assert_array_equal(g1, g2)


def test_bf16_autocast_path(model):
    diffusion = create_diffusion("linear", 1000, "3")
    kw = dict(device="cpu", progress=False)
    s3 = Sampler(Steps.parse("3"))
    full = generate(model, diffusion, _conds(2), [1, 2], s3, mixed_precision="no", **kw)
    half = generate(model, diffusion, _conds(2), [1, 2], s3, mixed_precision="bf16", **kw)
    assert half.shape == full.shape and half.dtype == np.uint8
    # the UNet runs in bf16, the diffusion maths in fp32: the images stay close
    assert np.abs(half.astype(int) - full.astype(int)).mean() < 8
    with pytest.raises(ValueError, match="mixed_precision"):
        generate(model, diffusion, _conds(1), [1], s3, mixed_precision="int8", **kw)


@pytest.mark.gpu
def test_per_seed_determinism_on_cuda_bf16(model):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    m = tiny_model().cuda()
    diffusion = create_diffusion("linear", 1000, "4")
    conds, seeds = _conds(4), np.array([3, 4, 5, 6])
    kw = dict(device="cuda", progress=False, mixed_precision="bf16")
    a = generate(m, diffusion, conds, seeds, Sampler(Steps.parse("4")), batch_size=4, **kw)
    b = generate(m, diffusion, conds, seeds, Sampler(Steps.parse("4")), batch_size=1, **kw)
    # The noise is identical; cuDNN may pick other conv algorithms for another batch size, so
    # allow last-bit differences that flip a pixel level here and there.
    d = np.abs(a.astype(int) - b.astype(int))
    assert d.max() <= 2 and d.mean() < 0.05


# ---------------------------------------------------------------------------- conditions
@pytest.fixture(scope="module")
def store(store_dir):
    from rcdm.store import FeatureStore

    return FeatureStore(store_dir)


def _cfg(**kw) -> SampleConfig:
    return replace(SampleConfig(checkpoint="unused", out="unused", store="unused"), **kw)


def test_store_conditions(store, capsys):
    from rcdm.sample.conds import build

    feats = store.features(view=0)
    cs = build(_cfg(condition="store", indices=(3, 0), keys=("cls_2/img_005",)), store)
    np.testing.assert_array_equal(cs.vectors, feats[[3, 0, 5]])
    assert [c.store_index for c in cs.conditions] == [3, 0, 5]
    assert [c.key for c in cs.conditions] == ["cls_0/img_003", "cls_0/img_000", "cls_2/img_005"]
    assert all(c.load_image() is not None for c in cs.conditions)  # decoded from the wds store
    sub = build(_cfg(condition="store", subset=5, seed=1), store)
    rows = [c.store_index for c in sub.conditions]
    assert len(set(rows)) == 5
    assert rows == [c.store_index for c in build(_cfg(condition="store", subset=5, seed=1), store).conditions]
    with pytest.raises(ValueError, match="out of range"):
        build(_cfg(condition="store", indices=(N_ROWS,)), store)
    capsys.readouterr()
    assert len(build(_cfg(condition="store", subset=N_ROWS + 5), store).conditions) == N_ROWS
    assert f"--subset {N_ROWS + 5} is more than the {N_ROWS} rows" in capsys.readouterr().err  # said, not silent


def test_interpolate_class_mean_kde_algebra(store):
    from rcdm.sample.conds import build

    feats, labels = store.features(view=0), store.labels
    cs = build(_cfg(condition="interpolate", indices=(1, 4), interp_steps=5), store)
    v = cs.vectors
    assert v.shape == (5, D) and cs.fixed_noise_groups
    np.testing.assert_allclose(v[0], feats[1])
    np.testing.assert_allclose(v[-1], feats[4])
    np.testing.assert_allclose(v[2], (feats[1] + feats[4]) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="exactly 2"):
        build(_cfg(condition="interpolate", indices=(1,)), store)

    cm = build(_cfg(condition="class-mean", labels=(1, 2)), store)
    np.testing.assert_allclose(cm.vectors[0], feats[labels == 1].mean(0), rtol=1e-6)
    assert [c.label for c in cm.conditions] == [1, 2]

    kde = build(_cfg(condition="kde", kde_n=6, kde_sigma=0.01, seed=3), store)
    centres = [c.extra["center"] for c in kde.conditions]
    resid = kde.vectors - feats[centres]
    assert kde.vectors.shape == (6, D) and 0.005 < resid.std() < 0.02

    alg = build(_cfg(condition="algebra", indices=(0, 1, 2)), store)
    np.testing.assert_allclose(alg.vectors[0], feats[0] - feats[1] + feats[2], rtol=1e-6)


def test_manipulation_conditions(store):
    from rcdm.diffusion import conditions as C
    from rcdm.sample.conds import build

    feats = store.features(view=0)
    cs = build(_cfg(condition="manipulate", indices=(2,), knn_k=5, knn_m=3), store)
    assert [c.kind for c in cs.conditions] == ["manipulate-original", "manipulate"]
    # by hand: the 5 nearest other rows, dims non-zero in >= 3 of them, zeroed
    d = ((feats - feats[2]) ** 2).sum(1)
    d[2] = np.inf
    nb = np.argsort(d, kind="stable")[:5]
    dims = np.flatnonzero((feats[nb] != 0).sum(0) >= 3)
    assert cs.conditions[1].extra["dims"] == dims.tolist() and len(dims) > 0
    expect = feats[2].copy()
    expect[dims] = 0
    np.testing.assert_array_equal(cs.vectors[1], expect)
    np.testing.assert_array_equal(cs.vectors[0], feats[2])
    rep = build(_cfg(condition="manipulate", indices=(2, 7), knn_k=5, knn_m=3, manipulate_mode="replace"), store)
    np.testing.assert_array_equal(rep.vectors[1], C.manipulate(feats[2], dims, "replace", feats[7]))
    assert len(rep.conditions) == 2  # the last endpoint is the target, not a query


def test_unreadable_image_is_a_clear_error(store, tmp_path):
    from rcdm.sample.conds import build

    good = tmp_path / "ok.jpg"
    random_image(np.random.default_rng(0)).save(good)
    bad = corrupt_jpeg(tmp_path / "bad.jpg")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.jpg"):
        build(_cfg(condition="images", images=(str(tmp_path),)), store)
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        build(_cfg(condition="images", images=(str(tmp_path / "nothing_here*.png"),)), store)
    assert bad.exists() and Image.open(good).size == (48, 40)


# ----------------------------------------------------------------------------- run (e2e)
@pytest.fixture(scope="module")
def done_run(tmp_path_factory, ckpt, store_dir) -> Path:
    import rcdm.sample

    return rcdm.sample.run(run_cfg(ckpt, store_dir, tmp_path_factory.mktemp("samples") / "s"))


def test_run_end_to_end_outputs(done_run, ckpt, store, store_dir):
    import yaml
    from rcdm import viz
    from rcdm.data.images import adm_center_crop, decode_image
    from rcdm.run.models import load_for_sampling
    from rcdm.utils import sha256_file

    out = done_run
    samples = np.load(out / "samples.npz")["arr_0"]
    assert samples.shape == (6, 32, 32, 3) and samples.dtype == np.uint8
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["sample"] for r in index] == list(range(6))
    assert [r["condition"] for r in index] == [0, 0, 1, 1, 2, 2]
    assert [r["seed"] for r in index] == list(range(6))
    assert [r["store_index"] for r in index] == [0, 0, 5, 5, 7, 7]
    assert index[2]["key"] == "cls_2/img_005" and index[2]["kind"] == "store"
    np.testing.assert_array_equal(np.load(out / "conds.npy"), store.features(view=0)[[0, 5, 7]])
    # sample 3 = (condition 1, seed 3), reproduced on its own from the checkpoint
    three = Sampler(Steps.parse("3"))
    m, diffusion, _ = load_for_sampling(ckpt, three)
    alone = generate(m, diffusion, store.features(view=0)[[5]], [3], three, progress=False)
    np.testing.assert_array_equal(alone[0], samples[3])
    # grid: condition image first, then its samples
    grid = np.asarray(Image.open(out / "grid-000.png"))
    # 32 px samples enlarged 4x (whole pixels), the condition drawn at 128 px, columns labelled,
    # and a title above naming the checkpoint, kimg and sampler
    cond_tiles = [adm_center_crop(decode_image(store.image_bytes(i)), 128) for i in (0, 5, 7)]
    rows = [[cond_tiles[c], viz.enlarge(samples[2 * c], 4), viz.enlarge(samples[2 * c + 1], 4)] for c in range(3)]
    with viz.recording() as labels:
        expect = viz.headed_grid(rows, ["condition", "sample 1", "sample 2"])
    assert [lab.text for lab in labels] == ["condition", "sample 1", "sample 2"]
    assert grid.shape[1] == expect.shape[1] and grid.shape[0] > expect.shape[0]  # the title band
    np.testing.assert_array_equal(grid[-expect.shape[0] :], expect)
    assert (grid[: grid.shape[0] - expect.shape[0]] < 128).any()  # the title is drawn
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["indices"] == [0, 5, 7] and cfg["steps"] == "3"
    man = json.loads((out / "manifest.json").read_text())
    assert man["n_samples"] == 6 and man["n_conditions"] == 3 and man["sampler"]["ddim"] is False
    assert man["store_manifest_sha256"] == store.manifest_sha256
    assert man["checkpoint_sha256"] == sha256_file(ckpt)
    assert man["files"]["samples.npz"] == sha256_file(out / "samples.npz")
    assert not (out / "partial").exists()


def test_run_resumes_finished_chunks(done_run, ckpt, store_dir, tmp_path, monkeypatch):
    import rcdm.diffusion.generate
    import rcdm.sample

    real = rcdm.diffusion.generate.generate
    calls = []

    def failing(*a, **k):
        calls.append(len(a[3]))
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*a, **k)

    cfg = run_cfg(ckpt, store_dir, tmp_path / "s", chunk_size=2)
    monkeypatch.setattr(rcdm.diffusion.generate, "generate", failing)
    with pytest.raises(RuntimeError, match="killed"):
        rcdm.sample.run(cfg)
    assert (tmp_path / "s" / "partial" / "chunk-00000.npy").exists()
    assert not (tmp_path / "s" / "manifest.json").exists()

    calls.clear()
    monkeypatch.setattr(rcdm.diffusion.generate, "generate", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
    out = rcdm.sample.run(cfg)
    assert calls == [2, 2]  # chunk 0 was not recomputed
    # chunking does not change the images: equal to the one-chunk-of-4 run
    np.testing.assert_array_equal(np.load(out / "samples.npz")["arr_0"], np.load(done_run / "samples.npz")["arr_0"])
    calls.clear()
    rcdm.sample.run(cfg)  # finished: nothing to do
    assert calls == []
    with pytest.raises(FileExistsError, match="different configuration"):
        rcdm.sample.run(replace(cfg, seed=5))


def test_run_interpolation_strip_with_fixed_noise(ckpt, store_dir, tmp_path):
    import rcdm.sample

    out = rcdm.sample.run(
        run_cfg(ckpt, store_dir, tmp_path / "i", condition="interpolate", indices=(0, 5), interp_steps=3, ddim=True)
    )
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in index] == [0, 1, 0, 1, 0, 1]  # one noise per column along the path
    assert [r["alpha"] for r in index[::2]] == [0.0, 0.5, 1.0]
    strip = np.asarray(Image.open(out / "interpolation.png"))
    assert strip.shape[0] == 2 * (4 * 32 + 4)  # one strip per sample column: 32 px enlarged 4x, 2 * 2 pad
    assert json.loads((out / "manifest.json").read_text())["sampler"]["ddim"] is True


def test_run_images_encoded_with_the_stores_encoder(tmp_path):
    """Image files are encoded by the store's encoder, rebuilt from its manifest record, with
    exactly the recorded preprocessing."""
    from dataclasses import replace as dc_replace

    import rcdm.sample
    from rcdm.data.images import adm_center_crop
    from rcdm.encoders.build import encode, encoder_from_info, load_encoder
    from rcdm.encoders.registry import get_spec
    from rcdm.model.weights import save_weights

    spec = dc_replace(get_spec("random-rn50"), arch="resnet50-tiny", trunk_dim=2048)
    info = load_encoder(spec, None, "trunk", seed=0).info()
    store_dir = make_store(tmp_path / "store", np.zeros((2, 2048), np.float32), encoder_info=info)
    m = tiny_model(cond_dim=2048)
    ckpt = save_weights(tmp_path / "ema.safetensors", m.state_dict(), {"unet": m.cfg.to_dict(), "encoder": info})
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    pics = [random_image(rng, (50, 40)) for _ in range(2)]
    for i, p in enumerate(pics):
        p.save(folder / f"p{i}.png")
    out = rcdm.sample.run(
        run_cfg(
            ckpt, store_dir, tmp_path / "out", condition="images", images=(str(folder),), indices=(), n_per_condition=1
        )
    )
    enc = encoder_from_info(info)
    expect = encode(enc, pics, enc.preprocess)  # (2, 2048)
    np.testing.assert_allclose(np.load(out / "conds.npy"), expect, rtol=1e-5, atol=1e-6)
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [Path(r["key"]).name for r in index] == ["p0.png", "p1.png"] and index[0]["kind"] == "image"
    grid = np.asarray(Image.open(out / "grid-000.png"))
    y = grid.shape[0] - (2 + 2 * 130) + 2  # the body: 2 rows of 128 px cells under the labels
    np.testing.assert_array_equal(grid[y : y + 128, 2:130], adm_center_crop(pics[0], 128))


@pytest.mark.slow
def test_two_processes_split_the_work_with_identical_samples(done_run, ckpt, store_dir, tmp_path):
    """torchrun with 2 CPU processes: each takes every other chunk; the samples equal the
    single-process run's bit for bit (a sample depends on its seed only)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "go.py"
    cfg = run_cfg(ckpt, store_dir, tmp_path / "mp", chunk_size=2)
    (tmp_path / "cfg.json").write_text(json.dumps(dataclass_dict(cfg)))
    script.write_text(
        "import json, sys, torch, rcdm.sample\nfrom rcdm.config import SampleConfig\n"
        "torch.set_num_threads(1)\n"
        "d = {k: tuple(v) if isinstance(v, list) else v for k, v in json.load(open(sys.argv[1])).items()}\n"
        "rcdm.sample.run(SampleConfig(**d))\n"
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path / "cfg.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    man = json.loads((tmp_path / "mp" / "manifest.json").read_text())
    assert man["num_processes"] == 2
    np.testing.assert_array_equal(
        np.load(tmp_path / "mp" / "samples.npz")["arr_0"], np.load(done_run / "samples.npz")["arr_0"]
    )


def dataclass_dict(cfg: SampleConfig) -> dict:
    from rcdm.config import to_dict

    return to_dict(cfg)


def test_bench_sample_runs_on_cpu_with_tiny(tmp_path, capsys, monkeypatch):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "sample.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as `python bench/sample.py` has it: its `from flops import`
    spec = importlib.util.spec_from_file_location("bench_sample", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    report = mod.main(
        [
            "--presets",
            "tiny",
            "--device",
            "cpu",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--sample-steps",
            "2",
            "--cond-dim",
            "16",
            "--out",
            str(tmp_path / "b.json"),
        ]
    )
    (row,) = report["results"]
    assert row["preset"] == "tiny" and row["image_size"] == 32
    assert row["forwards_per_s"] > 0 and row["images_per_s"] > 0
    assert json.loads((tmp_path / "b.json").read_text()) == report
    assert json.loads(capsys.readouterr().out) == report
