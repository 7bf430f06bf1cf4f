"""Loading the config: layers of values, each type-checked and remembered with its origin.

Layers, the later winning:

1. the built-in defaults (the paper's recipe, :mod:`rcdm.config`);
2. a profile shipped with the package (``--profile demo``), or else ``./pipeline.yaml`` when it
   exists and no ``--config`` is given (a profile never picks up the current folder's file, so
   the demo runs the same from any directory);
3. ``--config FILE``;
4. the command's own options (``--lr 1e-3``), typed by click;
5. ``--set section.key=value``.

Loading is strict: an unknown section or key, a value of the wrong type or outside the bounds its
key declares (:mod:`rcdm.config.sections`), is a :class:`ConfigError` naming it and where it came
from. Paths left ``null`` are derived from ``data.workdir`` by
:func:`resolve`, so the config written next to every output is explicit.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from rcdm.config import RECIPES, SECTIONS, ConfigError, PipelineConfig, Section, coerce, section_fields
from rcdm.config.schema import hints

__all__ = [
    "PROFILES",
    "apply_mapping",
    "apply_recipe",
    "apply_overrides",
    "load_config",
    "profile_path",
    "resolve",
    "set_value",
]

PROFILES = ("demo",)  # app/profiles/<name>.yaml


def _unknown_key(section: str, key: str, known: Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return ConfigError(
        f"unknown key '{key}' in section '{section}'"
        + (f"; did you mean '{close[0]}'?" if close else "")
        + f" Known keys: {', '.join(sorted(known))}"
    )


def _check_section(section: str) -> type:
    if section not in SECTIONS:
        raise ConfigError(f"unknown section '{section}'; the sections are {', '.join(SECTIONS)}")
    return SECTIONS[section]


def set_value(cfg: PipelineConfig, section: str, key: str, value: Any, origin: str = "") -> PipelineConfig:
    """``cfg`` with ``section.key`` set to ``value`` (type-checked), remembering ``origin``."""
    cls = _check_section(section)
    known = {f.name for f in section_fields(cls)}
    if key not in known:
        raise _unknown_key(section, key, known)
    old: Section = getattr(cfg, section)
    where = {**old.origin, key: origin} if origin else dict(old.origin)
    try:  # the new section checks the value against the key's declared bounds (Section.__post_init__)
        sec = replace(old, **{key: coerce(value, hints(cls)[key], f"{section}.{key}")}, origin=where)
    except ConfigError as e:
        raise ConfigError(f"{e} (from {origin})" if origin else str(e)) from None
    return replace(cfg, **{section: sec})


def apply_mapping(cfg: PipelineConfig, raw: Any, origin: str) -> PipelineConfig:
    """Apply a parsed YAML document ``{section: {key: value}}`` as one layer."""
    if raw is None:
        return cfg
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: the config must be a mapping of sections, got {type(raw).__name__}")
    for section, values in raw.items():
        _check_section(section)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: section '{section}' must be a mapping of keys to values, got {values!r}")
        for key, value in values.items():
            cfg = set_value(cfg, section, key, value, origin)
    return cfg


def apply_overrides(cfg: PipelineConfig, overrides: Sequence[str]) -> PipelineConfig:
    """Apply ``--set section.key=value`` strings (values parsed as YAML scalars / lists)."""
    for item in overrides:
        dotted, sep, value_text = item.partition("=")
        if not sep or "." not in dotted:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.kimg=10")
        section, key = dotted.strip().split(".", 1)
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else ""
        except yaml.YAMLError:
            value = value_text
        if isinstance(value, bool) and _wants_text(section, key):
            value = value_text.strip()  # --set sample.ema=no means the word, not a boolean
        cfg = set_value(cfg, section, key, value, f"--set {dotted.strip()}")
    return cfg


def _wants_text(section: str, key: str) -> bool:
    """True for fields typed str / str | None (not bool, not Literal)."""
    tp = hints(SECTIONS[section]).get(key) if section in SECTIONS else None
    if tp is str:
        return True
    return get_origin(tp) in (Union, types.UnionType) and str in get_args(tp) and bool not in get_args(tp)


# --------------------------------------------------------------------------------------------
# Files and profiles
# --------------------------------------------------------------------------------------------


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from e


def profile_path(name: str) -> Path:
    """The YAML file of a profile shipped inside the package."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; the profiles are {', '.join(PROFILES)}")
    return Path(str(resources.files("rcdm.app") / "profiles" / f"{name}.yaml"))


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    profile: str | None = None,
    options: Mapping[str, tuple[Any, str]] | None = None,
) -> PipelineConfig:
    """The config from its layers (see the module docstring).

    ``options`` maps ``"section.key"`` to ``(value, "--flag")`` for the command's own options.
    """
    cfg = PipelineConfig()
    if profile is not None:
        cfg = apply_mapping(cfg, _read_yaml(profile_path(profile), "profile"), f"profile {profile}")
    if path is None and profile is None and Path("pipeline.yaml").is_file():
        path = "pipeline.yaml"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; pass --config with an existing file")
        cfg = apply_mapping(cfg, _read_yaml(p, "config file"), f"file {p}")
    for dotted, (value, flag) in (options or {}).items():
        section, key = dotted.split(".", 1)
        cfg = set_value(cfg, section, key, value, f"option {flag}")
    return apply_recipe(apply_overrides(cfg, overrides))


