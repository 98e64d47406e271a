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

Beside the exemplars the Zarr holds each attribute's gallery: the real
cells of the whole run with the lowest and highest per-cell score on it
(``choose_gallery``, a tree reduction on the cluster), re-cut from their
fields by CPU tasks while the exemplars render (dims attribute, end,
place, c, y, x).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import xarray as xr
from distributed import Client, get_worker

from screenxai.cells import CellConfig, denormalise
from screenxai.errors import ScreenxaiError
from screenxai.explain.counterfactuals import ALPHAS
from screenxai.pipeline.bundle_plugin import worker_models
from screenxai.pipeline.cell_stage import FieldTask
from screenxai.pipeline.cluster import gpu_resources
from screenxai.pipeline.model_stage import class_column_name, cut_field

PROGRESS_TOPIC = "screenxai-counterfactuals"  # worker events: {"done": steps rendered, "total": steps}
GALLERY_PER_END = 4  # real cells from each end of an attribute's per-cell score in its gallery
GALLERY_ENDS = ("low", "high")
GALLERY_QC = ("qc_saturated", "qc_out_of_focus", "qc_missing_chunks")  # field flags that keep a field's cells out
GALLERY_KEYS = ["plate", "well", "field", "label", "cell_id"]
GALLERY_COLUMNS = ["attribute", "end", "place", *GALLERY_KEYS, "score"]
GALLERY_WELL = ["attribute", "end", "plate", "well"]


