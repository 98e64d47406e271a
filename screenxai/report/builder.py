"""Build ``OUT/report.html`` from a run folder: run facts, QC maps, per-treatment attributes, the screen.

Every figure is written to ``OUT/report/figures/`` (PNG, and SVG for plots)
and embedded in the page as a PNG, so the one HTML file opens anywhere
with no server and no network. Beside each figure the page carries the
numbers it draws as a JSON block (``<script type="application/json">``),
so what a figure shows can be read back and checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from screenxai.report import figures
from screenxai.report.dose import MIN_DOSES, dose_points, fitted_curve
from screenxai.report.run_data import RunData, attribute_column, load_run, well_position

QC_MAPS = (("n_cells", "cell count", "cells", ("qc_low_count", "qc_failed_fields", "qc_missing_chunks"), "viridis"),
           ("focus", "focus", "variance of the Laplacian", ("qc_out_of_focus",), "viridis"),
           ("saturated_fraction", "saturation", "fraction of saturated pixels", ("qc_saturated",), "magma"))
STRIP_CELLS = 2  # exemplar cells shown per attribute: one of the treatment's condition, one of another
STRIP_VARIABLES = ("original", "image", "probability", "original_probability")
EFFECT_COLUMNS = ("activity_z", "max_effect", "robust_z_top_dose")
FORMULA_FIELDS = ("treatment", "formula", "complexity", "positive_class", "inputs", "latent_features",
                  "accuracy_blackbox", "accuracy_sparse", "accuracy_formula", "fidelity", "agreement",
                  "n_heldout_cells", "n_heldout_wells")


@dataclass
class Shown:
    """One figure on the page: its id, embedded PNG, plain-words caption and the data it draws."""

    id: str
    src: str
    caption: str
    data: dict = field(default_factory=dict)


class _Figures:
    """Saves each figure under ``folder`` with a unique id and closes it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.used: set[str] = set()

    def show(self, figure, name: str, caption: str, data: dict | None = None, svg: bool = True) -> Shown:
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")
        base, n = slug, 1
        while slug in self.used:
            n += 1
            slug = f"{base}-{n}"
        self.used.add(slug)
        return Shown(slug, figures.save_figure(figure, self.folder, slug, svg=svg), caption, data or {})


