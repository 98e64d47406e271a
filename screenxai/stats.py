"""Screen statistics over tables: per-well means, robust z, Z', SSMD, dose-response fits, treatment profiles.

The same functions serve learned attributes and hand-built readouts (e.g. a
channel's nucleus/ring ratio), so they can be compared side by side.
Control statistics (Z', SSMD) are computed on per-well means, as a
screening lab computes them from its control wells. A screen of many
treatments without a positive control gets per-treatment statistics: a
dose-response fit per treatment and attribute, a profile of robust z-scores
at the top doses, their cosine similarity, an activity call against
pseudo-treatments made of negative wells, and mechanism groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from math import comb

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import curve_fit
from scipy.spatial.distance import squareform
from scipy.stats import spearmanr
from sklearn.metrics.pairwise import cosine_similarity

from screenxai.errors import StatisticsError

WELL_KEYS = ["plate", "well"]
MAD_TO_SD = 1.4826
FIT_KEYS = ["bottom", "top", "ec50", "hill", "r2"]
MIN_DOSE_LEVELS = 4  # a four-parameter fit needs at least four dose levels of the treatment
MIN_NEGATIVE_WELLS = 2  # the fewest that have a spread (a plate with two control wells per row pair)
DISTINCT_COSINE = 0.8  # attributes whose axes' |cosine| reaches this are one change (within and across treatments)


def well_means(cells: pd.DataFrame, columns: Sequence[str], extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (plate, well): ``n_cells``, ``extra`` columns (first value) and ``{col}_mean``/``{col}_sd``."""
    missing = [c for c in [*WELL_KEYS, *columns, *extra] if c not in cells.columns]
    if missing:
        raise StatisticsError(f"cell table lacks the columns {missing}")
    grouped = cells.groupby(WELL_KEYS, observed=True, sort=True)
    table = grouped.size().rename("n_cells").to_frame()
    for column in extra:
        table[column] = grouped[column].first()
    for column in columns:
        table[f"{column}_mean"] = grouped[column].mean()
        table[f"{column}_sd"] = grouped[column].std()
    return table.reset_index()


def robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(values - median(reference)) / (1.4826 * MAD(reference))``; NaN when the MAD is 0."""
    median = np.nanmedian(reference)
    mad = MAD_TO_SD * np.nanmedian(np.abs(reference - median))
    return (values - median) / mad if mad > 0 else np.full(np.shape(values), np.nan)


def z_prime(negative: np.ndarray, positive: np.ndarray) -> float:
    """Z' factor ``1 - 3 (sd_p + sd_n) / |mean_p - mean_n|`` between two sets of control values."""
    spread = abs(np.mean(positive) - np.mean(negative))
    return float(1 - 3 * (np.std(positive, ddof=1) + np.std(negative, ddof=1)) / spread) if spread > 0 else -np.inf


def ssmd(negative: np.ndarray, positive: np.ndarray) -> float:
    """Strictly standardised mean difference ``(mean_p - mean_n) / sqrt(var_p + var_n)``."""
    return float((np.mean(positive) - np.mean(negative)) / np.sqrt(np.var(positive, ddof=1) + np.var(negative, ddof=1)))


def four_parameter(dose: np.ndarray, bottom: float, top: float, log_ec50: float, hill: float) -> np.ndarray:
    """The four-parameter logistic ``bottom + (top - bottom) / (1 + (EC50 / dose)^hill)``, finite at dose 0."""
    ratio = np.power(np.maximum(np.asarray(dose, np.float64), 0) / np.exp(log_ec50), hill)
    return bottom + (top - bottom) * ratio / (1 + ratio)


def fit_dose_response(dose: np.ndarray, response: np.ndarray) -> dict[str, float]:
    """Fit ``four_parameter``: bottom, top, EC50, Hill slope, R^2; NaN where the fit fails."""
    dose, response = np.asarray(dose, np.float64), np.asarray(response, np.float64)
    keep = np.isfinite(dose) & np.isfinite(response)
    dose, response = dose[keep], response[keep]
    failed = dict.fromkeys(FIT_KEYS, float("nan"))
    positive = dose[dose > 0]
    if len(np.unique(dose)) < 4 or len(positive) == 0:
        return failed
    start = [response[dose == dose.min()].mean(), response[dose == dose.max()].mean(), np.log(np.median(positive)), 1.0]
    try:
        params, _ = curve_fit(four_parameter, dose, response, p0=start, maxfev=20000,
                              bounds=([-np.inf, -np.inf, np.log(positive.min()) - 5, 0.05],
                                      [np.inf, np.inf, np.log(positive.max()) + 5, 20.0]))
    except (RuntimeError, ValueError):
        return failed
    residual = response - four_parameter(dose, *params)
    total = ((response - response.mean()) ** 2).sum()
    return {"bottom": float(params[0]), "top": float(params[1]), "ec50": float(np.exp(params[2])),
            "hill": float(params[3]), "r2": float(1 - (residual**2).sum() / total) if total > 0 else float("nan")}


