"""A synthetic multi-treatment run folder in the tables' multi-treatment layout, for the report's tests and benchmark.

Everything the report reads is written with the real writers (pandas
Parquet, xarray Zarr), laid out as a screen of ``n_treatments`` compounds:
columns 1-2 negative controls (DMSO), 3 .. 2 + n_treatments one compound
each (rows A, B: top dose; every two rows a half-log dilution), the rest
positive controls. Attribute scores follow a Hill curve of dose. The cell
table holds a few cells per well; each attribute's gallery is chosen from
it by the run's own ``choose_gallery`` and stored by ``with_gallery``.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import xarray as xr

from screenxai.cells import CellConfig
from screenxai.cells.normalise import NormalisationStats
from screenxai.explain.counterfactuals import write_counterfactuals
from screenxai.pipeline.counterfactual_stage import GALLERY_PER_END, choose_gallery, with_gallery

CHANNELS = ("DNA", "reporter")
ALPHAS = (-3.0, -1.5, 0.0, 1.5, 3.0)
NEGATIVE = "DMSO"
CELLS_PER_WELL = 3


def _well(row: int, column: int) -> str:
    return f"{string.ascii_uppercase[row - 1]}{column:02d}"


def layout(rows: int, columns: int, n_treatments: int) -> pd.DataFrame:
    """Plate layout: negatives, one column per compound with a dilution down the rows, positives."""
    records = []
    for row in range(1, rows + 1):
        for column in range(1, columns + 1):
            dose_index = (rows - row) // 2
            if column <= 2:
                compound, control, dose = NEGATIVE, "negative", 0.0
            elif column <= 2 + n_treatments:
                compound, control = f"cpd{column - 2:02d}", "treatment"
                dose = 10.0 / 10 ** (0.5 * (rows // 2 - 1 - dose_index))
            else:
                compound, control, dose = "positive", "positive", 10.0
            records.append({"well": _well(row, column), "row": row, "column": column, "compound": compound,
                            "dose_index": dose_index, "dose": dose, "control": control})
    return pd.DataFrame(records)


def attribute_ids(treatment: str, n: int) -> list[str]:
    return [f"{treatment}a{k}" for k in range(1, n + 1)]


def _blob(rng, size: int, shift: float) -> np.ndarray:
    """A crop (c, y, x) in [-1, 1]: a nucleus and a reporter that moves into it with ``shift``."""
    y, x = np.mgrid[:size, :size] - size / 2 + rng.normal(0, 1, 2)[:, None, None]
    nucleus = np.exp(-(x**2 + y**2) / (2 * (size / 6) ** 2))
    cell = np.exp(-(x**2 + y**2) / (2 * (size / 3) ** 2))
    reporter = (1 - shift) * (cell - nucleus).clip(0) + shift * nucleus
    return (np.stack([nucleus, reporter]) * 2 - 1 + rng.normal(0, 0.05, (2, size, size))).astype(np.float32)


def write_run(out: Path, rows: int = 16, columns: int = 24, n_treatments: int = 20, attributes_per_treatment: int = 3,
              crop: int = 32, seed: int = 0) -> Path:
    """Write manifest, wells, attributes, treatments, similarity, cells and counterfactuals into ``out``."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    wells = layout(rows, columns, n_treatments).assign(plate="screen")
    treatments = [f"cpd{i:02d}" for i in range(1, n_treatments + 1)]
    potency = dict(zip(treatments, 10 ** rng.uniform(-1, 1.5, n_treatments)))
    active = {t: bool(i % 4) for i, t in enumerate(treatments)}
    wells["n_cells"] = rng.integers(150, 400, len(wells))
    wells["focus"] = rng.normal(1.0, 0.1, len(wells))
    wells["saturated_fraction"] = rng.uniform(0, 0.002, len(wells))
    wells.loc[wells.index[5], "saturated_fraction"] = 0.05
    wells["qc_low_count"] = wells["n_cells"] < 160
    wells["qc_out_of_focus"] = wells["focus"] < 0.75
    wells["qc_saturated"] = wells["saturated_fraction"] > 0.01
    wells["qc_failed_fields"] = False
    wells["median_reporter_ratio"] = 1 + rng.normal(0, 0.05, len(wells))
    attribute_rows, columns = [], {}
    for t in treatments:
        own = wells["compound"] == t
        response = (wells["dose"] / (wells["dose"] + potency[t])) * (2.0 if active[t] else 0.1)
        wells.loc[own, "median_reporter_ratio"] += response[own]
        for rank, a in enumerate(attribute_ids(t, attributes_per_treatment), start=1):
            effect = np.where(own, response / rank, 0.0) + rng.normal(0, 0.1, len(wells))
            columns[f"mean_attribute_{a}"] = effect
            columns[f"sd_attribute_{a}"] = rng.uniform(0.2, 0.4, len(wells))
            negative = effect[wells["control"] == "negative"]
            mad = 1.4826 * np.median(np.abs(negative - np.median(negative)))
            columns[f"robust_z_attribute_{a}"] = (effect - np.median(negative)) / mad
            attribute_rows.append({"treatment": t, "rank": rank, "attribute": a, "direction": rank, "sign": 1,
                                   "mean_delta_p": 0.3 / rank, "flip_rate": 0.6 / rank,
                                   "name": f"reporter nucleus/ring ratio up ({a})",
                                   "changes": "reporter_ratio up (d = +1.2); area unchanged", "ec50": potency[t],
                                   "hill": 1.0, "max_effect": 2.0 / rank, "r2": 0.9, "dose_spearman": 0.8})
    for t in [NEGATIVE, *treatments]:
        columns[f"mean_p_{t}"] = rng.uniform(0, 1, len(wells))
    wells = pd.concat([wells, pd.DataFrame(columns, index=wells.index)], axis=1)
    wells.to_parquet(out / "wells.parquet")
    attributes = pd.DataFrame(attribute_rows)
    attributes.to_parquet(out / "attributes.parquet")
    groups = {t: f"mechanism {i % 4 + 1}" for i, t in enumerate(treatments)}
    pd.DataFrame({"treatment": treatments, "active": [active[t] for t in treatments],
                  "group": [groups[t] for t in treatments], "n_wells": rows,
                  "top_attribute": [attribute_ids(t, 1)[0] for t in treatments],
                  "top_attribute_name": "reporter nucleus/ring ratio up", "ec50": [potency[t] for t in treatments],
                  "hill": 1.0, "max_effect": [2.0 if active[t] else 0.1 for t in treatments], "fit_r2": 0.9,
                  "robust_z_top_dose": rng.normal(8, 2, n_treatments), "activity_z": rng.normal(5, 3, n_treatments),
                  "auc_vs_negative": rng.uniform(0.5, 1, n_treatments)}).to_parquet(out / "treatments.parquet")
    similarity = np.corrcoef(rng.normal(0, 1, (n_treatments, 6)) + np.array(
        [[hash(groups[t]) % 7] * 6 for t in treatments]) * 0.3)
    pd.DataFrame([{"treatment": a, "other": b, "similarity": float(similarity[i, j])}
                  for i, a in enumerate(treatments) for j, b in enumerate(treatments)]).to_parquet(
        out / "similarity.parquet")
    _write_cells(out, rng, wells, attributes)
    _write_counterfactuals(out, rng, treatments, attributes, crop)
    _write_manifest(out, wells, n_treatments)
    return out


