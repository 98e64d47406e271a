"""Dose-response points and fits of one treatment's wells, from the per-well table.

The four-parameter fit is the project's own (imported here only), so the
report's curves are fitted exactly as the run's tables are.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from screenxai.stats import fit_dose_response, four_parameter

MIN_DOSES = 4  # distinct doses below which no curve is fitted (as fit_dose_response)


def dose_points(wells: pd.DataFrame, mean_column: str, sd_column: str | None) -> pd.DataFrame:
    """One row per well with a positive dose: ``well``, ``dose``, ``mean``, ``sd`` (0 when unknown)."""
    rows = wells[np.isfinite(wells["dose"].astype(float)) & (wells["dose"].astype(float) > 0)]
    sd = rows[sd_column].astype(float) if sd_column else pd.Series(0.0, index=rows.index)
    return pd.DataFrame({"well": rows["well"].astype(str), "dose": rows["dose"].astype(float),
                         "mean": rows[mean_column].astype(float), "sd": sd.fillna(0.0)}).sort_values("dose")


def fitted_curve(points: pd.DataFrame) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray] | None]:
    """The four-parameter fit of the well means and the curve over the doses' range (None when it fails)."""
    fit = fit_dose_response(points["dose"].to_numpy(), points["mean"].to_numpy())
    if not np.isfinite(fit["ec50"]):
        return fit, None
    grid = np.geomspace(points["dose"].min(), points["dose"].max(), 100)
    return fit, (grid, four_parameter(grid, fit["bottom"], fit["top"], np.log(fit["ec50"]), fit["hill"]))
