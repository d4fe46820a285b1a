"""CNFDensity's "auto" settings on small tables: what they resolve to, selection on held-out
likelihood from the Gaussian copula, and tiny or degenerate data."""

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from sklearn.model_selection import GridSearchCV, KFold

from cnflow import CNFDensity
from cnflow.datasets import load_real
from cnflow.training import TrainConfig, train


@pytest.mark.parametrize("name, value, message", [
    ("preprocessing", "box-cox", "preprocessing must be one of auto"),
    ("validation_fraction", 1.0, "validation_fraction must be a number in"),
    ("validation_fraction", "half", "validation_fraction must be a number in"),
    ("n_iter_no_change", 0, "n_iter_no_change must be None, 'auto'"),
    ("n_iter_no_change", True, "n_iter_no_change must be None, 'auto'")])
def test_bad_settings_are_named(name, value, message):
    with pytest.raises(ValueError, match=message):
        CNFDensity(**{name: value}).fit(np.random.RandomState(0).randn(50, 2))


def test_validate_at_start_keeps_the_start_when_every_step_is_worse():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    X = torch.ones(8, 1)
    # training pulls the weight to 5; the held-out loss is smallest at 0, where it starts
    config = TrainConfig(max_iter=30, batch_size=8, lr=0.1, validation_interval=5,
                         validate_at_start=True)
    result = train(model, X, lambda m, x: (m(x) - 5).square().mean(), config, X_val=X,
                   val_loss_fn=lambda m, x: m(x).square().mean())
    assert [h["iteration"] for h in result.history if "val_loss" in h] == [5, 10, 15, 20, 25,
                                                                            30]
    assert model.weight.item() == 0.0 and result.best_val_loss == 0.0
    # without it, the best of the validated steps is kept instead
    with torch.no_grad():
        model.weight.fill_(0.0)
    train(model, X, lambda m, x: (m(x) - 5).square().mean(),
          TrainConfig(max_iter=30, batch_size=8, lr=0.1, validation_interval=5), X_val=X,
          val_loss_fn=lambda m, x: m(x).square().mean())
    assert model.weight.item() > 0.3


def _mixture_log_density(mixture, W):
    """A GaussianMixtureBase's log-density at the rows W, by scipy from its parameters."""
    weights = mixture.log_weights.exp().double().numpy()
    chol = mixture.scale_tril.double().numpy()
    return logsumexp(np.stack([
        np.log(w) + stats.multivariate_normal(m, c @ c.T).logpdf(W)
        for w, m, c in zip(weights, mixture.means.double().numpy(), chol)]), axis=0)


def _identity_flow_log_density(est, W):
    """log p of the preprocessed rows W when every member's flow is the identity: each
    flow's base density (N(0, I) or its mixture), stacked with the member's mixture by its
    weight, averaged over the members, all by scipy."""
    per_member = []
    weights = est.stacking_weights_ or [1.0] * est.n_members_
    for (flow, stacked), w in zip(est._member_parts(), weights):
        log_flow = (stats.norm.logpdf(W).sum(1) if flow.base is None
                    else _mixture_log_density(flow.base, W))
        if stacked is not None:
            with np.errstate(divide="ignore"):  # a weight of 1 leaves the mixture out
                log_flow = np.logaddexp(np.log(w) + log_flow,
                                        np.log1p(-w) + _mixture_log_density(stacked, W))
        per_member.append(log_flow)
    return logsumexp(np.stack(per_member), axis=0) - np.log(len(per_member))


@pytest.mark.parametrize("base, lr, atol", [("normal", 0.5, 1e-7), ("mixture", 1e-9, 1e-5)])
def test_the_fit_starts_at_its_base_and_rolls_back_to_it(base, lr, atol):
    """With base="normal", a huge learning rate makes every step worse on held-out rows: the
    fit must end at the identity flow, whose density is N(0, I) in the preprocessed space
    (stacked with each member's Gaussian mixture), exactly. With the mixture base a step that
    barely moves shows the start: the identity flow over the members' mixtures (by scipy)."""
    X, _ = load_real("wine")  # each member validates its flow matching twice, then once
    est = CNFDensity(hidden=(16,), lr=lr, max_iter=200, fine_tune_iter=10, dtype="float64",
                     rtol=1e-8, atol=1e-8, base=base, random_state=0, device="cpu").fit(X)
    assert est.n_members_ == 5 and any("val_loss" in h for h in est.history_)
    W, logdet = est.preprocessor_.transform(X)
    np.testing.assert_allclose(est.score_samples(X), _identity_flow_log_density(est, W) + logdet,
                               atol=atol)
    # and sampling inverts the preprocessing: samples have the data's range and units
    S = est.sample(2000, random_state=0)
    assert np.isfinite(S).all()
    np.testing.assert_allclose(np.median(S, 0), np.median(X, 0), rtol=0.25, atol=0.1)


