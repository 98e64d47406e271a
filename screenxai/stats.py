"""Screen statistics over tables: per-well means, robust z, Z', SSMD, dose-response fits, treatment profiles.

The same functions serve learned attributes and hand-built readouts (e.g. a
channel's nucleus/ring ratio), so they can be compared side by side.
Control statistics (Z', SSMD) are computed on per-well means, as a
screening lab computes them from its control wells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit
from scipy.stats import spearmanr

WELL_KEYS = ["plate", "well"]
MAD_TO_SD = 1.4826


def well_means(cells: pd.DataFrame, columns: Sequence[str], extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (plate, well): ``n_cells``, ``extra`` columns (first value) and ``{col}_mean``/``{col}_sd``."""
    missing = [c for c in [*WELL_KEYS, *columns, *extra] if c not in cells.columns]
    if missing:
        raise ValueError(f"cell table lacks the columns {missing}")
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
    failed = dict.fromkeys(["bottom", "top", "ec50", "hill", "r2"], float("nan"))
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
        raise ValueError(f"need at least 2 {negative!r} and 2 {positive!r} wells in {control_column!r}, "
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
