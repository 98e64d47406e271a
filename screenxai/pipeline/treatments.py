"""Per-treatment tables of a run, from its per-well table: what each treatment does, at which dose, and alike whom.

Every attribute id has per-well means (``mean_attribute_<id>``); here they
get per-well robust z-scores against the negative wells, each treatment's
kept attributes a dose-response fit over its wells and the negative wells
(at dose 0), and each treatment a profile (mean robust z of every attribute
over its top-dose wells). Profiles give the activity call. The treatment x
treatment similarity, from which the mechanism groups are cut
(``screenxai.stats``), is the cosine between the treatments' mean changes in
``z_sem`` (their contrast edits) when every treatment has one: it does not
depend on which attributes each treatment kept. Without them it is the
cosine of the attribute profiles (every distinct change weighing alike over
the active treatments: attributes along one axis, kept by several
treatments, merged into one).

The activity call also reads the contrast readouts (``mean_contrast_d{k}``,
each treatment's own discriminant, kept as an attribute or not), against
pseudo-treatments of negative wells on the same readouts: a treatment whose
change no edit makes the classifier follow is still seen to act. Each treatment's
own readout is reported with its real-cell name, its robust z at the top
dose and its dose Spearman, so that a treatment whose change no
counterfactual draws (and that keeps no attribute) is still described.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from screenxai.plate.conditions import Conditions, dose_column, negative_wells, treatment_wells
from screenxai.stats import (StatisticsError, call_activity, dose_response, mechanism_groups,
                             merge_collinear, negative_profiles, profile_similarity, top_dose_wells, treatment_profiles,
                             well_robust_z)

TREATMENT = "treatment"
GROUP_SIMILARITY = 0.8  # treatments whose mean similarity reaches this act alike
LATENT_SHIFT, ATTRIBUTE_PROFILE = "latent_shift", "attribute_profile"  # the bases of a similarity
ACTIVITY_THRESHOLD = 3.0  # robust z (MAD units) a treatment's strongest attribute must reach
DOSE_RESPONSE_COLUMNS = ("ec50", "hill", "max_effect", "r2")  # of a Hill fit (``dose_response``)


@dataclass
class TreatmentTables:
    """What ``treatment_tables`` computes: per-well robust z, attributes, treatments, similarity."""

    well_scores: pd.DataFrame
    attributes: pd.DataFrame
    treatments: pd.DataFrame
    similarity: pd.DataFrame


def value_column(attribute: str) -> str:
    """The per-well mean column of an attribute id."""
    return f"mean_attribute_{attribute}"


def contrast_readouts(columns) -> list[str]:
    """The per-well mean columns of the contrast readouts (``mean_contrast_d{k}``) among ``columns``."""
    return [c for c in columns if c.startswith("mean_contrast_")]


def label_treatments(wells: pd.DataFrame, conditions: Conditions) -> pd.DataFrame:
    """``wells`` with a ``treatment`` column: the negative class, a treatment's name, or NaN for other wells."""
    labels = pd.Series(np.nan, index=wells.index, dtype=object)
    for plate, rows in wells.groupby("plate"):
        layout = rows[["well", conditions.class_column]].drop_duplicates("well")
        for treatment in conditions.treatments:
            chosen = set(treatment_wells(layout, conditions, treatment))
            labels[rows.index[rows["well"].isin(chosen)]] = treatment
        negatives = set(negative_wells(layout, conditions))
        labels[rows.index[rows["well"].isin(negatives)]] = conditions.negative
    return wells.assign(**{TREATMENT: labels})


