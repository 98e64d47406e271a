"""Contrast directions: for each treatment, the linear discriminant of its cells against the negative control in ``z_sem``.

Directions learned contrastively make K distinct, consistent edits, but
nothing makes one of them the change a given treatment makes: on a screen
of several mechanisms a treatment's effect is usually spread over several
of them, and a cell's position along any one axis follows the dose only in
part. DiffAE edits an attribute by moving ``z_sem`` along the weight of a
linear classifier of that attribute; a contrast direction is that move for
a treatment: the gradient, in ``z_sem``, of a shrinkage linear discriminant
(scikit-learn, Ledoit-Wolf shrinkage) between the treatment's training cells
and the negative control's, fitted in the whitened principal coordinates
the learned directions use. A cell's projection on it is the discriminant's
score, so its well means order the wells by how far they moved along the
treatment's own change. Contrast directions are candidates like any other:
the ranking keeps them only where they move the classifier.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from screenxai.explain.directions import Directions

MIN_CELLS = 10  # cells each side needs for a discriminant with a spread


def contrast_vectors(directions: Directions, z: torch.Tensor, labels: np.ndarray,
                     classes: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Unit vectors of ``z_sem`` (M, z_dim), one per class of ``classes`` with enough cells, and those classes.

    ``labels`` holds each latent's class (0: the negative control). Each
    vector points from the negative control towards its class; a class with
    fewer than ``MIN_CELLS`` cells (or a negative control with fewer) gets
    none.
    """
    if len(labels) != len(z):
        raise ValueError(f"{len(labels)} labels for {len(z)} latents")
    u = directions.whiten(z.to(directions.mean.device).float()).cpu().numpy().astype(np.float64)
    negative = labels == 0
    vectors, kept = [], []
    for target in classes:
        treated = labels == target
        if target == 0 or treated.sum() < MIN_CELLS or negative.sum() < MIN_CELLS:
            continue
        rows = negative | treated
        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(u[rows], treated[rows])
        weight = torch.as_tensor(lda.coef_[0], dtype=directions.sd.dtype, device=directions.sd.device)
        vectors.append(torch.nn.functional.normalize((weight / directions.sd) @ directions.components, dim=0))
        kept.append(int(target))
    if not vectors:
        return torch.zeros(0, directions.z_dim), kept
    return torch.stack(vectors).cpu(), kept


def with_contrast_directions(directions: Directions, z: torch.Tensor, labels: np.ndarray,
                             classes: list[int]) -> tuple[Directions, list[int]]:
    """``directions`` with a contrast direction per class appended and all calibrated on ``z``; and those classes."""
    vectors, kept = contrast_vectors(directions, z, labels, classes)
    extended = directions.with_linear(vectors).eval().requires_grad_(False)
    return extended.calibrate(z.to(extended.mean.device).float()), kept
