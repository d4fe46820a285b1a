"""The fit policy (cnflow.estimators.policy): every "auto" resolved by one pure function, and
the fitted estimators' ``settings_`` holding what their fit used."""

import json

import numpy as np
import pytest

from cnflow import CNFDensity, ConditionalCNFDensity, PlanarFlowDensity
from cnflow.estimators.policy import (
    ENSEMBLE_MAX_ROWS,
    LARGE_HELD_OUT_ROWS,
    POLICIES,
    SMALL_TABLE_MAX_ROWS,
    FitSettings,
    resolve_fit_settings,
)


def settings(kind, n, d, **params) -> FitSettings:
    """What ``kind(**params)`` resolves to for n rows of d modelled dimensions."""
    return resolve_fit_settings(kind.__name__, kind(**params).get_params(), n, d)


@pytest.mark.parametrize("n, regime, members, fraction, preprocessing", [
    (5, "large", 1, 0.0, "standardize"), (10, "small_table", 5, 0.2, "choose"),
    (500, "small_table", 5, 0.2, "choose"), (1000, "small_table", 5, 0.2, "choose"),
    (1001, "small_table", 1, 0.2, "choose"), (10_000, "small_table", 1, 0.2, "choose"),
    (10_001, "large", 1, 1000 / 10_001, "choose"),
    (1_000_000, "large", 1, 1000 / 1_000_000, "choose")])
def test_rules_by_row_count(n, regime, members, fraction, preprocessing):
    s = settings(CNFDensity, n, 2)
    assert (s.regime, s.n_members, s.validation_fraction, s.preprocessing) == (
        regime, members, pytest.approx(fraction), preprocessing)
    assert s.stacking is (preprocessing == "choose")
    assert s.n_iter_no_change == (10 if fraction else None)
    assert s.holds_out is (fraction > 0)
    assert n <= SMALL_TABLE_MAX_ROWS or regime == "large"
    assert members == 1 or n <= ENSEMBLE_MAX_ROWS


def test_given_values_override_the_rules():
    s = settings(CNFDensity, 500, 3, preprocessing="whiten", validation_fraction=0.3,
                 n_iter_no_change=4, max_iter=7, batch_size=64, lr=1e-3,
                 lr_schedule="constant", hidden=[32, 16], fine_tune_iter=9,
                 fine_tune_lr=2e-4, fine_tune_adjoint=True, stacking=False)
    assert (s.preprocessing, s.validation_fraction, s.n_iter_no_change, s.n_members) == (
        "whiten", 0.3, 4, 1)  # a validation fraction given means one member
    assert (s.max_iter, s.batch_size, s.lr, s.lr_schedule, s.hidden) == (
        7, 64, 1e-3, "constant", (32, 16))
    assert (s.fine_tune_iter, s.fine_tune_lr, s.fine_tune_adjoint, s.stacking) == (
        9, 2e-4, True, False)
    assert s.fine_tune_batch_size == 64  # a batch given is fine-tuning's too
    assert settings(CNFDensity, 500, 3, n_iter_no_change=None).n_iter_no_change is None


def test_regime_forces_the_rules_whatever_the_row_count():
    big = settings(CNFDensity, 50_000, 4, regime="small_table")
    assert (big.regime, big.validation_fraction, big.preprocessing, big.stacking) == (
        "small_table", 0.2, "choose", True)
    small = settings(CNFDensity, 500, 4, regime="large")
    assert (small.n_members, small.validation_fraction, small.preprocessing,
            small.stacking) == (1, 0.2, "choose", True)  # 1,000 rows held out, at most 20 %
    assert settings(CNFDensity, 50_000, 4, regime="large").validation_fraction == 0.02
    # too few rows to hold out any, whatever the regime
    assert settings(CNFDensity, 9, 2, regime="small_table").validation_fraction == 0.0
    with pytest.raises(ValueError, match="regime must be one of auto, small_table, large"):
        CNFDensity(regime="huge").fit(np.random.default_rng(0).normal(size=(20, 2)))


