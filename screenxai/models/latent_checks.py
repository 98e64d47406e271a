"""Measured answers to "does the diffusion autoencoder's latent carry the cell?".

A conditional UNet can learn to ignore its condition and still denoise well,
so that the latent is used is checked, never assumed:

- ``latent_use``: decode the same fresh Gaussian ``x_T`` with each cell's own
  ``z_sem`` and with another cell's; if ``z_sem`` carries the cell, its own
  latent gives a clearly smaller error to the cell.
- ``probe_factors``: cross-validated R^2 of a ridge regression from the
  encoder's ``w = E(x)`` to known per-cell factors.
- ``reconstruction_error``: ``decode(invert(x))`` against ``x``.
- ``factor_agreement``: Spearman correlation between factors measured on
  images (e.g. decodes, with ``screenxai.cells.central.measure_cell_factors``)
  and the true factors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from screenxai.models.autoencoder import DiffusionAutoencoder
from screenxai.models.device import generator
from screenxai.models.metrics import ridge_cv_r2


@dataclass(frozen=True)
class LatentUse:
    """Mean absolute error to the cell of decodes with its own and with another cell's ``z_sem``."""

    own_error: float
    wrong_error: float
    n_cells: int
    steps: int

    @property
    def improvement(self) -> float:
        """``1 - own / wrong``: 0 when ``z_sem`` is ignored, 0.2 when the own latent is 20% better."""
        return 1 - self.own_error / self.wrong_error

    def to_dict(self) -> dict:
        """A JSON-ready dict, with the improvement."""
        return {**asdict(self), "improvement": self.improvement}


def derangement(n: int, seed: int) -> np.ndarray:
    """A random permutation of ``range(n)`` (n >= 2) that moves every element."""
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, 1)
    return out


def _batched(fn: Callable[..., torch.Tensor], batch_size: int, *arrays: torch.Tensor) -> torch.Tensor:
    return torch.cat([fn(*(a[i:i + batch_size] for a in arrays)) for i in range(0, len(arrays[0]), batch_size)])


def _device(model: DiffusionAutoencoder) -> torch.device:
    return next(model.parameters()).device


def encode(model: DiffusionAutoencoder, crops: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """``z_sem`` of numpy crops, in batches."""
    x = torch.from_numpy(np.ascontiguousarray(crops, np.float32)).to(_device(model))
    return _batched(model.encode, batch_size, x)


def decode_fresh(model: DiffusionAutoencoder, z: torch.Tensor, steps: int, seed: int,
                 batch_size: int = 256) -> torch.Tensor:
    """Decodes of ``z`` from Gaussian ``x_T`` drawn with ``seed``."""
    shape = (len(z), model.config.in_channels, model.config.image_size, model.config.image_size)
    x_t = torch.randn(shape, generator=generator(seed)).to(z.device)
    return _batched(lambda a, b: model.decode(a, b, steps), batch_size, x_t, z)


def latent_use(model: DiffusionAutoencoder, crops: np.ndarray, steps: int = 10, seed: int = 0,
               batch_size: int = 256) -> LatentUse:
    """Decode one fresh ``x_T`` per cell with its own and with another cell's ``z_sem`` (check i)."""
    z = encode(model, crops, batch_size)
    x = torch.from_numpy(np.asarray(crops, np.float32))
    own = decode_fresh(model, z, steps, seed, batch_size).cpu()
    wrong = decode_fresh(model, z[torch.from_numpy(derangement(len(z), seed))], steps, seed, batch_size).cpu()
    return LatentUse(float((own - x).abs().mean()), float((wrong - x).abs().mean()), len(x), steps)


def semantic_vectors(model: DiffusionAutoencoder, crops: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``w = E(x)`` of crops as a numpy array."""
    x = torch.from_numpy(np.ascontiguousarray(crops, np.float32)).to(_device(model))
    with torch.no_grad():
        return _batched(model.semantic, batch_size, x).cpu().numpy()


def probe_factors(model: DiffusionAutoencoder, crops: np.ndarray, factors: pd.DataFrame, alpha: float = 1.0,
                  folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Cross-validated ridge R^2 from ``w = E(x)`` to each column of ``factors`` (check ii)."""
    w = semantic_vectors(model, crops)
    return {name: ridge_cv_r2(w, factors[name].to_numpy(), alpha, folds, seed) for name in factors.columns}


def reconstruct(model: DiffusionAutoencoder, crops: np.ndarray, steps: int = 10,
                batch_size: int = 256) -> np.ndarray:
    """``decode(invert(x, z), z)`` of crops, as numpy."""
    x = torch.from_numpy(np.ascontiguousarray(crops, np.float32)).to(_device(model))

    def round_trip(batch: torch.Tensor) -> torch.Tensor:
        z = model.encode(batch)
        return model.decode(model.invert(batch, z, steps), z, steps)

    return _batched(round_trip, batch_size, x).cpu().numpy()


def reconstruction_error(model: DiffusionAutoencoder, crops: np.ndarray, steps: int = 10) -> float:
    """Mean absolute error of ``decode(invert(x))`` to ``x`` (check iii); use held-out cells."""
    return float(np.abs(reconstruct(model, crops, steps) - crops).mean())


def factor_agreement(images: np.ndarray, truth: pd.DataFrame,
                     measure: Callable[[np.ndarray], pd.DataFrame]) -> dict[str, float]:
    """Spearman correlation, per column of ``truth``, of ``measure(images)`` with the true factors."""
    measured = measure(images)
    return {name: float(spearmanr(measured[name].to_numpy(), truth[name].to_numpy()).statistic)
            for name in truth.columns}
