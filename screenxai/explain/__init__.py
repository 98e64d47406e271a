"""DiffEx explanations: attribute directions, cached ranking, counterfactuals, names and scores.

Inputs are a ``DiffusionAutoencoder`` (with its frozen classifier), float32
crops (N, C, H, W) in [-1, 1] and pandas tables; outputs are DataFrames,
an ``xarray.Dataset`` of counterfactuals and files in a directory. The screen
statistics live in :mod:`screenxai.stats`; they are re-exported here.
"""

from screenxai.explain.counterfactuals import make_counterfactuals, write_counterfactuals
from screenxai.explain.directions import (DirectionConfig, Directions, EditEffect, Guide, cell_region,
                                          classifier_guide, decoder_features, direction_agreement, learn_directions,
                                          random_directions)
from screenxai.explain.naming import crop_features, name_attributes
from screenxai.explain.ranking import MAX_ALPHA, Ranking, RankingCache, rank_attributes
from screenxai.explain.scores import (attribute_axis_cosines, attribute_columns, attribute_scores, contrast_columns,
                                      contrast_scores_from_latents, scores_from_latents)
from screenxai.explain.store import load_contrast_readouts, load_directions, save_directions
from screenxai.stats import (fit_dose_response, readout_statistics, robust_z, ssmd, well_means, well_statistics,
                             z_prime)

__all__ = [
    "MAX_ALPHA",
    "DirectionConfig",
    "Directions",
    "EditEffect",
    "Guide",
    "Ranking",
    "RankingCache",
    "attribute_axis_cosines",
    "attribute_columns",
    "attribute_scores",
    "cell_region",
    "classifier_guide",
    "contrast_columns",
    "contrast_scores_from_latents",
    "crop_features",
    "decoder_features",
    "direction_agreement",
    "fit_dose_response",
    "learn_directions",
    "load_contrast_readouts",
    "load_directions",
    "make_counterfactuals",
    "name_attributes",
    "random_directions",
    "rank_attributes",
    "robust_z",
    "save_directions",
    "scores_from_latents",
    "ssmd",
    "readout_statistics",
    "well_means",
    "well_statistics",
    "write_counterfactuals",
    "z_prime",
]
