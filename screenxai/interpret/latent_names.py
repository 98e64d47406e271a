"""Name the latents a formula uses by the morphology feature each tracks best, so the formula reads in biology.

A beta-TCVAE latent is a number without a meaning; over the training
cells, the feature of the cell table (nuclear area, a channel's
nucleus/ring ratio, ...) whose per-cell values it follows most closely
(largest |Spearman|) says what it stands for, and the Spearman says how well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from screenxai.explain.naming import feature_label

MAX_CELLS = 5000  # cells the correlations are computed on, at most (an even sample)


def latent_features(latents: np.ndarray, features: pd.DataFrame, names: Sequence[str],
                    channel_names: Sequence[str]) -> pd.DataFrame:
    """Per named latent (e.g. ``z3``), the feature column it tracks best, its plain name and the Spearman.

    ``latents`` (N, latent_dim) and ``features`` (N rows of feature columns)
    describe the same cells; ``names`` are the latents to name (``z<i>``).
    """
    if len(latents) != len(features):
        raise ValueError(f"{len(latents)} latent rows but {len(features)} feature rows")
    step = max(1, len(latents) // MAX_CELLS)
    latents, features = latents[::step], features.iloc[::step]
    rows = []
    for name in names:
        values = latents[:, int(name.removeprefix("z"))]
        rho = {c: spearmanr(values, features[c].to_numpy(np.float64), nan_policy="omit").statistic
               for c in features.columns if features[c].notna().sum() > 2}
        best = max(rho, key=lambda c: abs(rho[c]) if np.isfinite(rho[c]) else -1.0)
        rows.append({"latent": name, "feature": best, "label": feature_label(best, channel_names),
                     "spearman": float(rho[best])})
    return pd.DataFrame(rows, columns=["latent", "feature", "label", "spearman"])


def describe_latents(named: pd.DataFrame) -> str:
    """One line: ``z3 ~ reporter nucleus/ring ratio (Spearman +0.82); ...``."""
    return "; ".join(f"{r.latent} ~ {r.label} (Spearman {r.spearman:+.2f})" for r in named.itertuples())
