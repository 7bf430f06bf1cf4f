"""The run folder (rcdm.run.rundir.RunDir) and the store-fits-run check (rcdm.run.conditioning)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rcdm.data.images import PREPROCESS
from rcdm.errors import InvalidInput, MissingInput
from rcdm.run.conditioning import Conditioning, check_conditioning, mismatches, same_representation
from rcdm.run.rundir import RunDir

from tests.synthetic_store import make_store

# ------------------------------------------------------------------------------ checkpoints


def _commit(run: RunDir, step: int) -> Path:
    tmp = run.begin(step)
    (tmp / "x").write_text(str(step))
    return run.commit(tmp, {"step": step, "nimg": 4 * step})


def test_checkpoints_begin_commit_latest_prune(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.checkpoints() == [] and run.latest() is None
    for step in (3, 6, 9):
        _commit(run, step)
    run.begin(12)  # a checkpoint being written (or killed while written) is not one
    assert [s for s, _ in run.checkpoints()] == [3, 6, 9]
    assert run.latest() == run.checkpoints_dir / "step-0000009"
    assert RunDir.read_state(run.latest()) == {"step": 9, "nimg": 36}
    assert run.prune(0) == [] and run.prune(2) == [run.checkpoints_dir / "step-0000003"]
    assert [s for s, _ in run.checkpoints()] == [6, 9]
    # the same step again (the final one after a resume) replaces it
    tmp = run.begin(9)
    assert tmp == run.pending(9) and not any(tmp.iterdir())
    run.commit(tmp, {"step": 9, "nimg": 40})
    assert RunDir.read_state(run.latest())["nimg"] == 40


def test_truncate_log_drops_steps_after_the_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    run.log.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    run.truncate_log(3)
    assert [json.loads(line)["step"] for line in run.log.read_text().splitlines()] == [1, 2, 3]
    RunDir(tmp_path / "none").truncate_log(3)  # no log yet: nothing to do


# ------------------------------------------------------------------------------ weights rule


def _weights(path: Path, rate: float | None) -> Path:
    """A stand-in weights file with its meta JSON beside it (RunDir only looks at names)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"w")
    Path(str(path) + ".json").write_text(json.dumps({"ema_rate": rate}))
    return path


def _step_folder(folder: Path, rates: list[float], meta: bool = True) -> Path:
    _weights(folder / "model.safetensors", None)
    for r in rates:
        _weights(folder / RunDir.ema_name(r), r)
    if meta:
        (folder / "model.json").write_text(json.dumps({"ema_rates": rates}))
    return folder


def test_weights_rule_of_a_checkpoint_folder(tmp_path):
    step = RunDir(_step_folder(tmp_path / "step", [0.9999, 0.999]))
    # auto: the run's first rate, not the alphabetically first file (ema-0.999 < ema-0.9999)
    assert step.weights().name == "ema-0.9999.safetensors"
    assert step.weights("auto") == step.weights(None) == step.weights(True)
    assert step.weights("0.999").name == step.weights(0.999).name == "ema-0.999.safetensors"
    assert step.weights("no").name == step.weights(False).name == "model.safetensors"
    with pytest.raises(MissingInput, match=r"ema=0\.5.*ema-0\.999\.safetensors"):
        step.weights(0.5)
    with pytest.raises(InvalidInput, match="expected 'auto', 'no' or an EMA rate"):
        step.weights("best")
    # no model.json to name the first rate: one EMA file is that one, several are ambiguous
    one = RunDir(_step_folder(tmp_path / "one", [0.99], meta=False))
    assert one.weights().name == "ema-0.99.safetensors"
    two = RunDir(_step_folder(tmp_path / "two", [0.99, 0.9], meta=False))
    with pytest.raises(InvalidInput, match=r"EMA rates \[0.9, 0.99\].*pass ema=RATE"):
        two.weights()
    raw = RunDir(_step_folder(tmp_path / "raw", [], meta=False))
    assert raw.weights().name == "model.safetensors"
    with pytest.raises(MissingInput, match="no .safetensors files"):
        RunDir(tmp_path / "empty").weights()


def test_weights_rule_of_a_run_folder_and_publish(tmp_path):
    run = RunDir(tmp_path / "run")
    (tmp_path / "run").mkdir()
    with pytest.raises(MissingInput, match="no .safetensors files"):
        run.weights()
    tmp = run.begin(4)
    _step_folder(tmp, [0.9999, 0.999])
    ck = run.commit(tmp, {"step": 4, "nimg": 16})
    # before publish (a run killed in between): the newest checkpoint answers
    assert run.weights() == ck / "ema-0.9999.safetensors"
    run.publish(ck)
    assert run.weights() == run.path / "ema.safetensors"
    assert (run.path / "ema.safetensors").read_bytes() == (ck / "ema-0.9999.safetensors").read_bytes()
    assert json.loads((run.path / "ema.safetensors.json").read_text())["ema_rate"] == 0.9999
    assert run.meta() == {"ema_rates": [0.9999, 0.999]}
    # the run-level file for its own rate; other rates and the raw weights from the newest checkpoint
    assert run.weights(0.9999) == run.path / "ema.safetensors"
    assert run.weights(0.999) == ck / "ema-0.999.safetensors"
    assert run.weights("no") == ck / "model.safetensors"


