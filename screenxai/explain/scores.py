"""Per-cell attribute scores: each cell's ``z_sem`` projected on each kept attribute (encoder only, no UNet).

The score of a cell on an attribute is its position along the direction's
mean axis, in SD units from the training cells' mean, signed so that a
higher score points toward the attribute's target class. Cheap enough for
every cell of a plate.

Every contrast direction (one per treatment, ``screenxai.explain.contrast``)
is also scored, kept as an attribute or not: its discriminant is the
statistic that detects its treatment's change best, so the activity call
reads it even where no edit along it moves the classifier.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from screenxai.explain.directions import Directions
from screenxai.models.autoencoder import DiffusionAutoencoder
from screenxai.models.latent_checks import encode


def unique_attributes(attributes: pd.DataFrame) -> pd.DataFrame:
    """One row per attribute id (``attribute``, ``direction``, ``sign``), in order of first appearance.

    Treatments of a screen may keep the same attribute; it is scored once.
    """
    for column in ("attribute", "direction", "sign"):
        if column not in attributes.columns:
            raise ValueError(f"attribute table lacks the column {column!r}")
    return attributes.drop_duplicates("attribute")[["attribute", "direction", "sign"]].reset_index(drop=True)


def attribute_columns(attributes: pd.DataFrame) -> list[str]:
    """Column names of the scores: ``attribute_{id}``, one per attribute id."""
    return [f"attribute_{a}" for a in unique_attributes(attributes)["attribute"]]


def scores_from_latents(directions: Directions, attributes: pd.DataFrame, z: torch.Tensor) -> pd.DataFrame:
    """Scores (one column per attribute id, ``attribute_columns``) of latents ``z`` (N, z_dim)."""
    unique = unique_attributes(attributes)
    values = _projection(directions, z)[:, unique["direction"].to_numpy()] * unique["sign"].to_numpy()[None, :]
    return pd.DataFrame(values.astype(np.float32), columns=attribute_columns(attributes))


def attribute_axis_cosines(directions: Directions, attributes: pd.DataFrame) -> pd.DataFrame:
    """Cosine between the signed scoring axes of every pair of attribute ids (index and columns the ids).

    ``d3p`` and ``d3n`` have cosine -1: one axis, read in opposite senses.
    """
    unique = unique_attributes(attributes)
    axes = torch.nn.functional.normalize(directions.axes.detach().cpu().double(), dim=1)
    signs = torch.tensor(unique["sign"].tolist(), dtype=torch.float64)
    signed = axes[unique["direction"].tolist()] * signs[:, None]
    ids = list(unique["attribute"])
    return pd.DataFrame((signed @ signed.T).numpy(), index=ids, columns=ids)


def contrast_columns(directions: Directions) -> list[str]:
    """Column names of the contrast readouts: ``contrast_d{k}``, one per contrast direction ``k``."""
    return [f"contrast_d{k}" for k in range(directions.n_learned, directions.n_directions)]


def contrast_scores_from_latents(directions: Directions, z: torch.Tensor) -> pd.DataFrame:
    """Each latent's score on every contrast direction (``contrast_columns``), pointing towards its treatment."""
    values = _projection(directions, z)[:, directions.n_learned:]
    return pd.DataFrame(values.astype(np.float32), columns=contrast_columns(directions))


def _projection(directions: Directions, z: torch.Tensor) -> np.ndarray:
    """Latents ``z`` on every direction's scoring axis (``Directions.project``), as a NumPy array on the CPU."""
    with torch.no_grad():
        return directions.project(z.to(directions.mean.device).float()).cpu().numpy()


def attribute_scores(autoencoder: DiffusionAutoencoder, directions: Directions, attributes: pd.DataFrame,
                     crops: np.ndarray, batch_size: int = 256) -> pd.DataFrame:
    """Scores of crops (N, C, H, W) in [-1, 1]: one row per crop, one ``attribute_{id}`` column per attribute id."""
    config = autoencoder.config
    expected = (config.in_channels, config.image_size, config.image_size)
    if crops.ndim != 4 or tuple(crops.shape[1:]) != expected:
        raise ValueError(f"expected crops of shape (N, {', '.join(map(str, expected))}), got {crops.shape}")
    return scores_from_latents(directions, attributes, encode(autoencoder, crops, batch_size))
