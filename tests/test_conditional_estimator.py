"""ConditionalCNFDensity: p(y | x) behind scikit-learn's fit(X, y), checked against a
closed-form linear-Gaussian density, by quadrature, against its own sampling, and through
scikit-learn's contract (clone, parameters, errors, GridSearchCV, Pipeline)."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cnflow import CNFDensity, ConditionalCNFDensity, SolverStats
from cnflow.datasets import conditional_log_density, make_conditional, make_toy

FAST = dict(hidden=(16, 16), max_iter=300, fine_tune_iter=5, random_state=0, device="cpu")


def _linear_gaussian(n, seed):
    """y = 2x + 1 + 0.5 ε: log p(y | x) = log N(y; 2x + 1, 0.25)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(n, 1))
    y = 2 * X[:, 0] + 1 + 0.5 * rng.normal(size=n)
    return X, y


def _linear_gaussian_log_density(X, y):
    return -0.5 * ((y - 2 * X[:, 0] - 1) / 0.5) ** 2 - np.log(0.5) - 0.5 * np.log(2 * np.pi)


@pytest.fixture(scope="module")
def linear():
    X, y = _linear_gaussian(4000, 0)
    est = ConditionalCNFDensity(hidden=(32, 32), max_iter=2000, batch_size=2048,
                                validation_fraction=0.0, random_state=0, device="cpu").fit(X, y)
    return est


def test_a_linear_gaussian_is_learned_to_a_stated_tolerance(linear):
    """Within the data's bulk (|y − 2x − 1| ≤ 2σ), the learned log p(y | x) is within 0.05
    nats of the truth on average (0.033 measured), the KL estimate within 0.02 of 0, and the
    predicted mean within 0.15 of 2x + 1 (about four standard errors of a mean of 200
    draws, σ/√200 = 0.035)."""
    X, y = _linear_gaussian(2000, 1)
    inside = np.abs(y - 2 * X[:, 0] - 1) <= 1.0
    error = linear.score_samples(X, y) - _linear_gaussian_log_density(X, y)
    assert np.abs(error[inside]).mean() < 0.05
    assert abs(error.mean()) < 0.02  # the KL estimate, with sign
    grid = np.linspace(-1.8, 1.8, 7)[:, None]
    np.testing.assert_allclose(linear.predict(grid), 2 * grid[:, 0] + 1, atol=0.15)


@pytest.mark.parametrize("x", [-1.5, 0.0, 1.0])
def test_the_learned_density_integrates_to_one_over_y(linear, x):
    grid = np.linspace(2 * x + 1 - 6, 2 * x + 1 + 6, 1201)
    X = np.full((len(grid), 1), x)
    density = np.exp(linear.score_samples(X, grid))
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=0.01)


def test_sample_with_log_prob_agrees_with_score_samples(linear):
    X = np.array([[-1.0], [0.5]])
    y, log_p = linear.sample(X, n_samples=50, random_state=0, return_log_prob=True)
    assert y.shape == (2, 50) and log_p.shape == (2, 50)
    scored = linear.score_samples(np.repeat(X, 50, axis=0), y.reshape(-1))
    np.testing.assert_allclose(log_p.reshape(-1), scored, atol=1e-3)
    again, _ = linear.sample(X, n_samples=50, random_state=0, return_log_prob=True,
                             batch_size=7)  # chunks of 7 draws: another stream, same law
    assert again.shape == y.shape
    # one solve per pair: the adaptive steps differ, the values agree to the tolerance
    np.testing.assert_allclose(linear.score_samples(X, y[:, 0], batch_size=1),
                               linear.score_samples(X, y[:, 0]), rtol=0, atol=1e-3)


@pytest.fixture(scope="module")
def two_d():
    X, y = make_conditional("bimodal_2d", 600, random_state=0)
    return X, y, ConditionalCNFDensity(n_members=2, **FAST).fit(X, y)


def test_two_dimensional_targets_and_several_members(two_d):
    X, y, est = two_d
    assert est.n_targets_ == 2 and est.n_features_in_ == 1 and est.n_members_ == 2
    draws, log_p = est.sample(X[:3], n_samples=4, random_state=1, return_log_prob=True)
    assert draws.shape == (3, 4, 2) and log_p.shape == (3, 4)
    scored = est.score_samples(np.repeat(X[:3], 4, axis=0), draws.reshape(-1, 2))
    np.testing.assert_allclose(log_p.reshape(-1), scored, atol=1e-6)
    assert est.predict(X[:5]).shape == (5, 2)
    # better than the flow at the identity it starts from (a Gaussian for y, blind to x)
    truth = conditional_log_density("bimodal_2d", X, y)
    start = ConditionalCNFDensity(**{**FAST, "max_iter": 1, "fine_tune_iter": 0}).fit(X, y)
    fitted_kl = (truth - est.score_samples(X, y)).mean()
    assert fitted_kl < (truth - start.score_samples(X, y)).mean() - 0.2