def test_stale_run_level_files_give_way_to_the_newest_checkpoint(tmp_path):
    """ema.safetensors / model.json that are not copies of the newest complete checkpoint (a run
    killed between commit and publish, a checkpoint deleted, an older run) are not what a reader
    gets: weights() and meta() read that checkpoint until it is published."""
    import shutil

    run = RunDir(tmp_path / "run")

    def commit(step: int) -> Path:
        tmp = run.begin(step)
        _step_folder(tmp, [0.9999])
        (tmp / "model.json").write_text(json.dumps({"ema_rates": [0.9999], "kimg": step}))
        return run.commit(tmp, {"step": step, "nimg": 1000 * step})

    first = commit(1)
    assert run.stale() == first and run.meta()["kimg"] == 1  # nothing published yet
    run.publish(first)
    assert run.stale() is None and run.weights() == run.path / "ema.safetensors"
    assert run.meta() == {"ema_rates": [0.9999], "kimg": 1}  # the bookkeeping key is not meta
    assert json.loads(run.meta_file.read_text())[RunDir.PUBLISHED]["checkpoint"] == "step-0000001"
    second = commit(2)  # killed before publish
    assert run.stale() == second
    assert run.weights() == second / "ema-0.9999.safetensors" and run.meta()["kimg"] == 2
    assert run.weights("no") == second / "model.safetensors"
    pinned = run.current()  # decided once: weights and meta of that folder, not re-checked
    assert pinned.path == second and pinned.current() is pinned
    run.publish(second)
    assert run.stale() is None and run.meta()["kimg"] == 2
    assert pinned.weights() == second / "ema-0.9999.safetensors" and pinned.meta()["kimg"] == 2
    assert run.current().path == run.path
    shutil.rmtree(second)  # deleted by hand: the run-level files are newer than any checkpoint
    assert run.stale() == first and run.weights() == first / "ema-0.9999.safetensors"
    run.publish(first)
    assert run.stale() is None
    # the same step written again (another state.json) is not the published one
    tmp = run.begin(1)
    _step_folder(tmp, [0.9999])
    (tmp / "model.json").write_text(json.dumps({"ema_rates": [0.9999], "kimg": 1}))
    assert run.commit(tmp, {"step": 1, "nimg": 1000, "time": "later"}) == first and run.stale() == first
    # a model.json without the record (not written by publish): the checkpoint answers
    run.publish(first)
    assert run.stale() is None
    run.meta_file.write_text(json.dumps({"ema_rates": [0.9999], "kimg": 0.5}))
    assert run.stale() == first and run.meta()["kimg"] == 1
    # a checkpoint folder, or a run without checkpoints, is never stale
    assert RunDir(first).stale() is None
    shutil.rmtree(run.checkpoints_dir)
    assert run.stale() is None and run.weights() == run.path / "ema.safetensors"


def test_damaged_checkpoint_file_message(tmp_path):
    run = RunDir(tmp_path / "run")
    for step in (3, 6):
        _commit(run, step)
    bad = run.checkpoints_dir / "step-0000006" / "accelerate" / "optimizer.bin"
    msg = str(RunDir.damaged(bad, RuntimeError("PytorchStreamReader failed. This is an internal error.\nmore")))
    assert msg == (
        f"{bad} cannot be read (PytorchStreamReader failed), so training cannot resume from step-0000006; "
        f"delete {bad.parent.parent} to resume from the checkpoint before it, step-0000003, or start a new --out"
    )
    (run.checkpoints_dir / "step-0000006" / "state.json").write_text("{")
    with pytest.raises(InvalidInput, match=r"state\.json cannot be read .*step-0000003"):
        RunDir.read_state(run.latest())
    assert "no earlier checkpoint" in str(RunDir.damaged(run.checkpoints_dir / "step-0000003" / "x", ValueError()))


def test_meta_of_a_folder_without_model_json(tmp_path):
    with pytest.raises(MissingInput, match="has no model.json"):
        RunDir(tmp_path).meta()


# ------------------------------------------------------------------------------ conditioning

RANDOM_RN50 = {
    "name": "random-rn50",
    "arch": "resnet50",
    "layer": "trunk",
    "dim": 2048,
    "weights": None,
    "weights_sha256": None,
    "seed": 0,
}
RCDM_PP = PREPROCESS["rcdm"].to_dict()


