"""Per-well tables gathered from the per-field cell files."""

from __future__ import annotations

import pandas as pd
from scipy import stats

from screenxai.cells.features import CHANNEL_SUFFIXES, SHAPE_COLUMNS

LOW_COUNT_FRACTION = 0.25  # a well with fewer cells than this share of the plate median is flagged
SATURATION_LIMIT = 0.01  # a well with more saturated pixels than this fraction is flagged
FOCUS_FRACTION = 0.25  # blur cuts Laplacian variance by an order of magnitude; content alone varies it ~3x


def well_table(cells: pd.DataFrame, fields: pd.DataFrame, layouts: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """One row per plate and well: layout columns, cell and field counts, median features, QC flags."""
    cells = cells.assign(plate=cells["plate"].astype(str), well=cells["well"].astype(str))
    feature_columns = [c for c in cells.columns
                       if c in SHAPE_COLUMNS or any(c.endswith("_" + s) for s in CHANNEL_SUFFIXES)]
    by_well = cells.groupby(["plate", "well"])
    medians = by_well[feature_columns].median().add_prefix("median_")
    counts = by_well.size().rename("n_cells")
    model = model_columns(cells)
    means = by_well[model].mean().astype("float64").add_prefix("mean_") if model else None
    field_stats = fields.groupby(["plate", "well"]).agg(
        n_fields=("field", "size"),
        n_failed_fields=("status", lambda s: int((s == "failed").sum())),
        saturated_fraction=("saturated_fraction", "max"),
        focus=("focus", "mean"),
    )
    wells = field_stats.join(counts).join(medians)
    if means is not None:
        wells = wells.join(means)
    if "formula_value" in cells:
        wells = wells.join(by_well["formula_value"].apply(lambda v: float((v > 0).mean()))
                           .rename("fraction_formula_positive"))
    if "in_training" in cells:
        wells = wells.join(by_well["in_training"].sum().astype("int64").rename("n_training_cells"))
    wells = wells.reset_index()
    wells["n_cells"] = wells["n_cells"].fillna(0).astype("int64")
    for plate, rows in wells.groupby("plate").groups.items():
        median_count = wells.loc[rows, "n_cells"].median()
        median_focus = wells.loc[rows, "focus"].median()
        wells.loc[rows, "qc_low_count"] = wells.loc[rows, "n_cells"] < LOW_COUNT_FRACTION * median_count
        wells.loc[rows, "qc_out_of_focus"] = wells.loc[rows, "focus"] < FOCUS_FRACTION * median_focus
    wells["qc_saturated"] = wells["saturated_fraction"] > SATURATION_LIMIT
    wells["qc_failed_fields"] = wells["n_failed_fields"] > 0
    for flag in ("qc_low_count", "qc_out_of_focus", "qc_saturated", "qc_failed_fields"):
        wells[flag] = wells[flag].astype(bool)
    with_layout = []
    for plate, rows in wells.groupby("plate"):
        layout = layouts.get(plate)
        with_layout.append(rows.merge(layout, on="well", how="left") if layout is not None else rows)
    return pd.concat(with_layout, ignore_index=True)


def model_columns(cells: pd.DataFrame) -> list[str]:
    """Per-cell outputs of the model stage averaged per well: class probabilities, attribute scores, formula."""
    return [c for c in cells.columns if c.startswith(("p_", "attribute_")) or c == "formula_value"]


def dose_trend(wells: pd.DataFrame, column: str, dose: str = "dose_index") -> float | None:
    """Spearman correlation of a per-well column with dose over the dose-series wells."""
    if dose not in wells or column not in wells:
        return None
    series = wells[wells["control"] == "dose"] if "control" in wells else wells
    series = series.dropna(subset=[dose, column])
    if len(series) < 3:
        return None
    return float(stats.spearmanr(series[dose], series[column]).statistic)


def condition_summary(wells: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Mean of per-well values by control group (or for the whole plate without a layout)."""
    group = "control" if "control" in wells else None
    if group is None:
        return wells[columns].mean().to_frame("all wells").T
    return wells.groupby(group)[columns].mean()




def attribute_tables(cells: pd.DataFrame, layouts: dict[str, pd.DataFrame | None], attributes: pd.DataFrame,
                     dose_column: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Screen statistics of the learned attributes beside the hand-built nucleus/ring ratios.

    Returns (per-well SDs and robust z-scores of every readout, the
    ``attributes`` table with its statistics joined, one row of statistics
    per readout). Needs a ``control`` layout column with at least two
    negative and two positive wells; the dose axis is ``dose``, else
    ``dose_index``.
    """
    from screenxai.explain import attribute_columns, well_statistics

    frames = []
    for plate, rows in cells.assign(plate=cells["plate"].astype(str), well=cells["well"].astype(str)) \
            .groupby("plate"):
        layout = layouts.get(plate)
        frames.append(rows.merge(layout, on="well", how="left") if layout is not None else rows)
    cells = pd.concat(frames, ignore_index=True)
    dose_column = dose_column or next((c for c in ("dose", "dose_index") if c in cells.columns), None)
    if dose_column is None or "control" not in cells.columns:
        raise ValueError("attribute statistics need the layout's control and dose (or dose_index) columns")
    learned = attribute_columns(attributes)
    ratios = [c for c in cells.columns if c.endswith("_ratio")]
    wells, readouts = well_statistics(cells, [*learned, *ratios], dose_column=dose_column)
    keep = ["plate", "well", *[f"{c}_{s}" for c in learned for s in ("sd", "robust_z")]]
    by_readout = readouts.set_index("readout")
    named = attributes.assign(readout=learned).join(by_readout, on="readout").drop(columns="readout")
    per_well = wells[keep].astype({c: "float64" for c in keep[2:]})
    return per_well, named, readouts