def apply_recipe(cfg: PipelineConfig) -> PipelineConfig:
    """Fill the training fields a named recipe (``train.recipe``) lists, unless a layer set them."""
    name = cfg.train.recipe
    for key, value in RECIPES[name].items():
        if key not in cfg.train.origin:
            cfg = set_value(cfg, "train", key, value, f"recipe {name}")
    return cfg


# --------------------------------------------------------------------------------------------
# Derived paths
# --------------------------------------------------------------------------------------------


def _fill(sec: Section, **derived: Any) -> Section:
    """Set the fields of ``sec`` that are unset (None or empty) to ``derived``, noting the origin."""
    changes, where = {}, dict(sec.origin)
    for key, (value, why) in derived.items():
        if getattr(sec, key) in (None, ()) and value not in (None, ()):
            changes[key], where[key] = value, why
    return replace(sec, **changes, origin=where) if changes else sec


def resolve(cfg: PipelineConfig) -> PipelineConfig:
    """Fill every ``null`` path from ``data.workdir`` (and data.train / data.val)."""
    w = Path(cfg.data.workdir)
    stores, run = w / "stores", str(w / "run")
    from_w = "derived from data.workdir"
    train_store, val_store = (str(stores / "train"), from_w), (str(stores / "val"), from_w)
    ex = _fill(cfg.extract, source=(cfg.data.train, "derived from data.train"), out=train_store)
    tr = _fill(
        cfg.train,
        store=train_store,
        out=(run, from_w),
        val_store=(str(stores / "val") if cfg.data.val else None, "derived from data.val"),
    )
    prior = (str(w / "prior"), from_w)
    sa = _fill(cfg.sample, checkpoint=(run, from_w), out=(str(w / "samples"), from_w), store=val_store, prior=prior)
    ev = _fill(
        cfg.evaluate,
        samples=(str(w / "samples"), from_w),
        reference=val_store,
        out=(str(w / "eval"), from_w),
        reference_images=(cfg.data.val, "derived from data.val"),
        train_store=train_store,
    )
    an = _fill(
        cfg.analyze,
        checkpoints=((run,), from_w),
        train_store=train_store,
        val_store=val_store,
        out=(str(w / "analysis"), from_w),
        evaluations=((str(w / "eval"),), from_w),
        prior=prior,
    )
    pr = _fill(cfg.prior, store=train_store, out=prior)
    pt = _fill(
        cfg.pretrain,
        source=(cfg.data.train, "derived from data.train"),
        val=(cfg.data.val, "derived from data.val"),
        out=(str(w / "encoder"), from_w),
    )
    return replace(cfg, extract=ex, train=tr, sample=sa, evaluate=ev, analyze=an, prior=pr, pretrain=pt)
