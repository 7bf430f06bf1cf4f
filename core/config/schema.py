"""The schema's building blocks: how a config field is declared, typed, converted and checked.

Every field of every section (and of the sampling spec) is declared once, with :func:`setting`:
its default, its help (the README's config reference and the command line's ``--help``), its
bounds and its role as a path. Everything else is derived from that declaration:

- :func:`coerce` turns a YAML / command-line value into the field's type (``ConfigError`` naming
  the key when it cannot);
- :func:`check_fields` checks every field against its bounds; frozen sections and the sampling
  spec call it from ``__post_init__``, so a value is checked once, where it is declared, however it
  was set (a file, ``--set``, an option, or code);
- the command line builds its options from the same fields (:mod:`rcdm.app.options`).

No torch, no rcdm module but :mod:`rcdm.errors`: ``rcdm --help`` imports this.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from rcdm.errors import InvalidInput

__all__ = [
    "ConfigError",
    "Setting",
    "check_fields",
    "coerce",
    "field_default",
    "hints",
    "setting",
    "setting_of",
    "type_name",
]


class ConfigError(InvalidInput):
    """A configuration value is unknown, mistyped, out of its bounds or inconsistent."""


@dataclass(frozen=True)
class Setting:
    """What a field's declaration says beyond its type and default."""

    help: str = ""  # one line: the README's config reference and the option's --help
    ge: float | None = None  # bounds of a number (of each item, for a tuple of numbers)
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    check: Callable[[Any], str | None] | None = None  # a rule bounds cannot say: returns what is wrong, or None
    path: Literal["in", "in?", "out"] | None = None  # in: must exist when set; in?: when set by the user
    choices_help: Mapping[str, str] | None = None  # a Literal's choices, each in a few words (--help)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (already of the field's type), or None."""
        numbers = [v for v in (value if isinstance(value, tuple) else (value,)) if _is_number(v)]
        if any(not self._within(v) for v in numbers):
            return f"must be {self.bounds()}, got {_show(value)}"
        return self.check(value) if self.check is not None else None

    def _within(self, v: float) -> bool:
        return (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
        )

    def bounds(self) -> str:
        """``">= 1"``, ``"in [0, 1)"``: the bounds in words (empty when none)."""
        lo = f"[{self.ge:g}" if self.ge is not None else (f"({self.gt:g}" if self.gt is not None else None)
        hi = f"{self.le:g}]" if self.le is not None else (f"{self.lt:g})" if self.lt is not None else None)
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>=' if lo[0] == '[' else '>'} {lo[1:]}"
        if hi:
            return f"{'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
        return ""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def setting(default: Any = MISSING, help: str = "", **rules: Any) -> Any:
    """Declare a config field: ``lr: float = setting(1e-4, "learning rate", gt=0)``.

    ``rules`` are :class:`Setting`'s fields (``ge``, ``gt``, ``le``, ``lt``, ``check``, ``path``,
    ``choices_help``). A mutable or unhashable default is not allowed (sections are frozen and
    hashed): use a tuple."""
    meta = {"setting": Setting(help=help, **rules)}
    return field(default=default, metadata=meta)


def setting_of(f: dataclasses.Field) -> Setting:
    """The declaration of field ``f`` (an empty one for a field declared without :func:`setting`)."""
    return f.metadata.get("setting") or Setting()


def hints(cls: type) -> dict[str, Any]:
    """The fields' types, resolved (the modules use ``from __future__ import annotations``)."""
    return get_type_hints(cls)


def field_default(f: dataclasses.Field) -> Any:
    """A field's default (``default``, else ``default_factory()``; MISSING when none)."""
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def check_fields(obj: Any, prefix: str, skip: tuple[str, ...] = ()) -> None:
    """Raise ``ConfigError`` naming ``prefix + name`` for the first field of ``obj`` outside its
    declared choices, bounds or rule."""
    words = _choices(type(obj))
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if value is None:
            continue
        allowed = words.get(f.name)
        if allowed and value not in allowed and type(value) not in allowed:
            raise ConfigError(
                f"{prefix}{f.name}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}"
            )
        problem = setting_of(f).problem(value)
        if problem:
            raise ConfigError(f"{prefix}{f.name} {problem}")


@functools.cache
def _choices(cls: type) -> dict[str, tuple]:
    """The fields whose type is a ``Literal`` (alone, or with None / bool / int): their words
    (and ``bool`` / ``int`` where the union admits them, checked by bounds and type elsewhere)."""
    out = {}
    for name, tp in hints(cls).items():
        parts = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
        literals = [a for p in parts if get_origin(p) is Literal for a in get_args(p)]
        others = [p for p in parts if get_origin(p) is not Literal and p is not type(None)]
        if literals and all(o in (bool, int) for o in others):
            out[name] = (*literals, *others)
    return out


# --------------------------------------------------------------------------------------------
# Typed conversion
# --------------------------------------------------------------------------------------------


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML / command-line value to ``tp``, or raise ConfigError naming ``where``.

    Types with a ``parse`` classmethod (``Steps``) parse text; ``Literal`` values must be one of
    the choices; tuples take a list, a comma-separated string or one value."""
    origin = get_origin(tp)
    if isinstance(tp, type) and hasattr(tp, "parse") and not isinstance(value, tp):
        try:
            return tp.parse(value)
        except InvalidInput as e:
            raise ConfigError(f"{where}: {e}") from None
    if origin in (Union, types.UnionType):
        return _coerce_union(value, get_args(tp), where, tp)
    if origin is Literal:
        return _coerce_literal(value, get_args(tp), where)
    if origin is tuple:
        return _coerce_tuple(value, get_args(tp), where)
    if tp in _SCALARS:
        return _SCALARS[tp](value, tp, where)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise AssertionError(f"{where}: unsupported config type {tp!r}")


def _coerce_str(value: Any, tp: type, where: str) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    hint = " (YAML reads bare yes/no/on/off as booleans: quote the value)" if isinstance(value, bool) else ""
    raise ConfigError(f"{where}: expected a string, got {value!r}{hint}")


def _coerce_union(value: Any, args: tuple, where: str, tp: Any) -> Any:
    if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~"))):
        return None
    for a in args:
        if a is type(None):
            continue
        try:
            return coerce(value, a, where)
        except ConfigError:
            continue
    raise ConfigError(f"{where}: expected {type_name(tp)}, got {value!r}")


def _coerce_literal(value: Any, allowed: tuple, where: str) -> Any:
    if isinstance(value, bool):
        # YAML 1.1 reads a bare no/off/false as False: map it back to the one allowed word.
        words = {"no", "off", "false"} if not value else {"yes", "on", "true"}
        match = [a for a in allowed if isinstance(a, str) and a.lower() in words]
        if len(match) == 1:
            return match[0]
    if value in allowed:
        return value
    raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


def _coerce_tuple(value: Any, args: tuple, where: str) -> tuple:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
    if not isinstance(value, (list, tuple)):
        value = [value]
    if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
        return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{where}: expected {len(args)} values, got {_show(tuple(value))}")
    return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))


def _coerce_bool(value: Any, tp: type, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _number(value: Any, tp: type, where: str) -> int | float:
    """An int or float from a number or its text; a float with a fraction is not an int."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if tp is float:
            return float(value)
        if isinstance(value, int) or value.is_integer():
            return int(value)
    elif isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")


def type_name(tp: Any) -> str:
    """How the config reference and error messages name a field's type."""
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        args = get_args(tp)
        if len(args) == 1 or args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return f"[{', '.join(type_name(a) for a in args)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp)).lower()


_SCALARS: dict[type, Callable[[Any, type, str], Any]] = {
    bool: _coerce_bool,
    int: _number,
    float: _number,
    str: _coerce_str,
}
