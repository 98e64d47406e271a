"""A 384-well plate through ``screenxai run --bundle``: throughput, memory from 96 to 384 wells, graph size.

Simulates a 16 x 24-well plate (4 fields of 1,024 px, DNA and reporter,
the controls design) once into ``--workdir`` and measures, nothing else
running:

- the bare loop of ``bench_pipeline`` (cell stage and models in one
  process, torch threads = cores) over the fields of a 96-well subset:
  every other row and every other column, so that it spans the plate;
- ``run_cells`` with the bundle (what ``screenxai run --bundle`` calls) on
  that subset and on the whole plate, each on a fresh default local cluster
  after a warm-up well.

Figures: cells/s of each run against the bare loop (goal >= 0.95; the
whole plate's run against the subset's loop, whose fields are drawn from
the same simulator), memory above the post-load baseline of the 384-well
run against the 96-well run's (goal <= 1.1x) and, beside it, the median
peak of the 384-well run's four field-stage quarters (each as long as the
96-well run) against the 96-well run's field-stage peak, the client's
memory over the run (sampled; its rise over the second half of the run),
tasks per field and the peak count of tasks the scheduler holds. The JSON is written after
every step, so a run cut short keeps the steps it finished.

    python -m benchmarks.bench_scale --bundle runs/demo/bundle
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_pipeline import bare_loop, hardware, load, pipeline_run
from screenxai.models.bundle import load_bundle
from screenxai.pipeline.cluster import local_cluster_size
from screenxai.plate.reader import Plate, open_plate
from screenxai.plate.simulate import simulate_screen

RESULTS = Path(__file__).parent / "results" / "scale_cpu.json"


def spanning_subset(plate: Plate) -> list[str]:
    """Every other row and every other column of the plate's wells (96 of 384)."""
    rows = sorted({w[0] for w in plate.wells})
    return [w for w in plate.wells if rows.index(w[0]) % 2 == 0 and int(w[1:]) % 2 == 1]


def simulated_plate(path: Path, rows: int, columns: int, fields: int, size: int) -> dict:
    """Simulate the plate at ``path`` unless it exists; its simulation seconds and size on disk."""
    seconds = None
    if not path.exists():
        start = time.perf_counter()
        simulate_screen(path, rows=rows, columns=columns, fields=fields, size=size, seed=0)
        seconds = round(time.perf_counter() - start, 1)
    nbytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"rows": rows, "columns": columns, "fields_per_well": fields, "size": size,
            "simulation_seconds": seconds, "gb_on_disk": round(nbytes / 1024**3, 2)}


def client_rise(run: dict) -> float:
    """MB the client's memory rose over the second half of a run (its sampled series)."""
    series = run["memory_mb"]["client_series"]
    half = series[len(series) // 2:]
    return round(max(half) - half[0], 1)


def equal_window_ratio(small: dict, large: dict) -> float:
    """Median peak of the large run's field-stage quarters over the small run's field-stage peak.

    Each quarter of the 384-well run lasts about as long as the whole 96-well
    run, so both peaks come from as many samples: the ratio shows growth of
    the level, not the higher maximum a four times longer series reaches by
    chance.
    """
    quarters = sorted(large["memory_mb"]["above_baseline_by_quarter"])
    return round((quarters[1] + quarters[2]) / 2 / max(small["memory_mb"]["above_baseline_by_quarter"]), 3)


def per_field(run: dict) -> dict:
    """Tasks and scheduler-held tasks per field of a run."""
    tasks = sum(run["tasks"].values())
    return {"tasks": round(tasks / run["fields"], 2),
            "scheduler_peak_tasks": run["scheduler_tasks"]["peak"],
            "scheduler_peak_tasks_per_field": round(run["scheduler_tasks"]["peak"] / run["fields"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle whose channels are DNA, reporter")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--columns", type=int, default=24)
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "screenxai-bench-scale")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    def step(name: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} bench_scale: {name}", flush=True)

    config = load_bundle(args.bundle).config
    results = {"hardware": hardware(), "load_at_start": load(),
               "bundle": {"path": str(args.bundle), "preset": config.get("provenance", {}).get("preset"),
                          "crop_size": config["crop_size"]}}
    step("simulating the plate")
    path = args.workdir / "plate384.zarr"
    results["plate"] = simulated_plate(path, args.rows, args.columns, args.fields, args.size)
    plate = open_plate(path)
    subset = spanning_subset(plate)
    results["subset_wells"] = len(subset)
    save()
    step(f"bare loop over the {len(subset)}-well subset")
    results["bare_loop_subset"] = bare_loop(plate, args.bundle, threads=local_cluster_size()[0], wells=subset)
    save()
    torch.set_num_threads(1)
    runs = args.workdir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    for name, wells in (("run_subset", subset), ("run_plate", None)):
        step(f"{name}: screenxai run --bundle on {len(wells or plate.wells)} wells")
        results[name] = pipeline_run(plate, args.bundle, runs / name, name, wells=wells)
        save()
    loop, small, large = results["bare_loop_subset"], results["run_subset"], results["run_plate"]
    results["figures"] = {
        "cells": large["cells"],
        "overhead_ratio_subset": round(small["cells_per_s"] / loop["cells_per_s"], 3),
        "overhead_ratio_plate": round(large["cells_per_s"] / loop["cells_per_s"], 3),
        "overhead_ratio_cpu_plate": round(large["cells_per_cpu_s"] / loop["cells_per_cpu_s"], 3),
        "memory_ratio_384_to_96": round(large["memory_mb"]["above_baseline"] / small["memory_mb"]["above_baseline"],
                                        3),
        "memory_ratio_equal_windows": equal_window_ratio(small, large),
        "client_rise_second_half_mb": {"run_subset": client_rise(small), "run_plate": client_rise(large)},
        "per_field": {"run_subset": per_field(small), "run_plate": per_field(large)},
    }
    results["load_at_end"] = load()
    save()
    print(json.dumps(results["figures"], indent=2))


if __name__ == "__main__":
    main()
