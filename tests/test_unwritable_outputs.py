"""An output that cannot be written is one line that names the file and the fix: a read-only
output folder at the first write of a stage (its lock), and a full disk or a read-only folder
under every file written whole (config.yaml, extract.json, manifests)."""

from __future__ import annotations

import errno
import os

import pytest
from click.testing import CliRunner
from rcdm.errors import DiskFull, NotWritable


def _failing_open(monkeypatch, code: int, where: str = "") -> None:
    real = os.open

    def fail(path, *args, **kw):
        if where in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(os, "open", fail)


def test_a_read_only_output_folder_stops_the_stage_in_one_line(tmp_path, monkeypatch):
    from rcdm.run.lock import output_lock

    _failing_open(monkeypatch, errno.EROFS, ".rcdm.lock")
    with pytest.raises(NotWritable, match=r"cannot write .*\.rcdm\.lock: it is on a read-only file system; choose"):
        with output_lock(tmp_path / "out", "rcdm sample"):
            pass
    assert not (tmp_path / "out").exists()  # the folder made for the lock alone goes too


@pytest.mark.parametrize(
    "code, error, words",
    [
        (errno.ENOSPC, DiskFull, "no space left"),
        (errno.EROFS, NotWritable, "read-only file system"),
        (errno.EACCES, NotWritable, "permission is denied"),
    ],
)
def test_files_written_whole_fail_in_one_line(tmp_path, monkeypatch, code, error, words):
    from rcdm.config import TrainConfig, save_resolved

    real = open

    def fail(path, mode="r", *args, **kw):
        if "w" in mode and "config.yaml" in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, mode, *args, **kw)

    monkeypatch.setattr("builtins.open", fail)
    with pytest.raises(error, match=words):
        save_resolved(TrainConfig(), tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half-written file stays


def test_the_cli_prints_it_without_a_traceback(tmp_path, monkeypatch):
    from rcdm.app.cli import cli

    from tests.synthetic import make_image_folder

    images = make_image_folder(tmp_path / "img", n_classes=1, per_class=1)
    _failing_open(monkeypatch, errno.EROFS, ".rcdm.lock")
    out = tmp_path / "store"
    r = CliRunner().invoke(cli, ["extract", "--encoder", "random-rn50", "--source", str(images), "--out", str(out)])
    assert r.exit_code == 1 and "error: cannot write" in r.output and "read-only file system" in r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
