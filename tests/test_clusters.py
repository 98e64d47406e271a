"""SLURM and Kubernetes clusters from a configuration file, and TLS between client, scheduler and workers.

The SLURM job scripts are dask-jobqueue's own and the Kubernetes resources
the dask-kubernetes operator's builders'; they are checked for what the
workers need and for the absence of anything secret. The TLS test runs the
pipeline through a real loopback TLS scheduler and worker.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from distributed import Client, Security

from screenxai.cells import CellConfig
from screenxai.pipeline.cluster import connect
from screenxai.pipeline.clusters import (ClusterConfig, ClusterError, TLSFiles, kubernetes_cluster,
                                         kubernetes_manifest, load_cluster_config, slurm_cluster,
                                         slurm_gpu_job_script)
from screenxai.pipeline.run import open_plates, run_cells
from screenxai.plate.simulate import simulate_screen

pytest.importorskip("dask_jobqueue")
pytest.importorskip("dask_kubernetes")
REPO = Path(__file__).resolve().parents[1]
AWS_SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> TLSFiles:
    """A temporary self-signed CA, certificate and key (distributed's ``Security.temporary``) written to files."""
    root = tmp_path_factory.mktemp("tls")
    temporary = Security.temporary()
    files = {"ca.pem": temporary.tls_ca_file, "cert.pem": temporary.tls_client_cert,
             "key.pem": temporary.tls_client_key}
    for name, text in files.items():
        (root / name).write_text(text)
        (root / name).chmod(0o600)
    return TLSFiles(ca_file=str(root / "ca.pem"), cert=str(root / "cert.pem"), key=str(root / "key.pem"))


def key_body(tls: TLSFiles) -> list[str]:
    """Lines of the private key's contents, which no script or resource may contain."""
    return [line for line in Path(tls.key).read_text().splitlines() if line and not line.startswith("-----")]


def write_config(path: Path, settings: dict) -> Path:
    path.write_text(yaml.safe_dump(settings) if path.suffix == ".yaml" else json.dumps(settings))
    return path


SETTINGS = {"name": "screen-a", "workers": 2, "gpu_workers": 1, "cores": 4, "memory": "16GB",
            "walltime": "02:00:00", "partition": "cpu", "gpu_queue": "gpu", "interface": "lo",
            "image": "registry.example.org/screenxai:cpu", "gpu_image": "registry.example.org/screenxai:cuda",
            "namespace": "screens", "data_claim": "screens-data", "environment": {"SCREENXAI_CACHE": "/scratch/cache"}}


def test_configuration_files_in_yaml_and_json_read_alike_with_relative_certificates(tmp_path, certificates):
    security = {"ca_file": "tls/ca.pem", "cert": "tls/cert.pem", "key": "tls/key.pem"}
    yaml_config = load_cluster_config(write_config(tmp_path / "c.yaml", {**SETTINGS, "security": security}))
    json_config = load_cluster_config(write_config(tmp_path / "c.json", {**SETTINGS, "security": security}))
    assert yaml_config == json_config
    assert (yaml_config.queue, yaml_config.workers, yaml_config.cores) == ("cpu", 2, 4)
    assert yaml_config.tls == TLSFiles(*(str(tmp_path / "tls" / f) for f in ("ca.pem", "cert.pem", "key.pem")))
    with pytest.raises(ClusterError, match="TLS CA file .*tls/ca.pem not found"):
        yaml_config.tls.security()


@pytest.mark.parametrize("settings, message", [
    ({"cores": 4, "gpus_per_node": 2}, r"c.yaml: unknown setting\(s\) \['gpus_per_node'\]"),
    ({"workers": -1}, "workers must be a whole number"),
    ({"workers": 0, "gpu_workers": 0}, "no workers"),
    ({"memory": "lots"}, "memory 'lots' is not a size such as 8GB"),
    ({"name": "Screen_A"}, "name 'Screen_A' must be lower-case"),
    ({"environment": {"AWS_SECRET_ACCESS_KEY": AWS_SECRET}}, r"\['AWS_SECRET_ACCESS_KEY'\] looks like a credential"),
    ({"security": {"ca_file": "ca.pem"}}, "security needs exactly ca_file, cert and key"),
])
def test_bad_configurations_are_refused_naming_the_file_and_setting(tmp_path, settings, message):
    with pytest.raises(ClusterError, match=message):
        load_cluster_config(write_config(tmp_path / "c.yaml", settings))


def test_slurm_job_scripts_hold_resources_gpu_environment_and_tls_but_no_secret(tmp_path, certificates,
                                                                                monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    config = load_cluster_config(write_config(tmp_path / "c.yaml", SETTINGS))
    security = certificates.security()
    with slurm_cluster(config, security) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")  # interface lo: loopback only
        cpu, gpu = cluster.job_script(), slurm_gpu_job_script(cluster, config, security)
    for script in (cpu, gpu):
        assert "#SBATCH --cpus-per-task=4" in script and "#SBATCH -t 02:00:00" in script
        assert "#SBATCH --mem=15G" in script  # jobqueue's rounding of 16GB
        assert "export SCREENXAI_CACHE=/scratch/cache" in script
        assert f"{cluster.scheduler_address} " in script and "--protocol tls://" in script
        for flag, path in (("--tls-ca-file", certificates.ca_file), ("--tls-cert", certificates.cert),
                           ("--tls-key", certificates.key)):
            assert f"{flag} {path}" in script
        assert AWS_SECRET not in script and "PRIVATE KEY" not in script
        assert not any(line in script for line in key_body(certificates))
    assert "#SBATCH -p cpu" in cpu and "--nthreads 1 " in cpu and "--nworkers 4 " in cpu
    assert "gres" not in cpu and "GPU=1" not in cpu
    assert "#SBATCH -p gpu" in gpu and "#SBATCH --gres=gpu:1" in gpu
    assert "--nthreads 4" in gpu and "--resources GPU=1" in gpu and "--nworkers" not in gpu


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """``sbatch`` and ``scancel`` on PATH that only record what dask-jobqueue hands them (no SLURM here)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "submitted"
    bin_dir.mkdir()
    record.mkdir()
    scripts = {"sbatch": f'cp "$1" {record}/job-$$.sh; echo "Submitted batch job $$"',
               "scancel": f'echo "$@" >> {record}/cancelled'}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_slurm_cluster_submits_cpu_and_gpu_jobs_through_jobqueue_and_cancels_them(tmp_path, fake_slurm,
                                                                                   certificates):
    import time

    config = write_config(tmp_path / "c.yaml", {**SETTINGS, "workers": 2, "gpu_workers": 1})
    with connect(cluster="slurm", cluster_config=config, tls_ca_file=certificates.ca_file,
                 tls_cert=certificates.cert, tls_key=certificates.key) as client:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        deadline = time.monotonic() + 20
        while len(list(fake_slurm.glob("job-*.sh"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        scripts = [p.read_text() for p in sorted(fake_slurm.glob("job-*.sh"))]
    assert len(scripts) == 3
    assert sum("--resources GPU=1" in s for s in scripts) == 1
    assert sum("--nworkers 4 " in s and "--nthreads 1 " in s for s in scripts) == 2
    assert all(f"{address} " in s for s in scripts)
    job_ids = sorted(p.stem.removeprefix("job-") for p in fake_slurm.glob("job-*.sh"))
    assert sorted((fake_slurm / "cancelled").read_text().split()) == job_ids


def test_slurm_without_sbatch_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    config = write_config(tmp_path / "c.yaml", {**SETTINGS})
    with pytest.raises(ClusterError, match="sbatch not found"), connect(cluster="slurm", cluster_config=config):
        pass


def test_kubernetes_resources_hold_resources_gpu_group_environment_and_tls_but_no_secret(tmp_path, monkeypatch,
                                                                                        certificates):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    config = load_cluster_config(write_config(tmp_path / "c.yaml", SETTINGS))
    cluster, gpu_group = kubernetes_manifest(config, tls=True)
    assert (cluster["kind"], cluster["metadata"]) == ("DaskCluster", {"name": "screen-a", "namespace": "screens"})
    scheduler = cluster["spec"]["scheduler"]["spec"]
    args = scheduler["containers"][0]["args"]
    assert args[:2] == ["dask", "scheduler"] and args[args.index("--protocol") + 1] == "tls"
    assert args[args.index("--tls-key") + 1] == "/etc/dask/tls/tls.key"
    assert gpu_group["kind"] == "DaskWorkerGroup" and gpu_group["spec"]["cluster"] == "screen-a"
    cpu_worker = cluster["spec"]["worker"]
    gpu_worker = gpu_group["spec"]["worker"]
    assert (cpu_worker["replicas"], gpu_worker["replicas"]) == (2, 1)
    for pod in (cluster["spec"]["scheduler"], cpu_worker, gpu_worker):
        container = pod["spec"]["containers"][0]
        assert pod["spec"]["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "screens-data"}},
                                          {"name": "tls", "secret": {"secretName": "screenxai-tls",
                                                                     "defaultMode": 0o440}}]
        assert pod["spec"]["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000}
        assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"},
                                             {"name": "tls", "mountPath": "/etc/dask/tls", "readOnly": True}]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["SCREENXAI_CACHE"] == "/scratch/cache"
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        assert container["resources"]["requests"] == {"cpu": "4", "memory": "16000000000"}
    for worker in (cpu_worker, gpu_worker):
        container = worker["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["DASK_SCHEDULER_ADDRESS"] == "tls://screen-a-scheduler.screens.svc.cluster.local:8786"
        assert "--tls-ca-file" in container["args"]
    gpu_container, cpu_container = gpu_worker["spec"]["containers"][0], cpu_worker["spec"]["containers"][0]
    assert gpu_container["image"] == "registry.example.org/screenxai:cuda"
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "GPU=1" in gpu_container["args"] and "GPU=1" not in cpu_container["args"]
    assert "nvidia.com/gpu" not in cpu_container["resources"]["limits"]
    text = yaml.safe_dump_all([cluster, gpu_group])
    assert AWS_SECRET not in text and "PRIVATE KEY" not in text
    assert not any(line in text for line in key_body(certificates))


def test_deploy_manifest_is_the_one_built_from_the_deploy_configuration():
    config = load_cluster_config(REPO / "deploy" / "kubernetes" / "cluster.yaml")
    shipped = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "daskcluster.yaml").read_text()))
    assert shipped == kubernetes_manifest(config, tls=True)
    assert config.gpu_workers >= 1 and len(shipped) == 2


def test_kubernetes_refuses_tls_through_kubecluster_and_reports_an_unreachable_api(tmp_path, monkeypatch):
    config = ClusterConfig(name="screen-a")
    with pytest.raises(ClusterError, match="--scheduler tls://screen-a-scheduler.default.svc.cluster.local:8786"):
        kubernetes_cluster(config, tls=True)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterError, match="cannot create Kubernetes cluster 'screen-a' in namespace 'default'"):
        kubernetes_cluster(config, tls=False)


def test_pipeline_runs_over_tls_and_clients_without_the_certificates_are_refused(tmp_path, certificates):
    simulate_screen(tmp_path / "sim.zarr", rows=1, columns=3, fields=1, size=128)
    files = {"tls_ca_file": certificates.ca_file, "tls_cert": certificates.cert, "tls_key": certificates.key}
    with connect(n_workers=1, **files) as cluster_client:
        address = cluster_client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        with connect(scheduler=address, **files) as client:
            result = run_cells(open_plates([tmp_path / "sim.zarr"]), tmp_path / "out", client, CellConfig())
        wells = pd.read_parquet(tmp_path / "out" / "wells.parquet")
        assert list(wells["well"]) == ["A01", "A02", "A03"] and (wells["n_cells"] > 0).all()
        assert len(result.wells) == 3
        with pytest.raises(OSError):  # plain TCP to the TLS port
            Client(address.replace("tls://", "tcp://"), timeout="3s")
        with pytest.raises(OSError):  # TLS, but with a certificate of another CA
            Client(address, security=Security.temporary(), timeout="3s")
        with pytest.raises(ClusterError, match="tls:// address needs --tls-ca-file"):
            with connect(scheduler=address):
                pass


@pytest.fixture(scope="module")
def small_plate(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli-plate") / "plate.zarr"
    simulate_screen(path, rows=1, columns=3, fields=1, size=64)
    return path


@pytest.mark.parametrize("command", ["run", "train"])
def test_run_and_train_take_the_cluster_options_and_fail_in_one_line(tmp_path, small_plate, command, monkeypatch,
                                                                     certificates):
    from click.testing import CliRunner

    from screenxai.cli import main

    config = write_config(tmp_path / "c.yaml", SETTINGS)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    base = [command, str(small_plate), "-o", str(tmp_path / "out")]
    slurm = CliRunner().invoke(main, [*base, "--cluster", "slurm", "--cluster-config", str(config)])
    assert slurm.exit_code == 2 and slurm.output.strip().startswith("error: sbatch not found")
    partial = CliRunner().invoke(main, [*base, "--tls-cert", certificates.cert])
    assert partial.exit_code == 2 and "TLS needs all of --tls-ca-file, --tls-cert and --tls-key" in partial.output
    plain = CliRunner().invoke(main, [*base, "--scheduler", "tls://127.0.0.1:9"])
    assert plain.exit_code == 2 and "a tls:// address needs --tls-ca-file" in plain.output
    assert "Traceback" not in slurm.output + partial.output + plain.output


def test_every_deploy_recipe_starts_the_scheduler_and_workers_with_tls():
    slurm = load_cluster_config(REPO / "deploy" / "slurm" / "cluster.yaml")
    assert slurm.tls is not None and slurm.gpu_workers >= 1
    assert slurm.tls.key == str((REPO / "deploy" / "slurm" / "tls" / "key.pem").resolve())
    compose = yaml.safe_load((REPO / "deploy" / "docker" / "compose.yaml").read_text())["services"]
    dask_services = {name: s["command"] for name, s in compose.items() if s["command"][0] == "dask"}
    assert set(dask_services) == {"scheduler", "cpu-worker", "gpu-worker"}
    for name, command in dask_services.items():
        assert {"--tls-ca-file", "--tls-cert", "--tls-key"} <= set(command), name
    assert dask_services["scheduler"][dask_services["scheduler"].index("--protocol") + 1] == "tls"
    assert all("tls://scheduler:8786" in dask_services[w] for w in ("cpu-worker", "gpu-worker"))
    assert "GPU=1" in dask_services["gpu-worker"]
    assert all(p.startswith("127.0.0.1:") for s in compose.values() for p in s.get("ports", []))
    job = yaml.safe_load((REPO / "deploy" / "kubernetes" / "run-job.yaml").read_text())
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--scheduler") + 1].startswith("tls://") and "--tls-key" in args


def test_cuda_image_takes_torch_from_the_index_of_its_cuda_base():
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile.cuda").read_text()
    cuda = re.search(r"ARG CUDA_VERSION=(\d+)\.(\d+)", dockerfile)
    index = re.search(r"ARG TORCH_INDEX=\S+/whl/cu(\d+)", dockerfile)
    assert re.search(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}", dockerfile, re.MULTILINE)
    assert index.group(1) == cuda.group(1) + cuda.group(2)
    assert 'pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in dockerfile


@pytest.mark.parametrize("through_screenxai", [False, True], ids=["plain import", "jobqueue()"])
def test_importing_dask_jobqueue_through_screenxai_keeps_ctrl_c_a_keyboard_interrupt(through_screenxai):
    """dask-jobqueue's import replaces the SIGINT handler with a silent exit; ``jobqueue()`` puts Python's back."""
    load = ("from screenxai.pipeline.clusters import jobqueue; jobqueue(); jobqueue('dask_jobqueue.slurm')"
            if through_screenxai else "import dask_jobqueue")
    script = f"import signal; {load}; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    kept = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.strip()
    assert kept == str(through_screenxai)
