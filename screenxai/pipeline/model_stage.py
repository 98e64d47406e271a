"""The model stage: score the cells of several fields in one batch on a (GPU) worker and write their files.

Cell-stage tasks (``cut_field``) return each field's crops and table in
memory; a model task receives the results of a group of fields (gathered
across fields so the device sees full batches), runs the classifier, the
semantic encoder and, when the bundle has one, the interpretable formula,
then writes for each field of its group:

- ``cells/plate=P/well=W/field-F.parquet``: the cell table with class
  probabilities, attribute scores, contrast readouts (``contrast_d{k}``), the
  formula's value and ``in_training``;
- ``embeddings/plate=P/well=W/field-F.parquet``: ``z_sem`` per cell
  (``z_0`` ... ``z_{d-1}``), apart from the narrow cell table.

Both are written under a temporary name, renamed, then marked done; the
cells file's marker is written last, so a field counts as done only once
both files are complete.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from screenxai.cells import CellConfig, process_field
from screenxai.models.batches import map_batches
from screenxai.models.classifier import predict_proba
from screenxai.pipeline.allocator import release_free_memory
from screenxai.pipeline.bundle_plugin import worker_models
from screenxai.pipeline.cell_stage import PARTITION_COLUMNS, FieldTask, cached_plate, done_status, failed_status
from screenxai.pipeline.sinks import write_parquet_atomic

EMBEDDINGS = "embeddings"


@dataclass
class FieldCells:
    """One field's outcome of the cell stage, held in memory until its model task scores it."""

    status: dict
    table: pd.DataFrame | None = None
    crops: np.ndarray | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def cut_field(task: FieldTask, config: CellConfig) -> FieldCells:
    """Read, segment, crop and measure one field; failures are kept as the field's status."""
    start = time.perf_counter()
    try:
        batch = process_field(cached_plate(task.plate_url, task.plate_name), task.well, task.field, config)
        return FieldCells(done_status(task.identity, batch.qc), batch.table, batch.crops, time.perf_counter() - start)
    except Exception as err:  # recorded per field; the rest of the plate goes on
        return FieldCells({**failed_status(task.identity, err), "seconds": time.perf_counter() - start})
    finally:
        release_free_memory()  # the field's temporaries go back to the system, not to this worker's heap


def class_column_name(name: str) -> str:
    """``p_<class>`` with the class name's non-word characters replaced by ``_``."""
    return "p_" + re.sub(r"\W", "_", str(name))


def embeddings_path(out: str | Path, plate: str, well: str, field_index: int) -> Path:
    """Where a field's ``z_sem`` rows go."""
    return Path(out) / EMBEDDINGS / f"plate={plate}" / f"well={well}" / f"field-{field_index}.parquet"


def _encode(autoencoder, crops: np.ndarray, batch_size: int) -> np.ndarray:
    device = next(autoencoder.parameters()).device
    with torch.no_grad():
        parts = map_batches(lambda batch: autoencoder.encode(batch.to(device)).float().cpu(),
                            torch.from_numpy(np.ascontiguousarray(crops)), batch_size)
    return torch.cat(parts).numpy() if parts else np.zeros((0, autoencoder.config.z_dim), np.float32)


def _single_formula(interpretable):
    """The bundle's interpretable model when it is one two-class formula (its value is ``formula_value``), else None.

    A screen of many treatments has one formula per treatment; their values
    are not per-cell columns.
    """
    from screenxai.interpret import InterpretableModel

    return interpretable if isinstance(interpretable, InterpretableModel) else None


def score_fields(results: Sequence[FieldCells], tasks: Sequence[FieldTask], training_cells: frozenset[str],
                 batch_size: int = 256) -> list[dict]:
    """Score the cells of ``results`` in batches and write each field's cell and embedding files.

    Returns each field's status row (failed fields pass through untouched).
    """
    models = worker_models()
    bundle = models.bundle
    done = [(r, t) for r, t in zip(results, tasks, strict=True) if r.status["status"] == "done"]
    start = time.perf_counter()
    crops = (np.concatenate([r.crops for r, _ in done]) if done
             else np.zeros((0, len(bundle.channel_names), bundle.crop_size, bundle.crop_size), np.float32))
    probabilities = (predict_proba(bundle["classifier"], crops, batch_size) if len(crops)
                     else np.zeros((0, len(bundle.class_names)), np.float32))
    z = _encode(bundle["autoencoder"], crops, batch_size) if "autoencoder" in bundle.models else None
    single = _single_formula(models.interpretable)
    formula = single.logit(crops) if single is not None and len(crops) else None
    attributes = None
    if models.explanations is not None and z is not None:
        from screenxai.explain import contrast_scores_from_latents, scores_from_latents

        directions, table_of_attributes = models.explanations
        latents = torch.from_numpy(z)
        attributes = pd.concat([scores_from_latents(directions, table_of_attributes, latents),
                                contrast_scores_from_latents(directions, latents)], axis=1)
    seconds = (time.perf_counter() - start) / max(len(done), 1)
    offset = 0
    for result, task in done:
        n = len(result.table)
        rows = slice(offset, offset + n)
        offset += n
        table = result.table.drop(columns=list(PARTITION_COLUMNS)).reset_index(drop=True)
        for k, name in enumerate(bundle.class_names):
            table[class_column_name(name)] = probabilities[rows, k].astype(np.float32)
        if single is not None:
            table["formula_value"] = formula[rows].astype(np.float64)
        if attributes is not None:
            for column in attributes.columns:
                table[column] = attributes[column].to_numpy()[rows]
        table["in_training"] = table["cell_id"].isin(training_cells)
        if z is not None:
            embedding = pd.DataFrame(z[rows], columns=[f"z_{i}" for i in range(z.shape[1])])
            embedding.insert(0, "cell_id", table["cell_id"].to_numpy())
            embedding.insert(0, "label", table["label"].to_numpy())
            embedding.insert(0, "field", table["field"].to_numpy())
            write_parquet_atomic(embedding, embeddings_path(task.out, task.plate_name, task.well, task.field))
        result.status["seconds"] = result.seconds + seconds
        write_parquet_atomic(table, task.cells_path, marker=result.status)
    for result in results:
        result.status.setdefault("seconds", result.seconds)
    release_free_memory()  # the batch's activations and tables go back to the system
    return [r.status for r in results]
