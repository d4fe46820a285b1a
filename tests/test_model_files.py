"""Model files: saves are atomic, and every damaged or foreign file is answered by one
ModelFileError that names the file and what is wrong (never an unsafe load)."""

import pickle

import numpy as np
import pytest
import torch

from cnflow import CNFDensity, ModelFileError, PlanarFlowDensity
from cnflow.datasets import make_toy
from cnflow.files import atomic_write


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    X = make_toy("moons", 200, random_state=0)
    est = PlanarFlowDensity(n_layers=2, max_iter=3, random_state=0, device="cpu").fit(X)
    path = tmp_path_factory.mktemp("models") / "model.pt"
    est.save(path)
    return est, path, X


def test_an_interrupted_save_leaves_the_earlier_file(saved, tmp_path, monkeypatch):
    est, good, X = saved
    path = tmp_path / "model.pt"
    path.write_bytes(good.read_bytes())
    real_save = torch.save

    def half_then_fail(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(100)
        raise KeyboardInterrupt  # e.g. Ctrl-C halfway through the write

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        est.save(path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary left
    loaded = PlanarFlowDensity.load(path)
    np.testing.assert_allclose(loaded.score_samples(X[:5]), est.score_samples(X[:5]))


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old content that is longer")
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"


class _Payload:
    def __reduce__(self):  # would run code if unpickled unsafely
        return (exec, ("import sys; sys.modules['cnflow']._pwned = True",))


def _damaged(kind: str, good: bytes, tmp_path):
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, this is not a model\n")
    elif kind == "foreign pickle":
        path.write_bytes(pickle.dumps({"format": "cnflow-estimator/1", "x": _Payload()}))
    elif kind == "foreign torch dict":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "missing parts":
        data = torch.load(_damaged.good_path, weights_only=True)
        del data["state_dict"]
        torch.save(data, path)
    elif kind == "wrong shapes":
        data = torch.load(_damaged.good_path, weights_only=True)
        data["n_features_in"] = 5
        torch.save(data, path)
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch, on the foreign pickle
@pytest.mark.parametrize("kind, message", [
    ("truncated", "not a complete torch.save file"),
    ("empty", "it is empty"),
    ("text", "not a complete torch.save file"),
    ("foreign pickle", "not a complete torch.save file"),
    ("foreign torch dict", "is not a file written by PlanarFlowDensity.save"),
    ("missing parts", "is damaged: missing 'state_dict'"),
    ("wrong shapes", "is damaged"),
])
def test_every_damaged_or_foreign_file_is_one_clear_error(saved, tmp_path, kind, message):
    est, good, _ = saved
    _damaged.good_path = good
    path = _damaged(kind, good.read_bytes(), tmp_path)
    with pytest.raises(ModelFileError, match=message) as info:
        PlanarFlowDensity.load(path)
    assert str(path) in str(info.value)
    assert "weights_only=False" not in str(info.value)  # never suggests an unsafe load
    assert not hasattr(__import__("cnflow"), "_pwned")
    assert isinstance(info.value, ValueError)


def test_a_file_of_another_estimator_and_a_missing_file(saved, tmp_path):
    _, good, _ = saved
    with pytest.raises(ModelFileError, match="holds a PlanarFlowDensity, not a CNFDensity"):
        CNFDensity.load(good)
    with pytest.raises(FileNotFoundError, match="no model file"):
        CNFDensity.load(tmp_path / "absent.pt")


def test_atomic_write_gives_the_permissions_of_an_ordinary_file(tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    fresh = tmp_path / "fresh.bin"
    atomic_write(fresh, lambda f: f.write(b"x"))
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    atomic_write(kept, lambda f: f.write(b"new"))
    assert kept.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("estimator", ["planar", "cnf"])
def test_a_file_whose_parameters_and_settings_disagree_names_the_parameter(saved, tmp_path,
                                                                           estimator):
    """Each fit records its settings (every "auto" resolved) beside its parameters; a file
    in which a set parameter and its setting differ was altered, and loading it would build
    one model and describe another."""
    if estimator == "planar":
        cls, good = PlanarFlowDensity, saved[1]
    else:
        X = make_toy("moons", 200, random_state=0)
        cls, good = CNFDensity, tmp_path / "cnf.pt"
        CNFDensity(hidden=(8,), max_iter=2, fine_tune_iter=0, n_members=1, random_state=0,
                   device="cpu").fit(X).save(good)
    data = torch.load(good, weights_only=True)
    assert data["settings"]["max_iter"] == data["params"]["max_iter"] or \
        data["params"]["max_iter"] == "auto"
    data["params"]["max_iter"] = 7 if data["settings"]["max_iter"] != 7 else 8
    path = tmp_path / "altered.pt"
    torch.save(data, path)
    with pytest.raises(ModelFileError, match=r"max_iter=\d+ but its fit settings say "
                                             r"max_iter=\d+") as info:
        cls.load(path)
    assert str(path) in str(info.value)


def test_a_subclass_of_an_estimator_fits_saves_and_loads(tmp_path):
    """The fit policy is looked up by the estimator's kind, which a subclass inherits."""

    class MyCNF(CNFDensity):
        """A user's subclass with a method of its own."""

        def mean_score(self, X):
            return float(self.score_samples(X).mean())

    X = make_toy("moons", 200, random_state=0)
    est = MyCNF(hidden=(8,), max_iter=3, fine_tune_iter=0, random_state=0,
                device="cpu").fit(X)
    assert est.settings_.estimator == "CNFDensity" and est.settings_.regime == "small_table"
    path = tmp_path / "mine.pt"
    est.save(path)
    loaded = MyCNF.load(path)
    assert type(loaded) is MyCNF
    np.testing.assert_array_equal(loaded.score_samples(X[:20]), est.score_samples(X[:20]))
    assert loaded.mean_score(X[:20]) == est.mean_score(X[:20])
    with pytest.raises(ModelFileError, match="holds a MyCNF, not a CNFDensity"):
        CNFDensity.load(path)


def test_weights_that_do_not_fit_the_architecture_name_the_tensor(tmp_path):
    """Parameters and settings that agree with each other but build another network than
    the one whose weights the file holds: the error names the first tensor that does not
    fit, with both shapes."""
    X = make_toy("moons", 200, random_state=0)
    good = tmp_path / "cnf.pt"
    CNFDensity(hidden=(8,), max_iter=2, fine_tune_iter=0, n_members=1, random_state=0,
               device="cpu").fit(X).save(good)
    data = torch.load(good, weights_only=True)
    data["params"]["hidden"] = data["settings"]["hidden"] = [9]
    path = tmp_path / "altered.pt"
    torch.save(data, path)
    with pytest.raises(ModelFileError, match=r"size mismatch for \S*layers\.0\S*weight.*"
                                             r"weights do not fit the model its parameters"):
        CNFDensity.load(path)
