"""Dask clusters: a local one sized to the machine, or a running scheduler by address."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from collections.abc import Iterator

from distributed import Client, LocalCluster


def local_cluster_size() -> tuple[int, int]:
    """(workers, threads per worker) for a local cluster on this machine.

    One single-threaded worker process per core keeps torch and NumPy from
    oversubscribing the CPU (each task sets its own thread count to 1 too).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores), 1


@contextmanager
def connect(scheduler: str | None = None, n_workers: int | None = None) -> Iterator[Client]:
    """A client to ``scheduler``, or to a new local cluster closed on exit."""
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    workers, threads = local_cluster_size()
    with LocalCluster(n_workers=n_workers or workers, threads_per_worker=threads, processes=True,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def gpu_resources(client: Client) -> dict | None:
    """``{"GPU": 1}`` when some worker declares a GPU resource, else None (any worker may run the task)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return {"GPU": 1} if any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers) else None
