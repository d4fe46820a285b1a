"""Reflow: CNF.encode, flow matching on given pairs, and the estimators' reflow stage."""

import numpy as np
import pytest
import torch

from cnflow import CNF, CNFDensity, ConditionalCNFDensity
from cnflow.datasets import make_toy

D64 = torch.float64


def test_encode_is_the_forward_map_and_the_samplers_inverse():
    """encode(x) is transform(x)'s z (the same ODE without the trace), and solving back from
    it (transform reverse) returns x to the tolerance."""
    torch.manual_seed(0)
    flow = CNF(2, hidden=(16, 16), rtol=1e-8, atol=1e-8).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(3.0)  # a field that bends
        x = torch.randn(50, 2, dtype=D64)
        z = flow.encode(x)
        z_ref, _ = flow.transform(x)
        back, _ = flow.transform(z, reverse=True)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)
    assert (z - x).abs().max() > 0.1  # the map is not the identity


def test_decode_is_the_reverse_map_and_inverts_encode():
    """decode(z) is transform(z, reverse=True)'s x (the same ODE backwards, no trace), the
    inverse of encode to the tolerance, with or without a context."""
    torch.manual_seed(2)
    flow = CNF(2, hidden=(16, 16), rtol=1e-8, atol=1e-8).double()
    cond = CNF(2, hidden=(16,), context_features=1, rtol=1e-8, atol=1e-8).double()
    with torch.no_grad():
        for p in [*flow.parameters(), *cond.parameters()]:
            p.mul_(3.0)
        z = torch.randn(40, 2, dtype=D64)
        x = flow.decode(z)
        x_ref, _ = flow.transform(z, reverse=True)
        c = torch.randn(40, 1, dtype=D64)
        xc = cond.decode(z, c)
        zc = cond.encode(xc, c)
    torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(flow.encode(x), z, rtol=0, atol=1e-5)
    torch.testing.assert_close(zc, z, rtol=0, atol=1e-5)
    assert (x - z).abs().max() > 0.1
    with pytest.raises(ValueError, match="z must have shape"):
        flow.decode(torch.randn(3, 5, dtype=D64))


def test_flow_matching_on_given_pairs_regresses_on_their_straight_lines():
    """With z given, the loss is E‖f(x + s(z − x), sT) − (z − x)/T‖² at the generator's times,
    computed here by hand; no base draw is made."""
    torch.manual_seed(1)
    flow = CNF(3, hidden=(8,)).double()
    x, z = torch.randn(40, 3, dtype=D64), torch.randn(40, 3, dtype=D64)
    loss = flow.flow_matching_loss(x, z=z, generator=torch.Generator().manual_seed(5),
                                   time_exponent=1.5)
    s = torch.rand((40, 1), generator=torch.Generator().manual_seed(5), dtype=D64).pow(1.5)
    T = flow.T.detach()
    by_hand = (flow.net(s * T, x + s * (z - x)) - (z - x) / T).square().sum(-1).mean()
    torch.testing.assert_close(loss, by_hand, rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad, message", [
    (dict(pairing="ot"), "z gives the pairs"),
    (dict(rows=7), "one row per row of x"),
])
def test_given_pairs_are_checked(bad, message):
    flow = CNF(2, hidden=(4,))
    x = torch.randn(10, 2)
    z = torch.randn(bad.pop("rows", 10), 2)
    with pytest.raises(ValueError, match=message):
        flow.flow_matching_loss(x, z=z, **bad)


def test_reflow_straightens_the_paths_of_a_two_mode_density():
    """Independent pairs cross between the two modes, so the learned field bends; reflow on
    the flow's own pairs straightens it: one Euler step lands closer to the adaptive map."""
    rng = np.random.default_rng(0)
    X = np.where(rng.random((2000, 1)) < 0.5, -2.0, 2.0) + 0.3 * rng.standard_normal((2000, 1))
    common = dict(hidden=(32, 32), max_iter=1200, n_members=1, stacking=False,
                  fine_tune_iter=0, preprocessing="standardize", random_state=0,
                  device="cpu", dtype="float64")
    errors = {}
    for reflow in (0.0, 0.5):
        est = CNFDensity(reflow=reflow, **common).fit(X)
        flow = est.flow_
        u, _ = est._transform(X[:500])
        with torch.no_grad():
            exact = flow.encode(u)
            one_step = flow.encode(u, solve_options=flow.fixed_step_options(1, "euler"))
        errors[reflow] = float((one_step - exact).square().mean().sqrt())
    assert errors[0.5] < 0.5 * errors[0.0], errors


