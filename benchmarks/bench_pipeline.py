"""``screenxai run`` on a local Dask cluster: overhead against a bare loop, memory, reading, task granularity.

On a simulated plate (default 2 x 6 wells, 2 fields of 512 px) and on a
plate with 4x the fields:

- overhead: cells/s of ``run_cells`` with a bundle (the default local
  cluster: one single-threaded worker per core) against a bare loop in one
  process over the same fields (``process_field``, ``predict_proba``,
  ``autoencoder.encode``, crops normalised with ``fit_normalisation``, torch
  threads = cores). Both include fitting the normalisation; the run also
  writes its Parquet tables. Goal: ratio >= 0.85. Cells per CPU second
  (all processes of the run) are recorded too: on a machine shared with
  other work they depend much less on its load than cells/s.
- memory: per-process RSS (workers and client, psutil, sampled every
  0.1 s) above the baseline taken after a warm-up run loaded the bundle on
  every worker, and the peak of task results held by workers (distributed's
  ``MemorySampler``, ``managed``); each plate gets a fresh cluster. Goal:
  the larger plate's increase <= 1.3x the smaller's (streaming, not
  gathering).
- reading: fields/s and MB/s of ``Plate.image(...).values`` (and of the
  same dask array computed with the synchronous scheduler) against
  ``zarr.open_array(...)[:]`` of the same arrays (page cache warm).
- granularity: the round trip of an empty task on the same cluster against
  the cell stage's cost per field, which is why the cell stage keeps one task
  per field.

Without ``--bundle`` the ``tiny`` preset is trained first on the plate's
controls (``screenxai.pipeline.train_job.train``). The machine's load
average is recorded with each figure. Results go to
``benchmarks/results/pipeline_cpu.json``.

    python -m benchmarks.bench_pipeline --bundle /path/to/tiny-bundle
    python -m benchmarks.bench_pipeline                       # trains the tiny bundle first
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil
import torch
import zarr
from distributed import Client, get_task_stream
from distributed.diagnostics import MemorySampler

from screenxai.cells import CellConfig, fit_normalisation, process_field
from screenxai.models.bundle import load_bundle
from screenxai.models.classifier import predict_proba
from screenxai.pipeline.cluster import connect, local_cluster_size
from screenxai.pipeline.run import run_cells
from screenxai.pipeline.train_job import TrainSettings, train
from screenxai.plate.reader import Plate, open_plate
from screenxai.plate.simulate import simulate_screen

RESULTS = Path(__file__).parent / "results" / "pipeline_cpu.json"
MB = 1024**2


def hardware() -> dict:
    """Platform, CPU model, cores, torch version."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor())
    return {"platform": platform.platform(), "cpu": model, "cores": local_cluster_size()[0],
            "torch": torch.__version__, "device": "cpu"}


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine shares its cores)."""
    return [round(x, 2) for x in os.getloadavg()]


def bare_loop(plate: Plate, bundle_path: Path, threads: int, wells: Sequence[str] | None = None) -> dict:
    """Cells/s of the cell stage and the models over every field (of ``wells``), in this process, without Dask."""
    torch.set_num_threads(threads)
    bundle = load_bundle(bundle_path)
    classifier, autoencoder = bundle["classifier"], bundle["autoencoder"]
    start, cpu_start = time.perf_counter(), time.process_time()
    config = CellConfig(crop_size=bundle.crop_size, normalisation=fit_normalisation(plate))
    n_cells, cell_stage, models = 0, [], []
    keys = plate.field_keys(list(wells) if wells is not None else None)
    for key in keys:
        begin = time.perf_counter()
        batch = process_field(plate, key.well, key.field, config)
        middle = time.perf_counter()
        predict_proba(classifier, batch.crops)
        with torch.no_grad():
            autoencoder.encode(torch.from_numpy(batch.crops))
        models.append(time.perf_counter() - middle)
        cell_stage.append(middle - begin)
        n_cells += len(batch.crops)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"fields": len(keys), "cells": n_cells, "seconds": round(seconds, 3),
            "cells_per_s": round(n_cells / seconds, 1),
            "cpu_seconds": round(cpu, 2), "cells_per_cpu_s": round(n_cells / cpu, 1),
            "median_cell_stage_s_per_field": round(statistics.median(cell_stage), 4),
            "median_models_s_per_field": round(statistics.median(models), 4), "load": load()}


class PeriodicSampler:
    """Appends ``sample()`` to ``samples`` every ``interval`` seconds, in a thread, while ``running()``'s block runs.

    ``times`` holds each sample's ``time.perf_counter()``.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list = []
        self.times: list[float] = []
        self._stop = threading.Event()

    def sample(self) -> object:
        raise NotImplementedError

    @contextmanager
    def running(self) -> Iterator[None]:
        """Sample into ``samples`` while the block runs."""
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.times.append(time.perf_counter())
            self.samples.append(self.sample())
            self._stop.wait(self.interval)