def test_save_and_load_round_trip(two_d, tmp_path):
    X, y, est = two_d
    est.save(tmp_path / "conditional.pt")
    loaded = ConditionalCNFDensity.load(tmp_path / "conditional.pt")
    np.testing.assert_allclose(loaded.score_samples(X[:20], y[:20]),
                               est.score_samples(X[:20], y[:20]), rtol=0, atol=1e-6)
    assert loaded.n_targets_ == 2 and loaded.targets_1d_ is False
    with pytest.raises(Exception, match="holds a ConditionalCNFDensity, not a CNFDensity"):
        CNFDensity.load(tmp_path / "conditional.pt")


@pytest.mark.parametrize("conditioning", ["gates", "concat"])
def test_both_objectives_and_conditionings_fit(conditioning):
    X, y = make_conditional("bimodal", 200, random_state=0)
    for objective in ("flow_matching", "maximum_likelihood"):  # one member (two: two_d)
        settings = {**FAST, "max_iter": 10 if objective == "maximum_likelihood" else 50,
                    "n_members": 1}
        est = ConditionalCNFDensity(objective=objective, conditioning=conditioning,
                                    rtol=1e-3, atol=1e-3, **{k: v for k, v in settings.items()
                                                             if k != "fine_tune_iter"})
        est.fit(X, y)
        assert np.isfinite(est.score_samples(X[:10], y[:10])).all()


# ------------------------------------------------------------------ scikit-learn's contract
def test_clone_parameters_and_not_fitted_errors():
    est = ConditionalCNFDensity(hidden=(8,), conditioning="concat")
    copy = clone(est)
    assert copy.get_params() == est.get_params()
    assert copy.set_params(lr=0.01).lr == 0.01
    X = np.zeros((3, 2))
    for call in (lambda: est.score_samples(X, X[:, 0]), lambda: est.sample(X),
                 lambda: est.predict(X), lambda: est.score(X, X[:, 0])):
        with pytest.raises(NotFittedError):
            call()


def test_grid_search_selects_by_held_out_conditional_likelihood():
    X, y = make_conditional("bimodal", 300, random_state=0)
    search = GridSearchCV(ConditionalCNFDensity(**{**FAST, "max_iter": 30, "n_members": 1}),
                          {"hidden": [(4,), (16, 16)]}, cv=2)
    search.fit(X, y)
    assert search.best_params_["hidden"] in [(4,), (16, 16)]
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    scores = search.cv_results_["mean_test_score"]
    assert search.best_index_ == int(np.argmax(scores))


def test_a_pipeline_with_a_scaler_in_front():
    X, y = make_conditional("bimodal", 300, random_state=0)
    pipe = make_pipeline(StandardScaler(),
                         ConditionalCNFDensity(**{**FAST, "max_iter": 50, "n_members": 1}))
    pipe.fit(X * 100 + 7, y)
    assert np.isfinite(pipe.score(X * 100 + 7, y))
    assert pipe.predict(X[:4] * 100 + 7).shape == (4,)


@pytest.mark.parametrize("X, y, message", [
    (np.zeros((10, 2)), np.zeros(9), "inconsistent numbers of samples"),
    (np.full((10, 2), np.nan), np.zeros(10), "NaN"),
    (np.zeros((10, 2)), np.r_[np.zeros(9), np.inf], "infinity"),
    (np.zeros((10, 2)), None, "needs y"),
])
def test_bad_input_to_fit(X, y, message):
    with pytest.raises(ValueError, match=message):
        ConditionalCNFDensity(**FAST).fit(X, y)


