"""The typed sampling spec: which timesteps to keep, DDIM or ancestral, eta, guidance.

:class:`Sampler` is how samples are drawn, declared once: its fields are the options of every
section that samples (``sample.*``, ``analyze.*`` inherit them), it checks itself, names itself
(:meth:`Sampler.label`, in every table and caption) and round-trips through the sample set's
manifest (:meth:`Sampler.to_dict` / :meth:`Sampler.from_dict`). Steps are parsed once, when the
config is loaded; everything downstream takes these objects, never the strings. Pure Python, no
torch: the command line and ``--dry-run`` use it.

Respacing follows guided-diffusion's ``space_timesteps`` exactly (Nichol & Dhariwal 2021):

- ``"100"``: 100 steps spread over the whole chain;
- ``"10,15,20"``: the chain cut into equal sections, that many steps from each;
- ``"ddim50"``: one constant integer stride giving exactly 50 steps (the DDIM paper's striding),
  sampled with the DDIM update.
- ``"trailing50"``: 50 steps ending at the last one, ``round(T - i T / N) - 1`` (the "trailing"
  spacing of Lin et al. 2024; with ``T = 1000``: 999, 979, ..., 19), sampled with DDIM. An
  addition, not in guided-diffusion: the sampler starts from the noisiest step (with a
  zero-terminal-SNR schedule, pure noise) rather than t = 980.

The number of steps of the chain itself (1000 for every RCDM / ADM model) is not part of the
spec: it comes from the model's ``model.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from rcdm.config.schema import ConfigError, check_fields, coerce, hints, setting
from rcdm.errors import InvalidInput

__all__ = ["Sampler", "SamplerSettings", "Steps", "interval_problem"]

_FORMS = '"100" (steps spread over the chain), "10,15,20" (steps per section), "ddim50" or "trailing50"'


@dataclass(frozen=True)
class Steps:
    """A respacing of the diffusion chain: steps per section, or one DDIM stride."""

    counts: tuple[int, ...]  # steps kept from each equal section of the chain
    ddim_stride: bool = False  # "ddimN": one section, a constant integer stride (implies DDIM)
    trailing: bool = False  # "trailingN": N steps ending at the chain's last step (implies DDIM)

    @classmethod
    def parse(cls, spec: str | int | Steps) -> Steps:
        """``"100"``, ``100``, ``"10,15,20"`` or ``"ddim50"``; anything else is an InvalidInput."""
        if isinstance(spec, Steps):
            return spec
        if isinstance(spec, bool) or not isinstance(spec, (str, int)):
            raise InvalidInput(f"steps must be {_FORMS}, got {spec!r}")
        text = str(spec).strip()
        if text.startswith("trailing"):
            n = text[len("trailing") :]
            if not n.isdigit() or int(n) < 1:
                raise InvalidInput(f'steps {text!r}: expected "trailingN" with N a positive integer, e.g. "trailing25"')
            return cls((int(n),), trailing=True)
        if text.startswith("ddim"):
            n = text[len("ddim") :]
            if not n.isdigit() or int(n) < 1:
                raise InvalidInput(f'steps {text!r}: expected "ddimN" with N a positive integer, e.g. "ddim50"')
            return cls((int(n),), ddim_stride=True)
        parts = [p.strip() for p in text.split(",")]
        if not text or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise InvalidInput(f"steps {text!r}: expected {_FORMS}")
        return cls(tuple(int(p) for p in parts))

    def __str__(self) -> str:
        if self.trailing:
            return f"trailing{self.counts[0]}"
        if self.ddim_stride:
            return f"ddim{self.counts[0]}"
        return ",".join(str(c) for c in self.counts)

    @property
    def total(self) -> int:
        """How many network evaluations one sample takes."""
        return sum(self.counts)

    def timesteps(self, num_timesteps: int) -> list[int]:
        """The kept steps of a ``num_timesteps`` chain, ascending (guided-diffusion's rule)."""
        if self.trailing:
            (want,) = self.counts
            if want > num_timesteps:
                raise InvalidInput(f"steps {str(self)!r}: cannot take {want} of {num_timesteps} steps")
            # float arithmetic as Lin et al.'s np.round(np.arange(T, 0, -T / N)) - 1
            return sorted({int(round(num_timesteps - i * num_timesteps / want)) - 1 for i in range(want)})
        if self.ddim_stride:
            (want,) = self.counts
            for stride in range(1, num_timesteps):
                kept = range(0, num_timesteps, stride)
                if len(kept) == want:
                    return list(kept)
            raise InvalidInput(
                f"cannot take exactly {want} of {num_timesteps} steps with a constant stride "
                f"(steps {str(self)!r}); use a plain count like '{want}' instead"
            )
        size_per, extra = divmod(num_timesteps, len(self.counts))
        start, kept = 0, []
        for i, count in enumerate(self.counts):
            size = size_per + (1 if i < extra else 0)
            if size < count:
                raise InvalidInput(
                    f"steps {str(self)!r}: cannot take {count} steps from a section of {size} "
                    f"(of {num_timesteps} steps in all)"
                )
            # The position is accumulated in floating point, as the reference does: computing
            # j * stride instead rounds differently at exact halves (e.g. "21" keeps 499, not 500).
            stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
            pos = 0.0
            for _ in range(count):
                kept.append(start + round(pos))
                pos += stride
            start += size
        return sorted(set(kept))


def interval_problem(value: tuple[float, ...]) -> str | None:
    """What is wrong with a guidance interval (lo, hi), or None."""
    if len(value) != 2 or not 0.0 <= value[0] <= value[1] <= 1.0:
        return f"must be [lo, hi] with 0 <= lo <= hi <= 1 (fractions of the chain), got {list(value)}"
    return None


@dataclass(frozen=True)
class SamplerSettings:
    """The sampling options, declared once. :class:`Sampler` is them as a spec; the sections that
    sample (``sample``, ``analyze``) inherit them as config keys and options."""

    steps: Steps = setting(
        Steps.parse("100"), 'respacing: "100" (the paper), "1000", "10,20,30", "ddim50" or "trailing50"'
    )
    ddim: bool = setting(False, "DDIM update on the respaced steps (always for ddimN and trailingN)")
    eta: float = setting(0.0, "DDIM noise (0: deterministic)", ge=0)
    guidance: float = setting(
        1.0, "classifier-free guidance scale (1: none, RCDM's sampler); > 1 needs train.cond_drop > 0", ge=0
    )
    guidance_interval: tuple[float, float] = setting(
        (0.0, 1.0),
        "guide only the steps with lo <= t/T <= hi (Kynkaanniemi et al. 2024); [0, 1]: every step",
        check=interval_problem,
    )
    guidance_rescale: float = setting(
        0.0,
        "phi in [0, 1]: rescale the guided prediction to the conditional one's std, against over-exposure "
        "(Lin et al. 2024 use 0.7); 0: off",
        ge=0,
        le=1,
    )
    clip_denoised: bool = setting(True, "clip each step's predicted x0 to [-1, 1] (guided-diffusion's sampler)")


@dataclass(frozen=True)
class Sampler(SamplerSettings):
    """How to draw samples: the respacing, the update rule, and classifier-free guidance."""

    def __post_init__(self) -> None:
        if not isinstance(self.steps, Steps):
            object.__setattr__(self, "steps", Steps.parse(self.steps))
        object.__setattr__(self, "guidance_interval", tuple(float(v) for v in self.guidance_interval))
        check_fields(self, "")
        if (self.steps.ddim_stride or self.steps.trailing) and not self.ddim:
            object.__setattr__(self, "ddim", True)

    @classmethod
    def of(cls, settings: SamplerSettings) -> Sampler:
        """The spec of a section's sampling options."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(SamplerSettings)})

    @property
    def name(self) -> str:
        """``"ddim"`` or ``"ancestral"``."""
        return "ddim" if self.ddim else "ancestral"

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0

    def label(self) -> str:
        """What every table and caption names: ``"ancestral, 100 steps"``, ``"ddim50, guidance 5"``."""
        short = self.steps.ddim_stride or self.steps.trailing
        text = f"{self.name}, {self.steps.total} steps" if not short else str(self.steps)
        text += f", guidance {self.guidance:g}" if self.guided else ""
        lo, hi = self.guidance_interval
        text += f" in t/T [{lo:g}, {hi:g}]" if self.guided and (lo > 0 or hi < 1) else ""
        return text + (f" rescaled {self.guidance_rescale:g}" if self.guided and self.guidance_rescale else "")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: what a sample set's manifest records (``ddim`` as used, so it reads back the same)."""
        return {
            f.name: str(v) if isinstance(v, Steps) else list(v) if isinstance(v, tuple) else v
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "sampler") -> Sampler:
        """The spec :meth:`to_dict` wrote; a key it does not know is an error, a missing one its
        default (a newer option's default is what an older spec did)."""
        types_ = hints(SamplerSettings)
        if unknown := sorted(set(d) - set(types_)):
            raise ConfigError(f"{where}: unknown sampler option(s) {unknown}; known: {sorted(types_)}")
        return cls(**{k: coerce(v, types_[k], f"{where}.{k}") for k, v in d.items()})
