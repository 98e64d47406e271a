"""``screenxai run`` against a real cluster: ``dask scheduler`` and ``dask worker`` processes on loopback.

One worker declares ``GPU=1``: model-stage tasks must run there only, and
the tables must equal those of an in-process local cluster, row for row.
Killing a worker process mid-run must neither lose nor duplicate a field.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from distributed import Client, LocalCluster, get_task_stream

from screenxai.models.presets import registered_preset
from screenxai.pipeline.run import RunResult, run_cells
from screenxai.pipeline.train_job import TrainSettings, train
from screenxai.plate.reader import Plate, open_plate
from screenxai.plate.simulate import simulate_screen
from test_models_training import MINI

pytestmark = pytest.mark.slow

TIMING_COLUMNS = ["seconds"]  # fields.parquet; cells/ and embeddings/ have none
START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 120


@dataclass
class RealCluster:
    """A scheduler and two worker processes (each under a nanny), and a client to them."""

    client: Client
    processes: list[subprocess.Popen]

    def wait(self) -> None:
        """Block until both workers have joined the scheduler."""
        self.client.wait_for_workers(2, timeout=START_TIMEOUT_S)

    @property
    def gpu_worker(self) -> str:
        """Address of the one worker declaring a GPU (a new one after its process was restarted)."""
        (address,) = [a for a, w in self.client.scheduler_info(n_workers=-1)["workers"].items()
                      if w["resources"].get("GPU")]
        return address


def _dask(args: list[str], log: Path) -> subprocess.Popen:
    """Start ``dask ARGS`` in its own process group (so teardown reaches the nanny's worker too)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each process group we started, then SIGKILL whatever is left."""
    for process in reversed(processes):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in reversed(processes):
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for(path: Path, processes: list[subprocess.Popen], logs: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not path.exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            raise RuntimeError(f"dask scheduler did not start; see the logs in {logs}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory) -> Iterator[RealCluster]:
    """``dask scheduler`` and two single-threaded ``dask worker`` processes on 127.0.0.1, one with ``GPU=1``.

    Workers preload the model stage (torch, diffusers: the slow imports), so
    requesting this fixture before ``bundle`` lets them start while it trains;
    tests call ``RealCluster.wait`` before using them.
    """
    folder = tmp_path_factory.mktemp("real-cluster")
    scheduler_file = folder / "scheduler.json"
    processes = [_dask(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                        "--scheduler-file", str(scheduler_file)], folder / "scheduler.log")]
    try:
        _wait_for(scheduler_file, processes, folder)
        common = ["worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1", "--nthreads", "1",
                  "--nworkers", "1", "--no-dashboard", "--preload", "screenxai.pipeline.model_stage"]
        processes.append(_dask([*common, "--local-directory", str(folder / "cpu"), "--name", "cpu"],
                               folder / "cpu.log"))
        processes.append(_dask([*common, "--local-directory", str(folder / "gpu"), "--name", "gpu",
                                "--resources", "GPU=1"], folder / "gpu.log"))
        with Client(scheduler_file=str(scheduler_file)) as client:
            yield RealCluster(client, processes)
    finally:
        _stop(processes)


@pytest.fixture(scope="module")
def local_client() -> Iterator[Client]:
    """An in-process local cluster: it trains the bundle (workers see the ``mini`` preset) and is the reference."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def _simulated(folder: Path, rows: int, columns: int, size: int, seed: int) -> Plate:
    path = folder / "plate.zarr"
    simulate_screen(path, rows=rows, columns=columns, fields=2, size=size, seed=seed)
    return open_plate(path)


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Plate:
    return _simulated(tmp_path_factory.mktemp("cluster-plate"), rows=2, columns=4, size=192, seed=3)


@pytest.fixture(scope="module")
def bundle(plate, local_client, tmp_path_factory) -> Path:
    """A mini-preset bundle (classifier and autoencoder); worker processes load it without knowing the preset."""
    with registered_preset(MINI):
        out = tmp_path_factory.mktemp("cluster-bundle") / "bundle"
        train([plate], out, local_client, TrainSettings(preset="mini", seed=1, max_cells_per_well=30,
                                                        stages=("classifier", "autoencoder"),
                                                        check_cells=8, check_steps=2))
        return out


def _sorted_table(out: Path, name: str) -> pd.DataFrame:
    table = pd.read_parquet(out / name)
    for column in ("plate", "well"):
        table[column] = table[column].astype(str)  # hive partitions come back as categoricals
    return table.sort_values("cell_id").reset_index(drop=True)


def test_model_tasks_run_on_the_gpu_worker_and_tables_equal_a_local_run(real_cluster, plate, bundle,
                                                                        local_client, tmp_path):
    real_cluster.wait()
    with get_task_stream(real_cluster.client) as stream:
        remote = run_cells([plate], tmp_path / "remote", real_cluster.client, bundle=bundle, fields_per_batch=2)
    local = run_cells([plate], tmp_path / "local", local_client, bundle=bundle, fields_per_batch=2)

    scoring = [t for t in stream.data if str(t["key"]).startswith("score-")]
    cutting = [t for t in stream.data if str(t["key"]).startswith("cut-")]
    assert len(scoring) == len(plate.field_keys()) // 2
    assert {t["worker"] for t in scoring} == {real_cluster.gpu_worker}
    assert len({t["worker"] for t in cutting}) == 2  # the cell stage used both workers
    for name in ("cells", "embeddings"):
        got, want = _sorted_table(remote.out, name), _sorted_table(local.out, name)
        assert len(got) > 100 and got["cell_id"].is_unique
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    pd.testing.assert_frame_equal(remote.fields.drop(columns=TIMING_COLUMNS),
                                  local.fields.drop(columns=TIMING_COLUMNS), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(remote.out / "wells.parquet"),
                                  pd.read_parquet(local.out / "wells.parquet"), check_exact=True)


def _run_killing_a_worker(plate: Plate, out: Path, cluster: RealCluster,
                          bundle: Path) -> tuple[RunResult, dict, list[dict]]:
    """``run_cells`` with the GPU worker's process SIGKILLed once the first field is written.

    Returns the run's result, what happened at the kill (the worker's
    address and PID, the fields finished by then and in all) and the task
    stream of the run.
    """
    address = cluster.gpu_worker
    pid = cluster.client.run(os.getpid)[address]
    killed: dict = {}

    def kill_once(row: dict) -> None:
        if not killed:
            os.kill(pid, signal.SIGKILL)
            finished = sum(1 for p in out.glob("cells/*/*/.field-*.parquet.done"))
            killed.update(address=address, pid=pid, finished=finished, total=len(plate.field_keys()))

    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = run_cells([plate], out, cluster.client, bundle=bundle, fields_per_batch=1,
                                          on_field=kill_once)
        except BaseException as err:  # re-raised in the test's thread
            outcome["error"] = err

    with get_task_stream(cluster.client) as stream:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(RUN_TIMEOUT_S)
    assert not thread.is_alive(), f"the run did not finish within {RUN_TIMEOUT_S} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], killed, stream.data


def test_a_worker_killed_mid_run_loses_and_duplicates_no_field(real_cluster, bundle, tmp_path):
    real_cluster.wait()
    plate = _simulated(tmp_path, rows=2, columns=6, size=128, seed=5)
    result, killed, stream = _run_killing_a_worker(plate, tmp_path / "out", real_cluster, bundle)

    assert killed and killed["finished"] < killed["total"] - 4, killed  # work was left when the worker died
    assert killed["pid"] not in real_cluster.client.run(os.getpid).values()  # the nanny started a new process
    restarted = real_cluster.gpu_worker
    scoring = {t["worker"] for t in stream if str(t["key"]).startswith("score-")}
    assert restarted != killed["address"] and restarted in scoring  # model tasks went on in the new process
    assert scoring <= {killed["address"], restarted}
    keys = [(k.well, k.field) for k in plate.field_keys()]
    fields = pd.read_parquet(result.out / "fields.parquet")
    assert list(zip(fields["well"], fields["field"])) == keys and (fields["status"] == "done").all()
    files = sorted(p.relative_to(result.out / "cells").as_posix() for p in (result.out / "cells").rglob("*.parquet")
                   if not p.name.startswith("."))
    assert files == sorted(f"plate={plate.name}/well={w}/field-{f}.parquet" for w, f in keys)
    cells = pd.read_parquet(result.out / "cells")
    assert cells["cell_id"].is_unique
    assert cells.groupby(["well", "field"], observed=True).size().to_dict() == \
        dict(zip(zip(fields["well"], fields["field"]), fields["n_cells"]))
    embeddings = pd.read_parquet(result.out / "embeddings")
    assert embeddings["cell_id"].is_unique and set(embeddings["cell_id"]) == set(cells["cell_id"])
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert [(f["well"], f["field"], f["status"]) for f in manifest["fields"]] == [(w, f, "done") for w, f in keys]
