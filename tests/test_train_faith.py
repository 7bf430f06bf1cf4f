"""Faithfulness while training: rank / MRR of held-out conditions logged at each eval_kimg,
deterministic for a seed, skipped when there is no validation store; and train.threads."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from rcdm.data.images import Preprocess, open_source

from tests.synthetic import make_image_folder
from tests.synthetic_store import make_store
from tests.train_setup import read_log, train_cfg, train_store

PP = Preprocess(32, 32, "bicubic", (-1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A val store of a tiny random ResNet (a real encoder the check can rebuild) and a train
    store claiming the same encoder."""
    from rcdm.encoders.build import encode, load_encoder
    from rcdm.encoders.registry import get_spec

    root = tmp_path_factory.mktemp("faith")
    spec = replace(get_spec("random-rn50"), arch="resnet50-tiny")
    enc = load_encoder(spec, seed=0, preprocess=PP)
    src = open_source(make_image_folder(root / "val_img", n_classes=2, per_class=3, size=(40, 40), seed=1))
    feats = encode(enc, [src.load(i) for i in range(len(src))], PP, both_views=True)
    info = enc.info()
    val = make_store(
        root / "val",
        feats,
        keys=[it.key for it in src.items],
        labels=src.labels(),
        encoder_info=info,
        preprocess=PP.to_dict(),
        source=src.describe(),
        dtype="float32",
    )
    train = train_store(root, dim=enc.dim)
    # the train store's manifest names the same encoder as the val store's
    import json

    from rcdm.utils import with_checksum

    m = json.loads((train / "manifest.json").read_text())
    m["encoder"], m["preprocess"] = info, PP.to_dict()
    (train / "manifest.json").write_text(json.dumps(with_checksum(m)))  # as extraction would sign it
    return {"train": train, "val": val, "n_val": len(src)}


def _cfg(stores, out, **kw):
    base = dict(
        val_store=str(stores["val"]),
        eval_conditions=4,
        eval_steps="ddim2",
        eval_kimg=0.016,
        cond_drop=0.25,
        eval_guidance=3.0,
        threads=1,
    )
    base.update(kw)
    return train_cfg(stores["train"], out, **base)


def _faith(run):
    return [r for r in read_log(run) if r.get("event") == "faithfulness"]


def test_check_logs_rank_and_mrr_at_eval_kimg_deterministic(stores, tmp_path, capsys):
    from rcdm.train import run

    a = run(_cfg(stores, tmp_path / "a"))
    assert "faithfulness check: 4 conditions" in capsys.readouterr().out
    recs = _faith(a)
    assert [r["kimg"] for r in recs] == [0.016, 0.032]  # every eval_kimg, the last at the end
    n = stores["n_val"]
    for r in recs:
        for key in ("eval_mrr", "eval_mrr_g3"):  # unguided, and guided: the model has a null condition
            assert 1.0 / n <= r[key] <= 1.0
        assert 1.0 <= r["eval_mean_rank"] <= n and 1.0 <= r["eval_mean_rank_g3"] <= n
        assert r["eval_chance_mean_rank"] == (n + 1) / 2 and r["eval_N"] == n and r["eval_n"] == 4
        assert r["eval_chance_mrr"] == pytest.approx(sum(1 / k for k in range(1, n + 1)) / n)
    b = run(_cfg(stores, tmp_path / "b"))  # same seed: the same numbers
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("eval_sec", "time")} for r in rs]  # noqa: E731
    assert strip(_faith(b)) == strip(recs)
    assert (a / "tb").is_dir()


def test_check_unguided_only_without_null_condition_and_with_checkpoints(stores, tmp_path):
    from rcdm.train import run

    a = run(_cfg(stores, tmp_path / "a", cond_drop=0.0, eval_kimg=0.0))  # 0: with each checkpoint (0.016)
    recs = _faith(a)
    assert [r["kimg"] for r in recs] == [0.016, 0.032]
    assert all("eval_mrr" in r and "eval_mrr_g3" not in r for r in recs)


def test_check_skipped_without_val_store_said_once(stores, tmp_path, capsys):
    from rcdm.errors import MissingInput
    from rcdm.train import run

    a = run(_cfg(stores, tmp_path / "a", val_store=None))
    out = capsys.readouterr().out
    assert out.count("no faithfulness check during training") == 1
    assert _faith(a) == [] and any("loss" in r for r in read_log(a))
    with pytest.raises(MissingInput, match="eval_conditions=0"):
        run(_cfg(stores, tmp_path / "b", val_store=str(tmp_path / "nowhere")))


