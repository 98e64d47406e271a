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
from screenxai.pipeline.treatments import TREATMENT, activity_calls, label_treatments
from screenxai.plate.conditions import Conditions
from screenxai.stats import top_dose_wells, treatment_profiles

# The morphology features in which each planted factor shows (``screenxai.cells`` feature columns).
FACTOR_FEATURES = {
    "translocation": ("reporter_ratio", "reporter_nucleus_mean", "reporter_ring_mean"),
    "nuclear_area": ("area", "perimeter", "major_axis_length", "minor_axis_length"),
    "texture": ("reporter_texture",),
}
CHANNELS = ("DNA", "reporter")
PSEUDO_TREATMENT = "negative-wells"
PSEUDO_DRAWS = 200  # random pseudo-treatments per plate


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


def pseudo_treatment_calls(wells: pd.DataFrame, conditions: Conditions, draws: int = PSEUDO_DRAWS,
                           seed: int = 0) -> pd.DataFrame:
    """Activity calls of random pseudo-treatments made of negative wells, one row per draw.

    Each draw relabels a random half of the negative wells as a treatment
    whose top dose has as many wells as the screen's treatments have at
    theirs (the median; at most the pseudo-treatment's half), and calls it
    as a run calls a treatment, on every attribute and contrast readout
    (``mean_attribute_*``, ``mean_contrast_*``), against the other half. A
    sound call finds few of them active; how few it can find is set by how
    many pseudo-groups the remaining negatives make
    (:func:`exchangeable_false_positive_rate`). One draw says little: a
    plate whose brightest negative wells fall into one half makes that half
    differ from the other in earnest. ``wells`` has the layout columns
    (``dose_index``) joined. Columns: ``wells``, ``top_wells``, ``active``,
    ``activity_z``, ``null_z``, ``readout``.
    """
    labelled = label_treatments(wells, conditions)
    readouts = [c for c in labelled.columns if c.startswith(("mean_attribute_", "mean_contrast_"))]
    negatives = labelled[labelled[TREATMENT] == conditions.negative]
    treated = labelled[labelled[TREATMENT].isin(conditions.treatments)]
    top = top_dose_wells(treated, TREATMENT, conditions.negative, 1, "dose_index")
    size = len(negatives) // 2
    top_wells = int(min(top.groupby(TREATMENT).size().median(), size)) if len(top) else 1
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(draws):
        relabelled = negatives.copy()
        chosen = rng.permutation(len(negatives))[:size]
        relabelled.iloc[chosen, relabelled.columns.get_loc(TREATMENT)] = PSEUDO_TREATMENT
        relabelled.iloc[chosen, relabelled.columns.get_loc("dose_index")] = np.where(np.arange(size) < top_wells, 2, 1)
        profiles = treatment_profiles(relabelled, TREATMENT, readouts, conditions.negative, 1, "dose_index")
        call = activity_calls(relabelled, profiles, pd.Series({PSEUDO_TREATMENT: top_wells}),
                              conditions.negative).loc[PSEUDO_TREATMENT]
        rows.append({"wells": size, "top_wells": top_wells, "active": bool(call["active"]),
                     "activity_z": float(call["activity_z"]), "null_z": float(call["null_z"]),
                     "readout": str(call["top_attribute"]).removeprefix("mean_")})
    return pd.DataFrame(rows)


def exchangeable_false_positive_rate(n_negative_wells: int, n_readouts: int, top_wells: int,
                                     draws: int = PSEUDO_DRAWS, seed: int = 0) -> float:
    """The share of pseudo-treatments called active on plates whose wells are independent normal draws.

    The level the activity call reaches when the negative wells are truly
    alike: its null is the most extreme of the few pseudo-groups the
    remaining negatives make, so even then a pseudo-treatment beats it now
    and then. The same design as a screen's: ``n_negative_wells``,
    ``n_readouts`` and ``top_wells`` wells at the pseudo-treatment's top dose.
    """
    rng = np.random.default_rng(seed)
    conditions = Conditions("compound", "negative", ("treated",))
    design = pd.DataFrame({"plate": "p", "well": [f"w{i}" for i in range(n_negative_wells + top_wells)],
                           "compound": ["negative"] * n_negative_wells + ["treated"] * top_wells,
                           "dose_index": [0] * n_negative_wells + [1] * top_wells})
    calls = []
    for _ in range(draws):  # a fresh plate each draw: one plate's splits share its wells
        readouts = rng.normal(size=(len(design), n_readouts))
        wells = design.join(pd.DataFrame(readouts, columns=[f"mean_attribute_r{i}" for i in range(n_readouts)]))
        calls.append(pseudo_treatment_calls(wells, conditions, 1, int(rng.integers(2**31)))["active"].iloc[0])
    return float(np.mean(calls))
