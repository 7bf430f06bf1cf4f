"""Generated sections of the README (config reference, encoder table), so they cannot drift.

``rcdm config-reference --update README.md`` rewrites the blocks between the markers;
tests/test_readme.py fails when the README differs from what the code generates.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import get_type_hints

from rcdm.app.config import SECTIONS, section_fields, to_dict
from rcdm.app.configio import field_default, type_name
from rcdm.errors import InvalidInput


def _blocks() -> dict[str, str]:
    from rcdm.encoders.registry import describe_registry

    return {"config": config_reference().strip(), "encoders": describe_registry().strip()}


def render(text: str) -> str:
    for name, body in _blocks().items():
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise InvalidInput(f"README has no '<!-- {name}:begin -->' / '<!-- {name}:end -->' markers")
        text = pattern.sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(2), text)
    return text


def update(path: str | Path) -> bool:
    """Rewrite the generated blocks of ``path``; True if anything changed."""
    path = Path(path)
    old = path.read_text()
    new = render(old)
    if new != old:
        path.write_text(new)
    return new != old


def config_reference() -> str:
    """Markdown reference of every section and key, generated from the dataclasses."""
    out = []
    for name, cls in SECTIONS.items():
        out.append(f"### `{name}`\n\n{(cls.__doc__ or '').strip()}\n")
        hints = get_type_hints(cls)
        comments = _field_comments(inspect.getsource(cls))
        rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
        for f in section_fields(cls):
            default = field_default(f)
            rows.append(
                f"| `{f.name}` | {type_name(hints[f.name])} | `{to_dict(default)!r}` | {comments.get(f.name, '')} |"
            )
        out.append("\n".join(rows) + "\n")
    return "\n".join(out)


def _field_comments(source: str) -> dict[str, str]:
    result = {}
    for line in source.splitlines():
        s = line.strip()
        if ":" in s and "#" in s and not s.startswith("#"):
            name = s.split(":", 1)[0].strip()
            if name.isidentifier():
                result[name] = s.split("#", 1)[1].strip().replace("|", "\\|")
    return result