def well_statistics(cells: pd.DataFrame, columns: Sequence[str], dose_column: str = "dose",
                    control_column: str = "control", negative: str = "negative",
                    positive: str = "positive") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-well table and per-readout summary for each of ``columns`` of the cell table.

    The well table has ``n_cells``, the dose and control columns, and per
    readout ``{col}_mean``, ``{col}_sd`` and ``{col}_robust_z``; the summary
    is that of :func:`readout_statistics`.
    """
    wells = well_means(cells, columns, [dose_column, control_column])
    return readout_statistics(wells, columns, dose_column, control_column, negative, positive)


def readout_statistics(wells: pd.DataFrame, columns: Sequence[str], dose_column: str = "dose",
                       control_column: str = "control", negative: str = "negative",
                       positive: str = "positive") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Robust z per well and one summary row per readout, from per-well ``{col}_mean`` columns.

    Takes well means already computed (by :func:`well_means`, or by a
    distributed aggregation over a run's cell files) so a screen's cells
    never need to be in one process. Returns ``wells`` with
    ``{col}_robust_z`` (against the negative-control wells) and the summary:
    ``z_prime`` and ``ssmd`` between the control wells' means,
    ``dose_spearman`` of the means of the dose wells (neither control)
    against dose, and the four-parameter fit over the dose wells
    (``bottom``, ``top``, ``ec50``, ``hill``, ``r2``).
    """
    wells = wells.copy()
    is_negative = wells[control_column].eq(negative).to_numpy()
    is_positive = wells[control_column].eq(positive).to_numpy()
    if is_negative.sum() < 2 or is_positive.sum() < 2:
        raise StatisticsError(f"need at least 2 {negative!r} and 2 {positive!r} wells in {control_column!r}, "
                         f"found {int(is_negative.sum())} and {int(is_positive.sum())}")
    dose_wells = ~is_negative & ~is_positive
    rows = []
    for column in columns:
        means = wells[f"{column}_mean"].to_numpy(np.float64)
        wells[f"{column}_robust_z"] = robust_z(means, means[is_negative])
        dose = wells.loc[dose_wells, dose_column].to_numpy(np.float64)
        rho = spearmanr(dose, means[dose_wells]).statistic if dose_wells.sum() >= 3 else np.nan
        rows.append({"readout": column, "z_prime": z_prime(means[is_negative], means[is_positive]),
                     "ssmd": ssmd(means[is_negative], means[is_positive]), "dose_spearman": float(rho),
                     "n_dose_wells": int(dose_wells.sum()), **fit_dose_response(dose, means[dose_wells])})
    return wells, pd.DataFrame(rows)


def _require_columns(wells: pd.DataFrame, columns: Sequence[str]) -> None:
    """Raise naming the columns of ``columns`` that ``wells`` lacks."""
    missing = [c for c in columns if c not in wells.columns]
    if missing:
        raise StatisticsError(f"well table lacks the columns {missing}")


def _negative_wells(wells: pd.DataFrame, treatment_column: str, negative: str,
                    minimum: int = MIN_NEGATIVE_WELLS) -> np.ndarray:
    """Boolean mask of the negative wells; raise naming the count when there are fewer than ``minimum``."""
    mask = wells[treatment_column].eq(negative).to_numpy()
    if mask.sum() < minimum:
        raise StatisticsError(f"need at least {minimum} negative wells ({treatment_column} == {negative!r}), "
                              f"found {int(mask.sum())}")
    return mask