def treatment_tables(wells: pd.DataFrame, attributes: pd.DataFrame, conditions: Conditions,
                     auc_vs_negative: dict[str, float], top_doses: int = 1,
                     contrasts: pd.DataFrame | None = None,
                     axis_cosines: pd.DataFrame | None = None,
                     shift_cosines: pd.DataFrame | None = None) -> TreatmentTables:
    """The per-treatment tables from ``wells`` (layout columns joined) and the bundle's ``attributes``.

    ``top_doses`` highest dose levels of a treatment make its profile.
    ``contrasts``: the bundle's contrast readouts (``load_contrast_readouts``),
    each treatment's own described in its row. ``axis_cosines``: signed
    cosines of the attributes' axes (``attribute_axis_cosines``); attributes
    along one axis then count as one change in an attribute-profile
    similarity. ``shift_cosines``: cosines between the treatments' mean
    latent changes (``screenxai.explain.contrast.shift_cosines``), the
    similarity when it covers every treatment of the wells.
    """
    wells = label_treatments(wells, conditions)
    dose = dose_column(wells) or "dose_index"
    ids = list(dict.fromkeys(attributes["attribute"]))
    values = [value_column(a) for a in ids]
    readouts = [*values, *contrast_readouts(wells.columns)]
    labelled = wells[wells[TREATMENT].notna()]
    scores = well_robust_z(labelled, TREATMENT, readouts, conditions.negative)
    well_scores = wells[["plate", "well"]].join(scores.rename(columns=lambda c: "robust_z_" + c.removeprefix("mean_")))
    top = top_dose_wells(labelled, TREATMENT, conditions.negative, top_doses, dose_level(labelled))
    named = _attribute_statistics(labelled, scores, attributes, top, conditions.negative, dose)
    profiles = treatment_profiles(labelled, TREATMENT, readouts, conditions.negative, top_doses, dose_level(labelled))
    activity = activity_calls(labelled, profiles, top.groupby(TREATMENT).size(), conditions.negative)
    active = activity.index[activity["active"].astype(bool)]
    similarity = _similarity(profiles[values], active, axis_cosines, shift_cosines)
    own = _readout_statistics(labelled, scores, contrasts, top, conditions.negative, dose)
    treatments = _treatment_table(labelled, activity, similarity, named, own, conditions, auc_vs_negative)
    return TreatmentTables(well_scores, named, treatments, similarity)


def _similarity(profiles: pd.DataFrame, active: pd.Index, axis_cosines: pd.DataFrame | None,
                shift_cosines: pd.DataFrame | None) -> pd.DataFrame:
    """Treatment x treatment similarity with its ``basis``: latent shifts when every treatment has one, else the
    cosine of the attribute ``profiles`` (``mean_attribute_<id>`` columns)."""
    treatments = [str(t) for t in profiles.index]
    if shift_cosines is not None and set(treatments) <= set(shift_cosines.index):
        square = shift_cosines.loc[treatments, treatments].rename_axis(index="treatment", columns="other")
        return square.stack().rename("similarity").reset_index().assign(basis=LATENT_SHIFT)
    changes = profiles.rename(columns=lambda c: c.removeprefix("mean_attribute_"))
    if axis_cosines is not None:
        changes = merge_collinear(changes, axis_cosines)
    similarity = profile_similarity(changes, weighed_over=active if len(active) else None, floor=ACTIVITY_THRESHOLD)
    return similarity.assign(basis=ATTRIBUTE_PROFILE)


def dose_level(wells: pd.DataFrame) -> str:
    """The column whose order ranks dose levels: ``dose_index``, else ``dose``."""
    return "dose_index" if "dose_index" in wells.columns else "dose"


def _attribute_statistics(wells: pd.DataFrame, scores: pd.DataFrame, attributes: pd.DataFrame, top: pd.DataFrame,
                          negative: str, dose: str) -> pd.DataFrame:
    """``attributes`` with each row's dose-response over its treatment's wells and its robust z at ``top`` wells."""
    rows = []
    for row in attributes.itertuples(index=False):
        column = value_column(row.attribute)
        fit = dose_response(wells, column, row.treatment, TREATMENT, negative, dose)
        rows.append({**{k: fit[k] for k in DOSE_RESPONSE_COLUMNS},
                     "dose_spearman": _dose_spearman(wells, column, row.treatment, negative, dose),
                     "robust_z_top_dose": _top_dose_z(scores, top, row.treatment, column)})
    statistics = pd.DataFrame(rows, columns=[*DOSE_RESPONSE_COLUMNS, "dose_spearman", "robust_z_top_dose"],
                              dtype="float64")
    kept = attributes.drop(columns=[c for c in statistics.columns if c in attributes.columns])
    return pd.concat([kept.reset_index(drop=True), statistics], axis=1)


def _top_dose_z(scores: pd.DataFrame, top: pd.DataFrame, treatment: str, column: str) -> float:
    """Mean robust z of a readout over a treatment's top-dose wells (``top_dose_wells``)."""
    return float(scores.loc[top.index[top[TREATMENT] == treatment], column].mean())


def _dose_spearman(wells: pd.DataFrame, column: str, treatment: str, negative: str, dose: str) -> float:
    """Spearman of a readout's well means with dose over a treatment's wells and the negative wells (dose 0)."""
    own = wells[TREATMENT].isin([treatment, negative])
    if own.sum() < 3:
        return float("nan")
    return float(spearmanr(wells.loc[own, dose].fillna(0), wells.loc[own, column]).statistic)


