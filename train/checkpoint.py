"""What training resumes from, saved and loaded as one object.

A checkpoint (``RunDir`` owns the folder's layout) holds the model's weights and every EMA as
safetensors with their meta JSON, ``model.json``, accelerate's state (optimizer, grad scaler and
every rank's RNG) and ``state.json`` (step, nimg, seed), written last. The weights are ours:
accelerate saves only the rest (the hooks below empty its model list).

What can go wrong says so in one line: a full disk while saving (``DiskFull``: the temporary
folder is removed, the previous checkpoint stays the newest), a damaged file in the checkpoint
resumed from (``InvalidInput`` naming it: delete that checkpoint to resume from the one before),
and an RNG state that cannot be restored (a warning, and a ``log.jsonl`` line: training goes on,
but its random draws are not those of an uninterrupted run).
"""

from __future__ import annotations

import errno
import pickle
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rcdm.errors import DiskFull, InvalidInput, disk_full_errno, first_line
from rcdm.run.rundir import RunDir
from rcdm.train.ema import EMA
from rcdm.utils import now_iso

# accelerate writes (and reads) its files in this order (accelerate.checkpointing); RNG last.
_ACCELERATE_FILES = (
    "optimizer*.bin",
    "scheduler*.bin",
    "sampler*.bin",
    "dl_state_dict*.bin",
    "scaler.pt",
)
_RNG_FILE = "random_states_{rank}.pkl"