def test_the_reflow_stage_in_the_history_settings_and_errors():
    X = make_toy("8gaussians", 300, random_state=0)
    est = CNFDensity(reflow=0.25, max_iter=40, hidden=(8,), n_members=1, stacking=False,
                     fine_tune_iter=0, random_state=0, device="cpu").fit(X)
    assert est.settings_.reflow == 0.25
    objectives = [h["objective"] for h in est.history_]
    assert objectives == ["flow_matching"] * 30 + ["reflow"] * 10
    with pytest.raises(ValueError, match="reflow is a stage of flow matching"):
        CNFDensity(objective="maximum_likelihood", reflow=0.3, max_iter=2).fit(X)
    with pytest.raises(ValueError, match="reflow"):
        CNFDensity(reflow=1.0, max_iter=2).fit(X)
    assert CNFDensity(objective="maximum_likelihood", max_iter=2, hidden=(4,), n_members=1,
                      random_state=0).fit(X[:50]).settings_.reflow == 0.0


def test_a_conditional_reflow_pairs_each_base_point_with_its_rows_context():
    """The pairs are [u_y, u_x, z] with z = encode of u_y given u_x: encoding the same u_y
    under another context gives another z."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 1))
    y = x[:, 0] + 0.5 * rng.standard_normal(400)
    est = ConditionalCNFDensity(reflow=0.5, max_iter=20, hidden=(8,), n_members=1,
                                random_state=0, device="cpu").fit(x, y)
    assert {h["objective"] for h in est.history_} == {"flow_matching", "reflow"}
    flow = est.flow_
    rows = torch.tensor([[0.3, -1.0], [0.3, 1.0]], dtype=torch.float32)
    pairs = est._reflow_pairs(flow, rows, torch.Generator().manual_seed(0))
    assert pairs.shape == (2, 3)
    torch.testing.assert_close(pairs[:, :2], rows)
    with torch.no_grad():
        tol = est.fine_tune_tol
        encoded = flow.encode(rows, solve_options=flow.solve_options.replace(rtol=tol, atol=tol))
    torch.testing.assert_close(pairs[:, 2:], encoded)
    assert abs(float(pairs[0, 2] - pairs[1, 2])) > 1e-3


@pytest.mark.parametrize("source", ["decoded", "mixed"])
def test_reflow_pairs_from_base_draws_are_the_flows_own_map(monkeypatch, source):
    """With decoded pairs each row [x, z] has x = decode(z) for a standard normal z (all of
    them, or the second half with "mixed", whose first half are encoded training rows)."""
    import cnflow.estimators.cnf_estimator as cnf_estimator

    X = make_toy("8gaussians", 600, random_state=0)
    est = CNFDensity(hidden=(16,), max_iter=20, stacking=False, preprocessing="standardize",
                     n_members=1, random_state=0, dtype="float64").fit(X)
    flow = est.flow_
    assert isinstance(flow, CNF)
    monkeypatch.setattr(cnf_estimator, "REFLOW_PAIRS", source)
    U = torch.as_tensor(est.preprocessor_.transform(X)[0])
    pairs = est._reflow_pairs(flow, U, torch.Generator().manual_seed(0))
    assert pairs.shape == (600, 4)
    decoded = pairs[300:] if source == "mixed" else pairs
    tol = float(est.fine_tune_tol)
    options = flow.solve_options.replace(rtol=tol, atol=tol)
    with torch.no_grad():
        x = flow.decode(decoded[:, 2:], solve_options=options)
    torch.testing.assert_close(decoded[:, :2], x, rtol=0, atol=1e-12)
    if source == "mixed":  # the first half: training rows and their base points
        rows = {tuple(r) for r in U.numpy().round(12)}
        assert all(tuple(r) in rows for r in pairs[:300, :2].numpy().round(12))
