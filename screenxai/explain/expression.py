"""Which attributes a treatment's own cells show: their shift from the negative control along each direction.

The ranking keeps the edits that move the classifier most towards a
treatment. An edit can do that without being what the treatment does to
its cells: the classifier follows a change that the treatment's real cells
barely carry (a decodable shortcut), while their real shift lies elsewhere.
An attribute of a treatment must be both: an edit that moves the
classifier towards it, along a change its cells show. Here the second is
measured on the real training cells, with the scoring axes the per-cell
attribute scores use.
"""

from __future__ import annotations

import numpy as np
import torch

from screenxai.explain.directions import Directions

MIN_EXPRESSION = 0.5  # a candidate's shift, as a fraction of the treatment's largest shift along any direction


def treatment_shifts(directions: Directions, z: torch.Tensor, labels: np.ndarray, target: int) -> np.ndarray:
    """How far the cells of class ``target`` lie from class 0's along each direction and sign: (K, 2).

    The shift is the difference of the mean scores (``Directions.project``)
    in SDs of the negative control's scores; column 0 reads the direction
    as it is (sign +1), column 1 reversed (sign -1), as ``ranking.SIGNS``.
    NaN where either class has no cell.
    """
    if len(labels) != len(z):
        raise ValueError(f"{len(labels)} labels for {len(z)} latents")
    with torch.no_grad():
        scores = directions.project(z.to(directions.mean.device).float()).cpu().numpy().astype(np.float64)
    negative, treated = scores[labels == 0], scores[labels == target]
    if len(negative) == 0 or len(treated) == 0:
        return np.full((directions.n_directions, 2), np.nan)
    spread = np.maximum(negative.std(0), 1e-12)
    shift = (treated.mean(0) - negative.mean(0)) / spread
    return np.stack([shift, -shift], axis=1)


def expressed(shifts: np.ndarray, min_expression: float = MIN_EXPRESSION) -> np.ndarray:
    """The (direction, sign) pairs along which the treatment's cells shift by at least ``min_expression`` of their
    largest shift: a (K, 2) mask. All True when no shift is known (NaN) or none is positive."""
    if not 0 <= min_expression <= 1:
        raise ValueError(f"min_expression must lie in [0, 1], got {min_expression}")
    largest = np.nanmax(shifts) if np.isfinite(shifts).any() else np.nan
    if not np.isfinite(largest) or largest <= 0:
        return np.ones(shifts.shape, bool)
    return np.nan_to_num(shifts, nan=-np.inf) >= min_expression * largest
