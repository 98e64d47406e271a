"""DiffEx explanations on the real BBBC013 screen, through the product: ``train`` then ``run``; figures as JSON.

Converts ../shared/data/bbbc013_wortmannin into a plate, trains a bundle
(classifier and diffusion autoencoder) on its negative and positive control
wells once per preset and seed, runs the explain stage on a fresh copy of it
(classifier-guided directions, or plain contrastive ones with
``--unguided``, so the two records differ by the guide alone), scores all 48
wells with ``run_cells`` and records
from ``readouts.parquet``: the top attribute's name, the Spearman of its
per-well mean against ``dose_index`` over the 36 dose wells (not the
controls), its Z' between the controls, and the same for the hand-built
reporter (GFP) nucleus/ring ratio; then how far those Spearmans can be told
apart at all (``benchmarks.dose_order``: bootstrap intervals over the cells
of each well, and the ceiling that saturated doses put on any readout).
``--analyse-run`` computes the last part for a finished run folder and adds
it to the record ``--record``. Results go to
``results/explain_bbbc013_cpu.json`` under the preset, seed and kind of
directions.

    python -m benchmarks.bench_explain_bbbc013 --preset tiny [--seed 1] [--unguided]
    python -m benchmarks.bench_explain_bbbc013 --analyse-run RUN --record tiny-seed0-guided
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
from distributed import Client, LocalCluster

from benchmarks.dose_order import plateau_ceiling, sampling_intervals
from screenxai.pipeline.run import run_cells
from screenxai.pipeline.train_job import TrainSettings, train
from screenxai.plate.convert import convert_tiffs
from screenxai.plate.reader import open_plate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbbc013_wortmannin"
RESULTS = Path(__file__).parent / "results" / "explain_bbbc013_cpu.json"
HAND_BUILT = "GFP_ratio"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/screenxai-bench-bbbc013"))
    parser.add_argument("--unguided", action="store_true", help="plain contrastive directions, no classifier guide")
    parser.add_argument("--analyse-run", type=Path, help="a finished run folder: add its dose-order figures only")
    parser.add_argument("--record", help="the record of results/explain_bbbc013_cpu.json that --analyse-run adds to")
    args = parser.parse_args()
    if args.analyse_run:
        if not args.record:
            parser.error("--analyse-run needs --record")
        merged = json.loads(RESULTS.read_text())
        merged[args.record]["dose_order"] = dose_order_figures(args.analyse_run)
        print(json.dumps(merged[args.record]["dose_order"], indent=2))
        RESULTS.write_text(json.dumps(merged, indent=2, default=float) + "\n")
        return
    kind = "unguided" if args.unguided else "guided"
    work = args.workdir / f"{args.preset}-seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    plate_path = work / "bbbc013.zarr"
    if not plate_path.exists():
        convert_tiffs(DATA, plate_path, "Channel{channel}-{index}-{row}-{column}.tif", layout=DATA / "layout.csv",
                      channel_names="1=GFP,2=DNA")
    plate = open_plate(plate_path)
    timings = {}
    with LocalCluster(n_workers=os.cpu_count(), threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        start = time.perf_counter()
        models = work / "bundle"
        if not (models / "config.json").exists():
            train([plate], models, client, TrainSettings(preset=args.preset, seed=args.seed,
                                                         stages=("classifier", "autoencoder")))
            timings["train_models"] = time.perf_counter() - start
        start = time.perf_counter()
        bundle = work / f"bundle-{kind}"
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(models, bundle, ignore=shutil.ignore_patterns("explain"))
        train([plate], bundle, client, TrainSettings(preset=args.preset, seed=args.seed, stages=("explain",),
                                                     explain_guided=not args.unguided))
        timings["explain"] = time.perf_counter() - start
        start = time.perf_counter()
        result = run_cells([plate], work / f"run-{time.time_ns()}", client, bundle=bundle, exemplars_per_condition=0)
        timings["run"] = time.perf_counter() - start
    attributes = pd.read_parquet(result.out / "attributes.parquet")
    readouts = pd.read_parquet(result.out / "readouts.parquet").set_index("readout")
    summary = json.loads((bundle / "config.json").read_text())["provenance"].get("training_summary", {})
    keep = ["z_prime", "ssmd", "dose_spearman", "n_dose_wells", "ec50", "hill", "r2"]
    figures = {
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores shared with other work, torch "
                    f"{torch.__version__}, no GPU",
        "load_average_at_end": os.getloadavg(),
        "cells": int(result.wells["n_cells"].sum()), "wells": len(result.wells),
        "classifier": summary.get("classifier"), "autoencoder": summary.get("autoencoder"),
        "attributes": attributes[["rank", "direction", "source", "sign", "mean_delta_p", "flip_rate", "name",
                                  "changes"]].to_dict(orient="records"),
        "readouts": {name: readouts.loc[name, keep].to_dict() for name in readouts.index},
        "top_attribute": attributes["name"].iloc[0],
        "directions": kind,
        "goal": {"top_attribute_named_after": "reporter nucleus/ring ratio (or nuclear reporter intensity)",
                 "dose_spearman_over_dose_wells": 0.9},
        "seconds": timings,
        "dose_order": dose_order_figures(result.out),
    }
    print(json.dumps(figures, indent=2, default=float))
    merged = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    merged[f"{args.preset}-seed{args.seed}-{kind}"] = figures
    RESULTS.write_text(json.dumps(merged, indent=2, default=float) + "\n")


def dose_order_figures(run: Path) -> dict:
    """Bootstrap intervals of the dose Spearman of the top attribute, the classifier and the hand-built ratio,
    and the ceiling of a readout that orders the reporter's distinguishable dose groups perfectly."""
    top = pd.read_parquet(run / "attributes.parquet")["attribute"].iloc[0]
    wells = pd.read_parquet(run / "wells.parquet")
    dose_wells = wells[wells["control"] == "dose"]
    cells = pd.read_parquet(run / "cells", columns=["well", f"attribute_{top}", "p_positive", HAND_BUILT])
    readouts = {f"attribute_{top}": "mean", "p_positive": "mean", HAND_BUILT: "median"}
    return {
        "bootstrap_over_cells_within_wells": sampling_intervals(
            cells, dose_wells.set_index("well")["dose_index"], readouts),
        "readouts": {column: f"per-well {how}" for column, how in readouts.items()},
        "perfect_group_readout": plateau_ceiling(dose_wells, f"median_{HAND_BUILT}"),
    }


if __name__ == "__main__":
    main()
