"""What training resumes from, saved and loaded as one object.

A checkpoint (``RunDir`` owns the folder's layout) holds the model's weights and every EMA as
safetensors with their meta JSON, ``model.json``, accelerate's state (optimizer, grad scaler and
every rank's RNG) and ``state.json`` (step, nimg, seed), written last. The weights are ours:
accelerate saves only the rest (the hooks below empty its model list).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rcdm.errors import InvalidInput
from rcdm.run.rundir import RunDir
from rcdm.train.ema import EMA
from rcdm.utils import now_iso


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
    step: int = 0
    nimg: int = 0

    def __post_init__(self) -> None:
        # We write the weights ourselves (safetensors + meta json): accelerate keeps only the
        # optimizer, scaler and RNG states.
        self.accelerator.register_save_state_pre_hook(lambda models, weights, _dir: weights.clear())
        self.accelerator.register_load_state_pre_hook(lambda models, _dir: models.clear())

    def save(self, run: RunDir, meta: dict, keep: int = 0) -> Path:
        """Write ``checkpoints/step-NNNNNNN`` atomically (every rank calls this), make it the run's
        (``ema.safetensors``, ``model.json``), then keep only the newest ``keep`` (0: all)."""
        from rcdm.model.weights import save_weights

        accelerator, main = self.accelerator, self.accelerator.is_main_process
        tmp = run.begin(self.step) if main else run.pending(self.step)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / RunDir.ACCELERATE))  # optimizer, scaler, RNG of every rank
        accelerator.wait_for_everyone()  # every rank's RNG file is in tmp before it is renamed
        final = run.checkpoints_dir / run.checkpoint_name(self.step)
        if main:
            save_weights(tmp / RunDir.RAW, _cpu(self.net), {**meta, "ema_rate": None})
            for rate, m in self.ema.models.items():
                save_weights(tmp / RunDir.ema_name(rate), _cpu(m), {**meta, "ema_rate": rate})
            RunDir(tmp).write_meta(meta)
            state = {
                "step": self.step,
                "nimg": self.nimg,
                "kimg": self.nimg / 1000,
                "seed": self.seed,  # the stream and the noise are functions of it
                "batch_size": self.batch_size,
                "time": now_iso(),
            }
            final = run.commit(tmp, state)
            run.publish(final)
            run.prune(keep)
        accelerator.wait_for_everyone()
        return final

    def load(self, checkpoint: Path) -> None:
        """Restore model, EMAs, optimizer, RNG, ``step`` and ``nimg`` from ``checkpoint``."""
        from rcdm.model.weights import load_state_dict_strict
        from safetensors.torch import load_file

        device = str(self.accelerator.device)
        st = RunDir.read_state(checkpoint)
        if int(st.get("seed", self.seed)) != self.seed:
            raise InvalidInput(
                f"checkpoint {checkpoint} was trained with train.seed={st['seed']}, not {self.seed}: "
                "resuming would change the data order and noise; use the run's seed or a new --out"
            )
        load_state_dict_strict(self.net, load_file(str(checkpoint / RunDir.RAW), device=device))
        sds = {}
        for rate in self.ema.rates:
            f = checkpoint / RunDir.ema_name(rate)
            if not f.exists():
                raise InvalidInput(
                    f"checkpoint {checkpoint} has no EMA for rate {rate}; re-run with the run's "
                    "ema_rates or start a new run (--out)"
                )
            sds[rate] = load_file(str(f), device=device)
        self.ema.load_state_dicts(sds)
        self.accelerator.load_state(str(checkpoint / RunDir.ACCELERATE))
        self.step, self.nimg = int(st["step"]), int(st["nimg"])


def _cpu(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in m.state_dict().items()}
