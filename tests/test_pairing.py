"""Minibatch optimal-transport pairing for flow matching (cnflow.flows.pairing)."""

import itertools

import numpy as np
import pytest
import torch

from cnflow import CNF, CNFDensity, ConditionalCNFDensity
from cnflow.flows.pairing import ot_permutation, paired


def _cost(x, z, perm):
    return float((x - z[perm]).square().sum())


@pytest.mark.parametrize("n", [2, 4, 6])
def test_ot_permutation_matches_brute_force(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    z = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    perm = ot_permutation(x, z)
    assert sorted(perm.tolist()) == list(range(n))
    best = min(_cost(x, z, torch.tensor(p)) for p in itertools.permutations(range(n)))
    assert _cost(x, z, perm) == pytest.approx(best, rel=1e-12)


def test_ot_permutation_in_one_dimension_is_the_monotone_coupling():
    # in 1-D the optimal transport for the squared cost pairs the i-th smallest x with the
    # i-th smallest z
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 1, generator=gen, dtype=torch.float64) * 3 + 1
    z = torch.randn(50, 1, generator=gen, dtype=torch.float64)
    zp = z[ot_permutation(x, z, block_size=50)]
    order = torch.argsort(x[:, 0])
    assert torch.equal(zp[order, 0], torch.sort(z[:, 0]).values)


def test_blocks_are_permuted_within_themselves_and_lower_the_cost():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(100, 2, generator=gen) * 2
    z = torch.randn(100, 2, generator=gen)
    perm = ot_permutation(x, z, block_size=32)
    for start in range(0, 100, 32):
        block = perm[start:start + 32]
        assert sorted(block.tolist()) == list(range(start, min(start + 32, 100)))
    assert _cost(x, z, perm) < 0.6 * _cost(x, z, torch.arange(100))
    # a larger block is at least as good as blocks that split it
    assert _cost(x, z, ot_permutation(x, z, block_size=100)) <= _cost(x, z, perm) + 1e-4


def test_paired_with_context_moves_draws_only_within_equal_contexts():
    gen = torch.Generator().manual_seed(2)
    context = torch.tensor([[0.0], [1.0], [0.0], [1.0], [0.0], [2.0]])
    x = torch.randn(6, 2, generator=gen)
    z = torch.randn(6, 2, generator=gen)
    zp = paired(x, z, "ot", context)
    for value in (0.0, 1.0, 2.0):
        rows = torch.nonzero(context[:, 0] == value).flatten()
        got = sorted(map(tuple, zp[rows].tolist()))
        assert got == sorted(map(tuple, z[rows].tolist()))
        expected = z[rows][ot_permutation(x[rows], z[rows])]
        assert torch.equal(zp[rows], expected)
    assert torch.equal(paired(x, z, "independent", context), z)


def test_bad_arguments():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="pairing"):
        paired(x, x, "sinkhorn")
    with pytest.raises(ValueError, match="block_size"):
        ot_permutation(x, x, block_size=0)
    with pytest.raises(ValueError, match="shape"):
        ot_permutation(x, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="pairing"):
        CNF(2, hidden=(8,)).flow_matching_loss(x, pairing="exact")


def test_flow_matching_loss_with_ot_pairing_equals_the_regression_on_paired_draws():
    torch.manual_seed(0)
    flow = CNF(2, hidden=(16,)).double()
    x = torch.randn(40, 2, dtype=torch.float64) * 2 + 1
    loss = flow.flow_matching_loss(x, generator=torch.Generator().manual_seed(5),
                                   pairing="ot")
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    s = torch.rand((40, 1), generator=gen, dtype=x.dtype)
    z = z[ot_permutation(x, z)]
    x_s = x + s * (z - x)
    expected = (flow.net(s, x_s) - (z - x)).square().sum(-1).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    loss.backward()
    assert all(p.grad is not None for p in flow.net.parameters())


def test_estimators_take_the_pairing():
    X = np.random.RandomState(0).normal(size=(300, 2))
    est = CNFDensity(pairing="ot", max_iter=5, fine_tune_iter=0, random_state=0,
                     hidden=(8,)).fit(X)
    assert est.settings_.pairing == "ot"
    assert CNFDensity(max_iter=2, hidden=(8,), fine_tune_iter=0,
                      random_state=0).fit(X).settings_.pairing == "independent"
    with pytest.raises(ValueError, match="pairing"):
        CNFDensity(pairing="sinkhorn").fit(X)
    labels = np.repeat([[0.0], [1.0]], 150, axis=0)
    cond = ConditionalCNFDensity(pairing="ot", max_iter=5, fine_tune_iter=0, random_state=0,
                                 hidden=(8,)).fit(labels, X)
    assert cond.settings_.pairing == "ot"
