"""LatentODE: the encoder is a GRU run backwards over values and gaps, predictions are the
decoded ODE solution at any times (against scipy), the ELBO is the stated bound and rises
with training, series of different lengths batch correctly, and bad input is refused."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from cnflow import LatentODE
from cnflow.estimators import LatentODE as LatentODEFromEstimators
from cnflow.estimators.latent import LatentODE as LatentODEFromModule

F64 = torch.float64


def make_series(n=6, seed=0, dim=2, lo=4, hi=12):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(lo, hi))
        t = np.sort(rng.uniform(0.5, 4.0, k))
        phase = rng.uniform(0, 2 * np.pi)
        x = np.stack([np.sin(t + phase + j) for j in range(dim)], 1)
        out.append((t, x + 0.05 * rng.standard_normal(x.shape)))
    return out


@pytest.fixture(scope="module")
def tiny():
    """A float64 model fitted a few steps, with tight tolerances (for exact comparisons)."""
    series = make_series()
    model = LatentODE(latent_dim=3, rec_hidden=8, ode_hidden=8, dec_hidden=8, max_iter=3,
                      batch_size=4, rtol=1e-10, atol=1e-10, dtype="float64", device="cpu",
                      random_state=0).fit(series)
    return model, series


def test_public_name():
    assert LatentODE is LatentODEFromModule is LatentODEFromEstimators
    assert clone(LatentODE(latent_dim=3)).get_params()["latent_dim"] == 3


def manual_gru(gru, inputs):
    """The GRU equations written out (PyTorch's gate order r, z, n), over rows of inputs."""
    W_ih, W_hh, b_ih, b_hh = (getattr(gru, f"{n}_l0").detach() for n in
                              ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    h = torch.zeros(W_hh.shape[1], dtype=inputs.dtype)
    for x in inputs:
        gi, gh = W_ih @ x + b_ih, W_hh @ h + b_hh
        i_r, i_z, i_n = gi.chunk(3)
        h_r, h_z, h_n = gh.chunk(3)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        h = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
    return h


def test_encoder_reads_values_and_gaps_backwards(tiny):
    model, series = tiny
    net = model.module_
    mu, std = model.posterior(series)
    for i, (t, x) in enumerate(series):
        tau = (t - model.t0_) / model.time_scale_
        gaps = np.diff(tau, prepend=0.0)  # the first gap is from t0
        u = (x - model.mean_) / model.scale_
        inputs = torch.as_tensor(np.concatenate([u, gaps[:, None]], 1)[::-1].copy())
        h = manual_gru(net.gru, inputs)
        ref_mu, ref_logvar = net.to_posterior(h).detach().chunk(2)
        np.testing.assert_allclose(mu[i], ref_mu.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(std[i], (0.5 * ref_logvar).exp().numpy(), rtol=1e-10)


def test_series_of_different_lengths_batch_as_if_alone(tiny):
    model, series = tiny
    assert len({len(t) for t, _ in series}) > 1
    mu, std = model.posterior(series)
    times = np.linspace(-1.0, 6.0, 9)
    batch = model.predict(series, times)
    for i, s in enumerate(series):
        mu_i, std_i = model.posterior([s])
        np.testing.assert_allclose(mu[i], mu_i[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(std[i], std_i[0], rtol=1e-12, atol=1e-12)
        # one solve over the union of times vs a solve of this series alone
        np.testing.assert_allclose(batch[i], model.predict([s], times)[0], rtol=1e-7,
                                   atol=1e-8)


def test_predict_is_the_decoded_ode_solution_at_any_times(tiny):
    """Against an independent solve: scipy's DOP853 of the dynamics network from the posterior
    mean, decoded and put back into the caller's units; times before t0, inside the window,
    past it, unsorted and repeated."""
    model, series = tiny
    net = model.module_
    times = np.array([6.0, -0.7, 1.3, 2.25, 1.3, 9.5, model.t0_])
    pred = model.predict(series[:2], times)
    assert pred.shape == (2, len(times), 2)
    mu, _ = model.posterior(series[:2])

    def rhs(t, z):
        with torch.no_grad():
            return net.dynamics(torch.tensor(t), torch.as_tensor(z)).numpy()

    for i in range(2):
        for j, tq in enumerate(times):
            tau = (tq - model.t0_) / model.time_scale_
            z = mu[i] if tau == 0 else solve_ivp(rhs, (0.0, tau), mu[i], method="DOP853",
                                                 rtol=1e-12, atol=1e-12).y[:, -1]
            with torch.no_grad():
                x = net.decoder(torch.as_tensor(z)).numpy() * model.scale_ + model.mean_
            np.testing.assert_allclose(pred[i, j], x, rtol=1e-7, atol=1e-8)


def test_prediction_shapes_and_order(tiny):
    model, series = tiny
    times = np.array([3.0, 0.1, 7.0, 2.0])
    shared = model.predict(series, times)
    assert shared.shape == (len(series), 4, 2)
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(model.predict(series, times[perm]), shared[:, perm],
                               rtol=1e-8, atol=1e-10)
    per_series = model.predict(series[:3], [np.array([1.0]), np.linspace(0, 5, 7),
                                            np.array([4.0, -2.0])])
    assert [p.shape for p in per_series] == [(1, 2), (7, 2), (2, 2)]
    np.testing.assert_allclose(per_series[1], model.predict(series[1:2], np.linspace(0, 5, 7))[0],
                               rtol=1e-7, atol=1e-8)
    draws = model.sample(series[:2], times, n_samples=5, random_state=0)
    assert draws.shape == (5, 2, 4, 2)
    np.testing.assert_array_equal(draws, model.sample(series[:2], times, n_samples=5,
                                                      random_state=0))
    assert model.predict(series, [0.25]).shape == (len(series), 1, 2)  # a plain list


def test_one_feature_series_as_1d_values():
    rng = np.random.default_rng(1)
    series = [(np.sort(rng.uniform(0, 3, k)), rng.standard_normal(k)) for k in (3, 5, 8)]
    model = LatentODE(latent_dim=2, rec_hidden=4, ode_hidden=4, dec_hidden=4, max_iter=2,
                      random_state=0).fit(series)
    assert model.n_features_in_ == 1
    assert model.predict(series, np.linspace(-1, 5, 11)).shape == (3, 11, 1)


def test_elbo_is_the_stated_bound(tiny):
    """E_q[log N(x; g(z(t)), (σ·scale)²)] − KL(q ‖ N(0, I)) in the caller's units, estimated
    here with torch.distributions and our own draws, against LatentODE.elbo (both Monte
    Carlo: they must agree within a few standard errors)."""
    model, series = tiny
    n = 4000
    mu, std = model.posterior(series[:2])
    sigma = model.obs_std * model.scale_
    rng = np.random.default_rng(3)
    for i, (t, x) in enumerate(series[:2]):
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(torch.as_tensor(mu[i]), torch.as_tensor(std[i])),
            torch.distributions.Normal(0.0, 1.0)).sum().item()
        z0 = mu[i] + std[i] * rng.standard_normal((n, len(mu[i])))
        tau = torch.as_tensor((t - model.t0_) / model.time_scale_)
        with torch.no_grad():
            net = model.module_
            path = net.latent_path(torch.as_tensor(z0), tau)  # (n_times, n, L)
            x_hat = net.decoder(path).numpy() * model.scale_ + model.mean_
        log_lik = torch.distributions.Normal(torch.as_tensor(x_hat), torch.as_tensor(sigma)
                                             ).log_prob(torch.as_tensor(x)[:, None]).sum((0, 2))
        ref, ref_se = log_lik.mean().item() - kl, log_lik.std().item() / np.sqrt(n)
        ours = model.elbo([series[i]], n_samples=n, random_state=0)[0]
        assert abs(ours - ref) < 5 * np.sqrt(2) * ref_se, (ours, ref, ref_se)


def test_elbo_rises_with_training():
    series = make_series(n=8, seed=2, dim=1, lo=5, hi=9)
    settings = dict(latent_dim=2, rec_hidden=16, ode_hidden=16, dec_hidden=16, batch_size=8,
                    lr=2e-2, random_state=0)
    before = LatentODE(max_iter=1, **settings).fit(series)
    after = LatentODE(max_iter=60, **settings).fit(series)
    elbo_before = before.elbo(series, n_samples=64, random_state=0).mean()
    elbo_after = after.elbo(series, n_samples=64, random_state=0).mean()
    assert elbo_after > elbo_before + 0.5 * sum(len(t) for t, _ in series) / len(series)
    losses = [h["loss"] for h in after.history_]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert all(h["nfe_forward"] > 0 for h in after.history_)


def test_fits_are_repeatable():
    series = make_series(n=4)
    a = LatentODE(latent_dim=2, rec_hidden=4, ode_hidden=4, dec_hidden=4, max_iter=3,
                  random_state=5).fit(series)
    b = clone(a).fit(series)
    np.testing.assert_array_equal(a.predict(series, [0.0, 2.0]), b.predict(series, [0.0, 2.0]))


@pytest.mark.parametrize("bad,match", [
    ([(np.array([0.0, 2.0, 1.0]), np.zeros((3, 2)))], "not increasing"),
    ([(np.array([0.0, 1.0, 1.0]), np.zeros((3, 2)))], "duplicate time"),
    ([(np.array([0.0, 1.0]), np.array([[0.0, np.nan], [1.0, 1.0]]))], "values contain NaN"),
    ([(np.array([0.0, np.inf]), np.zeros((2, 2)))], "times contain NaN"),
    ([(np.array([0.0, 1.0, 2.0]), np.zeros((2, 2)))], "to match 3 times"),
    ([(np.zeros((2, 2)), np.zeros((2, 2)))], "times must be 1-D"),
    ([(np.array([]), np.zeros((0, 2)))], "no observations"),
    ([(np.array([0.0, 1.0]), np.zeros((2, 2))), (np.array([0.0]), np.zeros((1, 3)))],
     r"series\[1\] has 3 features, expected 2"),
    ([], "empty"),
    ("abc", "list of"),
    ([np.zeros(3)], "pair"),
])
def test_bad_series_raise_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        LatentODE(max_iter=1).fit(bad)


def test_bad_use_of_a_fitted_model(tiny):
    model, series = tiny
    with pytest.raises(ValueError, match="1 features, expected 2"):
        model.predict([(np.array([0.0, 1.0]), np.zeros(2))], [0.5])
    with pytest.raises(ValueError, match="times contain NaN"):
        model.predict(series, [0.0, np.nan])
    with pytest.raises(ValueError, match="2 arrays for 6 series"):
        model.predict(series, [np.array([1.0]), np.array([2.0])])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        model.predict(series, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not increasing"):
        model.predict([(np.array([1.0, 0.0]), np.zeros((2, 2)))], [0.5])
    with pytest.raises(ValueError, match="n_samples"):
        model.sample(series, [0.5], n_samples=0)


def test_use_before_fit_is_refused():
    model = LatentODE()
    series = make_series(n=2)
    for call in (lambda: model.predict(series, [1.0]), lambda: model.elbo(series),
                 lambda: model.sample(series, [1.0]), lambda: model.posterior(series)):
        with pytest.raises(NotFittedError, match="not fitted"):
            call()
    assert issubclass(NotFittedError, ValueError)


@pytest.mark.parametrize("params,match", [
    ({"latent_dim": 0}, "latent_dim"),
    ({"obs_std": -1.0}, "obs_std"),
    ({"method": "rk4"}, "method must be an adaptive method"),
    ({"max_iter": True}, "max_iter must be a positive integer"),
    ({"rtol": -1.0}, "rtol"),
    ({"dtype": "float16"}, "dtype"),
    ({"lr_schedule": "step"}, "lr_schedule"),
])
def test_bad_parameters_raise_value_error(params, match):
    with pytest.raises(ValueError, match=match):
        LatentODE(**params).fit(make_series(n=2))


def test_adjoint_gradients_of_the_elbo_equal_backprop(tiny):
    """The training loss's gradients with adjoint=True (one backward solve per interval
    between the batch's times) equal backpropagation through the solver, in float64."""
    from cnflow.estimators.series import check_series, pad_series

    model, series = tiny
    net = model.module_
    batch = pad_series(check_series(series), model.t0_, model.time_scale_, model.mean_,
                 model.scale_, F64, torch.device("cpu"))
    grads = {}
    for adjoint in (False, True):
        net.adjoint = adjoint
        log_lik, kl = net.elbo_terms(batch, 2, torch.Generator().manual_seed(0))
        grads[adjoint] = torch.autograd.grad((log_lik - kl).sum(), list(net.parameters()))
        if adjoint:
            assert net.nfe_backward > 0
    net.adjoint = False
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_solver_is_the_deprecated_name_of_method():
    with pytest.warns(DeprecationWarning, match="use method"):
        model = LatentODE(solver="bosh3", max_iter=1, random_state=0).fit(make_series(n=2))
    assert model.module_.method == "bosh3"


# ---------------------------------------------------------------- save and load
def fit_small(dtype="float32", **kw):
    series = make_series(n=4, dim=2, lo=3, hi=7)
    settings = dict(latent_dim=2, rec_hidden=4, ode_hidden=4, dec_hidden=4, max_iter=2,
                    batch_size=4, dtype=dtype, device="cpu", random_state=0)
    return LatentODE(**{**settings, **kw}).fit(series), series


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, series = fit_small()
    path = tmp_path_factory.mktemp("latent") / "latent.pt"
    model.save(path)
    return model, series, path


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_round_trip_gives_the_same_model(dtype, tmp_path):
    model, series = fit_small(dtype)
    path = tmp_path / "latent.pt"
    model.save(path)
    loaded = LatentODE.load(path)
    assert type(loaded) is LatentODE and loaded.get_params() == model.get_params()
    assert (loaded.t0_, loaded.time_scale_, loaded.n_features_in_, loaded.n_iter_,
            loaded.device_) == (model.t0_, model.time_scale_, model.n_features_in_,
                                model.n_iter_, model.device_)
    assert loaded.history_ == model.history_ and len(loaded.history_) == 2
    np.testing.assert_array_equal(loaded.mean_, model.mean_)
    np.testing.assert_array_equal(loaded.scale_, model.scale_)
    for (name, a), (_, b) in zip(model.module_.state_dict().items(),
                                 loaded.module_.state_dict().items(), strict=True):
        assert a.dtype == b.dtype == (F64 if dtype == "float64" else torch.float32), name
        assert torch.equal(a, b), name  # float64 weights are not rounded through float32
    times = np.array([5.0, -0.5, 1.0, 2.5])
    np.testing.assert_array_equal(loaded.predict(series, times), model.predict(series, times))
    np.testing.assert_array_equal(loaded.elbo(series, n_samples=3, random_state=4),
                                  model.elbo(series, n_samples=3, random_state=4))
    for a, b in zip(loaded.posterior(series), model.posterior(series), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.sample(series[:2], times, n_samples=2, random_state=1),
                                  model.sample(series[:2], times, n_samples=2, random_state=1))


def test_a_loaded_model_is_used_and_saved_again(saved, tmp_path):
    model, series, path = saved
    loaded = LatentODE.load(path, device="cpu")
    new = make_series(n=2, seed=9, dim=2)
    assert np.isfinite(loaded.score(new))  # series it has not seen, fresh ELBO draws
    np.testing.assert_array_equal(loaded.predict(new, [0.3, 7.0]), model.predict(new, [0.3, 7.0]))
    loaded.save(tmp_path / "again.pt")
    again = LatentODE.load(tmp_path / "again.pt")
    np.testing.assert_array_equal(again.elbo(new, random_state=0), model.elbo(new, random_state=0))
    refit = loaded.fit(series)  # and fits again from scratch, as clone(model).fit would
    np.testing.assert_array_equal(refit.predict(series, [1.0]), model.predict(series, [1.0]))


def test_save_before_fit_is_refused(tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        LatentODE().save(tmp_path / "latent.pt")
    assert not list(tmp_path.iterdir())


def _rewritten(good, path, change):
    data = torch.load(good, weights_only=True)
    change(data)
    torch.save(data, path)


@pytest.mark.parametrize("kind, message", [
    ("truncated", "not a complete torch.save file"),
    ("empty", "it is empty"),
    ("foreign torch dict", "is not a file written by LatentODE.save"),
    ("another estimator", "holds a CNFDensity, not a LatentODE"),
    ("missing parts", "is damaged: missing 'mean'"),
    ("wrong shapes", r"is damaged: mean and scale of shapes \(2,\) and \(2,\) for 3 features"),
    ("wrong weights", "is damaged: Error"),
    ("bad parameter", "is damaged: dtype must be"),
])
def test_a_damaged_or_foreign_file_is_a_model_file_error(saved, tmp_path, kind, message):
    from cnflow import ModelFileError

    _, _, good = saved
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign torch dict":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "another estimator":
        _rewritten(good, path, lambda d: d.update(estimator="CNFDensity"))
    elif kind == "missing parts":
        _rewritten(good, path, lambda d: d.pop("mean"))
    elif kind == "wrong shapes":
        _rewritten(good, path, lambda d: d.update(n_features_in=3))
    elif kind == "wrong weights":
        _rewritten(good, path, lambda d: d["state_dict"].update(
            {"to_posterior.weight": torch.zeros(1, 1)}))
    else:
        _rewritten(good, path, lambda d: d["params"].update(dtype="float16"))
    with pytest.raises(ModelFileError, match=message) as info:
        LatentODE.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="no model file"):
        LatentODE.load(tmp_path / "absent.pt")
