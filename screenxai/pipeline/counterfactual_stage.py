"""The counterfactual stage: a small graph after scoring that renders exemplar cells along each attribute.

Exemplars are chosen per condition (each class of the bundle) from the
scored cell table: the cells the classifier is most sure belong to their
own condition's class. One task on a (GPU) worker re-cuts their fields,
inverts the exemplars once and decodes them along every attribute at
several alphas with ``x_T`` fixed (``screenxai.explain.make_counterfactuals``);
the client writes the result to ``counterfactuals.zarr``, which
``xarray.open_zarr`` opens with dims (cell, attribute, alpha, c, y, x).
Inversion and decoding are never run for every cell of a plate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import xarray as xr
from distributed import Client

from screenxai.cells import CellConfig
from screenxai.errors import ScreenxaiError
from screenxai.pipeline.bundle_plugin import worker_models
from screenxai.pipeline.cell_stage import FieldTask
from screenxai.pipeline.cluster import gpu_resources
from screenxai.pipeline.model_stage import class_column_name, cut_field

ALPHAS = (-3.0, -1.5, 0.0, 1.5, 3.0)


def choose_exemplars(cells: dd.DataFrame, layouts: dict[str, pd.DataFrame | None], class_column: str,
                     class_names: Sequence[str], per_condition: int, client: Client | None = None) -> pd.DataFrame:
    """Per class of ``class_column``, the ``per_condition`` cells with the highest probability of that class.

    ``cells`` is the run's cell table as a dask DataFrame; the top cells are
    found by ``client``'s cluster, so only the exemplars reach the client.
    Cells the models were trained on are avoided when others are available.
    """
    if not any(layout is not None and class_column in layout.columns for layout in layouts.values()):
        raise ScreenxaiError(f"no plate has the layout column {class_column!r} to choose exemplar cells by")
    queries, names = [], []
    for name in class_names:
        mask = None
        for plate, layout in layouts.items():
            if layout is None or class_column not in layout.columns:
                continue
            wells = layout.loc[layout[class_column] == name, "well"].astype(str).tolist()
            if wells:
                in_plate = (cells["plate"] == plate) & cells["well"].isin(wells)
                mask = in_plate if mask is None else mask | in_plate
        if mask is None:
            continue
        candidates = cells[mask]
        score = class_column_name(name)
        queries.append(candidates.nlargest(per_condition, score))
        if "in_training" in cells.columns:
            queries.append(candidates[~candidates["in_training"]].nlargest(per_condition, score))
        names.append(name)
    found = client.compute(queries, sync=True) if client is not None else dask.compute(*queries)
    per_class = 2 if "in_training" in cells.columns else 1
    chosen = []
    for i, name in enumerate(names):
        top = found[i * per_class]
        if per_class == 2 and len(found[i * per_class + 1]) >= per_condition:
            top = found[i * per_class + 1]
        chosen.append(top.assign(condition=name))
    exemplars = pd.concat(chosen, ignore_index=True)
    return exemplars.assign(plate=exemplars["plate"].astype(str), well=exemplars["well"].astype(str))


def render_exemplars(tasks: Sequence[FieldTask], configs: dict[str, CellConfig], cell_ids: Sequence[str],
                     conditions: Sequence[str], alphas: Sequence[float] = ALPHAS) -> xr.Dataset:
    """Re-cut the exemplars' fields, then decode each exemplar along every attribute (runs on a worker)."""
    from screenxai.explain import make_counterfactuals

    models = worker_models()
    if models.explanations is None:
        raise ScreenxaiError("the bundle has no attributes (explain stage) to render counterfactuals along")
    crops, tables = [], []
    for task in tasks:
        result = cut_field(task, configs[task.plate_name])
        if result.status["status"] != "done":
            raise ScreenxaiError(f"field {task.plate_name}/{task.well}/{task.field}: {result.status['error']}")
        crops.append(result.crops)
        tables.append(result.table)
    table = pd.concat(tables, ignore_index=True)
    position = pd.Series(np.arange(len(table)), index=table["cell_id"])
    rows = position.loc[list(cell_ids)].to_numpy()
    directions, attributes = models.explanations
    bundle = models.bundle
    dataset = make_counterfactuals(bundle["autoencoder"], directions, attributes, np.concatenate(crops)[rows],
                                   table.iloc[rows], bundle.channel_names, alphas)
    return dataset.assign_coords(condition=("cell", np.asarray(conditions, dtype=object)),
                                 cell_id=("cell", np.asarray(cell_ids, dtype=object)))


def counterfactual_stage(client: Client, exemplars: pd.DataFrame, tasks: Sequence[FieldTask],
                         configs: dict[str, CellConfig], path: Path) -> Path:
    """Render ``exemplars`` in one task on the GPU worker (when there is one) and write the Zarr at ``path``."""
    from screenxai.explain import write_counterfactuals

    keys = set(zip(exemplars["plate"], exemplars["well"], exemplars["field"], strict=True))
    needed = [t for t in tasks if (t.plate_name, t.well, t.field) in keys]
    future = client.submit(render_exemplars, needed, configs, exemplars["cell_id"].tolist(),
                           exemplars["condition"].tolist(), resources=gpu_resources(client), pure=False)
    return write_counterfactuals(future.result(), path)
