"""Encoder registry, checkpoint readers and encode() (rcdm.encoders.build).

Format tests use the real key layouts (tests/synthetic_ckpt.py) on the tiny variants of the
trunks (same key names, fewer and narrower blocks) so they run in seconds; the real ResNet-50
and ViT-S/16 layouts are checked on the meta device.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from rcdm.data.images import Preprocess, encoder_input
from rcdm.encoders.build import build_trunk, encode, encoder_from_info, load_encoder
from rcdm.encoders.heads import build_head
from rcdm.encoders.readers import READERS, UntrustedCheckpoint, read_checkpoint, strict_load
from rcdm.encoders.registry import REGISTRY, describe_registry, get_spec

from tests.synthetic import random_image
from tests.synthetic_ckpt import (
    _VisslTrunk,
    random_modules,
    save_dino,
    save_timm_vit,
    save_torchvision,
    save_vicreg,
    save_vissl,
)

# a small RCDM-style input for the ResNets (64 px keeps the CPU forward fast)
PP64 = Preprocess(64, 64, "bicubic", (-1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "adm")
PP224 = Preprocess(224, 224, "bicubic", (-1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "adm")


def tiny(name: str):
    """The registry entry with the tiny trunk and a narrow head of the same structure."""
    s = get_spec(name)
    vit = s.arch.startswith("vit")
    tdim = 64 if vit else 2048
    head = None
    if s.head is not None:
        head = replace(s.head, dims=(tdim,) + tuple(min(d, 24) for d in s.head.dims[1:]))
    return replace(s, arch="vit_tiny_patch16" if vit else "resnet50-tiny", trunk_dim=tdim, head=head)


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [random_image(rng, (90, 70)) for _ in range(n)]


def _batch(pp, n=3):
    return torch.stack([encoder_input(im, pp) for im in _images(n)])


# (registry name, writer(path, trunk, head), layers the file provides)
CASES = {
    "simclr-rn50 (VISSL)": ("simclr-rn50", lambda p, t, h: save_vissl(p, t, h), ("trunk", "head")),
    "moco-rn50 (VISSL)": ("moco-rn50", lambda p, t, h: save_vissl(p, t, h), ("trunk", "head")),
    "barlow-rn50 (VISSL)": ("barlow-rn50", lambda p, t, h: save_vissl(p, t, h), ("trunk", "head")),
    "supervised-vissl-rn50 (VISSL)": ("supervised-vissl-rn50", lambda p, t, h: save_vissl(p, t, h), ("trunk", "head")),
    "swav-rn50 (VISSL swav_head)": (
        "swav-rn50",
        lambda p, t, h: save_vissl(p, t, h, head_style="swav"),
        ("trunk", "head"),
    ),
    "dino-rn50 (DINO full, DDP teacher)": ("dino-rn50", lambda p, t, h: save_dino(p, t, h), ("trunk", "head")),
    "dino-rn50 (DINO backbone only)": ("dino-rn50", lambda p, t, h: save_dino(p, t), ("trunk",)),
    "vicreg-rn50 (VICReg full)": ("vicreg-rn50", lambda p, t, h: save_vicreg(p, t, h), ("trunk", "head")),
    "vicreg-rn50 (resnet50.pth)": ("vicreg-rn50", lambda p, t, h: save_vicreg(p, t), ("trunk",)),
    "supervised-rn50 (torchvision)": ("supervised-rn50", lambda p, t, h: save_torchvision(p, t, h), ("trunk", "head")),
    "dino-vits16 (timm keys)": ("dino-vits16", lambda p, t, h: save_timm_vit(p, t), ("trunk",)),
    "dino-vits16 (DINO full teacher)": ("dino-vits16", lambda p, t, h: save_dino(p, t, h), ("trunk", "head")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_formats_give_the_module_features(case, tmp_path):
    name, write, layers = CASES[case]
    spec = tiny(name)
    trunk, head = random_modules(spec, seed=3)
    path = write(tmp_path / "weights.pth", trunk, head)
    x = _batch(PP224 if spec.arch.startswith("vit") else PP64)
    with torch.no_grad():
        ref = {"trunk": trunk(x)}
        if head is not None:
            ref["head"] = head(ref["trunk"])
    for layer in layers:
        enc = load_encoder(spec, str(path), layer)
        assert not enc.training and not any(p.requires_grad for p in enc.parameters())
        with torch.no_grad():
            out = enc(x)
        assert out.shape == (3, spec.dims[layer]) and out.dtype == torch.float32
        assert torch.equal(out, ref[layer]), f"{case}: {layer} features differ"
        assert enc.info()["weights_sha256"] is not None
    if "head" not in layers and spec.head is not None:
        with pytest.raises(ValueError, match="no head weights"):
            load_encoder(spec, str(path), "head")


def test_swav_head_is_l2_normalised(tmp_path):
    spec = tiny("swav-rn50")
    trunk, head = random_modules(spec)
    enc = load_encoder(spec, str(save_vissl(tmp_path / "s.torch", trunk, head, "swav")), "head")
    with torch.no_grad():
        out = enc(_batch(PP64))
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_real_architectures_match_the_published_layouts():
    # the full-size trunks and heads, on the meta device: key names and shapes only
    with torch.device("meta"):
        rn50 = build_trunk("resnet50")
        vit = build_trunk("vit_small_patch16")
        simclr_head = build_head(get_spec("simclr-rn50").head)
    assert sum(p.numel() for p in rn50.parameters()) == 23_508_032  # torchvision RN50 minus fc
    vissl = {
        "classy_state_dict": {
            "base_model": {
                "model": {
                    "trunk": _VisslTrunk(rn50).state_dict(),
                    "heads": {
                        "0.clf.0.weight": torch.empty(2048, 2048, device="meta"),
                        "0.clf.0.bias": torch.empty(2048, device="meta"),
                        "1.clf.0.weight": torch.empty(128, 2048, device="meta"),
                        "1.clf.0.bias": torch.empty(128, device="meta"),
                    },
                }
            }
        }
    }
    assert "_feature_blocks.layer4.2.conv3.weight" in vissl["classy_state_dict"]["base_model"]["model"]["trunk"]
    mapped = READERS["vissl-mlp"](vissl, get_spec("simclr-rn50").head, True)
    strict_load(rn50, mapped.trunk, "vissl trunk", mapped.unexpected)
    strict_load(simclr_head, mapped.head, "vissl head")
    # DINO / timm ViT-S/16 names and shapes
    sd = vit.state_dict()
    expected = {
        "cls_token": (1, 1, 384),
        "pos_embed": (1, 197, 384),
        "patch_embed.proj.weight": (384, 3, 16, 16),
        "blocks.11.attn.qkv.weight": (1152, 384),
        "blocks.11.attn.proj.weight": (384, 384),
        "blocks.11.mlp.fc1.weight": (1536, 384),
        "blocks.11.mlp.fc2.weight": (384, 1536),
        "blocks.11.norm1.weight": (384,),
        "norm.bias": (384,),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert sum(p.numel() for p in vit.parameters()) == 21_665_664  # DINO ViT-S/16 backbone


def test_view_1_is_the_flipped_input():
    spec = tiny("random-rn50")
    enc = load_encoder(spec, seed=1)
    imgs = _images(3)
    both = encode(enc, imgs, PP64, batch_size=2, both_views=True)
    assert both.shape == (3, 2, 2048) and both.dtype == np.float32
    x = _batch(PP64)
    with torch.no_grad():
        orig, flipped = enc(x).numpy(), enc(x.flip(3)).numpy()
    np.testing.assert_allclose(both[:, 0], orig, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both[:, 1], flipped, rtol=1e-5, atol=1e-5)
    assert not np.allclose(both[:, 0], both[:, 1])  # the flip changes the features
    # the flipped *image* gives the same view 1 when its crop is symmetric (even margins)
    sym = [im.resize((96, 64)) for im in imgs]
    f_img = encode(enc, [im.transpose(Image.FLIP_LEFT_RIGHT) for im in sym], PP64)
    np.testing.assert_allclose(encode(enc, sym, PP64, both_views=True)[:, 1], f_img, atol=1e-4)
    # uint8 arrays work like PIL images
    arr = np.stack([np.asarray(im) for im in imgs])
    np.testing.assert_allclose(encode(enc, arr, PP64), orig, rtol=1e-5, atol=1e-5)


def _vissl_file(tmp_path, edit=None):
    spec = tiny("simclr-rn50")
    trunk, head = random_modules(spec)
    path = save_vissl(tmp_path / "w.torch", trunk, head)
    if edit is not None:
        ckpt = torch.load(path, weights_only=True)
        edit(ckpt["classy_state_dict"]["base_model"]["model"])
        torch.save(ckpt, path)
    return spec, path


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    spec, path = _vissl_file(tmp_path, lambda m: m["trunk"].pop("_feature_blocks.layer2.0.bn1.weight"))
    with pytest.raises(ValueError, match=r"missing key.*'layer2\.0\.bn1\.weight'"):
        load_encoder(spec, str(path))

    def add(m):
        m["trunk"]["_feature_blocks.layer9.weight"] = torch.zeros(1)
        m["trunk"]["stray.weight"] = torch.zeros(1)

    spec, path = _vissl_file(tmp_path, add)
    with pytest.raises(ValueError, match=r"2 unexpected key") as e:
        load_encoder(spec, str(path))
    assert "'layer9.weight'" in str(e.value) and "'stray.weight'" in str(e.value)

    def reshape(m):
        m["trunk"]["_feature_blocks.conv1.weight"] = torch.zeros(64, 3, 5, 5)

    spec, path = _vissl_file(tmp_path, reshape)
    with pytest.raises(
        ValueError, match=r"'conv1\.weight' is \[64, 3, 5, 5\] in the file, the model needs \[64, 3, 7, 7\]"
    ):
        load_encoder(spec, str(path))

    spec, path = _vissl_file(tmp_path, lambda m: m["heads"].pop("1.clf.0.bias"))
    load_encoder(spec, str(path), "trunk")  # the trunk alone is fine
    with pytest.raises(ValueError, match=r"head does not match.*'2\.bias'"):
        load_encoder(spec, str(path), "head")


def test_wrong_format_and_architecture(tmp_path):
    vit_spec = tiny("dino-vits16")
    vit, _ = random_modules(vit_spec, head=False)
    vit_file = save_timm_vit(tmp_path / "vit.pth", vit)
    with pytest.raises(ValueError, match=r"vit\.pth.*not a VISSL checkpoint.*simclr-rn50"):
        load_encoder(tiny("simclr-rn50"), str(vit_file))
    with pytest.raises(ValueError, match=r"vit\.pth.*missing key.*'conv1\.weight'.*unexpected key.*'cls_token'"):
        load_encoder(tiny("supervised-rn50"), str(vit_file))


class _Opaque:  # an arbitrary Python object: loading it needs pickle
    def __init__(self):
        self.x = 1


def test_pickle_is_refused_unless_trusted(tmp_path):
    spec = tiny("supervised-rn50")
    trunk, head = random_modules(spec)
    path = save_torchvision(tmp_path / "tv.pth", trunk, head)
    sd_obj = dict(torch.load(path, weights_only=True))
    sd_obj["extra_state"] = _Opaque()
    pickled = tmp_path / "pickled.pth"
    torch.save(sd_obj, pickled)
    with pytest.raises(UntrustedCheckpoint, match="--trust-checkpoint"):
        read_checkpoint(pickled)
    assert isinstance(read_checkpoint(pickled, trust_checkpoint=True)["extra_state"], _Opaque)
    # trusted, it loads; the object itself is then an unexpected key, named
    with pytest.raises(ValueError, match="'extra_state'"):
        load_encoder(spec, str(pickled), trust_checkpoint=True)


def test_truncated_missing_and_garbage_files(tmp_path):
    spec = tiny("supervised-rn50")
    trunk, head = random_modules(spec)
    path = save_torchvision(tmp_path / "tv.pth", trunk, head)
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pth is truncated or not a PyTorch checkpoint"):
        load_encoder(spec, str(cut))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(ValueError, match=r"junk\.pth is truncated or not a PyTorch checkpoint"):
        read_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_encoder(spec, str(tmp_path / "nowhere.pth"))
    # safetensors files are read too (the safe format needs no pickle at all)
    from safetensors.torch import save_file

    st = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in torch.load(path, weights_only=True).items()}, st)
    x = _batch(PP64, 2)
    with torch.no_grad():
        assert torch.equal(load_encoder(spec, str(st))(x), load_encoder(spec, str(path))(x))
    st_cut = tmp_path / "cut.safetensors"
    st_cut.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cut\.safetensors is not a readable safetensors file"):
        read_checkpoint(st_cut)
    # no weights given: the error names the public URL and the download flag; nothing downloads
    with pytest.raises(FileNotFoundError, match=r"resnet50-0676ba61\.pth.*--allow-download"):
        load_encoder("supervised-rn50")


def test_unknown_encoder_and_layer():
    with pytest.raises(ValueError) as e:
        get_spec("simclr-vit")
    for name in ("simclr-rn50", "dino-vits16", "random-rn50", "supervised-vissl-rn50"):
        assert name in str(e.value)
    with pytest.raises(ValueError, match="has no layer 'head'"):
        load_encoder("random-rn50", layer="head")
    with pytest.raises(ValueError, match="takes no weights"):
        load_encoder("random-rn50", weights="x.pth")


def test_registry_contents():
    assert set(REGISTRY) == {
        "simclr-rn50",
        "swav-rn50",
        "barlow-rn50",
        "moco-rn50",
        "supervised-vissl-rn50",
        "dino-rn50",
        "vicreg-rn50",
        "supervised-rn50",
        "random-rn50",
        "simclr-mini",
        "dino-vits16",
        "dinov2-vits14",
        "dinov2-vitb14",
        "dinov2-vitl14",
        "dinov2-vitg14",
        "dinov2-vits14-reg",
        "dinov2-vitb14-reg",
        "dinov2-vitl14-reg",
        "dinov2-vitg14-reg",
        "mae-vitb16",
        "mae-vitl16",
        "mae-vith14",
        "ijepa-vith14",
        "clip-vitb16",
        "clip-vitb16-laion2b",
        "siglip-vitb16",
    }
    assert get_spec("dino-vits16").dims == {"trunk": 384, "cls": 384, "mean": 384, "tokens": 196 * 384, "head": 256}
    assert get_spec("dinov2-vitl14-reg").dims == {"trunk": 1024, "cls": 1024, "mean": 1024, "tokens": 256 * 1024}
    assert get_spec("clip-vitb16").dims["head"] == 512
    assert get_spec("barlow-rn50").dims == {"trunk": 2048, "head": 8192}
    assert get_spec("random-rn50").dims == {"trunk": 2048}
    table = describe_registry()
    for s in REGISTRY.values():
        assert s.name in table and (s.url is None or s.url in table)
        assert s.url is None or s.url.startswith("https://")


def test_random_rn50_is_seeded_and_leaves_global_rng_alone():
    spec = tiny("random-rn50")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = load_encoder(spec, seed=5)
    assert torch.equal(torch.rand(3), expected_next)
    b = load_encoder(spec, seed=5)
    c = load_encoder(spec, seed=6)
    x = _batch(PP64, 2)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.allclose(a(x), c(x))
    assert a.info()["seed"] == 5 and a.info()["weights_sha256"] is None


def test_encoder_from_info_rebuilds_and_checks_sha(tmp_path):
    spec = tiny("simclr-rn50")
    trunk, head = random_modules(spec)
    path = save_vissl(tmp_path / "w.torch", trunk, head)
    enc = load_encoder(spec, str(path), "head", preprocess="imagenet")
    info = enc.info()
    again = encoder_from_info(info)
    x = _batch(PP64, 2)
    with torch.no_grad():
        assert torch.equal(again(x), enc(x))
    assert again.preprocess == enc.preprocess and again.layer == "head"
    other = save_vissl(tmp_path / "other.torch", *random_modules(spec, seed=9))
    with pytest.raises(ValueError, match="sha256"):
        encoder_from_info(info, weights=str(other))
    with pytest.raises(FileNotFoundError):
        encoder_from_info({**info, "weights": str(tmp_path / "gone.torch")})
    rnd = load_encoder(tiny("random-rn50"), seed=7)
    with torch.no_grad():
        assert torch.equal(encoder_from_info(rnd.info())(x), rnd(x))


def test_vit_takes_other_input_sizes_by_resizing_position_embeddings():
    """At the trained size the position embeddings are used as they are; at another multiple of
    the patch size the patch grid's embeddings are resized bicubically (DINO's rule), the CLS
    one kept; a side that is not a multiple of the patch size is a clear error."""
    import torch.nn.functional as F
    from rcdm.encoders.vit import ViT, ViTArch

    torch.manual_seed(0)
    vit = ViT(ViTArch(16, 32, 1, 2, 64)).eval()  # 4x4 patch grid
    assert vit.pos_embed_for(64, 64) is vit.pos_embed
    pos = vit.pos_embed_for(32, 48)  # 2x3 grid
    assert pos.shape == (1, 1 + 2 * 3, 32)
    assert torch.equal(pos[:, 0], vit.pos_embed[:, 0])
    grid = vit.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(2, 3), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 6, 32)
    assert torch.allclose(pos[:, 1:], want)
    with torch.no_grad():
        assert vit(torch.randn(2, 3, 32, 48)).shape == (2, 32)
        assert vit(torch.randn(2, 3, 64, 64)).shape == (2, 32)
    with pytest.raises(ValueError, match=r"multiples of 16; got 40x40: set extract.input_size to a multiple of 16"):
        vit(torch.randn(1, 3, 40, 40))
