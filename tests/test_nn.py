"""cnflow.nn: the concat-squash layer is the formula it claims, the MLP is wired as stated."""

import dataclasses

import pytest
import torch
from torch import nn

from cnflow.nn import (
    ACTIVATION_DERIVATIVES,
    ACTIVATION_TABLE,
    ACTIVATIONS,
    Activation,
    ConcatSquashLinear,
    ConcatSquashMLP,
    activation_of,
)
from cnflow.nn.fused import FUSED_ACTIVATIONS, concat_squash_vjp, concat_squash_with_divergence

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


def test_concat_squash_linear_with_a_context_is_the_gated_formula_row_by_row():
    """(W x + b) ⊙ σ(a t + G c + e) + d t + H c, with one time for all rows or one per row;
    without context_features the layer has the parameters of the time-only layer."""
    layer = ConcatSquashLinear(3, 4, context_features=2).double()
    x, c = torch.randn(5, 3, dtype=D64), torch.randn(5, 2, dtype=D64)
    W, b = layer.linear.weight, layer.linear.bias
    for t in (torch.tensor(0.7, dtype=D64), torch.rand(5, 1, dtype=D64)):
        tc = torch.cat([t.expand(5, 1), c], dim=1)
        expected = (x @ W.T + b) * torch.sigmoid(tc @ layer.gate.weight.T + layer.gate.bias) \
            + tc @ layer.hyper_bias.weight.T
        torch.testing.assert_close(layer(t, x, c), expected, rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="reads a context"):
        layer(0.5, x)
    with pytest.raises(ValueError, match="takes no context"):
        ConcatSquashLinear(3, 4)(0.5, x, c)
    shapes = {k: tuple(v.shape) for k, v in ConcatSquashLinear(3, 4).state_dict().items()}
    assert shapes == {"linear.weight": (4, 3), "linear.bias": (4,), "gate.weight": (4, 1),
                      "gate.bias": (4,), "hyper_bias.weight": (4, 1)}


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


def random_raw_layers(sizes, requires_grad=False):
    """(W, b, a, c, d) flattened over layers of the given (in, out) sizes, float64."""
    return [torch.randn(shape, dtype=D64, requires_grad=requires_grad)
            for n_in, n_out in sizes
            for shape in ((n_out, n_in), (n_out,), (n_out, 1), (n_out,), (n_out, 1))]


@pytest.mark.parametrize("kind", FUSED_ACTIVATIONS)  # tanh, sigmoid, softplus and any new one
@pytest.mark.parametrize("frobenius", [False, True])
def test_fused_divergence_passes_gradcheck(kind, frobenius):
    """Finite differences of (f, tr ∂f/∂z) for z, t and every raw parameter."""
    assert _fused_gradcheck(kind, frobenius, *_fused_inputs(seed=2))


def _fused_inputs(seed: int):
    """z (6, 2), t and the raw parameters of a 2-4-5-2 network, float64, requiring grad."""
    torch.manual_seed(seed)
    z = torch.randn(6, 2, dtype=D64, requires_grad=True)
    t = torch.tensor(0.3, dtype=D64, requires_grad=True)
    return z, t, random_raw_layers([(2, 4), (4, 5), (5, 2)], requires_grad=True)


def _fused_gradcheck(activation, frobenius: bool, z, t, raw) -> bool:
    """gradcheck of the fused (f, tr ∂f/∂z[, ‖∂f/∂z‖²_F]) in z, t and every raw parameter."""

    def fn(z, t, *raw):
        return concat_squash_with_divergence(activation, z, t,
                                             [raw[i:i + 5] for i in range(0, 15, 5)],
                                             frobenius=frobenius)

    return torch.autograd.gradcheck(fn, (z, t, *raw))


def test_fused_activations_are_the_table_rows_with_a_second_derivative():
    assert {"tanh", "sigmoid", "softplus"} <= set(FUSED_ACTIVATIONS)
    assert FUSED_ACTIVATIONS == tuple(n for n, r in ACTIVATION_TABLE.items() if r.fused)
    assert set(ACTIVATIONS) == set(ACTIVATION_TABLE)
    for name, row in ACTIVATION_TABLE.items():
        assert ACTIVATIONS[name] is row.module
        assert ACTIVATION_DERIVATIVES[row.module] is row.derivative
        assert activation_of(row.module()) is row


