"""Command-line options made from the config's fields, so a choice, a type or a help text exists
in one place: the field's declaration (:func:`rcdm.config.setting`).

``@options("train", "store", "out", "lr")`` adds ``--store``, ``--out`` and ``--lr`` to a click
command: the option's name is the key's (``batch_size`` -> ``--batch-size``), its help the key's,
its type from the key's type (a ``Literal`` becomes a choice, a ``bool`` a flag, a list a
repeatable option, a pair two values). Click only parses: the value then goes through the config
loader like any other layer, which checks it against the key's bounds (``rcdm.config.schema``).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union, get_args, get_origin

import click
from rcdm.config import SECTIONS, section_fields, setting_of
from rcdm.config.schema import hints

__all__ = ["choices", "option", "options", "sampler_fields"]


def choices(section: str, key: str) -> tuple[str, ...]:
    """The choices of a ``Literal`` key (what ``--help`` and the README list)."""
    tp = hints(SECTIONS[section])[key]
    args = get_args(tp) if get_origin(tp) is Literal else ()
    if not args and get_origin(tp) in (Union, types.UnionType):
        args = next((get_args(a) for a in get_args(tp) if get_origin(a) is Literal), ())
    return tuple(args)


def sampler_fields() -> tuple[str, ...]:
    """Every sampling option (``rcdm.config.SamplerSettings``): the commands that sample offer them all."""
    from rcdm.config import SamplerSettings

    return tuple(f.name for f in section_fields(SamplerSettings))


def _click_type(tp: Any) -> tuple[Any, dict[str, Any]]:
    """(click type, extra option arguments) for a field type."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:
            return _click_type(real[0])
        literals = [a for a in real if get_origin(a) is Literal]
        if bool in real and literals:  # bool | "auto": the flag turns it on
            return None, {"is_flag": True}
        return click.STRING, {"metavar": " | ".join(_metavar(a) for a in real)}
    if origin is Literal:
        return click.Choice([str(a) for a in args]), {}
    if origin is tuple:
        if len(args) == 1 or args[1] is Ellipsis:
            item, extra = _click_type(args[0])
            return item, {**extra, "multiple": True}
        return _click_type(args[0])[0], {"nargs": len(args)}
    if tp is bool:
        return None, {"is_flag": True}
    if tp in (int, float, str):
        return {int: click.INT, float: click.FLOAT, str: click.STRING}[tp], {}
    return click.STRING, {"metavar": _metavar(tp)}  # Steps and other parsed types: the loader parses


def _metavar(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "|".join(str(a) for a in get_args(tp))
    return {int: "INTEGER", float: "FLOAT", str: "TEXT"}.get(tp, getattr(tp, "__name__", "TEXT").upper())


def _help(section: str, key: str) -> str:
    fields = {f.name: f for f in section_fields(SECTIONS[section])}
    s = setting_of(fields[key])
    text = s.help[:1].upper() + s.help[1:] if s.help else ""
    if s.bounds():
        text += f" ({s.bounds()})"
    if s.choices_help:
        text += ". " + "; ".join(f"{c}: {w}" for c, w in s.choices_help.items())
    return text


def option(section: str, key: str, flag: str | None = None, names: Sequence[str] = ()) -> Callable:
    """One option for ``section.key``: ``--key-name`` (or ``flag``), the parameter named ``key``;
    ``names``: its choices, where another module owns them (the encoder registry)."""
    tp = hints(SECTIONS[section])[key]
    click_type, extra = (click.Choice(list(names)), {}) if names else _click_type(tp)
    name = flag or "--" + key.replace("_", "-")
    if click_type is not None:
        extra["type"] = click_type
    else:  # a switch: both ways, so a config's value can be turned off too (--clip-denoised/--no-clip-denoised)
        name = f"{name}/--no-{name[2:]}"
    return click.option(name, key, help=_help(section, key), **extra)


def options(
    section: str, *keys: str, flags: dict[str, str] | None = None, names: dict[str, Sequence[str]] | None = None
) -> Callable:
    """Options for the keys of ``section`` (``flags``: a key's option name when it is not the key's;
    ``names``: a key's choices when another module owns them)."""
    flags, names = flags or {}, names or {}

    def decorate(fn: Callable) -> Callable:
        for key in reversed(keys):
            fn = option(section, key, flags.get(key), names.get(key, ()))(fn)
        return fn

    return decorate
