"""The UNet: exact ADM architectures, guided-diffusion keys, conditioning, attention layouts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rcdm.model.blocks import AttentionBlock, timestep_embedding
from rcdm.model.unet import UNetConfig, UNetModel, config_from_state_dict, count_parameters, preset

REFERENCE = Path(__file__).parent / "data" / "adm128_embed2048_state_dict_keys.txt"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def meta_model(cfg: UNetConfig) -> UNetModel:
    with torch.device("meta"):
        return UNetModel(cfg)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (ADM zero-initialises the residual outputs)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.normal_(0.0, 0.5 / math.sqrt(fan_in))
    return model


def small(cond: str = "embed", **kw) -> UNetConfig:
    """The tiny preset at 16 px with 32 channels: quick CPU checks of the whole network."""
    return preset("tiny", cond=cond, cond_dim=16, model_channels=32, image_size=16, **kw)


@pytest.mark.parametrize(
    "name,count",
    [("adm64", 296_710_086), ("adm128", 422_603_782), ("adm256", 554_912_262)],
)
def test_adm_parameter_counts_embed(name: str, count: int) -> None:
    assert count_parameters(meta_model(preset(name, cond="embed", cond_dim=2048))) == count


def test_adm128_unconditional_count() -> None:
    # the issue: 420,505,606 plus the condition projection
    assert count_parameters(meta_model(preset("adm128", cond="none"))) == 420_505_606


def _read_reference() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in REFERENCE.read_text().splitlines():
        key, shape = line.split(" ", 1)
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def test_adm128_keys_and_shapes_match_reference_in_order() -> None:
    ref = _read_reference()
    # the reference's shapes account for every one of ADM 128's parameters
    assert sum(math.prod(s) for _, s in ref) == 422_603_782
    sd = meta_model(preset("adm128")).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == ref


@pytest.mark.parametrize("name", ["tiny", "adm64", "adm128", "adm256"])
def test_cbn_keys_and_count(name: str) -> None:
    """cbn = embed without ssl_emb, every ResBlock GroupNorm affine-free with gain/bias maps of
    the shared 512-d projection."""
    embed = meta_model(preset(name, cond="embed", cond_dim=2048)).state_dict()
    cbn = meta_model(preset(name, cond="cbn", cond_dim=2048)).state_dict()
    norms = [k[: -len(".weight")] for k in embed if k.endswith(("in_layers.0.weight", "out_layers.0.weight"))]
    expected = {k for k in embed if not k.startswith("ssl_emb.")}
    expected -= {f"{n}.{p}" for n in norms for p in ("weight", "bias")}
    expected |= {f"{n}.{p}.weight" for n in norms for p in ("gain", "bias")}
    expected |= {"cbn_shared.weight", "cbn_shared.bias"}
    assert set(cbn) == expected
    assert tuple(cbn["cbn_shared.weight"].shape) == (512, 2048)
    for n in norms:
        channels = embed[f"{n}.weight"].shape[0]
        assert tuple(cbn[f"{n}.gain.weight"].shape) == (channels, 512)
    n_embed = sum(v.numel() for v in embed.values())
    n_cbn = sum(v.numel() for v in cbn.values())
    extra = sum(2 * 512 * embed[f"{n}.weight"].shape[0] - 2 * embed[f"{n}.weight"].shape[0] for n in norms)
    assert (
        n_cbn
        == n_embed
        - (2048 * 4 * preset(name).model_channels + 4 * preset(name).model_channels)
        + (2048 * 512 + 512)
        + extra
    )


def test_preset_errors_and_overrides() -> None:
    with pytest.raises(ValueError, match="unknown UNet preset"):
        preset("adm512")
    with pytest.raises(ValueError, match="unknown UNetConfig fields"):
        preset("tiny", chanels=3)
    cfg = preset("adm128", image_size=64, dropout=0.1)
    assert cfg.image_size == 64 and cfg.dropout == 0.1 and cfg.attention_resolutions == (32, 16, 8)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="cond"):
        preset("tiny", cond="film")


def test_tiny_is_small() -> None:
    n = count_parameters(meta_model(preset("tiny", cond="none")))
    assert 2_000_000 < n < 6_000_000


@pytest.mark.parametrize("cond", ["embed", "cbn"])
def test_condition_changes_output(cond: str) -> None:
    torch.manual_seed(0)
    model = randomize(UNetModel(small(cond))).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    h = torch.randn(2, 16)
    with torch.no_grad():
        a, b = model(x, t, h), model(x, t, h + 1.0)
        a2 = model(x, t, h)
    assert a.shape == (2, 6, 16, 16)
    assert torch.equal(a, a2)
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()
    with pytest.raises(ValueError, match="cond"):
        model(x, t)
    with pytest.raises(ValueError, match="dimension 8"):
        model(x, t, torch.randn(2, 8))


def rounding_tol(model: torch.nn.Module, out: torch.Tensor) -> float:
    """How far float rounding alone can move an output of ``model``: the dtype's machine epsilon,
    times the output's scale, times the longest dot product in the model (its largest fan-in),
    the worst-case rounding of one reduction. Two evaluations that differ only in reduction
    order (batch size, memory layout, CPU kernel choice) stay within it; a real dependence (batch
    statistics, a wrong layout) moves outputs by a fraction of their scale, far above it."""
    fan_in = max(p[0].numel() for p in model.parameters() if p.ndim >= 2)
    return torch.finfo(out.dtype).eps * out.abs().max().item() * fan_in


@pytest.mark.parametrize("cond", ["embed", "cbn"])
def test_samples_in_a_batch_are_independent(cond: str) -> None:
    """Group statistics: a sample's output does not depend on the rest of the batch."""
    model = randomize(UNetModel(small(cond)), seed=1).eval()
    x, t, h = torch.randn(3, 3, 16, 16), torch.tensor([3, 300, 900]), torch.randn(3, 16)
    with torch.no_grad():
        full = model(x, t, h)
        one = model(x[1:2], t[1:2], h[1:2])
        other = model(x[1:2], t[1:2], h[1:2] + 1.0)
    tol = rounding_tol(model, full)
    torch.testing.assert_close(full[1:2], one, atol=tol, rtol=0)
    assert (other - one).abs().max() > 100 * tol  # the tolerance is far below a real change


