"""The Gaussian-mixture base density: its log-density against scikit-learn and scipy, its
draws, the flow-matching coupling's marginal, and a CNF over it."""

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from sklearn.mixture import GaussianMixture

from cnflow import CNF, CNFDensity
from cnflow.flows import FlowMixture
from cnflow.flows.base_density import GaussianMixtureBase, fit_gaussian_mixture_base
from cnflow.flows.mixture import best_mixture_weight


def _three_clusters(n, rng):
    centres = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    return centres[rng.randint(0, 3, n)] + rng.randn(n, 2) @ np.array([[1.0, 0.3], [0.0, 0.6]])


def _base_of(mixture: GaussianMixture) -> GaussianMixtureBase:
    return GaussianMixtureBase(torch.tensor(mixture.weights_), torch.tensor(mixture.means_),
                               torch.tensor(mixture.covariances_))


def test_log_prob_matches_scikit_learn_and_is_differentiable():
    rng = np.random.RandomState(0)
    X = np.c_[_three_clusters(600, rng), rng.randn(600)]
    mixture = GaussianMixture(3, random_state=0).fit(X)
    base = _base_of(mixture)
    z = torch.tensor(X[:50], requires_grad=True)
    logp = base.log_prob(z)
    np.testing.assert_allclose(logp.detach().numpy(), mixture.score_samples(X[:50]), rtol=1e-12)
    (grad,) = torch.autograd.grad(logp.sum(), z)
    # d/dz log p = Σ_k r_k(z) Σ_k^{-1} (μ_k − z), by scikit-learn's responsibilities
    resp = mixture.predict_proba(X[:50])
    expected = sum(resp[:, [k]] * (mixture.means_[k] - X[:50]) @ np.linalg.inv(
        mixture.covariances_[k]) for k in range(3))
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_draws_and_coupled_draws_follow_the_mixture():
    base = GaussianMixtureBase(torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64),
                               torch.tensor([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]],
                                            dtype=torch.float64),
                               torch.tensor([[[1.0, 0.5], [0.5, 2.0]], [[0.5, 0.0], [0.0, 0.5]],
                                             [[2.0, -0.3], [-0.3, 1.0]]], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    z = base.sample(40_000, generator=g)
    x = base.sample(40_000, generator=g)
    paired = base.draw_coupled(x, generator=g)
    # every component is far from the others: a pair stays in its row's component
    nearest = lambda a: (a.unsqueeze(1) - base.means).square().sum(-1).argmin(1)  # noqa: E731
    assert (nearest(paired) == nearest(x)).double().mean() > 0.999
    # both have the mixture's law: component shares, and a KS test on a projection
    weights = base.log_weights.exp().numpy()
    u = torch.tensor([0.6, 0.8], dtype=torch.float64)
    cov = base.scale_tril @ base.scale_tril.transpose(1, 2)
    means = (base.means @ u).numpy()
    sds = torch.einsum("i,kij,j->k", u, cov, u).sqrt().numpy()
    for draws in (z, paired):
        shares = np.bincount(nearest(draws).numpy(), minlength=3) / len(draws)
        np.testing.assert_allclose(shares, weights, atol=0.01)
        proj = (draws @ u).numpy()

        def cdf(v):
            return sum(w * stats.norm.cdf(v, m, s) for w, m, s in zip(weights, means, sds))

        assert stats.kstest(proj, cdf).pvalue > 1e-3


def test_a_cnf_over_the_mixture_integrates_to_one_and_starts_at_it():
    torch.manual_seed(0)
    rng = np.random.RandomState(1)
    base = _base_of(GaussianMixture(3, random_state=0).fit(_three_clusters(900, rng)))
    flow = CNF(2, hidden=(16, 16), base=base, rtol=1e-7, atol=1e-7).double()
    assert flow.base is base and {n for n, _ in flow.named_buffers()} >= {
        "base.log_weights", "base.means", "base.scale_tril"}
    # a 0.2-spaced grid (the trapezoid sums agree with a 0.1-spaced grid's to 1e-12)
    xs, ys = np.linspace(-11, 11, 111), np.linspace(-7, 12, 96)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2))
    with torch.no_grad():
        density = flow.log_prob(grid).exp().numpy().reshape(len(xs), len(ys))
    assert np.trapezoid(np.trapezoid(density, ys, axis=1), xs) == pytest.approx(1.0, abs=2e-3)
    # a zero field is the identity: the flow's density is the base's, its draws the base's
    last = flow.net.layers[-1]
    with torch.no_grad():
        for p in (*last.linear.parameters(), *last.hyper_bias.parameters()):
            p.zero_()
        np.testing.assert_allclose(flow.log_prob(grid[:100]), base.log_prob(grid[:100]),
                                   rtol=1e-12)
    loss = flow.flow_matching_loss(grid[:64], generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in flow.net.parameters())
    with pytest.raises(ValueError, match="base has dimension 2, the flow 3"):
        CNF(3, base=base)
    with pytest.raises(ValueError, match="missing: log_prob, sample, draw_coupled"):
        CNF(2, base=torch.nn.Identity())


