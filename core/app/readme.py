"""Generated sections of the README (config reference, encoder table), so they cannot drift.

``rcdm config-reference --update README.md`` rewrites the blocks between the markers;
tests/test_readme.py fails when the README differs from what the code generates.
"""

from __future__ import annotations

import re
from pathlib import Path

from rcdm.errors import InvalidInput


def _blocks() -> dict[str, str]:
    from rcdm.app.config import config_reference
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
