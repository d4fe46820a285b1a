"""Torch modules an estimator takes from its user (an embedding network, a velocity field):
how such a parameter is given, built afresh for every fit and member, named in a model file
and rebuilt on load.

A parameter that holds a user module accepts three forms, so that the estimator stays
clonable by scikit-learn and every member of every fit gets a fresh module:

- a registered name (a str, :func:`cnflow.nn.register_module`);
- a factory: a callable of no arguments returning an ``nn.Module`` (a class is one);
- an ``nn.Module`` instance, deep-copied for each member (it is never trained itself).

A model file names the module by its registered name, or else by the qualified name
``module:qualname`` of its factory (:func:`module_reference`); loading calls the factory
registered under that name (or one passed to ``load``), never code named by the file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..files import ModelFileError
from ..nn.registry import qualified_name, registered_module, registered_name
from .params import Constraint

__all__ = ["ModuleSpec", "build_module", "module_reference", "missing_module_error",
           "context_width"]


@dataclass(frozen=True)
class ModuleSpec(Constraint):
    """A registered name, a factory (a callable) or an ``nn.Module``."""

    @property
    def description(self) -> str:
        return ("a registered name (str), a factory (a callable returning an nn.Module, "
                "e.g. a class) or an nn.Module")

    def accepts(self, value: object) -> bool:
        return isinstance(value, (str, nn.Module)) or callable(value)


def build_module(spec: object, what: str) -> nn.Module:
    """A fresh module from ``spec`` (see the module docstring); ``what`` names the parameter
    in errors.

    Raises:
        ValueError: a name that is not registered, or a factory that does not return an
            ``nn.Module``.
    """
    if isinstance(spec, nn.Module):
        return copy.deepcopy(spec)
    factory = spec
    if isinstance(spec, str):
        factory = registered_module(spec)
        if factory is None:
            raise ValueError(f"no module is registered under the name {spec!r} (the {what}); "
                             f"call cnflow.nn.register_module({spec!r}, factory) first")
    if not callable(factory):
        raise ValueError(f"{what} must be a registered name, a factory or an nn.Module, got "
                         f"{type(spec).__name__}")
    module = factory()
    if not isinstance(module, nn.Module):
        raise ValueError(f"the {what} factory {qualified_name(factory)} returned a "
                         f"{type(module).__name__}, not an nn.Module")
    return module


def module_reference(spec: object) -> str | None:
    """The name a model file records for ``spec``: a name as given, the registered name of
    a factory (of an instance: of its class), else its qualified name ``module:qualname``;
    None for None."""
    if spec is None or isinstance(spec, str):
        return spec
    return registered_name(spec) or qualified_name(spec)


def missing_module_error(path: object, what: str, name: str) -> ModelFileError:
    """The error of a file whose ``what`` (e.g. "embedding") is registered nowhere."""
    return ModelFileError(
        f"{path} was fitted with the {what} {name!r}, which is not registered here: call "
        f"cnflow.nn.register_module({name!r}, factory) or pass load(..., {what}=factory)")


def context_width(embedding: nn.Module, feature_shape: tuple[int, ...]) -> int:
    """k, the width of the context ``embedding`` makes of features of ``feature_shape``: its
    output's columns on a batch of two rows of zeros (in eval mode, without gradients; the
    module's mode is restored). An ``out_features`` attribute, where the module has one,
    must agree.

    Raises:
        ValueError: the embedding fails on that batch, or does not map ``(2, *feature_shape)``
            to a (2, k) tensor.
    """
    like = next(iter(embedding.parameters()), None)
    factory = ({"dtype": torch.get_default_dtype()} if like is None
               else {"dtype": like.dtype, "device": like.device})
    shape = (2, *feature_shape)
    probe = torch.zeros(shape, **factory)
    training = embedding.training
    embedding.eval()
    try:
        with torch.no_grad():
            out = embedding(probe)
    except Exception as err:  # the user's network: say what it was given
        raise ValueError(f"the embedding could not be applied to features of shape {shape} "
                         f"(n = 2 rows of X): {type(err).__name__}: {err}") from err
    finally:
        embedding.train(training)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the embedding must return a tensor (n, k), got "
                         f"{type(out).__name__}")
    if out.ndim != 2:
        raise ValueError(f"the embedding must map features (n, *feature_shape) to a context "
                         f"(n, k); for features of shape {shape} it gave shape "
                         f"{tuple(out.shape)} (flatten its output)")
    if out.shape[0] != 2:
        raise ValueError(f"the embedding must give one context row per row of X; it gave "
                         f"{out.shape[0]} rows for 2 (features of shape {shape})")
    k = int(out.shape[1])
    if k < 1:
        raise ValueError("the embedding gave a context of 0 features")
    declared = getattr(embedding, "out_features", None)
    if isinstance(declared, int) and not isinstance(declared, bool) and declared != k:
        raise ValueError(f"the embedding says out_features={declared} but gives {k} "
                         "context features")
    return k
