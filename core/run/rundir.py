"""The training-run folder: ``rcdm train`` writes it, ``rcdm sample`` / ``analyze`` read it.

This module is the one owner of its layout:

    <run>/config.yaml                  the resolved TrainConfig
    <run>/model.json                   unet + diffusion config, encoder and preprocess of the
                                       training store, store manifest sha256, ema_rates, kimg,
                                       and which checkpoint the run-level files were copied from
    <run>/ema.safetensors (+ .json)    the first EMA rate's weights of the newest checkpoint
    <run>/checkpoints/step-NNNNNNN/    model.safetensors, ema-<rate>.safetensors (+ meta json
                                       each), model.json, accelerate/ (optimizer, scaler, RNG),
                                       state.json (written last)
    <run>/log.jsonl, <run>/tb/, <run>/grids/
    <run>/manifest.json                written last: the run is finished

A checkpoint is written under a temporary name and renamed into place when complete, so a
``step-*`` folder is always whole; resuming takes the newest one. A ``step-*`` folder has the
run folder's file names, so ``RunDir(step_folder).weights(...)`` / ``.meta()`` read it too.

The run-level ``ema.safetensors`` and ``model.json`` are copies of the newest checkpoint's
(:meth:`RunDir.publish`, ``model.json`` last, naming the checkpoint). A run killed between a
checkpoint's rename and that copy, or a newest checkpoint deleted by hand, leaves them older
or newer than the newest complete checkpoint: :meth:`RunDir.stale` sees it, and ``weights`` /
``meta`` then read that checkpoint instead, so a reader never gets other weights than it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from rcdm.config import PAPER_DIFFUSION
from rcdm.errors import InvalidInput, MissingInput, first_line
from rcdm.utils import atomic_write_json, read_json, sha256_file

__all__ = ["RunDir", "parse_ema"]

_STEP_RE = re.compile(r"^step-(\d{7})$")
_EMA_RE = re.compile(r"^ema-(.+)\.safetensors$")
_AUTO = ("auto", "yes")
_RAW = ("no", "none", "raw", "model")


def parse_ema(ema: Any) -> str | float:
    """``"auto"`` (the run's first EMA rate), ``"no"`` (the raw weights) or a rate (float)."""
    if ema is None or ema is True or (isinstance(ema, str) and ema.lower() in _AUTO):
        return "auto"
    if ema is False or (isinstance(ema, str) and ema.lower() in _RAW):
        return "no"
    try:
        return float(ema)
    except (TypeError, ValueError):
        raise InvalidInput(f"ema={ema!r}: expected 'auto', 'no' or an EMA rate like 0.9999") from None


class RunDir:
    """A training-run folder (or one of its ``checkpoints/step-N`` folders)."""

    CONFIG = "config.yaml"
    META = "model.json"
    WEIGHTS = "ema.safetensors"  # run level: the first EMA rate
    RAW = "model.safetensors"  # in a checkpoint: the trained (not averaged) weights
    CHECKPOINTS = "checkpoints"
    STATE = "state.json"
    ACCELERATE = "accelerate"
    LOG = "log.jsonl"
    TENSORBOARD = "tb"
    GRIDS = "grids"
    MANIFEST = "manifest.json"
    PUBLISHED = "published_from"  # model.json key: the checkpoint the run-level files copy

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._resolved = False  # set by current(): stale() was checked once, not again

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- names
    @staticmethod
    def ema_name(rate: float) -> str:
        """``ema-<rate>.safetensors``: 0.9999 -> ``ema-0.9999.safetensors``."""
        return f"ema-{float(rate):.10g}.safetensors"

    @staticmethod
    def checkpoint_name(step: int) -> str:
        return f"step-{step:07d}"

    @property
    def meta_file(self) -> Path:
        return self.path / self.META

    @property
    def manifest(self) -> Path:
        return self.path / self.MANIFEST

    @property
    def log(self) -> Path:
        return self.path / self.LOG

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def grids(self) -> Path:
        return self.path / self.GRIDS

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    # ---- checkpoints
    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as (step, folder), oldest first."""
        d = self.checkpoints_dir
        if not d.is_dir():
            return []
        found = []
        for p in d.iterdir():
            m = _STEP_RE.match(p.name)
            if m and p.is_dir() and (p / self.STATE).is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, None if there is none."""
        cks = self.checkpoints()
        return cks[-1][1] if cks else None

    def begin(self, step: int) -> Path:
        """An empty temporary folder to write checkpoint ``step`` into (main process only)."""
        tmp = self.pending(step)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by a run killed while writing
            shutil.rmtree(tmp)
        tmp.mkdir()
        return tmp

    def pending(self, step: int) -> Path:
        """The temporary folder :meth:`begin` makes for ``step`` (every rank needs its name)."""
        return self.checkpoints_dir / f".{self.checkpoint_name(step)}.tmp"

    def commit(self, tmp: Path, state: dict) -> Path:
        """Write ``state.json`` last, then rename ``tmp`` to its ``step-NNNNNNN`` name."""
        atomic_write_json(tmp / self.STATE, state)
        final = self.checkpoints_dir / self.checkpoint_name(int(state["step"]))
        if final.exists():  # same step written again (e.g. the final one after a resume)
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    @classmethod
    def read_state(cls, checkpoint: Path) -> dict:
        """A checkpoint's ``state.json`` (step, nimg, seed, ...)."""
        path = Path(checkpoint) / cls.STATE
        try:
            state = read_json(path)
            state["step"], state["nimg"] = int(state["step"]), int(state["nimg"])
        except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError and UnicodeDecodeError too
            raise cls.damaged(path, e) from None
        return state

    @classmethod
    def damaged(cls, file: Path, error: BaseException) -> InvalidInput:
        """The error for a file of a checkpoint (``checkpoints/step-N/...``) that cannot be read:
        it names the file and the fix (delete that checkpoint to resume from the one before)."""
        file = Path(file)
        ckpt = next((p for p in (file, *file.parents) if _STEP_RE.match(p.name)), file.parent)
        before = [p for s, p in cls(ckpt.parent.parent).checkpoints() if p.name < ckpt.name]
        fix = (
            f"delete {ckpt} to resume from the checkpoint before it, {before[-1].name}"
            if before
            else f"delete {ckpt} to start over (there is no earlier checkpoint)"
        )
        return InvalidInput(
            f"{file} cannot be read ({first_line(error, 160)}), so training cannot resume from "
            f"{ckpt.name}; {fix}, or start a new --out"
        )

    def prune(self, keep: int, milestone_nimg: int = 0) -> list[Path]:
        """Delete all but the newest ``keep`` checkpoints (``keep`` <= 0: keep all), sparing each
        milestone: the first checkpoint at or past a multiple of ``milestone_nimg`` images."""
        if keep <= 0:
            return []
        removed, prev_block = [], 0
        for _, p in self.checkpoints()[:-keep]:
            try:
                block = self.read_state(p)["nimg"] // milestone_nimg if milestone_nimg > 0 else 0
            except (OSError, InvalidInput):  # an unreadable state.json: not a milestone
                block = prev_block
            if block > prev_block:
                prev_block = block
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        return removed

    def publish(self, checkpoint: Path) -> None:
        """Make ``checkpoint`` the run's current one: copy its first EMA rate's weights (meta JSON
        first, as ``save_weights`` does) to ``ema.safetensors``, then its ``model.json``, last,
        naming the checkpoint (until then :meth:`stale` sends readers to the checkpoint)."""
        from rcdm.model.weights import meta_path

        meta = read_json(checkpoint / self.META)
        src = checkpoint / self.ema_name(meta["ema_rates"][0])
        for a, b in ((meta_path(src), meta_path(self.path / self.WEIGHTS)), (src, self.path / self.WEIGHTS)):
            tmp = b.with_name(f".{b.name}.tmp-{os.getpid()}")
            try:
                shutil.copyfile(a, tmp)
                os.replace(tmp, b)
            except OSError as e:
                # a full disk names the source (shutil) or nothing: name the file being written
                if e.filename is None or e.errno in (errno.ENOSPC, errno.EDQUOT):
                    e.filename, e.filename2 = str(b), None
                raise
            finally:
                tmp.unlink(missing_ok=True)
        atomic_write_json(self.meta_file, {**meta, self.PUBLISHED: self._identity(checkpoint)})

    def _identity(self, checkpoint: Path) -> dict:
        return {"checkpoint": checkpoint.name, "state_sha256": sha256_file(checkpoint / self.STATE)}

    def stale(self) -> Path | None:
        """The newest complete checkpoint if the run-level ``ema.safetensors`` / ``model.json`` are
        not copies of it (a run killed before :meth:`publish` finished, a checkpoint deleted);
        None if they are, or if this folder has no checkpoints (a checkpoint folder itself)."""
        latest = self.latest()
        if latest is None:
            return None
        try:
            current = read_json(self.meta_file).get(self.PUBLISHED) == self._identity(latest)
        except (OSError, ValueError, AttributeError):
            current = False
        return None if current else latest

    def current(self) -> RunDir:
        """The folder this one's ``weights`` / ``meta`` read: itself, or its newest checkpoint when
        the run-level files are :meth:`stale`. Decided once: the returned folder's ``weights`` and
        ``meta`` do not check again, so both come from the same folder."""
        if self._resolved:
            return self
        stale = self.stale()
        run = RunDir(stale if stale is not None else self.path)
        run._resolved = True
        return run

    def truncate_log(self, step: int) -> None:
        """Drop log lines written after ``step`` by a run killed before its next checkpoint."""
        path = self.log
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:  # a half-written last line
                continue
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, path)

    # ---- the model
    def meta(self) -> dict:
        """``model.json``: what the model is and what it was trained on (the newest checkpoint's
        when the run-level files are :meth:`stale`)."""
        return self.current()._meta_here()

    def _meta_here(self) -> dict:
        """This folder's ``model.json``, without the :meth:`stale` check."""
        if not self.meta_file.is_file():
            raise MissingInput(
                f"{self.path} has no {self.META}: pass a run directory written by rcdm train "
                "(or one of its checkpoints/step-N folders)"
            )
        meta = read_json(self.meta_file)
        meta.pop(self.PUBLISHED, None)
        return meta

    def write_meta(self, meta: dict) -> Path:
        return atomic_write_json(self.meta_file, meta)

    def ema_files(self) -> dict[float, Path]:
        """This folder's ``ema-<rate>.safetensors`` files by rate."""
        found = {}
        for p in self.path.glob("ema-*.safetensors"):
            m = _EMA_RE.match(p.name)
            try:
                found[float(m.group(1))] = p  # type: ignore[union-attr]
            except ValueError:
                continue
        return found

    def weights(self, ema: Any = "auto") -> Path:
        """THE weights file this folder gives for ``ema`` (``load_model`` loads this file).

        - ``"auto"``: the run's first EMA rate: ``ema.safetensors`` in a run folder, the
          ``ema-<ema_rates[0]>`` file in a checkpoint folder (one EMA file: that one; none:
          ``model.safetensors``);
        - a rate: ``ema-<rate>.safetensors`` (or ``ema.safetensors`` when it holds that rate);
        - ``"no"``: ``model.safetensors``, the raw weights.

        A run folder that lacks the file, or whose run-level files are :meth:`stale`, asks its
        newest checkpoint.
        """
        return self.current()._weights(parse_ema(ema), ema)

    def _weights(self, choice: str | float, ema: Any) -> Path:
        """:meth:`weights` in this folder (already :meth:`current`), else its newest checkpoint."""
        found = self._weights_here(choice)
        if found is not None:
            return found
        latest = self.latest()
        if latest is not None:
            return RunDir(latest)._weights(choice, choice)
        have = sorted(p.name for p in self.path.glob("*.safetensors")) if self.path.is_dir() else []
        raise MissingInput(
            f"no weights for ema={ema!r} in {self.path} (it has: {', '.join(have) or 'no .safetensors files'}); "
            "pass a run directory written by rcdm train, a checkpoints/step-N folder, or a weights file"
        )

    def _weights_here(self, choice: str | float) -> Path | None:
        raw, run_level, emas = self.path / self.RAW, self.path / self.WEIGHTS, self.ema_files()
        if choice == "no":
            return raw if raw.is_file() else None
        if choice == "auto":
            if run_level.is_file():
                return run_level
            rates = self._meta_here().get("ema_rates") if self.meta_file.is_file() else None
            if rates and float(rates[0]) in emas:
                return emas[float(rates[0])]
            if len(emas) > 1:
                raise InvalidInput(
                    f"{self.path} holds EMA rates {sorted(emas)} and no {self.META} naming the run's "
                    "first: pass ema=RATE (sample.ema / --set sample.ema=0.9999)"
                )
            if emas:
                return next(iter(emas.values()))
            return raw if raw.is_file() else None
        if choice in emas:
            return emas[choice]  # type: ignore[index]
        if run_level.is_file() and self._rate_of(run_level) == choice:
            return run_level
        return None

    def _rate_of(self, weights: Path) -> float | None:
        """The EMA rate a run-level weights file holds (its meta, else model.json's first)."""
        from rcdm.model.weights import meta_path

        if meta_path(weights).is_file():
            rate = read_json(meta_path(weights)).get("ema_rate")
        else:
            rates = self._meta_here().get("ema_rates") if self.meta_file.is_file() else None
            rate = rates[0] if rates else None
        return None if rate is None else float(rate)

    def check_continues(self, meta: dict, store: Any) -> None:
        """A folder that already holds a run takes more training only of the same model on the
        same store (``meta``: the model.json training would write; ``store``: its FeatureStore)."""
        try:
            old = self.meta()
        except MissingInput:  # a new run
            return
        fix = "use a new --out, or the store and settings the run was started with"
        if old.get("store_manifest_sha256") != meta["store_manifest_sha256"]:
            raise InvalidInput(
                f"run {self.path} was trained on a store with manifest sha256 "
                f"{str(old.get('store_manifest_sha256'))[:12]}..., but {store.path} has "
                f"{meta['store_manifest_sha256'][:12]}...; {fix}"
            )
        a, b = old.get("unet", {}), meta["unet"]
        diff = [
            f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if _norm(a.get(k)) != _norm(b.get(k))
        ]
        if diff:
            raise InvalidInput(f"run {self.path} holds a model with other settings ({', '.join(diff)}); {fix}")
        # the opt-in diffusion options (docs/recipes.md): absent means the paper's
        da, db = old.get("diffusion") or {}, meta.get("diffusion") or {}
        for k, paper in PAPER_DIFFUSION.items():
            if da.get(k, paper) != db.get(k, paper):
                raise InvalidInput(
                    f"run {self.path} was trained with {k} {da.get(k, paper)!r}, not {db.get(k, paper)!r}; {fix}"
                )
        if list(old.get("ema_rates", [])) != list(meta["ema_rates"]):
            raise InvalidInput(
                f"run {self.path} keeps EMA rates {old.get('ema_rates')}, not {meta['ema_rates']}; {fix}"
            )


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v
