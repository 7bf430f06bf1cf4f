"""rcdm sample refuses what does not fit: a store of other features (dimension, encoder seed,
input size, preprocessing) and hashes into its manifest exactly the weights it loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.sample_setup import run_cfg, tiny_model
from tests.synthetic_store import make_store


def test_cond_dim_mismatch_is_a_clear_error(ckpt, tmp_path):
    import rcdm.sample

    small = make_store(tmp_path / "d8", np.ones((4, 8), np.float32))
    with pytest.raises(ValueError, match=r"16-d features.*but the store .* \(8-d features\)"):
        rcdm.sample.run(run_cfg(ckpt, small, tmp_path / "x", indices=(0,)))
    assert not (tmp_path / "x" / "manifest.json").exists()


def _multi_rate_run(root: Path) -> Path:
    """A run folder trained with ema_rates (0.9999, 0.999): the run-level ema.safetensors holds
    the first rate, checkpoints/step-0000002 all three weights files (each a different model)."""
    from rcdm.model.weights import save_weights

    models = {name: tiny_model() for name in ("ema-0.9999", "ema-0.999", "model")}
    for i, m in enumerate(models.values()):
        with torch.no_grad():
            for p in m.out.parameters():
                p.add_(0.01 * (i + 1))
    meta = {
        "unet": models["model"].cfg.to_dict(),
        "encoder": None,
        "store_manifest_sha256": None,
        "ema_rates": [0.9999, 0.999],
        "kimg": 0.0,
    }
    step = root / "checkpoints" / "step-0000002"
    for name, m in models.items():
        rate = None if name == "model" else float(name.split("-")[1])
        save_weights(step / f"{name}.safetensors", m.state_dict(), {**meta, "ema_rate": rate})
    (step / "model.json").write_text(json.dumps(meta))
    (step / "state.json").write_text(json.dumps({"step": 2, "nimg": 8}))
    from rcdm.run.rundir import RunDir

    RunDir(root).publish(step)  # ema.safetensors and model.json, as training publishes a checkpoint
    return root


@pytest.mark.parametrize(
    ("where", "ema", "expect"),
    [
        ("step", "auto", "ema-0.9999"),
        ("step", "0.999", "ema-0.999"),
        ("step", "no", "model"),
        ("run", "auto", "ema"),
        ("run", "0.999", "ema-0.999"),
    ],
)
def test_manifest_hashes_the_weights_it_loads(store_dir, tmp_path, where, ema, expect):
    """The sample manifest records (and hashes) exactly the file load_model loads: with several
    EMA rates, a checkpoint folder gives the run's first rate, not the alphabetically first file."""
    import rcdm.sample
    from rcdm.run.models import load_model
    from rcdm.utils import sha256_file

    run = _multi_rate_run(tmp_path / "run")
    ckpt = run / "checkpoints" / "step-0000002" if where == "step" else run
    out = rcdm.sample.run(run_cfg(ckpt, store_dir, tmp_path / "out", indices=(0,), n_per_condition=1, ema=ema))
    man = json.loads((out / "manifest.json").read_text())
    assert Path(man["checkpoint_weights"]).name == f"{expect}.safetensors"
    assert man["checkpoint_sha256"] == sha256_file(man["checkpoint_weights"])
    assert load_model(ckpt, ema=ema)[1]["source"]["path"] == man["checkpoint_weights"]


def test_conditioning_checks():
    from types import SimpleNamespace

    from rcdm.run.conditioning import check_conditioning

    st = SimpleNamespace(dim=2048, path="S", layer="trunk", encoder_info={"name": "dino-rn50", "layer": "trunk"})
    check_conditioning({"unet": {"cond_dim": 2048}, "encoder_hint": {"name": "dino", "layer": "trunk"}}, st)
    with pytest.raises(ValueError, match="named for encoder simclr"):
        check_conditioning({"unet": {"cond_dim": 2048}, "encoder_hint": {"name": "simclr", "layer": "trunk"}}, st)
    with pytest.raises(ValueError, match="encoder 'swav-rn50' vs 'dino-rn50'"):
        check_conditioning({"unet": {"cond_dim": 2048}, "encoder": {"name": "swav-rn50"}}, st)
    with pytest.raises(ValueError, match="unconditional"):
        check_conditioning({"unet": {"cond": "none", "cond_dim": 0}}, st)


RANDOM_RN50 = {
    "name": "random-rn50",
    "arch": "resnet50",
    "layer": "trunk",
    "dim": 2048,
    "weights": None,
    "weights_sha256": None,
    "seed": 0,
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (None, None),
        ({"seed": 1}, "random encoder seed 0 vs 1"),
        ({"crop": 112, "resize": 112}, "input size 224 vs 112"),
        ({"preprocess": "imagenet"}, r"value range \[-1.0, 1.0\] vs \[0.0, 1.0\]"),
    ],
)
def test_store_of_other_features_is_refused(tmp_path, change, message):
    """A run trained on random-rn50 seed 0 features at 224 px with the rcdm preprocessing samples
    from a store made the same way, and refuses one made with another seed, input size or
    preprocessing (each changes h)."""
    from dataclasses import replace as dc_replace

    import rcdm.sample
    from rcdm.data.images import PREPROCESS
    from rcdm.model.weights import save_weights

    m = tiny_model(cond_dim=2048)
    pp = PREPROCESS["rcdm"]
    ckpt = save_weights(
        tmp_path / "ema.safetensors",
        m.state_dict(),
        {"unet": m.cfg.to_dict(), "encoder": RANDOM_RN50, "preprocess": pp.to_dict()},
    )
    info, store_pp = dict(RANDOM_RN50), pp
    change = dict(change or {})
    if "seed" in change:
        info["seed"] = change["seed"]
    if "crop" in change:
        store_pp = dc_replace(pp, crop=change["crop"], resize=change["resize"])
    if "preprocess" in change:
        store_pp = PREPROCESS[change["preprocess"]]
    store = make_store(
        tmp_path / "store", np.ones((2, 2048), np.float32), encoder_info=info, preprocess=store_pp.to_dict()
    )
    cfg = run_cfg(ckpt, store, tmp_path / "out", indices=(0,), n_per_condition=1, steps="2")
    if message is None:
        assert (rcdm.sample.run(cfg) / "manifest.json").exists()
        return
    with pytest.raises(ValueError, match=message) as err:
        rcdm.sample.run(cfg)
    assert "Pass the store extracted with `rcdm extract --encoder random-rn50 --layer trunk`" in str(err.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_sample_set_begun_on_cuda_is_not_resumed_on_a_cpu(ckpt, store_dir, tmp_path):
    """mixed_precision auto is bf16 on CUDA, fp32 on a CPU: the device type and the precision are in
    the fingerprint, so a resume on the other device refuses instead of mixing bf16 and fp32 chunks."""
    import rcdm.sample
    from rcdm.errors import OutputExists
    from rcdm.run.sampleset import SampleSetWriter
    from rcdm.sample.stage import fingerprint, weights_file
    from rcdm.store import FeatureStore

    cfg = run_cfg(ckpt, store_dir, tmp_path / "out", mixed_precision="auto")
    store, wf = FeatureStore(store_dir), weights_file(ckpt)
    on_cuda = fingerprint(cfg, store, wf, torch.device("cuda"))
    assert on_cuda != fingerprint(cfg, store, wf, torch.device("cpu"))
    SampleSetWriter(tmp_path / "out").write_plan({"fingerprint": on_cuda, "n_conditions": 3, "fixed_noise": False})
    with pytest.raises(OutputExists, match="device type and precision"):
        rcdm.sample.run(cfg)
