"""Dask clusters: a local one sized to the machine, or a running scheduler by address."""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import dask
from distributed import Client, LocalCluster

from screenxai.pipeline.allocator import worker_environment

CONNECT_TIMEOUT = "30s"  # a scheduler that does not answer in this time is reported unreachable
PROFILE_SETTING = "distributed.worker.profile.enabled"


def local_cluster_size() -> tuple[int, int, dict | None]:
    """(workers, threads per worker, resources per worker) for a local cluster on this machine.

    Without a GPU: one single-threaded worker process per core keeps torch
    and NumPy from oversubscribing the CPU (training and model tasks use
    their worker's threads). With GPUs: one worker per GPU, each declaring
    ``GPU=1`` and sharing the cores, so model tasks go to them.
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        return gpus, max(1, cores // gpus), {"GPU": 1}
    return max(1, cores), 1, None


@contextmanager
def connect(scheduler: str | None = None, n_workers: int | None = None, cluster: str = "local",
            cluster_config: str | Path | None = None, tls_ca_file: str | Path | None = None,
            tls_cert: str | Path | None = None, tls_key: str | Path | None = None) -> Iterator[Client]:
    """A client to ``scheduler``, or to a new cluster (``local``, ``slurm`` or ``kubernetes``) closed on exit.

    SLURM and Kubernetes clusters are sized by ``cluster_config`` (see
    ``screenxai.pipeline.clusters``). With the three TLS files (or a
    ``security`` section in the configuration) every connection is TLS:
    a ``tls://`` scheduler, or a new cluster's scheduler and workers. The
    local cluster's workers start with ``local_worker_settings``.
    """
    from screenxai.pipeline import clusters

    if cluster not in clusters.KINDS:
        raise clusters.ClusterError(f"unknown cluster {cluster!r}: choose one of {', '.join(clusters.KINDS)}")
    config = clusters.load_cluster_config(cluster_config) if cluster_config else clusters.ClusterConfig()
    tls = _tls_files(config, tls_ca_file, tls_cert, tls_key)
    security = tls.security() if tls else None
    with quiet_interrupted_sync():
        yield from _connected(scheduler, n_workers, cluster, config, security)


def _connected(scheduler, n_workers, cluster, config, security) -> Iterator[Client]:
    """Yield the client of ``connect``, closing what it started."""
    from screenxai.pipeline import clusters

    if scheduler:
        with _client(scheduler, security) as client:
            yield client
    elif cluster == "slurm":
        with clusters.slurm_cluster(config, security) as slurm:
            clusters.scale_slurm(slurm, config, security)
            with Client(slurm, security=security) as client:
                yield client
    elif cluster == "kubernetes":
        with clusters.kubernetes_cluster(config, tls=security is not None) as kube, Client(kube) as client:
            yield client
    else:
        with local_worker_settings(), _local_cluster(n_workers, security) as local, \
                Client(local, security=security) as client:
            yield client


@contextmanager
def local_worker_settings() -> Iterator[None]:
    """Settings the local cluster's workers start with, so that their memory does not grow with the run.

    - glibc's adaptive malloc thresholds, which torch needs to run at full
      speed (``screenxai.pipeline.allocator``);
    - no statistical profile: a Dask worker samples its stacks every 10 ms
      and keeps one profile per second of the last hour, so its memory grows
      with the run's length for an hour (``benchmarks/README.md``,
      ``bench_scale.py``). The dashboard's profile page stays empty.
    """
    with worker_environment(), dask.config.set({PROFILE_SETTING: False}):
        yield


def _tls_files(config, ca_file, cert, key):
    """The TLS files given on the command line (all three or none), else the configuration's."""
    from screenxai.pipeline.clusters import ClusterError, TLSFiles

    given = [ca_file, cert, key]
    if any(given) and not all(given):
        raise ClusterError("TLS needs all of --tls-ca-file, --tls-cert and --tls-key")
    return TLSFiles(*(str(p) for p in given)) if all(given) else config.tls


@contextmanager
def _client(scheduler: str, security) -> Iterator[Client]:
    """A client of a running scheduler; ``tls://`` needs certificates and certificates need ``tls://``."""
    from screenxai.pipeline.clusters import ClusterError

    if scheduler.startswith("tls://") != (security is not None):
        raise ClusterError(f"scheduler {scheduler}: a tls:// address needs --tls-ca-file, --tls-cert and --tls-key,"
                           " and TLS files need a tls:// address")
    try:
        client = Client(scheduler, security=security, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as err:
        raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from err
    with client:
        yield client


def _local_cluster(n_workers: int | None, security) -> LocalCluster:
    """A local cluster of one process per core (or GPU), on loopback; over TLS with ``security``."""
    workers, threads, resources = local_cluster_size()
    tls = {"security": security, "protocol": "tls://"} if security is not None else {}
    with _workers_ignore_ctrl_c():
        return LocalCluster(n_workers=n_workers or workers, threads_per_worker=threads, processes=True,
                            resources=resources, dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR, **tls)


class _InterruptedSyncFilter(logging.Filter):
    """Drop the ``NameError`` that distributed's ``sync`` logs when Ctrl-C lands before its future exists.

    ``distributed.utils.sync`` schedules a ``cancel`` callback on Ctrl-C
    that reads a ``future`` it may not have assigned yet; the loop then
    logs a traceback that says nothing about the run.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, NameError) and "'future'" in str(error))


@contextmanager
def quiet_interrupted_sync() -> Iterator[None]:
    """Silence distributed's spurious Ctrl-C traceback (see ``_InterruptedSyncFilter``) while a client is open."""
    logger, quiet = logging.getLogger("tornado.application"), _InterruptedSyncFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start worker processes with Ctrl-C ignored (they inherit it), so that the client alone handles it.

    A terminal sends Ctrl-C to every process of the command; without this,
    each worker prints its own traceback while the client shuts it down.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
