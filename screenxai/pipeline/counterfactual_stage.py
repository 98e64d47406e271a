"""The counterfactual stage: a small graph after scoring that renders exemplar cells along each attribute.

Exemplars are chosen per condition (each class of the bundle) from the
scored cell table: the cells the classifier is most sure belong to their
own condition's class; and, when asked, per well: the well's typical cells,
whose class probabilities are nearest the well's means. One task on a
(GPU) worker re-cuts their fields, inverts the exemplars once and decodes
them along the attributes their strips need (a treatment's exemplars along
that treatment's attributes, the others along every attribute) at several
alphas with ``x_T`` fixed
(``screenxai.explain.make_counterfactuals``); the client writes the
result to ``counterfactuals.zarr``, which ``xarray.open_zarr`` opens with
dims (cell, attribute, alpha, c, y, x).
Inversion and decoding are never run for every cell of a plate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import xarray as xr
from distributed import Client, get_worker

from screenxai.cells import CellConfig
from screenxai.errors import ScreenxaiError
from screenxai.explain.counterfactuals import ALPHAS
from screenxai.pipeline.bundle_plugin import worker_models
from screenxai.pipeline.cell_stage import FieldTask
from screenxai.pipeline.cluster import gpu_resources
from screenxai.pipeline.model_stage import class_column_name, cut_field

PROGRESS_TOPIC = "screenxai-counterfactuals"  # worker events: {"done": steps rendered, "total": steps}


def choose_exemplars(cells: dd.DataFrame, layouts: dict[str, pd.DataFrame | None], class_column: str,
                     class_names: Sequence[str], per_condition: int, client: Client | None = None) -> pd.DataFrame:
    """Per class of ``class_column``, the ``per_condition`` cells with the highest probability of that class.

    ``cells`` is the run's cell table as a dask DataFrame; the top cells are
    found by ``client``'s cluster, so only the exemplars reach the client.
    Cells the models were trained on are avoided when others are available.
    Empty when no selected well holds one of the classes.
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
    exemplars = pd.concat(chosen or [cells._meta.assign(condition=pd.Series(dtype=object))], ignore_index=True)
    return exemplars.assign(plate=exemplars["plate"].astype(str), well=exemplars["well"].astype(str))


def choose_well_exemplars(cells: dd.DataFrame, aggregates: pd.DataFrame, layouts: dict[str, pd.DataFrame | None],
                          class_column: str, class_names: Sequence[str], per_well: int,
                          client: Client | None = None) -> pd.DataFrame:
    """Per well, the ``per_well`` cells whose class probabilities are nearest the well's mean ones: its typical cells.

    ``aggregates`` holds the wells' ``mean_p_<class>`` columns (the run's
    ``aggregate_wells``). A tree reduction on ``client``'s cluster keeps, per
    partition and then per group of partitions, each well's nearest cells,
    so ``per_well`` rows per well reach the client, never the cell table.
    Cells the models were trained on come last. ``condition`` is the well's
    ``class_column`` value in its plate's layout ("" without one).
    """
    scores = [class_column_name(name) for name in class_names]
    centres = aggregates[["plate", "well", *[f"mean_{s}" for s in scores]]]
    meta = cells._meta.assign(plate=pd.Series(dtype=object), well=pd.Series(dtype=object),
                              distance=pd.Series(dtype="float64"))
    reduced = cells.reduction(_typical_cells, aggregate=_nearest_per_well, combine=_nearest_per_well, meta=meta,
                              chunk_kwargs={"centres": centres, "scores": scores, "n": per_well},
                              aggregate_kwargs={"n": per_well}, combine_kwargs={"n": per_well})
    typical = client.compute(reduced, sync=True) if client is not None else reduced.compute()
    conditions = pd.concat([layout[["well", class_column]].assign(plate=plate).astype({class_column: str})
                            for plate, layout in layouts.items()
                            if layout is not None and class_column in layout.columns]
                           or [pd.DataFrame(columns=["plate", "well", class_column])])
    typical = typical.merge(conditions, on=["plate", "well"], how="left")
    typical = typical.assign(condition=typical[class_column].fillna("")).drop(columns=[class_column, "distance"])
    return typical.sort_values(["plate", "well"], kind="stable").reset_index(drop=True)


