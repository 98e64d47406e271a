"""Per-well tables of a run, aggregated where the per-field cell files are.

Each well's cell files are reduced by one task on the cluster (exact
medians, means and SDs), so only one row per well reaches the client and a
worker holds one well's cells at a time, whatever the number of cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from distributed import Client
from scipy import stats

from screenxai.cells.features import CHANNEL_SUFFIXES, SHAPE_COLUMNS

LOW_COUNT_FRACTION = 0.25  # a field or well with fewer cells than this share of its plate's median is flagged
SATURATION_LIMIT = 0.01  # a field with more saturated pixel values than this fraction (and its well) is flagged
FOCUS_FRACTION = 0.25  # blur cuts Laplacian variance by an order of magnitude; content alone varies it ~3x
WELL_KEYS = ["plate", "well"]
OWN_FIELD_FLAGS = ("qc_no_cells", "qc_saturated", "qc_missing_chunks")  # set by the field's task from its own numbers


def field_flags(qc: dict) -> dict[str, bool]:
    """The QC flags a done field decides alone, for its status row.

    No cells found, too many saturated pixels, chunks of its image absent
    from the store (read as the fill value, so its cells are scored on
    partly blank pixels).
    """
    return {"qc_no_cells": qc["n_cells"] == 0, "qc_saturated": bool(qc["saturated_fraction"] > SATURATION_LIMIT),
            "qc_missing_chunks": qc["missing_chunks"] > 0}


def relative_flags(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (fields or wells) with ``qc_low_count`` and ``qc_out_of_focus`` against its plate's median row.

    Rows whose ``n_cells`` or ``focus`` is NaN are not flagged and do not count in the medians.
    """
    medians = table.groupby("plate")[["n_cells", "focus"]].transform("median")
    return table.assign(qc_low_count=table["n_cells"] < LOW_COUNT_FRACTION * medians["n_cells"],
                        qc_out_of_focus=table["focus"] < FOCUS_FRACTION * medians["focus"])


def field_qc_flags(fields: pd.DataFrame) -> pd.DataFrame:
    """The run's field table with the plate-relative flags added beside the tasks' own; nothing is dropped.

    Failed fields (0 cells, NaN measures) are not flagged and do not count
    in the plate's medians: their status already says what went wrong.
    """
    measured = fields.assign(n_cells=fields["n_cells"].where(fields["status"] == "done"))
    flagged = relative_flags(measured)
    return fields.assign(qc_low_count=flagged["qc_low_count"], qc_out_of_focus=flagged["qc_out_of_focus"])


def feature_columns(columns: Sequence[str]) -> list[str]:
    """The cell table's shape and per-channel features, whose per-well medians go into the well table."""
    return [c for c in columns if c in SHAPE_COLUMNS or any(c.endswith("_" + s) for s in CHANNEL_SUFFIXES)]


def model_columns(columns: Sequence[str]) -> list[str]:
    """Per-cell outputs of the model stage averaged per well: probabilities, attribute and contrast scores, formula."""
    return [c for c in columns if c.startswith(("p_", "attribute_", "contrast_")) or c == "formula_value"]


def aggregate_wells(cells_dir: str | Path, client: Client | None = None) -> pd.DataFrame:
    """One row per plate and well of the cell table under ``cells_dir``, each well reduced by one task on ``client``.

    A run writes each field's cells under ``plate=*/well=*``, so a well's
    cells are in one folder: each task reads one well and returns its row,
    and a worker never holds more than one well's cells, however large the
    plate. Columns: ``n_cells``, ``median_{feature}``, ``mean_{column}`` for
    the model outputs and the ``*_ratio`` readouts, ``sd_{column}`` for
    attribute and contrast scores and ratios, ``fraction_formula_positive``
    and ``n_training_cells`` (when the cells have them). Wells without cells
    have no row. ``plate`` and ``well`` are plain strings.
    """
    well_dirs = sorted(Path(cells_dir).glob("plate=*/well=*"))
    if client is not None:
        rows = client.gather(client.map(_well_row, well_dirs, pure=False))
    else:
        rows = [_well_row(d) for d in well_dirs]
    rows = [r for r in rows if r is not None]
    if not rows:
        return pd.DataFrame({"plate": pd.Series(dtype=str), "well": pd.Series(dtype=str),
                             "n_cells": pd.Series(dtype="int64")})
    return pd.concat(rows, ignore_index=True).sort_values(WELL_KEYS).reset_index(drop=True)


