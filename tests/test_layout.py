"""The layout rules of docs/internals.md, checked on the source: core modules share only public
names, stages import core and never each other, and the whole tree is formatted and linted by ruff."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = {"extract": "rcdm.extract", "train": "rcdm.train", "sample": "rcdm.sample", "analysis": "rcdm.analysis"}


def _sources(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (REPO / f).rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every ``import`` / ``from ... import`` in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
    return out


def test_core_modules_import_no_private_names():
    bad = [
        f"{p.relative_to(REPO)}:{line} imports {name} from {module}"
        for p in _sources("core", "extract", "train", "sample", "analysis")
        for module, names, line in _imports(p)
        if module.startswith("rcdm")
        for name in names
        if name.startswith("_")
    ]
    assert bad == []


def test_stages_never_import_each_other():
    bad = []
    for folder, package in STAGES.items():
        for p in _sources(folder):
            for module, _, line in _imports(p):
                others = [pkg for pkg in STAGES.values() if pkg != package]
                if any(module == o or module.startswith(o + ".") for o in others):
                    bad.append(f"{p.relative_to(REPO)}:{line} imports {module}")
    assert bad == []


@pytest.mark.parametrize("command", [["format", "--check"], ["check"]], ids=["format", "lint"])
def test_ruff(command):
    """One formatter and one linter for the whole tree (pyproject.toml's [tool.ruff]): the
    linter's rules include the complexity limits that keep functions small."""
    done = subprocess.run([sys.executable, "-m", "ruff", *command, str(REPO)], capture_output=True, text=True)
    assert done.returncode == 0, f"ruff {' '.join(command)}:\n{done.stdout}{done.stderr}"


def _rcdm_imports(p: Path) -> list[tuple[str, int]]:
    """Every ``rcdm`` module ``p`` imports, at module level or inside a function: (module, line)."""
    out = []
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("rcdm"):
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("rcdm")]
    return out


def test_the_app_is_on_top_imported_by_nothing():
    """rcdm.app (the command line, the config's layers, `rcdm run`) launches the stages; nothing
    below it imports it (the package's entry point aside)."""
    bad = [
        f"{p.relative_to(REPO)}:{line} imports {module}"
        for p in _sources("core", "extract", "train", "sample", "analysis")
        if "app" not in p.relative_to(REPO).parts and p.name != "__main__.py"
        for module, line in _rcdm_imports(p)
        if module == "rcdm.app" or module.startswith("rcdm.app.")
    ]
    assert bad == []


def test_the_config_is_the_bottom_layer():
    """rcdm.config (the schema every stage stands on) imports nothing of rcdm but errors and utils,
    and no torch: `rcdm --help` and --dry-run read it."""
    allowed = ("rcdm.config", "rcdm.errors", "rcdm.utils")
    bad = []
    for p in _sources("core/config"):
        for module, line in _rcdm_imports(p):
            if not any(module == a or module.startswith(a + ".") for a in allowed):
                bad.append(f"{p.relative_to(REPO)}:{line} imports {module}")
        for module, _, line in _imports(p):
            if module.split(".")[0] in ("torch", "numpy"):
                bad.append(f"{p.relative_to(REPO)}:{line} imports {module}")
    assert bad == []


# Folders held to the complexity limits that replace the 400-line file cap (others join as they are cut).
SMALL_FUNCTIONS = ["analysis"]


def test_functions_are_small():
    """Every function of these folders: McCabe complexity <= 10 and at most 50 statements."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "C901,PLR0915", "--config", "lint.mccabe.max-complexity=10"]
        + [str(REPO / f) for f in SMALL_FUNCTIONS],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"functions over the limits:\n{done.stdout}{done.stderr}"
