"""Clusters labs already run: SLURM through dask-jobqueue, Kubernetes through the dask-kubernetes operator.

A cluster configuration file (YAML or JSON) says how big the workers are
and where they run; the functions here turn it into what the libraries
take: ``SLURMCluster`` options and job scripts, the operator's
``DaskCluster`` and ``DaskWorkerGroup`` resources. They are pure, so the
job script and the resources can be read before anything is submitted.
CPU workers are single-threaded processes (one per core, as on a local
cluster); each GPU worker has one GPU and declares ``GPU=1``, so model
tasks go to it.

TLS: a ``distributed.Security`` from certificate files (the CA, and one
certificate and key that the scheduler, workers and client share). Only
file paths ever reach a job script or a resource, never a key's contents,
and only the environment variables the configuration names go to workers.
"""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import signal
import threading
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from screenxai.errors import ScreenxaiError

if TYPE_CHECKING:
    from distributed import Security

KINDS = ("local", "slurm", "kubernetes")
SCHEDULER_PORT = 8786
IMAGE_USER = 1000  # the user of deploy/docker's images
TLS_MOUNT = "/etc/dask/tls"  # where Kubernetes pods mount the TLS secret
# Keys of a kubernetes.io/tls secret with the CA beside it (as cert-manager writes them).
TLS_SECRET_FILES = {"ca_file": "ca.crt", "cert": "tls.crt", "key": "tls.key"}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|CREDENTIAL|(^|_)KEY($|_)|ACCESS_KEY", re.IGNORECASE)
KUBERNETES_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?")
ALIASES = {"partition": "queue", "n_workers": "workers"}


class ClusterError(ScreenxaiError):
    """A cluster configuration, certificate or cluster cannot be used as asked."""


@dataclass(frozen=True)
class TLSFiles:
    """The certificate files of a TLS cluster: CA, and the certificate and key every member presents."""

    ca_file: str
    cert: str
    key: str

    def security(self) -> Security:
        """A ``Security`` requiring TLS, with these files for the client, scheduler and workers."""
        from distributed import Security

        for name, path in (("CA file", self.ca_file), ("certificate", self.cert), ("key", self.key)):
            if not Path(path).is_file():
                raise ClusterError(f"TLS {name} {path} not found")
        return Security(tls_ca_file=self.ca_file, tls_client_cert=self.cert, tls_client_key=self.key,
                        tls_scheduler_cert=self.cert, tls_scheduler_key=self.key,
                        tls_worker_cert=self.cert, tls_worker_key=self.key, require_encryption=True)


@dataclass(frozen=True)
class ClusterConfig:
    """Workers of a SLURM or Kubernetes cluster, as a cluster configuration file gives them."""

    name: str = "screenxai"
    workers: int = 1  # CPU workers: SLURM jobs or pods, each ``cores`` single-threaded worker processes
    gpu_workers: int = 0  # GPU workers: one GPU each, declaring GPU=1
    cores: int = 1  # cores of each job or pod
    memory: str = "8GB"  # memory of each job or pod
    walltime: str = "12:00:00"  # SLURM
    queue: str | None = None  # SLURM partition of the CPU workers
    gpu_queue: str | None = None  # SLURM partition of the GPU workers (default: queue)
    interface: str | None = None  # SLURM network interface, e.g. ib0
    image: str = "screenxai:cpu"  # Kubernetes image of the scheduler and CPU workers
    gpu_image: str = "screenxai:cuda"  # Kubernetes image of the GPU workers
    namespace: str = "default"  # Kubernetes
    tls_secret: str = "screenxai-tls"  # Kubernetes secret holding ca.crt, tls.crt and tls.key
    data_claim: str | None = None  # Kubernetes PersistentVolumeClaim (ReadWriteMany) of plates and outputs
    data_path: str = "/data"  # where pods mount it
    environment: dict[str, str] = field(default_factory=dict)  # variables set on every worker
    tls: TLSFiles | None = None


