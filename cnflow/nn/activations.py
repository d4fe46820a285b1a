r"""Activations for ODE dynamics, one table with their derivatives.

Smooth activations suit ODE dynamics: the adaptive solvers assume a smooth right-hand side, and
the trace of the Jacobian must vary smoothly along a solution. Each entry of
:data:`ACTIVATION_TABLE` gives an activation's module, its first derivative (used to carry
Jacobians forward through a network, :meth:`cnflow.nn.ConcatSquashMLP.forward_with_divergence`)
and, where a hand-written backward of the exact divergence exists, its second derivative
(:mod:`cnflow.nn.fused`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "ACTIVATION_DERIVATIVES"]

#: Activations by name. Smooth ones suit ODE dynamics: the adaptive solvers assume a smooth
#: right-hand side, and the trace of the Jacobian must vary smoothly along a solution.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


#: σ'(p) of each built-in activation, from its input p and output h = σ(p) (reusing h where
#: that is cheaper). Used to propagate Jacobians forward through the layers.
ACTIVATION_DERIVATIVES = {
    nn.Tanh: lambda p, h: 1 - h * h,
    nn.Sigmoid: lambda p, h: h * (1 - h),
    nn.Softplus: lambda p, h: torch.sigmoid(p),
    nn.SiLU: lambda p, h: torch.sigmoid(p) * (1 + p * (1 - torch.sigmoid(p))),
    nn.ELU: lambda p, h: torch.where(p > 0, torch.ones_like(p), h + 1),
}


#: The activations with a hand-written backward of the exact divergence.
_FUSED_KINDS = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Softplus: "softplus"}
