"""Imports flow one way (docs/guide.md, "Layout"): each part of cnflow imports only from the
parts below it, never upwards, so that a newcomer can read and change a layer knowing what it
depends on."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cnflow"

#: A part may import from parts of a lower rank (and within itself).
RANKS = {
    "checks": -1,
    "ode": 0, "interfaces": 0, "files": 0, "datasets": 0, "allocator": 0,
    "divergence": 1, "nn": 1, "plotting": 1,
    "flows": 2,
    "preprocessing": 3, "training": 3,
    "estimators": 4,
    "__init__": 6, "train": 6, "cli": 6,
    "__main__": 7,
}


def _part(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    """The parts of cnflow that the module at ``path`` imports."""
    package = list(path.relative_to(ROOT.parent).parts[:-1])  # e.g. ["cnflow", "flows"]
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[:len(package) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [])
            if len(target) > 1:
                parts.add(target[1])
            else:  # "from .. import divergence": the names are the parts
                parts.update(alias.name for alias in node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""]
            parts.update(n.split(".")[1] for n in names
                         if n.startswith("cnflow.") and len(n.split(".")) > 1)
    return {p.removesuffix(".py") for p in parts}


def test_the_import_reader_sees_relative_and_absolute_imports():
    assert _imported_parts(ROOT / "estimators" / "cnf_estimator.py") >= {
        "divergence", "flows", "ode", "preprocessing", "training", "estimators"}
    assert _imported_parts(ROOT / "ode" / "solve.py") == {"ode"}


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_go_down(path):
    own = _part(path)
    assert own in RANKS, f"{own} has no place in the layering; add it to RANKS and the guide"
    upward = {p for p in _imported_parts(path) - {own}
              if p in RANKS and RANKS[p] >= RANKS[own]}
    assert not upward, f"{path.relative_to(ROOT)} imports {sorted(upward)} from its own level " \
                       "or above"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The cnflow modules that the module at ``path`` imports (type-only imports too):
    ``from .x import y`` counts as x, or as x.y where that is a module."""
    package = _module_name(path) if path.name == "__init__.py" else \
        _module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + (node.module.split(".") if node.module else []))
            else:
                target = node.module or ""
            targets = [(target, [a.name for a in node.names])]
        else:
            continue
        for target, names in targets:
            for name in names:
                if f"{target}.{name}" in modules:
                    found.add(f"{target}.{name}")
            if target in modules:
                found.add(target)
    return found


def test_no_two_modules_import_each_other():
    """No import cycle among cnflow's modules, type-only imports included (a package's
    ``__init__`` re-exporting its own submodules is the one allowed way down and up)."""
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    graph = {name: {m for m in _imported_modules(path, modules)
                    if not name.startswith(m + ".")}  # a submodule's own package
             for name, path in paths.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = trail[trail.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_fitting_rooms_never_import_an_estimator():
    """cnflow/estimators/fitting is used by the estimator classes and takes them as
    arguments; it imports only the policy, the parameter kinds, the memory-mapped reading and
    itself from cnflow.estimators."""
    allowed = {"cnflow.estimators.policy", "cnflow.estimators.params",
               "cnflow.estimators.mapped"}
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    for path in sorted((ROOT / "estimators" / "fitting").glob("*.py")):
        imported = {m for m in _imported_modules(path, set(paths))
                    if m.startswith("cnflow.estimators")}
        wrong = {m for m in imported - allowed
                 if not m.startswith("cnflow.estimators.fitting")}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_the_estimators_tell_memory_mapped_rows_apart_in_one_place():
    """Whether rows are memory-mapped is asked in cnflow/estimators/fitting/table.py only
    (TableRows); the estimators and the other rooms go through it."""
    for path in sorted((ROOT / "estimators").rglob("*.py")):
        if path == ROOT / "estimators" / "fitting" / "table.py":
            continue
        calls = [node for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "is_mapped"]
        assert not calls, f"{path.relative_to(ROOT)} calls is_mapped"


def test_the_estimators_functions_stay_short():
    """No function in cnflow/estimators/ is longer than 60 lines (docstring included): a
    longer one is split into named steps."""
    for path in sorted((ROOT / "estimators").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.relative_to(ROOT)}: {node.name} has {length} lines"
