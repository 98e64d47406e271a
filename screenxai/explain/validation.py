"""Judge a run's explanations against the planted truth of a simulated multi-treatment screen.

For tests and benchmarks only: a real screen has no planted truth. Each
treatment of ``screenxai.plate.simulate.TREATMENTS`` moves known factors;
a good explanation's top attribute follows the treatment's factor from well
to well, is named after it, the treatments that do the same thing share a
mechanism group, and the inert one is called inactive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score

from screenxai.explain.naming import feature_label
from screenxai.pipeline.treatments import treatment_tables
from screenxai.plate.conditions import Conditions

# The morphology features in which each planted factor shows (``screenxai.cells`` feature columns).
FACTOR_FEATURES = {
    "translocation": ("reporter_ratio", "reporter_nucleus_mean", "reporter_ring_mean"),
    "nuclear_area": ("area", "perimeter", "major_axis_length", "minor_axis_length"),
    "texture": ("reporter_texture",),
}
CHANNELS = ("DNA", "reporter")
PSEUDO_TREATMENT = "negative-wells"


def names_factor(name: str, factor: str) -> bool:
    """Whether an attribute's name (e.g. ``nuclear area up``) is one of the factor's morphology features."""
    return any(name.startswith(feature_label(feature, CHANNELS) + " ") for feature in FACTOR_FEATURES[factor])


def well_truth(truth: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    """Per-well means of the planted factors (one row per plate and well)."""
    return truth.groupby(["plate", "well"], as_index=False)[list(factors)].mean()


def factor_tracking(wells: pd.DataFrame, truth_wells: pd.DataFrame, treatment: str, negative: str,
                    attribute: str, factor: str, treatment_column: str = "compound") -> float:
    """|Spearman| of an attribute's well means with a factor's over the treatment's and the negative wells."""
    return column_tracking(wells, truth_wells, treatment, negative, f"mean_attribute_{attribute}", factor,
                           treatment_column)


def column_tracking(wells: pd.DataFrame, truth_wells: pd.DataFrame, treatment: str, negative: str,
                    column: str, factor: str, treatment_column: str = "compound") -> float:
    """|Spearman| of a per-well column with a factor's well means over the treatment's and the negative wells."""
    joined = wells.merge(truth_wells, on=["plate", "well"])
    rows = joined[joined[treatment_column].isin([treatment, negative])]
    return float(abs(spearmanr(rows[column], rows[factor]).statistic))


def readout_report(wells: pd.DataFrame, treatments: pd.DataFrame, truth: pd.DataFrame,
                   planted: dict[str, tuple[str, ...]], negative: str) -> pd.DataFrame:
    """Per (treatment, planted factor): the treatment's own contrast readout, its name and its factor tracking.

    Columns: ``treatment``, ``factor``, ``readout``, ``readout_name``,
    ``named`` (whether the name is the factor's) and ``spearman`` (the
    readout's well means against the factor's, ``column_tracking``).
    """
    factors = sorted({f for fs in planted.values() for f in fs})
    truth_wells = well_truth(truth, factors)
    own = treatments.set_index("treatment")
    rows = []
    for treatment, moved in planted.items():
        readout, name = own.loc[treatment, "readout"], own.loc[treatment, "readout_name"]
        readout = readout if isinstance(readout, str) and f"mean_{readout}" in wells.columns else None
        name = name if isinstance(name, str) else None
        for factor in moved:
            spearman = np.nan if readout is None else column_tracking(wells, truth_wells, treatment, negative,
                                                                      f"mean_{readout}", factor)
            rows.append({"treatment": treatment, "factor": factor, "readout": readout, "readout_name": name,
                         "named": name is not None and names_factor(name, factor), "spearman": spearman})
    return pd.DataFrame(rows)


def treatment_report(wells: pd.DataFrame, attributes: pd.DataFrame, truth: pd.DataFrame,
                     planted: dict[str, tuple[str, ...]], negative: str, top: int = 3) -> pd.DataFrame:
    """Per (treatment, planted factor): the best of its top attributes at tracking the factor, and the top one's.

    Columns: ``treatment``, ``factor``, ``top_attribute``, ``top_name``,
    ``top_spearman`` (rank-1 attribute vs the factor), ``top_named``
    (whether the rank-1 name is the factor's), ``best_rank`` and
    ``best_spearman`` (the top-``top`` attribute that tracks it best).
    """
    factors = sorted({f for fs in planted.values() for f in fs})
    truth_wells = well_truth(truth, factors)
    rows = []
    for treatment, moved in planted.items():
        kept = attributes[attributes["treatment"] == treatment].sort_values("rank").head(top)
        for factor in moved:
            tracking = [factor_tracking(wells, truth_wells, treatment, negative, a, factor) for a in kept["attribute"]]
            best = int(np.nanargmax(tracking)) if tracking else -1
            rows.append({"treatment": treatment, "factor": factor,
                         "top_attribute": kept["attribute"].iloc[0] if len(kept) else None,
                         "top_name": kept["name"].iloc[0] if len(kept) else None,
                         "top_spearman": tracking[0] if tracking else np.nan,
                         "top_named": bool(len(kept)) and names_factor(kept["name"].iloc[0], factor),
                         "best_rank": int(kept["rank"].iloc[best]) if tracking else -1,
                         "best_spearman": tracking[best] if tracking else np.nan,
                         "best_named": bool(tracking) and names_factor(kept["name"].iloc[best], factor)})
    return pd.DataFrame(rows)


def grouping_agreement(treatments: pd.DataFrame, true_groups: dict[str, str]) -> float:
    """Adjusted Rand index of the run's mechanism groups against the planted ones (inactive as a group)."""
    table = treatments.set_index("treatment").loc[list(true_groups)]
    return float(adjusted_rand_score(list(true_groups.values()), table["group"].tolist()))


def pseudo_treatment_call(wells: pd.DataFrame, attributes: pd.DataFrame, conditions: Conditions) -> dict:
    """Every other negative well relabelled as a treatment with a dose series, and its activity call.

    The pseudo-treatment takes the dose indices of a real one and the first
    treatment's attributes; the rest of the negative wells stay negative. A
    sound activity call finds it inactive. ``wells`` has the layout columns
    (``compound``, ``dose_index``, ``dose``) joined.
    """
    negatives = wells.index[wells[conditions.class_column] == conditions.negative]
    fake = negatives[::2]
    relabelled = wells.copy()
    relabelled.loc[fake, conditions.class_column] = PSEUDO_TREATMENT
    relabelled.loc[fake, "dose_index"] = np.resize(sorted(wells["dose_index"].unique())[1:], len(fake))
    relabelled.loc[fake, "dose"] = relabelled.loc[fake, "dose_index"].astype(float)
    first = attributes[attributes["treatment"] == conditions.treatments[0]]
    extended = pd.concat([attributes, first.assign(treatment=PSEUDO_TREATMENT)], ignore_index=True)
    with_pseudo = Conditions(conditions.class_column, conditions.negative, (*conditions.treatments, PSEUDO_TREATMENT))
    treatments = treatment_tables(relabelled, extended, with_pseudo, {}).treatments
    row = treatments.set_index("treatment").loc[PSEUDO_TREATMENT]
    return {"wells": len(fake), "active": bool(row["active"]), "activity_z": float(row["activity_z"]),
            "null_z": float(row["null_z"])}
