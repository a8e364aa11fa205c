"""Keep the memory of freed tensors in the process, so that the next pass reuses it without page faults.

On Linux, PyTorch's CPU tensors come from glibc's ``malloc``. glibc serves a block larger than its *mmap threshold*
with a fresh ``mmap`` and gives it back to the kernel on ``free``; it also trims free memory above its *trim
threshold* off the top of the heap. The threshold adapts to the blocks freed, but only up to 32 MiB. A 3D network's
activations and convolution buffers are freed and allocated again at every forward and backward pass, so each pass
touches fresh pages, and the kernel zeroes every page on first touch. ``benchmarks/bench_allocator.py`` on a 2-core
AMD EPYC (20 passes of the quick 3D UNet at batch 4, 48^3, in fresh processes): APGD took 0.76 of its time in fp32 and
0.79 in bf16, training 0.82, no-grad forward passes 0.67, and the page faults fell from 0.9-1.8 million to at most
3,462. In a long process glibc adapts its threshold and the gain is smaller: the whole worst-case demo
(``robustseg demo --preset worst-case``) spent 15 s of system time instead of 50 s and its wall time moved within
noise. PyTorch's CPU tuning guide makes the same point by recommending jemalloc or tcmalloc (``LD_PRELOAD``);
:func:`keep_freed_memory` gets the effect from glibc itself, at run time, with ``mallopt``:

* ``M_MMAP_THRESHOLD`` = 1 GiB: blocks up to 1 GiB come from the heap, where freed blocks are reused;
* ``M_TRIM_THRESHOLD`` = 2 GiB - 1: free memory at the top of the heap is kept up to that size.

The cost: the process keeps the memory of its largest pass until it ends (its resident size stays near its peak,
instead of falling back between passes), and the peak grows a little where blocks of different sizes come and go
(the worst-case demo: 3.47 GiB without, 3.51 GiB with it on the same settings; ``robustseg segment`` of a BraTS-sized
volume: 3,824 MiB without, 4,004 MiB with it, ``tests/reliability/test_memory_bound.py``, whose bound is 5,000). The
robustseg command line calls it at start, and every bundle's ``initialize`` list calls it, so
``python -m monai.bundle run`` gets it too. Setting the environment variable ``ROBUSTSEG_KEEP_FREED_MEMORY=0`` leaves
glibc's defaults alone. Elsewhere (macOS, Windows, musl) it does nothing.

Example::

    from common.utils.allocator import keep_freed_memory

    keep_freed_memory()   # True where glibc took the settings
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

__all__ = ["ENV_VAR", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

ENV_VAR = "ROBUSTSEG_KEEP_FREED_MEMORY"
"""Set to ``0`` (or ``false``, ``no``, ``off``) to keep glibc's allocator defaults."""
MMAP_THRESHOLD = 1 << 30
"""Blocks up to this size (bytes) come from the heap instead of their own ``mmap``."""
TRIM_THRESHOLD = (1 << 31) - 1
"""Free memory at the top of the heap up to this size (bytes) stays in the process."""

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_OFF = {"0", "false", "no", "off"}
_applied: bool | None = None
logger = logging.getLogger(__name__)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring); idempotent.

    Returns:
        ``True`` if glibc accepted both settings (now or at an earlier call), ``False`` where it did nothing: not
        glibc, opted out through :data:`ENV_VAR`, or a ``mallopt`` that refused a value.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    """Set both thresholds where glibc is there and the user did not opt out; whether glibc took them."""
    if os.environ.get(ENV_VAR, "").strip().lower() in _OFF:
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # both: setting either one stops glibc's own adaptation of the two
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if applied:
        logger.debug("glibc keeps freed memory: mmap threshold %d, trim threshold %d bytes", MMAP_THRESHOLD,
                     TRIM_THRESHOLD)  # fmt: skip
    return applied
