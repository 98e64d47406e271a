"""Measured quality of explanations, for tests and benchmarks: factor tracking, flips, localisation.

Each function returns plain numbers that tests and ``benchmarks/`` compare
with their goals and with negative controls; the library itself never
calls them, so they live beside the tests (benchmarks put ``tests/`` on
their path).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy.ndimage import binary_dilation
from scipy.stats import spearmanr

from screenxai.explain.naming import central_labels
from screenxai.models.classifier import predict_proba


def partial_spearman(x: np.ndarray, y: np.ndarray, given: np.ndarray) -> float:
    """Spearman correlation of ``x`` and ``y`` with the ranks of ``given`` partialled out."""
    ranks = [pd.Series(v).rank().to_numpy() for v in (x, y, given)]
    r = np.corrcoef(ranks)
    return float((r[0, 1] - r[0, 2] * r[1, 2]) / np.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2)))


def classifier_reliance(probability: np.ndarray, factors: pd.DataFrame) -> dict[str, float]:
    """Per factor: the partial Spearman of the classifier's probability with it, given the other factors.

    Ranks are compared after the other factors' ranks are regressed out of
    both, so a factor the classifier does not read scores near 0 even when
    it moves with dose alongside one it does read. An explanation of the
    classifier can only find attributes along the factors it relies on.
    """
    ranks = factors.rank().to_numpy(float)
    target = pd.Series(probability).rank().to_numpy(float)
    reliance = {}
    for j, factor in enumerate(factors.columns):
        others = np.column_stack([np.ones(len(ranks)), np.delete(ranks, j, axis=1)])
        residual = [v - others @ np.linalg.lstsq(others, v, rcond=None)[0] for v in (target, ranks[:, j])]
        reliance[factor] = float(np.corrcoef(*residual)[0, 1])
    return reliance


def factor_tracking(scores: pd.DataFrame, factors: pd.DataFrame, probability: np.ndarray) -> pd.DataFrame:
    """Per (attribute column, factor): Spearman per cell and partial Spearman given the classifier's probability."""
    rows = []
    for attribute in scores.columns:
        for factor in factors.columns:
            x, y = scores[attribute].to_numpy(), factors[factor].to_numpy()
            rows.append({"attribute": attribute, "factor": factor, "spearman": float(spearmanr(x, y).statistic),
                         "partial_spearman": partial_spearman(x, y, probability)})
    return pd.DataFrame(rows)


def flip_rates(counterfactuals: xr.Dataset, classifier: torch.nn.Module | None = None) -> dict[str, float]:
    """Share of cells that an edit at a positive alpha flips to the target class.

    A flip: the probability of the target class is at most 0.5 at ``alpha = 0``
    (the cell's reconstruction) and above 0.5 at some positive alpha (each
    attribute's own ``target_class``). ``top``:
    by the first attribute; ``any``: by any attribute. With ``classifier``,
    the images are scored by it instead of the stored probability.
    """
    alphas = counterfactuals["alpha"].to_numpy()
    if 0.0 not in alphas or not (alphas > 0).any():
        raise ValueError(f"flips need alpha 0 and a positive alpha among the counterfactuals, got {list(alphas)}")
    if classifier is None:
        p = counterfactuals["probability"].to_numpy()
    else:
        images = counterfactuals["image"].to_numpy()
        flat = predict_proba(classifier, images.reshape(-1, *images.shape[3:])).reshape(*images.shape[:3], -1)
        targets = counterfactuals["target_class"].to_numpy().astype(int)
        p = np.take_along_axis(flat, targets[None, :, None, None], axis=3)[..., 0]
    flipped = (p[:, :, alphas > 0] > 0.5).any(2) & (p[:, :, alphas == 0][:, :, 0] <= 0.5)
    return {"top": float(flipped[:, 0].mean()), "any": float(flipped.any(1).mean())}


def localisation(counterfactuals: xr.Dataset, nuclear_channel: int = 0, ring_width: int = 5) -> float:
    """Mean |change| per pixel inside the cell region over that outside, change = largest alpha vs alpha 0.

    The cell region is the central nucleus of the original crop, dilated by
    ``ring_width`` pixels (nucleus plus perinuclear ring).
    """
    alphas = counterfactuals["alpha"].to_numpy()
    images = counterfactuals["image"]
    change = np.abs(images.sel(alpha=alphas.max()).to_numpy() - images.sel(alpha=0.0).to_numpy()).mean(axis=2)
    inside, outside = [], []
    for cell, crop in enumerate(counterfactuals["original"].to_numpy()):
        labels, label = central_labels((crop[nuclear_channel] + 1) / 2)
        if label == 0:
            continue
        region = binary_dilation(labels == label, iterations=ring_width)
        inside.append(change[cell][:, region].mean())
        outside.append(change[cell][:, ~region].mean())
    return float(np.mean(inside) / np.mean(outside))
