"""Command-line options that choose the Dask cluster of ``screenxai run`` and ``screenxai train``.

They arrive in the command as keyword arguments named like the parameters
of ``screenxai.pipeline.cluster.connect``, which takes them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from screenxai.pipeline.clusters import KINDS

_FILE = click.Path(path_type=Path, exists=True, dir_okay=False)
OPTIONS = (
    click.option("--cluster", type=click.Choice(KINDS), default="local", show_default=True,
                 help="Cluster to start when no --scheduler is given: this machine, SLURM jobs (dask-jobqueue) "
                      "or Kubernetes pods (dask-kubernetes operator); see deploy/README.md."),
    click.option("--cluster-config", type=_FILE,
                 help="YAML or JSON file of the SLURM or Kubernetes workers: workers, gpu_workers, cores, memory, "
                      "walltime, queue, image, namespace, environment, security."),
    click.option("--tls-ca-file", type=_FILE, help="CA certificate of the cluster's TLS (with --tls-cert, --tls-key)."),
    click.option("--tls-cert", type=_FILE, help="Certificate this client and the cluster's members present."),
    click.option("--tls-key", type=_FILE, help="Private key of --tls-cert."),
)


def cluster_options(command: Callable) -> Callable:
    """``command`` with the cluster options added (passed on as ``cluster``, ``cluster_config``, ``tls_*``)."""
    for option in reversed(OPTIONS):
        command = option(command)
    return command
