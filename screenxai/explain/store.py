"""Save and load learned directions with their attribute table: safetensors weights plus one JSON file.

The directory (e.g. a bundle's ``explain/``) holds ``directions.safetensors``
and ``directions.json`` (the shape of the directions, the config they were
learned with, whether a classifier guide shaped them, the treatment and the
real-cell name of each contrast direction, and the attribute table as
records).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save

from screenxai.errors import BundleError
from screenxai.explain.directions import DirectionConfig, Directions
from screenxai.io import atomic_folder

WEIGHTS = "directions.safetensors"
CONFIG = "directions.json"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 has no fixed (contrast) directions


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def save_directions(directions: Directions, attributes: pd.DataFrame, directory: str | Path,
                    config: DirectionConfig | None = None, guided: bool | None = None,
                    unet_evaluations: dict | None = None, contrast_treatments: list[str] | None = None,
                    contrast_names: list[dict] | None = None) -> Path:
    """Write ``directions`` and ``attributes`` (e.g. ``Ranking.attributes``) into ``directory``; returns it.

    ``guided``: whether the directions were learned with a classifier guide (None: not known);
    ``unet_evaluations``: what ranking and naming them cost, recorded beside them;
    ``contrast_treatments``: the treatment of each contrast direction, in order;
    ``contrast_names``: for each, its readout's ``name`` and ``name_spearman``.
    """
    directory = Path(directory)
    tensors = {name: value.detach().cpu().contiguous() for name, value in directions.state_dict().items()}
    records = [{k: _plain(v) for k, v in row.items()} for row in attributes.to_dict(orient="records")]
    meta = {"format_version": FORMAT_VERSION, "z_dim": directions.z_dim, "n_directions": directions.n_directions,
            "hidden": directions.hidden, "rank": directions.rank, "n_linear": directions.n_linear,
            "config": config.to_dict() if config is not None else None, "guided": guided,
            "unet_evaluations": unet_evaluations, "contrast_treatments": contrast_treatments,
            "contrast_names": contrast_names, "attributes": records,
            "attribute_dtypes": {column: str(dtype) for column, dtype in attributes.dtypes.items()}}
    with atomic_folder(directory) as building:  # a crash leaves the old directions or the new, whole
        (building / WEIGHTS).write_bytes(save(tensors))  # bytes, so the file gets the umask
        (building / CONFIG).write_text(json.dumps(meta, indent=2))
    return directory


def load_directions(directory: str | Path) -> tuple[Directions, pd.DataFrame]:
    """The directions and attribute table saved by ``save_directions`` in ``directory``."""
    directory = Path(directory)
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: no directions were saved in {directory}")
    meta = json.loads((directory / CONFIG).read_text())
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"{directory / CONFIG} has format version {meta.get('format_version')}, "
                         f"expected one of {list(READABLE_VERSIONS)}")
    directions = Directions(meta["z_dim"], meta["n_directions"], meta["hidden"], meta["rank"],
                            meta.get("n_linear", 0))
    tensors = load_file(directory / WEIGHTS)
    if meta["format_version"] == 1:  # learned directions only: each edits along the axis it scores on
        empty = torch.zeros(0, meta["z_dim"])
        tensors.update(linear=empty, linear_axes=empty.clone(), edit_scales=tensors["scales"].clone())
    directions.load_state_dict(tensors)
    return directions.eval().requires_grad_(False), _attribute_table(meta)


def _attribute_table(meta: dict) -> pd.DataFrame:
    """The stored attribute table; without rows, its columns with their dtypes (when they were recorded)."""
    if meta["attributes"]:
        return pd.DataFrame(meta["attributes"])
    dtypes = meta.get("attribute_dtypes") or {}
    return pd.DataFrame({column: pd.Series(dtype=_plain_dtype(dtype)) for column, dtype in dtypes.items()})


def _plain_dtype(name: str) -> str:
    """A dtype name pandas builds an empty column of: strings become ``object``."""
    return "object" if name in ("str", "string", "object") else name


def load_contrast_readouts(directory: str | Path) -> pd.DataFrame:
    """One row per contrast direction saved in ``directory``: ``readout``, ``treatment``, ``name``, ``name_spearman``.

    ``readout`` is its per-cell column (``contrast_d{k}``); directions saved
    without treatments give no rows, without names NaN names.

    Raises
    ------
    BundleError
        When the file names another number of treatments than it has contrast directions.
    """
    path = Path(directory) / CONFIG
    meta = json.loads(path.read_text())
    treatments = meta.get("contrast_treatments") or []
    if treatments and len(treatments) != meta.get("n_linear", 0):
        raise BundleError(f"{path} names {len(treatments)} contrast treatments for {meta.get('n_linear', 0)} "
                          "contrast directions: the file was altered; run `screenxai explain` again")
    names = meta.get("contrast_names") or [{}] * len(treatments)
    first = meta["n_directions"] - meta.get("n_linear", 0)
    rows = [{"readout": f"contrast_d{first + i}", "treatment": treatment, "name": named.get("name"),
             "name_spearman": named.get("name_spearman")}
            for i, (treatment, named) in enumerate(zip(treatments, names, strict=True))]
    table = pd.DataFrame(rows, columns=["readout", "treatment", "name", "name_spearman"])
    return table.astype({"name_spearman": "float64"})
