"""What the evaluation tests share (the fixtures ``torch_home`` / ``use_torch_home`` through conftest.py): sample sets written by the core writer, a tiny case for the
input checks, the config, stand-in Inception weights, and finished evaluation folders written by
their owner (``rcdm.run.evaldir``) for the readers' tests.

The Inception weights are a He-initialised state dict for torch-fidelity's
FeatureExtractorInceptionV3, saved where torch.hub's cache puts the real file
($TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rcdm.config import EvaluateConfig

from tests.synthetic_store import make_store

RES = 32


def make_inception_weights(path: Path, seed: int = 0) -> Path:
    """He-initialised weights for torch-fidelity's Inception (its constructor insists on loading
    a file, so build it with the loader patched out, then initialise and save the state dict)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(seed)
    cls = fe.FeatureExtractorInceptionV3
    orig_load, orig_url = cls.load_state_dict, fe.load_state_dict_from_url
    try:
        fe.load_state_dict_from_url = lambda *a, **k: {}
        cls.load_state_dict = lambda self, sd, strict=True: None
        model = cls("inception-v3-compat", ["2048"])
    finally:
        cls.load_state_dict, fe.load_state_dict_from_url = orig_load, orig_url
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
        elif isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_parameters()
            mod.reset_running_stats()
        elif isinstance(mod, torch.nn.Linear):
            torch.nn.init.kaiming_normal_(mod.weight)
            torch.nn.init.zeros_(mod.bias)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME holding the generated weights where torch-fidelity's cache would."""
    from rcdm.analysis.evaluation.inception import INCEPTION_FILENAME

    home = tmp_path_factory.mktemp("torch_home")
    make_inception_weights(home / "hub" / "checkpoints" / INCEPTION_FILENAME)
    return home


@pytest.fixture
def use_torch_home(monkeypatch, torch_home):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home


def write_samples(d: Path, images, rows: list[dict], conds, **manifest) -> Path:
    """A sample set written by the core writer (``rows``: IndexRow fields; ``conds``: one row per
    condition), with the sampler's manifest fields as sample/stage.py records them."""
    from rcdm.run.sampleset import IndexRow, write_sample_set

    record = {"checkpoint": "synthetic", "store": "synthetic", "sampler": {"steps": "100"}}
    return write_sample_set(d, images, [IndexRow(**r) for r in rows], conds, {**record, **manifest})


def simple_case(tmp: Path, n: int = 12, dim: int = 8):
    """A tiny samples dir and a synthetic store (no real encoder): for the input checks."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    store = make_store(tmp / "store", feats)
    rows = [{"sample": i, "condition": i, "kind": "store", "key": f"item_{i:05d}", "seed": i} for i in range(n)]
    images = rng.integers(0, 256, size=(n, RES, RES, 3), dtype=np.uint8)
    samples = write_samples(tmp / "samples", images, rows, feats)
    return samples, store, images, rows, feats


def cfg_for(samples, store, out, **kw) -> EvaluateConfig:
    base = dict(samples=str(samples), reference=str(store), out=str(out), fid="off", device="cpu")
    base.update(kw)
    return EvaluateConfig(**base)


def fake_evaluation(d: Path, metrics: dict, ranks=(1,), inside=(True,)) -> Path:
    """A finished evaluation folder holding ``metrics`` (the schema's other keys empty: ``{}`` for
    the blocks, None for the rest), written by the folder's owner as `rcdm evaluate` would."""
    from rcdm.run.evaldir import METRICS_KEYS, EvalDir

    blocks = ("samples", "reference", "fid", "is", "rank", "faithfulness", "fd")
    unknown = set(metrics) - set(METRICS_KEYS)
    assert not unknown, f"not metrics.json keys: {unknown}"
    full = {k: metrics.get(k, {} if k in blocks else None) for k in METRICS_KEYS if k not in ("complete", "created")}
    EvalDir(d).write(
        full,
        ranks=np.asarray(ranks, np.int64),
        rank_in_reference=np.asarray(inside, bool),
        csv="run\n",
        markdown="# test\n",
        config=EvaluateConfig(),
        upstream={"samples_manifest_sha256": None, "reference_manifest_sha256": None},
    )
    return Path(d)