def dose_response(wells: pd.DataFrame, value: str, treatment: str, treatment_column: str = "treatment",
                  negative: str = "negative", dose: str = "dose") -> dict[str, float]:
    """Four-parameter logistic fit of one treatment's per-well ``value`` against dose.

    The treatment's wells enter at their ``dose`` (a concentration, > 0) and
    the negative wells at dose 0, which pins the curve's bottom. Returns
    ``bottom``, ``top``, ``ec50``, ``hill``, ``r2`` (as :func:`fit_dose_response`),
    ``max_effect`` = top - bottom and ``n_doses``, the treatment's number of
    positive dose levels; the fit values are NaN when it has fewer than
    ``MIN_DOSE_LEVELS`` of them or the fit fails.
    """
    _require_columns(wells, [treatment_column, value, dose])
    is_negative = _negative_wells(wells, treatment_column, negative)
    treated = wells[treatment_column].eq(treatment).to_numpy()
    if not treated.any():
        raise StatisticsError(f"no wells of treatment {treatment!r} in column {treatment_column!r}")
    doses = wells.loc[treated, dose].to_numpy(np.float64)
    n_doses = len(np.unique(doses[np.isfinite(doses) & (doses > 0)]))
    fit = dict.fromkeys(FIT_KEYS, float("nan"))
    if n_doses >= MIN_DOSE_LEVELS:
        fit = fit_dose_response(np.concatenate([np.zeros(is_negative.sum()), doses]),
                                np.concatenate([wells.loc[is_negative, value].to_numpy(np.float64),
                                                wells.loc[treated, value].to_numpy(np.float64)]))
    return {**fit, "max_effect": fit["top"] - fit["bottom"], "n_doses": n_doses}


def dose_responses(wells: pd.DataFrame, treatment_column: str, attribute_columns: Sequence[str], negative: str,
                   dose: str = "dose") -> pd.DataFrame:
    """:func:`dose_response` of every treatment and attribute: one row each, ``treatment`` and ``attribute`` first."""
    _require_columns(wells, [treatment_column, *attribute_columns, dose])
    treatments = sorted(wells.loc[~wells[treatment_column].eq(negative), treatment_column].unique())
    rows = [{"treatment": treatment, "attribute": column,
             **dose_response(wells, column, treatment, treatment_column, negative, dose)}
            for treatment in treatments for column in attribute_columns]
    columns = ["treatment", "attribute", *FIT_KEYS, "max_effect", "n_doses"]
    return pd.DataFrame(rows, columns=columns)


def well_robust_z(wells: pd.DataFrame, treatment_column: str, attribute_columns: Sequence[str],
                  negative: str) -> pd.DataFrame:
    """Each attribute's per-well robust z against the negative wells (:func:`robust_z`), indexed like ``wells``."""
    _require_columns(wells, [treatment_column, *attribute_columns])
    is_negative = _negative_wells(wells, treatment_column, negative)
    scores = {}
    for column in attribute_columns:
        values = wells[column].to_numpy(np.float64)
        scores[column] = robust_z(values, values[is_negative])
    return pd.DataFrame(scores, index=wells.index)


def top_dose_wells(wells: pd.DataFrame, treatment_column: str, negative: str, top_doses: int = 1,
                   dose: str = "dose_index") -> pd.DataFrame:
    """The rows of ``wells`` at each treatment's ``top_doses`` highest dose levels (negative wells left out)."""
    _require_columns(wells, [treatment_column, dose])
    if top_doses < 1:
        raise StatisticsError(f"top_doses must be at least 1, got {top_doses}")
    treated = wells[~wells[treatment_column].eq(negative)]
    level = treated.groupby(treatment_column, observed=True)[dose].rank(method="dense", ascending=False)
    return treated[level <= top_doses]


def treatment_profiles(wells: pd.DataFrame, treatment_column: str, attribute_columns: Sequence[str], negative: str,
                       top_doses: int = 1, dose: str = "dose_index") -> pd.DataFrame:
    """Per treatment, the mean robust z of each attribute over its top-dose wells.

    Robust z is per well, against the negative wells (:func:`well_robust_z`);
    the top-dose wells are those of :func:`top_dose_wells`, whose counts per
    treatment are the group sizes :func:`call_activity` needs. Returns one
    row per treatment (index ``treatment``, sorted), one column per attribute.
    """
    scores = well_robust_z(wells, treatment_column, attribute_columns, negative)
    top = top_dose_wells(wells, treatment_column, negative, top_doses, dose)
    profiles = scores.loc[top.index].groupby(top[treatment_column], observed=True, sort=True).mean()
    return profiles.rename_axis("treatment")[list(attribute_columns)]