def _well_row(well_dir: Path) -> pd.DataFrame | None:
    """The aggregates of the cells in one ``plate=*/well=*`` folder, as one row; None when it holds no cell.

    Each field file is read alone: a field without cells stores all-null
    columns whose types differ from the other fields'.
    """
    files = sorted(f for f in well_dir.glob("*.parquet") if not f.name.startswith((".", "_")))
    tables = [t for t in (pd.read_parquet(f) for f in files) if len(t)]
    if not tables:
        return None
    cells = pd.concat(tables, ignore_index=True)
    columns = list(cells.columns)
    features = feature_columns(columns)
    averaged = [*model_columns(columns), *[c for c in columns if c.endswith("_ratio")]]
    spread = [c for c in averaged if c.startswith(("attribute_", "contrast_")) or c.endswith("_ratio")]
    row = {"plate": well_dir.parent.name.split("=", 1)[1], "well": well_dir.name.split("=", 1)[1],
           "n_cells": len(cells)}
    row.update(cells[features].astype("float64").median().add_prefix("median_"))
    row.update(cells[averaged].astype("float64").mean().add_prefix("mean_"))
    row.update(cells[spread].astype("float64").std().add_prefix("sd_"))
    if "formula_value" in columns:
        row["fraction_formula_positive"] = float((cells["formula_value"] > 0).mean())
    if "in_training" in columns:
        row["n_training_cells"] = int(cells["in_training"].sum())
    return pd.DataFrame([row])


def well_table(aggregates: pd.DataFrame, fields: pd.DataFrame,
               layouts: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """One row per plate and well: layout columns, cell and field counts, median features, model means, QC flags.

    ``aggregates`` is :func:`aggregate_wells`'s table; the SDs of readouts
    are left to the attribute statistics.
    """
    keep = [c for c in aggregates.columns if not c.startswith("sd_")
            and not (c.startswith("mean_") and c.endswith("_ratio"))]
    field_stats = fields.assign(plate=fields["plate"].astype(str), well=fields["well"].astype(str)) \
        .groupby(WELL_KEYS).agg(
            n_fields=("field", "size"),
            n_failed_fields=("status", lambda s: int((s == "failed").sum())),
            saturated_fraction=("saturated_fraction", "max"),
            focus=("focus", "mean"),
            missing_chunks=("missing_chunks", "sum"),
        )
    wells = field_stats.join(aggregates[keep].set_index(WELL_KEYS)).reset_index()
    wells["n_cells"] = wells["n_cells"].fillna(0).astype("int64")
    if "n_training_cells" in wells:
        wells["n_training_cells"] = wells["n_training_cells"].fillna(0).astype("int64")
    wells = relative_flags(wells)
    wells["qc_saturated"] = wells["saturated_fraction"] > SATURATION_LIMIT
    wells["qc_failed_fields"] = wells["n_failed_fields"] > 0
    wells["qc_missing_chunks"] = wells.pop("missing_chunks") > 0
    return with_layouts(wells, layouts)


def with_layouts(wells: pd.DataFrame, layouts: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """``wells`` with each plate's layout columns joined on ``well``."""
    joined = []
    for plate, rows in wells.groupby("plate"):
        layout = layouts.get(plate)
        joined.append(rows.merge(layout, on="well", how="left") if layout is not None else rows)
    return pd.concat(joined, ignore_index=True)


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


def attribute_tables(aggregates: pd.DataFrame, layouts: dict[str, pd.DataFrame | None], attributes: pd.DataFrame,
                     dose_column: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Control statistics of the learned attributes beside the hand-built nucleus/ring ratios and the classifier.

    For two-class designs; the classifier's readouts are its mean
    probabilities per well (``p_{class}``).

    ``aggregates`` is :func:`aggregate_wells`'s table. Returns (the
    ``attributes`` table with each attribute id's statistics joined, one row
    of statistics per readout: Z', SSMD, dose Spearman, 4PL fit). Needs a
    ``control`` layout column with at least two negative and two positive
    wells; the dose axis is ``dose``, else ``dose_index``.
    """
    from screenxai.explain import attribute_columns
    from screenxai.stats import readout_statistics

    wells = with_layouts(aggregates, layouts)
    dose_column = dose_column or next((c for c in ("dose", "dose_index") if c in wells.columns), None)
    if dose_column is None or "control" not in wells.columns:
        raise ValueError("attribute statistics need the layout's control and dose (or dose_index) columns")
    learned = attribute_columns(attributes)
    ratios = [c.removeprefix("sd_") for c in wells.columns if c.startswith("sd_") and c.endswith("_ratio")]
    probabilities = [c.removeprefix("mean_") for c in wells.columns if c.startswith("mean_p_")]
    readout_names = [*learned, *ratios, *probabilities]
    wells = wells.rename(columns={**{f"mean_{c}": f"{c}_mean" for c in readout_names},
                                  **{f"sd_{c}": f"{c}_sd" for c in readout_names}})
    _, readouts = readout_statistics(wells, readout_names, dose_column=dose_column)
    by_readout = readouts.set_index("readout").add_prefix("control_")
    named = attributes.assign(readout="attribute_" + attributes["attribute"]).join(by_readout, on="readout")
    return named.drop(columns="readout"), readouts
