"""The sample set (rcdm.run.sampleset): the writer's output read back, the format version, and a
clear error for each missing, changed or corrupted file. `rcdm sample` end to end and its resume
are in test_sample.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rcdm.errors import InvalidInput, MissingInput, UserError
from rcdm.run.sampleset import (
    CONDS,
    DATA_FILES,
    FORMAT_VERSION,
    INDEX,
    INDEX_FIELDS,
    MANIFEST,
    SAMPLES,
    Chunks,
    IndexRow,
    SampleSetWriter,
    assign_seeds,
    read_samples,
    write_sample_set,
)
from rcdm.utils import sha256_file, with_checksum

N_COND, K, D, RES = 3, 3, 5, 8  # 9 samples of 8 px


def _rows(cond_index: np.ndarray, seeds: np.ndarray) -> list[IndexRow]:
    return [
        IndexRow(
            sample=s,
            condition=int(c),
            key=f"cls/img_{c}",
            description=f"image {c}",
            kind="store",
            seed=int(seed),
            label=int(c) % 2,
            store_index=int(c),
            sample_of_condition=s % K,
            extra={"alpha": 0.5} if c == 1 else {},
        )
        for s, (c, seed) in enumerate(zip(cond_index, seeds, strict=True))
    ]


@pytest.fixture
def parts():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_COND * K, RES, RES, 3), dtype=np.uint8)
    vectors = rng.standard_normal((N_COND, D)).astype(np.float32)
    cond_index, seeds = assign_seeds(N_COND, K, 10, fixed_noise_groups=False)
    return images, vectors, _rows(cond_index, seeds)


@pytest.fixture
def sample_dir(tmp_path, parts) -> Path:
    images, vectors, rows = parts
    return write_sample_set(tmp_path / "s", images, rows, vectors, {"sampler": {"steps": "ddim10"}, "seed": 10})


def _rehash(d: Path) -> None:
    """Record the files' current sha256, as a writer that wrote them so would have."""
    m = json.loads((d / MANIFEST).read_text())
    m["files"] = {f: sha256_file(d / f) for f in DATA_FILES}
    (d / MANIFEST).write_text(json.dumps(with_checksum(m)))


def _edit_manifest(d: Path, **kw) -> None:
    m = json.loads((d / MANIFEST).read_text())
    m.update(kw)
    (d / MANIFEST).write_text(json.dumps(with_checksum({k: v for k, v in m.items() if v is not None})))


# ---------------------------------------------------------------------------------- writer
def test_seeds_plan():
    ci, seeds = assign_seeds(2, 3, 7, fixed_noise_groups=False)
    assert ci.tolist() == [0, 0, 0, 1, 1, 1] and seeds.tolist() == [7, 8, 9, 10, 11, 12]
    _, fixed = assign_seeds(2, 3, 7, fixed_noise_groups=True)
    assert fixed.tolist() == [7, 8, 9, 7, 8, 9]  # column j of an interpolation shares its noise


