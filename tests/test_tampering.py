"""Property: a feature store or a sample set whose files were changed in any way (a bit flipped, a
file cut short, deleted or grown, a JSON value replaced or removed) is either refused with a
one-line user error naming the fix, or reads back exactly as written. Never a third outcome: a
changed reading without a word, or a traceback."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from rcdm.errors import UserError

from tests.synthetic_store import make_store

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

_JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**6),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.just([]),
    st.just({}),
)
MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete")),
    st.tuples(st.just("json-set"), st.integers(0, 10**6), _JSON_VALUES),
    st.tuples(st.just("json-drop"), st.integers(0, 10**6)),
)


def _json_paths(obj, prefix=()) -> list[tuple]:
    """Every key path of a JSON document (dicts and lists), the document itself excluded."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        out.append((*prefix, k))
        out += _json_paths(v, (*prefix, k))
    return out


def _mutate_json(path: Path, op: str, pick: int, value=None) -> None:
    doc = json.loads(path.read_text())
    paths = _json_paths(doc)
    if not paths:
        return
    *parent_keys, last = paths[pick % len(paths)]
    parent = doc
    for k in parent_keys:
        parent = parent[k]
    if op == "json-drop":
        del parent[last]
    else:
        parent[last] = value
    path.write_text(json.dumps(doc))


def mutate(path: Path, mutation: tuple) -> None:
    op = mutation[0]
    if op == "delete":
        path.unlink()
    elif op.startswith("json"):
        if path.suffix in (".json", ".jsonl") and path.name != "index.jsonl":
            _mutate_json(path, op, *mutation[1:])
        else:  # not a JSON file: flip the first byte instead
            data = bytearray(path.read_bytes())
            data[0] ^= 1
            path.write_bytes(bytes(data))
    else:
        data = bytearray(path.read_bytes())
        if op == "flip" and data:
            i = int(mutation[1] * len(data))
            data[i] ^= 1 << mutation[2]
        elif op == "truncate":
            data = data[: int(mutation[1] * len(data))]
        elif op == "append":
            data += mutation[1]
        path.write_bytes(bytes(data))


def _outcome(read, folder: Path):
    """("refused", message) or ("read", value); anything else raises out of the test."""
    try:
        return "read", read(folder)
    except UserError as e:
        message = str(e)
        assert "\n" not in message and message, f"not one line: {message!r}"
        return "refused", message


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


# ------------------------------------------------------------------------------------- stores
def _read_store(folder: Path):
    from rcdm.store import FeatureStore, verify

    s = FeatureStore(folder)
    problems = verify(folder)
    if problems:  # verify lists what it found: a refusal
        raise _Listed("; ".join(problems))
    return s.manifest, s.features(None), s.keys, s.labels, [s[i][0] for i in range(len(s))]


class _Listed(UserError):
    """verify's findings, as one refusal."""


@pytest.fixture(scope="module")
def golden_store(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((6, 2, 4)).astype(np.float32)
    return make_store(tmp_path_factory.mktemp("golden") / "store", feats, labels=[0, 1, 2, 0, 1, 2], shard_size=3)


STORE_FILES = ["manifest.json", "shard-00000.h5", "shard-00001.h5", "shard-00000.json"]


@_SETTINGS
@given(target=st.sampled_from(STORE_FILES), mutation=MUTATIONS)
def test_a_changed_store_is_refused_or_reads_back_identically(golden_store, target, mutation):
    want = _read_store(golden_store)
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "store"
        shutil.copytree(golden_store, folder)
        mutate(folder / target, mutation)
        kind, got = _outcome(_read_store, folder)
        assert kind == "refused" or _same(got, want), (target, mutation)


# -------------------------------------------------------------------------------- sample sets
def _read_set(folder: Path):
    from rcdm.run.sampleset import read_samples

    ss = read_samples(folder)
    return ss.manifest, ss.images, [r.to_json() for r in ss.rows], ss.vectors, ss.sampler


@pytest.fixture(scope="module")
def golden_set(tmp_path_factory) -> Path:
    from rcdm.run.sampleset import IndexRow, write_sample_set

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    rows = [IndexRow(sample=i, condition=i // 2, key=f"k{i // 2}", kind="store", seed=i) for i in range(4)]
    vectors = rng.standard_normal((2, 5)).astype(np.float32)
    record = {"sampler": {"steps": "ddim10", "guidance": 1.5}, "seed": 0}
    return write_sample_set(tmp_path_factory.mktemp("golden") / "samples", images, rows, vectors, record)


SET_FILES = ["manifest.json", "index.jsonl", "conds.npy", "samples.npz"]


@_SETTINGS
@given(target=st.sampled_from(SET_FILES), mutation=MUTATIONS)
def test_a_changed_sample_set_is_refused_or_reads_back_identically(golden_set, target, mutation):
    want = _read_set(golden_set)
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "samples"
        shutil.copytree(golden_set, folder)
        mutate(folder / target, mutation)
        kind, got = _outcome(_read_set, folder)
        assert kind == "refused" or _same(got, want), (target, mutation)
