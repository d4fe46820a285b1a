"""Flow matching: the loss against its definition, its minimiser against the closed-form
Gaussian field, and the trained density against Monte Carlo integration.

For data x ~ N(μ, σ²I) and z ~ N(0, I) independent, the straight path x_s = (1 − s)x + s z
(s = t/T) is jointly Gaussian with (z − x), so the marginal velocity E[(z − x)/T | x_s] is
affine in x_s:

    u_s(y) = (−μ + c(s) (y − (1 − s)μ)) / T,    c(s) = (s − (1 − s)σ²) / ((1 − s)²σ² + s²).

Its flow carries N(μ, σ²I) at t = 0 to N(0, I) at t = T, so a CNF with this field must give
the Gaussian log-density exactly.
"""

import math

import numpy as np
import pytest
import torch

from cnflow import CNF, CNFDensity
from cnflow.datasets import make_toy
from cnflow.training import TrainingFault

D64 = torch.float64


class GaussianMarginalField(torch.nn.Module):
    """The closed-form marginal velocity of the straight paths from N(μ, σ²I) to N(0, I)."""

    def __init__(self, mu, sigma, T, shift=0.0):
        super().__init__()
        self.mu = torch.as_tensor(mu, dtype=D64)
        self.sigma2, self.T, self.shift = sigma ** 2, T, shift
        self.weight = torch.nn.Parameter(torch.zeros((), dtype=D64))  # gives the CNF a dtype

    def forward(self, t, y):
        s = torch.as_tensor(t, dtype=D64).reshape(-1, 1) / self.T
        c = (s - (1 - s) * self.sigma2) / ((1 - s) ** 2 * self.sigma2 + s ** 2)
        return (-self.mu + c * (y - (1 - s) * self.mu)) / self.T + self.shift + self.weight


def gaussian_log_prob(x, mu, sigma):
    d = x.shape[-1]
    return (-0.5 * ((x - mu) / sigma).square().sum(-1)
            - d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi))


@pytest.mark.parametrize("T, gamma", [(1.0, 1.0), (2.5, 1.0), (2.5, 1.5)])
def test_loss_equals_its_definition(T, gamma):
    """Data at t = 0, base at t = T: the loss regresses f(s T, (1−s)x + s z) on (z − x)/T,
    with s = u^γ, u ~ U(0, 1)."""
    flow = CNF(3, hidden=(16,), T=T).double()
    x = torch.randn(50, 3, dtype=D64)
    loss = flow.flow_matching_loss(x, generator=torch.Generator().manual_seed(7),
                                   time_exponent=gamma)
    g = torch.Generator().manual_seed(7)
    z = torch.randn(50, 3, generator=g, dtype=D64)
    s = torch.rand(50, 1, generator=g, dtype=D64) ** gamma
    expected = (flow.net(s * T, (1 - s) * x + s * z) - (z - x) / T).square().sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    assert (flow.nfe_forward, flow.nfe_backward) == (1, 0)
    loss.backward()
    assert all(p.grad is not None for p in flow.net.parameters())


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_closed_form_minimiser_gives_the_exact_density(T):
    """The loss's minimiser for Gaussian data, integrated by log_prob, is that Gaussian."""
    mu, sigma = torch.tensor([1.5, -0.5], dtype=D64), 0.6
    flow = CNF(2, net=GaussianMarginalField(mu, sigma, T), T=T, rtol=1e-9, atol=1e-9)
    x = mu + sigma * torch.randn(200, 2, dtype=D64) * 1.5
    torch.testing.assert_close(flow.log_prob(x), gaussian_log_prob(x, mu, sigma),
                               rtol=0, atol=1e-6)
    samples = flow.sample(4000)
    torch.testing.assert_close(samples.mean(0), mu, rtol=0, atol=0.05)
    torch.testing.assert_close(samples.std(0), torch.full((2,), sigma, dtype=D64),
                               rtol=0, atol=0.03)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_closed_form_field_minimises_the_loss(gamma):
    """Perturbing the minimiser by a constant c raises the loss by exactly ‖c‖² (in
    expectation; here on one large fixed draw, to Monte Carlo accuracy), whatever the law of
    the times: the field is the minimiser at every t."""
    mu, sigma, T = torch.tensor([1.0, 2.0], dtype=D64), 0.5, 1.0
    x = mu + sigma * torch.randn(200_000, 2, dtype=D64)
    losses = {}
    for shift in (0.0, 0.3):
        flow = CNF(2, net=GaussianMarginalField(mu, sigma, T, shift=shift), T=T)
        losses[shift] = float(flow.flow_matching_loss(
            x, generator=torch.Generator().manual_seed(0), time_exponent=gamma).detach())
    assert losses[0.3] - losses[0.0] == pytest.approx(2 * 0.3 ** 2, rel=0.03)


