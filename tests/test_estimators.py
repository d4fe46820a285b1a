"""CNFDensity: scikit-learn's conformance checks, input errors, persistence, units, faults."""

import copy
import pickle

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from cnflow import CNF, CNFDensity, SolverStats
from cnflow.datasets import make_toy
from cnflow.ode import TABLEAUX
from cnflow.training import TrainingFault


def fast(**kw):
    """A tiny, quick CNFDensity. float64 and tight tolerances so that a row's log-density does
    not depend (beyond 1e-9) on which other rows share its batch's adaptive steps."""
    params = dict(hidden=(8,), max_iter=3, batch_size=64, rtol=1e-9, atol=1e-9,
                  dtype="float64", random_state=0, device="cpu")
    params.update(kw)
    return CNFDensity(**params)


# The "auto" fit (cross-fitted members, chosen map, stacking) with flow matching, and the
# maximum-likelihood objective with one member (members are trained the same way whatever
# the objective: the ensemble's conformance is the first estimator's).
@parametrize_with_checks([fast(), fast(objective="maximum_likelihood", n_members=1)])
def test_sklearn_conformance(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def fitted():
    X = make_toy("8gaussians", 400, random_state=0)
    return fast(max_iter=20, hidden=(16, 16), rtol=1e-6, atol=1e-6).fit(X), X


def test_bad_input_messages(fitted):
    est, X = fitted
    bad_nan = X.copy()
    bad_nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fast().fit(bad_nan)
    with pytest.raises(ValueError, match="infinity"):
        fast().fit(np.where(X > 1, np.inf, X))
    with pytest.raises(ValueError, match="2D array"):
        fast().fit(X[:, 0])
    with pytest.raises(ValueError, match="1 sample"):
        fast().fit(X[:1])
    with pytest.raises(ValueError, match="3 features.*expecting 2"):
        est.score_samples(np.ones((4, 3)))
    with pytest.raises(NotFittedError):
        fast().score_samples(X)
    with pytest.raises(NotFittedError):
        fast().sample(3)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        est.sample(0)
    with pytest.raises(ValueError, match="max_iter"):
        fast(max_iter=0).fit(X)
    with pytest.raises(ValueError, match="method must be one of dopri5"):
        fast(method="rk45").fit(X)
    with pytest.raises(ValueError, match="max_iter must be a positive integer or 'auto', got True"):
        fast(max_iter=True).fit(X)


def test_pickle_and_save_load_round_trips(fitted, tmp_path):
    est, X = fitted
    expected = est.score_samples(X[:50])
    clone = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(clone.score_samples(X[:50]), expected)
    est.save(tmp_path / "model.pt")
    torch.load(tmp_path / "model.pt", weights_only=True)  # loads without code execution
    loaded = CNFDensity.load(tmp_path / "model.pt")
    np.testing.assert_array_equal(loaded.score_samples(X[:50]), expected)
    assert loaded.get_params() == est.get_params()
    assert loaded.history_ == est.history_
    np.testing.assert_array_equal(loaded.sample(5, random_state=1), est.sample(5, random_state=1))


def test_repeatable_fits_and_samples():
    X = make_toy("moons", 120, random_state=0)  # the "auto" fit: five members, stacked
    a, b = fast(max_iter=5).fit(X), fast(max_iter=5).fit(X)
    for p, q in zip(a.flow_.parameters(), b.flow_.parameters()):
        assert torch.equal(p, q)
    np.testing.assert_array_equal(a.sample(7, random_state=3), b.sample(7, random_state=3))
    assert not np.array_equal(a.sample(7, random_state=3), a.sample(7, random_state=4))


def test_density_integrates_to_one_in_caller_units():
    """Data far from the origin and in odd units: the density still integrates to 1."""
    X = make_toy("8gaussians", 1000, random_state=0) * np.array([300.0, 0.02]) + [5e4, -7.0]
    # one member (an ensemble's integral: test_small_data.py)
    est = fast(max_iter=30, hidden=(16, 16), rtol=1e-6, atol=1e-6, n_members=1).fit(X)
    lo, hi = X.min(0), X.max(0)
    pad = (hi - lo) * 0.6
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 160)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 160)
    xx, yy = np.meshgrid(xs, ys)
    dens = np.exp(est.score_samples(np.stack([xx.ravel(), yy.ravel()], 1)))
    mass = dens.sum() * (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert mass == pytest.approx(1.0, abs=0.03)


def test_non_finite_loss_leaves_finite_parameters(monkeypatch):
    X = make_toy("8gaussians", 200, random_state=0)
    calls = {"n": 0}
    original = CNFDensity._training_loss

    def poisoned(self, flow, u):
        calls["n"] += 1
        loss = original(self, flow, u)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(CNFDensity, "_training_loss", poisoned)
    est = fast(max_iter=10, validation_fraction=0.0)  # with validation, a warning instead
    with pytest.raises(TrainingFault, match="iteration 4"):
        est.fit(X)
    assert all(torch.isfinite(p).all() for p in est.flow_.parameters())
    assert len(est.history_) == 3
    assert np.isfinite(est.score_samples(X[:5])).all()  # still usable


def test_pipeline_and_grid_search():
    X = make_toy("8gaussians", 200, random_state=0)
    pipe = make_pipeline(FunctionTransformer(lambda a: a * 2.0), fast(max_iter=3, n_members=1))
    assert pipe.fit(X).score_samples(X[:4]).shape == (4,)
    search = GridSearchCV(fast(max_iter=3, n_members=1), {"hidden": [(4,), (8,)]}, cv=2).fit(X)
    assert search.best_params_["hidden"] in [(4,), (8,)]


def test_failed_refit_leaves_no_stale_model():
    X = make_toy("8gaussians", 100, random_state=0)
    est = fast().fit(X)
    est.set_params(validation_fraction=0.01)
    with pytest.raises(ValueError, match="validation_fraction"):
        est.fit(X[:20] * 10 + 100)
    with pytest.raises(NotFittedError):  # never the old flow with the new data's scaling
        est.score_samples(X[:3])


def test_save_load_keeps_feature_names(fitted, tmp_path):
    """Names recorded by a DataFrame fit survive save/load (set by hand: no pandas here)."""
    plain = fitted[0]
    est = copy.deepcopy(plain)
    est.feature_names_in_ = np.asarray(["a", "b"], dtype=object)
    est.save(tmp_path / "m.pt")
    loaded = CNFDensity.load(tmp_path / "m.pt")
    assert list(loaded.feature_names_in_) == ["a", "b"]
    plain.save(tmp_path / "p.pt")
    assert not hasattr(CNFDensity.load(tmp_path / "p.pt"), "feature_names_in_")


def test_solver_is_the_deprecated_name_of_method():
    X = make_toy("moons", 200, random_state=0)
    one_flow = dict(n_members=1, validation_fraction=0.0, stacking=False)
    with pytest.warns(DeprecationWarning, match="use method"):
        est = fast(solver="bosh3", **one_flow).fit(X)
    assert est.flow_.method == "bosh3"
    assert fast(method="bosh3", **one_flow).fit(X).flow_.method == "bosh3"


def test_fitting_and_scoring_never_change_a_flows_settings(monkeypatch):
    """Fine-tuning, validation and scoring pass their own trace and solve options to each
    call; the flow's settings stay as built."""
    from cnflow import CNF

    original = CNF.__setattr__

    def guarded(self, name, value):
        if name in ("solve_options", "trace") and name in self.__dict__:
            raise AssertionError(f"the flow's {name} was changed after it was built")
        original(self, name, value)

    monkeypatch.setattr(CNF, "__setattr__", guarded)
    X = make_toy("8gaussians", 300, random_state=0)
    est = fast(max_iter=20, fine_tune_iter=2, trace="hutchinson", validation_fraction=0.2,
               n_members=1, stacking=False).fit(X)
    est.score_samples(X[:5])
    assert est.flow_.trace == "hutchinson" and est.flow_.rtol == 1e-9


# ---------------------------------------------------------------- fixed-step sampling


@pytest.fixture(scope="module")
def one_flow():
    """One CNF (no members, no stack) trained long enough that its paths bend."""
    X = make_toy("8gaussians", 400, random_state=0)
    return fast(max_iter=200, lr=0.05, hidden=(16,), n_members=1, stacking=False,
                preprocessing="whiten").fit(X)


def test_fixed_step_samples_repeat_and_approach_the_adaptive_draws(one_flow):
    est = one_flow
    assert isinstance(est.flow_, CNF)
    draws = est.sample(50, random_state=0, steps=4)
    assert draws.shape == (50, 2) and est.flow_.nfe_forward == 8   # 4 midpoint steps
    np.testing.assert_array_equal(est.sample(50, random_state=0, steps=4), draws)
    adaptive = est.sample(50, random_state=0)
    errors = [np.abs(est.sample(50, random_state=0, steps=k) - adaptive).max()
              for k in (4, 8, 64)]
    assert errors[0] > errors[1] > errors[2] > 0, errors   # the same base draws, solved closer
    assert errors[2] < 1e-3, errors
    assert not np.allclose(draws, est.sample(50, random_state=1, steps=4))


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_a_fitted_flows_fixed_step_evaluations(one_flow, method):
    flow = one_flow.flow_
    with torch.no_grad():
        flow.sample(10, steps=3, method=method)
    assert flow.nfe_forward == 3 * TABLEAUX[method].stages == flow.stats_forward.nfe


def test_fixed_step_draws_are_scored_as_score_samples_scores(one_flow):
    """return_log_prob with steps: the model's log-density at the drawn rows (the adaptive,
    exact-trace score), not a density of the fixed-step map."""
    X, log_p = one_flow.sample(20, random_state=2, steps=3, return_log_prob=True)
    np.testing.assert_allclose(log_p, one_flow.score_samples(X), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(X, one_flow.sample(20, random_state=2, steps=3))


@pytest.mark.parametrize("steps", [0, -1, 2.5, True, "4"])
def test_bad_steps_are_refused_before_drawing(one_flow, steps):
    stats, rng = one_flow.flow_.stats_forward, torch.get_rng_state()
    with pytest.raises(ValueError, match=f"steps must be a positive integer, got {steps!r}"):
        one_flow.sample(5, steps=steps)
    assert one_flow.flow_.stats_forward is stats and torch.equal(torch.get_rng_state(), rng)


def test_steps_reach_every_member_of_a_stacked_ensemble(fitted):
    """The "auto" fit (members, each a stack [CNF, Gaussian mixture]): steps go to the CNFs."""
    est, _ = fitted
    for member in est.flow_.members:
        member.members[0].stats_forward = SolverStats()
    assert est.sample(3000, random_state=0, steps=3).shape == (3000, 2)
    counts = {(s.nfe, s.n_accepted) for s in
              (member.members[0].stats_forward for member in est.flow_.members)}
    assert counts <= {(0, 0), (6, 3)}   # a CNF drew by 3 midpoint steps, or drew no rows
    if any(float(member.weights[0]) > 0.01 for member in est.flow_.members):
        assert (6, 3) in counts


# ---------------------------------------------------------------- exact-trace solves


def test_exact_trace_solves_take_a_bounded_number_of_rows(one_flow, monkeypatch):
    """Scoring splits each batch into exact-trace solves of trace_solve_rows rows (entries =
    rows × D × widest layer); the scores are the one-solve scores to the solver's tolerance."""
    from cnflow.estimators import cnf_estimator
    from cnflow.estimators.cnf_estimator import trace_solve_rows
    est = one_flow
    X = make_toy("8gaussians", 300, random_state=3)
    whole = est.score_samples(X)
    width = max(max(p.shape) for p in est.flow_.parameters() if p.dim() == 2)
    monkeypatch.setattr(cnf_estimator, "TRACE_SOLVE_ENTRIES", 100 * 2 * width)
    assert trace_solve_rows(est.flow_, torch.zeros(300, 2)) == 100
    sizes = []
    log_prob = CNF.log_prob

    def counted(self, x, *args, **kwargs):
        sizes.append(x.shape[0])
        return log_prob(self, x, *args, **kwargs)

    monkeypatch.setattr(CNF, "log_prob", counted)
    split = est.score_samples(X)
    assert sizes == [100, 100, 100]
    np.testing.assert_allclose(split, whole, rtol=0, atol=1e-7)
    monkeypatch.setattr(cnf_estimator, "TRACE_SOLVE_ENTRIES", 1)  # the floor: 64 rows
    sizes.clear()
    est.score_samples(X[:130])
    assert sizes == [64, 64, 2]


def test_later_exact_trace_solves_start_at_the_first_ones_suggested_step(one_flow,
                                                                         monkeypatch):
    """Every exact-trace solve after a batch's first starts at the step the first solve's
    controller chose after its first accepted step: fewer steps than the same rows solved
    from the estimated first step, the same log-densities to the tolerance."""
    from cnflow.estimators import cnf_estimator
    est = one_flow
    X = make_toy("8gaussians", 300, random_state=3)
    width = max(max(p.shape) for p in est.flow_.parameters() if p.dim() == 2)
    monkeypatch.setattr(cnf_estimator, "TRACE_SOLVE_ENTRIES", 100 * 2 * width)
    solves = []
    log_prob = CNF.log_prob

    def recorded(self, x, *args, **kwargs):
        out = log_prob(self, x, *args, **kwargs)
        solves.append((self, x, kwargs["solve_options"], self.stats_forward.n_steps, out))
        return out

    monkeypatch.setattr(CNF, "log_prob", recorded)
    est.score_samples(X)
    assert len(solves) == 3
    flow, _, options, _, _ = solves[0]
    assert options.first_step is None
    for _, x, started, n_steps, scores in solves[1:]:
        assert started.first_step is not None and started.first_step > 0
        alone = log_prob(flow, x, trace="exact", solve_options=options)
        assert n_steps < flow.stats_forward.n_steps
        torch.testing.assert_close(scores, alone, rtol=0, atol=1e-4)
