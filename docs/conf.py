"""Sphinx configuration of cnflow's documentation site.

Build it with ``bash scripts/docs.sh`` (HTML into docs/_build/html, warnings as errors).
Sphinx rather than MkDocs: cnflow's docstrings are reStructuredText with Sphinx's roles
(``:class:``, ``:func:``, ``.. math::``) and Google-style sections, which autodoc and napoleon
render and cross-link as they are; MyST keeps the guide and the benchmarks page in Markdown,
readable on their own in the repository.
Two parts of the site are generated here at every build, into folders git ignores:

- ``api/``: one page per public module (every module of cnflow with an ``__all__``), each
  object documented once, at the shortest public path that exports it (``cnflow.CNF``, not
  ``cnflow.flows.cnf.CNF``), and listed with a link on the other modules' pages;
- ``gallery/``: one page per script of ``density_examples/``: its docstring, the figures it
  wrote to ``density_examples/figures/`` and its source. Nothing is run.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import re
import shutil
import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import cnflow  # noqa: E402

project = "cnflow"
author = "the cnflow developers"
copyright = "2026, the cnflow developers"
version = release = cnflow.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
# CNFLOW_DOCS_FAST=1 (the tests' build) leaves out the pages of highlighted source code.
if os.environ.get("CNFLOW_DOCS_FAST"):
    extensions.remove("sphinx.ext.viewcode")
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "bench_*.md", "README.md"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
# "ref.python": a name such as ``nfe_forward`` that several classes define is linked to one
# of them instead of warning.
suppress_warnings = ["myst.header", "ref.python"]

# Docstrings are Google style ("Arguments:", "Returns:", "Attributes:", "Example:").
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_custom_sections = [("Arguments", "params_style"), ("Attributes", "params_style")]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    # scikit-learn's metadata-routing methods, generated on every estimator
    "exclude-members": "set_fit_request,set_score_request,set_predict_request,"
                       "set_transform_request,set_score_samples_request",
}
autodoc_inherit_docstrings = False

html_theme = "furo"
html_title = f"cnflow {release}"
html_static_path: list[str] = []
# A local MathJax (scripts/docs.sh puts one here when npm is present), else its CDN.
if (DOCS / "_build" / "mathjax" / "es5" / "tex-chtml.js").exists():
    html_static_path = ["_build/mathjax"]
    mathjax_path = "es5/tex-chtml.js"

#: Modules that are not part of the public API (with their submodules).
PRIVATE_MODULES = {"cnflow.__main__", "cnflow.train", "cnflow.cli"}


# ---------------------------------------------------------------- API reference
def public_modules() -> list[str]:
    """Every module of cnflow with an ``__all__``, the package first."""
    names = ["cnflow"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in pkgutil.walk_packages(cnflow.__path__, prefix="cnflow."):
            private = any(info.name == m or info.name.startswith(m + ".")
                          for m in PRIVATE_MODULES)
            if private or any(part.startswith("_") for part in info.name.split(".")):
                continue
            if hasattr(importlib.import_module(info.name), "__all__"):
                names.append(info.name)
    return names


def _kind(obj) -> str:
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "autofunction"
    return "autodata"


def api_homes(modules: list[str]) -> dict[int, str]:
    """Where each public object is documented: the module with the fewest dots (then the
    first in alphabetical order) whose ``__all__`` holds it, keyed by ``id(obj)``."""
    homes: dict[int, str] = {}
    for name in sorted(modules, key=lambda m: (m.count("."), m)):
        module = importlib.import_module(name)
        for attr in module.__all__:
            homes.setdefault(id(getattr(module, attr)), f"{name}.{attr}")
    return homes


def data_comment(name: str) -> str:
    """The ``#:`` comment above the assignment of the module-level constant ``name`` in
    cnflow's sources (where Sphinx reads a constant's documentation), or ""."""
    assignment = re.compile(rf"^{re.escape(name)}\s*(:[^=]*)?=")
    for path in sorted((ROOT / "cnflow").rglob("*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if assignment.match(line):
                comment = []
                while i > 0 and lines[i - 1].startswith("#:"):
                    i -= 1
                    comment.insert(0, lines[i][2:].strip())
                if comment:
                    return " ".join(comment)
    return ""


def write_api_pages(out: Path) -> None:
    """One reST page per public module under ``out``, and an index."""
    modules = public_modules()
    homes = api_homes(modules)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    index = ["API reference", "=============", "",
             "Every public name of cnflow, by module. Each object is documented once, where",
             "the shortest import reaches it; the other modules that export it link there.", "",
             ".. toctree::", "   :maxdepth: 1", ""]
    for name in modules:
        module = importlib.import_module(name)
        index.append(f"   {name}")
        lines = [name, "=" * len(name), "", f".. automodule:: {name}", "   :no-members:", ""]
        elsewhere = []
        for attr in module.__all__:
            obj = getattr(module, attr)
            home = homes[id(obj)]
            if home == f"{name}.{attr}":
                if _kind(obj) == "autodata":
                    lines += [f".. py:data:: {attr}", f"   :module: {name}", ""]
                    if len(repr(obj)) <= 200:
                        lines[-1:-1] = [f"   :value: {obj!r}"]
                    lines += [f"   {data_comment(attr) or 'A constant.'}", ""]
                else:
                    lines += [f".. {_kind(obj)}:: {home}", ""]
            else:
                elsewhere.append(f"- ``{attr}``: :py:obj:`{home}`")
        if elsewhere:
            lines += [".. rubric:: Also exported here", ""] + elsewhere + [""]
        (out / f"{name}.rst").write_text("\n".join(lines))
    (out / "index.rst").write_text("\n".join(index) + "\n")


# ---------------------------------------------------------------- gallery
def _script_doc(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or path.stem


def write_gallery(out: Path) -> None:
    """One page per script in density_examples/ (docstring, figures, source), and an index
    with the figures as thumbnails. The figures are the committed ones; nothing is run."""
    examples = ROOT / "density_examples"
    figures = examples / "figures"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    index = ["# Gallery", "",
             "The studies in `density_examples/`: each fits models, prints a table and writes a",
             "figure and a JSON file to `density_examples/figures/`. Run one with",
             "`.venv/bin/python density_examples/NAME.py` (`--quick` for a smoke run).", "",
             "```{toctree}", ":hidden:", ""]
    cards = []
    for script in sorted(examples.glob("*.py")):
        doc = _script_doc(script)
        title, _, body = doc.partition("\n\n")
        title = " ".join(title.split())
        index.append(script.stem)
        page = [f"# {script.stem}", "", f"*{title}*", "", "```text", body.strip(), "```", ""]
        shown = []   # NAME.png/.gif, then NAME_PART.png (one per part), not the smoke runs
        for figure in sorted(figures.glob(f"{script.stem}.*")) + sorted(
                figures.glob(f"{script.stem}_*.png")):
            if figure.suffix in (".png", ".gif") and not figure.stem.endswith("_quick"):
                shutil.copy(figure, out / figure.name)
                page += [f"![{figure.stem}]({figure.name})", ""]
                shown.append(figure)
        table = figures / f"{script.stem}.md"
        if table.exists():
            page += ["## Results", "", table.read_text().strip(), ""]
        page += ["## Source", "", f"```{{literalinclude}} ../../density_examples/{script.name}",
                 ":language: python", "```", ""]
        (out / f"{script.stem}.md").write_text("\n".join(page))
        pngs = [figure for figure in shown if figure.suffix == ".png"]
        thumb = f"![{script.stem}]({pngs[0].name})" if pngs else ""
        cards.append(f"## [{script.stem}]({script.stem}.md)\n\n{title}\n\n{thumb}\n")
    index += ["```", ""] + cards
    (out / "index.md").write_text("\n".join(index))


write_api_pages(DOCS / "api")
write_gallery(DOCS / "gallery")
