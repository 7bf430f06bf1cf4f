"""Checkpoint I/O: our safetensors + JSON, run folders, official guided-diffusion .pt files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from rcdm.model.unet import UNetConfig, UNetModel, config_from_state_dict, preset
from rcdm.model.weights import load_state_dict_strict, meta_path, save_weights
from rcdm.run.models import load_model

REFERENCE = Path(__file__).parent / "data" / "adm128_embed2048_state_dict_keys.txt"


def small(cond: str = "embed") -> UNetConfig:
    return preset("tiny", cond=cond, cond_dim=16, model_channels=32, image_size=16)


def random_model(cfg: UNetConfig, seed: int = 0) -> UNetModel:
    torch.manual_seed(seed)
    model = UNetModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def trainer_meta(cfg: UNetConfig) -> dict:
    return {
        "unet": cfg.to_dict(),
        "diffusion": {"schedule": cfg.schedule, "steps": 1000, "learn_sigma": True},
        "encoder": {"name": "dino-rn50", "layer": "trunk", "dim": 16},
        "store_manifest_sha256": "ab" * 32,
        "ema_rates": [0.9999],
        "kimg": 1.5,
    }


@pytest.mark.parametrize("cond", ["embed", "cbn"])
def test_safetensors_round_trip(tmp_path: Path, cond: str) -> None:
    cfg = small(cond)
    model = random_model(cfg)
    meta = {**trainer_meta(cfg), "ema_rate": 0.9999}
    path = save_weights(tmp_path / "w.safetensors", model.state_dict(), meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors", "w.safetensors.json"]
    assert json.loads(meta_path(path).read_text()) == meta
    loaded, got = load_model(path)
    assert same_weights(model, loaded) and loaded.cfg == cfg and not loaded.training
    assert got["encoder"] == meta["encoder"] and got["kimg"] == 1.5
    # the header carries the meta too: the weights file alone is enough
    meta_path(path).unlink()
    loaded2, got2 = load_model(path)
    assert same_weights(model, loaded2) and got2["unet"] == cfg.to_dict()
    x, t, h = torch.randn(1, 3, 16, 16), torch.tensor([7]), torch.randn(1, 16)
    with torch.no_grad():
        # equal weights; only summation order may differ (memory alignment of loaded tensors)
        torch.testing.assert_close(model(x, t, h), loaded(x, t, h), rtol=1e-6, atol=1e-6)


def test_run_directory_and_checkpoint_folder(tmp_path: Path) -> None:
    cfg = small()
    raw, ema_a, ema_b = random_model(cfg, 0), random_model(cfg, 1), random_model(cfg, 2)
    meta = trainer_meta(cfg) | {"ema_rates": [0.999, 0.9999]}
    run = tmp_path / "run"
    save_weights(run / "ema.safetensors", ema_a.state_dict(), meta | {"ema_rate": 0.999})
    (run / "model.json").write_text(json.dumps(meta))
    model, got = load_model(run)
    assert same_weights(model, ema_a)
    assert got["store_manifest_sha256"] == "ab" * 32 and got["ema_rate"] == 0.999

    step = run / "checkpoints" / "step-0000010"
    save_weights(step / "model.safetensors", raw.state_dict(), meta | {"ema_rate": None})
    save_weights(step / "ema-0.999.safetensors", ema_a.state_dict(), meta | {"ema_rate": 0.999})
    save_weights(step / "ema-0.9999.safetensors", ema_b.state_dict(), meta | {"ema_rate": 0.9999})
    (step / "model.json").write_text(json.dumps(meta))
    assert same_weights(load_model(step)[0], ema_a)  # auto: the run's first rate
    assert same_weights(load_model(step, ema=0.9999)[0], ema_b)
    assert same_weights(load_model(step, ema="no")[0], raw)
    with pytest.raises(FileNotFoundError, match="ema=0.5"):
        load_model(step, ema=0.5)
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        load_model(tmp_path / "run" / "checkpoints")


def test_official_pt_round_trip(tmp_path: Path) -> None:
    """A plain guided-diffusion state dict (torch.save of model.state_dict())."""
    cfg = preset("tiny", cond="embed", cond_dim=24)
    model = random_model(cfg)
    path = tmp_path / "rcdm_ema_dino_trunk.pt"
    torch.save(model.state_dict(), path)
    loaded, meta = load_model(path)
    assert loaded.cfg == cfg and same_weights(model, loaded)
    assert meta["unet"] == cfg.to_dict() and meta["encoder"] is None
    assert meta["encoder_hint"] == {"name": "dino", "layer": "trunk"}
    assert meta["source"]["kind"] == "official"


def test_official_adm128_key_set_on_meta() -> None:
    """A state dict with exactly the official 128 px RCDM keys and shapes is understood."""
    sd = {}
    for line in REFERENCE.read_text().splitlines():
        key, shape = line.split(" ", 1)
        sd[key] = torch.empty(tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), device="meta")
    cfg = config_from_state_dict(sd)
    assert cfg == preset("adm128", cond="embed", cond_dim=2048)
    with torch.device("meta"):
        model = UNetModel(cfg)
    load_state_dict_strict(model, sd, assign=True)
    sd.pop("input_blocks.4.0.skip_connection.weight", None)
    sd.pop("output_blocks.3.1.qkv.bias")
    with torch.device("meta"):
        model = UNetModel(cfg)
    with pytest.raises(ValueError, match=r"missing key\(s\): 'output_blocks\.3\.1\.qkv\.bias'"):
        load_state_dict_strict(model, sd, assign=True)


def test_strict_loading_names_bad_keys(tmp_path: Path) -> None:
    cfg = small()
    model = random_model(cfg)
    sd = dict(model.state_dict())
    sd["extra.weight"] = torch.zeros(2)
    sd["out.2.bias"] = torch.zeros(5)
    del sd["ssl_emb.bias"]
    with pytest.raises(ValueError) as err:
        load_state_dict_strict(random_model(cfg, 3), sd)
    msg = str(err.value)
    assert "missing key(s): 'ssl_emb.bias'" in msg and "unexpected key(s): 'extra.weight'" in msg
    assert "'out.2.bias' is [5] in the file, the model needs [6]" in msg
    # another conditioning method is refused, not silently initialised
    with pytest.raises(ValueError, match="cbn_shared.weight"):
        load_state_dict_strict(UNetModel(small("cbn")), model.state_dict())
    # DDP / compile prefixes are accepted
    target = random_model(cfg, 4)
    load_state_dict_strict(target, {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()})
    assert same_weights(target, model)
    # a .pt whose architecture is inferred but has an unexpected key is refused too
    bad = dict(random_model(preset("tiny", cond="none")).state_dict())
    bad["input_blocks.1.0.foo"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"unexpected key\(s\): 'input_blocks\.1\.0\.foo'"):
        load_model(tmp_path / "bad.pt")


def test_pickle_refused_unless_trusted(tmp_path: Path) -> None:
    model = random_model(preset("tiny", cond="none"))
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(ValueError, match="--trust-checkpoint"):
        load_model(path)
    loaded, _ = load_model(path, trust_checkpoint=True)
    assert same_weights(loaded, model)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    model = random_model(small())
    full = tmp_path / "full.pt"
    torch.save(model.state_dict(), full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_model(cut)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_model(tmp_path / "empty.pt")
    st = save_weights(tmp_path / "w.safetensors", model.state_dict(), {"unet": small().to_dict()})
    cut_st = tmp_path / "cut.safetensors"
    cut_st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_model(cut_st)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    torch.save({"a": 1}, tmp_path / "notsd.pt")
    with pytest.raises(ValueError, match="not a model state dict"):
        load_model(tmp_path / "notsd.pt")


def test_save_weights_is_clean(tmp_path: Path) -> None:
    model = random_model(small())
    with pytest.raises(ValueError, match="JSON"):
        save_weights(tmp_path / "w.safetensors", model.state_dict(), {"bad": object()})
    # tensors that are views of one buffer (e.g. a flat parameter store) are saved as copies
    flat = torch.cat([p.detach().flatten() for p in model.state_dict().values()])
    views, i = {}, 0
    for k, v in model.state_dict().items():
        views[k] = flat[i : i + v.numel()].view(v.shape)
        i += v.numel()
    path = save_weights(tmp_path / "w.safetensors", views, {"unet": small().to_dict()})
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]
    loaded, _ = load_model(path)
    assert same_weights(loaded, model)