def test_bad_mixtures_are_named():
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixtureBase(torch.tensor([0.5, 0.6]), torch.zeros(2, 1), torch.ones(2, 1, 1))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixtureBase(torch.tensor([1.0]), torch.zeros(1, 2), -torch.eye(2)[None])
    with pytest.raises(ValueError, match="disagree"):
        GaussianMixtureBase(torch.tensor([1.0]), torch.zeros(1, 2), torch.eye(3)[None])


def test_the_number_of_components_is_chosen_on_held_out_rows():
    rng = np.random.RandomState(0)
    X = _three_clusters(1200, rng)
    base, scores = fit_gaussian_mixture_base(X[:900], X[900:], random_state=0)
    tried = list(scores)
    assert tried[:3] == [1, 2, 4] and scores[4] > scores[1] + 1.0
    assert base.n_components == max(scores, key=scores.get)
    # the search stops at the first number of components that scores below the best
    assert tried[-1] == 16 or scores[tried[-1]] < scores[base.n_components]
    assert all(scores[a] <= scores[base.n_components] for a in tried)
    held_out = base.log_prob(torch.tensor(X[900:])).mean().item()
    assert held_out == pytest.approx(scores[base.n_components], rel=1e-10)
    # without held-out rows, by BIC: the three clusters' number or close to it
    bic_base, _ = fit_gaussian_mixture_base(X, None, random_state=0)
    assert 2 <= bic_base.n_components <= 4
    # never more components than half the rows
    tiny, tiny_scores = fit_gaussian_mixture_base(X[:6], X[6:12])
    assert set(tiny_scores) <= {1, 2}


def test_weighted_flow_mixture_log_density_and_draws():
    torch.manual_seed(0)
    a = GaussianMixtureBase(torch.tensor([1.0]), torch.tensor([[-3.0]]), torch.ones(1, 1, 1))
    b = GaussianMixtureBase(torch.tensor([1.0]), torch.tensor([[3.0]]), torch.ones(1, 1, 1))
    mix = FlowMixture([a, b], weights=[0.3, 0.7]).double()
    x = torch.linspace(-6, 6, 13, dtype=torch.float64).unsqueeze(1)
    expected = np.log(0.3 * stats.norm.pdf(x.numpy()[:, 0], -3) + 0.7 * stats.norm.pdf(
        x.numpy()[:, 0], 3))
    np.testing.assert_allclose(mix.log_prob(x).numpy(), expected, rtol=1e-12)
    draws = mix.sample(20_000)
    assert (draws[:, 0] > 0).double().mean().item() == pytest.approx(0.7, abs=0.015)
    with pytest.raises(ValueError, match="sum to 1"):
        FlowMixture([a, b], weights=[0.5, 0.6])
    with pytest.raises(ValueError, match="2 non-negative numbers"):
        FlowMixture([a, b], weights=[1.5, -0.5])


def test_best_mixture_weight_maximises_the_held_out_likelihood():
    rng = np.random.RandomState(0)
    rows = np.r_[rng.randn(300) - 2, rng.randn(100) + 2]
    log_p = stats.norm.logpdf(rows, -2)  # each member explains one cluster
    log_q = stats.norm.logpdf(rows, 2)
    w = best_mixture_weight(log_p, log_q)

    def objective(v):
        return -np.logaddexp(np.log(v) + log_p, np.log1p(-v) + log_q).mean()

    reference = optimize.minimize_scalar(objective, bounds=(1e-9, 1 - 1e-9), method="bounded",
                                         options={"xatol": 1e-10})
    assert w == pytest.approx(reference.x, abs=1e-5) and 0.6 < w < 0.9
    # one member better on every row: all weight on it; rows of density 0 under one member
    assert best_mixture_weight(log_p + 1.0, log_p) == 1.0
    assert best_mixture_weight(log_p, log_p + 1.0) == 0.0
    assert best_mixture_weight(np.r_[log_p, -np.inf], np.r_[log_q, 0.0]) < 1.0
    assert best_mixture_weight(np.array([-np.inf]), np.array([-np.inf])) == 1.0
    with pytest.raises(ValueError, match="equal-length 1-D"):
        best_mixture_weight(log_p, log_q[:5])
    with pytest.raises(ValueError, match="NaN"):
        best_mixture_weight(np.r_[log_p[:3], np.nan], log_q[:4])


