"""The README's generated sections match the code, and it starts with the two commands."""

from __future__ import annotations

from pathlib import Path

from rcdm.app import readme

README = Path(__file__).resolve().parent.parent / "README.md"


def test_generated_sections_are_current():
    text = README.read_text()
    assert readme.render(text) == text, "run: rcdm config-reference --update README.md"


def test_readme_starts_with_the_two_commands():
    blocks = README.read_text().split("```bash\n")[1:3]
    first, second = (b.split("```")[0].strip() for b in blocks)
    assert first.endswith("rcdm run") and "pip install -e ." in first
    assert second.endswith("pytest") and "pip install -e '.[dev]'" in second
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install -e '.[dev]' && pytest" in ci
