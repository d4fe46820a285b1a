"""python -m cnflow {train,sample,score,plot}: tiny fits write their files; sample and score
round-trip through .npy/.csv; user mistakes give one line on stderr and exit code 2.

Most tests call :func:`cnflow.cli.main` in process, which keeps the file fast (each
process start imports torch anew); a sample, an error and ``--version`` run through real
``python -m cnflow`` processes, started together.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cnflow.cli
from cnflow import CNFDensity, PlanarFlowDensity
from cnflow.cli import main
from cnflow.cli.io import load_model

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
SMALL_SUMMARY = 2000
TINY = ["--n-samples", "300", "--max-iter", "2", "--hidden", "8", "--quiet", "--resolution", "50"]


def cli(*commands, cwd=ROOT) -> list[subprocess.CompletedProcess]:
    """Run ``python -m cnflow ARGS`` for each list of ARGS, each in a fresh process, all
    started at once (each imports torch anew: they share the cores)."""
    started = [(args, subprocess.Popen([sys.executable, "-m", "cnflow", *map(str, args)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, cwd=cwd)) for args in commands]
    done = []
    for args, process in started:
        out, err = process.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    return done


def run(capsys, *args):
    """Run the command line in process; (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read(path: Path) -> np.ndarray:
    return np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",")


@pytest.fixture(scope="module", autouse=True)
def small_summaries():
    """``train``'s summary scores (and fit.png draws) SMALL_SUMMARY rows instead of 20,000:
    the tests check what it reports, not how precisely; the fits here are tiny."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cnflow.cli.train, "SUMMARY_ROWS", SMALL_SUMMARY)
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """model.pt (and the rest) of a tiny fit to moons."""
    folder = tmp_path_factory.mktemp("cli")
    assert main(["train", "moons", *TINY, "--out", str(folder)]) == 0
    return folder / "model.pt"


def test_train_writes_model_picture_and_summary(trained):
    folder = trained.parent
    for name in ("model.pt", "fit.png", "training.png", "summary.json"):
        assert (folder / name).stat().st_size > 0
    assert (folder / "fit.png").read_bytes()[:8] == PNG
    summary = json.loads((folder / "summary.json").read_text())
    # 300 rows: five cross-fitted flows of two steps each
    assert summary["iterations"] == 2 * 5 and np.isfinite(summary["test_nll"])
    torch.load(trained, weights_only=True)
    est = CNFDensity.load(trained)
    assert est.max_iter == 2 and est.hidden == (8,)


def test_train_on_a_csv_file(tmp_path, capsys):
    data = tmp_path / "rows.csv"
    np.savetxt(data, np.random.RandomState(0).randn(200, 3), delimiter=",")
    code, _, err = run(capsys, "train", data, "--max-iter", "1", "--hidden", "4", "--quiet",
                       "--out", tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out" / "model.pt").exists()


def test_train_with_the_hollow_field_then_score(tmp_path, capsys):
    data = tmp_path / "rows.csv"
    np.savetxt(data, np.random.RandomState(0).randn(200, 3), delimiter=",")
    code, _, err = run(capsys, "train", data, "--max-iter", "1", "--hidden", "4", "--quiet",
                       "--field", "hollow", "--out", tmp_path / "out")
    assert code == 0, err
    est = CNFDensity.load(tmp_path / "out" / "model.pt")
    assert est.field == "hollow" and est.settings_.field == "hollow"
    code, out, err = run(capsys, "score", tmp_path / "out" / "model.pt", data)
    assert code == 0, err
    assert (tmp_path / "out" / "fit.png").read_bytes()[:8] == PNG  # 3-D data: the pair plot
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["columns"] is None and summary["held_out_rows"] == 20


def header_table(path, n=120, seed=0):
    """A CSV with a header line: four named numeric columns and a text column."""
    rng = np.random.default_rng(seed)
    length = rng.normal(50, 5, n)
    rows = np.column_stack([length, 0.4 * length + rng.normal(0, 1, n),
                            rng.gamma(2.0, 1.0, n), rng.normal(size=n)])
    lines = ["length_mm,width_mm,species,mass_g,depth"]
    lines += [f"{a:.3f},{b:.3f},{'ab'[i % 2]},{c:.3f},{d:.3f}"
              for i, (a, b, c, d) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return rows


def test_a_users_header_csv_trains_plots_samples_and_scores(tmp_path, capsys):
    """The exchange of a user with a spreadsheet export: a header CSV (with a text column
    left out by --columns) trains, holds out a tenth of the rows and reports their score ±
    SE beside the training rows' and a Gaussian mixture's; plot draws the pair plot; sample
    writes the same header; score picks the model's columns by name."""
    data = tmp_path / "measurements.csv"
    rows = header_table(data)
    names = ["length_mm", "width_mm", "mass_g", "depth"]
    code, _, err = run(capsys, "train", data, "--out", tmp_path / "run", "--quiet",
                       "--max-iter", "2", "--hidden", "8")
    assert code == 2 and err.strip() == (
        f"error: {data}: column 'species' holds text ('a' on line 2), not numbers; choose the "
        "numeric columns with --columns")
    code, out, err = run(capsys, "train", data, "--columns", *names, "--out", tmp_path / "run",
                         "--quiet", "--max-iter", "2", "--hidden", "8")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["columns"] == names
    assert summary["train_rows"] == 108 and summary["held_out_rows"] == 12
    est = CNFDensity.load(tmp_path / "run" / "model.pt")
    assert list(est.feature_names_in_) == names
    for key in ("train_score", "held_out_score"):
        assert set(summary[key]) == {"mean", "se", "rows"} and summary[key]["se"] > 0
    assert summary["held_out_score"]["rows"] == 12
    reference = summary["reference"]
    assert reference["components"] >= 1 and reference["held_out_score"]["rows"] == 12
    # the flow minus the mixture, row by row, is the difference of the two means
    assert np.isclose(reference["flow_minus_reference"]["mean"],
                      summary["held_out_score"]["mean"] - reference["held_out_score"]["mean"])
    assert f"{summary['held_out_score']['mean']:.4f} ± {summary['held_out_score']['se']:.4f}" \
        in out
    assert (tmp_path / "run" / "fit.png").read_bytes()[:8] == PNG
    code, out, err = run(capsys, "plot", tmp_path / "run" / "model.pt", "--data", data,
                         "--n-samples", "50")
    assert code == 0, err
    assert (tmp_path / "run" / "plot.png").read_bytes()[:8] == PNG
    code, out, err = run(capsys, "sample", tmp_path / "run" / "model.pt", "--n", "7",
                         "--out", tmp_path / "s.csv", "--log-prob")
    assert code == 0, err
    header, *lines = (tmp_path / "s.csv").read_text().splitlines()
    assert header == ",".join([*names, "log_density"]) and len(lines) == 7
    # score: the header's names pick the model's columns, whatever the file's order
    reordered = tmp_path / "reordered.csv"
    reordered.write_text("depth,mass_g,width_mm,length_mm\n" + "\n".join(
        ",".join(repr(float(v)) for v in row[::-1]) for row in rows[:5]) + "\n")
    code, out, err = run(capsys, "score", tmp_path / "run" / "model.pt", reordered,
                         "--out", tmp_path / "scores.npy")
    assert code == 0, err
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        expected = est.score_samples(rows[:5])  # scikit-learn's warning: a named model
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), expected, atol=1e-10)


