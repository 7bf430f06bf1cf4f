"""Generated sections of the README (config reference, encoder table), so they cannot drift.

``rcdm config-reference --update README.md`` rewrites the blocks between the markers;
tests/test_readme.py fails when the README differs from what the code generates.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from rcdm.config import SECTIONS, field_default, section_fields, setting_of, to_dict, type_name
from rcdm.config.schema import hints
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
    """Markdown reference of every section and key, generated from the schema's declarations."""
    out = []
    for name, cls in SECTIONS.items():
        out.append(f"### `{name}`\n\n{inspect.cleandoc(cls.__doc__ or '')}\n")
        types = hints(cls)
        rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
        for f in section_fields(cls):
            s = setting_of(f)
            meaning = s.help + (f" ({s.bounds()})" if s.bounds() else "")
            cells = [f"`{f.name}`", type_name(types[f.name]), f"`{to_dict(field_default(f))!r}`", meaning]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("\n".join(rows) + "\n")
    return "\n".join(out)
