"""cnflow.allocator: glibc's thresholds set at import, seen in glibc's own account of the
blocks it serves by memory maps (mallinfo2)."""

import ctypes
import os
import subprocess
import sys

import pytest

from cnflow import allocator

GLIBC = allocator._glibc_mallopt() is not None and hasattr(ctypes.CDLL(None), "mallinfo2")

# a fresh process: import cnflow, allocate a 24 MB tensor (a large Jacobian buffer) and print
# how many bytes glibc's memory-mapped blocks grew by, and whether cnflow tuned the allocator
PATTERN = """
import ctypes, torch
import cnflow, cnflow.allocator as allocator
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
before = mallinfo2().hblkhd
buffer = torch.empty(24 * 2**20 // 4)
print(mallinfo2().hblkhd - before, allocator.TUNED)
"""


def _run(**env: str) -> tuple[int, bool]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                                allocator.SWITCH)}
    environment.update(env)
    out = subprocess.run([sys.executable, "-c", PATTERN], env=environment, check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), out[1] == "True"


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_import_serves_megabyte_buffers_from_the_heap():
    """With glibc's defaults a 24 MB block is a fresh memory map (every page faults on first
    touch, and the map is returned when freed); after import cnflow it comes from the heap,
    whose freed blocks are reused."""
    tuned, was_tuned = _run()
    plain, was_plain = _run(**{allocator.SWITCH: "0"})
    assert was_tuned and not was_plain
    assert plain >= 24 * 2**20
    assert tuned == 0


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_glibcs_own_settings_are_left_alone():
    _, was_tuned = _run(MALLOC_TRIM_THRESHOLD_="1000000")
    assert not was_tuned


@pytest.mark.parametrize("bad", [0, -5, 2**31, 1.5, True, "32"])
def test_thresholds_are_checked(bad):
    with pytest.raises(ValueError, match="positive int below 2\\*\\*31"):
        allocator.tune_allocator(mmap_threshold=bad)
    with pytest.raises(ValueError, match="trim_threshold"):
        allocator.tune_allocator(trim_threshold=bad)