def test_time_exponent_reaches_the_loss_and_is_checked(monkeypatch):
    seen = []
    original = CNF.flow_matching_loss

    def spy(self, x, **kwargs):
        seen.append(kwargs.get("time_exponent"))
        return original(self, x, **kwargs)

    monkeypatch.setattr(CNF, "flow_matching_loss", spy)
    X = make_toy("moons", 300, random_state=0)
    CNFDensity(hidden=(8,), max_iter=3, fine_tune_iter=0, time_exponent=2.5, n_members=1,
               random_state=0, device="cpu").fit(X)
    assert len(seen) == 3 and set(seen) == {2.5}  # 3 training steps (validation: likelihood)
    assert CNFDensity().time_exponent == 1.5
    for bad in (0, -1.0, float("nan"), "2", True):
        with pytest.raises(ValueError, match="time_exponent must be a positive number"):
            CNFDensity(max_iter=1, time_exponent=bad).fit(X)
    with pytest.raises(ValueError, match="time_exponent must be a positive number"):
        CNF(2).flow_matching_loss(torch.randn(4, 2), time_exponent=0.0)


def test_estimator_loss_decreases_and_density_integrates_to_one():
    X = make_toy("8gaussians", 2000, random_state=0)
    est = CNFDensity(objective="flow_matching", hidden=(32, 32), max_iter=600, batch_size=256,
                     rtol=1e-6, atol=1e-6, random_state=0, device="cpu").fit(X)
    fm = [h for h in est.history_ if h["objective"] == "flow_matching"]
    losses = np.array([h["loss"] for h in fm])
    assert len(fm) == 600 and est.n_iter_ == 606  # and 600 // 100 fine-tuning steps
    assert losses[-100:].mean() < 0.8 * losses[:10].mean()
    assert {h["nfe_forward"] for h in fm} == {1}
    xs = np.linspace(-6, 6, 150)
    xx, yy = np.meshgrid(xs, xs)
    dens = np.exp(est.score_samples(np.stack([xx.ravel(), yy.ravel()], 1)))
    assert dens.sum() * (xs[1] - xs[0]) ** 2 == pytest.approx(1.0, abs=0.03)


def test_validation_is_the_held_out_likelihood_every_100_steps():
    X = make_toy("moons", 600, random_state=0)
    est = CNFDensity(objective="flow_matching", hidden=(16,), max_iter=300, batch_size=128,
                     fine_tune_iter=0, n_members=1, stacking=False, random_state=0,
                     device="cpu").fit(X)
    entries = [h for h in est.history_ if "val_loss" in h]
    assert [h["iteration"] for h in entries] == [100, 200, 300]
    flow, u = est.flow_, est._transform(X[:120])[0]
    with torch.no_grad():
        value = float(est._validation_loss(flow, u))
        assert value == float(est._validation_loss(flow, u))  # deterministic
        # the exact negative log-likelihood at fine_tune_tol
        flow.rtol = flow.atol = est.fine_tune_tol
        expected = -float(flow.log_prob(u).mean())
    assert value == pytest.approx(expected, rel=1e-12)


def test_bad_objective_and_lr():
    with pytest.raises(ValueError, match="objective must be one of flow_matching"):
        CNFDensity(objective="mle").fit(np.random.default_rng(0).random((10, 2)))
    with pytest.raises(ValueError, match="lr must be a positive number or 'auto'"):
        CNFDensity(lr="fast").fit(np.random.default_rng(0).random((10, 2)))
    with pytest.raises(ValueError, match="lr_schedule must be one of auto"):
        CNFDensity(lr_schedule="linear").fit(np.random.default_rng(0).random((10, 2)))


def _nll(est, X):
    return -float(est.score(X))


