"""rcdm extract: the features are the encoder's, resume, two processes, bad images, bad input, CLI.

Uses random-rn50 (seeded, no weights file) on a handful of tiny images; the uninterrupted
single-process store is built once per module and the other runs are compared with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rcdm import store as S

from tests.extract_setup import extract_cfg as _cfg
from tests.extract_setup import tiny_encoder  # noqa: F401 (the fixture `tiny`)
from tests.synthetic import corrupt_jpeg, make_image_folder

N_GOOD = 3  # 4 images, one corrupt


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = make_image_folder(tmp_path_factory.mktemp("img") / "train", n_classes=2, per_class=2, size=(40, 32))
    corrupt_jpeg(root / "cls_0" / "img_001.jpg")
    return root


@pytest.fixture(scope="module")
def ref_store(images, tmp_path_factory) -> Path:
    """One uninterrupted single-process run: 2 shards of 2 items, the corrupt one in shard 0."""
    import rcdm.extract

    return rcdm.extract.run(_cfg(images, tmp_path_factory.mktemp("ref") / "store"))


def _same_content(a: Path, b: Path, exact: bool = True) -> None:
    sa, sb = S.FeatureStore(a), S.FeatureStore(b)
    assert sa.keys == sb.keys
    np.testing.assert_array_equal(sa.labels, sb.labels)
    if exact:
        np.testing.assert_array_equal(sa.features(None), sb.features(None))
    else:  # different thread counts may change the last float16 bit
        np.testing.assert_allclose(sa.features(None), sb.features(None), rtol=2e-3, atol=2e-3)
    assert sa.failed == sb.failed
    for k in ("encoder", "preprocess", "source", "rows", "dim", "views", "dtype"):
        assert sa.manifest[k] == sb.manifest[k], k


def test_device_normalisation_equals_encoder_input(images):
    from PIL import Image
    from rcdm.data.images import PREPROCESS, encoder_input
    from rcdm.extract.dataset import crop_uint8, device_normalisation_is_exact, normalize

    img = Image.open(images / "cls_1" / "img_000.jpg").convert("RGB").resize((61, 47))
    for pp in PREPROCESS.values():
        assert device_normalisation_is_exact(pp)
        x = crop_uint8(img, pp)
        assert x.dtype == torch.uint8 and x.shape == (3, pp.crop, pp.crop)
        assert torch.equal(normalize(x[None], pp)[0], encoder_input(img, pp))


def test_store_holds_the_encoder_features(ref_store, images):
    from rcdm.data.images import encoder_input, open_source
    from rcdm.encoders.build import load_encoder

    st = S.FeatureStore(ref_store)
    assert S.verify(ref_store) == []
    assert len(st) == N_GOOD and st.dim == 2048 and st.layer == "trunk"
    assert len(st.manifest["shards"]) == 2 and st.manifest["source"]["n_items"] == 4
    # the corrupt image is skipped, counted and listed
    assert st.manifest["n_failed"] == 1 and st.failed[0]["key"] == "cls_0/img_001"
    assert "cls_0/img_001" not in st.keys
    assert " at 0x" not in st.failed[0]["reason"] and st.failed[0]["reason"]  # no Python object address
    assert st.manifest["timing"]["images"] == N_GOOD and st.manifest["timing"]["skipped"] == 1  # encoded excludes it
    src = open_source(images)
    good = [it for it in src.items if it.key != "cls_0/img_001"]
    assert st.keys == [it.key for it in good]
    np.testing.assert_array_equal(st.labels, [it.label for it in good])
    # view 0 = encoder(input), view 1 = encoder(input flipped horizontally)
    enc = load_encoder("random-rn50", seed=0).eval()
    pp = st.preprocess
    assert pp == enc.preprocess  # "default": the encoder's own preprocessing
    key = st.keys[1]  # an image of shard 1
    x = encoder_input(src.load(src.index_of(key)), pp)[None]
    with torch.no_grad():
        want = torch.stack([enc(x), enc(x.flip(-1))], 1).numpy()  # (1, 2, D)
    got = st.features(None)[1:2]
    np.testing.assert_allclose(got, want.astype(np.float16).astype(np.float32), rtol=5e-3, atol=5e-3)
    assert not np.allclose(got[:, 0], got[:, 1], atol=1e-3)  # the two views differ
    # the resolved config is written next to the store
    assert "random-rn50" in (ref_store / "config.yaml").read_text()
    assert st.manifest["extract_config"]["shard_size"] == 2


class _CountingRegistry(dict):
    lookups = 0

    def __getitem__(self, name):
        type(self).lookups += 1
        return super().__getitem__(name)


def test_input_size_override_is_recorded_and_used(images, tmp_path, monkeypatch):
    import rcdm.encoders.registry
    from rcdm.data.images import encoder_input, open_source
    from rcdm.encoders.build import encoder_from_info
    from rcdm.errors import InvalidInput
    from rcdm.extract import run

    # the registry entry is looked up once per extraction (its preprocessing and the encoder use it),
    # and an unknown name is refused before anything else, the source included
    monkeypatch.setattr(rcdm.encoders.registry, "REGISTRY", _CountingRegistry(rcdm.encoders.registry.REGISTRY))
    with pytest.raises(InvalidInput, match="unknown encoder 'no-such-net'"):
        run(_cfg(tmp_path / "no-images-here", tmp_path / "s", encoder="no-such-net"))
    _CountingRegistry.lookups = 0
    out = run(_cfg(images, tmp_path / "s32", input_size=32))
    assert _CountingRegistry.lookups == 1
    monkeypatch.undo()
    st = S.FeatureStore(out)
    assert (st.preprocess.crop, st.preprocess.resize) == (32, 32)  # rcdm preset: resize = crop
    assert st.encoder_info["preprocess"]["crop"] == 32
    # the store's own record rebuilds the encoder that made it, at the recorded input size
    enc = encoder_from_info(st.encoder_info).eval()
    src = open_source(images)
    x = encoder_input(src.load(src.index_of(st.keys[0])), st.preprocess)[None]
    assert x.shape[-1] == 32
    with torch.no_grad():
        want = enc(x).numpy()
    np.testing.assert_allclose(st.features(0)[:1], want.astype(np.float16).astype(np.float32), rtol=5e-3, atol=5e-3)
    with pytest.raises(ValueError, match="extract.input_size must be >= 16, got 8"):  # the schema's bound
        _cfg(images, tmp_path / "s8", input_size=8)


def test_interrupted_run_resumes_to_the_same_store(tiny, images, tmp_path, monkeypatch):
    import rcdm.extract
    import rcdm.extract.loop as loop

    ref_store = rcdm.extract.run(_cfg(images, tmp_path / "ref", encoder="tiny"))  # uninterrupted
    real_write = loop.write_shard
    written: list[int] = []

    def crash_after_first(*args, **kw):
        real_write(*args, **kw)
        written.append(args[1])
        raise KeyboardInterrupt  # the process dies after shard 0 is complete

    monkeypatch.setattr(loop, "write_shard", crash_after_first)
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        rcdm.extract.run(_cfg(images, out, encoder="tiny"))
    assert written == [0] and not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        S.FeatureStore(out)

    (out / ".shard-00001.h5.tmp-999").write_bytes(b"half a shard")  # killed while writing

    # re-run the same command: shard 0 is skipped, shard 1 is written
    def record(*args, **kw):
        written.append(args[1])
        return real_write(*args, **kw)

    monkeypatch.setattr(loop, "write_shard", record)
    rcdm.extract.run(_cfg(images, out, encoder="tiny"))
    assert written == [0, 1] and not list(out.glob(".shard-*"))
    _same_content(ref_store, out)
    assert [s["sha256"] for s in S.FeatureStore(out).manifest["shards"]] == [
        s["sha256"] for s in S.FeatureStore(ref_store).manifest["shards"]
    ]
    # a third run finds the store complete and changes nothing
    sha = S.FeatureStore(out).manifest_sha256
    rcdm.extract.run(_cfg(images, out, encoder="tiny"))
    assert written == [0, 1] and S.FeatureStore(out).manifest_sha256 == sha


@pytest.mark.slow
def test_two_processes_give_the_same_store(ref_store, images, tmp_path):
    out = tmp_path / "store"
    script = tmp_path / "launch.py"
    script.write_text(
        "import sys\nimport rcdm.extract\nfrom rcdm.config import ExtractConfig\n"
        f"rcdm.extract.run(ExtractConfig(**{json.dumps(dict(encoder='random-rn50', source=str(images), out=str(out), shard_size=2, batch_size=2, workers=0, device='cpu'))}))\n"
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert S.verify(out) == []
    _same_content(ref_store, out, exact=False)


def test_no_readable_images(tiny, tmp_path):
    import rcdm.extract

    root = make_image_folder(tmp_path / "img", n_classes=1, per_class=2)
    for p in root.rglob("*.jpg"):
        corrupt_jpeg(p)
    with pytest.raises(ValueError, match="none of the 2 images"):
        rcdm.extract.run(_cfg(root, tmp_path / "store", encoder="tiny"))
    assert not (tmp_path / "store" / "manifest.json").exists()
    assert not list((tmp_path / "store").glob("shard-*"))


def test_bad_sources(tmp_path):
    import rcdm.extract

    with pytest.raises(FileNotFoundError, match="nowhere"):
        rcdm.extract.run(_cfg(tmp_path / "nowhere", tmp_path / "store"))
    (tmp_path / "empty").mkdir()
    with pytest.raises((ValueError, FileNotFoundError), match="empty"):
        rcdm.extract.run(_cfg(tmp_path / "empty", tmp_path / "store"))
    with pytest.raises(ValueError, match="source is not set"):
        rcdm.extract.run(_cfg(tmp_path, tmp_path / "store", source=None))
    assert not (tmp_path / "store").exists()  # nothing written


def test_bad_encoders_and_weights(images, tmp_path):
    import rcdm.extract

    out = tmp_path / "store"
    with pytest.raises(ValueError, match="random-rn50"):  # the error lists the known names
        rcdm.extract.run(_cfg(images, out, encoder="no-such-net"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        rcdm.extract.run(_cfg(images, out, encoder="supervised-rn50", weights=str(tmp_path / "missing.pth")))
    # a truncated checkpoint and a file that is not a checkpoint at all
    good = tmp_path / "rn50.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, good)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    for bad in (trunc, text, good):  # good: a real checkpoint of the wrong architecture
        with pytest.raises((ValueError, RuntimeError)) as e:
            rcdm.extract.run(_cfg(images, out, encoder="supervised-rn50", weights=str(bad)))
        assert bad.name in str(e.value) or "key" in str(e.value), str(e.value)
    assert not out.exists()


def test_existing_store_with_other_settings_is_refused(tiny, images, tmp_path):
    import rcdm.extract

    out = tmp_path / "store"
    rcdm.extract.run(_cfg(images, out, encoder="tiny"))
    sha = S.FeatureStore(out).manifest_sha256
    with pytest.raises(ValueError, match="different preprocess") as e:
        rcdm.extract.run(_cfg(images, out, encoder="tiny", preprocess="imagenet"))
    assert "--overwrite" in str(e.value) and "existing:" in str(e.value) and "this run:" in str(e.value)
    with pytest.raises(ValueError, match="seed"):
        rcdm.extract.run(_cfg(images, out, encoder="tiny", seed=1))
    with pytest.raises(ValueError, match="different encoder"):
        rcdm.extract.run(_cfg(images, out))  # random-rn50 into a store of another encoder
    assert S.FeatureStore(out).manifest_sha256 == sha and S.verify(out) == []  # untouched
    # --overwrite replaces it
    rcdm.extract.run(_cfg(images, out, encoder="tiny", preprocess="imagenet", overwrite=True, limit=2, shard_size=4))
    st = S.FeatureStore(out)
    assert st.manifest["preprocess"]["resize"] == 256 and len(st) == 1 and S.verify(out) == []
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.h5", "shard-00000.json"]
    # a directory of someone else's files is never used
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="not a feature store"):
        rcdm.extract.run(_cfg(images, other, encoder="tiny", overwrite=True))
    assert (other / "thesis.tex").exists()


def test_cli_extract_wds_and_store_commands(ref_store, images, tmp_path, monkeypatch):
    from rcdm.app.cli import cli

    monkeypatch.chdir(tmp_path)  # not the repository's pipeline.yaml (the demo's settings)

    out = tmp_path / "wds"
    runner = CliRunner()
    args = [
        "extract",
        "--source",
        str(images),
        "--out",
        str(out),
        "--encoder",
        "random-rn50",
        "--format",
        "wds",
        "--include-images",
        "--batch-size",
        "4",
        "--workers",
        "2",
        "--device",
        "cpu",
        "--set",
        "extract.shard_size=2",
        "--set",
        "extract.limit=3",
    ]
    r = runner.invoke(cli, [*args, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "dry run" in r.output and not out.exists()
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    st, ref = S.FeatureStore(out), S.FeatureStore(ref_store)
    assert st.format == "wds" and st.has_images and len(st) == 2  # 3 items, one corrupt
    # the same features in either format and any batch size (batches never cross shards)
    assert st.keys == ref.keys[:2]
    np.testing.assert_array_equal(st.features(None), ref.features(None)[:2])
    src_bytes = (images / "cls_1" / "img_000.jpg").read_bytes()
    assert st.image_bytes(st.index_of("cls_1/img_000")) == src_bytes
    r = runner.invoke(cli, ["store", "info", str(out)])
    assert r.exit_code == 0 and "random-rn50" in r.output and "image bytes yes" in r.output
    assert runner.invoke(cli, ["store", "verify", str(out)]).exit_code == 0
    shard = out / "shard-00000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0x40
    shard.write_bytes(bytes(data))
    r = runner.invoke(cli, ["store", "verify", str(out)])
    assert r.exit_code == 1 and "shard-00000.tar" in r.output
    assert runner.invoke(cli, ["store", "info", str(tmp_path / "nowhere")]).exit_code == 1


def test_config_resume_mismatch_on_format(ref_store, images, tmp_path):
    """A run with another shard format cannot reuse the shards (named in the error)."""
    import rcdm.extract

    out = tmp_path / "store"
    shutil.copytree(ref_store, out)
    (out / "manifest.json").unlink()  # an unfinished store
    with pytest.raises(ValueError, match="format"):
        rcdm.extract.run(replace(_cfg(images, out), format="wds"))


def test_webdataset_source_and_cpu_autocast(tiny, images, tmp_path):
    """Tars as the source (keys and labels from __key__ and cls); bf16 autocast + channels_last."""
    import io
    import tarfile

    import rcdm.extract

    tar = tmp_path / "train-000.tar"
    with tarfile.open(tar, "w") as tf:
        for i, p in enumerate(sorted(images.rglob("*.jpg"))):
            for name, data in ((f"s{i:03d}.jpg", p.read_bytes()), (f"s{i:03d}.cls", str(10 + i).encode())):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    fp32 = rcdm.extract.run(_cfg(tar, tmp_path / "fp32", encoder="tiny"))
    st = S.FeatureStore(fp32)
    assert st.keys == ["s000", "s002", "s003"]  # s001 is the corrupt image
    np.testing.assert_array_equal(st.labels, [10, 12, 13])
    assert st.source["kind"] == "wds" and st.failed[0]["key"] == "s001"
    bf16 = rcdm.extract.run(_cfg(tar, tmp_path / "bf16", encoder="tiny", amp="bf16", channels_last=True))
    a, b = st.features(None), S.FeatureStore(bf16).features(None)
    np.testing.assert_allclose(b, a, rtol=0.05, atol=0.02 * np.abs(a).max())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_extraction_matches_cpu(tiny, images, tmp_path, capsys):
    """The CUDA path (pinned async copies, bf16 autocast, channels_last) gives the CPU's features."""
    import rcdm.extract

    cpu = S.FeatureStore(rcdm.extract.run(_cfg(images, tmp_path / "cpu", encoder="tiny")))
    capsys.readouterr()
    gpu = S.FeatureStore(
        rcdm.extract.run(_cfg(images, tmp_path / "gpu", encoder="tiny", device="cuda", workers=2, decode="cpu"))
    )
    assert capsys.readouterr().out.startswith("extracting on cuda")  # after a CPU run in the same process
    assert gpu.keys == cpu.keys
    np.testing.assert_allclose(gpu.features(None), cpu.features(None), rtol=1e-2, atol=1e-3)
    amp = S.FeatureStore(
        rcdm.extract.run(
            _cfg(images, tmp_path / "amp", encoder="tiny", device="cuda", amp="bf16", channels_last=True, decode="cpu")
        )
    )
    a = cpu.features(None)
    np.testing.assert_allclose(amp.features(None), a, rtol=0.05, atol=0.02 * np.abs(a).max())


