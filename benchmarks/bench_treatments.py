"""Every treatment of a simulated multi-treatment screen explained, through the product; figures as JSON.

Simulates the ``treatments`` design (``docs/simulation.md``: six treatments,
three mechanisms, two at different potencies, one with two mechanisms, one
inert), trains a bundle with ``screenxai train``'s defaults (class column
``compound``, each treatment's two top dose levels), scores every well with
``run_cells`` and judges the outputs against the planted truth
(``screenxai.explain.validation``):

- per treatment and planted factor: |Spearman| of the top attribute's well
  means with the factor's over the treatment's and the negative wells, and
  whether its name is the factor's; for the two-mechanism treatment the
  best of its top three attributes for each factor;
- per treatment and planted factor, its own contrast readout (kept as an
  attribute or not): the same |Spearman| and whether its real-cell name
  (``readout_name``) is the factor's;
- activity calls, the adjusted Rand index of the mechanism groups and the
  similarity they were cut from (the latent shifts), and the groups the
  kept attributes' profiles would give on the same wells;
- each treatment's formula against the negative control on held-out wells
  (accuracy of black box, sparse network and formula; fidelity);
- negative controls: random directions (untrained MLPs on the same
  subspace) ranked by the same procedure, and 200 random pseudo-treatments
  made of half the negative wells each: the share called active, beside
  the share plates of truly alike wells give and the share a call by the
  threshold alone would make;
- references on the same wells: the cell-table feature that measures each
  planted factor, the classifier's odds of the treatment, and the dose;
- all of the run's directions ranked from one cache by gain alone and
  with each treatment's own contrast direction first (the run's rule);
- the learned directions alone (the run's contrast directions excluded),
  ranked by the same procedure: what the contrast directions add;
- UNet evaluations of the shared ranking cache and of naming.

Results go to ``results/treatments_cpu.json`` under ``{preset}-seed{seed}``.

    python -m benchmarks.bench_treatments --preset tiny [--seed 1] [--columns 6] [--size 512]
    python -m benchmarks.bench_treatments --preset tiny --seed 1 --workdir DIR --negative-wells-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from distributed import Client, LocalCluster

from screenxai.explain import (attribute_axis_cosines, load_contrast_readouts, load_directions, random_directions,
                               scores_from_latents)
from screenxai.explain.expression import expressed, treatment_shifts
from screenxai.explain.ranking import axis_cosines, build_cache, select_attributes
from screenxai.explain.validation import (FACTOR_FEATURES, exchangeable_false_positive_rate, grouping_agreement,
                                          pseudo_treatment_calls, readout_report, treatment_report, well_truth)
from screenxai.models.bundle import load_bundle
from screenxai.models.latent_checks import encode
from screenxai.pipeline.crop_cache import read_crop_cache
from screenxai.pipeline.run import bundle_conditions, run_cells
from screenxai.pipeline.summary import with_layouts
from screenxai.pipeline.treatments import ACTIVITY_THRESHOLD, treatment_tables
from screenxai.pipeline.train_job import TrainSettings, train, work_folder
from screenxai.plate.reader import open_plate
from screenxai.plate.simulate import MECHANISM_GROUPS, NEGATIVE_CONTROL, TREATMENTS, simulate_screen

RESULTS = Path(__file__).parent / "results" / "treatments_cpu.json"


def ranked_tracking(bundle_path: Path, run: Path, wells: pd.DataFrame, truth: pd.DataFrame, seed: int,
                    kind: str) -> pd.DataFrame:
    """The treatment report of other directions or rules ranked like the run's, scored on the run's embeddings.

    ``kind`` ``random``: untrained MLPs on the same subspace, as many as the
    run's directions (the negative control); ``learned``: the run's learned
    directions without its contrast directions; ``rules``: all of the run's
    directions, ranked from one cache by gain alone (``rule`` ``greedy``)
    and with each treatment's own contrast direction first, as the run
    ranks (``own_first``). As in the run, a treatment's candidates are the
    changes its cached cells show (``screenxai.explain.expression``).
    """
    bundle = load_bundle(bundle_path)
    learned, _ = load_directions(bundle_path / "explain")
    crops, table, _ = read_crop_cache(work_folder(bundle_path) / "cache")
    autoencoder = bundle["autoencoder"].eval()
    conditions = bundle_conditions(bundle)
    z = encode(autoencoder, crops)
    directions = random_directions(z, learned.n_directions, seed=seed) if kind == "random" else learned
    excluded = frozenset(range(learned.n_learned, learned.n_directions)) if kind == "learned" else frozenset()
    rules = ("greedy", "own_first") if kind == "rules" else ("greedy",)
    classes = table[conditions.class_column].astype(str)
    labels = classes.map({name: k for k, name in enumerate(conditions.class_names)}).fillna(-1).to_numpy(int)
    negative = np.flatnonzero(labels == 0)
    pick = np.random.default_rng(seed).permutation(negative)[:32]
    cache = build_cache(autoencoder, directions, crops[pick], 2.0, 10, 10)
    embeddings = pd.read_parquet(run / "embeddings")
    latents = torch.from_numpy(embeddings.filter(like="z_").to_numpy(np.float32))
    planted = {t: f for t, f in TREATMENTS.items() if f}
    own = {t: learned.n_learned + i for i, t in enumerate(load_contrast_readouts(bundle_path / "explain")["treatment"])}
    reports = []
    for rule in rules:
        rows = []
        for target, treatment in enumerate(conditions.treatments, start=1):
            shifts = treatment_shifts(directions, z, labels, target)
            shifts[sorted(excluded)] = np.nan  # measured against the candidates' largest shift, as a run without them
            first = own.get(treatment) if rule == "own_first" else None
            try:
                selected = select_attributes(cache, target, 3, -1.0, 10, 10, axis_cosines(directions), 0.8,
                                             excluded, eligible=expressed(shifts), first=first)
            except ValueError:  # no change its cells show moves the classifier: it keeps none, as in the run
                continue
            rows.append(selected.assign(treatment=treatment, name=""))
        attributes = pd.concat(rows, ignore_index=True)
        scores = scores_from_latents(directions, attributes, latents)
        per_cell = pd.concat([embeddings[["plate", "well"]].astype(str).reset_index(drop=True), scores], axis=1)
        means = per_cell.groupby(["plate", "well"], as_index=False).mean().rename(
            columns=lambda c: f"mean_{c}" if c.startswith("attribute_") else c)
        other_wells = wells[["plate", "well", "compound"]].merge(means, on=["plate", "well"])
        report = treatment_report(other_wells, attributes, truth, planted, NEGATIVE_CONTROL)
        reports.append(report.assign(rule=rule) if kind == "rules" else report)
    return pd.concat(reports, ignore_index=True)


def attribute_profile_groups(bundle_path: Path, run: Path) -> dict:
    """The groups the kept attributes' profiles give on the run's wells (the rule before latent shifts): ARI and
    similarity."""
    explain = bundle_path / "explain"
    directions, attributes = load_directions(explain)
    wells = pd.read_parquet(run / "wells.parquet")
    wells = wells[[c for c in wells.columns if not c.startswith(("sd_attribute_", "robust_z_"))]]
    tables = treatment_tables(wells, attributes, bundle_conditions(load_bundle(bundle_path)), {},
                              contrasts=load_contrast_readouts(explain),
                              axis_cosines=attribute_axis_cosines(directions, attributes))
    similarity = tables.similarity.pivot(index="treatment", columns="other", values="similarity").round(3)
    return {"ari": grouping_agreement(tables.treatments, dict(MECHANISM_GROUPS)),
            "similarity": similarity.to_dict(orient="index")}


def reference_tracking(run: Path, wells: pd.DataFrame, truth: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """What other per-well readouts reach on the same wells: the factor's measured feature, the classifier, the dose.

    Per (treatment, planted factor): |Spearman| against the factor's well
    means of the well means of the cell-table feature that measures it
    (``FACTOR_FEATURES``' first), of the classifier's odds of the treatment
    against the negative control ``p_t / (p_t + p_0)``, and of the dose.
    """
    cells = pd.read_parquet(run / "cells")
    column = {name: f"p_{name}".replace("-", "_") for name in class_names}
    negative = class_names[0]
    planted = {t: f for t, f in TREATMENTS.items() if f}
    truth_wells = well_truth(truth, sorted({f for fs in planted.values() for f in fs}))
    rows = []
    for treatment, factors in planted.items():
        odds = cells[column[treatment]] / (cells[column[treatment]] + cells[column[negative]])
        readouts = cells[["plate", "well"]].assign(odds=odds).groupby(["plate", "well"], as_index=False)["odds"].mean()
        for factor in factors:
            feature = FACTOR_FEATURES[factor][0]
            measured = cells.groupby(["plate", "well"], as_index=False)[feature].mean()
            joined = (wells[["plate", "well", "compound", "dose"]].merge(truth_wells, on=["plate", "well"])
                      .merge(readouts, on=["plate", "well"]).merge(measured, on=["plate", "well"]))
            used = joined[joined["compound"].isin([treatment, negative])]
            rows.append({"treatment": treatment, "factor": factor, "feature": feature,
                         **{name: float(abs(spearmanr(used[value], used[factor]).statistic))
                            for name, value in (("measured_feature", feature), ("classifier_odds", "odds"),
                                                ("dose", "dose"))}})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--fields", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/screenxai-bench-treatments"))
    parser.add_argument("--score-only", action="store_true", help="judge the run already in the work folder")
    parser.add_argument("--negative-wells-only", action="store_true",
                        help="replace only the record's pseudo-treatments of negative wells, from the work folder's run")
    args = parser.parse_args()
    work = args.workdir / f"{args.preset}-seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    plate_path = work / "plate.zarr"
    if not plate_path.exists():
        simulate_screen(plate_path, columns=args.columns, fields=args.fields, size=args.size, seed=args.seed,
                        design="treatments")
    truth = pd.read_parquet(work / "plate.truth.parquet")
    plate = open_plate(plate_path)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    key = f"{args.preset}-seed{args.seed}"
    if args.negative_wells_only:
        wells = with_layouts(pd.read_parquet(work / "run" / "wells.parquet"), {})
        results[key]["shuffled_negative_wells"] = shuffled_negative_wells(
            wells, bundle_conditions(load_bundle(work / "bundle")))
        RESULTS.write_text(json.dumps(results, indent=2, default=float))
        print(json.dumps(results[key]["shuffled_negative_wells"], indent=1, default=float))
        return
    if args.score_only:  # the run's own timings, recorded when it ran
        timings = results.get(key, {}).get("timings_s", {})
    else:  # a reused bundle or run keeps the timings recorded when it was made
        timings = {**results.get(key, {}).get("timings_s", {}), **train_and_run(plate, work, args.preset, args.seed)}
    record = judge(work, args, truth, timings)
    results[key] = record
    RESULTS.write_text(json.dumps(results, indent=2, default=float))
    print(json.dumps({k: record[k] for k in ("factor_tracking", "readout_tracking", "random_directions_tracking",
                                             "learned_directions_tracking", "ranking_rules_tracking",
                                             "reference_tracking", "activity_exact",
                                             "grouping_ari", "shuffled_negative_wells", "timings_s")}
                     | {"attribute_profile_ari": record["attribute_profile_groups"]["ari"]},
                     indent=1, default=float))


def shuffled_negative_wells(wells: pd.DataFrame, conditions) -> dict:
    """Random pseudo-treatments of negative wells: the share called active, beside the level truly alike wells give.

    Also the share a call by the threshold alone would make (the null left
    out) and the readouts that made the active ones.
    """
    calls = pseudo_treatment_calls(wells, conditions)
    readouts = sum(c.startswith(("mean_attribute_", "mean_contrast_")) for c in wells.columns)
    negatives = int((wells[conditions.class_column] == conditions.negative).sum())
    return {"draws": len(calls), "wells": int(calls["wells"].iloc[0]), "top_wells": int(calls["top_wells"].iloc[0]),
            "readouts": readouts, "active_rate": float(calls["active"].mean()),
            "exchangeable_rate": exchangeable_false_positive_rate(negatives, readouts, int(calls["top_wells"].iloc[0])),
            "threshold_alone_rate": float((calls["activity_z"] >= ACTIVITY_THRESHOLD).mean()),
            "active_by_readout": calls.loc[calls["active"], "readout"].value_counts().to_dict()}


def train_and_run(plate, work: Path, preset: str, seed: int) -> dict:
    """Train a bundle (unless one is finished), score every well (a finished run: its tables again); the seconds."""
    timings = {}
    with LocalCluster(n_workers=os.cpu_count(), threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        start = time.perf_counter()
        if not (work / "bundle" / "explain").is_dir():  # a finished bundle of an earlier call is reused
            train([plate], work / "bundle", client, TrainSettings(preset=preset, seed=seed), keep_work=True)
            timings["train_s"] = time.perf_counter() - start
        start = time.perf_counter()
        resumed = (work / "run").is_dir()  # finished fields are kept; the tables are written again by this code
        run_cells([plate], work / "run", client, bundle=work / "bundle", resume=True)
        timings["resume_s" if resumed else "run_s"] = time.perf_counter() - start
    return timings


def judge(work: Path, args, truth: pd.DataFrame, timings: dict) -> dict:
    """The run's explanations against the planted truth and the negative controls."""
    out = work / "run"
    wells = pd.read_parquet(out / "wells.parquet")
    attributes = pd.read_parquet(out / "attributes.parquet")
    treatments = pd.read_parquet(out / "treatments.parquet")
    planted = {t: f for t, f in TREATMENTS.items() if f}
    report = treatment_report(wells, attributes, truth, planted, NEGATIVE_CONTROL)
    random = ranked_tracking(work / "bundle", out, wells, truth, args.seed, "random")
    learned_only = ranked_tracking(work / "bundle", out, wells, truth, args.seed, "learned")
    rules = ranked_tracking(work / "bundle", out, wells, truth, args.seed, "rules")
    bundle = load_bundle(work / "bundle")
    conditions = bundle_conditions(bundle)
    summary = bundle.config["provenance"]["training_summary"]
    calls = treatments.set_index("treatment")["active"]
    record = {
        "preset": args.preset, "seed": args.seed,
        "plate": {"columns": args.columns, "fields": args.fields, "size": args.size, "wells": len(wells),
                  "cells": int(wells["n_cells"].sum())},
        "classifier": summary["classifier"],
        "explain": json.loads((work / "bundle" / "explain" / "directions.json").read_text()).get("unet_evaluations"),
        "attributes": attributes[["treatment", "rank", "attribute", "source", "name", "mean_delta_p", "flip_rate",
                                  "dose_spearman", "robust_z_top_dose"]].to_dict(orient="records"),
        "treatments": treatments.to_dict(orient="records"),
        "factor_tracking": report.to_dict(orient="records"),
        "readout_tracking": readout_report(wells, treatments, truth, planted, NEGATIVE_CONTROL).to_dict(
            orient="records"),
        "random_directions_tracking": random.to_dict(orient="records"),
        "learned_directions_tracking": learned_only.to_dict(orient="records"),
        "ranking_rules_tracking": rules.to_dict(orient="records"),
        "reference_tracking": reference_tracking(out, wells, truth, list(conditions.class_names)).to_dict(
            orient="records"),
        "activity_exact": all(bool(calls[t]) == bool(f) for t, f in TREATMENTS.items()),
        "grouping_ari": grouping_agreement(treatments, dict(MECHANISM_GROUPS)),
        "attribute_profile_groups": attribute_profile_groups(work / "bundle", out),
        "similarity": pd.read_parquet(out / "similarity.parquet").pivot(
            index="treatment", columns="other", values="similarity").round(3).to_dict(orient="index"),
        "formulas": pd.read_parquet(out / "interpretable.parquet")[
            ["treatment", "complexity", "accuracy_blackbox", "accuracy_sparse", "accuracy_formula", "fidelity",
             "agreement", "n_heldout_cells"]].to_dict(orient="records"),
        "shuffled_negative_wells": shuffled_negative_wells(with_layouts(wells, {}), conditions),
        "timings_s": timings,
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores shared with other work, torch "
                    f"{torch.__version__}",
        "load_average_at_end": os.getloadavg(),
    }
    return record


if __name__ == "__main__":
    main()
