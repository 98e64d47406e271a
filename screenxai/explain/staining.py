"""Staining axes: how ``z_sem`` moves when a channel is brighter or dimmer across a whole field.

Wells of one plate take up stain and are exposed differently: on BBBC013
the mean DNA intensity of the nuclei varies from well to well with a
coefficient of variation near 0.3, and its negative-control wells stain
brighter than the rest. The encoder must carry brightness (the decoder
redraws it), so a treatment's mean change in ``z_sem`` and its linear
discriminant take up whatever brightness difference the controls happen to
have, and a well's score then follows its staining as well as its dose.

A channel's staining axis is the mean change of ``z_sem`` per unit of gain
when that channel of every crop is scaled about the background level (the
models' -1), as a brighter stain or a longer exposure scales it, measured by
a central difference on real crops. Making an edit or a scoring axis
orthogonal to these axes makes it blind to such changes, to first order. A
treatment that changes a channel's brightness uniformly is read through what
else it changes; one whose only effect is uniform brightness is not seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from screenxai.models.autoencoder import DiffusionAutoencoder
from screenxai.models.latent_checks import encode

STAINING_GAIN = 0.2  # relative gain of the central difference: a field 20% brighter and one 20% dimmer
MAX_CELLS = 256  # crops the axes are averaged over


def scaled_channel(crops: np.ndarray, channel: int, gain: float) -> np.ndarray:
    """``crops`` (N, C, H, W in [-1, 1]) with one channel scaled by ``gain`` about the background (-1), clipped."""
    scaled = np.array(crops, dtype=np.float32, copy=True)
    scaled[:, channel] = np.clip((scaled[:, channel] + 1) * gain - 1, -1, 1)
    return scaled


def staining_axes(autoencoder: DiffusionAutoencoder, crops: np.ndarray, channels: Sequence[int] | None = None,
                  gain: float = STAINING_GAIN, max_cells: int = MAX_CELLS, seed: int = 0) -> torch.Tensor:
    """Each channel's staining axis (len(channels), z_dim): mean d z_sem / d gain over up to ``max_cells`` crops."""
    if not 0 < gain < 1:
        raise ValueError(f"staining gain must lie in (0, 1), got {gain}")
    channels = range(crops.shape[1]) if channels is None else channels
    pick = np.random.default_rng(seed).permutation(len(crops))[:max_cells]
    sample = np.asarray(crops[np.sort(pick)], np.float32)
    axes = []
    for channel in channels:
        brighter = encode(autoencoder, scaled_channel(sample, channel, 1 + gain))
        dimmer = encode(autoencoder, scaled_channel(sample, channel, 1 - gain))
        axes.append(((brighter - dimmer) / (2 * gain)).mean(0))
    return torch.stack(axes).cpu().float()


def orthonormal_rows(vectors: torch.Tensor, tolerance: float = 1e-6) -> torch.Tensor:
    """An orthonormal basis (rows) of the span of ``vectors``' rows, one row per dimension of that span."""
    if len(vectors) == 0:
        return vectors
    _, singular, vh = torch.linalg.svd(vectors.double(), full_matrices=False)
    keep = singular > tolerance * singular.max().clamp_min(1e-300)
    return vh[keep].to(vectors.dtype)


def without(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``vectors`` (rows) minus their projection on the span of orthonormal rows ``basis``."""
    if len(basis) == 0:
        return vectors
    basis = basis.to(vectors)
    return vectors - (vectors @ basis.T) @ basis
