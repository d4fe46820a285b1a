r"""Time-dependent networks for the dynamics of neural ODEs and continuous normalizing flows.

A CNF's velocity field :math:`f(z, t)` must depend on time as well as the state. The
concat-squash layer of FFJORD (Grathwohl et al. 2019) brings t in twice, as a gate and as a
bias,

.. math:: \operatorname{layer}(x, t) = (W x + b) \odot \sigma(a t + c) + d\, t,

and :class:`ConcatSquashMLP` stacks such layers with a smooth activation in between;
with ``context_features`` it also takes a context c (a conditional CNF's f(z, t; c)), and
:class:`WithContext` binds one call's context to it, giving dynamics f(t, z).
:class:`HollowMLP` is the hollow network of Chen & Duvenaud (2019), whose exact divergence
comes in closed form with its forward pass (:mod:`cnflow.nn.hollow`).
:class:`PlanarCNFField` is the planar CNF of Chen et al. (2018): a sum of M planar units whose
parameters a hypernetwork makes from t, with a closed-form divergence. Every module here is
called as ``module(t, x)``, the argument order of ODE dynamics ``f(t, z)``, except
:class:`ODEBlock`, the ODE-Net layer h ↦ h(T) that wraps such dynamics (Chen et al. 2018), and
:class:`LatentODENet`, the encoder, autonomous dynamics (:class:`LatentDynamics`) and decoder
of a latent ODE for time series (:mod:`cnflow.nn.latent`). :func:`register_module` names
a factory of user modules so that a model file that holds their weights can be loaded
(:mod:`cnflow.nn.registry`).
The activations and their derivatives come from one table, :data:`ACTIVATION_TABLE`
(:mod:`cnflow.nn.activations`).
"""

from __future__ import annotations

from .activations import (
    ACTIVATION_DERIVATIVES,
    ACTIVATION_TABLE,
    ACTIVATIONS,
    Activation,
    activation_of,
)
from .concat_squash import CONDITIONINGS, ConcatSquashLinear, ConcatSquashMLP
from .conditional import ConditionalConcatSquashLinear, ConditionalConcatSquashMLP, WithContext
from .conv import ConcatSquashConv2d, ConvVelocityField
from .hollow import HollowMLP
from .latent import LatentDynamics, LatentODENet
from .ode_block import ODEBlock
from .planar_field import PlanarCNFField
from .registry import (
    qualified_name,
    register_module,
    registered_module,
    registered_name,
    unregister_module,
)

#: The built-in velocity fields a CNF can be built with (``CNF(field=...)``): ``"dense"``, the
#: concat-squash MLP, whose exact trace costs about D + 1 forward passes; ``"hollow"``, the
#: hollow network of Chen & Duvenaud (2019), whose exact trace comes with its forward pass.
FIELDS = {"dense": ConcatSquashMLP, "hollow": HollowMLP}

__all__ = ["ConcatSquashLinear", "ConcatSquashMLP", "ConcatSquashConv2d", "ConvVelocityField",
           "ConditionalConcatSquashLinear",
           "ConditionalConcatSquashMLP", "WithContext", "CONDITIONINGS", "PlanarCNFField",
           "HollowMLP", "FIELDS", "ODEBlock", "LatentDynamics", "LatentODENet", "ACTIVATIONS",
           "ACTIVATION_DERIVATIVES",
           "ACTIVATION_TABLE", "Activation", "activation_of", "register_module",
           "registered_module", "registered_name", "unregister_module", "qualified_name"]