def test_fine_tuning_by_likelihood_follows_flow_matching():
    X = make_toy("8gaussians", 2000, random_state=0)
    common = dict(hidden=(16, 16), max_iter=300, batch_size=256, lr=1e-2, random_state=0,
                  device="cpu", preprocessing="standardize", validation_fraction=0.0)
    plain = CNFDensity(fine_tune_iter=0, **common).fit(X)
    tuned = CNFDensity(fine_tune_iter=40, **common).fit(X)
    objectives = [h["objective"] for h in tuned.history_]
    assert objectives == ["flow_matching"] * 300 + ["maximum_likelihood"] * 40
    assert [h["iteration"] for h in tuned.history_] == list(range(1, 341))
    assert tuned.n_iter_ == 340 and plain.n_iter_ == 300
    # the flow-matching phase is the same fit, step for step
    assert [h["loss"] for h in tuned.history_[:300]] == [h["loss"] for h in plain.history_]
    fine = tuned.history_[300:]
    assert fine[0]["lr"] == pytest.approx(5e-3)  # half the flow-matching lr, then cosine
    assert fine[-1]["lr"] == pytest.approx(5e-3 * (1 + math.cos(math.pi * 39 / 40)) / 2)
    # two features: backpropagation through the solver, no backward solve
    assert all(h["nfe_forward"] > 1 and h["nfe_backward"] == 0 for h in fine)
    # the solver's settings are the estimator's again once fine-tuning is over
    assert (tuned.flow_.rtol, tuned.flow_.atol) == (tuned.rtol, tuned.atol)
    assert tuned.flow_.adjoint is True
    X_test = make_toy("8gaussians", 4000, random_state=1)
    assert _nll(tuned, X_test) < _nll(plain, X_test) - 0.05


def test_fine_tuning_takes_the_last_quarter_of_a_time_budget():
    X = make_toy("moons", 1000, random_state=0)
    est = CNFDensity(hidden=(16,), max_iter=10**6, batch_size=128, max_seconds=2.0,
                     validation_fraction=0.0, random_state=0, device="cpu").fit(X)
    fm = [h for h in est.history_ if h["objective"] == "flow_matching"]
    ml = [h for h in est.history_ if h["objective"] == "maximum_likelihood"]
    assert sum(h["seconds"] for h in fm) <= 1.5
    assert len(ml) >= 1 and sum(h["seconds"] for h in ml) <= 0.5 + 2 * max(
        h["seconds"] for h in ml)
    assert est.history_[-1] is ml[-1]


def test_fault_while_fine_tuning_keeps_the_flow_matching_fit(monkeypatch):
    X = make_toy("moons", 500, random_state=0)
    est = CNFDensity(hidden=(16,), max_iter=50, fine_tune_iter=5, batch_size=100,
                     validation_fraction=0.0, random_state=0, device="cpu")
    calls = []

    def failing(flow, u):
        calls.append(1)
        return torch.tensor(float("nan"), requires_grad=True)

    monkeypatch.setattr(est, "_likelihood_loss", failing)
    with pytest.raises(TrainingFault, match="training loss became nan at iteration 1"):
        est.fit(X)
    assert calls == [1]
    assert est.n_iter_ == 50
    assert {h["objective"] for h in est.history_} == {"flow_matching"}
    assert (est.flow_.rtol, est.flow_.atol) == (est.rtol, est.atol)
    assert np.isfinite(est.score_samples(X[:10])).all()


def test_fine_tuning_gradients_by_adjoint_or_backpropagation():
    X2 = make_toy("moons", 400, random_state=0)
    X9 = np.random.default_rng(0).normal(size=(400, 9))
    common = dict(hidden=(8,), max_iter=4, fine_tune_iter=2, batch_size=100, random_state=0,
                  n_members=1, validation_fraction=0.0, stacking=False, device="cpu")

    def backward_nfe(est):
        return [h["nfe_backward"] for h in est.history_
                if h["objective"] == "maximum_likelihood"]

    # "auto": backpropagation up to 8 features, the adjoint method above
    fitted = CNFDensity(**common).fit(X2)
    assert fitted.settings_.fine_tune_adjoint is False
    assert backward_nfe(fitted) == [0, 0]
    assert all(n > 0 for n in backward_nfe(CNFDensity(**common).fit(X9)))
    forced = CNFDensity(fine_tune_adjoint=True, **common).fit(X2)
    assert all(n > 0 for n in backward_nfe(forced))
    assert forced.flow_.adjoint is True
    # the estimator's own adjoint setting is restored (and still used for scoring's gradients)
    est = CNFDensity(fine_tune_adjoint=True, adjoint=False, **common).fit(X9)
    assert all(n > 0 for n in backward_nfe(est)) and est.flow_.adjoint is False
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="fine_tune_adjoint must be True, False or 'auto'"):
            CNFDensity(fine_tune_adjoint=bad).fit(X2)