def test_stacking_and_the_mixture_base_in_the_estimator(tmp_path):
    est = CNFDensity()
    assert est.base == "normal"
    with pytest.raises(ValueError, match="base must be one of normal, mixture"):
        CNFDensity(base="gmm").fit(np.random.RandomState(0).randn(50, 2))
    with pytest.raises(ValueError, match="stacking must be True, False or 'auto'"):
        CNFDensity(stacking="yes").fit(np.random.RandomState(0).randn(50, 2))
    with pytest.raises(ValueError, match="set validation_fraction > 0"):
        CNFDensity(stacking=True, validation_fraction=0.0, n_members=1).fit(
            np.random.RandomState(0).randn(50, 2))
    X = _three_clusters(400, np.random.RandomState(0))
    est = CNFDensity(hidden=(8,), max_iter=30, fine_tune_iter=2, n_members=1, base="mixture",
                     random_state=0, device="cpu").fit(X)
    flow, stacked = est._member_parts()[0]
    assert isinstance(flow.base, GaussianMixtureBase) and isinstance(stacked, GaussianMixtureBase)
    assert len(est.stacking_weights_) == 1 and 0.0 <= est.stacking_weights_[0] <= 1.0
    est.save(tmp_path / "m.pt")
    again = CNFDensity.load(tmp_path / "m.pt")
    assert again.stacking_weights_ == est.stacking_weights_
    assert again._member_parts()[0][0].base.n_components == flow.base.n_components
    np.testing.assert_array_equal(again.score_samples(X[:20]), est.score_samples(X[:20]))
    np.testing.assert_array_equal(again.sample(5, random_state=1), est.sample(5, random_state=1))
    plain = CNFDensity(hidden=(8,), max_iter=30, fine_tune_iter=2, stacking=False,
                       random_state=0, device="cpu").fit(X)
    assert plain.stacking_weights_ is None and plain._member_parts()[0] == (
        plain.flow_.members[0], None)


def test_a_spent_time_budget_stops_the_search_for_larger_mixtures():
    import time

    from cnflow.flows.base_density import select_gaussian_mixture

    rng = np.random.RandomState(0)
    U = _three_clusters(600, rng)
    _, free = select_gaussian_mixture(U[:400], U[400:])
    assert len(free) > 1
    _, spent = select_gaussian_mixture(U[:400], U[400:], deadline=time.perf_counter() - 1)
    assert list(spent) == [1]  # only the smallest, always fitted


def test_no_larger_mixture_is_tried_that_would_end_after_the_deadline(monkeypatch):
    """The next mixture's time is predicted as the last one's times the ratio of their
    components: on a clock that advances 0.5 s a reading, k = 1 takes 0.5 s, so k = 2, read
    to start at 1.0 s, is predicted to end at 2.0 s."""
    import types

    from cnflow.flows import base_density

    readings = iter(np.arange(0.0, 100.0, 0.5))
    monkeypatch.setattr(base_density, "time",
                        types.SimpleNamespace(perf_counter=lambda: float(next(readings))))
    U = _three_clusters(600, np.random.RandomState(0))
    _, tight = base_density.select_gaussian_mixture(U[:400], U[400:], deadline=1.5)
    assert list(tight) == [1]  # it would have started before the deadline
    readings = iter(np.arange(0.0, 100.0, 0.5))
    _, loose = base_density.select_gaussian_mixture(U[:400], U[400:], deadline=2.5)
    assert list(loose)[:2] == [1, 2]


@pytest.mark.parametrize("deadline, sizes", [(3.5, [1, 1]), (5.5, [1, 1, 2, 2])])
def test_the_maps_mixtures_grow_in_step_until_the_deadline(monkeypatch, deadline, sizes):
    """choose_preprocessing tries every map at each number of components before any at the
    next, and a deadline ends every map's search at the same size. On a clock that advances
    1 s a reading, a round takes 1 s and the next one is predicted to take it times the
    ratio of the numbers of components."""
    import types

    from cnflow import preprocessing
    from cnflow.flows import base_density

    readings = iter(range(100))
    monkeypatch.setattr(preprocessing, "time",
                        types.SimpleNamespace(perf_counter=lambda: float(next(readings))))
    tried = []
    select = base_density.select_gaussian_mixture

    def recording(U_train, U_val, components, **kwargs):
        tried.extend(components)
        return select(U_train, U_val, components, **kwargs)

    monkeypatch.setattr(base_density, "select_gaussian_mixture", recording)
    U = _three_clusters(600, np.random.RandomState(0))
    kind, scores = preprocessing.choose_preprocessing(
        U, np.arange(400), np.arange(400, 600), kinds=("whiten", "standardize"),
        deadline=deadline)
    assert tried == sizes and set(scores) == {"whiten", "standardize"}
