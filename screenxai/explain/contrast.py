"""Contrast directions: for each treatment, its mean change in ``z_sem`` and the discriminant that detects it.

Directions learned contrastively make K distinct, consistent edits, but
nothing makes one of them the change a given treatment makes: on a screen
of several mechanisms a treatment's effect is usually spread over several
of them, and a cell's position along any one axis follows the dose only in
part. A contrast direction is the treatment's own change, in two parts:

- the edit moves a latent along the treatment's mean shift, from the
  negative control's training cells to the treatment's (as DiffAE moves
  ``z_sem`` along an attribute), so its counterfactual adds the treatment's
  average effect;
- the score is the gradient, in ``z_sem``, of a shrinkage linear
  discriminant (scikit-learn, Ledoit-Wolf shrinkage) between the same
  cells, fitted in the whitened principal coordinates: under a shift of
  the mean it is the statistic that detects the shift best, where a
  projection on the shift itself is dominated by the latents' largest
  spreads.

Contrast directions are candidates like any other: the ranking keeps one
only where its edit moves the classifier towards a treatment.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from torch.nn import functional as F

from screenxai.explain.directions import Directions

MIN_CELLS = 10  # cells each side needs for a discriminant with a spread


def contrast_vectors(directions: Directions, z: torch.Tensor, labels: np.ndarray,
                     classes: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Edits and scoring axes (each (M, z_dim), unit vectors), one per class of ``classes`` with enough cells.

    ``labels`` holds each latent's class (0: the negative control). Both
    vectors of a class point from the negative control towards it; a class
    with fewer than ``MIN_CELLS`` cells (or a negative control with fewer)
    gets none. Also returns the classes that got one.
    """
    if len(labels) != len(z):
        raise ValueError(f"{len(labels)} labels for {len(z)} latents")
    z = z.to(directions.mean.device).float()
    u = directions.whiten(z).cpu().numpy().astype(np.float64)
    negative = labels == 0
    edits, axes, kept = [], [], []
    for target in classes:
        treated = labels == target
        if target == 0 or treated.sum() < MIN_CELLS or negative.sum() < MIN_CELLS:
            continue
        rows = negative | treated
        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(u[rows], treated[rows])
        weight = torch.as_tensor(lda.coef_[0], dtype=directions.sd.dtype, device=directions.sd.device)
        axes.append(F.normalize((weight / directions.sd) @ directions.components, dim=0))
        device = z.device
        shift = z[torch.as_tensor(treated, device=device)].mean(0) - z[torch.as_tensor(negative, device=device)].mean(0)
        edits.append(F.normalize((shift @ directions.components.T) @ directions.components, dim=0))
        kept.append(int(target))
    if not kept:
        empty = torch.zeros(0, directions.z_dim)
        return empty, empty, kept
    return torch.stack(edits).cpu(), torch.stack(axes).cpu(), kept


def with_contrast_directions(directions: Directions, z: torch.Tensor, labels: np.ndarray,
                             classes: list[int]) -> tuple[Directions, list[int]]:
    """``directions`` with a contrast direction per class appended and all calibrated on ``z``; and those classes."""
    edits, axes, kept = contrast_vectors(directions, z, labels, classes)
    extended = directions.with_linear(edits, axes).eval().requires_grad_(False)
    return extended.calibrate(z.to(extended.mean.device).float()), kept


def shift_cosines(directions: Directions, treatments: Sequence[str]) -> pd.DataFrame:
    """Cosine between the treatments' mean changes in ``z_sem`` (their contrast edits): treatment x treatment.

    ``treatments`` names the contrast directions in order (the last
    ``n_linear`` directions). Two treatments that do the same thing at
    different potencies shift the latents the same way (cosine near 1); one
    that adds a second change to it shifts them partly elsewhere. Directions
    saved without their treatments' names give an empty table.
    """
    if len(treatments) == 0:
        return pd.DataFrame(dtype="float64")
    if len(treatments) != directions.n_linear:
        raise ValueError(f"{len(treatments)} treatments for {directions.n_linear} contrast directions")
    edits = F.normalize(directions.linear.detach().cpu().double(), dim=1)
    names = [str(t) for t in treatments]
    return pd.DataFrame((edits @ edits.T).numpy(), index=names, columns=names)