def test_per_objective_rows_and_fine_tuning():
    fm, ml = settings(CNFDensity, 20_000, 2), settings(
        CNFDensity, 20_000, 2, objective="maximum_likelihood")
    assert (fm.hidden, fm.max_iter, fm.batch_size, fm.lr, fm.lr_schedule) == (
        (64,) * 5, 20_000, 2048, 1e-2, "cosine")
    assert (ml.hidden, ml.max_iter, ml.batch_size, ml.lr, ml.lr_schedule) == (
        (64,) * 3, 1000, 512, 5e-3, "constant")
    # held-out rows are scored every 1,000 flow-matching or 20 maximum-likelihood steps on
    # this large table (100 flow-matching steps on a small one)
    assert (fm.validation_interval, ml.validation_interval) == (1000, 20)
    assert settings(CNFDensity, 5_000, 2).validation_interval == 100
    assert (fm.fine_tune_iter, fm.fine_tune_lr, fm.fine_tune_batch_size,
            fm.fine_tune_validation_interval, fm.flow_matching_share) == (
        200, 5e-3, 512, 100, 0.75)
    assert (ml.fine_tune_iter, ml.flow_matching_share) == (0, 1.0)
    assert settings(CNFDensity, 100, 2, max_iter=60_000).fine_tune_iter == 600
    # backpropagation through the solver up to 8 modelled dimensions, the adjoint above
    assert not settings(CNFDensity, 100, 8).fine_tune_adjoint
    assert settings(CNFDensity, 100, 9).fine_tune_adjoint


def test_the_conditional_table():
    s = settings(ConditionalCNFDensity, 5000, 1)
    assert (s.batch_size, s.stacking, s.preprocessing) == (4096, False, "choose")
    assert s.fine_tune_lr == pytest.approx(0.03 * s.lr)
    # targets whitened where nothing is held out; a fraction given chooses on any row count
    assert settings(ConditionalCNFDensity, 50_000, 1).preprocessing == "whiten"
    assert settings(ConditionalCNFDensity, 50_000, 1,
                    validation_fraction=0.1).preprocessing == "choose"
    assert settings(CNFDensity, 50_000, 1, validation_fraction=0.1).preprocessing == "choose"
    assert settings(PlanarFlowDensity, 50_000, 2,
                    validation_fraction=0.1).preprocessing == "standardize"


def test_planar_table():
    s = settings(PlanarFlowDensity, 500, 2)
    assert (s.hidden, s.max_iter, s.batch_size, s.lr, s.lr_schedule, s.n_members,
            s.validation_fraction, s.preprocessing, s.fine_tune_iter) == (
        None, 2000, 512, 1e-2, "cosine", 1, 0.0, "standardize", 0)


def test_every_table_resolves_every_objective():
    import cnflow

    for name, table in POLICIES.items():
        defaults = getattr(cnflow, name)().get_params()
        for objective in table["objectives"]:
            s = resolve_fit_settings(name, {**defaults, "objective": objective}, 300, 3)
            assert s.estimator == name and s.objective == objective


def test_fit_records_its_settings_and_save_keeps_them(tmp_path):
    X = np.random.default_rng(0).normal(size=(60, 2))
    est = CNFDensity(hidden=(8,), max_iter=3, random_state=0, device="cpu").fit(X)
    s = est.settings_
    assert s == settings(CNFDensity, 60, 2, hidden=(8,), max_iter=3)
    assert (s.n_members, est.n_members_) == (5, 5)
    assert s.fine_tune_iter == 0  # 3 // 100
    assert json.loads(json.dumps(s.as_dict())) == s.as_dict()
    assert FitSettings.from_dict(s.as_dict()) == s
    est.save(tmp_path / "m.pt")
    assert CNFDensity.load(tmp_path / "m.pt").settings_ == s
    # a fit that fails on parameters that contradict each other leaves no settings behind
    fresh = CNFDensity(max_iter=1, stacking=True, validation_fraction=0.0)
    with pytest.raises(ValueError, match="stacking chooses the flow's weight"):
        fresh.fit(X)
    assert not hasattr(fresh, "settings_")