@pytest.mark.parametrize("name", list(ACTIVATION_TABLE))
def test_table_row_derivatives_match_autograd(name):
    """φ' (and φ'' where given) of every row, the fast forms of the fused path and its
    pre-activation cotangent, against autograd of the module in float64 at many points."""
    row = ACTIVATION_TABLE[name]
    torch.manual_seed(3)
    p = torch.cat([torch.linspace(-8, 8, 1601, dtype=D64), 3 * torch.randn(1000, dtype=D64)])
    p = p[p != 0].requires_grad_()  # (ELU's φ'' jumps at 0)
    h = row.module()(p)
    (first,) = torch.autograd.grad(h.sum(), p, create_graph=True)
    torch.testing.assert_close(row.derivative(p, h), first, rtol=1e-12, atol=1e-14)
    s = row.derivative(p, h)
    if row.second_derivative is None:
        assert not row.fused
        return
    (second,) = torch.autograd.grad(first.sum(), p)
    torch.testing.assert_close(row.second_derivative(p, h, s), second, rtol=1e-11, atol=1e-14)
    with torch.no_grad():
        p, h, s = p.detach(), h.detach(), s.detach()
        fast_h, fast_s = row.evaluate(row.input_scale * p)
        torch.testing.assert_close(fast_h, h, rtol=0, atol=1e-15)
        torch.testing.assert_close(fast_s, s, rtol=0, atol=1e-15)
        h_bar, s_bar = torch.randn_like(p), torch.randn_like(p)
        generic = s * h_bar + second * s_bar
        torch.testing.assert_close(row.pre_activation_cotangent(p, h, s, h_bar, s_bar), generic,
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(ACTIVATION_TABLE))
@pytest.mark.parametrize("per_row_t", [False, True])
def test_forward_with_divergence_matches_autograd_trace_for_every_row(name, per_row_t):
    """f and tr ∂f/∂z of a network with each row's activation (the fused path where the row
    gives φ'' and t is one time) against the autograd Jacobian, float64."""
    torch.manual_seed(4)
    net = ConcatSquashMLP(3, (7, 5), activation=name).double()
    assert net.has_analytic_divergence
    assert (net.divergence_vjp(torch.tensor(0.5, dtype=D64), torch.randn(2, 3, dtype=D64))
            is not None) == ACTIVATION_TABLE[name].fused
    z = 2 * torch.randn(6, 3, dtype=D64)
    t = torch.rand(6, dtype=D64) if per_row_t else torch.tensor(0.7, dtype=D64)
    dz, trace = net.forward_with_divergence(t, z)
    torch.testing.assert_close(dz, net(t, z), rtol=1e-14, atol=1e-14)
    jac = torch.stack([torch.autograd.functional.jacobian(
        lambda x, i=i: net(t[i:i + 1] if per_row_t else t, x[None])[0], z[i]) for i in range(6)])
    torch.testing.assert_close(trace, jac.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-12,
                               atol=1e-12)


def test_which_activation_settings_the_analytic_and_fused_paths_take():
    assert activation_of(nn.Softplus(beta=2.0)) is None
    assert activation_of(nn.ELU(alpha=0.5)) is None
    assert activation_of(nn.Softplus(threshold=10.0)) is ACTIVATION_TABLE["softplus"]
    assert activation_of(nn.Softplus(threshold=10.0), fused=True) is None
    assert activation_of(nn.ELU(), fused=True) is None  # no φ'' in its row
    assert activation_of(nn.ReLU()) is None
    t, z = torch.tensor(0.5), torch.randn(3, 2)
    assert not ConcatSquashMLP(2, (4,), activation=nn.Softplus(beta=2.0)).has_analytic_divergence
    net = ConcatSquashMLP(2, (4,), activation=nn.Softplus(threshold=10.0))
    assert net.has_analytic_divergence and net.divergence_vjp(t, z) is None
    assert ConcatSquashMLP(2, (4,), activation="softplus").divergence_vjp(t, z) is not None
    assert ConcatSquashMLP(2, (), activation="tanh").divergence_vjp(t, z) is None


def test_layer_parameters_are_the_layers_own_tensors_in_order():
    net = ConcatSquashMLP(2, hidden=(4, 3))
    params = net.layer_parameters()
    assert len(params) == 3
    for layer, (w, b, a, c, d) in zip(net.layers, params, strict=True):
        assert w is layer.linear.weight and b is layer.linear.bias
        assert a is layer.gate.weight and c is layer.gate.bias and d is layer.hyper_bias.weight
    assert {id(p) for ps in params for p in ps} == {id(p) for p in net.parameters()}


