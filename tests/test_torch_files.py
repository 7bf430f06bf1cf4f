"""Reading `.pt` / `.pth` files without pickle: one rule for encoder and UNet checkpoints (issue 12).

A file that needs pickle (Python objects beyond tensors, or code to run) is an UntrustedCheckpoint
naming `--trust-checkpoint`; a truncated or damaged file says so and to download it again. The two
must never be confused, whatever words torch puts in its error.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
import torch
from rcdm.encoders.readers import UntrustedCheckpoint, read_checkpoint
from rcdm.errors import InvalidInput
from rcdm.model.weights import read_official


class Hyperparams:  # an arbitrary Python object, as training scripts pickle them
    def __init__(self):
        self.lr = 1e-4


class RunsCode:  # what a malicious file holds: unpickling it calls a function
    def __reduce__(self):
        return (os.getcwd, ())


def _state() -> dict:
    return {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.zeros(4)}


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    paths = {k: tmp_path / f"{k}.pt" for k in ("custom", "code", "plain", "cut", "damaged")}
    torch.save({"state_dict": _state(), "hparams": Hyperparams()}, paths["custom"])
    torch.save({"hook": RunsCode(), "state_dict": _state()}, paths["code"])
    torch.save(_state(), paths["plain"])
    data = paths["plain"].read_bytes()
    paths["cut"].write_bytes(data[: len(data) // 2])
    # a zip whose pickle is cut short: the weights-only unpickler fails on it too
    buf = io.BytesIO()
    with zipfile.ZipFile(paths["plain"]) as zin, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name in zin.namelist():
            z.writestr(name, zin.read(name)[:40] if name.endswith("data.pkl") else zin.read(name))
    paths["damaged"].write_bytes(buf.getvalue())
    return paths


READERS = {"encoder": read_checkpoint, "unet": read_official}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("kind, named", [("custom", "Hyperparams"), ("code", "getcwd")])
def test_a_file_that_needs_pickle_is_untrusted_not_truncated(files, reader, kind, named):
    with pytest.raises(UntrustedCheckpoint) as e:
        READERS[reader](files[kind])
    msg = str(e.value)
    assert str(files[kind]) in msg and "--trust-checkpoint" in msg and named in msg, msg
    assert "truncated" not in msg and "download" not in msg, msg


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("kind", ["cut", "damaged"])
def test_a_truncated_or_damaged_file_is_not_called_untrusted(files, reader, kind):
    with pytest.raises(InvalidInput) as e:
        READERS[reader](files[kind])
    msg = str(e.value)
    assert not isinstance(e.value, UntrustedCheckpoint), msg
    assert str(files[kind]) in msg and "truncated" in msg and "download it again" in msg, msg
    assert "--trust-checkpoint" not in msg, msg


def test_trusted_files_load_and_plain_ones_need_no_trust(files):
    assert isinstance(read_checkpoint(files["custom"], trust_checkpoint=True)["hparams"], Hyperparams)
    assert set(read_official(files["custom"], trust_checkpoint=True)) == {"conv.weight", "conv.bias"}
    assert set(read_checkpoint(files["plain"])) == set(read_official(files["plain"])) == {"conv.weight", "conv.bias"}


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_no_truncation_reads_as_untrusted_in_either_format(tmp_path, zipped):
    """Cut anywhere, a file of tensors is truncated, never 'needs pickle'; in the legacy (torch <
    1.6) format too, where the weights-only loader raises UnpicklingError at many cut points."""
    buf = io.BytesIO()
    torch.save(_state(), buf, _use_new_zipfile_serialization=zipped)
    data, path = buf.getvalue(), tmp_path / "cut.pt"
    for n in range(1, len(data), max(1, len(data) // 200)):
        path.write_bytes(data[:n])
        with pytest.raises(InvalidInput) as e:
            read_official(path)
        assert not isinstance(e.value, UntrustedCheckpoint) and "truncated" in str(e.value), (n, str(e.value))
    torch.save({"hparams": Hyperparams(), **_state()}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(UntrustedCheckpoint, match="--trust-checkpoint"):
        read_checkpoint(path)