def test_conditional_targets_by_name(tmp_path, capsys):
    data = tmp_path / "measurements.csv"
    header_table(data)
    code, out, err = run(capsys, "train", data, "--columns", "length_mm", "width_mm",
                         "mass_g", "--targets", "width_mm", "--out", tmp_path / "run",
                         "--quiet", "--max-iter", "2", "--hidden", "8")
    assert code == 0, err
    assert "p(width_mm | the other columns)" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["targets"] == [1] and summary["reference"]["held_out_score"]["rows"] == 12
    model = tmp_path / "run" / "model.pt"
    est = load_model(str(model))
    assert list(est.target_names_) == ["width_mm"]
    assert list(est.feature_names_in_) == ["length_mm", "mass_g"]
    code, out, err = run(capsys, "plot", model, "--data", data, "--columns", "mass_g",
                         "width_mm", "length_mm", "--out", tmp_path / "c.png")
    assert code == 0, err and (tmp_path / "c.png").exists()
    code, _, err = run(capsys, "train", data, "--columns", "length_mm", "width_mm",
                       "--targets", "height", "--out", tmp_path / "run2")
    assert code == 2 and err.strip() == (f"error: --targets: {data} has no column 'height' "
                                         "(its columns: length_mm, width_mm)")


def test_missing_values_stop_or_are_dropped_on_the_command_line(tmp_path, capsys):
    data = tmp_path / "gaps.csv"
    rng = np.random.default_rng(3)
    lines = ["a,b"] + [f"{x:.3f},{'NA' if i % 10 == 0 else f'{y:.3f}'}"
                       for i, (x, y) in enumerate(rng.normal(size=(60, 2)))]
    data.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, "train", data, "--out", tmp_path / "run", "--quiet")
    assert code == 2 and err.strip() == (f"error: {data} has 6 missing values in 6 rows "
                                         "(column 'b': 6); pass --dropna to drop those rows")
    code, out, err = run(capsys, "train", data, "--dropna", "--out", tmp_path / "run",
                         "--quiet", "--max-iter", "2", "--hidden", "8", "--test-fraction", "0")
    assert code == 0, err
    assert "6 rows with missing values dropped" in out and "no rows held out" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dropped_rows"] == 6 and "held_out_score" not in summary


