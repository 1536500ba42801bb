"""The shape of the code base: no import cycles, small modules, private names kept private.

These read the source with :mod:`ast` (nothing is imported), so they run in milliseconds and
name the offending file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folder → the package it ships as (kernels/ and clusters/ ship inside distconv).
PACKAGE_DIRS = {
    "distconv": "distconv",
    "kernels": "distconv.kernels",
    "clusters": "distconv.clusters",
}
# The bound is "about 500", counted after ruff format (which spreads calls over more lines).
MAX_MODULE_LINES = 550
# Every module in these packages declares its public names.
NEEDS_ALL = ("distconv.ops", "distconv.kernels")


def _library_modules() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _library_modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _imports(module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every distconv import in ``module``, at any depth."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if _is_package(module) else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name, []) for a in node.names if a.name.startswith("distconv")
            ]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("distconv"):
                found.append((node.lineno, base, [a.name for a in node.names]))
    return found


def _edges(module: str) -> set[str]:
    """Library modules that ``module`` imports (``from pkg import sub`` names ``pkg.sub``)."""
    targets = set()
    for _, base, names in _imports(module):
        for name in names or [""]:
            candidate = f"{base}.{name}" if name else base
            if candidate in MODULES:
                targets.add(candidate)
            elif base in MODULES:
                targets.add(base)
    targets.discard(module)
    return targets


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _parents(module: str) -> set[str]:
    """Packages whose ``__init__`` runs before ``module`` (importing them is not a cycle)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycles():
    # Edges to a module's own parent packages are dropped: Python runs them first, and a
    # package re-exporting its children is the normal shape, not a cycle.
    graph = {m: {t for t in _edges(m) if t not in _parents(m)} for m in MODULES}
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph) or [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_small(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{MODULES[module]} has {lines} lines"


def _owning_package(module: str) -> str:
    return module if _is_package(module) else module.rpartition(".")[0]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_crosses_packages(module):
    here = _owning_package(module)
    for line, base, names in _imports(module):
        owner = _owning_package(base) if base in MODULES else base
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not (private and owner != here), (
            f"{MODULES[module]}:{line} imports {private} from {base}"
        )


@pytest.mark.parametrize(
    "module", [m for m in sorted(MODULES) if m.startswith(NEEDS_ALL) and not _is_package(m)]
)
def test_ops_and_engine_modules_declare_all(module):
    tree = ast.parse(MODULES[module].read_text())
    declared = any(
        isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "__all__" for t in node.targets)
        for node in tree.body
    )
    assert declared, f"{MODULES[module]} has no __all__"


def test_outside_code_uses_public_names_only():
    # Tests, benchmarks and examples go through public names; a private one would break
    # silently on the next move.
    offenders = []
    for folder in ("tests", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distconv"):
                    offenders += [
                        f"{path.name}:{node.lineno} {a.name}"
                        for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")
                    ]
    assert not offenders, offenders


def test_the_checker_sees_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
