"""Fits to memory-mapped tables (``np.load(path, mmap_mode="r")``): the table is never copied
whole, a fit killed with SIGKILL resumes to the uninterrupted fit, the fit is close to an
in-memory one, a non-finite value is named by its row, and the command line trains from and
scores a .npy path. (Each process of a data-parallel fit reads only its share of a batch:
tests/test_distributed.py.)"""

import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoints import _assert_same_fit

from cnflow import CNFDensity
from cnflow.cli import main
from cnflow.datasets import make_toy
from cnflow.estimators import mapped
from cnflow.training import TrainConfig, train
from cnflow.training import loop as training_loop
from cnflow.training.rows import MappedRows, bounded_sample, gather

TINY = dict(hidden=(8,), max_iter=5, fine_tune_iter=0, batch_size=256, regime="large",
            random_state=0, device="cpu")


def _save_mapped(path: Path, X: np.ndarray) -> np.memmap:
    np.save(path, X)
    return np.load(path, mmap_mode="r")


def _nll(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch).square().mean()


# ---------------------------------------------------------------- row sources
def test_mapped_rows_give_the_loop_the_rows_of_the_mapped_tensor(tmp_path):
    """Training from a memory map read by index (through a map, over a subset of rows)
    takes exactly the steps of training from the tensor of those mapped rows."""
    X = _save_mapped(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(500, 3)))
    rows = np.random.default_rng(1).permutation(500)[:400]

    def transform(block: np.ndarray) -> np.ndarray:
        return 2.0 * block + 1.0

    source = MappedRows(X, transform, dtype=torch.float64, rows=rows)
    indices = torch.tensor([399, 0, 17, 17, 250])
    torch.testing.assert_close(source.batch(indices),
                               torch.from_numpy(transform(np.asarray(X)[rows[indices]])),
                               rtol=0, atol=0)
    histories, states = [], []
    for data in (source, torch.from_numpy(transform(np.asarray(X)[rows]))):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1).double()
        result = train(model, data, _nll, TrainConfig(max_iter=12, batch_size=64),
                       generator=torch.Generator().manual_seed(0))
        histories.append([h["loss"] for h in result.history])
        states.append(model.state_dict())
    assert histories[0] == histories[1]
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=0, atol=0)


def test_gather_reads_rows_in_order_and_samples_are_bounded_and_sorted():
    X = np.arange(20.0).reshape(10, 2)
    np.testing.assert_array_equal(gather(X, np.array([7, 2, 9])), X[[7, 2, 9]])
    assert bounded_sample(5, 10, seed=0).tolist() == [0, 1, 2, 3, 4]
    drawn = bounded_sample(1000, 50, seed=3)
    assert len(drawn) == 50 == len(set(drawn.tolist())) and (np.diff(drawn) > 0).all()
    np.testing.assert_array_equal(drawn, bounded_sample(1000, 50, seed=3))


# ---------------------------------------------------------------- (a) no copy of the table
def test_a_fit_to_a_memory_map_never_copies_the_table(tmp_path):
    """An 80 MB table: the most memory numpy allocates at once during the fit (tracemalloc
    traces numpy's arrays) stays below a quarter of the table. Reading the table whole,
    converting it, preprocessing it or making one tensor of it would each allocate the
    table's size or more (the fit of an in-memory array peaks above twice the table)."""
    path = tmp_path / "big.npy"
    table = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64,
                                      shape=(2_500_000, 4))
    rng = np.random.default_rng(0)
    for start in range(0, len(table), 500_000):
        table[start:start + 500_000] = rng.normal(size=(500_000, 4)) * [1.0, 2.0, 3.0, 4.0]
    table.flush()
    del table
    X = np.load(path, mmap_mode="r")
    CNFDensity(**TINY).fit(X[:1000])  # (the modules a fit imports, outside the count)
    tracemalloc.start()
    try:
        est = CNFDensity(**TINY).fit(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 4, f"peak {peak / 2**20:.1f} MB for a {X.nbytes / 2**20:.0f} MB table"
    assert est.n_iter_ == 5 and est.settings_.regime == "large"
    # the statistics of a 100,000-row sample: within a few standard errors of the truth
    np.testing.assert_allclose(est.scale_, [1.0, 2.0, 3.0, 4.0], rtol=0.02)
    np.testing.assert_allclose(est.mean_, 0.0, atol=0.05)


# ---------------------------------------------------------------- (b) SIGKILL and resume
_KILLED_FIT = dict(hidden=(8,), max_iter=60, fine_tune_iter=4, regime="large",
                   validation_fraction=0.1, batch_size=64, random_state=0, device="cpu")


def test_sigkill_then_the_same_fit_on_a_memory_map_equals_an_uninterrupted_one(
        tmp_path, monkeypatch):
    """Held-out rows, a preprocessing sample (of 500 of the 2,000 rows) and both phases: a
    fit killed once its loop has checkpointed 10 steps, then fitted again, scores every row
    as the uninterrupted fit does."""
    X = _save_mapped(tmp_path / "x.npy", make_toy("8gaussians", 2000, random_state=0))
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import numpy as np
        from cnflow import CNFDensity
        from cnflow.estimators import mapped
        mapped.SAMPLE_ROWS = 500
        X = np.load(sys.argv[1], mmap_mode="r")
        CNFDensity(checkpoint=sys.argv[2], checkpoint_interval=0, **{_KILLED_FIT!r}).fit(X)
    """))
    checkpoint = tmp_path / "fit.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path / "x.npy"),
                              str(checkpoint)], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if checkpoint.exists():
                saved = torch.load(checkpoint, weights_only=True)  # written atomically
                if saved["loop"] is not None and saved["loop"]["iteration"] >= 10:
                    break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        returncode = child.wait()
    assert returncode == -signal.SIGKILL, "the fit ended before it was killed"
    monkeypatch.setattr(mapped, "SAMPLE_ROWS", 500)
    steps, real_step = [], training_loop._step
    monkeypatch.setattr(training_loop, "_step",
                        lambda *args: steps.append(1) or real_step(*args))
    resumed = CNFDensity(checkpoint=checkpoint, checkpoint_interval=0, **_KILLED_FIT).fit(X)
    steps_after_resuming = len(steps)
    reference = CNFDensity(**_KILLED_FIT).fit(X)
    assert steps_after_resuming <= reference.n_iter_ - 10  # it went on from the checkpoint
    _assert_same_fit(resumed, reference)
    np.testing.assert_array_equal(resumed.score_samples(X), reference.score_samples(X))


# ---------------------------------------------------------------- (c) close to in memory
def test_a_small_table_in_memory_or_mapped_gives_the_same_fit(tmp_path):
    """With no more rows than a sample, the preprocessing sees every row: the same map is
    chosen, the same rows are held out, and the density is the same."""
    X = make_toy("8gaussians", 1200, random_state=0)
    settings = dict(hidden=(8,), max_iter=20, fine_tune_iter=2, random_state=0, device="cpu")
    in_memory = CNFDensity(**settings).fit(X)
    from_file = CNFDensity(**settings).fit(_save_mapped(tmp_path / "x.npy", X))
    assert from_file.settings_ == in_memory.settings_
    assert from_file.settings_.preprocessing == "choose" and from_file.settings_.stacking
    assert from_file.preprocessor_.kind == in_memory.preprocessor_.kind
    np.testing.assert_allclose(from_file.score_samples(X), in_memory.score_samples(X),
                               rtol=0, atol=1e-6)


def test_a_large_table_mapped_fits_as_well_as_in_memory(tmp_path, monkeypatch):
    """Statistics from a sample of 2,000 of 20,000 rows: the same settings, and held-out
    likelihoods within a few hundredths of a nat of the in-memory fit's, both near the true
    density's."""
    monkeypatch.setattr(mapped, "SAMPLE_ROWS", 2000)
    rng = np.random.default_rng(0)
    mixing = np.array([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, -1.0, 3.0]])
    X, X_test = (rng.normal(size=(n, 3)) @ mixing.T + [5.0, -1.0, 0.0] for n in (20000, 4000))
    settings = dict(hidden=(16, 16), max_iter=150, fine_tune_iter=0, batch_size=512,
                    random_state=0, device="cpu")
    in_memory = CNFDensity(**settings).fit(X)
    from_file = CNFDensity(**settings).fit(_save_mapped(tmp_path / "x.npy", X))
    assert from_file.settings_ == in_memory.settings_
    assert not np.array_equal(from_file.mean_, in_memory.mean_)  # a sample's statistics
    scores = [est.score_samples(X_test) for est in (in_memory, from_file)]
    assert all(np.isfinite(s).all() for s in scores)
    # the true density's mean log-likelihood: −(3/2) log 2πe − log|det A|
    truth = -1.5 * np.log(2 * np.pi * np.e) - np.log(abs(np.linalg.det(mixing)))
    assert abs(scores[0].mean() - scores[1].mean()) < 0.05
    assert all(s.mean() > truth - 0.2 for s in scores)


def test_scoring_a_memory_map_streams_and_equals_scoring_in_memory(tmp_path):
    """Batch by batch, as in memory (the adaptive solves of a batch depend on its rows,
    so the same batches give the same numbers); float32 rows are converted as read."""
    X = make_toy("moons", 1000, random_state=0).astype(np.float32)
    est = CNFDensity(**TINY).fit(X)
    from_file = est.score_samples(_save_mapped(tmp_path / "x.npy", X), batch_size=300)
    np.testing.assert_array_equal(from_file, est.score_samples(X.astype(np.float64),
                                                               batch_size=300))
    assert est.score(np.load(tmp_path / "x.npy", mmap_mode="r")) == est.score(X)


# ---------------------------------------------------------------- (d) bad values
def test_a_non_finite_value_in_a_memory_map_is_named_by_its_row(tmp_path):
    X = np.random.default_rng(0).normal(size=(300_000, 3))
    X[123_456, 2] = np.nan
    with pytest.raises(ValueError, match=r"X holds NaN in row 123456 \(column 2\)"):
        CNFDensity(**TINY).fit(_save_mapped(tmp_path / "nan.npy", X))
    X[123_456, 2], X[17, 0] = 0.0, -np.inf
    with pytest.raises(ValueError, match=r"infinite value in row 17 \(column 0\)"):
        CNFDensity(**TINY).fit(_save_mapped(tmp_path / "inf.npy", X))
    X[17, 0] = 0.0
    est = CNFDensity(**TINY).fit(X[:1000])
    X[2500, 1] = np.nan
    with pytest.raises(ValueError, match=r"row 2500 \(column 1\)"):
        est.score_samples(_save_mapped(tmp_path / "score.npy", X[:3000]), batch_size=1000)
    with pytest.raises(ValueError, match="real numbers"):
        CNFDensity(**TINY).fit(_save_mapped(tmp_path / "text.npy", np.array([["a"], ["b"]])))


# ---------------------------------------------------------------- (e) the command line
def test_the_command_line_trains_from_and_scores_a_memory_mapped_npy(tmp_path, capsys,
                                                                      monkeypatch):
    X = make_toy("8gaussians", 600, random_state=0)
    np.save(tmp_path / "rows.npy", X)
    seen = []
    real_fit, real_score = CNFDensity.fit, CNFDensity.score_samples

    def fit(self, X, y=None):
        seen.append(("fit", type(X)))
        return real_fit(self, X, y)

    def score_samples(self, X, **kw):
        seen.append(("score", type(X)))
        return real_score(self, X, **kw)

    monkeypatch.setattr(CNFDensity, "fit", fit)
    monkeypatch.setattr(CNFDensity, "score_samples", score_samples)
    code = main(["train", str(tmp_path / "rows.npy"), "--max-iter", "3", "--hidden", "8",
                 "--quiet", "--resolution", "16", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    assert ("fit", np.memmap) in seen
    code = main(["score", str(tmp_path / "run" / "model.pt"), str(tmp_path / "rows.npy"),
                 "--out", str(tmp_path / "scores.npy")])
    assert code == 0, capsys.readouterr().err
    assert seen[-1] == ("score", np.memmap)
    est = CNFDensity.load(tmp_path / "run" / "model.pt")
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), real_score(est, X),
                               rtol=0, atol=1e-10)
    X[5, 1] = np.inf
    np.save(tmp_path / "bad.npy", X)
    capsys.readouterr()
    assert main(["score", str(tmp_path / "run" / "model.pt"), str(tmp_path / "bad.npy")]) == 2
    assert "infinite value in row 5 (column 1)" in capsys.readouterr().err


def test_a_source_without_some_rows_reads_every_other_row_in_order():
    """``MappedRows(excluded=...)`` lists no rows, yet position i reads the i-th row not
    excluded (against the rows listed by brute force)."""
    from cnflow.training.rows import MappedRows

    table = np.arange(50, dtype=np.float64).reshape(25, 2)
    excluded = np.array([0, 3, 4, 24, 10])
    kept = np.setdiff1d(np.arange(25), excluded)
    source = MappedRows(table, excluded=excluded, dtype=torch.float64)
    assert len(source) == len(kept)
    positions = torch.tensor([5, 0, len(kept) - 1, 2, 2])
    np.testing.assert_array_equal(source.batch(positions).numpy(),
                                  table[kept[positions.numpy()]])
    with pytest.raises(ValueError, match="not both"):
        MappedRows(table, rows=kept, excluded=excluded)


def test_table_rows_read_a_large_memory_mapped_table_by_position(tmp_path):
    """Above SAMPLE_ROWS rows only the held-out rows are drawn (memory O(n_val)), and a
    member's training rows are every other row, read by position; in memory, a permutation
    of all rows. The identity names the source."""
    from cnflow.estimators.fitting.table import TableRows
    from cnflow.estimators.mapped import SAMPLE_ROWS

    n = SAMPLE_ROWS + 50
    path = tmp_path / "big.npy"
    np.save(path, np.arange(2 * n, dtype=np.float64).reshape(n, 2))
    mapped = TableRows(np.load(path, mmap_mode="r"))
    assert mapped.mapped and mapped.identity()["data source"] == "memory-mapped"
    order = mapped.order(300, seed=1, rng=np.random.RandomState(0))
    assert len(order) == 300 and len(np.unique(order)) == 300 and order.max() < n
    in_memory = TableRows(np.zeros((40, 2)))
    assert "data source" not in in_memory.identity()
    assert sorted(in_memory.order(8, seed=1, rng=np.random.RandomState(0))) == list(range(40))

    class Reader:  # the estimator's side: rows through an identity "preprocessing"
        def _transform(self, X):
            return torch.as_tensor(np.asarray(X)), None

        def _mapped_rows(self, X, rows=None, excluded=None):
            return {"rows": rows, "excluded": excluded}

    fold = order[:100]
    training, held = mapped.member_rows(Reader(), None, order, fold)
    assert training["rows"] is None and np.array_equal(training["excluded"], fold)
    np.testing.assert_array_equal(held.numpy()[:, 0], 2.0 * fold)  # in the fold's order