def _write_counterfactuals(out: Path, rng, treatments: list[str], attributes: pd.DataFrame, crop: int) -> None:
    conditions = [NEGATIVE, NEGATIVE] + [t for t in treatments for _ in range(2)]
    n_cells, n_attr = len(conditions), len(attributes)
    cell_ids = [f"screen/{'C' if c == NEGATIVE else 'D'}{i % 20 + 3:02d}/0/{i + 1}" for i, c in enumerate(conditions)]
    original = np.stack([_blob(rng, crop, 0.0 if c == NEGATIVE else 0.7) for c in conditions])
    image = np.empty((n_cells, n_attr, len(ALPHAS), len(CHANNELS), crop, crop), np.float32)
    for k, alpha in enumerate(ALPHAS):
        for i, c in enumerate(conditions):
            image[i, :, k] = _blob(rng, crop, float(np.clip((0.0 if c == NEGATIVE else 0.7) + alpha / 6, 0, 1)))
    probability = 1 / (1 + np.exp(-np.asarray(ALPHAS)))[None, None, :] * rng.uniform(0.8, 1, (n_cells, n_attr, 1))
    dataset = xr.Dataset(
        {"image": (("cell", "attribute", "alpha", "c", "y", "x"), image),
         "probability": (("cell", "attribute", "alpha"), probability.astype(np.float32)),
         "original": (("cell", "c", "y", "x"), original),
         "original_probability": (("cell",), rng.uniform(0, 1, n_cells).astype(np.float32))},
        coords={"attribute": attributes["attribute"].to_numpy(str),
                "treatment": ("attribute", attributes["treatment"].to_numpy(str)),
                "alpha": list(ALPHAS), "cell": cell_ids, "cell_id": ("cell", cell_ids),
                "condition": ("cell", conditions), "c": list(CHANNELS), "channel": ("c", list(CHANNELS))},
        attrs={"alpha_units": "SD of the cells' z_sem projected on the direction"})
    chosen = choose_gallery(dd.read_parquet(out / "cells"), None, GALLERY_PER_END)
    crops = np.stack([_blob(rng, crop, float(np.clip(0.5 + score / 4, 0, 1))) for score in chosen["score"]])
    stats = NormalisationStats(CHANNELS, (100.0, 100.0), (4000.0, 4000.0))
    write_counterfactuals(with_gallery(dataset, chosen, crops, {"screen": CellConfig(normalisation=stats)}),
                          out / "counterfactuals.zarr")


