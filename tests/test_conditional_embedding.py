"""ConditionalCNFDensity with user modules: an embedding network from raw features (images)
to the context, trained with the flow, and a velocity field of the user's; both given as a
registered name, a factory or a module, and saved as weights plus a name (never code)."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

from cnflow import ConditionalCNFDensity, ModelFileError
from cnflow.nn import register_module, registered_module, registered_name, unregister_module

SHAPE = (1, 4, 8)
QUICK = dict(max_iter=25, fine_tune_iter=2, validation_fraction=0.0, random_state=0,
             device="cpu")


class TinyCNN(nn.Module):
    """(n, 1, 4, 8) images to a context of 3 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.out = nn.Linear(4 * 4 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.conv(x)).flatten(1))


class Field(nn.Module):
    """A velocity field f(t, z, context) of one target and a context of 3 features."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1 + 1 + 3, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, t, z, context):
        t = torch.as_tensor(t, dtype=z.dtype).reshape(-1, 1).expand(len(z), 1)
        return self.mlp(torch.cat([z, t, context], dim=1))


def _images(n: int, seed: int):
    """Images whose first row of pixels is always 0, and y = 2 s + 1 + 0.5 ε with s the
    mean of two pixels: a linear-Gaussian p(y | x)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 16, size=(n, *SHAPE))
    X[:, :, 0, :] = 0.0
    s = X[:, 0, 2, 3:5].mean(axis=1) / 8 - 1
    return X, 2 * s + 1 + 0.5 * rng.normal(size=n)


@pytest.fixture(scope="module")
def fitted():
    X, y = _images(300, 0)
    return X, y, ConditionalCNFDensity(embedding=TinyCNN, hidden=(16,), **QUICK).fit(X, y)


@pytest.fixture
def registered():
    name = "tests.conditional_embedding:TinyCNN"
    register_module(name, TinyCNN)
    yield name
    unregister_module(name)


def test_fit_score_sample_predict_shapes(fitted):
    X, y, est = fitted
    assert est.feature_shape_ == SHAPE and est.n_features_in_ == 32
    assert est.context_features_ == 3 and est.flow_.flow.context_features == 3
    assert est.score_samples(X[:5], y[:5]).shape == (5,)
    assert np.isfinite(est.score_samples(X[:5], y[:5])).all()
    draws, log_p = est.sample(X[:3], n_samples=4, random_state=0, return_log_prob=True)
    assert draws.shape == (3, 4) and log_p.shape == (3, 4)
    scored = est.score_samples(np.repeat(X[:3], 4, axis=0), draws.reshape(-1))
    np.testing.assert_allclose(log_p.reshape(-1), scored, atol=1e-3)
    assert est.predict(X[:6]).shape == (6,)
    with pytest.raises(ValueError, match=r"rows of shape \(32,\), but the model was fitted"):
        est.score_samples(X[:3].reshape(3, -1), y[:3])


def test_the_features_are_scaled_by_one_global_mean_and_scale(fitted):
    """A constant pixel has no scale of its own: every entry is mapped by the mean and
    standard deviation of all of them."""
    X, _, est = fitted
    context = est.preprocessor_.context
    np.testing.assert_allclose(context.mean_, np.full(32, X.mean()))
    np.testing.assert_allclose(context.scale_, np.full(32, X.std()))


@pytest.mark.parametrize("objective", ["flow_matching", "maximum_likelihood"])
def test_the_embedding_is_trained_jointly(objective):
    """The fitted embedding's weights moved from the instance's (deep-copied, never trained
    itself), by flow matching and by maximum likelihood through the adjoint method."""
    X, y = _images(120, 1)
    start = TinyCNN()
    initial = {k: v.clone() for k, v in start.state_dict().items()}
    settings = {**QUICK, "max_iter": 3 if objective == "maximum_likelihood" else 10}
    if objective == "maximum_likelihood":
        settings.update(fine_tune_iter="auto", rtol=1e-3, atol=1e-3)
    est = ConditionalCNFDensity(embedding=start, hidden=(8,), objective=objective,
                                **settings).fit(X, y)
    fitted = est.flow_.embedding.state_dict()
    assert est.flow_.embedding is not start
    for name, value in initial.items():
        assert torch.equal(start.state_dict()[name], value)  # the user's module untouched
        assert not torch.allclose(fitted[name].float(), value)


