"""How well a per-well readout can order dose wells at all: sampling intervals and a plateau ceiling.

Two figures put a readout's Spearman with ``dose_index`` in proportion:

- ``sampling_intervals``: the readouts' Spearman recomputed on wells whose
  cells are resampled with replacement (a bootstrap within each well), so
  two readouts whose intervals overlap are not told apart by the data;
- ``plateau_ceiling``: the Spearman that a readout ordering every
  distinguishable dose group perfectly, and the wells inside a group at
  random, reaches on average. Consecutive dose levels form one group unless
  every well of the higher level reads above every well of the lower one
  on a reference readout (no overlap), so saturated doses and doses below
  any effect each count as one group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

Aggregate = str  # "mean" or "median"


def _well_values(cells: pd.DataFrame, column: str) -> list[np.ndarray]:
    """Each well's non-missing values of ``column``, wells in ``cells``' sorted order."""
    return [group[column].dropna().to_numpy() for _, group in cells.groupby("well", sort=True)]


def sampling_intervals(cells: pd.DataFrame, dose: pd.Series, readouts: Mapping[str, Aggregate],
                       draws: int = 500, seed: int = 0, percentiles: Sequence[float] = (5, 50, 95)) -> dict:
    """Bootstrap percentiles of each readout's dose Spearman, and of each readout's difference to the first.

    ``cells`` has a ``well`` column and one column per readout; ``dose``
    maps well -> dose index (only the wells in it are used); ``readouts``
    maps column -> how its cells make a well value ("mean" or "median").
    """
    cells = cells[cells["well"].isin(dose.index)]
    wells = sorted(cells["well"].unique())
    levels = dose.loc[wells].to_numpy(float)
    values = {column: _well_values(cells, column) for column in readouts}
    rng = np.random.default_rng(seed)
    rhos = {column: np.empty(draws) for column in readouts}
    for draw in range(draws):
        for column, aggregate in readouts.items():
            reduce = np.mean if aggregate == "mean" else np.median
            means = [reduce(v[rng.integers(0, len(v), len(v))]) for v in values[column]]
            rhos[column][draw] = spearmanr(means, levels)[0]
    first = next(iter(readouts))
    out = {column: dict(zip(map(str, percentiles), np.percentile(r, percentiles).tolist()))
           for column, r in rhos.items()}
    for column in list(readouts)[1:]:
        difference = rhos[first] - rhos[column]
        spread = dict(zip(map(str, percentiles), np.percentile(difference, percentiles).tolist()))
        out[f"{first} - {column}"] = {**spread, "fraction_at_least_as_good": float((difference >= 0).mean())}
    return out


def dose_groups(wells: pd.DataFrame, reference: str, dose_column: str = "dose_index") -> dict[float, int]:
    """Dose level -> group: consecutive levels share a group unless the reference's wells do not overlap."""
    levels = sorted(wells[dose_column].unique())
    groups, group = {levels[0]: 0}, 0
    for low, high in zip(levels, levels[1:]):
        below = wells.loc[wells[dose_column] == low, reference]
        above = wells.loc[wells[dose_column] == high, reference]
        group += int(above.min() > below.max())
        groups[high] = group
    return groups


def plateau_ceiling(wells: pd.DataFrame, reference: str, dose_column: str = "dose_index", draws: int = 2000,
                    seed: int = 0) -> dict:
    """Mean and 5-95th percentiles of the Spearman of a perfect group-ordered readout, random within groups."""
    groups = dose_groups(wells, reference, dose_column)
    dose = wells[dose_column].to_numpy(float)
    rank = np.array([groups[d] for d in wells[dose_column]], float)
    rng = np.random.default_rng(seed)
    rhos = np.array([spearmanr(rank + rng.uniform(0, 0.5, len(rank)), dose)[0] for _ in range(draws)])
    members: dict[int, list[float]] = {}
    for level, group in groups.items():
        members.setdefault(group, []).append(float(level))
    return {"groups": [members[g] for g in sorted(members)], "mean": float(rhos.mean()),
            "5": float(np.percentile(rhos, 5)), "95": float(np.percentile(rhos, 95))}
