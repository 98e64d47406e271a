"""Dask clusters: a local one sized to the machine, or a running scheduler by address."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from collections.abc import Iterator

from distributed import Client, LocalCluster

from screenxai.pipeline.allocator import worker_environment


def local_cluster_size() -> tuple[int, int, dict | None]:
    """(workers, threads per worker, resources per worker) for a local cluster on this machine.

    Without a GPU: one single-threaded worker process per core keeps torch
    and NumPy from oversubscribing the CPU (each task sets its own thread
    count to 1 too). With GPUs: one worker per GPU, each declaring
    ``GPU=1`` and sharing the cores, so model tasks go to them.
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        return gpus, max(1, cores // gpus), {"GPU": 1}
    return max(1, cores), 1, None


@contextmanager
def connect(scheduler: str | None = None, n_workers: int | None = None) -> Iterator[Client]:
    """A client to ``scheduler``, or to a new local cluster closed on exit.

    The local cluster's workers keep glibc's adaptive malloc thresholds
    (``screenxai.pipeline.allocator``), which torch needs to run at full speed.
    """
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    workers, threads, resources = local_cluster_size()
    with worker_environment(), LocalCluster(n_workers=n_workers or workers, threads_per_worker=threads, processes=True,
                      resources=resources, dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        yield client


def model_capacity(client: Client) -> tuple[dict | None, int, int]:
    """(resources model tasks ask for, workers that can run them, threads of all workers).

    Model tasks ask for ``{"GPU": 1}`` when some worker declares a GPU
    resource, and then only those workers run them; otherwise any worker may.
    """
    workers = list(client.scheduler_info(n_workers=-1)["workers"].values())
    gpu_workers = sum(1 for w in workers if w.get("resources", {}).get("GPU", 0) >= 1)
    threads = sum(w["nthreads"] for w in workers)
    return ({"GPU": 1}, gpu_workers, threads) if gpu_workers else (None, len(workers), threads)


def gpu_resources(client: Client) -> dict | None:
    """``{"GPU": 1}`` when some worker declares a GPU resource, else None (any worker may run the task)."""
    return model_capacity(client)[0]