def _typical_cells(part: pd.DataFrame, centres: pd.DataFrame, scores: list[str], n: int) -> pd.DataFrame:
    """A partition's ``n`` cells per well nearest their well's mean class probabilities (a reduction's chunk)."""
    part = part.astype({"plate": str, "well": str})
    centre = part[["plate", "well"]].merge(centres, on=["plate", "well"], how="left")
    offsets = part[scores].to_numpy(np.float64) - centre[[f"mean_{s}" for s in scores]].to_numpy(np.float64)
    return _nearest_per_well(part.assign(distance=np.sqrt((offsets ** 2).sum(axis=1))), n)


def _nearest_per_well(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` rows per well of smallest ``distance``, cells of the training set last, ties by ``cell_id``."""
    order = [c for c in ("in_training", "distance", "cell_id") if c in frame.columns]
    return frame.sort_values(order, kind="stable").groupby(["plate", "well"], sort=False).head(n)


def render_exemplars(tasks: Sequence[FieldTask], configs: dict[str, CellConfig], cell_ids: Sequence[str],
                     conditions: Sequence[str], alphas: Sequence[float] = ALPHAS) -> xr.Dataset:
    """Re-cut the exemplars' fields, then decode each exemplar along the attributes its strips need (on a worker).

    An exemplar of a treatment is decoded along that treatment's attributes;
    one of the negative control or of any other well along every attribute
    (``strip_pairs``).
    """
    from screenxai.explain import make_counterfactuals
    from screenxai.explain.counterfactuals import strip_pairs

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
    chosen = table.iloc[rows]
    pairs = strip_pairs(conditions, attributes, bundle.class_names[1:])
    dataset = make_counterfactuals(bundle["autoencoder"], directions, attributes, np.concatenate(crops)[rows],
                                   chosen, bundle.channel_names, alphas, on_step=_report_step, rendered=pairs)
    dataset = with_raw_intensities(dataset, chosen["plate"].astype(str).tolist(), configs)
    return dataset.assign_coords(condition=("cell", np.asarray(conditions, dtype=object)))


def _report_step(done: int, total: int) -> None:
    """Send the rendering's progress to the client as a worker event (``PROGRESS_TOPIC``)."""
    get_worker().log_event(PROGRESS_TOPIC, {"done": done, "total": total})


def with_raw_intensities(dataset: xr.Dataset, plates: Sequence[str], configs: dict[str, CellConfig]) -> xr.Dataset:
    """``dataset`` with ``image_raw`` and ``original_raw``: its images in each cell's plate's intensity units."""
    from screenxai.cells import denormalise

    image = np.empty(dataset["image"].shape, np.float32)
    original = np.empty(dataset["original"].shape, np.float32)
    for i, plate in enumerate(plates):
        stats = configs[plate].normalisation
        image[i] = denormalise(dataset["image"].to_numpy()[i], stats)
        original[i] = denormalise(dataset["original"].to_numpy()[i], stats)
    return dataset.assign(image_raw=(dataset["image"].dims, image), original_raw=(dataset["original"].dims, original))


def counterfactual_stage(client: Client, exemplars: pd.DataFrame, tasks: Sequence[FieldTask],
                         configs: dict[str, CellConfig], path: Path,
                         on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Render ``exemplars`` in one task on the GPU worker (when there is one) and write the Zarr at ``path``.

    ``on_progress(done, total)`` is called on the client as the worker renders.
    """
    from screenxai.explain import write_counterfactuals

    keys = set(zip(exemplars["plate"], exemplars["well"], exemplars["field"], strict=True))
    needed = [t for t in tasks if (t.plate_name, t.well, t.field) in keys]
    if on_progress is not None:
        client.subscribe_topic(PROGRESS_TOPIC, lambda event: on_progress(event[1]["done"], event[1]["total"]))
    try:
        future = client.submit(render_exemplars, needed, configs, exemplars["cell_id"].tolist(),
                               exemplars["condition"].tolist(), resources=gpu_resources(client), pure=False)
        dataset = future.result()
    finally:
        if on_progress is not None:
            client.unsubscribe_topic(PROGRESS_TOPIC)
    return write_counterfactuals(dataset, path)
