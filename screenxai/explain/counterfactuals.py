"""Counterfactual images: chosen cells decoded along each kept attribute at several alphas, ``x_T`` fixed.

``alpha`` is in SD units of the cells' ``z_sem`` projected on the direction
and bounded by ``MAX_ALPHA`` (3 SD), so counterfactuals stay on the data.
A positive alpha moves along the attribute's sign, toward the target class;
``alpha = 0`` is the cell's own reconstruction. Every image is scored by the
classifier.

The result is an ``xarray.Dataset``, dims (cell, attribute, alpha, c, y, x):

- ``image`` (cell, attribute, alpha, c, y, x) float32 in [-1, 1]
- ``probability`` (cell, attribute, alpha): classifier probability of the attribute's target class
- ``rendered`` (cell, attribute) bool: whether the cell was decoded along the
  attribute; ``image`` and ``probability`` are NaN where it was not
  (``strip_pairs``: a treatment's attributes are not rendered on the
  exemplars of other treatments, so the cost grows with the number of
  treatments, not with its square)
- ``original`` (cell, c, y, x) and ``original_probability`` (cell, attribute): the real crop
- ``alpha_latent`` (attribute, alpha): the edit's length in ``z_sem`` units
- indexes ``cell`` (the cell id), ``attribute`` (``treatment/rank``, or the
  attribute id without treatments), ``alpha`` and ``c`` (channel names), so
  ``ds.image.sel(c="reporter")`` works; coordinates ``plate``, ``well``,
  ``field``, ``label`` (cell) and ``treatment``, ``rank``, ``attribute_id``,
  ``direction``, ``sign``, ``target_class`` (attribute)

``write_counterfactuals`` stores it with ``to_zarr``, one cell per chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from screenxai.explain.directions import Directions
from screenxai.explain.ranking import MAX_ALPHA, model_device
from screenxai.io import atomic_folder
from screenxai.models.autoencoder import DiffusionAutoencoder
from screenxai.models.classifier import predict_proba

CELL_KEYS = ("plate", "well", "field", "label")


def _check(autoencoder: DiffusionAutoencoder, crops: np.ndarray, table: pd.DataFrame, attributes: pd.DataFrame,
           alphas: Sequence[float], channel_names: Sequence[str]) -> None:
    config = autoencoder.config
    expected = (config.in_channels, config.image_size, config.image_size)
    if crops.ndim != 4 or tuple(crops.shape[1:]) != expected or len(crops) == 0:
        raise ValueError(f"expected crops of shape (N >= 1, {', '.join(map(str, expected))}), got {crops.shape}")
    if len(table) != len(crops):
        raise ValueError(f"{len(crops)} crops but {len(table)} table rows")
    missing = [c for c in CELL_KEYS if c not in table.columns]
    if missing:
        raise ValueError(f"cell table lacks the columns {missing}")
    if len(channel_names) != config.in_channels:
        raise ValueError(f"{len(channel_names)} channel names for {config.in_channels} channels")
    if len(alphas) == 0 or len(set(alphas)) != len(alphas):
        raise ValueError(f"alphas must be distinct and not empty, got {list(alphas)}")
    if max(abs(a) for a in alphas) > MAX_ALPHA:
        raise ValueError(f"|alpha| must be at most {MAX_ALPHA} SD to stay on the data, got {list(alphas)}")
    for column in ("attribute", "direction", "sign", "target_class"):
        if column not in attributes.columns:
            raise ValueError(f"attribute table lacks the column {column!r}")


ATTRIBUTE_COORDS = ("treatment", "rank", "attribute", "direction", "sign", "target_class")


def attribute_keys(attributes: pd.DataFrame) -> np.ndarray:
    """The ``attribute`` index of the counterfactuals: ``treatment/rank`` when rows carry a treatment, else the id."""
    if "treatment" in attributes.columns:
        return np.array([f"{t}/{int(r)}" for t, r in zip(attributes["treatment"], attributes["rank"], strict=True)],
                        dtype=object)
    return attributes["attribute"].astype(str).to_numpy(dtype=object)


ALPHAS = (-3.0, -1.5, 0.0, 1.5, 3.0)  # edit strengths (SD units along an attribute) an exemplar strip shows


def strip_pairs(conditions: Sequence[str], attributes: pd.DataFrame, treatments: Sequence[str]) -> np.ndarray:
    """Which (cell, attribute) pairs a strip needs (n_cells, n_attributes) bool.

    A cell whose condition is one of ``treatments`` is rendered along that
    treatment's attributes only (and along attributes without a treatment);
    cells of any other condition (the negative control, dose wells,
    unlabelled wells) along every attribute.
    """
    conditions = np.asarray([str(c) for c in conditions], dtype=object)
    if "treatment" not in attributes.columns:
        return np.ones((len(conditions), len(attributes)), bool)
    owner = attributes["treatment"].astype(str).to_numpy(dtype=object)
    of_treatment = np.isin(conditions, np.asarray(list(treatments), dtype=object))
    return ~of_treatment[:, None] | (conditions[:, None] == owner[None, :])


def make_counterfactuals(autoencoder: DiffusionAutoencoder, directions: Directions, attributes: pd.DataFrame,
                         crops: np.ndarray, table: pd.DataFrame, channel_names: Sequence[str],
                         alphas: Sequence[float] = ALPHAS, steps_inv: int = 10,
                         steps_dec: int = 10, batch_size: int = 256,
                         on_step: Callable[[int, int], None] | None = None,
                         rendered: np.ndarray | None = None) -> xr.Dataset:
    """Decode each cell along each attribute row of ``attributes`` at each alpha (SD units) and score the images.

    ``probability`` is each image's probability of its attribute's
    ``target_class``; ``original_probability`` the real crop's, per attribute.
    ``rendered`` (n_cells, n_attributes) bool, default all, says which pairs
    to decode (``strip_pairs``). ``on_step(done, total)`` is called once
    before the first step (``done`` 0) and after each (batch of cells,
    attribute). The unedited decode (alpha 0) is made once per batch of
    cells, whatever the attributes.
    """
    _check(autoencoder, crops, table, attributes, alphas, channel_names)
    rendered = np.ones((len(crops), len(attributes)), bool) if rendered is None else np.asarray(rendered, bool)
    if rendered.shape != (len(crops), len(attributes)):
        raise ValueError(f"rendered pairs of shape {rendered.shape} for {len(crops)} cells and "
                         f"{len(attributes)} attributes")
    directions = directions.to(model_device(autoencoder))
    was_training = autoencoder.training
    autoencoder.eval()
    try:
        images, probability, original_probability = _decode_along_attributes(
            autoencoder, directions, attributes, crops, alphas, rendered, steps_inv, steps_dec, batch_size, on_step)
    finally:
        autoencoder.train(was_training)
    dataset = _as_dataset(images, probability, rendered, crops, original_probability, table, attributes, alphas,
                          channel_names, directions.edit_scales.cpu().numpy())
    dataset.attrs["steps_inv"], dataset.attrs["steps_dec"] = steps_inv, steps_dec
    return dataset


def _decode_along_attributes(autoencoder: DiffusionAutoencoder, directions: Directions, attributes: pd.DataFrame,
                             crops: np.ndarray, alphas: Sequence[float], rendered: np.ndarray, steps_inv: int,
                             steps_dec: int, batch_size: int,
                             on_step: Callable[[int, int], None] | None) -> tuple[np.ndarray, ...]:
    """Images (cell, attribute, alpha, c, y, x) and their target-class probabilities (NaN where not rendered),
    and each real crop's probability of each attribute's target class."""
    device = model_device(autoencoder)
    targets = attributes["target_class"].to_numpy(np.int64)
    x = torch.from_numpy(np.ascontiguousarray(crops, np.float32)).to(device)
    n, n_attr, n_alpha = len(x), len(attributes), len(alphas)
    images = np.full((n, n_attr, n_alpha, *crops.shape[1:]), np.nan, np.float32)
    probability = np.full((n, n_attr, n_alpha), np.nan, np.float32)
    steps = -(-n // batch_size) * n_attr
    if on_step is not None:
        on_step(0, steps)
    with torch.no_grad():
        for i in range(0, n, batch_size):
            xb = x[i:i + batch_size]
            z = autoencoder.encode(xb)
            x_t = autoencoder.invert(xb, z, steps_inv)
            unedited = None  # alpha 0 leaves z_sem as it is: one decode serves every attribute
            for a, row in enumerate(attributes.itertuples()):
                wanted = np.flatnonzero(rendered[i:i + len(xb), a])
                for j, alpha in enumerate(alphas):
                    if len(wanted) == 0:
                        break
                    if alpha == 0:
                        if unedited is None:
                            decoded = autoencoder.decode(x_t, z, steps_dec)
                            unedited = (decoded, predict_proba(autoencoder.classifier, decoded))
                        decoded, proba = unedited[0][wanted], unedited[1][wanted]
                    else:
                        edited = directions.edit(z[wanted], int(row.direction), row.sign * alpha)
                        decoded = autoencoder.decode(x_t[wanted], edited, steps_dec)
                        proba = predict_proba(autoencoder.classifier, decoded)
                    images[i + wanted, a, j] = decoded.cpu().numpy()
                    probability[i + wanted, a, j] = proba[:, targets[a]]
                if on_step is not None:
                    on_step((i // batch_size) * n_attr + a + 1, steps)
        original_probability = predict_proba(autoencoder.classifier, x)[:, targets]
    return images, probability, original_probability


def _as_dataset(images: np.ndarray, probability: np.ndarray, rendered: np.ndarray, crops: np.ndarray,
                original_probability: np.ndarray, table: pd.DataFrame, attributes: pd.DataFrame,
                alphas: Sequence[float], channel_names: Sequence[str], edit_scales: np.ndarray) -> xr.Dataset:
    """The counterfactuals as the labelled Dataset the module docstring describes."""
    scales = edit_scales[attributes["direction"].to_numpy()]
    cells = table.reset_index(drop=True)
    along = {name: ("attribute", attributes[name].to_numpy()) for name in ATTRIBUTE_COORDS[1:]
             if name in attributes.columns and name != "attribute"}
    if "treatment" in attributes.columns:
        along["treatment"] = ("attribute", attributes["treatment"].astype(str).to_numpy(dtype=object))
        along["attribute_id"] = ("attribute", attributes["attribute"].astype(str).to_numpy(dtype=object))
    keys = cells[list(CELL_KEYS)].itertuples(index=False)
    cell_index = (cells["cell_id"].astype(str).to_numpy(dtype=object) if "cell_id" in cells.columns
                  else np.array([f"{p}/{w}/{f}/{lab}" for p, w, f, lab in keys], dtype=object))
    return xr.Dataset(
        {"image": (("cell", "attribute", "alpha", "c", "y", "x"), images),
         "probability": (("cell", "attribute", "alpha"), probability),
         "rendered": (("cell", "attribute"), rendered),
         "original": (("cell", "c", "y", "x"), np.asarray(crops, np.float32)),
         "original_probability": (("cell", "attribute"), original_probability),
         "alpha_latent": (("attribute", "alpha"), np.outer(scales, np.asarray(alphas, np.float64)))},
        coords={"cell": cell_index,
                "plate": ("cell", cells["plate"].astype(str).to_numpy()),
                "well": ("cell", cells["well"].astype(str).to_numpy()),
                "field": ("cell", cells["field"].to_numpy(np.int64)),
                "label": ("cell", cells["label"].to_numpy(np.int64)),
                "attribute": attribute_keys(attributes),
                **along,
                "alpha": np.asarray(alphas, np.float64),
                "c": np.array([str(c) for c in channel_names], dtype=object)},
        attrs={"alpha_units": "SD of the cells' z_sem projected on the direction",
               "image_units": "the models' [-1, 1] (image_raw: the plate's intensity units)",
               "max_alpha": MAX_ALPHA})


def write_counterfactuals(dataset: xr.Dataset, path: str | Path) -> Path:
    """Write counterfactuals to a Zarr group (one cell per chunk, images of attributes one attribute per chunk),
    replacing what is there as a whole; returns the path."""
    path = Path(path)
    encoding = {name: {"chunks": (1, *variable.shape[1:])}
                for name, variable in dataset.data_vars.items()
                if variable.dims[:1] == ("cell",) or variable.dims[:1] == ("attribute",) and variable.ndim > 3}
    with atomic_folder(path) as built:
        dataset.to_zarr(built, mode="w", encoding=encoding, consolidated=True)
    return path