@pytest.mark.parametrize("x_row", [0, 7])
def test_the_density_integrates_to_one_over_y(fitted, x_row):
    X, _, est = fitted
    draws = est.sample(X[x_row:x_row + 1], n_samples=200, random_state=0)[0]
    centre, spread = draws.mean(), draws.std()
    grid = np.linspace(centre - 10 * spread, centre + 10 * spread, 1201)
    density = np.exp(est.score_samples(np.repeat(X[x_row:x_row + 1], len(grid), axis=0),
                                       grid))
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=0.01)


def test_save_and_load_by_a_registered_name(fitted, registered, tmp_path):
    X, y, est = fitted
    assert registered_name(TinyCNN) == registered
    est.save(tmp_path / "model.pt")
    saved = torch.load(tmp_path / "model.pt", weights_only=True)  # weights and names only
    assert saved["params"]["embedding"] == registered and saved["params"]["net"] is None
    loaded = ConditionalCNFDensity.load(tmp_path / "model.pt")
    np.testing.assert_allclose(loaded.score_samples(X[:20], y[:20]),
                               est.score_samples(X[:20], y[:20]), rtol=0, atol=1e-6)
    assert loaded.embedding == registered and loaded.feature_shape_ == SHAPE
    # a model fitted with the name itself records it too
    by_name = ConditionalCNFDensity(embedding=registered, hidden=(8,),
                                    **{**QUICK, "max_iter": 2}).fit(X[:40], y[:40])
    by_name.save(tmp_path / "by_name.pt")
    again = ConditionalCNFDensity.load(tmp_path / "by_name.pt")
    np.testing.assert_allclose(again.score_samples(X[:5], y[:5]),
                               by_name.score_samples(X[:5], y[:5]), rtol=0, atol=1e-6)


def test_save_and_load_with_a_factory_and_the_missing_module_error(fitted, tmp_path):
    X, y, est = fitted
    assert registered_module(f"{__name__}:TinyCNN") is None
    est.save(tmp_path / "model.pt")
    name = f"{TinyCNN.__module__}:{TinyCNN.__qualname__}"
    message = (f"model.pt was fitted with the embedding '{name}', which is not registered "
               f"here: call cnflow.nn.register_module('{name}', factory) or pass "
               "load(..., embedding=factory)")
    with pytest.raises(ModelFileError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace(".", r"\.")):
        ConditionalCNFDensity.load(tmp_path / "model.pt")
    loaded = ConditionalCNFDensity.load(tmp_path / "model.pt", embedding=TinyCNN)
    np.testing.assert_allclose(loaded.score_samples(X[:20], y[:20]),
                               est.score_samples(X[:20], y[:20]), rtol=0, atol=1e-6)

    class Wider(TinyCNN):  # another architecture: the weights do not fit it
        def __init__(self) -> None:
            super().__init__()
            self.out = nn.Linear(4 * 4 * 8, 5)

    with pytest.raises(ModelFileError, match="the saved weights do not fit the embedding"):
        ConditionalCNFDensity.load(tmp_path / "model.pt", embedding=Wider)
    with pytest.raises(ValueError, match="fitted without a net"):
        ConditionalCNFDensity.load(tmp_path / "model.pt", embedding=TinyCNN, net=Field)


