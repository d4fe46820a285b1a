"""cnflow.nn: the concat-squash layer is the formula it claims, the MLP is wired as stated."""

import pytest
import torch
from torch import nn

from cnflow.nn import ACTIVATIONS, ConcatSquashLinear, ConcatSquashMLP

D64 = torch.float64


def manual_layer(layer, t, x):
    """(W x + b) ⊙ σ(a t + c) + d t from the layer's weights, t of shape (n, 1) or scalar."""
    W, b = layer.linear.weight, layer.linear.bias
    a, c = layer.gate.weight[:, 0], layer.gate.bias
    d = layer.hyper_bias.weight[:, 0]
    return (x @ W.T + b) * torch.sigmoid(a * t + c) + d * t


def test_concat_squash_linear_is_the_gated_formula():
    layer = ConcatSquashLinear(3, 4).double()
    x = torch.randn(5, 3, dtype=D64)
    t = torch.tensor(0.7, dtype=D64)
    torch.testing.assert_close(layer(t, x), manual_layer(layer, t, x), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(layer(0.7, x), manual_layer(layer, t, x), rtol=1e-14, atol=1e-14)
    # One time per row: row b is the layer at time t_b.
    ts = torch.rand(5, dtype=D64)
    out = layer(ts, x)
    for b in range(5):
        torch.testing.assert_close(out[b], layer(ts[b], x[b:b + 1])[0], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(layer(ts[:, None], x), out)


def test_concat_squash_linear_depends_on_time_and_gets_all_gradients():
    layer = ConcatSquashLinear(2, 3)
    x = torch.randn(4, 2)
    assert not torch.allclose(layer(torch.tensor(0.0), x), layer(torch.tensor(1.0), x))
    layer(torch.tensor(0.5), x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_composes_layers_with_the_activation_between(activation):
    mlp = ConcatSquashMLP(2, hidden=(8, 6), activation=activation).double()
    assert [(la.linear.in_features, la.linear.out_features) for la in mlp.layers] == [
        (2, 8), (8, 6), (6, 2)]
    x = torch.randn(5, 2, dtype=D64)
    t = torch.tensor(0.3, dtype=D64)
    act = ACTIVATIONS[activation]()
    h = act(manual_layer(mlp.layers[0], t, x))
    h = act(manual_layer(mlp.layers[1], t, h))
    expected = manual_layer(mlp.layers[2], t, h)  # no activation after the last layer
    torch.testing.assert_close(mlp(t, x), expected, rtol=1e-13, atol=1e-13)


def test_mlp_options():
    assert ConcatSquashMLP(3, hidden=())(0.0, torch.randn(2, 3)).shape == (2, 3)
    assert ConcatSquashMLP(3, hidden=(4,), out_features=5)(0.0, torch.randn(2, 3)).shape == (2, 5)
    mlp = ConcatSquashMLP(2, hidden=(4,), activation=nn.Softplus(beta=2.0))
    assert isinstance(mlp.activation, nn.Softplus) and mlp.activation.beta == 2.0


@pytest.mark.parametrize("kwargs, match", [
    ({"activation": "relu6"}, "unknown activation"),
    ({"activation": 3}, "activation must be"),
    ({"hidden": (4, 0)}, "hidden"),
    ({"out_features": 0}, "out_features"),
])
def test_mlp_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConcatSquashMLP(2, **kwargs)
    with pytest.raises(ValueError, match="in_features"):
        ConcatSquashMLP(0)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "elu", "silu", "sigmoid"])
@pytest.mark.parametrize("hidden", [(), (7,), (9, 5)])
@pytest.mark.parametrize("per_row_t", [False, True])
def test_forward_with_divergence_matches_autograd_jacobian(activation, hidden, per_row_t):
    """Forward Jacobian propagation gives f, tr J and ‖J‖²_F of the autograd Jacobian."""
    net = ConcatSquashMLP(3, hidden, activation=activation).double()
    z = torch.randn(6, 3, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64) if per_row_t else torch.tensor(0.7, dtype=torch.float64)
    dz, trace, frob = net.forward_with_divergence(t, z, frobenius=True)
    # equal up to rounding (the solvers' path evaluates tanh as 2σ(2p) − 1)
    torch.testing.assert_close(dz, net(t, z), rtol=1e-14, atol=1e-14)
    jac = torch.stack([torch.autograd.functional.jacobian(
        lambda x, i=i: net(t[i:i + 1] if per_row_t else t, x[None])[0], z[i]) for i in range(6)])
    torch.testing.assert_close(trace, jac.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(frob, jac.square().sum((1, 2)), rtol=1e-12, atol=1e-12)



@pytest.mark.parametrize("activation", ["tanh", "softplus", "sigmoid", "elu"])
@pytest.mark.parametrize("hidden", [(7,), (9, 5), (4, 6, 5)])
@pytest.mark.parametrize("frobenius", [False, True])
def test_divergence_gradients_equal_double_backprop_of_the_autograd_jacobian(activation, hidden,
                                                                             frobenius):
    """The hand-written backward of (f, tr ∂f/∂z[, ‖∂f/∂z‖²_F]) (one time for all rows; ELU
    falls back to autograd) gives the gradients of double backpropagation through the
    brute-force Jacobian, for z, t and every parameter."""
    torch.manual_seed(1)
    net = ConcatSquashMLP(3, hidden, activation=activation).double()
    z = torch.randn(6, 3, dtype=D64, requires_grad=True)
    t = torch.tensor(0.4, dtype=D64, requires_grad=True)
    f_weights, tr_weights, fr_weights = (torch.randn(6, 3, dtype=D64),
                                         torch.randn(6, dtype=D64), torch.randn(6, dtype=D64))
    inputs = (z, t, *net.parameters())

    def loss(f, trace, frob):
        extra = (fr_weights * frob).sum() if frobenius else 0.0
        return (f_weights * f).sum() + (tr_weights * trace).sum() + extra

    out = net.forward_with_divergence(t, z, frobenius=frobenius)
    ours = torch.autograd.grad(loss(out[0], out[1], out[-1]), inputs)

    f = net(t, z)
    rows = torch.stack([torch.autograd.grad(f[:, i].sum(), z, create_graph=True)[0]
                        for i in range(3)], 1)  # rows[:, i, :] = ∂f_i/∂z
    brute_trace = rows.diagonal(dim1=1, dim2=2).sum(-1)
    brute_frob = rows.square().sum((1, 2))
    torch.testing.assert_close(out[1], brute_trace, rtol=1e-12, atol=1e-12)
    if frobenius:
        torch.testing.assert_close(out[2], brute_frob, rtol=1e-12, atol=1e-12)
    reference = torch.autograd.grad(loss(f, brute_trace, brute_frob), inputs)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["tanh", "sigmoid", "softplus"])
@pytest.mark.parametrize("frobenius", [False, True])
def test_fused_divergence_passes_gradcheck(kind, frobenius):
    """Finite differences of (f, tr ∂f/∂z) for z, t and every raw parameter."""
    from cnflow.nn.fused import concat_squash_with_divergence

    torch.manual_seed(2)
    sizes = [(2, 4), (4, 5), (5, 2)]
    z = torch.randn(6, 2, dtype=D64, requires_grad=True)
    t = torch.tensor(0.3, dtype=D64, requires_grad=True)
    raw = [torch.randn(shape, dtype=D64, requires_grad=True)
           for n_in, n_out in sizes
           for shape in ((n_out, n_in), (n_out,), (n_out, 1), (n_out,), (n_out, 1))]

    def fn(z, t, *raw):
        return concat_squash_with_divergence(kind, z, t, [raw[i:i + 5] for i in range(0, 15, 5)],
                                             frobenius=frobenius)

    assert torch.autograd.gradcheck(fn, (z, t, *raw))