def one_line_error(capsys, args, message):
    code, _, err = run(capsys, *args)
    assert code == 2, (args, err)
    assert message in err and len(err.strip().splitlines()) == 1, (args, err)


@pytest.mark.parametrize("args,message", [
    (["train", "nope"], "neither a toy dataset"),
    (["train", "missing.npy"], "no such file"),
    (["train", "moons", "--resolution", "0"], "--resolution must be a positive integer"),
    (["train", "moons", "--device", "nope"], "unknown device"),
])
def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys, args, message):
    one_line_error(capsys, [*args, "--out", tmp_path], message)


def test_wrong_shape_file(tmp_path, capsys):
    np.save(tmp_path / "flat.npy", np.arange(10.0))
    one_line_error(capsys, ["train", tmp_path / "flat.npy", "--out", tmp_path], "2-D array")


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_train_sample_score_round_trip(trained, tmp_path, capsys, suffix):
    rows_file = tmp_path / f"rows{suffix}"
    code, out, err = run(capsys, "sample", trained, "--n", "40", "--out", rows_file)
    assert code == 0, err
    assert out.strip() == f"wrote 40 samples × 2 features to {rows_file}"
    rows = read(rows_file)
    assert rows.shape == (40, 2) and np.isfinite(rows).all()
    scores_file = tmp_path / f"scores{suffix}"
    code, out, err = run(capsys, "score", trained, rows_file, "--out", scores_file)
    assert code == 0, err
    scores = read(scores_file)
    expected = CNFDensity.load(trained).score_samples(rows)
    assert scores.shape == (40,)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-10)
    assert f"mean log-likelihood {expected.mean():.6f} ± {expected.std(ddof=1) / 40 ** 0.5:.6f}" \
        f" (standard error) over 40 rows" in out


def test_sample_with_fixed_steps(trained, tmp_path, capsys):
    """--steps K: the estimator's sample(steps=K), the same rows with their log-densities."""
    out_file = tmp_path / "few.csv"
    code, out, err = run(capsys, "sample", trained, "--n", "25", "--seed", "2", "--steps", "3",
                         "--log-prob", "--out", out_file)
    assert code == 0, err
    rows = read(out_file)
    est = CNFDensity.load(trained)
    expected, log_p = est.sample(25, random_state=2, steps=3, return_log_prob=True)
    assert rows.shape == (25, 3)
    np.testing.assert_allclose(rows[:, :2], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rows[:, 2], log_p, rtol=1e-12, atol=1e-12)