def test_threads_auto_recorded_in_run_config(stores, tmp_path):
    import yaml
    from rcdm.config import TrainConfig
    from rcdm.speed import auto_workers, usable_cores
    from rcdm.train import run
    from rcdm.train.threads import auto_threads, resolve_threads

    # on a GPU each loader worker keeps a core; on a CPU device torch gets the cores not busy elsewhere
    assert auto_threads(2, cores=2, device="cuda") == 1 and auto_threads(4, cores=16, device="cuda") == 12
    assert auto_threads(1, cores=2, busy=0.0) == 2  # an idle 2-core machine: both cores compute
    assert auto_threads(1, cores=2, busy=9.0) == 1 and auto_threads(1, cores=16, busy=3.4) == 13
    t = resolve_threads(TrainConfig(), busy=0.6)  # train.workers "auto" is fine too
    assert t.threads == max(1, usable_cores() - 1) and "0.6 busy with other processes" in t.origin["threads"]
    g = resolve_threads(TrainConfig(), device="cuda")
    assert g.threads == auto_threads(auto_workers("auto", cap=8), usable_cores(), device="cuda")
    assert f"- {auto_workers('auto', cap=8)} loader workers" in g.origin["threads"]
    a = run(_cfg(stores, tmp_path / "a", threads=0, val_store=None))
    cfg = yaml.safe_load((a / "config.yaml").read_text())
    assert 1 <= cfg["threads"] <= usable_cores()
    assert "auto:" in (a / "config.yaml").read_text()  # its origin is written beside it
    assert np.isfinite([r["loss"] for r in read_log(a) if "loss" in r]).all()


def test_threads_applied_on_a_gpu_too(stores, tmp_path, monkeypatch):
    """train.threads is applied on every device, not only on a CPU (review B #1): a run whose
    accelerator is on CUDA sets torch's threads to the value it records."""
    from types import SimpleNamespace

    import torch
    from rcdm.errors import InvalidInput
    from rcdm.train import loop

    fake = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cuda"), is_main_process=True)
    monkeypatch.setattr(loop, "_accelerator", lambda *a: fake)
    monkeypatch.setattr(loop, "enable_fast_math", lambda device: None)
    applied = []
    monkeypatch.setattr(loop, "apply_threads", applied.append)
    # batch 3 over grad_accum 2 stops the run just after the threads are set, before any CUDA work
    with pytest.raises(InvalidInput, match="not divisible"):
        loop.run(_cfg(stores, tmp_path / "g", threads=3, batch_size=3, grad_accum=2, compile=False))
    assert applied == [3]


def test_curve_plots_several_runs(stores, tmp_path):
    import json

    from click.testing import CliRunner
    from PIL import Image
    from rcdm.app.cli import cli
    from rcdm.train import run

    a = run(_cfg(stores, tmp_path / "a"))
    b = run(_cfg(stores, tmp_path / "b", cond_drop=0.0, seed=1))
    out = tmp_path / "curve"
    r = CliRunner().invoke(cli, ["evaluate", "--curve", str(a), str(b), "--out", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "curve.json").read_text())["runs"]
    assert set(data[0]["series"]) == {"unguided", "guidance 3"} and set(data[1]["series"]) == {"unguided"}
    logged = [x["eval_mrr_g3"] for x in _faith(a)]
    assert data[0]["series"]["guidance 3"]["mrr"] == logged and data[0]["series"]["unguided"]["kimg"] == [0.016, 0.032]
    assert Image.open(out / "curve.png").size[0] > 500
    bad = CliRunner().invoke(cli, ["evaluate", "--curve", str(stores["train"]), "--out", str(out)])
    assert bad.exit_code != 0 and "log.jsonl" in bad.output


def test_recipe_options_train_record_and_sample(stores, tmp_path):
    import json

    from rcdm.errors import InvalidInput
    from rcdm.train import run

    a = run(
        _cfg(
            stores,
            tmp_path / "a",
            prediction="v",
            zero_terminal_snr=True,
            min_snr_gamma=5.0,
            cond="both",
            eval_steps="trailing3",
            eval_guidance_interval=(0.2, 1.0),
        )
    )
    meta = json.loads((a / "model.json").read_text())
    assert meta["diffusion"]["prediction"] == "v" and meta["diffusion"]["zero_terminal_snr"] is True
    assert meta["unet"]["cond"] == "both"
    recs = _faith(a)
    assert len(recs) == 2 and all(np.isfinite([r["eval_mrr"], r["eval_mrr_g3"]]).all() for r in recs)
    paper = json.loads((run(_cfg(stores, tmp_path / "p", val_store=None)) / "model.json").read_text())
    assert "prediction" not in paper["diffusion"] and "zero_terminal_snr" not in paper["diffusion"]
    with pytest.raises(InvalidInput, match="trained with prediction 'v', not 'eps'"):  # no silent switch on resume
        run(_cfg(stores, a, cond="both"))
    with pytest.raises(InvalidInput, match="prediction=v"):
        run(_cfg(stores, tmp_path / "b", zero_terminal_snr=True))