def negative_profiles(wells: pd.DataFrame, treatment_column: str, attribute_columns: Sequence[str],
                      negative: str) -> pd.DataFrame:
    """Leave-one-out robust z of each negative well: every well scored against the other negative wells.

    These are the per-well scores pseudo-treatments are made of in
    :func:`call_activity`; leaving the well out keeps it from being scored
    against itself, which would shrink the null. Indexed like ``wells``.
    """
    _require_columns(wells, [treatment_column, *attribute_columns])
    is_negative = _negative_wells(wells, treatment_column, negative, MIN_NEGATIVE_WELLS + 1)
    values = wells.loc[is_negative, list(attribute_columns)].to_numpy(np.float64)
    others = ~np.eye(len(values), dtype=bool)
    scores = np.stack([[robust_z(values[i, j], values[others[i], j]) for j in range(values.shape[1])]
                       for i in range(len(values))])
    return pd.DataFrame(scores, index=wells.index[is_negative], columns=list(attribute_columns))


def merge_collinear(profiles: pd.DataFrame, cosines: pd.DataFrame,
                    max_cosine: float = DISTINCT_COSINE) -> pd.DataFrame:
    """``profiles`` with attributes along one axis merged into one column: each change counted once.

    ``cosines``: signed cosine between the attributes' signed axes (index and
    columns the attribute ids of ``profiles``' columns). Attributes are
    clustered by average linkage on 1 - |cosine|, cut where the mean |cosine|
    within a cluster falls below ``max_cosine``, the threshold under which
    two attributes count as distinct changes. A cluster's column is the mean
    of its members' scores, each signed as its axis points relative to the
    cluster's first member, and is named by its ids joined with ``+``.
    Several treatments keep the same change under different ids (each its
    own contrast direction); unmerged, a change kept three times weighs
    three times in every similarity.
    """
    ids = list(profiles.columns)
    missing = [a for a in ids if a not in cosines.index or a not in cosines.columns]
    if missing:
        raise StatisticsError(f"no axis cosines for the attributes {missing}")
    if len(ids) < 2:
        return profiles.copy()
    signed = cosines.loc[ids, ids].to_numpy(np.float64)
    clusters = _average_linkage(np.abs(signed), 1 - max_cosine)
    merged = {}
    for cluster in dict.fromkeys(clusters):
        members = [i for i, c in enumerate(clusters) if c == cluster]
        signs = np.where(signed[members[0], members] < 0, -1.0, 1.0)
        merged["+".join(ids[i] for i in members)] = (profiles.iloc[:, members] * signs).mean(axis=1)
    return pd.DataFrame(merged, index=profiles.index)


def profile_similarity(profiles: pd.DataFrame, weighed_over: Sequence[str] | None = None,
                       floor: float = 0.0) -> pd.DataFrame:
    """Cosine similarity of every pair of treatment profiles, each attribute weighing alike, as a long table.

    Before the cosine, each attribute (column) is divided by its L2 norm over
    the treatments ``weighed_over`` (default: all rows), or by ``floor`` when
    that norm is smaller. Robust z-scores of different attributes differ in
    scale by orders of magnitude (a sharp discriminant of one change reaches
    100, another change's attribute 5), and unscaled, the sharpest attribute
    alone decides every similarity; the floor keeps an attribute that no
    such treatment moves beyond it from having its noise inflated to full
    weight. Columns ``treatment``, ``other`` and ``similarity``. NaN scores
    (an attribute without spread in the negative wells) count as 0; an
    all-zero profile, or one of no attribute, has similarity 0 to
    everything, itself included.
    """
    values = profiles.fillna(0)
    rows = values if weighed_over is None else values.loc[list(weighed_over)]
    scale = np.maximum(np.linalg.norm(rows.to_numpy(np.float64), axis=0), floor)
    scaled = values.to_numpy(np.float64) / np.where(scale > 0, scale, 1.0)
    matrix = cosine_similarity(scaled) if values.shape[1] else np.zeros((len(values), len(values)))
    square = pd.DataFrame(matrix, index=profiles.index.rename("treatment"), columns=profiles.index.rename("other"))
    return square.stack().rename("similarity").reset_index()