def test_round_trip_through_chunks(tmp_path, parts):
    """Chunks written out of order (as several processes do), pictures read back from the chunks,
    then finish: the reader returns exactly what was written, and samples.npz is byte for byte
    what np.savez writes (guided-diffusion's convention)."""
    images, vectors, rows = parts
    w = SampleSetWriter(tmp_path / "s")
    chunks = Chunks(len(images), 4, (RES, RES, 3))  # 9 samples: chunks of 4, 4, 1
    assert len(chunks) == 3 and chunks.bounds(2) == (8, 9)
    w.write_plan({"fingerprint": "abc"})
    w.write_conds(vectors)
    for c in (2, 0, 1):
        s, e = chunks.bounds(c)
        w.write_chunk(chunks, c, images[s:e])
    np.testing.assert_array_equal(w.read_range(chunks, 3, 9), images[3:9])
    assert w.plan() == {"fingerprint": "abc"} and w.finished() is None
    man = w.finish(chunks, rows, {"sampler": {"steps": "ddim10"}}, other_files=[])
    assert w.finished() == man and not (tmp_path / "s" / "partial").exists()

    ss = read_samples(tmp_path / "s")
    np.testing.assert_array_equal(ss.images, images)
    assert ss.rows == rows and ss.rows[3].extra == {"alpha": 0.5}
    np.testing.assert_array_equal(ss.vectors, vectors)
    np.testing.assert_array_equal(ss.conds, vectors[[r.condition for r in rows]])  # (N, D)
    assert ss.resolution == RES and ss.keys()[3] == "cls/img_1" and set(ss.kinds()) == {"store"}
    m = ss.manifest
    assert m["format_version"] == FORMAT_VERSION and m["sampler"] == {"steps": "ddim10"}
    assert (m["n_samples"], m["n_conditions"], m["image_size"]) == (9, N_COND, RES)
    assert m["files"] == {f: sha256_file(tmp_path / "s" / f) for f in DATA_FILES}
    assert ss.manifest_sha256 == sha256_file(tmp_path / "s" / MANIFEST)
    buf = io.BytesIO()
    np.savez(buf, images)
    assert (tmp_path / "s" / SAMPLES).read_bytes() == buf.getvalue()


def test_index_lines_spell_each_field_once(sample_dir):
    lines = [json.loads(line) for line in (sample_dir / INDEX).read_text().splitlines()]
    assert list(lines[0]) == list(INDEX_FIELDS)
    assert list(lines[3]) == [*INDEX_FIELDS, "alpha"]  # the condition's extras come last
    assert INDEX_FIELDS[:3] == ("sample", "condition", "key")
    with pytest.raises(ValueError, match="overwrite"):
        IndexRow(sample=0, condition=0, key="k", kind="store", seed=0, extra={"seed": 1}).to_json()


def test_resume_keeps_good_chunks_and_redoes_bad_ones(tmp_path, parts):
    images, vectors, rows = parts
    w = SampleSetWriter(tmp_path / "s")
    chunks = Chunks(len(images), 4, (RES, RES, 3))
    w.write_conds(vectors)
    w.write_chunk(chunks, 0, images[:4])
    np.save(w.chunk_path(1), images[:3])  # wrong shape (another configuration): recompute
    w.chunk_path(2).write_bytes(b"\x93NUMPY truncated")  # killed mid-write: recompute
    assert w.read_chunk(chunks, 0) is not None
    assert w.read_chunk(chunks, 1) is None and w.read_chunk(chunks, 2) is None
    with pytest.raises(UserError, match="chunk 1 is missing"):
        w.finish(chunks, rows, {})
    assert w.finished() is None


