"""``cond_image``: h mapped linearly to a small image given to the UNet as 3 more input channels,
fitted by ridge regression before training (an rcdm addition, opt-in)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rcdm.errors import InvalidInput
from rcdm.model.config import UNetConfig, config_from_state_dict, preset
from rcdm.model.unet import UNetModel

from tests.train_setup import RES, train_cfg, train_store


def _net(dim: int = 6, r: int = 4, **kw) -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(preset("tiny", cond="embed", cond_dim=dim, image_size=16, cond_image=r, **kw)).eval()


def test_the_map_is_three_more_input_channels_and_read_back_from_weights():
    net = _net()
    assert net.input_blocks[0][0].weight.shape[1] == 6  # the image's 3 + the map's 3
    assert net.cond_image_map.weight.shape == (3 * 4 * 4, 6)
    back = config_from_state_dict(net.state_dict(), image_size=16)
    assert (back.cond_image, back.in_channels) == (4, 3)
    assert UNetConfig.from_dict(net.cfg.to_dict()).cond_image == 4
    x, t, h = torch.randn(2, 3, 16, 16), torch.tensor([10, 900]), torch.randn(2, 6)
    with torch.no_grad():
        net.out[2].weight.normal_()  # ADM zero-initialises the last conv: the output would be 0
        before = net(x, t, h)
        net.cond_image_map.weight.add_(1.0)  # the path is used: changing the map changes the output
        assert not torch.allclose(net(x, t, h), before)
        # the null condition (h = 0) is the map's bias, the same for every sample
        null = torch.ones(2, dtype=torch.bool)
        img = net.cond_image(torch.zeros(2, 6), (16, 16))
        assert torch.allclose(img[0], img[1])
        bias = net.cond_image_map.bias.view(3, 4, 4)
        assert torch.equal(net.cond_image(torch.zeros(1, 6), (4, 4))[0], bias)  # at N x N: no resampling
        assert torch.allclose(net(x, t, h, cond_drop=null), net(x, t, torch.randn(2, 6), cond_drop=null))


@pytest.mark.parametrize("bad", [0, 17])
def test_bad_sizes_are_refused(bad):
    if bad == 0:  # 0 is "off", not an error; with cond "none" a map has nothing to map
        with pytest.raises(InvalidInput, match="cond_image=4 needs a conditioned model"):
            preset("tiny", cond="none", image_size=16, cond_image=4)
    else:
        with pytest.raises(InvalidInput, match="1 <= N <= image_size"):
            preset("tiny", cond="embed", cond_dim=6, image_size=16, cond_image=bad)


class _LinearImages(torch.utils.data.Dataset):
    """Rows whose 16 px image is a linear function of h, as 4 x 4 blocks (uint8)."""

    def __init__(self, n: int = 400, dim: int = 6, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.z = np.clip(rng.standard_normal((n, dim)), -2.5, 2.5)
        self.a, self.b = rng.uniform(-0.05, 0.05, (dim, 48)), rng.uniform(-0.3, 0.3, 48)
        small = (self.z @ self.a + self.b).reshape(n, 3, 4, 4)  # |.| < 0.3 + 6 x 2.5 x 0.05 < 1
        big = small.repeat(4, axis=2).repeat(4, axis=3).transpose(0, 2, 3, 1)  # (n, 16, 16, 3)
        self.pixels = np.round((big + 1) * 127.5).astype(np.uint8)
        self.h = (self.z * 5.0 + 3.0).astype(np.float32)  # raw features: the model standardises them

    def __len__(self):
        return len(self.h)

    def __getitem__(self, item):
        row, flip = item
        assert not flip  # the fit reads view 0, unflipped
        return torch.from_numpy(self.pixels[row]), torch.from_numpy(self.h[row]), row


def test_fit_recovers_a_linear_map_through_the_models_standardisation():
    from rcdm.train.condimage import fit

    data = _LinearImages()
    net = _net(cond_norm="standardize")
    net.cond_norm.set_statistics(torch.from_numpy(data.h))
    said = fit(net, data, seed=0, show=False)
    assert "4x4 map of h" in said and "400 training rows" in said
    with torch.no_grad():
        got = net.cond_image_map(net.cond_vector(torch.from_numpy(data.h[:50]))).numpy()
    want = data.z[:50] @ data.a + data.b
    assert np.abs(got - want).max() < 0.01  # uint8 rounding is 0.004; the ridge shrinks by 0.1%
    assert (want - data.b).std() > 0.05  # what h explains is well above the tolerance


def test_a_store_too_small_or_too_alike_to_fit():
    """One training row (the demo profile on a 1-image store) made the ridge system singular; now
    it is refused naming the minimum, and rows that do not vary get the mean image."""
    from rcdm.train.condimage import MIN_ROWS, fit

    data = _LinearImages(n=1)
    with pytest.raises(InvalidInput, match=rf"needs at least {MIN_ROWS}; the store holds 1: .*train.cond_image=0"):
        fit(_net(), data, seed=0, show=False)
    data = _LinearImages(n=8)
    data.h[:] = data.h[0]  # every row's features alike: no variance, lambda would be 0
    net = _net()
    fit(net, data, seed=0, show=False)
    with torch.no_grad():
        got = net.cond_image_map(net.cond_vector(torch.from_numpy(data.h[:1]))).numpy()
    mean = (data.pixels.astype(np.float64) / 127.5 - 1).reshape(8, 4, 4, 4, 4, 3).mean((0, 2, 4))  # (4, 4, 3)
    assert np.abs(got.reshape(3, 4, 4) - mean.transpose(2, 0, 1)).max() < 1e-4


def test_training_fits_records_and_reloads_the_map(tmp_path, capsys):
    from rcdm.run.models import load_model
    from rcdm.train import run

    store = train_store(tmp_path, per_class=4)
    out = run(train_cfg(store, tmp_path / "run", cond_image=8, kimg=0.016))
    said = capsys.readouterr().out
    assert "cond_image: fitted the 8x8 map of h by ridge regression on 8 training rows" in said
    meta = json.loads((out / "model.json").read_text())
    assert meta["unet"]["cond_image"] == 8
    model, _ = load_model(out)
    assert model.cfg.cond_image == 8 and model.input_blocks[0][0].weight.shape[1] == 6
    x = torch.randn(2, 3, RES, RES)
    assert model(x, torch.tensor([1, 2]), torch.randn(2, model.cfg.cond_dim)).shape == (2, 6, RES, RES)
    # a resumed run does not refit (the map is in the checkpoint), and a model without the map
    # does not start from one that has it
    first, _ = load_model(out, ema="no")
    run(train_cfg(store, out, cond_image=8, kimg=0.032))
    assert "cond_image: fitted" not in capsys.readouterr().out
    # the fitted map stays fixed while the rest trains (raw weights; the EMA follows them)
    resumed, _ = load_model(out, ema="no")
    assert torch.equal(resumed.cond_image_map.weight, first.cond_image_map.weight)
    assert not torch.equal(resumed.input_blocks[0][0].weight, first.input_blocks[0][0].weight)
    with pytest.raises(InvalidInput, match="cond_image"):
        run(train_cfg(store, tmp_path / "other", init_from=str(out)))


def test_evaluate_names_the_map_in_the_method():
    from types import SimpleNamespace

    from rcdm.analysis.evaluation.stage import method_label

    with_map = SimpleNamespace(manifest={"unet": {"cond": "embed", "cond_image": 32}})
    assert method_label(with_map, "random-rn50") == "RCDM (random-rn50, embed + cond_image 32)"
    plain = SimpleNamespace(manifest={"unet": {"cond": "embed", "cond_image": 0}})
    assert method_label(plain, "random-rn50") == "RCDM (random-rn50, embed)"