def test_images_and_latent_odes_record_their_settings(tmp_path):
    from cnflow import ImageCNFDensity, LatentODE

    images = np.random.default_rng(0).integers(0, 4, size=(16, 1, 4, 4))
    img = ImageCNFDensity(levels=4, hidden=(4,), max_iter=2, batch_size=8, rtol=1e-3,
                          atol=1e-3, random_state=0, device="cpu").fit(images)
    s = img.settings_
    assert (s.objective, s.hidden, s.max_iter, s.batch_size, s.lr, s.n_members,
            s.fine_tune_iter, s.n_samples, s.n_features) == (
        "flow_matching", (4,), 2, 8, 1e-3, 1, 0, 16, 16)
    img.save(tmp_path / "img.pt")
    assert ImageCNFDensity.load(tmp_path / "img.pt").settings_ == s
    t = np.linspace(0, 1, 6)
    series = [(t, np.sin(t + k)) for k in range(4)]
    latent = LatentODE(max_iter=2, random_state=0, device="cpu").fit(series)
    s = latent.settings_
    assert (s.objective, s.max_iter, s.n_samples, s.n_features, s.fine_tune_iter) == (
        "elbo", 2, 4, 1, 0)
    latent.save(tmp_path / "latent.pt")
    assert LatentODE.load(tmp_path / "latent.pt").settings_ == s


def test_large_regime_bounds_what_grows_with_the_rows():
    """Above 10,000 rows: 1,000 held-out rows, the map chosen between whitening and the
    quantile map (the kernel Gaussianisation is too slow to apply to every row), a tenth of the
    budget for mixtures, and few scorings of the held-out rows."""
    large, small = settings(CNFDensity, 200_000, 8), settings(CNFDensity, 5_000, 8)
    assert large.validation_fraction * 200_000 == pytest.approx(LARGE_HELD_OUT_ROWS)
    assert large.preprocessing_candidates == ("whiten", "quantile")
    assert settings(CNFDensity, 200_000, 17).preprocessing_candidates == ("whiten", "log")
    assert small.preprocessing_candidates == ("whiten", "log", "gaussianize")
    assert (large.planning_share, small.planning_share) == (0.1, 1.0)
    assert (large.validation_interval, large.fine_tune_validation_interval) == (1000, 100)
    assert (small.validation_interval, small.fine_tune_validation_interval) == (100, 20)
    # maximum likelihood keeps its own interval in both regimes
    assert settings(CNFDensity, 200_000, 8,
                    objective="maximum_likelihood").validation_interval == 20
    # a wider field above 16 dimensions on large tables (flow matching only)
    assert settings(CNFDensity, 200_000, 17).hidden == (128,) * 5
    assert settings(CNFDensity, 200_000, 16).hidden == (64,) * 5
    assert settings(CNFDensity, 5_000, 64).hidden == (64,) * 5
    assert settings(CNFDensity, 200_000, 64, objective="maximum_likelihood").hidden == (64,) * 3
    assert settings(CNFDensity, 200_000, 64, hidden=[32]).hidden == (32,)
    # scorings at least 70 flow-matching steps a modelled dimension apart (each one costs
    # about 7·D steps), fine-tuning's unchanged
    wide = settings(CNFDensity, 200_000, 48)
    assert (wide.validation_interval, wide.fine_tune_validation_interval) == (70 * 48, 100)
    assert settings(CNFDensity, 200_000, 14).validation_interval == 1000
    assert settings(CNFDensity, 5_000, 48).validation_interval == 100
    # no maximum-likelihood fine-tuning above 16 modelled dimensions on large tables (unless
    # asked for): flow matching has the whole budget; from 9 to 16, fine-tuning has only
    # the time flow matching leaves
    assert (wide.fine_tune_iter, wide.flow_matching_share) == (0, 1.0)
    for features, share in ((16, 1.0), (9, 1.0), (8, 0.75)):
        large_fit = settings(CNFDensity, 200_000, features)
        assert (large_fit.fine_tune_iter, large_fit.flow_matching_share) == (200, share)
    assert settings(CNFDensity, 5_000, 9).flow_matching_share == 0.75
    assert settings(CNFDensity, 5_000, 48).fine_tune_iter == 200
    assert settings(CNFDensity, 200_000, 48, fine_tune_iter=30).fine_tune_iter == 30
    # the conditional estimator holds nothing out on large tables
    cond = resolve_fit_settings("ConditionalCNFDensity", {}, 200_000, 4)
    assert (cond.validation_fraction, cond.preprocessing) == (0.0, "whiten")
    # settings round-trip through plain values (a saved model's), tuples included
    assert FitSettings.from_dict(large.as_dict()) == large
