"""Latents a formula uses are named by the morphology feature they track best."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from screenxai.interpret.latent_names import describe_latents, latent_features


def test_each_latent_is_named_by_the_feature_it_tracks():
    """z0 follows nuclear area, z1 falls with the reporter ratio, z2 is noise weaker than either."""
    rng = np.random.default_rng(0)
    n = 400
    features = pd.DataFrame({"area": rng.normal(300, 40, n), "reporter_ratio": rng.normal(1, 0.2, n),
                             "DNA_texture": rng.normal(0, 1, n)})
    latents = np.stack([features["area"] / 40 + rng.normal(0, 0.3, n),
                        -features["reporter_ratio"] / 0.2 + rng.normal(0, 0.3, n),
                        rng.normal(0, 1, n)], axis=1)
    named = latent_features(latents, features, ["z0", "z1"], ["DNA", "reporter"]).set_index("latent")
    assert named.loc["z0", "feature"] == "area" and named.loc["z0", "label"] == "nuclear area"
    assert named.loc["z1", "feature"] == "reporter_ratio" and named.loc["z1", "spearman"] < -0.9
    assert describe_latents(named.reset_index()).startswith("z0 ~ nuclear area (Spearman +0.9")
    with pytest.raises(ValueError, match="3 latent rows but 2"):
        latent_features(latents[:3], features[:2], ["z0"], ["DNA", "reporter"])
