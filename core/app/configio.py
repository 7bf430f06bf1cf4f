"""Writing a resolved config: YAML with each non-default value's origin as a comment.

``dump_yaml`` is what ``--dry-run`` prints and ``save_resolved`` writes as ``config.yaml`` beside
every stage's outputs (it loads back as YAML). ``type_name`` is how the config reference and
error messages name a field's type. No torch here: ``--dry-run`` uses it.
"""

from __future__ import annotations

import types
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from rcdm.app.config import SECTIONS, PipelineConfig, Section, section_fields, to_dict
from rcdm.diffusion.spec import Steps
from rcdm.utils import atomic_write_text

__all__ = ["dump_yaml", "field_default", "save_resolved", "type_name"]

_LEGEND = "# values without a comment are rcdm's built-in defaults (the paper's recipe)"


def _yaml_line(key: str, value: Any) -> str:
    text = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=True, width=1_000_000)
    return text.strip()[1:-1].strip()  # "{key: value}" -> "key: value"


def _section_lines(sec: Section, indent: str = "") -> list[str]:
    lines = []
    for f in section_fields(sec):
        line = indent + _yaml_line(f.name, to_dict(getattr(sec, f.name)))
        where = sec.origin.get(f.name)
        lines.append(f"{line}  # {where}" if where else line)
    return lines


def dump_yaml(obj: Any) -> str:
    """YAML of a section or the whole pipeline, each non-default value commented with its origin."""
    if isinstance(obj, PipelineConfig):
        lines = [_LEGEND]
        for name in SECTIONS:
            lines.append(f"{name}:")
            lines += _section_lines(getattr(obj, name), "  ")
        return "\n".join(lines) + "\n"
    if isinstance(obj, Section):
        return "\n".join([_LEGEND, *_section_lines(obj)]) + "\n"
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)


def save_resolved(obj: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write a resolved config (a section or the whole pipeline) next to a stage's outputs
    (atomically; the folder is made if needed)."""
    return atomic_write_text(Path(out_dir) / name, dump_yaml(obj))


def type_name(tp: Any) -> str:
    """How the config reference and error messages name a field's type."""
    if tp is Steps:
        return "steps"
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return f"list of {type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def field_default(f: Field) -> Any:
    """A config field's default (``default``, else ``default_factory()``; MISSING when none)."""
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING
