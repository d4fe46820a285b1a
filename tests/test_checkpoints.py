"""Checkpoints and resumed fits: a fit stopped at any point (SIGKILL, an exception, Ctrl-C)
and fitted again with the same checkpoint ends with the parameters of a fit never stopped;
a checkpoint of another fit or a damaged file is refused with a clear error; warm starts
continue from the fitted flows."""

import copy
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from cnflow import CNFDensity, ModelFileError, PlanarFlowDensity
from cnflow.datasets import make_toy
from cnflow.training import CheckpointMismatchError, FitCheckpoint
from cnflow.training import loop as training_loop

# Two cross-fitted members on a small table: preprocessing chosen, stacked mixtures, flow
# matching then fine-tuning, validation with early stopping: every part of a fit's state.
SMALL = dict(hidden=(16, 16), max_iter=120, fine_tune_iter=8, n_members=2, random_state=0,
             device="cpu")


class _Stop(Exception):
    """Raised from a checkpoint write to stop a fit there."""


@pytest.fixture(scope="module")
def rows():
    return make_toy("8gaussians", 300, random_state=0)


@pytest.fixture(scope="module")
def uninterrupted(rows):
    return CNFDensity(**SMALL).fit(rows)


#: The writes of SMALL's checkpointed fit whose files the tests resume from or damage.
SNAPSHOTS = (3, 122, 126, 200)


@pytest.fixture(scope="module")
def snapshots(rows, tmp_path_factory):
    """One fit with a checkpoint written after every step, its file copied right after each
    write in SNAPSHOTS: the file a fit stopped there (by an exception or SIGKILL) leaves
    behind, since each write replaces the file atomically and nothing is written on the way
    out (the SIGKILL, Ctrl-C, mismatch and maximum-likelihood tests stop real fits). Returns
    the copies by write number, the finished fit and its checkpoint."""
    folder = tmp_path_factory.mktemp("snapshots")
    real_write = FitCheckpoint.write
    count = [0]

    def write(self, loop_state=None):
        real_write(self, loop_state)
        count[0] += 1
        if count[0] in SNAPSHOTS:
            shutil.copyfile(self.path, folder / f"write-{count[0]}.ckpt")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FitCheckpoint, "write", write)
        finished = CNFDensity(checkpoint=folder / "finished.ckpt", checkpoint_interval=0,
                              **SMALL).fit(rows)
    assert count[0] > max(SNAPSHOTS)
    return {n: folder / f"write-{n}.ckpt" for n in SNAPSHOTS}, finished, folder / "finished.ckpt"


def _assert_same_fit(a, b):
    assert a.n_iter_ == b.n_iter_ and len(a.history_) == len(b.history_)
    state_a, state_b = a.flow_.state_dict(), b.flow_.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        torch.testing.assert_close(state_a[name], state_b[name], rtol=0, atol=1e-6,
                                   equal_nan=True, msg=name)
    assert [h["loss"] for h in a.history_] == pytest.approx([h["loss"] for h in b.history_],
                                                            abs=1e-6)


def _fit_stopped_at(est, X, write_number, monkeypatch):
    """Fit, raising _Stop right after the checkpoint's write_number-th write."""
    real_write = FitCheckpoint.write
    count = [0]

    def write(self, loop_state=None):
        real_write(self, loop_state)
        count[0] += 1
        if count[0] == write_number:
            raise _Stop

    with monkeypatch.context() as patch:
        patch.setattr(FitCheckpoint, "write", write)
        with pytest.raises(_Stop):
            est.fit(X)


@pytest.mark.parametrize("write_number", [122, 126, 200])
def test_a_fit_stopped_after_any_checkpoint_resumes_to_the_same_parameters(
        rows, uninterrupted, snapshots, tmp_path, write_number):
    """With SMALL, write 1 follows the preprocessing choice; 2-121 the first member's flow
    matching steps (the Ctrl-C test stops in them); 122 the end of its flow matching; 123-130
    its fine-tuning steps; 131 the end of the member; 132-261 the second member (the
    mismatch and damaged-file tests resume from writes 5 and 3)."""
    path = tmp_path / "fit.ckpt"
    shutil.copyfile(snapshots[0][write_number], path)  # as a fit stopped after that write
    resumed = CNFDensity(checkpoint=path, **SMALL).fit(rows)  # (the interval: not compared)
    _assert_same_fit(resumed, uninterrupted)
    np.testing.assert_allclose(resumed.score_samples(rows[:20]),
                               uninterrupted.score_samples(rows[:20]), rtol=0, atol=1e-6)


def test_maximum_likelihood_with_validation_resumes_exactly(rows, tmp_path, monkeypatch):
    """The optimiser's moments, the held-out record (best parameters, patience) and the
    minibatch order all come back."""
    settings = dict(hidden=(8,), objective="maximum_likelihood", max_iter=30, batch_size=64,
                    validation_fraction=0.25, n_members=1, rtol=1e-3, atol=1e-3,
                    random_state=1, device="cpu")
    reference = CNFDensity(**settings).fit(rows)
    path = tmp_path / "ml.ckpt"
    _fit_stopped_at(CNFDensity(checkpoint=path, checkpoint_interval=0, **settings), rows, 12,
                    monkeypatch)
    resumed = CNFDensity(checkpoint=path, checkpoint_interval=0, **settings).fit(rows)
    _assert_same_fit(resumed, reference)
    assert [h.get("val_loss") for h in resumed.history_] == pytest.approx(
        [h.get("val_loss") for h in reference.history_], abs=1e-6, nan_ok=True)


def test_sigkill_then_the_same_command_equals_an_uninterrupted_fit(tmp_path):
    """The issue's test: a fit in a subprocess is killed with SIGKILL once it has written a
    checkpoint of its training loop; the same fit run again resumes, and ends with the
    parameters of an uninterrupted fit (CPU, to 1e-6), n_iter_ counting both runs."""
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent("""
        import sys
        from cnflow import CNFDensity
        from cnflow.datasets import make_toy
        X = make_toy("8gaussians", 300, random_state=0)
        checkpoint = None if sys.argv[1] == "-" else sys.argv[1]
        est = CNFDensity(hidden=(16, 16), max_iter=150, fine_tune_iter=8, n_members=2,
                         random_state=0, device="cpu", checkpoint=checkpoint,
                         checkpoint_interval=0)
        est.fit(X)
        est.save(sys.argv[2])
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    command = [sys.executable, str(script)]
    checkpoint = tmp_path / "fit.ckpt"
    child = subprocess.Popen(command + [str(checkpoint), str(tmp_path / "killed.pt")], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if checkpoint.exists():
                saved = torch.load(checkpoint, weights_only=True)  # written atomically
                if saved["loop"] is not None and saved["loop"]["iteration"] >= 20:
                    break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        returncode = child.wait()
    assert returncode == -signal.SIGKILL, "the fit ended before it was killed"
    assert not (tmp_path / "killed.pt").exists()
    for args in ([str(checkpoint), str(tmp_path / "resumed.pt")],
                 ["-", str(tmp_path / "reference.pt")]):
        subprocess.run(command + args, env=env, check=True, timeout=300)
    resumed = CNFDensity.load(tmp_path / "resumed.pt")
    reference = CNFDensity.load(tmp_path / "reference.pt")
    _assert_same_fit(resumed, reference)  # n_iter_ and the history included


def test_a_finished_checkpoint_returns_the_model_without_training(rows, uninterrupted,
                                                                  snapshots, tmp_path,
                                                                  monkeypatch):
    _, finished, written = snapshots
    _assert_same_fit(finished, uninterrupted)  # writing checkpoints leaves the fit alone
    path = tmp_path / "done.ckpt"
    shutil.copyfile(written, path)
    monkeypatch.setattr(training_loop, "_step", lambda *a, **k: pytest.fail("trained again"))
    again = CNFDensity(checkpoint=path, verbose=False, checkpoint_interval=5, **SMALL).fit(rows)
    _assert_same_fit(again, uninterrupted)


def test_ctrl_c_keeps_the_last_checkpoint_and_the_fit_resumes(rows, uninterrupted, tmp_path,
                                                              monkeypatch):
    """An interrupted fit stops with a warning and does not mark its checkpoint finished;
    fitting again continues from the last checkpoint."""
    from cnflow import CNF

    path = tmp_path / "ctrl_c.ckpt"
    real_loss = CNF.flow_matching_loss
    calls = [0]

    def interrupted(self, x, **kw):
        calls[0] += 1
        if calls[0] == 50:
            raise KeyboardInterrupt
        return real_loss(self, x, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(CNF, "flow_matching_loss", interrupted)
        with pytest.warns(RuntimeWarning, match="interrupted"):
            stopped = CNFDensity(checkpoint=path, checkpoint_interval=0, **SMALL).fit(rows)
    assert stopped.n_iter_ == 49
    resumed = CNFDensity(checkpoint=path, **SMALL).fit(rows)
    _assert_same_fit(resumed, uninterrupted)


def test_a_checkpoint_of_another_fit_is_refused_and_left_alone(rows, tmp_path, monkeypatch):
    path = tmp_path / "other.ckpt"
    _fit_stopped_at(CNFDensity(checkpoint=path, checkpoint_interval=0, **SMALL), rows, 5,
                    monkeypatch)
    before = path.read_bytes()
    with pytest.raises(CheckpointMismatchError, match=r"parameter lr: 'auto' there, 0\.02"):
        CNFDensity(checkpoint=path, lr=0.02, **SMALL).fit(rows)
    with pytest.raises(CheckpointMismatchError, match=r"data shape: \[300, 2\] there, "
                                                      r"\[299, 2\] here"):
        CNFDensity(checkpoint=path, **SMALL).fit(rows[:-1])
    changed = rows.copy()
    changed[0, 0] += 1e-9
    with pytest.raises(ValueError, match="data digest"):
        CNFDensity(checkpoint=path, **SMALL).fit(changed)
    with pytest.raises(CheckpointMismatchError, match="estimator"):
        PlanarFlowDensity(checkpoint=path, random_state=0).fit(rows)
    assert path.read_bytes() == before
    assert not hasattr(CNFDensity(checkpoint=path, lr=0.02, **SMALL), "flow_")


@pytest.mark.parametrize("kind, message", [
    ("empty", "it is empty"),
    ("truncated", "not a complete torch.save file"),
    ("text", "not a complete torch.save file"),
    ("foreign dict", "is not a cnflow checkpoint"),
    ("missing parts", "damaged checkpoint"),
])
def test_a_damaged_checkpoint_is_a_model_file_error(rows, snapshots, tmp_path, kind,
                                                    message):
    path = tmp_path / "damaged.ckpt"
    shutil.copyfile(snapshots[0][3], path)  # as a fit stopped after its third write
    good = path.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "text":
        path.write_text("checkpoint\n")
    elif kind == "foreign dict":
        torch.save({"state_dict": {}}, path)
    else:
        saved = torch.load(path, weights_only=True)
        del saved["progress"]
        torch.save(saved, path)
    with pytest.raises(ModelFileError, match=message) as error:
        CNFDensity(checkpoint=path, **SMALL).fit(rows)
    assert str(path) in str(error.value)


def test_the_time_budget_counts_earlier_runs(rows, tmp_path, monkeypatch):
    """A resumed fit whose earlier runs used up max_seconds stops at once."""
    settings = {**SMALL, "max_iter": 10_000, "max_seconds": 3600}
    path = tmp_path / "budget.ckpt"
    _fit_stopped_at(CNFDensity(checkpoint=path, checkpoint_interval=0, **settings), rows, 10,
                    monkeypatch)
    saved = torch.load(path, weights_only=True)
    # as if the earlier runs had taken almost the whole hour, all of it in the first member
    # (whose share was half of it)
    saved["elapsed"] = 3599.5
    saved["loop"]["elapsed"] = 1799.5
    torch.save(saved, path)
    started = time.perf_counter()
    est = CNFDensity(checkpoint=path, checkpoint_interval=0, **settings).fit(rows)
    assert time.perf_counter() - started < 60
    assert est.n_iter_ < 200


def test_planar_flows_checkpoint_too(rows, tmp_path, monkeypatch):
    settings = dict(n_layers=4, max_iter=60, random_state=0, device="cpu")
    reference = PlanarFlowDensity(**settings).fit(rows)
    path = tmp_path / "planar.ckpt"
    _fit_stopped_at(PlanarFlowDensity(checkpoint=path, checkpoint_interval=0, **settings),
                    rows, 25, monkeypatch)
    _assert_same_fit(PlanarFlowDensity(checkpoint=path, **settings).fit(rows), reference)


def test_checkpoint_parameters_are_checked(rows):
    with pytest.raises(ValueError, match="checkpoint_interval"):
        CNFDensity(checkpoint="x.ckpt", checkpoint_interval=-1).fit(rows)
    with pytest.raises(ValueError, match="checkpoint"):
        CNFDensity(checkpoint=3).fit(rows)
    with pytest.raises(ValueError, match="warm_start"):
        CNFDensity(warm_start=1).fit(rows)


# ------------------------------------------------------------------ warm starts
def test_warm_start_continues_from_the_fitted_flow(rows):
    settings = dict(n_layers=3, max_iter=40, random_state=0, device="cpu")
    est = PlanarFlowDensity(warm_start=True, **settings).fit(rows)
    first = {k: v.clone() for k, v in est.flow_.state_dict().items()}
    # at a learning rate of 1e-12 a continued fit cannot move; a fresh one starts elsewhere
    est.set_params(lr=1e-12).fit(rows)
    for name, value in est.flow_.state_dict().items():
        torch.testing.assert_close(value, first[name], rtol=0, atol=1e-9)
    assert est.n_iter_ == 80 and len(est.history_) == 80
    assert [h["iteration"] for h in est.history_] == list(range(1, 81))
    fresh = PlanarFlowDensity(**{**settings, "lr": 1e-12, "random_state": 5}).fit(rows)
    assert not all(torch.allclose(v, first[k]) for k, v in fresh.flow_.state_dict().items())


def test_warm_start_keeps_members_preprocessing_and_mixtures(rows, uninterrupted):
    est = copy.deepcopy(uninterrupted).set_params(warm_start=True)  # SMALL, fitted
    preprocessor, n_members = est.preprocessor_, est.n_members_
    est.fit(rows[:250])
    assert est.preprocessor_ is preprocessor and est.n_members_ == n_members
    assert est.n_iter_ > uninterrupted.n_iter_
    assert np.isfinite(est.score_samples(rows)).all()


def test_warm_start_needs_the_same_columns(rows):
    est = PlanarFlowDensity(n_layers=2, max_iter=5, warm_start=True, random_state=0).fit(rows)
    with pytest.raises(ValueError, match="warm_start continues a fit to 2 features; X has 3"):
        est.fit(np.hstack([rows, rows[:, :1]]))


def test_without_warm_start_a_refit_starts_afresh(rows):
    settings = dict(n_layers=3, max_iter=40, random_state=0, device="cpu")
    once = PlanarFlowDensity(**settings).fit(rows)
    twice = PlanarFlowDensity(**settings).fit(rows).fit(rows)
    _assert_same_fit(once, twice)


# ------------------------------------------------------------------ the latent ODE
def _series(n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = np.sort(rng.uniform(0, 5, size=rng.integers(4, 9)))
        out.append((t, np.sin(t + rng.uniform(0, 6.3))))
    return out


def test_a_latent_ode_fit_resumes_to_the_same_parameters(tmp_path, monkeypatch):
    """The ELBO's noise generator is part of the checkpoint too."""
    from cnflow import LatentODE

    settings = dict(latent_dim=2, rec_hidden=8, ode_hidden=8, dec_hidden=8, max_iter=12,
                    batch_size=4, rtol=1e-3, atol=1e-3, random_state=0, device="cpu")
    series = _series()
    reference = LatentODE(**settings).fit(series)
    path = tmp_path / "latent.ckpt"
    _fit_stopped_at(LatentODE(checkpoint=path, checkpoint_interval=0, **settings), series, 5,
                    monkeypatch)
    resumed = LatentODE(checkpoint=path, checkpoint_interval=0, **settings).fit(series)
    assert resumed.n_iter_ == reference.n_iter_ == 12
    for name, value in reference.module_.state_dict().items():
        torch.testing.assert_close(resumed.module_.state_dict()[name], value, rtol=0,
                                   atol=1e-6)
    monkeypatch.setattr(training_loop, "_step", lambda *a, **k: pytest.fail("trained again"))
    again = LatentODE(checkpoint=path, **settings).fit(series)  # finished: no training
    torch.testing.assert_close(again.module_.state_dict(), resumed.module_.state_dict())
    with pytest.raises(CheckpointMismatchError, match="data digest"):
        LatentODE(checkpoint=path, **settings).fit(_series(seed=1))


def test_a_fit_stopped_in_its_reflow_stage_resumes_exactly(rows, tmp_path, monkeypatch):
    """Reflow's pairs are made once, before its first step, and kept in the checkpoint: a fit
    stopped in the reflow stage resumes from the same pairs to the same parameters."""
    settings = dict(hidden=(8,), max_iter=20, reflow=0.5, fine_tune_iter=0, n_members=1,
                    stacking=False, preprocessing="whiten", random_state=2, device="cpu")
    reference = CNFDensity(**settings).fit(rows)
    assert [h["objective"] for h in reference.history_] == ["flow_matching"] * 10 + ["reflow"] * 10
    path = tmp_path / "reflow.ckpt"
    # writes: 1 the set-up, 2-11 flow matching's steps, 12 its end, 13-22 reflow's steps
    _fit_stopped_at(CNFDensity(checkpoint=path, checkpoint_interval=0, **settings), rows, 15,
                    monkeypatch)
    resumed = CNFDensity(checkpoint=path, checkpoint_interval=0, **settings).fit(rows)
    _assert_same_fit(resumed, reference)