def test_channels_last_and_unconditional() -> None:
    model = randomize(UNetModel(small("none")), seed=2).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 999])
    with torch.no_grad():
        ref = model(x, t)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, atol=rounding_tol(model, ref), rtol=0)


def test_timestep_embedding_closed_form() -> None:
    t = torch.tensor([0.0, 7.0, 999.0])
    emb = timestep_embedding(t, 6)
    freqs = torch.tensor([10000 ** (-i / 3) for i in range(3)])
    expect = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb, expect)


def _gd_attention(x, norm, qkv_w, qkv_b, proj_w, proj_b, heads, legacy):
    """guided-diffusion's AttentionBlock: QKVAttentionLegacy / QKVAttention with einsum."""
    b, c, *sp = x.shape
    x = x.reshape(b, c, -1)
    qkv = F.conv1d(norm(x), qkv_w, qkv_b)
    length, ch = qkv.shape[-1], c // heads
    if legacy:
        q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (z.reshape(b * heads, ch, length) for z in qkv.chunk(3, dim=1))
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, length)
    return (x + F.conv1d(a, proj_w, proj_b)).reshape(b, c, *sp)


@pytest.mark.parametrize("legacy", [True, False])
def test_attention_matches_guided_diffusion_layout(legacy: bool) -> None:
    torch.manual_seed(0)
    block = randomize(AttentionBlock(64, num_heads=4, legacy=legacy), seed=3)
    x = torch.randn(2, 64, 4, 4)
    ref = _gd_attention(
        x,
        block.norm,
        block.qkv.weight,
        block.qkv.bias,
        block.proj_out.weight,
        block.proj_out.bias,
        4,
        legacy,
    )
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref, atol=1e-5, rtol=1e-4)
    # the other layout gives another answer: the checkpoint layout matters
    other = _gd_attention(
        x,
        block.norm,
        block.qkv.weight,
        block.qkv.bias,
        block.proj_out.weight,
        block.proj_out.bias,
        4,
        not legacy,
    )
    assert (other - ref).abs().max() > 1e-3


def test_adm64_uses_new_attention_order() -> None:
    assert preset("adm64").use_new_attention_order and not preset("adm128").use_new_attention_order


@pytest.mark.parametrize(
    "cfg",
    [
        preset("adm64"),
        preset("adm128"),
        preset("adm256", cond="none"),
        preset("adm128", cond="cbn", cond_dim=128),
        preset("tiny", cond="cbn", cond_dim=32),
        preset("tiny", resblock_updown=False, use_scale_shift_norm=False, attention_resolutions=(16, 8)),
    ],
    ids=["adm64", "adm128", "adm256-none", "adm128-cbn", "tiny-cbn", "tiny-convresample"],
)
def test_config_from_state_dict_roundtrip(cfg: UNetConfig) -> None:
    sd = meta_model(cfg).state_dict()
    assert config_from_state_dict(sd, image_size=cfg.image_size) == cfg
    if cfg.resblock_updown:  # a known architecture: the size comes from the preset
        assert config_from_state_dict(sd) == cfg


