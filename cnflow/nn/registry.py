r"""Named factories of torch modules: how a model file names a user's network without holding
its code.

An estimator that takes a user module (e.g. :class:`cnflow.ConditionalCNFDensity`'s
``embedding`` and ``net``) saves its weights, and in place of the module's code a *name*:
the name it is registered under here, or else the qualified name ``module:qualname`` of its
factory. Loading builds a fresh module by calling the factory registered under that name and
loads the weights into it; nothing is imported or unpickled by a name read from a file.
Registering a factory (usually where the network is defined, at import) is the standard way
to make a model file loadable::

    register_module("mypkg.nets:SmallCNN", SmallCNN)

A factory is any callable that takes no arguments and returns a fresh ``nn.Module`` (a
class whose constructor needs no arguments is one; so is ``functools.partial(Net, width=32)``
or a function). Registering under the factory's own qualified name
(:func:`qualified_name`) lets files saved before registration load too.

Example:
    >>> from torch import nn
    >>> from cnflow.nn import (register_module, registered_module, registered_name,
    ...                        unregister_module)
    >>> def tiny() -> nn.Module:
    ...     return nn.Linear(3, 2)
    >>> register_module("docs:tiny", tiny)
    >>> registered_module("docs:tiny") is tiny, registered_name(tiny)
    (True, 'docs:tiny')
    >>> registered_module("docs:nothing") is None
    True
    >>> unregister_module("docs:tiny")
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["register_module", "registered_module", "registered_name", "unregister_module",
           "qualified_name"]

#: A callable of no arguments that returns a fresh ``nn.Module`` (a class is one).
ModuleFactory = Callable[[], nn.Module]

_REGISTRY: dict[str, ModuleFactory] = {}


def qualified_name(factory: object) -> str:
    """``module:qualname`` of a factory or class (of an instance: of its class), e.g.
    ``"mypkg.nets:SmallCNN"``; a callable without a ``__qualname__`` (such as a
    ``functools.partial``) is named by its type."""
    if not (isinstance(factory, type) or hasattr(factory, "__qualname__")):
        factory = type(factory)
    module = getattr(factory, "__module__", None) or "?"
    return f"{module}:{getattr(factory, '__qualname__', type(factory).__qualname__)}"


def register_module(name: str, factory: ModuleFactory | None = None, *,
                    replace: bool = False):
    """Register ``factory`` under ``name`` (with no factory: a decorator that registers what
    it decorates and returns it unchanged).

    Arguments:
        name: a non-empty string, by convention ``"package.module:Name"``.
        factory: a callable of no arguments returning a fresh ``nn.Module`` (e.g. a class).
        replace: allow replacing another factory registered under ``name``. Without it,
            re-registering a factory of the same qualified name (a module imported again,
            a notebook cell run again) replaces it; any other factory is a ValueError.

    Returns:
        None, or the decorator when ``factory`` is None.

    Raises:
        ValueError: an empty or non-string name, a factory that is not callable, or a name
            taken by another factory (without ``replace``).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a module's registered name must be a non-empty string, got "
                         f"{name!r}")
    if factory is None:
        def decorate(f: ModuleFactory) -> ModuleFactory:
            register_module(name, f, replace=replace)
            return f
        return decorate
    if not callable(factory):
        raise ValueError(f"register_module({name!r}, ...) needs a factory (a callable "
                         f"returning an nn.Module, e.g. a class), got {type(factory).__name__}")
    old = _REGISTRY.get(name)
    if (old is not None and old is not factory and not replace
            and qualified_name(old) != qualified_name(factory)):
        raise ValueError(f"{name!r} is already registered to {qualified_name(old)}; pass "
                         "replace=True to register another factory under it")
    _REGISTRY[name] = factory
    return None


def registered_module(name: str) -> ModuleFactory | None:
    """The factory registered under ``name``, or None."""
    return _REGISTRY.get(name) if isinstance(name, str) else None


def registered_name(factory: object) -> str | None:
    """The name ``factory`` (or, for a module instance, its class) is registered under, or
    None (the first name, where it has several)."""
    if isinstance(factory, nn.Module):
        factory = type(factory)
    for name, registered in _REGISTRY.items():
        if registered is factory:
            return name
    return None


def unregister_module(name: str) -> None:
    """Remove ``name`` from the registry (nothing happens if it is not registered)."""
    _REGISTRY.pop(name, None)