def test_clear_removes_the_whole_set(sample_dir):
    (sample_dir / "grid-000.png").write_bytes(b"png")
    (sample_dir / "notes.txt").write_text("mine")
    SampleSetWriter(sample_dir).clear()
    assert sorted(p.name for p in sample_dir.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------------------------- reader
def test_format_version_mismatch_says_to_resample(sample_dir):
    _edit_manifest(sample_dir, format_version=FORMAT_VERSION + 1)
    with pytest.raises(InvalidInput, match=rf"format_version {FORMAT_VERSION + 1}.*rcdm sample --out"):
        read_samples(sample_dir)
    m = json.loads((sample_dir / MANIFEST).read_text())
    del m["format_version"]
    (sample_dir / MANIFEST).write_text(json.dumps(with_checksum(m)))
    with pytest.raises(InvalidInput, match="no format_version.*rcdm sample --out"):
        read_samples(sample_dir)


@pytest.mark.parametrize("name", [MANIFEST, *DATA_FILES])
def test_each_missing_file(sample_dir, name):
    (sample_dir / name).unlink()
    with pytest.raises(MissingInput, match=rf"{name} is missing"):
        read_samples(sample_dir)


def test_missing_folder_and_unfinished_run(tmp_path, sample_dir):
    with pytest.raises(MissingInput, match="does not exist"):
        read_samples(tmp_path / "nowhere")
    (sample_dir / MANIFEST).unlink()
    with pytest.raises(MissingInput, match="did not finish"):
        read_samples(sample_dir)
    (sample_dir / "partial").mkdir()  # interrupted while sampling: the same command resumes it
    (sample_dir / "partial" / "chunk-00000.npy").write_bytes(b"")
    with pytest.raises(
        MissingInput, match=r"interrupted \(1 finished chunk\(s\).*re-running the same `rcdm sample` command resumes it"
    ):
        read_samples(sample_dir)


@pytest.mark.parametrize("name", DATA_FILES)
def test_each_changed_file(sample_dir, name):
    with open(sample_dir / name, "ab") as f:
        f.write(b"\n")
    with pytest.raises(InvalidInput, match=rf"{name} has changed since `rcdm sample` wrote it"):
        read_samples(sample_dir)


def _npz(d: Path, **arrays) -> None:
    np.savez(d / SAMPLES, **arrays)


def _index(d: Path, edit) -> None:
    lines = [json.loads(line) for line in (d / INDEX).read_text().splitlines()]
    (d / INDEX).write_text("".join(json.dumps(r) + "\n" for r in edit(lines)))


CORRUPTIONS = {
    "npz not a zip": (lambda d, x: (d / SAMPLES).write_bytes(b"garbage"), "not a readable .npz"),
    "npz without arr_0": (lambda d, x: _npz(d, images=x), "no arr_0"),
    "float pixels": (lambda d, x: _npz(d, arr_0=x.astype(np.float32)), "dtype float32"),
    "grey images": (lambda d, x: _npz(d, arr_0=x[..., 0]), r"expected \(N, H, W, 3\)"),
    "fewer samples": (lambda d, x: _npz(d, arr_0=x[:4]), "n_samples 9"),
    "index not JSON": (lambda d, x: (d / INDEX).write_text("{\n" * 9), r"index.jsonl:1 is not valid JSON"),
    "index short": (lambda d, x: _index(d, lambda r: r[:-1]), "has 8 lines"),
    "index field missing": (
        lambda d, x: _index(d, lambda r: [{k: v for k, v in e.items() if k != "seed"} for e in r]),
        r"index.jsonl:1 has no seed",
    ),
    "index out of order": (lambda d, x: _index(d, lambda r: r[::-1]), "describes sample 8, expected 0"),
    "condition out of range": (
        lambda d, x: _index(d, lambda r: [{**e, "condition": 7} for e in r]),
        "names condition 7; conds.npy has 3 rows",
    ),
    "conds per sample": (
        lambda d, x: np.save(d / CONDS, np.zeros((9, D), np.float32)),
        r"expected float32 \(n_conditions, D\)",
    ),
    "conds float64": (lambda d, x: np.save(d / CONDS, np.zeros((N_COND, D))), "holds float64"),
    "conds not npy": (lambda d, x: (d / CONDS).write_bytes(b"garbage"), "not a readable .npy"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_each_corruption_is_a_clear_error(sample_dir, parts, case):
    """Files rewritten *with* their sha256 recorded (a writer bug, or a hand-made folder): the
    content checks name the file and the fix."""
    corrupt, message = CORRUPTIONS[case]
    corrupt(sample_dir, parts[0])
    _rehash(sample_dir)
    with pytest.raises(InvalidInput, match=message) as e:
        read_samples(sample_dir)
    assert "rcdm sample --out" in str(e.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"n_samples": None}, "has no n_samples"),
        ({"image_size": 16}, "image_size 16"),
        ({"files": {SAMPLES: "0"}}, "has no files.index.jsonl"),
    ],
)
def test_manifest_fields(sample_dir, edit, message):
    _edit_manifest(sample_dir, **edit)
    with pytest.raises(InvalidInput, match=message):
        read_samples(sample_dir)


def test_manifest_not_json(sample_dir):
    (sample_dir / MANIFEST).write_text("{")
    with pytest.raises(InvalidInput, match="not readable JSON"):
        read_samples(sample_dir)