@dataclass
class TrainState:
    """The model (unwrapped), its EMAs, the optimizer inside ``accelerator``, and progress.

    ``step`` counts optimiser steps; ``nimg`` is the data position: the global stream index of
    the next image. ``seed`` fixes the data order and the noise, so a checkpoint made with
    another seed is refused.
    """

    accelerator: Any
    net: torch.nn.Module
    ema: EMA
    seed: int
    batch_size: int
    # write the weights in a background thread while training goes on (train.checkpoint_async)
    background: bool = False
    step: int = 0
    nimg: int = 0
    # set by load(): this rank's RNG state was not restored ({"file", "reason"})
    rng_lost: dict | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # We write the weights ourselves (safetensors + meta json): accelerate keeps only the
        # optimizer, scaler and RNG states.
        self.accelerator.register_save_state_pre_hook(lambda models, weights, _dir: weights.clear())
        self.accelerator.register_load_state_pre_hook(lambda models, _dir: models.clear())

    def save(self, run: RunDir, meta: dict, keep: int = 0, milestone_kimg: float = 0.0) -> Path:
        """Write ``checkpoints/step-NNNNNNN`` atomically (every rank calls this), make it the run's
        (``ema.safetensors``, ``model.json``), then keep only the newest ``keep`` (0: all) plus the
        milestones (the first checkpoint past each multiple of ``milestone_kimg``).

        With ``background`` (train.checkpoint_async; auto: on CUDA) the weights are copied here
        (to host memory; on a CPU into new memory, since training updates its tensors in place)
        and written, committed and published by a background thread while training goes on (one
        checkpoint in flight: the next save, or :meth:`wait_for_writes` at the end, waits for it
        and raises its error). Otherwise every write happens here.
        """
        self.wait_for_writes()
        accelerator, main = self.accelerator, self.accelerator.is_main_process
        tmp = run.begin(self.step) if main else run.pending(self.step)
        accelerator.wait_for_everyone()
        with _Writes(run, tmp, run.checkpoint_name(self.step), main) as w:
            w.file = tmp / RunDir.ACCELERATE
            accelerator.save_state(str(w.file))  # optimizer, scaler, RNG of every rank
        accelerator.wait_for_everyone()  # every rank's RNG file is in tmp before it is renamed
        final = run.checkpoints_dir / run.checkpoint_name(self.step)
        if main:
            copy = self.background  # the tensors must not change while the thread writes them
            weights = {None: _cpu(self.net, copy), **{rate: _cpu(m, copy) for rate, m in self.ema.models.items()}}
            state = {
                "step": self.step,
                "nimg": self.nimg,
                "kimg": self.nimg / 1000,
                "seed": self.seed,  # the stream and the noise are functions of it
                "batch_size": self.batch_size,
                "time": now_iso(),
            }
            args = (run, tmp, weights, meta, state, keep, int(round(milestone_kimg * 1000)))
            if self.background:
                from concurrent.futures import ThreadPoolExecutor

                self._writer = getattr(self, "_writer", None) or ThreadPoolExecutor(1, thread_name_prefix="rcdm-ckpt")
                self._pending = self._writer.submit(self._write_weights, *args)
            else:
                self._write_weights(*args)
        accelerator.wait_for_everyone()
        return final

    def _write_weights(
        self, run: RunDir, tmp: Path, weights: dict, meta: dict, state: dict, keep: int, milestone: int
    ) -> None:
        from rcdm.model.weights import save_weights

        with _Writes(run, tmp, run.checkpoint_name(state["step"]), True) as w:
            for rate, sd in weights.items():
                w.file = tmp / (RunDir.RAW if rate is None else RunDir.ema_name(rate))
                save_weights(w.file, sd, {**meta, "ema_rate": rate})
            w.file = RunDir(tmp).meta_file
            RunDir(tmp).write_meta(meta)
            w.file = tmp / RunDir.STATE
            final = w.committed = run.commit(tmp, state)
            w.file = run.path / RunDir.WEIGHTS
            run.publish(final)
        run.prune(keep, milestone)

    def wait_for_writes(self) -> None:
        """Wait for the checkpoint being written in the background, if any; raise its error."""
        pending = getattr(self, "_pending", None)
        self._pending = None
        if pending is not None:
            pending.result()

    def load(self, checkpoint: Path) -> None:
        """Restore model, EMAs, optimizer, RNG, ``step`` and ``nimg`` from ``checkpoint``."""
        from rcdm.model.weights import load_state_dict_strict
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        device = _safetensors_device(self.accelerator.device)
        st = RunDir.read_state(checkpoint)  # a damaged state.json: InvalidInput naming it
        if int(st.get("seed", self.seed)) != self.seed:
            raise InvalidInput(
                f"checkpoint {checkpoint} was trained with train.seed={st['seed']}, not {self.seed}: "
                "resuming would change the data order and noise; use the run's seed or a new --out"
            )

        def read(f: Path) -> dict[str, torch.Tensor]:
            try:
                return load_file(str(f), device=device)
            except (SafetensorError, OSError) as e:
                raise RunDir.damaged(f, e) from None

        load_state_dict_strict(self.net, read(checkpoint / RunDir.RAW))
        sds = {}
        for rate in self.ema.rates:
            f = checkpoint / RunDir.ema_name(rate)
            if not f.exists():
                raise InvalidInput(
                    f"checkpoint {checkpoint} has no EMA for rate {rate}; re-run with the run's "
                    "ema_rates or start a new run (--out)"
                )
            sds[rate] = read(f)
        self.ema.load_state_dicts(sds)
        folder = checkpoint / RunDir.ACCELERATE
        try:
            self.accelerator.load_state(str(folder))
        except Exception as e:
            bad = _unreadable(folder, e)
            if bad is None:  # not a damaged file (out of memory, a bug): keep the traceback
                raise
            raise RunDir.damaged(bad, e) from None
        self.step, self.nimg = int(st["step"]), int(st["nimg"])
        self.rng_lost = self._rng_restored(folder)
        if self.rng_lost is not None:
            print(
                f"warning: {self.rng_lost['file']}: {self.rng_lost['reason']}; resuming from "
                f"{checkpoint.name} with a fresh random state, so random draws after step {self.step} "
                "are not those of an uninterrupted run (recorded in log.jsonl)",
                file=sys.stderr,
            )

    def _rng_restored(self, folder: Path) -> dict | None:
        """None if this rank's RNG state is the one saved in ``folder`` (accelerate skips an
        unreadable file silently), else what was lost."""
        from accelerate.utils import load

        f = folder / _RNG_FILE.format(rank=self.accelerator.process_index)
        try:
            if torch.equal(torch.get_rng_state(), load(f)["torch_manual_seed"]):
                return None
            reason = "it was read but not restored"
        except Exception as e:  # missing, truncated, not accelerate's: the state is lost
            reason = f"cannot be read ({first_line(e, 160)})"
        return {"file": str(f), "reason": reason}

    def rng_lost_records(self) -> list[dict]:
        """``log.jsonl`` lines for every rank that resumed without its saved RNG state (every
        rank calls this; the main process writes them)."""
        mine = [] if self.rng_lost is None else [{"rank": self.accelerator.process_index, **self.rng_lost}]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            mine = gather_object(mine)
        return [
            {
                "step": self.step,
                "event": "rng_state_lost",
                **r,
                "what": "the random state saved at this step was not restored: random draws after "
                "it are not those of an uninterrupted run",
                "time": now_iso(),
            }
            for r in mine
        ]


