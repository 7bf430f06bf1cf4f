"""The layout rules of docs/internals.md, checked on the source: core modules share only public
names, stages import core and never each other, no module imports itself through others, and the
whole tree is formatted and linted by ruff."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = {"extract": "rcdm.extract", "train": "rcdm.train", "sample": "rcdm.sample", "analysis": "rcdm.analysis"}
PACKAGES = {"core": "rcdm", **STAGES}  # folder -> package (pyproject.toml's package-dir)


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


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name; a package's ``__init__.py`` is the package."""
    found = {}
    for folder, package in PACKAGES.items():
        for p in _sources(folder):
            parts = list(p.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = p
    return found


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module ``from ... import`` names, made absolute (``from .x import`` in package p: p.x)."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    return ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))


def _import_graph() -> dict[str, set[str]]:
    """module -> the rcdm modules it imports, at module level or inside functions. ``from X import
    y`` is an edge to ``X.y`` when that is a module, else to ``X`` (a package that re-exports
    counts as that package); relative imports are resolved against the importing module."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "rcdm"}
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, package)
                if base.split(".")[0] != "rcdm":
                    continue
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else resolve(base) for a in node.names}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, sorted for a stable answer)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_import_graph_has_no_cycle():
    """No module imports itself through others, not even inside a function: each pair of modules
    has one direction (what two need lives in a module below both)."""
    graph = _import_graph()
    assert {"rcdm.store.read", "rcdm.store.write"} <= graph["rcdm.store"]  # a package that re-exports
    assert "rcdm.encoders.readers" in graph["rcdm.encoders.build"]  # module level
    assert "rcdm.data.images" in graph["rcdm.store.images"]  # inside a function
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


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
