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
    "ode": 0, "interfaces": 0, "files": 0, "datasets": 0,
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