def test_extraction_says_its_device_first(tiny, images, tmp_path, capsys):
    """The first line of an extraction is where it runs."""
    import rcdm.extract

    rcdm.extract.run(_cfg(images, tmp_path / "store", encoder="tiny"))
    assert capsys.readouterr().out.splitlines()[0] == "extracting on cpu (1 process)"


def test_the_feature_copy_is_waited_for_on_the_stream_that_issued_it(monkeypatch):
    """extract.device=cuda:1 while cuda:0 is the current device: the device-to-host copy of a batch's
    features runs on cuda:1's current stream, so the event that _collect waits on must be recorded
    there. Recorded on the current device's stream, event.synchronize() can return before the copy
    has landed (stale features). Runs on the CPU with torch.cuda's stream and event replaced by fakes
    that remember the device; the copy itself is a plain CPU copy."""
    from types import SimpleNamespace

    import rcdm.extract.loop as loop

    from tests.extract_setup import TinyEncoder

    current = torch.device("cuda", 0)  # what torch.cuda.current_device() would be
    recorded: list[torch.device] = []

    def current_stream(device=None):
        d = current if device is None else torch.device(device)
        return SimpleNamespace(device=current if d.index is None else d)  # "cuda" = the current device

    class Event:  # torch.cuda.Event: record() without a stream records on the current device's
        def record(self, stream=None):
            recorded.append((stream if stream is not None else current_stream()).device)

        def synchronize(self):
            recorded.append("synchronized")

    real_empty = torch.empty
    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **kw: real_empty(*a, **kw))  # no pinning
    enc = TinyEncoder().eval()
    x = torch.rand(2, 3, 224, 224)
    result = loop._launch(enc, x, SimpleNamespace(channels_last=False, amp="none"), torch.device("cuda", 1))
    assert recorded == [torch.device("cuda", 1)]
    feats = loop._collect(result, enc.dim)
    assert recorded[-1] == "synchronized" and feats.shape == (2, 2, enc.dim)
    with torch.no_grad():
        np.testing.assert_allclose(feats[:, 0], enc(x).numpy(), rtol=1e-6, atol=1e-6)