class RssSampler(PeriodicSampler):
    """The resident memory of each of a set of processes."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        super().__init__(interval)
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}

    def sample(self) -> dict[str, int]:
        """RSS in bytes of each process, by name."""
        return {name: p.memory_info().rss for name, p in self.processes.items()}


class SchedulerTaskSampler(PeriodicSampler):
    """How many tasks the scheduler holds: the size of the graph it keeps."""

    def __init__(self, client: Client, interval: float = 1.0) -> None:
        super().__init__(interval)
        self.client = client

    def sample(self) -> int:
        return self.client.run_on_scheduler(_scheduler_task_count)


def _scheduler_task_count(dask_scheduler) -> int:
    return len(dask_scheduler.tasks)


def downsampled(values: list[float], points: int = 60) -> list[float]:
    """About ``points`` evenly spaced values of ``values``, the last included."""
    step = max(1, -(-len(values) // points))
    return values[::step] + ([values[-1]] if (len(values) - 1) % step else [])


def quarter_peaks(times: Sequence[float], values: Sequence[float], start: float, end: float) -> list[float]:
    """The peak of ``values`` in each quarter of the time from ``start`` to ``end``.

    A peak over more samples of the same steady process is higher by chance
    alone; the peaks of equal windows show whether the level itself rises.
    """
    edges = [start + (end - start) * i / 4 for i in range(5)]
    return [round(max((v for t, v in zip(times, values) if lo <= t <= hi), default=float("nan")), 1)
            for lo, hi in zip(edges[:-1], edges[1:])]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User plus system CPU seconds used so far by ``processes`` (all their threads)."""
    return sum(p.cpu_times().user + p.cpu_times().system for p in processes)