def test_sample_is_repeatable_by_seed(trained, tmp_path, capsys):
    for name, seed in (("a.npy", 3), ("b.npy", 3), ("c.npy", 4)):
        assert run(capsys, "sample", trained, "--n", "5", "--seed", seed,
                   "--out", tmp_path / name)[0] == 0
    a, b, c = (np.load(tmp_path / name) for name in ("a.npy", "b.npy", "c.npy"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_plot_with_and_without_data(trained, tmp_path, capsys):
    quick = ["--n-samples", "300", "--resolution", "40"]
    code, _, err = run(capsys, "plot", trained, "--out", tmp_path / "a.png", *quick)
    assert code == 0, err
    code, _, err = run(capsys, "plot", trained, "--data", "moons", "--out", tmp_path / "b.png",
                       *quick)
    assert code == 0, err
    shutil.copy(trained, tmp_path / "copy.pt")  # default --out: plot.png beside the model
    code, out, err = run(capsys, "plot", tmp_path / "copy.pt", *quick)
    assert code == 0, err
    assert out.strip() == f"wrote {tmp_path / 'plot.png'}"
    for name in ("a.png", "b.png", "plot.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_planar_models_are_read_too(tmp_path, capsys):
    X = np.random.RandomState(0).randn(200, 2)
    model = tmp_path / "p.pt"
    PlanarFlowDensity(n_layers=2, max_iter=2, device="cpu").fit(X).save(model)
    code, _, err = run(capsys, "sample", model, "--n", "10", "--out", tmp_path / "s.npy")
    assert code == 0, err
    rows = np.load(tmp_path / "s.npy")
    assert rows.shape == (10, 2) and np.isfinite(rows).all()
    code, out, err = run(capsys, "score", model, tmp_path / "s.npy", "--out",
                         tmp_path / "logp.csv")
    assert code == 0, err
    expected = PlanarFlowDensity.load(model).score_samples(rows)
    np.testing.assert_allclose(np.loadtxt(tmp_path / "logp.csv"), expected, rtol=0, atol=1e-10)
    assert f"mean log-likelihood {expected.mean():.6f} ± " in out and "over 10 rows" in out


def test_subcommand_errors_are_one_line_with_exit_code_2(trained, tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    garbage = tmp_path / "bad" / "model.pt"
    garbage.write_text("not a model")
    torch.save({"estimator": "CNFDensity"}, tmp_path / "partial.pt")
    np.save(tmp_path / "three.npy", np.zeros((5, 3)))
    (tmp_path / "junk.npy").write_text("junk")
    none = tmp_path / "none.pt"
    cases = [
        (["sample", trained, "--out", tmp_path / "x.txt"], "must end in .npy or .csv"),
        (["sample", trained, "--n", "0", "--out", tmp_path / "x.npy"], "--n must be"),
        (["sample", trained, "--steps", "0", "--out", tmp_path / "x.npy"],
         "--steps must be a positive integer, got 0"),
        (["sample", none, "--out", tmp_path / "x.npy"], "no such model file"),
        (["sample", garbage, "--out", tmp_path / "x.npy"], "not a cnflow model file"),
        (["sample", trained, "--device", "nope", "--out", tmp_path / "x.npy"], "unknown device"),
        (["sample", trained, "--device", "cuda:99", "--out", tmp_path / "x.npy"],
         "is not available"),
        (["score", trained, tmp_path / "three.npy"], "has 3 columns but the model"),
        (["score", trained, tmp_path / "missing.csv"], "no such file"),
        (["score", trained, tmp_path / "junk.npy"], "could not read"),
        (["score", trained, "moons", "--out", tmp_path / "x.json"], "must end in .npy or .csv"),
        (["score", none, tmp_path / "three.npy"], "no such model file"),
        (["score", garbage, "moons"], "not a cnflow model file"),
        (["score", tmp_path / "partial.pt", "moons"], "not a cnflow model file"),
        (["score", trained, "nope"], "neither a toy dataset"),
        (["plot", none], "no such model file"),
        (["plot", garbage], "not a cnflow model file"),
        (["plot", trained, "--out", tmp_path / "x.jpg"], "must end in .png"),
        (["plot", trained, "--data", tmp_path / "three.npy"], "has 3 columns"),
    ]
    for args, message in cases:
        one_line_error(capsys, args, message)
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.slow
def test_a_real_process(trained, tmp_path):
    (tmp_path / "model.pt").write_text("not a model")
    res, error, version = cli(["sample", trained, "--n", "3", "--out", tmp_path / "s.csv"],
                              ["score", tmp_path / "model.pt", "moons"], ["--version"])
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout == f"wrote 3 samples × 2 features to {tmp_path / 's.csv'}\n"
    assert error.returncode == 2 and error.stdout == ""
    assert error.stderr.strip() == f"error: {tmp_path / 'model.pt'} is not a cnflow model " \
                                   "file (UnpicklingError)"
    assert version.returncode == 0 and version.stderr == "", version.stderr
    assert version.stdout.split() == ["cnflow", cnflow.__version__]


def test_plot_draws_the_pair_plot_of_a_model_that_is_not_2d(tmp_path, capsys):
    """Without --data, the model's samples alone; with a .npy of another width, one line."""
    X = np.random.RandomState(0).randn(100, 3)
    CNFDensity(hidden=(4,), max_iter=1, device="cpu").fit(X).save(tmp_path / "m3.pt")
    code, out, err = run(capsys, "plot", tmp_path / "m3.pt", "--n-samples", "60")
    assert code == 0, err
    assert (tmp_path / "plot.png").read_bytes()[:8] == PNG
    np.save(tmp_path / "wide.npy", np.zeros((5, 4)))
    one_line_error(capsys, ["plot", tmp_path / "m3.pt", "--data", tmp_path / "wide.npy",
                            "--out", tmp_path / "p2.png"],
                   "has 4 columns but the model was fitted on 3 features")
    assert not (tmp_path / "p2.png").exists()


@pytest.mark.parametrize("command", ["train", "train-images", "sample", "score", "plot"])
def test_help_on_each_subcommand(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out


def test_help_names_every_subcommand(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0
    assert "{train,train-images,sample,score,plot}" in text
    assert all(f"``{command}" in cnflow.cli.__doc__ for command in cnflow.cli.COMMANDS)


def test_unwritable_outputs_are_one_line_errors_before_any_work(trained, tmp_path, capsys,
                                                                monkeypatch):
    """An --out under a regular file, or naming a folder, is refused before sampling, scoring
    or training starts (nothing computed is lost), with one line and exit code 2."""
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    work = []
    monkeypatch.setattr(CNFDensity, "sample", lambda *a, **k: work.append("sample"))
    monkeypatch.setattr(CNFDensity, "score_samples", lambda *a, **k: work.append("score"))
    monkeypatch.setattr(CNFDensity, "fit", lambda *a, **k: work.append("fit"))
    cases = [
        ["sample", trained, "--out", blocker / "x.npy"],
        ["sample", trained, "--out", tmp_path / "folder.npy"],
        ["score", trained, "moons", "--out", blocker / "sub" / "x.csv"],
        ["plot", trained, "--out", blocker / "x.png"],
        ["train", "moons", *TINY, "--out", blocker / "run"],
    ]
    (tmp_path / "folder.npy").mkdir()
    for args in cases:
        one_line_error(capsys, args, "cannot write")
    assert work == []


def test_outputs_are_written_atomically(trained, tmp_path, capsys):
    out = tmp_path / "x.csv"
    code, _, _ = run(capsys, "sample", trained, "--n", "5", "--out", out)
    assert code == 0 and read(out).shape == (5, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]  # no temporary left


def test_train_with_a_checkpoint_is_resumed_by_the_same_command(tmp_path, capsys):
    """A finished checkpoint makes the same command return the same model without training;
    another fit's checkpoint or a damaged one is a one-line error."""
    checkpoint = tmp_path / "fit.ckpt"
    args = ["train", "moons", *TINY, "--checkpoint", checkpoint, "--checkpoint-interval", "0"]
    code, _, err = run(capsys, *args, "--out", tmp_path / "first")
    assert code == 0, err
    assert checkpoint.exists()
    code, out, err = run(capsys, *args, "--out", tmp_path / "again")
    assert code == 0, err
    assert f"continuing from the checkpoint {checkpoint}" in out
    first = CNFDensity.load(tmp_path / "first" / "model.pt")
    again = CNFDensity.load(tmp_path / "again" / "model.pt")
    X = np.random.RandomState(0).randn(5, 2)
    np.testing.assert_array_equal(first.score_samples(X), again.score_samples(X))
    assert again.n_iter_ == first.n_iter_
    one_line_error(capsys, [*args, "--lr", "0.5", "--out", tmp_path / "other"],
                   "is a checkpoint of another fit (parameter lr: 'auto' there, 0.5 here)")
    checkpoint.write_bytes(b"garbage")
    one_line_error(capsys, [*args, "--out", tmp_path / "other"],
                   f"{checkpoint} cannot be read as a cnflow checkpoint")
    one_line_error(capsys, [*args[:-4], "--checkpoint", tmp_path / "first" / "model.pt" / "x",
                            "--out", tmp_path / "other"], "cannot write")


def test_conditional_training_sampling_and_scoring(tmp_path, capsys):
    """train --targets fits p(targets | the other columns); sample and score take the
    features with --given; --log-prob appends each draw's log-density."""
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, size=(300, 2))
    rows = np.column_stack([x[:, 0], x[:, 0] + x[:, 1] + 0.1 * rng.randn(300), x[:, 1]])
    data = tmp_path / "rows.csv"
    np.savetxt(data, rows, delimiter=",")
    code, out, err = run(capsys, "train", data, "--targets", "1", "--max-iter", "5",
                         "--hidden", "8", "--quiet", "--out", tmp_path / "out")
    assert code == 0, err
    assert "ConditionalCNFDensity" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["targets"] == [1]
    model = tmp_path / "out" / "model.pt"
    given = tmp_path / "given.npy"
    np.save(given, rows[:4][:, [0, 2]])
    code, _, err = run(capsys, "sample", model, "--given", given, "--n", "3", "--log-prob",
                       "--out", tmp_path / "draws.npy")
    assert code == 0, err
    draws = np.load(tmp_path / "draws.npy")
    assert draws.shape == (12, 2)  # 3 draws for each of 4 rows; y, then log p(y | x)
    targets = tmp_path / "targets.npy"
    np.save(targets, draws[:, :1])
    code, out, err = run(capsys, "score", model, targets, "--given", given, "--out",
                         tmp_path / "logp.npy")
    assert code == 2 and "must hold 4 rows of 1 targets" in err  # 12 targets for 4 rows
    np.save(targets, draws[::3, :1])  # one target per row of --given
    code, out, err = run(capsys, "score", model, targets, "--given", given, "--out",
                         tmp_path / "logp.npy")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "logp.npy"), draws[::3, 1], atol=1e-3)
    one_line_error(capsys, ["sample", model, "--n", "2", "--out", tmp_path / "x.npy"],
                   "pass the features x with --given FILE")
    one_line_error(capsys, ["train", data, "--targets", "0", "1", "2", "--out", tmp_path],
                   "--targets leaves no feature columns")
    one_line_error(capsys, ["train", data, "--targets", "5", "--out", tmp_path],
                   "--targets: column index 5 is out of range")


def test_sample_with_log_prob(trained, tmp_path, capsys):
    code, out, err = run(capsys, "sample", trained, "--n", "20", "--log-prob", "--out",
                         tmp_path / "s.csv")
    assert code == 0, err
    drawn = read(tmp_path / "s.csv")
    assert drawn.shape == (20, 3)
    np.testing.assert_allclose(CNFDensity.load(trained).score_samples(drawn[:, :2]),
                               drawn[:, 2], atol=1e-3)
    one_line_error(capsys, ["sample", trained, "--given", tmp_path / "s.csv", "--out",
                            tmp_path / "t.npy"], "--given is for conditional ones")


class FakeSettings:
    """Stands in for a fit's resolved settings: the command line reads only ``as_dict()``."""

    def __init__(self, values: dict):
        self.values = values

    def as_dict(self) -> dict:
        return dict(self.values)


@pytest.mark.parametrize("recorded", [True, False])
def test_train_verbose_prints_the_resolved_settings_and_the_summary_holds_them(
        tmp_path, capsys, monkeypatch, recorded):
    """After the fit, --verbose prints est.settings_.as_dict() one "name: value" a line and
    summary.json holds it under "settings" (with or without --verbose); an estimator that
    records no settings gets neither. A stand-in estimator fits instantly."""
    settings = {"max_iter": 1, "hidden": [4], "lr": 0.0123}

    class InstantDensity:
        objective = "flow_matching"

        def __init__(self, **params):
            self.params = params

        def fit(self, X):
            self.n_iter_, self.history_ = 1, [{"iteration": 0, "loss": 1.0}]
            if recorded:
                self.settings_ = FakeSettings(settings)
            return self

        def save(self, path):
            Path(path).write_bytes(b"model")

        def score_samples(self, X):
            return -np.ones(len(X))

        def sample(self, n, random_state=None):
            return np.random.default_rng(random_state).normal(size=(n, 3))

    monkeypatch.setattr(cnflow.cli.train, "CNFDensity", InstantDensity)
    monkeypatch.setattr(cnflow.cli.train, "planned_iterations", lambda est, X: 1)
    data = tmp_path / "rows.csv"
    np.savetxt(data, np.random.RandomState(0).randn(10, 3), delimiter=",")
    printed = "max_iter: 1\nhidden: [4]\nlr: 0.0123\n"
    for verbose in (["--verbose"], []):
        out_dir = tmp_path / f"out{len(verbose)}"
        code, out, err = run(capsys, "train", data, *verbose, "--out", out_dir)
        assert code == 0, err
        assert (printed in out) == (recorded and bool(verbose)), out
        if printed in out:  # after the fit, before the summary
            assert out.index("training InstantDensity") < out.index(printed) \
                < out.index('"data"')
        summary = json.loads((out_dir / "summary.json").read_text())
        assert summary.get("settings") == (settings if recorded else None)
        assert summary["iterations"] == 1 and summary["train_mean_log_likelihood"] == -1.0