def test_bad_input_after_fit(two_d):
    X, y, est = two_d
    with pytest.raises(ValueError, match="features"):
        est.score_samples(np.zeros((3, 2)), y[:3])
    with pytest.raises(ValueError, match="y has 1 columns, but the model was fitted on 2"):
        est.score_samples(X[:3], y[:3, 0])
    with pytest.raises(ValueError, match="inconsistent"):
        est.score_samples(X[:3], y[:4])
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        est.sample(X[:3], n_samples=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        est.sample(X[:3], batch_size=0)
    with pytest.raises(ValueError, match="conditioning"):
        ConditionalCNFDensity(conditioning="film").fit(X, y)


def test_fixed_step_draws_of_one_flow_and_of_members(linear, two_d):
    """steps=K: 2K evaluations per member that draws (midpoint), draws repeatable by seed,
    their log-densities the adaptive scores of score_samples."""
    X = np.array([[-1.0], [0.5]])
    y = linear.sample(X, n_samples=30, random_state=0, steps=3)
    assert y.shape == (2, 30) and linear.flow_.nfe_forward == 6
    np.testing.assert_array_equal(y, linear.sample(X, n_samples=30, random_state=0, steps=3))
    # a linear-Gaussian p(y | x): few steps already land near the adaptive draws
    adaptive = linear.sample(X, n_samples=30, random_state=0)
    assert 0 < np.abs(y - adaptive).max() < 0.5
    X2, _, est = two_d
    for member in est.flow_.members:
        member.flow.stats_forward = SolverStats()
    draws = est.sample(X2[:3], n_samples=40, random_state=1, steps=2)
    assert draws.shape == (3, 40, 2)
    # 120 draws from two equally weighted members: both drew, each by 2 midpoint steps
    assert {(m.flow.nfe_forward, m.flow.stats_forward.n_accepted)
            for m in est.flow_.members} == {(4, 2)}
    again, log_p = est.sample(X2[:3], n_samples=40, random_state=1, steps=2,
                              return_log_prob=True)
    np.testing.assert_array_equal(again, draws)
    scored = est.score_samples(np.repeat(X2[:3], 40, axis=0), draws.reshape(-1, 2))
    np.testing.assert_allclose(log_p.reshape(-1), scored, atol=1e-6)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        est.sample(X2[:3], steps=0)


# ------------------------------------------------------------------ CNFDensity's sampling
@pytest.mark.parametrize("members", [1, 2])
def test_cnf_density_sample_with_log_prob_agrees_with_score_samples(members):
    X = make_toy("moons", 400, random_state=0)
    est = CNFDensity(n_members=members, validation_fraction="auto" if members > 1 else 0.0,
                     **FAST).fit(X)
    draws, log_p = est.sample(300, random_state=0, return_log_prob=True, batch_size=128)
    assert draws.shape == (300, 2) and log_p.shape == (300,)
    np.testing.assert_allclose(log_p, est.score_samples(draws), atol=1e-3)


class _Killed(Exception):
    pass


def test_a_conditional_fit_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from cnflow.training import FitCheckpoint

    X, y = make_conditional("bimodal", 300, random_state=0)
    settings = {**FAST, "max_iter": 60, "n_members": 2}
    reference = ConditionalCNFDensity(**settings).fit(X, y)
    path = tmp_path / "conditional.ckpt"
    real_write, count = FitCheckpoint.write, [0]

    def write(self, loop_state=None):
        real_write(self, loop_state)
        count[0] += 1
        if count[0] == 40:
            raise _Killed  # the process dies here

    with monkeypatch.context() as patch:
        patch.setattr(FitCheckpoint, "write", write)
        with pytest.raises(_Killed):
            ConditionalCNFDensity(checkpoint=path, checkpoint_interval=0, **settings).fit(X, y)
    resumed = ConditionalCNFDensity(checkpoint=path, checkpoint_interval=0, **settings).fit(X, y)
    assert resumed.n_iter_ == reference.n_iter_
    np.testing.assert_allclose(resumed.score_samples(X[:20], y[:20]),
                               reference.score_samples(X[:20], y[:20]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind, auto_batch, auto_fraction, fine_tune_lr", [
    (CNFDensity, 2048, 0.5, "auto"), (ConditionalCNFDensity, 4096, 0.03, "auto"),
    (ConditionalCNFDensity, 4096, 0.03, 0.0123)])
def test_fine_tuning_starts_at_fine_tune_lr(kind, auto_batch, auto_fraction, fine_tune_lr):
    """Fine-tuning's first step takes ``fine_tune_lr`` ("auto": a fraction of flow matching's
    lr), and flow matching's batch is the class's "auto" batch."""
    X, y = make_conditional("bimodal", 12_000, random_state=0)
    rows = np.hstack([y[:, None], X])
    est = kind(hidden=(8,), max_iter=200, lr=0.02, fine_tune_lr=fine_tune_lr,
               random_state=0, device="cpu")
    est.fit(rows) if kind is CNFDensity else est.fit(X, y)
    first = next(h for h in est.history_ if h["objective"] == "maximum_likelihood")
    expected = 0.02 * auto_fraction if fine_tune_lr == "auto" else fine_tune_lr
    assert first["lr"] == pytest.approx(expected)
    assert est.settings_.batch_size == auto_batch
    assert est.settings_.fine_tune_lr == pytest.approx(expected)


def test_data_frames_name_features_and_targets_and_the_names_are_saved(tmp_path):
    """scikit-learn's feature_names_in_ for X, and target_names_ for y (a DataFrame or a
    named Series), kept by save/load; unnamed y leaves none."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(60, 2)), columns=["age", "dose"])
    y = pd.DataFrame(rng.normal(size=(60, 2)), columns=["sbp", "dbp"])
    est = ConditionalCNFDensity(hidden=(4,), max_iter=1, random_state=0, device="cpu")
    est.fit(X, y)
    assert list(est.feature_names_in_) == ["age", "dose"]
    assert list(est.target_names_) == ["sbp", "dbp"]
    est.save(tmp_path / "c.pt")
    loaded = ConditionalCNFDensity.load(tmp_path / "c.pt")
    assert list(loaded.target_names_) == ["sbp", "dbp"]
    assert list(est.fit(X, y["sbp"]).target_names_) == ["sbp"]
    assert not hasattr(est.fit(X, y.to_numpy()), "target_names_")
