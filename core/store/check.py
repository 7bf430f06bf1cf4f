"""Checking a feature store: ``info`` (a summary) and ``verify`` (counts, shapes, dtypes, sha256s).

Part of :mod:`rcdm.store`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from rcdm.store.format import CLS, FEAT, FORMATS, JPG, index_tar
from rcdm.store.integrity import shard_problem
from rcdm.store.read import FeatureStore, read_manifest
from rcdm.utils import read_json

# --------------------------------------------------------------------------------------------
# info / verify
# --------------------------------------------------------------------------------------------

# Non-finite features are what the encoder gave, so --repair (which re-encodes) would write them again.
NONFINITE_FIX = (
    "the encoder's output itself: re-extract into a new --out with --set extract.dtype=float32 (values "
    "beyond float16) or --set extract.amp=none (an overflow under mixed precision)"
)


def _fmt_pp(pp: dict) -> str:
    if "rule" in pp:
        return f"{pp['rule']}; mean {pp.get('mean')}, std {pp.get('std')}"
    return ", ".join(f"{k} {v}" for k, v in pp.items())


def info(path: str | Path) -> str:
    """A human summary of a store."""
    st = FeatureStore(path)
    m = st.manifest
    enc = m["encoder"]
    sha = enc.get("weights_sha256")
    src = m["source"]
    lines = [
        f"store       {st.path}",
        f"encoder     {enc.get('name')} ({enc.get('arch', '?')}), layer {st.layer}, dim {st.dim}, "
        f"weights {(sha[:16] + '...') if sha else 'none (' + str(enc.get('weights') or 'seeded init') + ')'}",
        f"preprocess  {_fmt_pp(m['preprocess'])}",
        *(
            [
                f"tokens      {st.tokens['grid'][0]}x{st.tokens['grid'][1]} grid of {st.tokens['dim']}-d tokens "
                f"(patch {enc.get('patch_size')}), stored flat per view"
            ]
            if st.tokens
            else []
        ),
        f"views       {', '.join(st.views)}",
        f"rows        {len(st)} in {len(m['shards'])} shard(s), format {st.format}, dtype {st.dtype}, "
        f"image bytes {'yes' if st.has_images else 'no'}",
        "source      " + ", ".join(f"{k} {v}" for k, v in src.items() if v is not None),
        f"failed      {m['n_failed']}"
        + "".join(f"\n              {f.get('key')}: {f.get('reason')}" for f in m["failed"][:10])
        + ("\n              ..." if m["n_failed"] > 10 else ""),
        f"created     {m['created']} by rcdm {m['tool'].get('version')}",
        f"manifest    sha256 {st.manifest_sha256}",
    ]
    return "\n".join(lines)


def verify(path: str | Path) -> list[str]:
    """Re-check counts, shapes, dtypes and sha256s; return the problems found (empty: OK)."""
    path = Path(path)
    m = read_manifest(path)  # a store of another format, or an edited manifest, is refused here as by every reader
    problems: list[str] = []
    fmt = m["format"]
    if fmt not in FORMATS:
        return problems + [f"unknown format {fmt!r}"]
    expect = (len(m["views"]), int(m["dim"]), np.dtype(m["dtype"]), bool(m["has_images"]))  # V, D, dtype, images
    total = 0
    seen_keys: set[str] = set()
    for s in m["shards"]:
        keys = _verify_shard(path, s, fmt, expect, problems)
        if keys is None:  # missing or unreadable: said, and its rows not counted
            continue
        dup = seen_keys.intersection(keys)
        if dup:
            problems.append(f"{s['file']}: {len(dup)} key(s) also in an earlier shard, e.g. {sorted(dup)[0]!r}")
        seen_keys.update(keys)
        total += int(s["rows"])
    return problems + _verify_counts(m, total)


def _verify_shard(path: Path, s: dict, fmt: str, expect: tuple, problems: list[str]) -> list[str] | None:
    """Check the manifest's shard entry ``s`` (file, record, contents), adding to ``problems``;
    return the shard's keys, or None when it is missing or cannot be read."""
    f = path / s["file"]
    problem = shard_problem(f, s["sha256"])  # the words every reader of the store uses
    if problem:
        problems.append(f"{s['file']}: {problem}")
    if not f.is_file():
        return None
    _verify_record(path, s, problems)
    try:
        return (_verify_h5 if fmt == "h5" else _verify_tar)(f, s, *expect, problems)
    except Exception as e:  # an unreadable shard is a finding, not a crash
        problems.append(f"{s['file']}: cannot be read ({type(e).__name__}: {e})")
        return None