def _run_meta(**encoder) -> dict:
    return {"unet": {"cond": "embed", "cond_dim": 2048}, "encoder": {**RANDOM_RN50, **encoder}, "preprocess": RCDM_PP}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """random-rn50 stores: as the run's, another seed, another input size, another preprocessing,
    another encoder, and a 512-d one."""
    root = tmp_path_factory.mktemp("stores")
    feats = np.zeros((2, 2048), np.float32)
    small = replace(PREPROCESS["rcdm"], resize=112, crop=112).to_dict()
    made = {
        "same": make_store(root / "same", feats, encoder_info=RANDOM_RN50, preprocess=RCDM_PP),
        "seed": make_store(root / "seed", feats, encoder_info={**RANDOM_RN50, "seed": 1}, preprocess=RCDM_PP),
        "size": make_store(root / "size", feats, encoder_info=RANDOM_RN50, preprocess=small),
        "pp": make_store(root / "pp", feats, encoder_info=RANDOM_RN50, preprocess=PREPROCESS["imagenet"].to_dict()),
        "enc": make_store(
            root / "enc",
            feats,
            encoder_info={**RANDOM_RN50, "name": "dino-rn50", "seed": None, "weights_sha256": "ab" * 32},
            preprocess=RCDM_PP,
        ),
        "dim": make_store(
            root / "dim", np.zeros((2, 512), np.float32), encoder_info={**RANDOM_RN50, "dim": 512}, preprocess=RCDM_PP
        ),
    }
    return made


@pytest.mark.parametrize(
    ("which", "message", "fix"),
    [
        ("seed", r"random encoder seed 0 vs 1", ", extract.seed=0,"),
        ("size", r"input size 224 vs 112, resize 224 vs 112", ", extract.input_size=224,"),
        (
            "pp",
            r"interpolation 'bicubic' vs 'bilinear', value range \[-1.0, 1.0\] vs \[0.0, 1.0\]",
            ", extract.preprocess=rcdm,",
        ),
        ("enc", r"encoder 'random-rn50' vs 'dino-rn50'", "--layer trunk`, or"),
        ("dim", r"feature dim 2048 vs 512", ""),
    ],
)
def test_check_conditioning_refuses_other_features(stores, which, message, fix):
    from rcdm.store import FeatureStore

    store = FeatureStore(stores[which])
    with pytest.raises(InvalidInput, match=message) as err:
        check_conditioning(_run_meta(), store, what="checkpoint runs/a")
    msg = str(err.value)
    # both sides and the fix are named
    assert msg.startswith("checkpoint runs/a was trained on encoder random-rn50/trunk (2048-d features)")
    assert f"but the store {store.path} holds" in msg
    assert "Pass the store extracted with `rcdm extract --encoder random-rn50 --layer trunk`" in msg and fix in msg
    # the boolean form is the same comparison
    assert not same_representation(Conditioning.of_run(_run_meta()), Conditioning.of_store(store))


def test_matching_and_unrecorded_fields_pass(stores):
    from rcdm.store import FeatureStore

    same = FeatureStore(stores["same"])
    check_conditioning(_run_meta(), same)
    assert same_representation(Conditioning.of_run(_run_meta()), Conditioning.of_store(same))
    # fields a checkpoint does not record are not compared: an older run without preprocess or
    # seed, an official checkpoint with only its dimension
    older = {"unet": {"cond_dim": 2048}, "encoder": {k: v for k, v in RANDOM_RN50.items() if k != "seed"}}
    check_conditioning(older, FeatureStore(stores["seed"]))
    check_conditioning(older, FeatureStore(stores["pp"]))
    check_conditioning({"unet": {"cond_dim": 2048}, "encoder": None}, FeatureStore(stores["enc"]))
    # the preprocessing may be recorded inside the encoder info only (Encoder.info() has it)
    inner = {"unet": {"cond_dim": 2048}, "encoder": {**RANDOM_RN50, "preprocess": RCDM_PP}}
    with pytest.raises(InvalidInput, match="input size 224 vs 112"):
        check_conditioning(inner, FeatureStore(stores["size"]))


def test_official_file_name_hint(stores):
    from rcdm.store import FeatureStore

    enc = FeatureStore(stores["enc"])  # dino-rn50 / trunk
    official = {"unet": {"cond_dim": 2048}, "encoder": None}
    check_conditioning({**official, "encoder_hint": {"name": "dino", "layer": "trunk"}}, enc)
    with pytest.raises(InvalidInput, match=r"named for encoder simclr \(trunk\) but the store .* dino-rn50 \(trunk\)"):
        check_conditioning({**official, "encoder_hint": {"name": "simclr", "layer": "trunk"}}, enc)
    with pytest.raises(InvalidInput, match=r"named for encoder dino \(head\)"):
        check_conditioning({**official, "encoder_hint": {"name": "dino", "layer": "head"}}, enc)
    # a file name that names no encoder of the registry is no hint
    check_conditioning({**official, "encoder_hint": {"name": "test", "layer": "trunk"}}, enc)


def test_mismatch_list_is_symmetric_in_what_it_compares():
    a = Conditioning(dim=8, encoder={"name": "x", "layer": "trunk", "seed": 0}, preprocess=RCDM_PP)
    b = Conditioning(dim=8, encoder={"name": "x", "layer": "trunk", "seed": 3}, preprocess=None)
    assert [m.what for m in mismatches(a, b)] == [m.what for m in mismatches(b, a)] == ["random encoder seed"]