def choose_exemplars(cells: dd.DataFrame, layouts: dict[str, pd.DataFrame | None], class_column: str,
                     class_names: Sequence[str], per_condition: int, client: Client | None = None) -> pd.DataFrame:
    """Per class of ``class_column``, the ``per_condition`` cells with the highest probability of that class.

    ``cells`` is the run's cell table as a dask DataFrame. One tree reduction
    on ``client``'s cluster keeps, per partition and then per group of
    partitions, each class's best cells, so only the exemplars reach the
    client and the table is read once for all classes. Cells the models were
    trained on come after every other cell of their class. Empty when no
    selected well holds one of the classes.
    """
    wells = _class_wells(layouts, class_column, class_names)
    meta = cells._meta.assign(condition=pd.Series(dtype=object), exemplar_score=pd.Series(dtype="float64"))
    if wells.empty:
        return meta.drop(columns="exemplar_score")
    reduced = cells.reduction(_best_of_classes, aggregate=_best_per_condition, combine=_best_per_condition,
                              meta=meta, chunk_kwargs={"wells": wells, "n": per_condition},
                              aggregate_kwargs={"n": per_condition}, combine_kwargs={"n": per_condition})
    best = client.compute(reduced, sync=True) if client is not None else reduced.compute()
    order = {name: i for i, name in enumerate(class_names)}
    best = best.sort_values("condition", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    return best.drop(columns="exemplar_score").assign(plate=best["plate"].astype(str), well=best["well"].astype(str))


def _class_wells(layouts: dict[str, pd.DataFrame | None], class_column: str,
                 class_names: Sequence[str]) -> pd.DataFrame:
    """Columns ``plate``, ``well``, ``condition``: the selected plates' wells of each of ``class_names``."""
    if not any(layout is not None and class_column in layout.columns for layout in layouts.values()):
        raise ScreenxaiError(f"no plate has the layout column {class_column!r} to choose exemplar cells by")
    frames = [pd.DataFrame({"plate": plate, "well": layout["well"].astype(str),
                            "condition": layout[class_column].astype(str)})
              for plate, layout in layouts.items() if layout is not None and class_column in layout.columns]
    wells = pd.concat(frames, ignore_index=True)
    return wells[wells["condition"].isin([str(name) for name in class_names])].reset_index(drop=True)


def _best_of_classes(part: pd.DataFrame, wells: pd.DataFrame, n: int) -> pd.DataFrame:
    """A partition's ``n`` best cells of each class found in ``wells`` (a reduction's chunk)."""
    part = part.astype({"plate": str, "well": str})
    labelled = part.merge(wells, on=["plate", "well"], how="inner")
    if labelled.empty:
        return labelled.assign(exemplar_score=pd.Series(dtype="float64"))
    score = np.full(len(labelled), np.nan)
    for condition, rows in labelled.groupby("condition").indices.items():
        score[rows] = labelled[class_column_name(condition)].to_numpy(np.float64)[rows]
    return _best_per_condition(labelled.assign(exemplar_score=score), n)


def _best_per_condition(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` rows per condition of highest ``exemplar_score``, cells of the training set last, ties by
    ``cell_id``."""
    order = [c for c in ("in_training", "exemplar_score", "cell_id") if c in frame.columns]
    ascending = [c != "exemplar_score" for c in order]
    return frame.sort_values(order, ascending=ascending, kind="stable").groupby("condition", sort=False).head(n)


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


def choose_gallery(cells: dd.DataFrame, fields: pd.DataFrame | None, per_end: int,
                   client: Client | None = None) -> pd.DataFrame:
    """Per attribute score column and end (``low``, ``high``), the ``per_end`` cells of most extreme score.

    First the most extreme cell of each of the most extreme wells, so that
    one well does not fill a gallery; further cells of the same wells only
    when fewer wells have scores. Cells without a score, touching the
    field's edge (``border``) or of a field ``fields`` flags (``GALLERY_QC``)
    are left out. A tree reduction on ``client``'s cluster keeps what a pick
    can need (``_extreme_wells``), so only the chosen rows reach the client.
    Columns ``GALLERY_COLUMNS``: ``attribute`` is the id, ``place`` 0 the
    most extreme cell of its end; empty without attribute scores.
    """
    columns = [c for c in cells.columns if c.startswith("attribute_")]
    meta = pd.DataFrame({"attribute": pd.Series(dtype=object), "end": pd.Series(dtype=object),
                         "place": pd.Series(dtype="int64"), "plate": pd.Series(dtype=object),
                         "well": pd.Series(dtype=object), "field": pd.Series(dtype="int64"),
                         "label": pd.Series(dtype="int64"), "cell_id": pd.Series(dtype=object),
                         "score": pd.Series(dtype="float64")})
    if not columns or per_end < 1:
        return meta
    kept = cells[[*GALLERY_KEYS, *(["border"] if "border" in cells.columns else []), *columns]]
    reduced = kept.reduction(_gallery_candidates, aggregate=_gallery_pick, combine=_extreme_wells, meta=meta,
                             chunk_kwargs={"columns": columns, "flagged": flagged_fields(fields), "n": per_end},
                             aggregate_kwargs={"n": per_end}, combine_kwargs={"n": per_end})
    return client.compute(reduced, sync=True) if client is not None else reduced.compute()


def flagged_fields(fields: pd.DataFrame | None) -> frozenset[str]:
    """``plate/well/field`` of every field a ``GALLERY_QC`` flag marks."""
    if fields is None or not len(fields):
        return frozenset()
    flags = [c for c in GALLERY_QC if c in fields]
    marked = fields[fields[flags].fillna(False).astype(bool).any(axis=1)] if flags else fields.iloc[:0]
    return frozenset(f"{p}/{w}/{f}" for p, w, f in zip(marked["plate"], marked["well"], marked["field"]))


def _gallery_candidates(part: pd.DataFrame, columns: list[str], flagged: frozenset[str], n: int) -> pd.DataFrame:
    """A partition's scorable cells, one row per (cell, attribute, end), pruned by ``_extreme_wells`` (the chunk).

    ``key`` orders each end from its most extreme cell: the score at the
    low end, minus the score at the high end.
    """
    part = part.astype({"plate": str, "well": str})
    keep = ~(part["plate"] + "/" + part["well"] + "/" + part["field"].astype(str)).isin(flagged)
    if "border" in part:
        keep &= ~part["border"].astype(bool)
    long = part.loc[keep].melt(id_vars=GALLERY_KEYS, value_vars=columns, var_name="attribute", value_name="score")
    long = long.assign(attribute=long["attribute"].str.removeprefix("attribute_").astype(object),
                       cell_id=long["cell_id"].astype(object), score=long["score"].astype(np.float64))
    long = long[np.isfinite(long["score"])]
    ends = pd.concat([long.assign(end="low", key=long["score"]), long.assign(end="high", key=-long["score"])],
                     ignore_index=True)
    return _extreme_wells(ends, n)


def _extreme_wells(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """Per attribute and end, the ``n`` most extreme cells of each of the ``n`` wells whose best cell is most extreme.

    Every cell a final pick can choose survives (a reduction's combine): a
    well outside a part's ``n`` best is behind ``n`` wells at least as
    extreme. Sorted by ``key``, ties by ``cell_id``.
    """
    frame = frame.sort_values(["key", "cell_id"], kind="stable")
    frame = frame[frame.groupby(GALLERY_WELL, sort=False).cumcount() < n]
    best = frame.drop_duplicates(GALLERY_WELL)
    wells = best[best.groupby(["attribute", "end"], sort=False).cumcount() < n][GALLERY_WELL]
    return frame.merge(wells, on=GALLERY_WELL).sort_values(["key", "cell_id"], kind="stable")


def _gallery_pick(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """Per attribute and end, ``n`` cells: each well's most extreme cell, wells in order, before any well's second
    (the reduction's aggregate); ``place`` numbers them from the most extreme."""
    frame = _extreme_wells(frame, n)
    frame = frame.assign(in_well=frame.groupby(GALLERY_WELL, sort=False).cumcount())
    chosen = frame.sort_values(["in_well", "key", "cell_id"], kind="stable").groupby(["attribute", "end"]).head(n)
    chosen = chosen.sort_values(["attribute", "end", "key", "cell_id"], kind="stable")
    chosen = chosen.assign(place=chosen.groupby(["attribute", "end"], sort=False).cumcount().astype("int64"))
    return chosen[GALLERY_COLUMNS].reset_index(drop=True)


def recut_fields(tasks: Sequence[FieldTask], configs: dict[str, CellConfig]) -> tuple[np.ndarray, pd.DataFrame]:
    """The crops and cell table of ``tasks``' fields, cut again as the cell stage cut them; a failed field raises."""
    crops, tables = [], []
    for task in tasks:
        result = cut_field(task, configs[task.plate_name])
        if result.status["status"] != "done":
            raise ScreenxaiError(f"field {task.plate_name}/{task.well}/{task.field}: {result.status['error']}")
        crops.append(result.crops)
        tables.append(result.table)
    return np.concatenate(crops), pd.concat(tables, ignore_index=True)


def rows_of(table: pd.DataFrame, cell_ids: Sequence[str]) -> np.ndarray:
    """Positions of ``cell_ids`` in ``table``."""
    return pd.Series(np.arange(len(table)), index=table["cell_id"]).loc[list(cell_ids)].to_numpy()


def cut_cells(task: FieldTask, config: CellConfig, cell_ids: Sequence[str]) -> np.ndarray:
    """The normalised crops of ``cell_ids`` of one field, re-cut as the cell stage cut them (on a worker)."""
    crops, table = recut_fields([task], {task.plate_name: config})
    return crops[rows_of(table, cell_ids)]


def gallery_crops(client: Client, chosen: pd.DataFrame, tasks: Sequence[FieldTask],
                  configs: dict[str, CellConfig]) -> np.ndarray:
    """The crops of ``chosen``'s cells in its row order, one CPU task per field holding any."""
    unique = chosen.drop_duplicates("cell_id")
    per_field = unique.groupby(["plate", "well", "field"], sort=False)["cell_id"].agg(list)
    by_key = {(t.plate_name, t.well, t.field): t for t in tasks}
    needed = [by_key[(str(p), str(w), int(f))] for p, w, f in per_field.index]
    futures = client.map(cut_cells, needed, [configs[t.plate_name] for t in needed], per_field.tolist(), pure=False)
    crops = {}
    for ids, cut in zip(per_field, client.gather(futures), strict=True):
        crops.update(zip(ids, cut))
    return np.stack([crops[c] for c in chosen["cell_id"]])


def with_gallery(dataset: xr.Dataset, chosen: pd.DataFrame, crops: np.ndarray,
                 configs: dict[str, CellConfig]) -> xr.Dataset:
    """``dataset`` with each attribute's gallery: the chosen cells' crops (normalised and raw), scores and ids.

    Laid along the counterfactuals' ``attribute`` (a row per treatment and
    rank, looked up by its id), ``end`` and ``place``; NaN and "" where an
    end has fewer cells.
    """
    by = "attribute_id" if "attribute_id" in dataset.coords else "attribute"
    ids = np.array([str(a) for a in dataset[by].values])
    shape = (len(ids), len(GALLERY_ENDS), int(chosen["place"].max()) + 1)
    image, raw = np.full((2, *shape, *crops.shape[1:]), np.nan, np.float32)
    score = np.full(shape, np.nan)
    labels = {name: np.full(shape, "", dtype=object) for name in ("cell_id", "plate", "well")}
    for k, row in enumerate(chosen.itertuples(index=False)):
        for i in np.flatnonzero(ids == str(row.attribute)):
            where = (i, GALLERY_ENDS.index(row.end), row.place)
            image[where] = crops[k]
            raw[where] = denormalise(crops[k], configs[str(row.plate)].normalisation)
            score[where] = row.score
            for name in labels:
                labels[name][where] = str(getattr(row, name))
    dims = ("attribute", "end", "place")
    return dataset.assign(gallery=((*dims, "c", "y", "x"), image), gallery_raw=((*dims, "c", "y", "x"), raw),
                          gallery_score=(dims, score)).assign_coords(
        end=np.array(GALLERY_ENDS, dtype=object), place=np.arange(shape[2], dtype=np.int64),
        gallery_cell=(dims, labels["cell_id"]), gallery_plate=(dims, labels["plate"]),
        gallery_well=(dims, labels["well"]))


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
    crops, table = recut_fields(tasks, configs)
    rows = rows_of(table, cell_ids)
    directions, attributes = models.explanations
    bundle = models.bundle
    chosen = table.iloc[rows]
    pairs = strip_pairs(conditions, attributes, bundle.class_names[1:])
    dataset = make_counterfactuals(bundle["autoencoder"], directions, attributes, crops[rows],
                                   chosen, bundle.channel_names, alphas, on_step=_report_step, rendered=pairs)
    dataset = with_raw_intensities(dataset, chosen["plate"].astype(str).tolist(), configs)
    return dataset.assign_coords(condition=("cell", np.asarray(conditions, dtype=object)))


def _report_step(done: int, total: int) -> None:
    """Send the rendering's progress to the client as a worker event (``PROGRESS_TOPIC``)."""
    get_worker().log_event(PROGRESS_TOPIC, {"done": done, "total": total})


def with_raw_intensities(dataset: xr.Dataset, plates: Sequence[str], configs: dict[str, CellConfig]) -> xr.Dataset:
    """``dataset`` with ``image_raw`` and ``original_raw``: its images in each cell's plate's intensity units."""
    image = np.empty(dataset["image"].shape, np.float32)
    original = np.empty(dataset["original"].shape, np.float32)
    for i, plate in enumerate(plates):
        stats = configs[plate].normalisation
        image[i] = denormalise(dataset["image"].to_numpy()[i], stats)
        original[i] = denormalise(dataset["original"].to_numpy()[i], stats)
    return dataset.assign(image_raw=(dataset["image"].dims, image), original_raw=(dataset["original"].dims, original))


def counterfactual_stage(client: Client, exemplars: pd.DataFrame, tasks: Sequence[FieldTask],
                         configs: dict[str, CellConfig], path: Path,
                         on_progress: Callable[[int, int], None] | None = None,
                         gallery: pd.DataFrame | None = None) -> Path:
    """Render ``exemplars`` in one task on the GPU worker (when there is one) and write the Zarr at ``path``.

    ``gallery`` (``choose_gallery``'s rows) is cut by CPU tasks meanwhile
    and stored beside the exemplars (``with_gallery``).
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
        crops = gallery_crops(client, gallery, tasks, configs) if gallery is not None and len(gallery) else None
        dataset = future.result()
    finally:
        if on_progress is not None:
            client.unsubscribe_topic(PROGRESS_TOPIC)
    if crops is not None:
        dataset = with_gallery(dataset, gallery, crops, configs)
    return write_counterfactuals(dataset, path)
