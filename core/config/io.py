"""A config's plain forms: the data of a section (``to_dict``), and the YAML written beside every
output with each non-default value's origin as a comment (``dump_yaml``, ``save_resolved``).

``dump_yaml`` is what ``--dry-run`` prints and ``save_resolved`` writes as ``config.yaml`` (it
loads back as YAML). No torch.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from rcdm.config.sampler import Steps
from rcdm.config.sections import SECTIONS, PipelineConfig, Section, section_fields
from rcdm.utils import atomic_write_text

__all__ = ["dump_yaml", "save_resolved", "to_dict"]

_LEGEND = "# values without a comment are rcdm's built-in defaults (the paper's recipe)"


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON data: sections as dicts (without ``origin``), tuples as lists, steps as text."""
    if isinstance(obj, Steps):
        return str(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in (section_fields(obj) if isinstance(obj, Section) else fields(obj))]
        return {n: to_dict(getattr(obj, n)) for n in names}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


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
