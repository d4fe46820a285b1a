"""The documentation runs: every Python block of the README and of the docs' pages, the
README's ``python -m cnflow`` commands, the site's build with warnings as errors (every
public name in the API reference), and the package's version, build and metadata.

The code blocks run as written, in a temporary folder, with two changes (``quick_training``):
every training loop stops after a few steps, so that fits written for minutes take seconds,
and ``python -m cnflow train``'s summary scores (and its fit.png draws) 2,000 rows instead of
20,000. What the blocks call, the arguments they pass and the shapes they get are the real ones.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import cnflow
from cnflow.cli import main
from cnflow.cli import train as cli_train
from cnflow.training import loop

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "docs" / "guide").glob("*.md"))
#: Shell lines of the README that the tests do not run, by their first words: the set-up and
#: test scripts (the test command itself), installs, and several processes on GPUs.
NOT_RUN = ("bash scripts/", "pip install", "torchrun ")
QUICK_STEPS = 3
QUICK_SUMMARY = 2000


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of a Markdown file in ``language``, in order."""
    pattern = re.compile(rf"^```{language}\n(.*?)^```", re.S | re.M)
    return pattern.findall(path.read_text())


@pytest.fixture
def quick_training(monkeypatch, tmp_path):
    """Every training loop of cnflow stops after QUICK_STEPS steps, the command line's
    summary takes QUICK_SUMMARY rows; the cwd is a new folder."""
    monkeypatch.setattr(cli_train, "SUMMARY_ROWS", QUICK_SUMMARY)
    real_train = loop.train

    def quick(model, X, loss_fn, config, **kwargs):
        config = dataclasses.replace(config, max_iter=min(config.max_iter, QUICK_STEPS))
        return real_train(model, X, loss_fn, config, **kwargs)

    patched = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("cnflow") and getattr(module, "train", None) is real_train:
            monkeypatch.setattr(module, "train", quick)
            patched += 1
    assert patched >= 4   # the estimators, the latent ODE and the objectives
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_blocks(blocks: list[str], where: str) -> dict:
    namespace: dict = {"__name__": "__docs__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, block in enumerate(blocks):
            try:
                exec(compile(block, f"{where}, block {i + 1}", "exec"), namespace)
            except Exception as err:   # name the block in the failure
                raise AssertionError(f"{where}, python block {i + 1} failed: {err!r}\n{block}"
                                     ) from err
    return namespace


# ---------------------------------------------------------------- README
def test_readme_is_at_most_250_lines():
    assert len(README.read_text().splitlines()) <= 250


def test_readme_python_blocks_run(quick_training):
    blocks = code_blocks(README, "python")
    assert len(blocks) >= 5
    namespace = run_blocks(blocks, "README.md")
    assert namespace["ys"].shape == (5, 2, 2)           # the values the comments promise
    assert namespace["draws"].shape == (200, 10)
    assert namespace["img"].sample(2, random_state=0).shape == (2, 1, 8, 8)
    assert (quick_training / "model.pt").exists() and (quick_training / "fit.ckpt").exists()


def readme_commands() -> tuple[list[list[str]], list[str]]:
    """The README's shell lines: ``python -m cnflow`` commands as argument lists, and the
    lines not run."""
    run, skipped = [], []
    for block in code_blocks(README, "bash"):
        for line in block.replace("\\\n", " ").splitlines():  # continued lines joined
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if words[:3] == ["python", "-m", "cnflow"] or words[:2] == ["python", "-c"]:
                run.append(words[3:] if words[1] == "-m" else words[1:])
            else:
                skipped.append(line)
    return run, skipped


def test_readme_commands_run(quick_training, capsys):
    """The command line's lines run in order (``python -c CODE`` executes CODE here)."""
    commands, skipped = readme_commands()
    assert [c[0] for c in commands] == ["train", "-c", "train", "sample", "score", "plot"]
    assert skipped and all(line.startswith(NOT_RUN) for line in skipped), skipped
    for args in commands:
        if args[0] == "-c":
            exec(compile(args[1], "README.md, python -c", "exec"), {})
            continue
        assert main(args + (["--quiet"] if args[0] == "train" else [])) == 0, args
    for name in ("model.pt", "fit.png", "summary.json"):
        assert (quick_training / "out" / name).stat().st_size > 0
    run = quick_training / "run"
    for name in ("model.pt", "fit.png", "summary.json", "plot.png"):
        assert (run / name).stat().st_size > 0
    assert (quick_training / "samples.csv").read_text().startswith("bill_length_mm,")
    assert (quick_training / "logp.csv").exists()


# ---------------------------------------------------------------- the docs' pages
@pytest.mark.parametrize("page", [p for p in DOC_PAGES if code_blocks(p, "python")],
                         ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_doc_page_python_blocks_run(page, quick_training):
    run_blocks(code_blocks(page, "python"), str(page.relative_to(ROOT)))


#: Phrases about how the project's work was organised, which its texts must not contain.
ORGANISATIONAL = re.compile(r"\b(this session|sessions?\b|rerun|re-run|not kept|/tmp/|"
                            r"shared machine|helper agent|worktree)", re.I)


def test_texts_describe_the_software_only():
    texts = [README, ROOT / "CHANGELOG.md", *DOC_PAGES,
             *(ROOT / "cnflow").rglob("*.py"), *(ROOT / "scripts").glob("*"),
             *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "density_examples").glob("*.py")]
    found = [f"{path.relative_to(ROOT)}: {match.group(0)!r}"
             for path in texts for match in ORGANISATIONAL.finditer(path.read_text())]
    assert not found, found


# ---------------------------------------------------------------- the site
@pytest.mark.slow
def test_docs_build_without_warnings_and_list_every_public_name(tmp_path, monkeypatch, capsys):
    """``sphinx -W`` in this process (cnflow is imported already; Sphinx restores docutils'
    registries after the build, and sys.path is put back here)."""
    pytest.importorskip("sphinx")
    from sphinx.cmd.build import build_main

    out = tmp_path / "html"
    monkeypatch.setenv("CNFLOW_DOCS_FAST", "1")
    monkeypatch.setattr(sys, "path", list(sys.path))   # conf.py puts the repository first
    with warnings.catch_warnings():   # Python's warnings; Sphinx's own fail the build (-W)
        warnings.simplefilter("ignore")
        code = build_main(["-W", "--keep-going", "-q", "-b", "html", "-d",
                           str(tmp_path / "doctrees"), str(ROOT / "docs"), str(out)])
    assert code == 0, capsys.readouterr().err[-5000:]
    html = "\n".join(page.read_text() for page in (out / "api").glob("*.html"))
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        conf = importlib.import_module("conf")
    finally:
        sys.path.remove(str(ROOT / "docs"))
    modules = conf.public_modules()
    assert {"cnflow", "cnflow.ode", "cnflow.flows", "cnflow.estimators"} <= set(modules)
    homes = conf.api_homes(modules)
    for name in modules:
        module = importlib.import_module(name)
        for attr in module.__all__:
            assert f'id="{homes[id(getattr(module, attr))]}"' in html, f"{name}.{attr}"
    for page in ("index", "getting-started", "benchmarks", "changelog", "gallery/index",
                 "guide/traces", "guide/migrating"):
        assert (out / f"{page}.html").exists(), page


# ---------------------------------------------------------------- packaging
def test_version_is_one_number(capsys):
    """``--version`` of the command line (here in this process; tests/test_cli.py's
    test_a_real_process runs ``python -m cnflow --version`` too)."""
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.split() == ["cnflow", cnflow.__version__]
    assert importlib.metadata.version("cnflow") == cnflow.__version__   # what pip show says
    assert "version = attr: cnflow.__version__" in (ROOT / "setup.cfg").read_text()


@pytest.mark.slow
def test_distribution_builds_and_passes_twine_check(tmp_path):
    pytest.importorskip("build")
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                            str(tmp_path), str(ROOT)], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next(tmp_path.glob("*.whl"))
    sdist = next(tmp_path.glob("*.tar.gz"))
    assert f"cnflow-{cnflow.__version__}" in wheel.name and cnflow.__version__ in sdist.name
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert "cnflow/py.typed" in names and any(n.endswith("LICENSE") for n in names)
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict",
                              str(wheel), str(sdist)], capture_output=True, text=True,
                             timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