def load_cluster_config(path: str | Path) -> ClusterConfig:
    """The configuration in a YAML or JSON file; relative certificate paths are read from the file's folder.

    ``partition`` is accepted for ``queue`` and ``n_workers`` for
    ``workers``; a ``security`` section holds ``ca_file``, ``cert`` and ``key``.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ClusterError(f"cluster configuration {path} cannot be read: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ClusterError(f"cluster configuration {path} is neither YAML nor JSON: {err}") from err
    if not isinstance(data, dict):
        raise ClusterError(f"cluster configuration {path} must be a mapping of settings")
    data = {ALIASES.get(k, k): v for k, v in data.items()}
    security = data.pop("security", None)
    known = {f.name for f in fields(ClusterConfig)} - {"tls"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ClusterError(f"cluster configuration {path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    config = ClusterConfig(**data)
    if security is not None:
        config = replace(config, tls=_tls_section(security, path))
    return checked(config, str(path))


def _tls_section(security: object, path: Path) -> TLSFiles:
    """The ``security`` section of the file at ``path`` as certificate paths, relative ones from its folder."""
    if not isinstance(security, dict) or set(security) != set(TLS_SECRET_FILES):
        raise ClusterError(f"cluster configuration {path}: security needs exactly ca_file, cert and key")
    return TLSFiles(**{k: str((path.parent / str(v)).resolve()) for k, v in security.items()})


def checked(config: ClusterConfig, source: str) -> ClusterConfig:
    """``config`` when its values can be used; else one error naming ``source`` and the setting."""
    for name in ("workers", "gpu_workers", "cores"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "cores" else 0):
            raise ClusterError(f"cluster configuration {source}: {name} must be a whole number"
                               f" {'of at least 1' if name == 'cores' else '(0 or more)'}, not {value!r}")
    if not isinstance(config.memory, str) or not _is_size(config.memory):
        raise ClusterError(f"cluster configuration {source}: memory {config.memory!r} is not a size such as 8GB")
    if config.workers + config.gpu_workers == 0:
        raise ClusterError(f"cluster configuration {source}: no workers (workers and gpu_workers are both 0)")
    if not KUBERNETES_NAME.fullmatch(str(config.name)):
        raise ClusterError(f"cluster configuration {source}: name {config.name!r} must be lower-case letters,"
                           " digits and '-' (a Kubernetes name)")
    if not isinstance(config.environment, dict):
        raise ClusterError(f"cluster configuration {source}: environment must map variable names to values")
    secret = sorted(k for k in config.environment if SECRET_NAME.search(str(k)))
    if secret:
        raise ClusterError(f"cluster configuration {source}: environment {secret} looks like a credential; give"
                           " workers credentials through the cluster's own secrets, not in job scripts or pod specs")
    return config


def _is_size(text: str) -> bool:
    """Whether ``text`` is a memory size Dask reads (``8GB``, ``16GiB``)."""
    from dask.utils import parse_bytes

    try:
        return parse_bytes(text) > 0
    except ValueError:
        return False


def worker_environment(config: ClusterConfig) -> dict[str, str]:
    """Variables every worker gets: only those the configuration names, as strings."""
    return {str(k): str(v) for k, v in config.environment.items()}


# --- SLURM (dask-jobqueue) ---


def slurm_options(config: ClusterConfig, gpu: bool) -> dict:
    """``SLURMCluster`` keyword arguments of the CPU (``gpu=False``) or GPU workers' jobs.

    A CPU job runs ``cores`` single-threaded worker processes; a GPU job
    one worker with ``cores`` threads, one GPU (``--gres=gpu:1``) and
    ``--resources GPU=1``.
    """
    return {
        "cores": config.cores, "processes": 1 if gpu else config.cores, "memory": config.memory,
        "walltime": config.walltime, "queue": (config.gpu_queue or config.queue) if gpu else config.queue,
        "job_name": f"{config.name}-{'gpu' if gpu else 'cpu'}-worker", "interface": config.interface,
        "job_script_prologue": [f"export {k}={shlex.quote(v)}" for k, v in worker_environment(config).items()],
        "job_extra_directives": ["--gres=gpu:1"] if gpu else [],
        "worker_extra_args": ["--resources", "GPU=1"] if gpu else [],
    }


def jobqueue(module: str = "dask_jobqueue"):
    """Import a dask-jobqueue module, keeping this process's Ctrl-C handler.

    Importing dask-jobqueue installs a SIGINT handler that exits silently
    (``sys.exit()``, status 0); ``screenxai`` needs Ctrl-C to stay a
    ``KeyboardInterrupt``, which it turns into one line saying what was kept.
    """
    if threading.current_thread() is not threading.main_thread():
        return importlib.import_module(module)
    handler = signal.getsignal(signal.SIGINT)
    try:
        return importlib.import_module(module)
    finally:
        signal.signal(signal.SIGINT, handler)


def slurm_cluster(config: ClusterConfig, security: Security | None = None, **scheduler_options):
    """A ``SLURMCluster`` whose scheduler runs here (over TLS with ``security``); no job submitted yet.

    ``scale_slurm`` submits the jobs. ``scheduler_options`` go to the
    scheduler (e.g. ``host``).
    """
    tls = {"security": security, "protocol": "tls://"} if security is not None else {}
    return jobqueue().SLURMCluster(**slurm_options(config, gpu=False), **tls,
                        scheduler_options={"dashboard_address": "127.0.0.1:0", **scheduler_options})


def slurm_gpu_job_script(cluster, config: ClusterConfig, security: Security | None = None) -> str:
    """The job script of a GPU worker of ``cluster`` (``cluster.job_script()`` is a CPU worker's)."""
    job = _slurm_gpu_job(config, security)
    return job["cls"](cluster.scheduler_address, name="dummy-name", **job["options"]).job_script()


def _slurm_gpu_job(config: ClusterConfig, security: Security | None) -> dict:
    """The ``SpecCluster`` worker spec of one GPU job."""
    tls = {"security": security, "protocol": "tls://"} if security is not None else {"protocol": None}
    job = jobqueue("dask_jobqueue.slurm").SLURMJob
    return {"cls": job, "options": {**slurm_options(config, gpu=True), **tls, "config_name": "slurm"}}


def scale_slurm(cluster, config: ClusterConfig, security: Security | None = None) -> None:
    """Submit the configured CPU and GPU worker jobs of ``cluster`` through dask-jobqueue."""
    if shutil.which("sbatch") is None:
        raise ClusterError("sbatch not found: --cluster slurm submits workers from a SLURM login node")
    gpu = _slurm_gpu_job(config, security)
    cluster.worker_spec.update({f"{config.name}-gpu-{i}": gpu for i in range(config.gpu_workers)})
    cluster.scale(jobs=config.workers + config.gpu_workers)


# --- Kubernetes (dask-kubernetes operator) ---


def _kubernetes_resources(config: ClusterConfig, gpu: bool) -> dict:
    """Requests and limits of a CPU or GPU worker pod (and of the scheduler, for ``gpu=False``)."""
    from dask.utils import parse_bytes

    size = {"cpu": str(config.cores), "memory": str(parse_bytes(config.memory))}
    return {"requests": dict(size), "limits": {**size, **({"nvidia.com/gpu": "1"} if gpu else {})}}


def _tls_arguments() -> list[str]:
    """Command-line TLS options of ``dask scheduler`` and ``dask worker``: the mounted secret's files."""
    return ["--tls-ca-file", f"{TLS_MOUNT}/{TLS_SECRET_FILES['ca_file']}",
            "--tls-cert", f"{TLS_MOUNT}/{TLS_SECRET_FILES['cert']}",
            "--tls-key", f"{TLS_MOUNT}/{TLS_SECRET_FILES['key']}"]


def _with_volumes(pod: dict, config: ClusterConfig, tls: bool) -> dict:
    """``pod`` (a scheduler or worker spec) with the data claim and, with ``tls``, the TLS secret (read-only).

    The pod runs as the images' user, whose group can read the secret's files and nobody else.
    """
    mounts, volumes = [], []
    if config.data_claim:
        mounts.append({"name": "data", "mountPath": config.data_path})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": config.data_claim}})
    if tls:
        mounts.append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": config.tls_secret, "defaultMode": 0o440}})
    if mounts:
        pod["spec"]["containers"][0]["volumeMounts"] = mounts
        pod["spec"]["volumes"] = volumes
    pod["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsUser": IMAGE_USER, "fsGroup": IMAGE_USER}
    return pod


def _environment(config: ClusterConfig, tls: bool) -> dict[str, str]:
    """Pod environment: the configured variables, plus the TLS scheduler address and required encryption."""
    env = worker_environment(config)
    if tls:
        env["DASK_SCHEDULER_ADDRESS"] = scheduler_service_address(config, "tls")
        env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
    return env


def scheduler_service_address(config: ClusterConfig, protocol: str = "tls") -> str:
    """Address of the scheduler's service inside the Kubernetes cluster."""
    return f"{protocol}://{config.name}-scheduler.{config.namespace}.svc.cluster.local:{SCHEDULER_PORT}"


def kubernetes_worker_spec(config: ClusterConfig, gpu: bool, tls: bool) -> dict:
    """The operator's worker spec of the CPU or GPU workers (``make_worker_spec``), with TLS when asked."""
    from dask_kubernetes.operator import make_worker_spec

    command = (["dask", "worker", "--nthreads", str(config.cores), "--resources", "GPU=1"] if gpu
               else ["dask", "worker", "--nworkers", str(config.cores), "--nthreads", "1"])
    spec = make_worker_spec(image=config.gpu_image if gpu else config.image,
                            n_workers=config.gpu_workers if gpu else config.workers,
                            resources=_kubernetes_resources(config, gpu), env=_environment(config, tls),
                            worker_command=command + (_tls_arguments() if tls else []))
    return _with_volumes(spec, config, tls)


def kubernetes_cluster_spec(config: ClusterConfig, tls: bool) -> dict:
    """The ``DaskCluster`` resource (``make_cluster_spec``): scheduler and CPU workers, over TLS when asked."""
    from dask_kubernetes.operator import make_cluster_spec

    spec = make_cluster_spec(name=config.name, image=config.image, n_workers=config.workers,
                             resources=_kubernetes_resources(config, gpu=False), env=_environment(config, tls))
    spec["metadata"]["namespace"] = config.namespace
    spec["spec"]["worker"] = kubernetes_worker_spec(config, gpu=False, tls=tls)
    if tls:
        scheduler = spec["spec"]["scheduler"]
        container = scheduler["spec"]["containers"][0]
        container["args"] = ["dask", "scheduler", "--host", "0.0.0.0", "--port", str(SCHEDULER_PORT),
                             "--protocol", "tls", *_tls_arguments()]
        container["env"] = [e for e in container["env"] if e["name"] != "DASK_SCHEDULER_ADDRESS"]
    _with_volumes(spec["spec"]["scheduler"], config, tls)
    return spec


def kubernetes_gpu_worker_group(config: ClusterConfig, tls: bool) -> dict:
    """The ``DaskWorkerGroup`` resource of the GPU workers, attached to the cluster by name."""
    return {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskWorkerGroup",
            "metadata": {"name": f"{config.name}-gpu", "namespace": config.namespace},
            "spec": {"cluster": config.name, "worker": kubernetes_worker_spec(config, gpu=True, tls=tls)}}


def kubernetes_manifest(config: ClusterConfig, tls: bool = True) -> list[dict]:
    """Every resource of the cluster, for ``kubectl apply``: the DaskCluster and, with GPU workers, their group."""
    resources = [kubernetes_cluster_spec(config, tls)]
    if config.gpu_workers:
        resources.append(kubernetes_gpu_worker_group(config, tls))
    return resources


def kubernetes_cluster(config: ClusterConfig, tls: bool):
    """A ``KubeCluster`` created by the operator from :func:`kubernetes_cluster_spec`, GPU group added.

    The operator's ``KubeCluster`` talks to its scheduler over plain TCP,
    so a TLS cluster is applied with ``kubectl`` (:func:`kubernetes_manifest`)
    and reached with ``--scheduler tls://`` instead.
    """
    if tls:
        raise ClusterError("--cluster kubernetes cannot reach a TLS scheduler (dask-kubernetes' KubeCluster connects"
                           " over plain TCP): apply deploy/kubernetes/daskcluster.yaml with kubectl and run with"
                           f" --scheduler {scheduler_service_address(config)} and the --tls-* files")
    from dask_kubernetes.operator import KubeCluster

    try:
        cluster = KubeCluster(custom_cluster_spec=kubernetes_cluster_spec(config, tls=False),
                              namespace=config.namespace, shutdown_on_close=True)
    except Exception as err:  # kr8s and the operator raise many kinds; all mean the same to a user
        raise ClusterError(f"cannot create Kubernetes cluster {config.name!r} in namespace"
                           f" {config.namespace!r}: {type(err).__name__}: {err}") from err
    if config.gpu_workers:
        cluster.add_worker_group("gpu", custom_spec=kubernetes_worker_spec(config, gpu=True, tls=False))
    return cluster


def main(argv: list[str] | None = None) -> None:
    """Print the Kubernetes manifest (TLS) of a cluster configuration file, for ``kubectl apply -f -``."""
    import sys

    import yaml

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m screenxai.pipeline.clusters CLUSTER_CONFIG")
    try:
        manifest = kubernetes_manifest(load_cluster_config(args[0]), tls=True)
    except ClusterError as err:
        raise SystemExit(f"error: {err}") from err
    print("# Built by: python -m screenxai.pipeline.clusters " + args[0])
    print(yaml.safe_dump_all(manifest, sort_keys=False), end="")


if __name__ == "__main__":
    main()