def build_report(out: Path, html: Path | None = None) -> Path:
    """Write the report of run folder ``out`` to ``html`` (default ``out/report.html``); return its path."""
    out = Path(out)
    run = load_run(out)
    html = Path(html) if html is not None else out / "report.html"
    shown = _Figures(out / "report" / "figures")
    context = {"title": f"screenxai run {out.name}", "run": run_facts(run), "notes": missing_notes(run),
               "qc": qc_section(run, shown), "treatments": treatment_sections(run, shown),
               "screen": screen_section(run, shown)}
    environment = jinja2.Environment(loader=jinja2.PackageLoader("screenxai.report", "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined)
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(environment.get_template("report.html.j2").render(**context), encoding="utf-8")
    return html


def run_facts(run: RunData) -> dict:
    """What was run: plates, counts, failures with their errors, timings, bundle, versions."""
    manifest, wells, fields = run.manifest, run.table("wells"), run.table("fields")
    failures = run.table("failures")
    if failures is None:
        failures = pd.DataFrame([f for f in manifest.get("fields", []) if f.get("status") == "failed"])
    field_seconds = fields["seconds"] if fields is not None and "seconds" in fields else pd.Series(dtype=float)
    bundle = manifest.get("bundle") or {}
    return {"plates": manifest.get("plates", []),
            "n_wells": 0 if wells is None else len(wells),
            "n_fields": len(manifest.get("fields", [])) if fields is None else len(fields),
            "n_cells": 0 if wells is None else int(wells["n_cells"].sum()),
            "failures": failures.to_dict("records"),
            "seconds": manifest.get("seconds"),
            "median_field_seconds": float(field_seconds.median()) if len(field_seconds) else None,
            "bundle_path": bundle.get("path"), "bundle_hash": bundle.get("content_hash"),
            "classes": list(run.class_names), "config_hash": manifest.get("config_hash"),
            "versions": {"screenxai": manifest.get("screenxai"), "python": manifest.get("python"),
                         **manifest.get("dependencies", {})},
            "command": " ".join(manifest["command"]) if isinstance(manifest.get("command"), list)
            else manifest.get("command")}


def missing_notes(run: RunData) -> list[str]:
    """Plain statements of what this run did not measure, so an absent section is never a mystery."""
    notes, wells = [], run.table("wells")
    if run.manifest.get("bundle") is None:
        notes.append("no bundle (a cells-only run): no classifier, no attributes, no counterfactuals")
    elif run.table("attributes") is None:
        notes.append("the bundle has no attributes: no attributes, no counterfactuals")
    if wells is None:
        notes.append("no wells.parquet: no plate maps")
    elif "dose" not in wells:
        notes.append("no dose column in the layout: no dose-response")
    if run.table("attributes") is not None and run.counterfactuals is None:
        notes.append("no counterfactuals.zarr: no counterfactual strips and no cell gallery")
    if run.table("treatments") is None:
        notes.append("no treatments.parquet: treatments are not ranked against each other")
    if run.table("similarity") is None:
        notes.append("no similarity.parquet: no treatment similarity heatmap")
    if run.table("interpretable") is None:
        notes.append("no interpretable model: no formula")
    if run.manifest.get("command") is None:
        notes.append("the command line is not recorded in manifest.json")
    return notes


def _flags(rows: pd.DataFrame, columns) -> np.ndarray:
    present = [c for c in columns if c in rows]
    return rows[present].fillna(False).astype(bool).any(axis=1).to_numpy() if present else np.zeros(len(rows), bool)


def _plates(wells: pd.DataFrame):
    """Each plate's wells, their positions (``row``, ``column`` from 1) and the plate's extent."""
    positions = well_position(wells)
    for plate, rows in wells.groupby("plate", sort=False):
        where = positions.loc[rows.index]
        yield str(plate), rows, where, int(where["row"].max()), int(where["column"].max())


def _map_data(plate: str, column: str, rows: pd.DataFrame, flagged: np.ndarray) -> dict:
    values = rows[column].astype(float)
    return {"kind": "plate_map", "plate": plate, "column": column,
            "values": {w: (None if not np.isfinite(v) else float(v)) for w, v in zip(rows["well"].astype(str), values)},
            "flagged": sorted(rows["well"].astype(str)[flagged])}


def qc_section(run: RunData, shown: _Figures) -> list[Shown]:
    """Plate maps of cell count, focus and saturation, each with the wells its QC flags mark crossed."""
    wells = run.table("wells")
    if wells is None:
        return []
    maps = []
    for plate, rows, positions, n_rows, n_columns in _plates(wells):
        for column, title, unit, flag_columns, cmap in QC_MAPS:
            if column not in rows:
                continue
            flagged = _flags(rows, flag_columns)
            figure = figures.plate_map(positions, rows[column].astype(float).to_numpy(), flagged,
                                       f"{plate}: {title}", unit, n_rows, n_columns, cmap)
            caption = (f"{title.capitalize()} of every well of plate {plate}, laid out as on the instrument "
                       f"(row A at the top). Crossed wells are flagged ({', '.join(flag_columns)}): "
                       f"{', '.join(sorted(rows['well'].astype(str)[flagged])) or 'none'}. Grey: no value.")
            maps.append(shown.show(figure, f"qc-{plate}-{column}", caption, _map_data(plate, column, rows, flagged)))
    return maps


def treatment_wells(wells: pd.DataFrame, treatment: str, class_names: tuple[str, ...]) -> pd.DataFrame:
    """The wells a treatment was applied to: its compound's wells, else (two classes) every non-negative well."""
    for column in ("compound", "treatment"):
        if column in wells and (wells[column].astype(str) == treatment).any():
            return wells[wells[column].astype(str) == treatment]
    if "control" in wells and class_names:
        return wells[wells["control"].astype(str) != class_names[0]]
    return wells


def negative_wells(wells: pd.DataFrame, class_names: tuple[str, ...]) -> pd.DataFrame:
    negative = class_names[0] if class_names else "negative"
    return wells[wells["control"].astype(str) == negative] if "control" in wells else wells.iloc[:0]


def treatment_sections(run: RunData, shown: _Figures) -> list[dict]:
    """Per treatment, its attributes in rank order with their figures."""
    attributes = run.table("attributes")
    if attributes is None:
        return []
    sections = []
    for treatment, rows in attributes.groupby("treatment", sort=False):
        sections.append({"name": treatment,
                         "attributes": [attribute_section(run, shown, row) for row in rows.to_dict("records")]})
    return sections


def attribute_section(run: RunData, shown: _Figures, row: dict) -> dict:
    """One attribute: its name and changes, strips, dose-response, gallery, robust-z map, replicates."""
    treatment, attribute = row["treatment"], row["attribute"]
    label = f"{treatment} attribute {attribute}"
    stats = {k: row[k] for k in ("mean_delta_p", "flip_rate", "ec50", "hill", "max_effect", "r2", "dose_spearman",
                                 "z_prime", "ssmd") if k in row and row[k] is not None and np.isfinite(row[k])}
    section = {"rank": int(row["rank"]), "attribute": attribute, "name": row.get("name", ""),
               "changes": row.get("changes", ""), "source": direction_source(row.get("source")), "stats": stats,
               "figures": [], "notes": []}
    for part in (_strips, _dose_response, _gallery, _robust_z_maps, _replicates):
        made, notes = part(run, shown, row, label)
        section["figures"] += made
        section["notes"] += notes
    return section


def direction_source(source: str | None) -> str:
    """The attributes table's ``source`` in words ("" when the table has none)."""
    if not source:
        return ""
    if source.startswith("contrast "):
        return (f"the contrast direction of {source.removeprefix('contrast ')}: its mean change from the negative "
                "control, scored by the linear discriminant that detects it")
    return "a learned direction (contrastive, classifier-guided unless the bundle says otherwise)"


def _attribute_index(dataset, treatment: str, attribute: str) -> int | None:
    """Position of (treatment, attribute) along the counterfactuals' ``attribute`` dimension."""
    ids = [str(a) for a in dataset["attribute"].values]
    treatments = dataset.coords.get("treatment")
    for i, name in enumerate(ids):
        if name == attribute and (treatments is None or str(treatments.values[i]) == treatment):
            return i
    return None


def _strip_cells(dataset, treatment: str, attribute: int) -> list[int]:
    """Up to ``STRIP_CELLS`` exemplars rendered along the attribute: the first of another condition, then the
    first of the treatment's own."""
    rendered = dataset["rendered"].isel(attribute=attribute).values if "rendered" in dataset else None
    cells = [i for i in range(dataset.sizes["cell"]) if rendered is None or rendered[i]]
    if "condition" not in dataset.coords:
        return cells[:STRIP_CELLS]
    conditions = [str(c) for c in dataset["condition"].values]
    own = [i for i in cells if conditions[i] == treatment]
    other = [i for i in cells if conditions[i] != treatment]
    return (other[:1] + own[:1]) or cells[:STRIP_CELLS]


def _target_name(run: RunData, dataset, treatment: str) -> str:
    target = dataset.attrs.get("target_class")
    if dataset.coords.get("treatment") is None and target is not None and int(target) < len(run.class_names):
        return run.class_names[int(target)]
    return treatment


def _strips(run: RunData, shown: _Figures, row: dict, label: str):
    dataset = run.counterfactuals
    if dataset is None:
        return [], ["no counterfactuals.zarr: no counterfactual strip"]
    index = _attribute_index(dataset, row["treatment"], row["attribute"])
    if index is None:
        return [], [f"counterfactuals.zarr has no attribute {row['attribute']} of {row['treatment']}"]
    alphas = [float(a) for a in dataset["alpha"].values]
    channels = [str(c) for c in dataset["channel"].values] if "channel" in dataset.coords else \
        [f"channel {i}" for i in range(dataset.sizes["c"])]
    target = _target_name(run, dataset, row["treatment"])
    made = []
    cells = _strip_cells(dataset, row["treatment"], index)
    chosen = dataset[list(STRIP_VARIABLES)].isel(cell=cells, attribute=index).load()
    for k, cell in enumerate(cells):
        one = chosen.isel(cell=k)
        probabilities = [float(p) for p in one["probability"].values]
        original_p = float(one["original_probability"].values)
        cell_id = str(one["cell_id"].values) if "cell_id" in one.coords else str(cell)
        condition = str(one["condition"].values) if "condition" in one.coords else ""
        figure = figures.counterfactual_strip(one["original"].values, one["image"].values, alphas, probabilities,
                                              original_p, channels, target)
        caption = (f"Cell {cell_id} (a {condition} exemplar): the real crop, then the same cell decoded with "
                   f"the attribute's edit at each alpha (SDs along its direction; positive moves towards "
                   f"{target}). Top: false-colour composite; below: each channel in grey; one intensity scale "
                   f"for the whole strip. Under each image the classifier's probability of {target}: "
                   + ", ".join(f"{p:.2f}" for p in [original_p, *probabilities]) + ".")
        data = {"kind": "counterfactual_strip", "treatment": row["treatment"], "attribute": row["attribute"],
                "cell_id": cell_id, "cell_index": cell, "alpha": alphas, "probability": probabilities,
                "original_probability": original_p}
        made.append(shown.show(figure, f"strip-{label}-{cell_id}", caption, data, svg=False))
    return made, []


def _readout_column(wells: pd.DataFrame) -> str | None:
    """The hand-built nucleus/ring ratio to draw beside an attribute: a non-nuclear channel's when there is one."""
    ratios = [c for c in wells.columns if c.startswith("median_") and c.endswith("_ratio")]
    ratios.sort(key=lambda c: c[len("median_"):-len("_ratio")].lower() in figures.NUCLEAR_NAMES)
    return ratios[0] if ratios else None


def _dose_response(run: RunData, shown: _Figures, row: dict, label: str):
    wells = run.table("wells")
    if wells is None or "dose" not in wells:
        return [], ["no dose column: no dose-response"]
    mean = attribute_column(wells.columns, row["attribute"], "mean")
    if mean is None:
        return [], [f"wells.parquet has no mean score of attribute {row['attribute']}: no dose-response"]
    own = treatment_wells(wells, row["treatment"], run.class_names)
    points = dose_points(own, mean, attribute_column(wells.columns, row["attribute"], "sd"))
    if points["dose"].nunique() < MIN_DOSES:
        return [], [f"{points['dose'].nunique()} doses of {row['treatment']} (under {MIN_DOSES}): no dose-response fit"]
    fit, curve = fitted_curve(points)
    negative = negative_wells(wells, run.class_names)[mean].astype(float)
    reference = (float(negative.mean()), float(negative.std(ddof=0))) if len(negative) else None
    readout = _readout_column(wells)
    readout_points = None if readout is None else pd.DataFrame(
        {"dose": own["dose"].astype(float), "value": own[readout].astype(float)})
    if readout_points is not None:
        readout_points = readout_points[readout_points["dose"] > 0]
    figure = figures.dose_response(points, curve, fit["ec50"], f"mean score, attribute {row['attribute']}",
                                   reference, readout_points, readout or "")
    ec50 = f"EC50 {fit['ec50']:.3g}, Hill {fit['hill']:.2f}, R^2 {fit['r2']:.2f}" if curve is not None \
        else "the four-parameter fit did not converge"
    caption = (f"Mean score of the attribute in each {row['treatment']} well against dose (log axis), error bars "
               f"the SD over the well's cells; the line is the four-parameter fit of the well means ({ec50}). "
               f"Grey band: negative-control wells' mean +- SD."
               + (f" Red squares: the hand-built readout {readout} of the same wells (right axis)." if readout else ""))
    data = {"kind": "dose_response", "treatment": row["treatment"], "attribute": row["attribute"],
            "wells": points["well"].tolist(), "dose": points["dose"].tolist(), "mean": points["mean"].tolist(),
            "sd": points["sd"].tolist(), "fit": {k: (float(v) if np.isfinite(v) else None) for k, v in fit.items()}}
    return [shown.show(figure, f"dose-{label}", caption, data)], []


GALLERY_VARIABLES = ("gallery", "gallery_score", "gallery_cell", "gallery_plate", "gallery_well")


def _gallery(run: RunData, shown: _Figures, row: dict, label: str):
    dataset = run.counterfactuals
    if dataset is None:
        return [], ["no counterfactuals.zarr: no gallery of cells"]
    if "gallery" not in dataset:
        return [], ["counterfactuals.zarr holds no gallery (a run made before galleries were stored): "
                    "no gallery of cells"]
    index = _attribute_index(dataset, row["treatment"], row["attribute"])
    if index is None:
        return [], [f"counterfactuals.zarr has no attribute {row['attribute']} of {row['treatment']}: no gallery"]
    cells = gallery_cells(dataset[list(GALLERY_VARIABLES)].isel(attribute=index).load())
    if not len(cells):
        return [], [f"no cell has a score on attribute {row['attribute']}: no gallery"]
    several_plates = cells["plate"].nunique() > 1
    titles = [f"{p} {w}" if several_plates else w for p, w in zip(cells["plate"], cells["well"])]
    channels = [str(c) for c in dataset["channel"].values] if "channel" in dataset.coords else \
        [f"channel {i}" for i in range(dataset.sizes["c"])]
    figure = figures.gallery(np.stack(cells["crop"]), cells["score"].to_numpy(), titles, channels)
    n_low, n_high = int((cells["end"] == "low").sum()), int((cells["end"] == "high").sum())
    caption = (f"Which cells is this attribute about? Real cells of the whole run with the {n_low} lowest "
               f"(left) and {n_high} highest (right) scores on it, one cell per well where the run has enough "
               f"wells; cells touching the field's edge and fields flagged for saturation, focus or missing "
               f"chunks left out. Above each its well, under it its score (SDs along the attribute; higher moves "
               f"the classifier towards {row['treatment']}); false-colour composites on one intensity scale.")
    data = {"kind": "gallery", "treatment": row["treatment"], "attribute": row["attribute"],
            **{k: cells[k].tolist() for k in ("cell_id", "score", "plate", "well", "end")}}
    return [shown.show(figure, f"gallery-{label}", caption, data, svg=False)], []


def gallery_cells(one) -> pd.DataFrame:
    """One attribute's gallery as rows in score order: ``end``, ``cell_id``, ``plate``, ``well``, ``score``, ``crop``.

    Each end is stored from its most extreme cell, so the low end reads as
    stored and the high end reversed; empty places ("" ids) are skipped.
    """
    values = {name: one[name].transpose("end", "place", ...).values for name in GALLERY_VARIABLES}
    rows = []
    for e, end in enumerate(str(x) for x in one["end"].values):
        places = range(one.sizes["place"]) if end == "low" else reversed(range(one.sizes["place"]))
        rows += [{"end": end, "cell_id": str(values["gallery_cell"][e, k]), "plate": str(values["gallery_plate"][e, k]),
                  "well": str(values["gallery_well"][e, k]), "score": float(values["gallery_score"][e, k]),
                  "crop": values["gallery"][e, k]} for k in places if str(values["gallery_cell"][e, k])]
    return pd.DataFrame(rows, columns=["end", "cell_id", "plate", "well", "score", "crop"])


def _robust_z_maps(run: RunData, shown: _Figures, row: dict, label: str):
    wells = run.table("wells")
    column = None if wells is None else attribute_column(wells.columns, row["attribute"], "robust_z")
    if column is None:
        return [], [f"wells.parquet has no robust z-score of attribute {row['attribute']}: no plate map"]
    made = []
    for plate, rows, positions, n_rows, n_columns in _plates(wells):
        flagged = _flags(rows, [c for c in rows.columns if c.startswith("qc_")])
        figure = figures.plate_map(positions, rows[column].astype(float).to_numpy(), flagged,
                                   f"{plate}: robust z, attribute {row['attribute']}", "robust z", n_rows, n_columns,
                                   cmap="RdBu_r", centred=True)
        caption = (f"Each well's mean score on the attribute as a robust z-score against the negative controls "
                   f"(median, 1.4826 MAD) on plate {plate}: red wells moved towards {row['treatment']}, blue "
                   f"away; crossed wells carry a QC flag.")
        made.append(shown.show(figure, f"robustz-{label}-{plate}", caption, _map_data(plate, column, rows, flagged)))
    return made, []


def replicate_pairs(wells: pd.DataFrame, column: str) -> pd.DataFrame:
    """Pairs of wells with the same condition (compound, dose, control): the first two of each group."""
    keys = [c for c in ("compound", "dose", "control") if c in wells]
    if not keys:
        return pd.DataFrame(columns=["first", "second"])
    values = wells[[*keys, column]].astype({column: float}).dropna(subset=[column])
    grouped = values.groupby(keys, dropna=False, sort=True)
    group, position = grouped.ngroup(), grouped.cumcount()
    first, second = (values.loc[position == k, column].set_axis(group[position == k]) for k in (0, 1))
    return pd.DataFrame({"first": first, "second": second}).dropna().sort_index().reset_index(drop=True)


def _replicates(run: RunData, shown: _Figures, row: dict, label: str):
    wells = run.table("wells")
    column = None if wells is None else attribute_column(wells.columns, row["attribute"], "mean")
    if column is None:
        return [], []
    pairs = replicate_pairs(wells, column)
    if len(pairs) < 2:
        return [], ["fewer than two conditions with replicate wells: no replicate agreement"]
    r = float(np.corrcoef(pairs["first"], pairs["second"])[0, 1]) if len(pairs) >= 3 else float("nan")
    figure = figures.replicate_agreement(pairs["first"].to_numpy(), pairs["second"].to_numpy(),
                                         f"mean score {row['attribute']}")
    agreement = f"Pearson r = {r:.2f} over {len(pairs)} conditions" if np.isfinite(r) else f"{len(pairs)} conditions"
    caption = (f"Replicate agreement: each point is one condition (same compound, dose and control), its first "
               f"well's mean score against its second's; on the grey line they agree exactly ({agreement}).")
    data = {"kind": "replicates", "first": pairs["first"].tolist(), "second": pairs["second"].tolist()}
    return [shown.show(figure, f"replicates-{label}", caption, data)], []


def screen_section(run: RunData, shown: _Figures) -> dict:
    """Treatments ordered by effect, inactive ones, similarity heatmap, the interpretable formula."""
    section: dict = {"figures": [], "treatments": [], "inactive": [], "formulas": []}
    treatments = run.table("treatments")
    if treatments is not None and len(treatments):
        effect = next((c for c in EFFECT_COLUMNS if c in treatments), None)
        ordered = treatments.sort_values(effect, ascending=False, key=np.abs) if effect else treatments
        active = ordered["active"].astype(bool) if "active" in ordered else pd.Series(True, index=ordered.index)
        section["treatments"] = ordered.to_dict("records")
        section["columns"] = [c for c in ordered.columns if c != "treatment"]
        section["inactive"] = ordered.loc[~active, "treatment"].astype(str).tolist()
        if effect:
            figure = figures.effect_bars(ordered["treatment"].astype(str).tolist(),
                                         ordered[effect].astype(float).to_numpy(), active.to_numpy(), effect)
            section["figures"].append(shown.show(
                figure, "screen-effects", f"Treatments ordered by {effect} (largest effect first); orange: "
                f"active, grey: inactive.", {"kind": "effects", "treatment": ordered["treatment"].astype(str).tolist(),
                                            "value": ordered[effect].astype(float).tolist()}))
    similarity = run.table("similarity")
    if similarity is not None and len(similarity):
        matrix = similarity.pivot(index="treatment", columns="other", values="similarity")
        matrix = matrix.reindex(index=matrix.index, columns=matrix.index)
        groups = ["" for _ in matrix.index]
        if treatments is not None and "group" in treatments:
            lookup = treatments.set_index(treatments["treatment"].astype(str))["group"].astype(str)
            groups = [lookup.get(str(t), "") for t in matrix.index]
            order = np.argsort(groups, kind="stable")
            matrix, groups = matrix.iloc[order, order], [groups[i] for i in order]
        section["figures"].append(shown.show(
            figures.similarity_heatmap(matrix, groups), "screen-similarity",
            "How alike the treatments' effects are (1: the same change, -1: opposite), treatments sorted by their "
            "mechanism group (the coloured squares on the left and the name in brackets).",
            {"kind": "similarity", "treatment": [str(t) for t in matrix.index]}))
    section["formulas"] = _formulas(run, shown, section)
    return section


def _formulas(run: RunData, shown: _Figures, section: dict) -> list[dict]:
    """The interpretable table's rows (one formula, or one per treatment against the negative control)."""
    table = run.table("interpretable")
    if table is None or not len(table):
        return []
    formulas = [dict.fromkeys(FORMULA_FIELDS) | row for row in table.to_dict("records")]
    sweep = run.adversarial
    if sweep is not None and {"target", "budget", "flip_rate"} <= set(sweep.columns):
        section["figures"].append(shown.show(
            figures.adversarial_sweep(sweep), "screen-adversarial",
            "Adversarial check: the fraction of held-out cells a small pixel change (PGD, L-infinity budget) flips, "
            "for the black-box classifier and for the formula; a model that needs a larger budget is harder to fool."))
    return formulas
