"""Declared parameter kinds (cnflow.estimators.params), the shared flow base and the
interfaces (cnflow.interfaces)."""

import numpy as np
import pytest
import torch

from cnflow import CNF, CNFDensity, DenseFlow, LatentODE, PlanarFlow, PlanarFlowDensity
from cnflow.estimators.params import (
    Boolean,
    InstanceOf,
    Integer,
    IntegerSequence,
    Options,
    Real,
    check_parameters,
)
from cnflow.flows import FlowMixture
from cnflow.flows.flow import Flow
from cnflow.interfaces import BaseDensity, CountsEvaluations, DensityModel


class _Holder:
    def __init__(self, **values):
        self.__dict__.update(values)


@pytest.mark.parametrize("kinds, good, bad, message", [
    ([Integer(1)], [1, 7, np.int64(3)], [0, -1, 1.0, True, "2"], "a positive integer"),
    ([Integer(0), "auto"], [0, 5, "auto"], [-1, False, "Auto"], "a non-negative integer or 'auto'"),
    ([Real(0, None)], [1e-9, 3, np.float32(0.5)], [0, -1.0, float("nan"), float("inf"), True],
     "a positive number"),
    ([Integer(2)], [2, np.int32(40)], [1, 2.0, np.bool_(True)], "an integer of at least 2"),
    ([Integer(0, 9)], [0, 9], [-1, 10], r"an integer in \[0, 9\]"),
    ([Real(0, 1, closed="left")], [0.0, 0.5], [1.0, -0.1], r"a number in \[0, 1\)"),
    ([None, Real(0, None)], [None, 2.5], [0.0, "x"], "None or a positive number"),
    ([Options("a", "b")], ["a", "b"], ["c", 1, None], "one of a, b"),
    ([Boolean(), "auto"], [True, False, np.bool_(True), "auto"], [1, 0, "yes"],
     "True, False or 'auto'"),
    ([IntegerSequence(1)], [(64, 64), [3], ()], ["64", (0,), (2.0,), 5],
     "a sequence of positive integers"),
    ([InstanceOf(str, torch.device)], ["cpu", torch.device("cpu")], [0, None],
     "an instance of str or torch.device"),
])
def test_each_kind_accepts_what_it_says_and_names_itself_in_the_error(kinds, good, bad,
                                                                      message):
    for value in good:
        check_parameters(_Holder(p=value), {"p": kinds})
    for value in bad:
        with pytest.raises(ValueError, match=f"p must be {message}, got"):
            check_parameters(_Holder(p=value), {"p": kinds})


@pytest.mark.parametrize("make", [
    lambda **kw: CNFDensity(**kw), lambda **kw: PlanarFlowDensity(**kw),
    lambda **kw: LatentODE(**kw)])
def test_every_estimator_rejects_booleans_as_counts_before_fitting(make):
    est = make(max_iter=True)
    with pytest.raises(ValueError, match="max_iter must be a positive integer"):
        est._validate_parameters()
    with pytest.raises(ValueError, match="dtype must be one of float32, float64"):
        make(dtype="float16")._validate_parameters()


def test_every_declared_parameter_is_a_constructor_parameter():
    for est in (CNFDensity(), PlanarFlowDensity(), LatentODE()):
        declared = set()
        for cls in type(est).__mro__:
            declared |= set(cls.__dict__.get("_parameter_kinds", {}))
        assert declared <= set(est.get_params()), declared - set(est.get_params())


@pytest.mark.parametrize("flow", [CNF(2, hidden=(8,)), CNF(2, hidden=(8,), context_features=3),
                                  PlanarFlow(2, n_layers=2), DenseFlow(2, n_layers=2)])
def test_every_flow_shares_the_base_and_the_input_checks(flow):
    """Every flow, a conditional CNF with a context per call (context_features rows)."""
    k = getattr(flow, "context_features", 0)

    def given(rows: int) -> tuple:
        return (torch.zeros(rows, k),) if k else ()

    assert isinstance(flow, Flow) and isinstance(flow, DensityModel)
    z = torch.randn(5, 2)
    torch.testing.assert_close(
        flow.base_log_prob(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))
    for bad, message in ((torch.zeros(0, 2), "empty"), (torch.zeros(3, 3), r"shape \(n, 2\)"),
                         (torch.zeros(3, 2, dtype=torch.int64), "floating point"),
                         (torch.zeros(3, 2, dtype=torch.float64), "dtype"),
                         (torch.full((3, 2), float("nan")), "NaN")):
        with pytest.raises(ValueError, match=message):
            flow.log_prob(bad, *given(len(bad)))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        flow.sample(0, *given(1))
    x, log_q = flow.sample_with_log_prob(4, *given(4))
    assert x.shape == (4, 2) and log_q.shape == (4,)
    assert flow.log_prob(x, *given(4)).shape == (4,)


def test_mixtures_and_bases_satisfy_the_interfaces():
    from cnflow.flows.base_density import GaussianMixtureBase

    base = GaussianMixtureBase(torch.tensor([0.5, 0.5]), torch.zeros(2, 2),
                               torch.eye(2).expand(2, 2, 2).clone())
    assert isinstance(base, BaseDensity)
    mixture = FlowMixture([CNF(2, hidden=(8,)), CNF(2, hidden=(8,))])
    assert isinstance(mixture, DensityModel) and isinstance(mixture, CountsEvaluations)
    with torch.no_grad():
        mixture.log_prob(torch.randn(3, 2))
    assert mixture.nfe_forward == sum(m.nfe_forward for m in mixture.members) > 0