def pipeline_run(plate: Plate, bundle_path: Path, workdir: Path, name: str,
                 wells: Sequence[str] | None = None) -> dict:
    """Time, CPU and memory of ``run_cells`` on a fresh default local cluster, after a warm-up run on one well.

    CPU seconds count the workers, their nannies and this process (client,
    and the local cluster's scheduler and nannies), so they do not depend on what else
    the machine runs. ``managed`` is the scheduler's count of task results
    held in workers' memory (distributed's ``MemorySampler``): what the graph
    keeps, apart from the allocator's behaviour; ``scheduler_tasks`` the
    tasks the scheduler holds, sampled every second. ``wells`` limits the run
    to those wells.
    """
    with connect() as client:
        run_cells([plate], workdir / f"{name}-warmup", client, bundle=bundle_path, wells=[plate.field_keys()[0].well])
        pids = {**{f"worker {i}": pid for i, pid in enumerate(client.run(os.getpid).values())},
                "client": os.getpid()}
        sampler = RssSampler(pids)
        processes = list({p.pid: p for p in (*sampler.processes.values(),
                                             *(p.parent() for p in sampler.processes.values()))}.values())
        managed, graph = MemorySampler(), SchedulerTaskSampler(client)
        workers = [p for n, p in sampler.processes.items() if n != "client"]
        baseline, cpu_start, workers_start = sampler.sample(), cpu_seconds(processes), cpu_seconds(workers)
        start = time.perf_counter()
        field_times: list[float] = []
        with sampler.running(), graph.running(), \
                managed.sample("managed", client=client, measure="managed", interval=0.2), \
                get_task_stream(client) as stream:
            result = run_cells([plate], workdir / name, client, bundle=bundle_path, wells=wells,
                               on_field=lambda _: field_times.append(time.perf_counter()))
        seconds, cpu = time.perf_counter() - start, cpu_seconds(processes) - cpu_start
        cpu_workers = cpu_seconds(workers) - workers_start
        granularity = task_round_trip(client)
    n_cells = int(result.fields["n_cells"].sum())
    peak_total = max(sum(s.values()) for s in sampler.samples)
    peak_workers = max(sum(v for k, v in s.items() if k != "client") for s in sampler.samples)
    peak_client = max(s["client"] for s in sampler.samples)
    workers_mb = [(sum(v for k, v in s.items() if k != "client") - sum(v for k, v in baseline.items() if k != "client"))
                  / MB for s in sampler.samples]
    in_field_stage = [t <= field_times[-1] for t in sampler.times]
    totals_mb = [(sum(s.values()) - sum(baseline.values())) / MB for s in sampler.samples]
    prefixes = [str(t["key"]).split("-")[0] for t in stream.data]
    return {
        "fields": len(result.fields), "cells": n_cells, "seconds": round(seconds, 3),
        "cells_per_s": round(n_cells / seconds, 1), "cpu_seconds": round(cpu, 2),
        "cpu_seconds_workers": round(cpu_workers, 2),
        "cells_per_cpu_s": round(n_cells / cpu, 1), "load": load(),
        "tasks": {"cut": prefixes.count("cut"), "score": prefixes.count("score"),
                  "other": len(prefixes) - prefixes.count("cut") - prefixes.count("score")},
        "memory_mb": {
            "baseline": round(sum(baseline.values()) / MB, 1),
            "above_baseline": round((peak_total - sum(baseline.values())) / MB, 1),
            "workers_above_baseline": round((peak_workers - sum(v for k, v in baseline.items() if k != "client"))
                                            / MB, 1),
            "client_above_baseline": round((peak_client - baseline["client"]) / MB, 1),
            "peak_managed": round(float(managed.to_pandas()["managed"].max()) / MB, 1),
            "samples": len(sampler.samples),
            "client_series": downsampled([round((s["client"] - baseline["client"]) / MB, 1)
                                          for s in sampler.samples]),
            "workers_series": downsampled([round(v, 1) for v in workers_mb]),
            "workers_peak_field_stage": round(max(v for v, f in zip(workers_mb, in_field_stage) if f), 1),
            "workers_peak_after_field_stage": round(max((v for v, f in zip(workers_mb, in_field_stage) if not f),
                                                        default=float("nan")), 1),
            "above_baseline_by_quarter": quarter_peaks(sampler.times, totals_mb, start, field_times[-1]),
            "field_stage_s": round(field_times[-1] - start, 1)},
        "scheduler_tasks": {"peak": max(graph.samples, default=0), "samples": len(graph.samples)},
        "task_round_trip_s": granularity,
    }


def task_round_trip(client: Client, n: int = 200) -> float:
    """Seconds per task of ``n`` empty tasks mapped over the cluster (scheduling and transfer overhead)."""
    client.gather(client.map(int, range(10), pure=False))
    start = time.perf_counter()
    client.gather(client.map(int, range(n), pure=False))
    return round((time.perf_counter() - start) * local_cluster_size()[0] / n, 5)


def field_arrays(plate: Plate) -> list[str]:
    """The URL of every field's full-resolution image array."""
    urls = []
    for key in plate.field_keys():
        well = plate.well(key.well)
        group = f"{plate.url}/{well.path}/{well.field_paths[key.field]}"
        datasets = zarr.open_group(group, mode="r").attrs.asdict()
        multiscales = datasets.get("ome", datasets)["multiscales"]
        urls.append(f"{group}/{multiscales[0]['datasets'][0]['path']}")
    return urls