def test_activation_rows_refuse_inconsistent_fast_forms():
    with pytest.raises(ValueError, match="input_scale"):
        Activation(module=nn.Tanh, derivative=lambda p, h: 1 - h * h, input_scale=2.0)
    with pytest.raises(ValueError, match="second_derivative"):
        Activation(module=nn.Tanh, derivative=lambda p, h: 1 - h * h,
                   pre_activation_grad=lambda h, s, h_bar, s_bar: s * h_bar)
    z, t = torch.randn(3, 2, dtype=D64), torch.tensor(0.1, dtype=D64)
    layers = [random_raw_layers([(2, 4)]), random_raw_layers([(4, 2)])]
    with pytest.raises(ValueError, match="second derivative"):
        concat_squash_with_divergence(ACTIVATION_TABLE["elu"], z, t, layers)
    with pytest.raises(ValueError, match="unknown activation"):
        concat_squash_with_divergence("elu", z, t, layers)


def silu_second_derivative(p, h, s):
    sig = torch.sigmoid(p)
    return sig * (1 - sig) * (2 + p * (1 - 2 * sig))


#: Rows with only φ, φ' and φ'' (the generic fused path, which keeps p): each fused row
#: without its fast forms, and SiLU with a second derivative.
PLAIN_ROWS = {
    **{name: dataclasses.replace(ACTIVATION_TABLE[name], value_and_slope=None, input_scale=1.0,
                                 pre_activation_grad=None) for name in FUSED_ACTIVATIONS},
    "silu": dataclasses.replace(ACTIVATION_TABLE["silu"],
                                second_derivative=silu_second_derivative),
}


def test_the_silu_second_derivative_of_the_plain_row_matches_autograd():
    p = torch.linspace(-8, 8, 801, dtype=D64, requires_grad=True)
    (first,) = torch.autograd.grad(nn.functional.silu(p).sum(), p, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), p)
    p = p.detach()
    h = nn.functional.silu(p)
    torch.testing.assert_close(silu_second_derivative(p, h, None), second, rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("name", list(PLAIN_ROWS))
@pytest.mark.parametrize("frobenius", [False, True])
def test_fused_path_of_a_row_with_only_its_derivatives(name, frobenius):
    """A row that gives φ'' and nothing else runs the fused path: gradcheck, and the same
    outputs and pullback as the table's row with its fast forms (where there is one)."""
    row = PLAIN_ROWS[name]
    assert row.fused and row.pre_activation_grad is None
    z, t, raw = _fused_inputs(seed=5)
    assert _fused_gradcheck(row, frobenius, z, t, raw)
    if name not in FUSED_ACTIVATIONS:
        return
    layers = [raw[i:i + 5] for i in range(0, 15, 5)]
    ours, pullback = concat_squash_vjp(row, z, t, layers, frobenius=frobenius)
    table, table_pullback = concat_squash_vjp(name, z, t, layers, frobenius=frobenius)
    torch.testing.assert_close(ours, table, rtol=1e-13, atol=1e-13)
    cotangents = (torch.randn(6, 2, dtype=D64), torch.randn(6, dtype=D64),
                  torch.randn(6, dtype=D64) if frobenius else None)
    torch.testing.assert_close(pullback(*cotangents), table_pullback(*cotangents), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("kind", FUSED_ACTIVATIONS)
@pytest.mark.parametrize("hidden", [(5,), (4, 6, 5)])
def test_fused_divergence_without_gradients_matches_the_brute_force_jacobian(kind, hidden):
    """Under no_grad the fused path saves nothing and scales each layer's Jacobian in place;
    f, the trace and ‖J‖²_F must still be those of the autograd Jacobian, and equal to the
    recorded path's bit for bit."""
    torch.manual_seed(4)
    net = ConcatSquashMLP(3, hidden, activation=kind).double()
    z = torch.randn(7, 3, dtype=D64)
    t = torch.tensor(0.6, dtype=D64)
    with torch.no_grad():
        f_lean, tr_lean, fr_lean = net.forward_with_divergence(t, z, frobenius=True)
    f_kept, tr_kept, fr_kept = net.forward_with_divergence(t, z.requires_grad_(True),
                                                           frobenius=True)
    jac = torch.autograd.functional.jacobian(lambda x: net(t, x).sum(0), z)  # (3, 7, 3)
    rows = jac.permute(1, 0, 2)  # rows[n, i, :] = ∂f_i/∂z of row n
    torch.testing.assert_close(f_lean, net(t, z).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tr_lean, rows.diagonal(dim1=1, dim2=2).sum(-1),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fr_lean, rows.square().sum((1, 2)), rtol=1e-12, atol=1e-12)
    for lean, kept in ((f_lean, f_kept), (tr_lean, tr_kept), (fr_lean, fr_kept)):
        assert torch.equal(lean, kept.detach())