def _verify_record(path: Path, s: dict, problems: list[str]) -> None:
    """The shard's own record (``shard-NNNNN.json``), where present, agrees with the manifest."""
    rec_path = path / (Path(s["file"]).stem + ".json")
    if not rec_path.is_file():
        return
    try:
        rec = read_json(rec_path)
    except ValueError:  # not JSON, or not even UTF-8 text
        problems.append(f"{rec_path.name}: not valid JSON")
        return
    if not isinstance(rec, dict) or rec.get("sha256") != s["sha256"] or rec.get("rows") != s["rows"]:
        problems.append(f"{rec_path.name}: record disagrees with the manifest")


def _verify_counts(m: dict, total: int) -> list[str]:
    """The manifest's row count and the source's item count against the ``total`` rows of its shards."""
    problems = []
    if int(m["rows"]) != total:
        problems.append(f"manifest says {m['rows']} rows but its shards list {total}")
    n_items = m["source"].get("n_items")
    if n_items is not None and total + int(m["n_failed"]) != int(n_items):
        problems.append(f"{total} rows + {m['n_failed']} failed != {n_items} source items in the manifest")
    return problems


def _verify_h5(f: Path, s: dict, V: int, D: int, dtype: np.dtype, has_images: bool, problems: list[str]) -> list[str]:
    import h5py

    name, n = s["file"], int(s["rows"])
    with h5py.File(f, "r") as h:
        for ds in ("feat", "key", "label"):
            if ds not in h:
                problems.append(f"{name}: dataset {ds!r} missing")
                return []
        feat, key, label = h["feat"], h["key"], h["label"]
        if feat.shape != (n, V, D):
            problems.append(f"{name}: feat shape {feat.shape}, expected {(n, V, D)}")
        if feat.dtype != dtype:
            problems.append(f"{name}: feat dtype {feat.dtype}, expected {dtype}")
        if key.shape != (n,):
            problems.append(f"{name}: key shape {key.shape}, expected {(n,)}")
        if label.shape != (n,) or label.dtype != np.int64:
            problems.append(f"{name}: label shape {label.shape} dtype {label.dtype}, expected ({n},) int64")
        if feat.size and not np.isfinite(feat[:]).all():
            problems.append(f"{name}: feat holds non-finite values; {NONFINITE_FIX}")
        return key.asstr()[:].tolist()


def _verify_tar(f: Path, s: dict, V: int, D: int, dtype: np.dtype, has_images: bool, problems: list[str]) -> list[str]:
    name, n = s["file"], int(s["rows"])
    samples = index_tar(f)
    if len(samples) != n:
        problems.append(f"{name}: {len(samples)} samples, expected {n}")
    bad = 0
    with open(f, "rb") as fh:
        for key, members in samples:
            need = {FEAT, CLS} | ({JPG} if has_images else set())
            if not need <= members.keys():
                problems.append(f"{name}: sample {key!r} lacks {sorted(need - members.keys())}")
                continue
            fh.seek(members[FEAT][0])
            arr = np.load(io.BytesIO(fh.read(members[FEAT][1])), allow_pickle=False)
            fh.seek(members[CLS][0])
            try:
                int(fh.read(members[CLS][1]))
            except ValueError:
                problems.append(f"{name}: sample {key!r} has a cls that is not an integer")
            if arr.shape != (V, D) or arr.dtype != dtype or not np.isfinite(arr).all():
                bad += 1
                if bad == 1:
                    problems.append(
                        f"{name}: sample {key!r} feat.npy is {arr.shape} {arr.dtype}, expected {(V, D)} {dtype} and "
                        f"finite; {NONFINITE_FIX}"
                    )
    return [k for k, _ in samples]