def test_hidden_auto_is_per_objective():
    X = make_toy("moons", 300, random_state=0)
    est = CNFDensity(max_iter=2, fine_tune_iter=0, batch_size=100, random_state=0,
                     n_members=1, stacking=False, device="cpu").fit(X)
    widths = [layer.linear.out_features for layer in est.flow_.net.layers]
    assert widths == [64, 64, 64, 64, 64, 2]
    assert est.settings_.hidden == (64, 64, 64, 64, 64)
    for bad in ("wide", 64, (64, 0), (64, 2.5), (True,)):
        with pytest.raises(ValueError, match="hidden must be 'auto' or a sequence"):
            CNFDensity(hidden=bad).fit(X)


def test_fine_tuning_settings():
    X = np.random.default_rng(0).random((10, 2))
    for bad in (-1, 2.5, "some"):
        with pytest.raises(ValueError, match="fine_tune_iter must be a non-negative integer"):
            CNFDensity(fine_tune_iter=bad).fit(X)
    with pytest.raises(ValueError, match="fine_tune_iter follows flow matching"):
        CNFDensity(objective="maximum_likelihood", fine_tune_iter=5).fit(X)
    for bad in (0, -1e-3, "tight"):
        with pytest.raises(ValueError, match="fine_tune_tol must be a positive number"):
            CNFDensity(fine_tune_tol=bad).fit(X)


def test_auto_batch_size_is_per_objective(monkeypatch):
    X = make_toy("moons", 3000, random_state=0)
    seen = []
    est = CNFDensity(hidden=(8,), max_iter=200, validation_fraction=0.0, random_state=0,
                     device="cpu")  # the "auto" batches do not depend on held-out rows
    original = est._likelihood_loss
    monkeypatch.setattr(est, "_likelihood_loss",
                        lambda flow, u: seen.append(len(u)) or original(flow, u))
    sizes = []
    original_fm = CNF.flow_matching_loss
    monkeypatch.setattr(CNF, "flow_matching_loss",
                        lambda self, x, **kw: sizes.append(len(x)) or original_fm(self, x, **kw))
    est.fit(X)
    assert set(sizes) == {2048} and len(sizes) == 200
    assert seen == [512] * 2  # 200 // 100 fine-tuning steps
    seen.clear(), sizes.clear()
    est.set_params(batch_size=100).fit(X)
    assert set(sizes) == {100} and seen == [100] * 2


def test_ctrl_c_during_flow_matching_stops_the_whole_fit(monkeypatch):
    """An interruption in the first phase skips fine-tuning (and any further member): the
    fit returns at once with the best parameters so far and a warning."""
    X = make_toy("moons", 500, random_state=0)
    est = CNFDensity(hidden=(16,), max_iter=50, fine_tune_iter=5, batch_size=100,
                     validation_fraction=0.0, random_state=0, device="cpu")
    steps, fine_tuning = [], []
    original = CNF.flow_matching_loss

    def interrupted(self, x, **kw):
        steps.append(1)
        if len(steps) == 10:
            raise KeyboardInterrupt
        return original(self, x, **kw)

    monkeypatch.setattr(CNF, "flow_matching_loss", interrupted)
    monkeypatch.setattr(est, "_likelihood_loss", lambda flow, u: fine_tuning.append(1))
    with pytest.warns(RuntimeWarning, match="interrupted after 9 iterations"):
        est.fit(X)
    assert fine_tuning == [] and est.n_iter_ == 9
    assert {h["objective"] for h in est.history_} == {"flow_matching"}
    assert np.isfinite(est.score_samples(X[:10])).all()
