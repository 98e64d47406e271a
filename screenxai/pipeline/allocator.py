"""glibc malloc settings for torch in Dask workers, and handing freed memory back to the system.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so they
hand freed memory back to the system. Setting any malloc threshold turns
off glibc's adaptive mmap threshold, so every buffer over 128 KiB torch
allocates (convolution workspaces, activations) is mapped and unmapped
afresh; measured on this project's models, inference ran 2.4x slower in a
worker than in a plain process (``benchmarks/README.md``). Local clusters
are therefore started without that variable, and a worker started with it
(``dask worker`` on a cluster) raises both thresholds at run time instead.

With the adaptive thresholds, the large temporaries of a field (images,
label images, crops, activations) come from the heap, and glibc keeps much
of what they free: a worker's resident memory grows over a plate's fields
although nothing is held. Tasks therefore call ``release_free_memory`` when
they finish a field or a group of fields.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache

import dask

TRIM_VARIABLE = "MALLOC_TRIM_THRESHOLD_"
M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest adaptive mmap threshold on 64-bit systems
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # as glibc sets it when it adapts the mmap threshold


def worker_environment() -> dask.config.set:
    """A config context in which local cluster workers start without ``MALLOC_TRIM_THRESHOLD_``."""
    return dask.config.set({f"distributed.nanny.pre-spawn-environ.{TRIM_VARIABLE}": None})


def relax_malloc_thresholds() -> bool:
    """Raise glibc's mmap and trim thresholds in this process when a fixed trim threshold was set.

    Returns whether they were changed (only on glibc, and only when
    ``MALLOC_TRIM_THRESHOLD_`` is in the environment).
    """
    libc = _glibc()
    if TRIM_VARIABLE not in os.environ or libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_free_memory() -> bool:
    """Return the free pages of every malloc arena to the system (glibc ``malloc_trim(0)``).

    Returns whether any memory was released (always False without glibc).
    """
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
