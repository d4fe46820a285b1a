"""Deprecated alias of :mod:`cnflow.training` (kept for one release)."""

import warnings

from .training import *  # noqa: F403
from .training import __all__  # noqa: F401

warnings.warn("cnflow.train is deprecated; import from cnflow.training instead",
              DeprecationWarning, stacklevel=2)
