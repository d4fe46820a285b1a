"""The C allocator's thresholds, set once for the CPU tensors of solves and training (glibc).

torch allocates a CPU tensor with the C library's ``malloc``. glibc serves a block above its
*mmap threshold* with a fresh memory map and returns it to the system when it is freed; its
*trim threshold* decides when free memory at the top of the heap goes back too. An
exact-trace step allocates and frees several Jacobian buffers of megabytes (rows × D × width
floats), so under glibc's dynamic defaults each of them can be a new mapping whose pages the
kernel must zero on first touch: hundreds of thousands of page faults a second, and a
slower fit (the measurements are in ``docs/benchmarks.md``, "Large tables").

:func:`tune_allocator` sets the mmap threshold to :data:`MMAP_THRESHOLD` (32 MiB, glibc's
largest on 64-bit systems: blocks up to that size come from the heap and are reused) and the
trim threshold to :data:`TRIM_THRESHOLD` (up to 256 MiB of freed heap is kept for reuse
instead of being returned at once). Importing :mod:`cnflow` calls it, unless the environment
variable :data:`SWITCH` is ``0`` or the user set glibc's own ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_``. Elsewhere (macOS, Windows, musl) nothing is changed. The cost is
memory a process keeps after freeing it: at most the trim threshold, on top of its peak.

Example:
    >>> from cnflow import allocator
    >>> allocator.TUNED in (True, False)  # True on Linux with glibc unless switched off
    True
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "SWITCH", "TUNED", "tune_allocator",
           "tune_allocator_unless_switched_off"]

#: Blocks up to this size come from the heap (glibc's largest mmap threshold on 64-bit).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap is returned to the system above this size.
TRIM_THRESHOLD = 256 * 2**20
#: The environment variable that switches the tuning off when it is ``0``.
SWITCH = "CNFLOW_TUNE_MALLOC"
#: Whether this process's allocator was tuned by :func:`tune_allocator`.
TUNED = False

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _glibc_mallopt():
    """glibc's ``mallopt`` as a callable, or None where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD,
                   trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds (bytes) for this process; True if both were set
    (False where the C library is not glibc or it refused a value). Setting them turns off
    glibc's dynamic adjustment of the mmap threshold for the rest of the process."""
    global TUNED
    for name, value in (("mmap_threshold", mmap_threshold),
                        ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
            raise ValueError(f"{name} must be a positive int below 2**31 bytes, got {value!r}")
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    done = (mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
            and mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1)
    TUNED = TUNED or done
    return done


def tune_allocator_unless_switched_off() -> bool:
    """:func:`tune_allocator` with its defaults, unless :data:`SWITCH` is ``0`` or glibc's
    own threshold variables are set (what importing :mod:`cnflow` calls)."""
    if os.environ.get(SWITCH, "1").strip() == "0":
        return False
    if any(name in os.environ for name in _GLIBC_SETTINGS):
        return False
    return tune_allocator()
