"""What every checkpoint reader returns and the key renaming they share.

A reader (:mod:`rcdm.encoders.readers` for the ResNet layouts, :mod:`rcdm.encoders.vit_readers`
for the ViT ones) maps a checkpoint dict onto our module names and returns a :class:`Mapped`.
Both reader modules import this one and it imports neither, so the ViT readers need not import
the module that lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from rcdm.encoders.registry import HeadSpec

__all__ = ["Mapped", "Reader", "first_keys", "remap", "strip_prefix"]


@dataclass
class Mapped:
    """A checkpoint mapped onto our module names."""

    trunk: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None  # None: the file has no head weights
    unexpected: list[str] = field(default_factory=list)  # keys of the file nobody claims
    layout: str = ""  # which layout was recognised, for messages


Reader = Callable[[dict, "HeadSpec | None", bool], Mapped]


def strip_prefix(sd: dict[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Drop ``prefix`` from every key that has it (DDP's ``module.``)."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}


def remap(
    sd: dict[str, Any], rules: list[tuple[str, str]], ignore: tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[str]]:
    """Rename keys by the first matching ``(source prefix, target prefix)`` rule.

    Keys under an ``ignore`` prefix are dropped (weights we know and do not use); keys no rule
    matches are returned as unexpected."""
    out: dict[str, Any] = {}
    unexpected: list[str] = []
    for k, v in sd.items():
        if k.startswith(ignore) if ignore else False:
            continue
        for src, dst in rules:
            if k.startswith(src):
                out[dst + k[len(src) :]] = v
                break
        else:
            unexpected.append(k)
    return out, unexpected


def first_keys(keys: Iterable[Any], n: int = 5) -> str:
    """The first ``n`` of ``keys`` (a dict: its keys) for a message: ``'a', 'b', ... (k more)``."""
    ks = [str(k) for k in keys]
    shown = ", ".join(f"'{k}'" for k in ks[:n])
    return shown + (f", ... ({len(ks) - n} more)" if len(ks) > n else "")