class _Writes:
    """The writes of one checkpoint. A failure before the rename removes the temporary folder;
    a full disk becomes one line (``DiskFull``) naming ``file``, the file being written."""

    def __init__(self, run: RunDir, tmp: Path, name: str, main: bool) -> None:
        self.run, self.tmp, self.name, self.main = run, tmp, name, main
        self.file = tmp
        self.committed: Path | None = None  # the step folder, once renamed

    def __enter__(self) -> _Writes:
        return self

    def __exit__(self, typ: Any, e: BaseException | None, tb: Any) -> bool:
        if not isinstance(e, Exception):  # done, or killed (KeyboardInterrupt): as it is
            return False
        file = Path(e.filename) if isinstance(e, OSError) and e.filename else self.file
        if file.name == RunDir.ACCELERATE:
            file = _written_last(file)
        code = disk_full_errno(e, self.tmp.parent)
        if self.main and self.committed is None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if code is None:
            return False
        what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on device"
        if self.committed is None:
            latest = self.run.latest()
            done = f"checkpoint {self.name} was not saved (its temporary folder is removed)"
            resume = (
                f"the last complete checkpoint, {latest.name}"
                if latest
                else "the start (no checkpoint is complete yet)"
            )
        else:
            done = f"checkpoint {self.committed.name} is saved, but the run's copy of its weights is not (readers use the checkpoint)"
            resume = f"the last complete checkpoint, {self.committed.name}"
        err = DiskFull(
            f"{what} writing {file}: {done}; free space on that disk, then re-run the same command to resume from {resume}"
        )
        err.errno = code
        raise err from None


def _written_last(folder: Path) -> Path:
    """The file accelerate was writing in ``folder`` when it failed: the last one there in its
    write order (a failed write leaves part of it), else the first it writes."""
    there = [p for pattern in (*_ACCELERATE_FILES, "random_states_*.pkl") for p in sorted(folder.glob(pattern))]
    return there[-1] if there else folder / "optimizer.bin"


def _unreadable(folder: Path, e: BaseException) -> Path | None:
    """The file of accelerate's state in ``folder`` that ``e`` (raised loading it) is about:
    the file the error names, else the first that is not a whole zip archive (torch.save's
    format), else the folder for an error that reads as a damaged file; None otherwise."""
    if isinstance(e, OSError) and e.filename:
        return Path(e.filename)
    for pattern in _ACCELERATE_FILES:
        for f in sorted(folder.glob(pattern)):
            try:
                with zipfile.ZipFile(f) as z:
                    if z.testzip() is None:
                        continue
            except (zipfile.BadZipFile, OSError):
                pass
            return f
    damaged = isinstance(e, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile)) or "PytorchStreamReader" in str(e)
    return folder if damaged else None


def _safetensors_device(device: torch.device) -> str:
    """``device`` as safetensors' ``load_file`` takes it: "cpu" for any CPU device (a process of a
    CPU launch has ``cpu:0``, which safetensors refuses), else ``cuda:N``."""
    return "cpu" if device.type == "cpu" else str(device)


def _cpu(m: torch.nn.Module, copy: bool = False) -> dict[str, torch.Tensor]:
    """``m``'s weights as fp32 contiguous CPU tensors; with ``copy`` never the module's own memory
    (on a CPU, ``.float().cpu().contiguous()`` of an fp32 contiguous tensor is the tensor itself)."""
    out = {}
    for k, v in m.state_dict().items():
        t = v.detach().float().cpu().contiguous()
        out[k] = t.clone() if copy and t.untyped_storage().data_ptr() == v.untyped_storage().data_ptr() else t
    return out