@pytest.mark.parametrize("make", [
    lambda rng: rng.randn(10, 3),  # ten rows
    lambda rng: np.c_[rng.randn(60, 1), rng.randint(0, 3, (60, 1))],  # a 3-valued column
])
def test_tiny_or_degenerate_data_give_finite_densities(make):
    X = make(np.random.RandomState(0))
    est = CNFDensity(hidden=(8,), max_iter=50, fine_tune_iter=5, random_state=0,
                     device="cpu").fit(X)
    scores = est.score_samples(X)
    assert np.isfinite(scores).all()
    assert np.isfinite(est.sample(20, random_state=0)).all()


def test_grid_search_selects_by_held_out_likelihood():
    X, _ = load_real("iris")
    grid = {"preprocessing": ["standardize", "gaussianize"]}
    base = CNFDensity(hidden=(8,), max_iter=20, fine_tune_iter=0, random_state=0,
                      device="cpu")
    search = GridSearchCV(base, grid, cv=3).fit(X)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all()
    assert search.best_params_["preprocessing"] == grid["preprocessing"][int(np.argmax(scores))]
    # a split's score is the held-out rows' mean log-likelihood
    train_rows, test_rows = next(iter(KFold(3).split(X)))
    refit = CNFDensity(**{**base.get_params(), "preprocessing": "gaussianize"})
    held_out = refit.fit(X[train_rows]).score_samples(X[test_rows]).mean()
    assert search.cv_results_["split0_test_score"][1] == pytest.approx(held_out, rel=1e-6)


def test_flow_mixture_averages_member_densities():
    from cnflow.flows import CNF, FlowMixture

    torch.manual_seed(0)
    members = [CNF(2, hidden=(8,)).double() for _ in range(3)]
    mixture = FlowMixture(members)
    x = torch.randn(7, 2, dtype=torch.float64)
    with torch.no_grad():
        expected = torch.logsumexp(torch.stack([m.log_prob(x) for m in members]), 0) - np.log(3)
        np.testing.assert_allclose(mixture.log_prob(x), expected, rtol=1e-12)
        assert mixture.sample(11).shape == (11, 2)
    with pytest.raises(ValueError, match="at least one member"):
        FlowMixture([])


def test_cross_fitted_members_integrate_to_one_and_round_trip(tmp_path):
    rng = np.random.RandomState(0)
    X = np.c_[rng.gamma(2.0, size=300), rng.randn(300)]
    est = CNFDensity(hidden=(8,), max_iter=200, fine_tune_iter=4, random_state=0,
                     device="cpu").fit(X)
    assert est.n_members_ == 5  # 300 rows: five members, each holding out a fifth
    assert {h["member"] for h in est.history_} == set(range(5))
    xs = np.linspace(-4, 16, 121)  # 1/6 apart: the sum is a 1/12-spaced grid's to 1e-7
    ys = np.linspace(-6, 6, 73)
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(est.score_samples(grid)).reshape(len(xs), len(ys))
    mass = np.trapezoid(np.trapezoid(density, ys, axis=1), xs)
    assert mass == pytest.approx(1.0, abs=0.02)
    est.save(tmp_path / "ensemble.pt")
    again = CNFDensity.load(tmp_path / "ensemble.pt")
    assert again.n_members_ == 5
    np.testing.assert_array_equal(again.score_samples(X[:20]), est.score_samples(X[:20]))
    np.testing.assert_array_equal(again.sample(5, random_state=1), est.sample(5, random_state=1))
    with pytest.raises(ValueError, match="leave validation_fraction at 'auto'"):
        CNFDensity(n_members=3, validation_fraction=0.1).fit(X)
    with pytest.raises(ValueError, match="n_members must be a positive integer"):
        CNFDensity(n_members=0).fit(X)