def test_config_from_state_dict_refuses_other_dicts() -> None:
    with pytest.raises(ValueError, match="not a guided-diffusion UNet"):
        config_from_state_dict({"conv1.weight": torch.zeros(1)})


def test_adm_class_conditional_architecture() -> None:
    """ADM's released class-conditional checkpoints carry label_emb (1000 ImageNet classes)."""
    cfg = preset("adm128", cond="none", num_classes=1000)
    model = meta_model(cfg)
    keys = list(model.state_dict())
    assert keys[4:6] == ["label_emb.weight", "input_blocks.0.0.weight"]
    assert count_parameters(model) == 420_505_606 + 1000 * 1024
    assert config_from_state_dict(model.state_dict()) == cfg
    tiny = randomize(UNetModel(small("none", num_classes=3)), seed=6).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 5])
    with torch.no_grad():
        a, b = tiny(x, t, y=torch.tensor([0, 0])), tiny(x, t, y=torch.tensor([0, 2]))
    assert torch.equal(a[0], b[0]) and (a[1] - b[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="class-conditional"):
        tiny(x, t)


@pytest.mark.parametrize("cond", ["embed", "cbn"])
def test_bf16_on_cpu(cond: str) -> None:
    """bf16 autocast and a bf16-converted model agree with float32 to bf16 precision."""
    model = randomize(UNetModel(small(cond)), seed=7).eval()
    x, t, h = torch.randn(2, 3, 16, 16), torch.tensor([1, 500]), torch.randn(2, 16)
    with torch.no_grad():
        ref = model(x, t, h)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, h)
        half = UNetModel(model.cfg).to(torch.bfloat16)
        half.load_state_dict(model.state_dict())
        low2 = half(x.bfloat16(), t, h)
    assert low.dtype == torch.bfloat16 and low2.dtype == torch.bfloat16
    scale = ref.abs().mean().item()
    assert (low.float() - ref).abs().max().item() < 0.1 * scale
    assert (low2.float() - ref).abs().max().item() < 0.1 * scale


def test_traces_as_one_graph() -> None:
    """torch.compile friendliness on CPU: dynamo captures the whole forward with no graph break
    (the eager backend skips code generation, so this stays fast)."""
    model = randomize(UNetModel(small("cbn")), seed=5).eval()
    x, t, h = torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.randn(2, 16)
    with torch.no_grad():
        out = torch.compile(model, backend="eager", fullgraph=True)(x, t, h)
        torch.testing.assert_close(out, model(x, t, h))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("cond", ["embed", "cbn"])
def test_bf16_autocast_and_compile_cuda(cond: str) -> None:
    model = randomize(UNetModel(preset("tiny", cond=cond, cond_dim=16)), seed=4).cuda().eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    t, h = torch.tensor([0, 10, 500, 999], device="cuda"), torch.randn(4, 16, device="cuda")
    with torch.no_grad():
        ref = model(x, t, h)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(x, t, h)
            compiled = torch.compile(model)(x, t, h)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.1)
    torch.testing.assert_close(compiled.float(), low.float(), atol=0.05, rtol=0.05)
    # training step under autocast + compile
    model.train()
    step = torch.compile(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = step(x, t, h).float().square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_cond_standardize_uses_training_statistics_and_round_trips():
    from rcdm.model.unet import UNetModel, config_from_state_dict, preset

    cfg = preset("tiny", cond="embed", cond_dim=8, cond_norm="standardize")
    net = UNetModel(cfg).eval()
    plain = UNetModel(preset("tiny", cond="embed", cond_dim=8)).eval()
    assert {k for k in net.state_dict() if k.startswith("cond_norm.")} == {"cond_norm.mean", "cond_norm.std"}
    assert "cond_norm.mean" not in plain.state_dict()  # official key sets are unchanged by default
    g = torch.Generator().manual_seed(0)
    feats = 100 + 0.1 * torch.randn(64, 8, generator=g)  # a large common part, small variation
    net.cond_norm.set_statistics(feats)
    z = net.cond_norm(feats)
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(8), atol=1e-4, rtol=0)
    # the inferred architecture keeps the normalisation, and the statistics travel with the weights
    again = UNetModel(config_from_state_dict(net.state_dict(), image_size=32))
    again.load_state_dict(net.state_dict())
    x, t = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([10, 500])
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, feats[:2]), net(x, t, feats[:2]))