def _pseudo_groups(n_wells: int, size: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices (groups x size) of pseudo-treatments: all groups if at most ``draws``, else ``draws`` random."""
    if comb(n_wells, size) <= draws:
        return np.array(list(combinations(range(n_wells), size)))
    return rng.permuted(np.tile(np.arange(n_wells), (draws, 1)), axis=1)[:, :size]


def null_activity(negative_scores: pd.DataFrame, size: int, draws: int = 1000, seed: int = 0) -> float:
    """Largest activity (max |mean robust z| over attributes) of pseudo-treatments of ``size`` negative wells."""
    scores = negative_scores.fillna(0).to_numpy(np.float64)
    if size >= len(scores):
        raise StatisticsError(f"a pseudo-treatment of {size} wells needs more than {size} negative wells, "
                              f"found {len(scores)}")
    groups = _pseudo_groups(len(scores), size, draws, np.random.default_rng(seed))
    return float(np.abs(scores[groups].mean(axis=1)).max())


def call_activity(profiles: pd.DataFrame, negative_scores: pd.DataFrame, sizes: pd.Series | int,
                  threshold: float = 3.0, draws: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Active or inactive per treatment, from its profile's strongest attribute.

    ``activity_z`` is the largest |robust z| of a profile over attributes. A
    treatment is active when it is at least ``threshold`` (3 MADs, the usual
    hit threshold) and exceeds ``null_z``, the largest activity of
    pseudo-treatments of negative wells (:func:`null_activity` over
    ``negative_scores``, from :func:`negative_profiles`) of the same size as
    the treatment's top-dose group (``sizes``: wells per treatment, or one
    count for all). A treatment that moves nothing beyond the negative
    wells' spread is thus inactive even when the threshold is low.
    Returns, indexed by treatment: ``n_wells``, ``activity_z``, ``null_z``,
    ``top_attribute`` (the attribute of ``activity_z``) and ``active``.
    """
    if list(negative_scores.columns) != list(profiles.columns):
        raise StatisticsError(f"negative well scores have the columns {list(negative_scores.columns)}, "
                              f"the profiles {list(profiles.columns)}")
    sizes = pd.Series(sizes, index=profiles.index) if np.isscalar(sizes) else sizes.reindex(profiles.index)
    if sizes.isna().any():
        raise StatisticsError(f"no well count for the treatments {list(sizes.index[sizes.isna()])}")
    sizes = sizes.astype("int64")
    null = {size: null_activity(negative_scores, size, draws, seed) for size in sorted(set(sizes))}
    strength = profiles.abs().fillna(0)
    table = pd.DataFrame({"n_wells": sizes, "activity_z": strength.max(axis=1),
                          "null_z": sizes.map(null).astype("float64"), "top_attribute": strength.idxmax(axis=1)},
                         index=profiles.index)
    table["active"] = (table["activity_z"] >= threshold) & (table["activity_z"] > table["null_z"])
    return table


def mechanism_groups(similarity: pd.DataFrame, activity: pd.DataFrame, cut: float = 0.8) -> pd.Series:
    """Mechanism group of each treatment: clusters of active treatments by their profiles' similarity.

    Active treatments (``activity["active"]``) are clustered by average
    linkage (scipy) on the cosine distance 1 - ``similarity``, and the tree
    is cut at distance 1 - ``cut``: two clusters are joined while the mean
    similarity between their members is at least ``cut``. Groups are named
    ``G1``, ``G2``, ... by their strongest member's ``activity_z``, highest
    first; inactive treatments are ``inactive``. Returns a string Series
    ``mechanism_group`` indexed like ``activity``.
    """
    labels = pd.Series("inactive", index=activity.index, name="mechanism_group", dtype=object)
    active = activity.index[activity["active"].astype(bool).to_numpy()]
    if len(active) == 0:
        return labels
    square = similarity.pivot(index="treatment", columns="other", values="similarity")
    missing = [t for t in active if t not in square.index or t not in square.columns]
    if missing:
        raise StatisticsError(f"the similarity table lacks the treatments {missing}")
    clusters = np.ones(1, int) if len(active) == 1 else _average_linkage(square.loc[active, active].to_numpy(), 1 - cut)
    strongest = pd.Series(activity.loc[active, "activity_z"].to_numpy(), index=clusters).groupby(level=0).max()
    order = strongest.sort_values(ascending=False, kind="stable").index
    names = {cluster: f"G{rank}" for rank, cluster in enumerate(order, start=1)}
    labels[active] = [names[cluster] for cluster in clusters]
    return labels


def _average_linkage(similarity: np.ndarray, height: float) -> np.ndarray:
    """Flat cluster numbers of an average-linkage tree on 1 - ``similarity``, cut at ``height``."""
    distance = np.clip(1 - (similarity + similarity.T) / 2, 0, 2)
    np.fill_diagonal(distance, 0)
    return fcluster(linkage(squareform(distance), method="average"), t=height, criterion="distance")