def _readout_statistics(wells: pd.DataFrame, scores: pd.DataFrame, contrasts: pd.DataFrame | None, top: pd.DataFrame,
                        negative: str, dose: str) -> pd.DataFrame:
    """Per treatment (the index), its own contrast readout: id, name, Spearman, robust z at the top dose, dose Spearman.

    The name is left out where the readout does not reach the activity
    threshold at the top dose: the axis then describes no change of the
    treatment's cells.
    """
    columns = ["readout", "readout_name", "readout_spearman", "readout_robust_z_top_dose", "readout_dose_spearman"]
    if contrasts is None:
        return pd.DataFrame(columns=columns)
    rows = {}
    for row in contrasts.itertuples(index=False):
        column = f"mean_{row.readout}"
        if column not in wells.columns:
            continue
        z_top = _top_dose_z(scores, top, row.treatment, column)
        name = row.name if abs(z_top) >= ACTIVITY_THRESHOLD else None  # an axis that does not move says nothing
        rows[row.treatment] = [row.readout, name, row.name_spearman, z_top,
                               _dose_spearman(wells, column, row.treatment, negative, dose)]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def _treatment_table(wells: pd.DataFrame, activity: pd.DataFrame, similarity: pd.DataFrame, named: pd.DataFrame,
                     own: pd.DataFrame, conditions: Conditions, auc_vs_negative: dict[str, float]) -> pd.DataFrame:
    """One row per treatment: activity, group, top attribute and its fit, own readout, AUC against the negative."""
    groups = mechanism_groups(similarity, activity.rename(index=str), GROUP_SIMILARITY)
    best = named[named["rank"] == 1].set_index("treatment")
    table = pd.DataFrame({"treatment": list(conditions.treatments)}).set_index("treatment")
    table["active"] = activity["active"].reindex(table.index).fillna(False).astype(bool)
    table["group"] = groups.reindex(table.index).fillna("inactive").astype(str)
    table["n_wells"] = wells[TREATMENT].value_counts().reindex(table.index).fillna(0).astype("int64")
    table["activity_z"] = activity["activity_z"].reindex(table.index).astype("float64")
    table["null_z"] = activity["null_z"].reindex(table.index).astype("float64")
    table["activity_readout"] = activity["top_attribute"].reindex(table.index).str.removeprefix("mean_").astype(object)
    table["top_attribute"] = best["attribute"].reindex(table.index).astype(object)
    table["top_attribute_name"] = best["name"].reindex(table.index).astype(object)
    for source, target in (("ec50", "ec50"), ("hill", "hill"), ("max_effect", "max_effect"), ("r2", "fit_r2"),
                           ("dose_spearman", "dose_spearman"), ("robust_z_top_dose", "robust_z_top_dose")):
        table[target] = best[source].reindex(table.index).astype("float64")
    silent = table["robust_z_top_dose"].abs() < ACTIVITY_THRESHOLD  # an axis that does not move says nothing
    table.loc[silent, "top_attribute_name"] = None
    for column in ("readout", "readout_name"):
        table[column] = own[column].reindex(table.index).astype(object)
    for column in ("readout_spearman", "readout_robust_z_top_dose", "readout_dose_spearman"):
        table[column] = own[column].reindex(table.index).astype("float64")
    table["auc_vs_negative"] = pd.Series(auc_vs_negative, dtype="float64").reindex(table.index)
    table = table.reset_index().sort_values(["active", "activity_z"], ascending=False, kind="stable")
    return table.reset_index(drop=True)


def activity_calls(wells: pd.DataFrame, profiles: pd.DataFrame, sizes: pd.Series, negative: str) -> pd.DataFrame:
    """Each treatment's activity call: ``call_activity`` of its top-dose ``profiles`` (``sizes`` wells each)
    against pseudo-treatments of the ``negative`` wells of ``wells``; the threshold alone when too few negatives."""
    try:
        null = negative_profiles(wells, TREATMENT, list(profiles.columns), negative)
        return call_activity(profiles, null, sizes, ACTIVITY_THRESHOLD)
    except StatisticsError:
        strength = profiles.abs().fillna(0)
        table = pd.DataFrame({"n_wells": sizes.reindex(profiles.index), "activity_z": strength.max(axis=1),
                              "null_z": np.nan, "top_attribute": strength.idxmax(axis=1)}, index=profiles.index)
        table["active"] = table["activity_z"] >= ACTIVITY_THRESHOLD
        return table
