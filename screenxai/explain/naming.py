"""Name each attribute by the morphology features its counterfactuals change most.

The cells module's features (shape of the nucleus; per channel the nucleus
mean, perinuclear ring mean, their ratio and texture) are measured on each
cell's reconstruction (``alpha = 0``) and on its counterfactual at the
largest positive alpha, segmenting the generated nucleus. A feature's effect
is Cohen's d of the change: the difference of the means over the pooled
standard deviation of the two sets of cells. ``changes`` lists the large
effects and the reference readouts (nuclear area, each channel's
nucleus/ring ratio) that stay put.

The name is one feature and its direction. Given the real cells' features
and scores, it is the feature among the large effects that the real cells'
attribute scores follow best (Spearman, with the sign of the effect, over
the negative control's cells and those of the treatments the attribute
explains: another treatment's change, which the score may also follow
across a whole screen, does not name it): a
decoder can render a side effect of a change (a larger nucleus drawn with
its DNA spilling into the ring) that real cells scoring high on the
attribute do not show. Without them, or when no large effect agrees with
the real cells, it is the feature with the largest |d|.

A contrast readout (a treatment's discriminant, scored whether or not an
edit along it moves the classifier) is named from the real cells alone
(``readout_names``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from screenxai.cells.features import column_prefix, feature_columns, measure_features
from screenxai.cells.segment import segment_nuclei

SHAPE_LABELS = {"area": "nuclear area", "perimeter": "nuclear perimeter", "eccentricity": "nuclear eccentricity",
                "solidity": "nuclear solidity", "major_axis_length": "nuclear length",
                "minor_axis_length": "nuclear width", "form_factor": "nuclear roundness"}
CHANNEL_LABELS = {"nucleus_mean": "{} in the nucleus", "ring_mean": "{} in the perinuclear ring",
                  "ratio": "{} nucleus/ring ratio", "texture": "{} texture"}
LARGE_EFFECT = 0.8  # Cohen's conventional "large"
NO_EFFECT = 0.2  # below Cohen's "small"
MAX_LISTED = 3


def feature_label(column: str, channel_names: Sequence[str]) -> str:
    """Plain words for a feature column, e.g. ``reporter_ratio`` -> "reporter nucleus/ring ratio"."""
    if column in SHAPE_LABELS:
        return SHAPE_LABELS[column]
    for name in channel_names:
        prefix = column_prefix(name)
        for suffix, label in CHANNEL_LABELS.items():
            if column == f"{prefix}_{suffix}":
                return label.format(name)
    raise ValueError(f"unknown feature column {column!r}")


def central_labels(nuclear: np.ndarray) -> tuple[np.ndarray, int]:
    """Nuclei of a crop's nuclear channel (in [0, 1]) and the label of the central one (0 if none)."""
    labels = segment_nuclei(nuclear)
    if labels.max() == 0:
        return labels, 0
    centre = np.array(labels.shape) // 2
    label = int(labels[tuple(centre)])
    if label == 0:
        ys, xs = np.nonzero(labels)
        nearest = np.argmin((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2)
        label = int(labels[ys[nearest], xs[nearest]])
    return labels, label


def crop_features(crops: np.ndarray, channel_names: Sequence[str], nuclear_channel: int = 0) -> pd.DataFrame:
    """Features of the central nucleus of each crop (N, C, H, W) in [-1, 1]; a row of NaN where none is found."""
    columns = feature_columns(channel_names)
    rows = []
    for crop in crops:
        image = (np.asarray(crop, np.float64) + 1) / 2
        labels, label = central_labels(image[nuclear_channel])
        if label == 0:
            rows.append(dict.fromkeys(columns, np.nan))
            continue
        table = measure_features(image, labels, channel_names)
        rows.append(table.loc[table["label"] == label, columns].iloc[0].to_dict())
    return pd.DataFrame(rows, columns=columns)


def cohens_d(before: np.ndarray, after: np.ndarray) -> float:
    """Cohen's d of ``after`` vs ``before`` (pooled SD), over pairs where both are finite; NaN if undefined."""
    keep = np.isfinite(before) & np.isfinite(after)
    before, after = before[keep], after[keep]
    if len(before) < 2:
        return float("nan")
    pooled = np.sqrt((before.var(ddof=1) + after.var(ddof=1)) / 2)
    return float((after.mean() - before.mean()) / pooled) if pooled > 0 else float("nan")


def feature_associations(scores: pd.DataFrame, features: pd.DataFrame,
                         among: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Spearman of each attribute's score with each morphology feature over the same real cells.

    ``scores`` has one ``attribute_{id}`` column per attribute id, ``features``
    one column per feature, a row per cell in both. ``among``: per attribute
    id, a boolean mask of the cells to correlate over (default: all), e.g.
    the negative control and the treatments the attribute explains, so that
    another treatment's change does not name it. One row per attribute id
    (the index), one column per feature.
    """
    if len(scores) != len(features):
        raise ValueError(f"{len(scores)} rows of scores for {len(features)} rows of features")
    features, scores = features.reset_index(drop=True), scores.reset_index(drop=True)
    table = {}
    for column in scores.columns:
        attribute = column.removeprefix("attribute_")
        rows = np.ones(len(scores), bool) if among is None or attribute not in among else np.asarray(among[attribute])
        table[attribute] = features[rows].rank().corrwith(scores.loc[rows, column].rank())
    return pd.DataFrame(table).T


def named_feature(effects: pd.Series, association: pd.Series | None = None) -> str | None:
    """The feature an attribute is named after (see the module docstring); None when no effect is finite."""
    finite = effects.dropna()
    if finite.empty:
        return None
    largest = finite.abs().idxmax()
    if association is None:
        return largest
    agreeing = [c for c in finite.index if abs(finite[c]) >= LARGE_EFFECT
                and np.sign(association.get(c, np.nan)) == np.sign(finite[c])]
    return max(agreeing, key=lambda c: abs(association[c])) if agreeing else largest


def readout_names(associations: pd.DataFrame, channel_names: Sequence[str]) -> pd.DataFrame:
    """Per readout (the index of ``associations``), the feature the real cells' scores follow best.

    A contrast readout is a score, not an edit: nothing is rendered, so its
    name is the feature of largest |Spearman| over the real cells
    (``feature_associations``) and its sign, e.g. a texture the decoder
    cannot draw. Columns ``readout``, ``name`` (None where no Spearman is
    finite) and ``name_spearman``.
    """
    rows = []
    for readout, association in associations.iterrows():
        finite = association.dropna()
        if finite.empty:
            rows.append({"readout": str(readout), "name": None, "name_spearman": np.nan})
            continue
        feature = finite.abs().idxmax()
        rho = float(finite[feature])
        words = f"{feature_label(feature, channel_names)} {'up' if rho > 0 else 'down'}"
        rows.append({"readout": str(readout), "name": words, "name_spearman": rho})
    return pd.DataFrame(rows, columns=["readout", "name", "name_spearman"])


def describe(effects: pd.Series, channel_names: Sequence[str],
             association: pd.Series | None = None) -> tuple[str, str]:
    """The name and the ``changes`` text of one attribute from its Cohen's d per feature.

    ``association``: the Spearman of the attribute's score with each feature
    over real cells (``feature_associations``), which picks the name.
    """
    finite = effects.dropna()
    if finite.empty:
        return "unnamed (no nucleus found in the counterfactuals)", "no feature could be measured"
    order = finite.abs().sort_values(ascending=False).index
    named = named_feature(finite, association)

    def phrase(column: str) -> str:
        d = finite[column]
        return f"{feature_label(column, channel_names)} {'up' if d > 0 else 'down'} (d = {d:+.1f})"

    listed = [c for c in order if abs(finite[c]) >= LARGE_EFFECT][:MAX_LISTED] or [order[0]]
    readouts = ["area", *(f"{column_prefix(n)}_ratio" for n in channel_names)]
    unchanged = [f"{feature_label(c, channel_names)} unchanged" for c in readouts
                 if c in finite.index and abs(finite[c]) < NO_EFFECT]
    name = f"{feature_label(named, channel_names)} {'up' if finite[named] > 0 else 'down'}"
    return name, "; ".join([phrase(c) for c in listed] + unchanged)


def attribute_effects(counterfactuals: xr.Dataset, channel_names: Sequence[str],
                      nuclear_channel: int = 0) -> pd.DataFrame:
    """Cohen's d of every feature between ``alpha = 0`` and the largest positive alpha, one row per attribute.

    ``attribute`` holds the counterfactuals' ``attribute`` index (the attribute id).
    """
    alphas = counterfactuals["alpha"].to_numpy()
    if 0.0 not in alphas or not (alphas > 0).any():
        raise ValueError(f"naming needs alpha 0 and a positive alpha among the counterfactuals, got {list(alphas)}")
    images = counterfactuals["image"]
    rows = []
    for attribute in counterfactuals["attribute"].to_numpy():
        sweep = images.sel(attribute=attribute)
        before = crop_features(sweep.sel(alpha=0.0).to_numpy(), channel_names, nuclear_channel)
        after = crop_features(sweep.sel(alpha=alphas.max()).to_numpy(), channel_names, nuclear_channel)
        rows.append({"attribute": str(attribute), **{f"d_{c}": cohens_d(before[c].to_numpy(), after[c].to_numpy())
                                                for c in before.columns}})
    return pd.DataFrame(rows)


def name_attributes(attributes: pd.DataFrame, counterfactuals: xr.Dataset, channel_names: Sequence[str],
                    nuclear_channel: int = 0, associations: pd.DataFrame | None = None) -> pd.DataFrame:
    """``attributes`` with ``name``, ``changes``, ``name_spearman`` and a ``d_{feature}`` column per feature.

    ``counterfactuals`` renders the attribute ids of ``attributes`` (its
    ``attribute`` column), each once. ``associations`` (from
    ``feature_associations``, indexed by attribute id) picks each name among
    the large effects; ``name_spearman`` is the named feature's Spearman
    there (NaN without ``associations``).
    """
    effects = attribute_effects(counterfactuals, channel_names, nuclear_channel)
    columns = [c for c in effects.columns if c.startswith("d_")]
    names, changes, spearman = [], [], []
    for _, row in effects.iterrows():
        effect = row[columns].rename(lambda c: c[2:]).astype(float)
        association = None if associations is None else associations.loc[row["attribute"]]
        name, change = describe(effect, channel_names, association)
        feature = named_feature(effect, association)
        names.append(name)
        changes.append(change)
        spearman.append(float(association[feature]) if association is not None and feature else np.nan)
    effects["name"], effects["changes"], effects["name_spearman"] = names, changes, spearman
    added = ["name", "changes", "name_spearman", *columns]
    named = attributes.drop(columns=[c for c in added if c in attributes.columns])
    return named.merge(effects[["attribute", *added]], on="attribute", how="left")
