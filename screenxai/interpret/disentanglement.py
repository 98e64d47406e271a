"""A MIG-like disentanglement score of latents against known per-cell factors.

For each factor, the normalised mutual information between the factor and
every latent dimension is estimated by discretising both into equal-count
bins; the factor's gap is the best dimension's NMI minus the second best's
(Chen et al.'s mutual information gap). A factor that one dimension alone
carries gets a large gap; one spread over several dimensions, or carried by
none, gets a small one. Mutual information rather than a correlation, so a
dimension that encodes a factor non-monotonically still counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_BINS = 20


def quantile_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Integer bin (0..bins-1) of each value, bins holding about equal counts (ties share a bin)."""
    ranks = pd.Series(values).rank(method="dense").to_numpy()
    distinct = ranks.max()
    return np.minimum(((ranks - 1) * bins / distinct).astype(np.int64), bins - 1)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    """Mutual information (nats) between two integer codes in ``0..bins-1``."""
    joint = np.bincount(a * bins + b, minlength=bins * bins).reshape(bins, bins).astype(np.float64)
    return _entropy(joint.sum(1)) + _entropy(joint.sum(0)) - _entropy(joint)


def factor_nmi(latents: np.ndarray, factor: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """NMI of ``factor`` (N,) with each latent dimension of ``latents`` (N, D): I(z_d; f) / H(f)."""
    codes = quantile_bins(factor, bins)
    h_factor = _entropy(np.bincount(codes, minlength=bins).astype(np.float64))
    if h_factor == 0:
        return np.zeros(latents.shape[1])
    return np.array([mutual_information(quantile_bins(latents[:, d], bins), codes, bins) / h_factor
                     for d in range(latents.shape[1])])


def disentanglement_score(latents: np.ndarray, factors: pd.DataFrame, bins: int = DEFAULT_BINS) -> dict[str, float]:
    """Per factor (column of ``factors``), NMI of the best latent dimension minus the second best's.

    Also ``"mean"``: the average gap over the factors (the MIG). Rows with a
    missing factor value are left out of that factor. Raises ``ValueError``
    for fewer than 2 latent dimensions or rows that do not match.
    """
    latents = np.asarray(latents, np.float64)
    if latents.ndim != 2 or latents.shape[1] < 2:
        raise ValueError(f"latents must be (N, D) with D >= 2, got shape {latents.shape}")
    if len(latents) != len(factors):
        raise ValueError(f"{len(latents)} latent rows but {len(factors)} factor rows")
    gaps: dict[str, float] = {}
    for name in factors.columns:
        values = pd.to_numeric(factors[name], errors="coerce").to_numpy(np.float64)
        known = np.isfinite(values)
        if known.sum() < bins:
            raise ValueError(f"factor {name!r} has {int(known.sum())} known values, fewer than {bins} bins")
        nmi = np.sort(factor_nmi(latents[known], values[known], bins))[::-1]
        gaps[name] = float(nmi[0] - nmi[1])
    gaps["mean"] = float(np.mean(list(gaps.values())))
    return gaps
