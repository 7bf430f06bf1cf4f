"""The ViT registry entries (DINOv2 with and without registers, MAE, I-JEPA, CLIP, SigLIP):
each reads a synthetic checkpoint in its method's published layout (tests/synthetic_vit_ckpt.py)
to exactly the features of the module it was made from, every layer; wrong files are clear errors.

Tiny variants (``<arch>-tiny``: 2 blocks, 32-d, the same key names) keep this to seconds on a CPU.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from rcdm.data.images import Preprocess, encoder_input
from rcdm.encoders.build import build_trunk, check_vit_fits, encode, encoder_from_info, load_encoder
from rcdm.encoders.heads import build_head
from rcdm.encoders.registry import REGISTRY, get_spec
from rcdm.encoders.vit import ARCHS, ViT, ViTArch, build_vit, tiny

from tests.synthetic import random_image
from tests.synthetic_vit_ckpt import (
    save_dinov2,
    save_ijepa,
    save_mae,
    save_open_clip,
    save_open_clip_siglip,
    save_timm,
)

VIT_ENTRIES = [n for n, s in REGISTRY.items() if s.is_vit and n != "dino-vits16"]


def tiny_spec(name: str):
    s = get_spec(name)
    head = replace(s.head, dims=(32, 24)) if s.head is not None else None
    return replace(s, arch=s.arch + "-tiny", trunk_dim=32, head=head)


def pp_for(spec, grid: int = 4) -> Preprocess:
    side = grid * spec.patch_size
    return Preprocess(side, side, "bicubic", (0.0, 1.0), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def randomized(arch: str, seed: int = 0) -> ViT:
    """A tiny ViT with every parameter random (layer-scale gammas and norms included)."""
    torch.manual_seed(seed)
    vit = build_vit(arch).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == vit.embed_dim else 0.0))
    return vit


def _writer(name: str):
    fam = get_spec(name).reader
    return {
        "dinov2": lambda p, vit, proj: save_dinov2(p, vit),
        "mae": lambda p, vit, proj: save_mae(p, vit, decoder=True),
        "ijepa": lambda p, vit, proj: save_ijepa(p, vit),
        "clip": lambda p, vit, proj: save_open_clip(p, vit, proj),
        "siglip": lambda p, vit, proj: save_open_clip_siglip(p, vit),
    }[fam]


def _batch(pp: Preprocess, n: int = 2) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.stack([encoder_input(random_image(rng, (90, 70)), pp) for _ in range(n)])


def _reference(vit: ViT, proj, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        for layer in ("cls", "mean", "tokens"):
            vit.output = layer
            out[layer] = vit(x).flatten(1)
        out["trunk"] = out["cls"]
        if proj is not None:
            out["head"] = proj(out["cls"])
    return out


@pytest.mark.parametrize("name", VIT_ENTRIES)
def test_official_layout_loads_to_the_module_features(name, tmp_path):
    spec = tiny_spec(name)
    vit = randomized(spec.arch, seed=len(name))
    proj = build_head(spec.head).eval() if spec.head is not None else None
    path = _writer(name)(tmp_path / "weights.pth", vit, proj[0] if proj is not None else None)
    pp = pp_for(spec)
    x = _batch(pp)
    ref = _reference(vit, proj, x)
    assert set(ref) == set(spec.dims)
    for layer in spec.dims:
        enc = load_encoder(spec, str(path), layer, preprocess=pp)
        with torch.no_grad():
            out = enc(x)
        assert out.shape == (2, enc.dim) and torch.equal(out, ref[layer]), f"{name}/{layer}"
    assert enc.info()["patch_size"] == spec.patch_size


@pytest.mark.parametrize("name", ["siglip-vitb16", "clip-vitb16"])
def test_timm_files_load_too(name, tmp_path):
    spec = tiny_spec(name)
    vit = randomized(spec.arch, seed=3)
    proj = build_head(spec.head).eval() if spec.head is not None else None
    path = save_timm(tmp_path / "model.safetensors", vit, proj[0] if proj is not None else None)
    pp = pp_for(spec)
    x = _batch(pp)
    ref = _reference(vit, proj, x)
    for layer in spec.dims:
        with torch.no_grad():
            assert torch.equal(load_encoder(spec, str(path), layer, preprocess=pp)(x), ref[layer])


def test_tokens_layer_is_the_row_major_grid_and_view_1_is_the_flipped_input(tmp_path):
    """With no blocks and zero position embeddings a token is its own patch's embedding (then
    normalised), so the grid order is visible: view 1's token (r, c) is view 0's (r, W-1-c) of a
    mirrored patch. Shape and manifest fields follow the input size."""
    spec = replace(tiny_spec("dinov2-vits14"), arch="vit_small_patch14_dinov2-tiny")
    vit = randomized(spec.arch)
    with torch.no_grad():
        vit.pos_embed.zero_()
    path = save_dinov2(tmp_path / "w.pth", vit)
    pp = pp_for(spec, grid=3)
    enc = load_encoder(spec, str(path), "tokens", preprocess=pp)
    enc.trunk.blocks = torch.nn.Sequential()  # patch embedding + norm only
    info = enc.info()
    assert enc.dim == 9 * 32 and info["tokens"]["grid"] == [3, 3] and info["tokens"]["dim"] == 32
    imgs = [random_image(np.random.default_rng(i), (60, 50)) for i in range(2)]
    both = encode(enc, imgs, pp, both_views=True)  # (2, 2, 9 * 32)
    assert both.shape == (2, 2, 288)
    g0, g1 = both[:, 0].reshape(2, 3, 3, 32), both[:, 1].reshape(2, 3, 3, 32)
    x = torch.stack([encoder_input(im, pp) for im in imgs])
    p = 14
    with torch.no_grad():  # the patch (r, c) of the flipped input is the flipped patch (r, 2 - c)
        patch = x[:, :, p : 2 * p, 0:p].flip(-1)
        e = enc.trunk.norm(enc.trunk.patch_embed.proj(patch).flatten(1)).numpy()
    np.testing.assert_allclose(g1[:, 1, 2], e, rtol=1e-4, atol=1e-5)
    assert not np.allclose(g0[:, 1, 2], e, atol=1e-3)


def test_wrong_size_file_and_missing_registers_are_named(tmp_path):
    spec = tiny_spec("dinov2-vitl14-reg")
    other = ViT(replace(tiny("vit_large_patch14_reg4_dinov2"), dim=48, heads=2))  # a wider model
    path = save_dinov2(tmp_path / "b.pth", other)
    with pytest.raises(
        ValueError,
        match=r"b\.pth \(DINOv2 backbone with registers\) holds a .*48-d.* but "
        r"encoder dinov2-vitl14-reg is a .*32-d.*pass the dinov2-vitl14-reg weights",
    ):
        load_encoder(spec, str(path), "cls", preprocess=pp_for(spec))
    plain = save_dinov2(tmp_path / "plain.pth", build_vit("vit_large_patch14_dinov2-tiny"))
    with pytest.raises(ValueError, match=r"0 register tokens.*is a .*4 register tokens"):
        load_encoder(spec, str(plain), "cls", preprocess=pp_for(spec))
    # the real sizes (meta tensors): a ViT-B/14 file for the ViT-L/14 entry names the entry that fits
    real = get_spec("dinov2-vitl14")
    with torch.device("meta"):
        large, base = build_trunk(real.arch), build_trunk("vit_base_patch14_dinov2")
    with pytest.raises(
        ValueError,
        match=r"holds a ViT-B/14 \(768-d, 12 blocks.*is a ViT-L/14 \(1024-d, 24 "
        r"blocks.*dinov2_vitl14_pretrain\.pth.*--encoder dinov2-vitb14 for this file",
    ):
        check_vit_fits(large, base.state_dict(), real, "vitb.pth", "DINOv2 backbone")


def test_input_size_not_a_multiple_of_the_patch_is_refused(tmp_path):
    spec = tiny_spec("mae-vitb16")
    path = save_mae(tmp_path / "m.pth", build_vit(spec.arch))
    bad = Preprocess(60, 60, "bicubic", (0.0, 1.0), (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ValueError, match=r"mae-vitb16 cuts 16x16 patches.*got 60: set extract.input_size to 48 or 64"):
        load_encoder(spec, str(path), "tokens", preprocess=bad)


def test_other_layouts_are_refused_with_the_layout_named(tmp_path):
    spec = tiny_spec("ijepa-vith14")
    path = save_mae(tmp_path / "mae.pth", build_vit("vit_base_patch16_mae-tiny"))
    with pytest.raises(ValueError, match=r"not an I-JEPA training checkpoint.*target_encoder.*ijepa-vith14"):
        load_encoder(spec, str(path), "cls", preprocess=pp_for(spec))
    clip = tiny_spec("clip-vitb16")
    with pytest.raises(ValueError, match=r"not an open_clip ViT checkpoint"):
        load_encoder(clip, str(path), "cls", preprocess=pp_for(clip))


def test_tokens_encoder_rebuilds_from_its_info(tmp_path):
    spec = tiny_spec("siglip-vitb16")
    vit = randomized(spec.arch, seed=5)
    path = save_open_clip_siglip(tmp_path / "s.bin", vit)
    enc = load_encoder(spec, str(path), "tokens", preprocess=pp_for(spec))
    info = enc.info()
    again = encoder_from_info(info)
    x = _batch(pp_for(spec))
    with torch.no_grad():
        assert torch.equal(again(x), enc(x)) and again.dim == enc.dim == 16 * 32


def test_every_architecture_has_the_published_shapes():
    expected = {  # (parameters) of the published backbones, as timm counts them
        "vit_small_patch16": 21_665_664,
        "vit_base_patch14_dinov2": 86_579_712,
        "vit_giant_patch14_dinov2": 1_136_479_232,
        "vit_huge_patch14_ijepa": 630_762_240,
    }
    with torch.device("meta"):
        for arch, n in expected.items():
            assert sum(p.numel() for p in build_vit(arch).parameters()) == n, arch
        g = build_vit("vit_giant_patch14_reg4_dinov2").state_dict()
    assert g["pos_embed"].shape == (1, 37 * 37, 1536) and g["reg_token"].shape == (1, 4, 1536)
    assert g["blocks.39.mlp.fc1.weight"].shape == (8192, 1536)  # DINOv2's w12: 2 x 4096
    assert set(ARCHS) >= {s.arch for s in REGISTRY.values() if s.is_vit}
    assert isinstance(ViTArch(14, 32, 1, 2, 56), ViTArch)


def test_dinov2_position_embeddings_follow_its_interpolate_pos_encoding():
    """dinov2/models/vision_transformer.py: without registers, F.interpolate(scale_factor=
    ((w0 + 0.1) / M, (h0 + 0.1) / M)), no antialiasing; the register models: size (w0, h0),
    antialiasing; the CLS entry kept (folded into the token for the register models)."""
    import torch.nn.functional as F

    for arch, offset, aa in (
        ("vit_small_patch14_dinov2-tiny", 0.1, False),
        ("vit_small_patch14_reg4_dinov2-tiny", 0.0, True),
    ):
        vit = randomized(arch)
        m = 4  # the tiny checkpoint grid
        n_pre = 0 if vit.no_embed_class else 1
        grid = vit.pos_embed[:, n_pre:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        kw = {"scale_factor": ((3 + offset) / m, (3 + offset) / m)} if offset else {"size": (3, 3)}
        want = F.interpolate(grid, mode="bicubic", antialias=aa, **kw).permute(0, 2, 3, 1).reshape(1, 9, -1)
        got = vit.pos_embed_for(42, 42)
        assert torch.equal(got[:, n_pre:], want) and torch.equal(got[:, :n_pre], vit.pos_embed[:, :n_pre])
