"""Strict state-dict loading, one rule for every checkpoint rcdm reads (UNets and encoders).

A missing, unexpected or mis-shaped key is an :class:`~rcdm.errors.InvalidInput` that names the
keys; nothing is ever left at its random initialisation. Duck-typed on ``state_dict()`` /
``load_state_dict()``: no torch import here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rcdm.errors import InvalidInput

__all__ = ["WRAPPER_PREFIXES", "load_strict", "state_dict_diff", "strip_prefixes"]

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers


def strip_prefixes(sd: Mapping[str, Any], prefixes: Sequence[str] = WRAPPER_PREFIXES) -> dict[str, Any]:
    """Drop every leading ``prefixes`` entry (repeatedly, in any order) from each key."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


def state_dict_diff(own: Any, sd: Any) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """Keys of the model's state dict ``own`` missing from ``sd``, keys of ``sd`` the model does
    not have, and ``(key, shape in sd, shape in own)`` for keys whose shapes differ."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    misshaped = [
        (k, tuple(sd[k].shape), tuple(own[k].shape))
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, misshaped


def _first(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_strict(
    module: Any,
    sd: Mapping[str, Any],
    what: str,
    *,
    unexpected: Sequence[str] = (),
    hint: str = "",
    assign: bool = False,
) -> Any:
    """Load ``sd`` into ``module`` (in place; ``assign`` adopts the tensors, for a module built on
    the meta device) or raise InvalidInput naming every bad key. ``unexpected`` adds keys a
    reader already knows it could not place; ``hint`` ends the message with the likely fix."""
    own = module.state_dict()
    not_tensors = [k for k, v in sd.items() if not hasattr(v, "shape")]
    if not_tensors:
        raise InvalidInput(
            f"{what}: {len(not_tensors)} entries are not tensors: {_first(not_tensors)}; "
            "this is not a state dict of this model"
        )
    missing, not_in_model, misshaped = state_dict_diff(own, sd)
    extra = list(unexpected) + not_in_model
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected key(s): {_first(extra)}")
    if misshaped:
        shapes = [f"'{k}' is {list(theirs)} in the file, the model needs {list(ours)}" for k, theirs, ours in misshaped]
        problems.append(f"{len(shapes)} mis-shaped key(s): " + "; ".join(shapes[:3]))
    if problems:
        raise InvalidInput(f"{what} does not match the model: " + ". ".join(problems) + (f". {hint}" if hint else ""))
    module.load_state_dict({k: sd[k] for k in own}, strict=True, assign=assign)
    return module
