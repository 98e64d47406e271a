"""glibc malloc settings for torch in Dask workers.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so they
hand freed memory back to the system. Setting any malloc threshold turns
off glibc's adaptive mmap threshold, so every buffer over 128 KiB torch
allocates (convolution workspaces, activations) is mapped and unmapped
afresh; measured on this project's models, inference ran 2.4x slower in a
worker than in a plain process (``benchmarks/README.md``). Local clusters
are therefore started without that variable, and a worker started with it
(``dask worker`` on a cluster) raises both thresholds at run time instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

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
    if TRIM_VARIABLE not in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