def test_a_user_net_fits_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 3))
    y = X[:, 0] + 0.3 * rng.normal(size=150)
    est = ConditionalCNFDensity(net=Field, **QUICK).fit(X, y)
    assert isinstance(est.flow_.flow.net, Field) and est.settings_.hidden is None
    assert est.sample(X[:2], n_samples=3, random_state=0).shape == (2, 3)
    est.save(tmp_path / "net.pt")
    loaded = ConditionalCNFDensity.load(tmp_path / "net.pt", net=Field)
    np.testing.assert_allclose(loaded.score_samples(X[:10], y[:10]),
                               est.score_samples(X[:10], y[:10]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="hidden, field and conditioning do not apply"):
        ConditionalCNFDensity(net=Field, hidden=(8,)).fit(X, y)
    with pytest.raises(ValueError, match="hidden, field and conditioning do not apply"):
        ConditionalCNFDensity(net=Field, field="hollow").fit(X, y)
    with pytest.raises(ValueError, match="net's signature"):
        ConditionalCNFDensity(net=TinyCNN, **QUICK).fit(X, y)  # forward(x): not f(t, z, c)


def test_an_embedding_and_a_net_together_and_several_members(tmp_path):
    X, y = _images(60, 2)
    est = ConditionalCNFDensity(embedding=TinyCNN(), net=Field, n_members=2,
                                **{**QUICK, "validation_fraction": "auto",
                                   "max_iter": 4}).fit(X, y)
    assert est.n_members_ == 2
    first, second = (m.embedding for m in est.flow_.members)
    assert first is not second
    assert est.sample(X[:2], n_samples=3, random_state=0).shape == (2, 3)
    est.save(tmp_path / "both.pt")
    loaded = ConditionalCNFDensity.load(tmp_path / "both.pt", embedding=TinyCNN, net=Field)
    np.testing.assert_allclose(loaded.score_samples(X[:5], y[:5]),
                               est.score_samples(X[:5], y[:5]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("embedding", [TinyCNN, TinyCNN(), "a.registered:Name"])
def test_clone_keeps_the_parameter(embedding):
    est = ConditionalCNFDensity(embedding=embedding, hidden=(8,))
    copy = clone(est)
    assert copy.get_params().keys() == est.get_params().keys()
    if isinstance(embedding, nn.Module):  # deep-copied, as scikit-learn copies parameters
        assert isinstance(copy.embedding, TinyCNN) and copy.embedding is not embedding
    else:
        assert copy.embedding == embedding


class _NoFlatten(TinyCNN):
    def forward(self, x):
        return super().forward(x)[:, :, None]   # (n, 3, 1)


class _WholeBatch(TinyCNN):
    def forward(self, x):
        return super().forward(x).sum(0, keepdim=True)  # one row for the whole batch


class _Fails(TinyCNN):
    def forward(self, x):
        return self.out(x)  # (n, 1, 4, 8) into a Linear(128, 3): a shape error


@pytest.mark.parametrize("embedding, message", [
    (_NoFlatten, r"map features \(n, \*feature_shape\) to a context \(n, k\).*\(2, 3, 1\)"),
    (_WholeBatch, "one context row per row of X; it gave 1 rows for 2"),
    (_Fails, r"could not be applied to features of shape \(2, 1, 4, 8\)"),
    (lambda: "not a module", "returned a str, not an nn.Module"),
    ("nowhere:Registered", "no module is registered under the name 'nowhere:Registered'"),
    (3, "embedding must be None or a registered name"),
])
def test_bad_embeddings_are_refused_clearly(embedding, message):
    X, y = _images(20, 3)
    with pytest.raises(ValueError, match=message):
        ConditionalCNFDensity(embedding=embedding, **QUICK).fit(X, y)


def test_the_registry():
    def make():
        return nn.Linear(2, 2)

    register_module("tests:make", make)
    try:
        assert registered_module("tests:make") is make
        register_module("tests:make", make)  # the same factory again: no error
        with pytest.raises(ValueError, match="already registered"):
            register_module("tests:make", TinyCNN)
        register_module("tests:make", TinyCNN, replace=True)
        assert registered_module("tests:make") is TinyCNN
    finally:
        unregister_module("tests:make")
    with pytest.raises(ValueError, match="non-empty string"):
        register_module("", make)
    with pytest.raises(ValueError, match="needs a factory"):
        register_module("tests:bad", 3)
    decorated = register_module("tests:decorated")(make)
    assert decorated is make and registered_module("tests:decorated") is make
    unregister_module("tests:decorated")
