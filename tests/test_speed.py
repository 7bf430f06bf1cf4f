"""The speed-by-construction changes keep results: batched step noise, one memory layout, the
``auto`` settings on a CPU, and checkpoint pruning that keeps milestones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rcdm.config import Sampler, Steps
from rcdm.diffusion import generate as G
from rcdm.diffusion.gaussian import create_diffusion
from rcdm.model.unet import UNetModel, preset
from rcdm.speed import auto_workers, resolve_channels_last, resolve_compile
from rcdm.train.data import input_layout, to_model_input


class _Noisy(torch.nn.Module):
    """A stand-in model (the chain's arithmetic is what matters here)."""

    def forward(self, x, t, cond=None):
        return torch.cat([0.1 * x, torch.zeros_like(x)], 1)


@pytest.mark.parametrize("shape", [(3, 16, 16), (3, 5, 5)])
def test_chunked_step_noise_draws_the_same_numbers_on_cpu(shape, monkeypatch):
    """StepNoise (25 steps per generator call) == one draw per step, bit for bit, on the CPU."""
    d = create_diffusion("linear", respacing="30")
    noise = torch.randn(3, *shape)

    def run():
        gens = [torch.Generator().manual_seed(s) for s in (4, 5, 6)]
        return G.sample_loop(_Noisy(), d, None, noise.clone(), Sampler(Steps.parse("30")), generators=gens)

    bank = G.StepNoise([torch.Generator().manual_seed(4)], shape, "cpu", 60)
    assert bank.chunk == (25 if np.prod(shape) % 16 == 0 else 1)
    batched = run()
    monkeypatch.setattr(G, "NOISE_CHUNK", 1)  # the old way: one randn per sample per step
    per_step = run()
    assert torch.equal(batched, per_step)


def test_step_noise_depends_on_each_seed_only():
    a = G.StepNoise([torch.Generator().manual_seed(s) for s in (1, 2, 3)], (3, 8, 8), "cpu", 40)
    b = G.StepNoise([torch.Generator().manual_seed(s) for s in (3, 1)], (3, 8, 8), "cpu", 40)
    for _ in range(40):
        za, zb = a.next(), b.next()
        assert torch.equal(za[0], zb[1]) and torch.equal(za[2], zb[0])


def test_model_input_layout_is_explicit():
    """to_model_input gives the layout asked for; the UNet keeps it (its output's strides)."""
    x = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    nchw, nhwc = to_model_input(x), to_model_input(x, channels_last=True)
    assert nchw.is_contiguous() and nchw.stride() == (768, 256, 16, 1)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and nhwc.stride() == (768, 1, 48, 3)
    assert torch.equal(nchw, nhwc) and torch.equal(nchw, x.permute(0, 3, 1, 2).float() / 127.5 - 1)
    pixels = to_model_input(x, None)  # the CPU path's: the permuted pixels' strides, no copy
    assert pixels.stride() == (768, 1, 48, 3) and torch.equal(pixels, nchw)
    assert input_layout(False, torch.device("cuda")) is False and input_layout(True, torch.device("cuda")) is True
    assert input_layout(True, torch.device("cpu")) is True and input_layout(False, torch.device("cpu")) is None
    net = UNetModel(preset("tiny", cond="embed", cond_dim=4, model_channels=32, image_size=16)).eval()
    t, h = torch.tensor([3, 500]), torch.randn(2, 4)
    with torch.no_grad():
        out = net(nchw, t, h)
        assert out.is_contiguous()
        net.to(memory_format=torch.channels_last)
        out_cl = net(nhwc, t, h)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)


def test_auto_settings_are_plain_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_compile("auto", cpu) is False and resolve_compile("auto", torch.device("cuda")) is True
    assert resolve_channels_last("auto", False, cpu) is False
    assert resolve_channels_last("auto", True, torch.device("cuda")) is True
    assert resolve_channels_last(True, False, cpu) is True
    assert 1 <= auto_workers("auto") <= 16 and auto_workers(3) == 3


def test_prune_keeps_the_newest_and_the_milestones(tmp_path):
    from rcdm.run.rundir import RunDir

    run = RunDir(tmp_path / "run")
    for step in range(1, 11):  # a checkpoint every 300 images; milestones every 1000
        d = run.checkpoints_dir / run.checkpoint_name(step)
        d.mkdir(parents=True)
        (d / RunDir.STATE).write_text(json.dumps({"step": step, "nimg": 300 * step}))
    run.prune(keep=2, milestone_nimg=1000)
    left = [s for s, _ in run.checkpoints()]
    assert left == [4, 7, 9, 10]  # 1200, 2100 (first past 1000, 2000), then the newest two
    run.prune(keep=0)
    assert [s for s, _ in run.checkpoints()] == left