def _write_cells(out: Path, rng, wells: pd.DataFrame, attributes: pd.DataFrame) -> None:
    """``CELLS_PER_WELL`` cells per well, one file per well, scores about their well's mean; one on the border."""
    for _, well in wells.iterrows():
        ids = [f"screen/{well['well']}/0/{k}" for k in range(1, CELLS_PER_WELL + 1)]
        table = pd.DataFrame({"field": 0, "label": range(1, CELLS_PER_WELL + 1), "cell_id": ids,
                              "border": [False] * (CELLS_PER_WELL - 1) + [True],
                              **{f"attribute_{a}": well[f"mean_attribute_{a}"] + rng.normal(0, 0.3, CELLS_PER_WELL)
                                 for a in attributes["attribute"]}})
        folder = out / "cells" / "plate=screen" / f"well={well['well']}"
        folder.mkdir(parents=True, exist_ok=True)
        table.to_parquet(folder / "field-0.parquet")


def _write_manifest(out: Path, wells: pd.DataFrame, n_treatments: int) -> None:
    (out / "bundle").mkdir(exist_ok=True)
    (out / "bundle" / "config.json").write_text(json.dumps(
        {"class_names": [NEGATIVE, *[f"cpd{i:02d}" for i in range(1, n_treatments + 1)]]}))
    manifest = {"screenxai": "synthetic", "python": "3.11", "dependencies": {},
                "config": {"cells": {}}, "bundle": {"path": str(out / "bundle"), "content_hash": "0" * 64},
                "config_hash": "0" * 64, "seconds": 0.0,
                "plates": [{"name": "screen", "url": "synthetic", "ngff_version": "0.5", "wells": len(wells),
                            "fields": len(wells), "channels": list(CHANNELS)}],
                "fields": [{"plate": "screen", "well": w, "field": 0, "status": "done", "error": "", "seconds": 0.0}
                           for w in wells["well"]]}
    (out / "manifest.json").write_text(json.dumps(manifest))