def reading(plate: Plate, repeats: int) -> dict:
    """Field read throughput of ``Plate.image(...).values`` against a raw zarr read of the same arrays."""
    keys, urls = plate.field_keys(), field_arrays(plate)

    def screenxai_read() -> int:
        return sum(plate.image(k.well, k.field).values.nbytes for k in keys)

    def synchronous_read() -> int:
        return sum(plate.image(k.well, k.field).data.compute(scheduler="synchronous").nbytes for k in keys)

    def zarr_read() -> int:
        return sum(zarr.open_array(url, mode="r")[:].nbytes for url in urls)

    figures = {}
    for name, read in (("plate_image", screenxai_read), ("plate_image_synchronous", synchronous_read),
                       ("zarr", zarr_read)):
        read()  # page cache and imports warm
        seconds, nbytes = best_of(read, repeats)
        figures[name] = {"fields_per_s": round(len(keys) / seconds, 1), "mb_per_s": round(nbytes / MB / seconds, 1)}
    for name in ("plate_image", "plate_image_synchronous"):
        figures[name]["ratio_to_zarr"] = round(figures[name]["fields_per_s"] / figures["zarr"]["fields_per_s"], 3)
    figures["field_mb"] = round(nbytes / len(keys) / MB, 2)
    figures["load"] = load()
    return figures


def best_of(fn: Callable[[], int], repeats: int) -> tuple[float, int]:
    """The fastest of ``repeats`` timed calls, with what the call returned."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def make_bundle(plate: Plate, workdir: Path) -> Path:
    """The tiny preset trained on the plate's controls (classifier and autoencoder), cached in ``workdir``."""
    out = workdir / "tiny-bundle"
    if not (out / "config.json").exists():
        with connect() as client:
            train([plate], out, client, TrainSettings(preset="tiny", stages=("classifier", "autoencoder"), seed=0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="a bundle whose channels are DNA, reporter (default: train tiny)")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--fields", type=int, default=2, help="fields per well of the small plate (the large: 4x)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the read timings (best kept)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "screenxai-bench-pipeline")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    cores = local_cluster_size()[0]
    plates = {}
    for name, fields in (("plate", args.fields), ("plate_4x", 4 * args.fields)):
        path = args.workdir / f"{name}.zarr"
        if not path.exists():
            simulate_screen(path, rows=args.rows, columns=args.columns, fields=fields, size=args.size, seed=0)
        plates[name] = open_plate(path)
    bundle = args.bundle or make_bundle(plates["plate"], args.workdir)
    config = load_bundle(bundle).config
    results = {"hardware": hardware(), "load_at_start": load(),
               "bundle": {"path": str(bundle), "preset": config.get("provenance", {}).get("preset"),
                          "crop_size": config["crop_size"]},
               "plates": {name: {"wells": args.rows * args.columns, "fields_per_well": f, "size": args.size}
                          for name, f in (("plate", args.fields), ("plate_4x", 4 * args.fields))}}
    results["reading"] = reading(plates["plate"], args.repeats)
    results["bare_loop"] = bare_loop(plates["plate"], bundle, threads=cores)
    torch.set_num_threads(1)
    for name, plate in plates.items():
        results[f"run_{name}"] = pipeline_run(plate, bundle, args.workdir / "runs" / str(time.time_ns()), name)
    small, large = results["run_plate"], results["run_plate_4x"]
    results["overhead_ratio"] = round(small["cells_per_s"] / results["bare_loop"]["cells_per_s"], 3)
    results["overhead_ratio_cpu"] = round(small["cells_per_cpu_s"] / results["bare_loop"]["cells_per_cpu_s"], 3)
    results["memory_ratio_4x"] = round(large["memory_mb"]["above_baseline"] / small["memory_mb"]["above_baseline"],
                                       3)
    results["managed_ratio_4x"] = round(large["memory_mb"]["peak_managed"] / small["memory_mb"]["peak_managed"], 3)
    field_cost = results["bare_loop"]["median_cell_stage_s_per_field"]
    results["granularity"] = {"task_round_trip_s": small["task_round_trip_s"],
                              "cell_stage_s_per_field": field_cost,
                              "overhead_fraction": round(small["task_round_trip_s"] / field_cost, 4)}
    results["load_at_end"] = load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    summary = ("overhead_ratio", "overhead_ratio_cpu", "memory_ratio_4x", "managed_ratio_4x", "granularity", "reading")
    print(json.dumps({k: results[k] for k in summary}, indent=2))


if __name__ == "__main__":
    main()
