"""``screenxai run``: plates in, per-cell and per-well Parquet tables out, on a Dask cluster.

Without a bundle the run is the cell stage (segmentation or plate labels,
crops, morphology features, QC) with one task per field writing its file.
With a bundle, cell-stage tasks hand their crops to model-stage tasks, one
per group of ``fields_per_batch`` fields (so the device sees full batches),
submitted with ``resources={"GPU": 1}`` when a worker declares a GPU; the
models reach the workers through a ``BundlePlugin``. Only a few groups are
in flight at once (``screenxai.pipeline.batching``), so crops are cut just
before they are scored. The per-well tables are then reduced from the cell
files on the cluster: one row per well, never every cell, reaches the client.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import platform
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version
from pathlib import Path

import dask.dataframe as dd
import pandas as pd
from distributed import Client, Future

from screenxai import __version__
from screenxai.cells import CellConfig, fit_normalisation
from screenxai.cells.field import labels_read
from screenxai.errors import PlateError, ScreenxaiError
from screenxai.plate.reader import Plate, missing_chunks, open_plate
from screenxai.io import atomic_folder, write_json_atomic
from screenxai.models.bundle import Bundle, check_channels, load_bundle, verify_bundle
from screenxai.pipeline.batching import batch_fields, batches_in_flight, bounded_completion
from screenxai.pipeline.bundle_plugin import EXPLAIN_FOLDER, BundlePlugin
from screenxai.pipeline.cell_stage import FieldTask, run_field
from screenxai.pipeline.cluster import model_capacity
from screenxai.pipeline.counterfactual_stage import (GALLERY_PER_END, choose_exemplars, choose_gallery,
                                                     choose_well_exemplars, counterfactual_stage)
from screenxai.pipeline.model_stage import cut_field, score_fields
from screenxai.pipeline.sinks import is_done, read_marker, write_parquet_atomic
from screenxai.pipeline.summary import aggregate_wells, attribute_tables, field_qc_flags, well_table, with_layouts
from screenxai.plate.conditions import Conditions
from screenxai.profiles import well_profiles

FIELDS_PER_BATCH = 8
EXEMPLARS_PER_CONDITION = 4
DEPENDENCIES = ("dask", "distributed", "zarr", "ome-zarr", "xarray", "torch", "diffusers", "pandas", "pyarrow",
                "scikit-image")


@dataclass
class RunResult:
    """Where a run wrote its tables, and the per-well and per-field tables it made."""

    out: Path
    wells: pd.DataFrame
    fields: pd.DataFrame
    seconds: float
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)


def field_tasks(plates: Sequence[Plate], out: Path, wells: Sequence[str] | None = None) -> list[FieldTask]:
    """One task per field of the selected wells of every plate."""
    names = [p.name for p in plates]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ScreenxaiError(f"plates share the name(s) {clashes}; every plate of a run needs its own name")
    return [FieldTask(plate.url, plate.name, key.well, key.field, str(out))
            for plate in plates for key in plate.field_keys(list(wells) if wells else None)]


def run_cells(plates: Sequence[Plate], out: Path, client: Client, config: CellConfig | None = None,
              wells: Sequence[str] | None = None,
              on_field: Callable[[dict], None] | None = None, bundle: str | Path | None = None,
              fields_per_batch: int = FIELDS_PER_BATCH, resume: bool = False, strict: bool = False,
              exemplars_per_condition: int = EXEMPLARS_PER_CONDITION, exemplars_per_well: int = 0,
              on_counterfactual: Callable[[int, int], None] | None = None) -> RunResult:
    """Run the cell stage (and, with ``bundle``, the model stage) of every field and reduce the per-well table.

    ``on_field`` is called with each field's status row as it completes
    (progress bars), ``on_counterfactual(done, total)`` as the exemplars are
    rendered. Writes ``cells/`` (and ``embeddings/`` with a bundle),
    ``fields.parquet``, ``wells.parquet``, ``profiles.parquet`` (and ``failures.parquet`` when
    fields failed) and ``manifest.json``. A bundle whose channels or crop
    size do not fit a plate is refused before any work starts.

    With a bundle that has attributes, ``attributes.parquet`` and
    ``readouts.parquet`` hold their screen statistics, and
    ``counterfactuals.zarr`` renders ``exemplars_per_condition`` cells of
    each class and ``exemplars_per_well`` typical cells of every well along
    every attribute (a second, small graph).

    An output folder holding a run is refused unless ``resume``: then only
    the fields without a complete file are computed (failed fields are
    tried again), provided the plates, wells, cell configuration and bundle
    are those of the run found. ``strict`` stops at the first failed field or
    field whose image or plate labels have chunks missing (``raise_for_strict``).
    """
    config = config or CellConfig()
    out = Path(out)
    loaded = load_bundle(bundle) if bundle is not None else None
    for plate in plates if loaded is not None else ():
        check_channels(loaded, plate.channel_names)
    tasks = field_tasks(plates, out, wells)
    record = run_record(plates, wells, config, loaded)
    claimed = claim_output(out, record, resume)
    by_name = {p.name: p for p in plates}
    check = (lambda row: raise_for_strict(row, by_name, config)) if strict else None
    with _unclaimed_on_failure(out, tasks, claimed):
        start = time.perf_counter()
        rows, todo = _finished_fields(tasks, resume, lambda row: with_missing_chunks(row, by_name, config), check,
                                      on_field)
        configs = model_configs(plates, config, loaded) if loaded is not None else {}
        rows += _computed_fields(client, todo, config, configs, loaded, fields_per_batch, check, on_field)
        fields, failures = field_tables(rows)
        cells = dd.read_parquet(out / "cells")
        aggregates = aggregate_wells(out / "cells", client)
        layouts = {p.name: p.layout for p in plates}
        wells_table = well_table(aggregates, fields, layouts)
        if loaded is not None and (loaded.path / EXPLAIN_FOLDER).is_dir():
            wells_table = _write_attribute_tables(out, aggregates, layouts, loaded.path / EXPLAIN_FOLDER,
                                                  wells_table, loaded)
            if exemplars_per_condition > 0 or exemplars_per_well > 0:
                if not todo:  # a resumed run with nothing left: the models still have to reach the workers
                    client.register_plugin(BundlePlugin.from_path(loaded.path))
                exemplars = _exemplars(cells, aggregates, layouts, loaded, exemplars_per_condition, exemplars_per_well,
                                       client)
                _render_counterfactuals(client, exemplars, cells, fields, tasks, configs, out, on_counterfactual)
        seconds = time.perf_counter() - start
        _write_run_tables(out, fields, wells_table, failures, loaded)
        write_manifest(out, plates, config, fields, seconds, record, loaded)
        return RunResult(out, wells_table, fields, seconds, failures)


def _render_counterfactuals(client: Client, exemplars: pd.DataFrame, cells: dd.DataFrame, fields: pd.DataFrame,
                            tasks: Sequence[FieldTask], configs: dict[str, CellConfig], out: Path,
                            on_progress: Callable[[int, int], None] | None) -> None:
    """Write ``counterfactuals.zarr``: the exemplars along their attributes and each attribute's gallery.

    Nothing is written when there is no exemplar (the selected wells hold
    none of the bundle's classes).
    """
    if len(exemplars) == 0:
        return
    gallery = choose_gallery(cells, fields, GALLERY_PER_END, client)
    counterfactual_stage(client, exemplars, tasks, configs, out / "counterfactuals.zarr", on_progress=on_progress,
                         gallery=gallery)


def _finished_fields(tasks: Sequence[FieldTask], resume: bool, complete: Callable[[dict], dict],
                     check: Callable[[dict], None] | None,
                     on_field: Callable[[dict], None] | None) -> tuple[list[dict], list[FieldTask]]:
    """The status rows of fields a resumed run finished, passed through ``complete``, and the tasks still to run."""
    rows, todo = [], []
    for task in tasks:
        finished = read_marker(task.cells_path) if resume else None
        if not finished:
            todo.append(task)
            continue
        finished = complete(finished)
        if check is not None:
            check(finished)
        rows.append(finished)
        if on_field is not None:
            on_field(finished)
    return rows, todo


def _computed_fields(client: Client, todo: Sequence[FieldTask], config: CellConfig, configs: dict[str, CellConfig],
                     loaded: Bundle | None, fields_per_batch: int, check: Callable[[dict], None] | None,
                     on_field: Callable[[dict], None] | None) -> list[dict]:
    """Run the cell (and model) stage of ``todo`` on the cluster; their status rows as they complete."""
    if not todo:
        return []
    if loaded is None:
        token = uuid.uuid4().hex[:8]
        futures = client.map(run_field, todo, config=config, pure=False,
                             key=[f"cells-{t.plate_name}-{t.well}-{t.field}-{token}" for t in todo])
        completed = bounded_completion(client, iter(futures), len(futures))
    else:
        completed = _model_graph(todo, client, configs, loaded, fields_per_batch)
    rows = []
    try:
        for future in completed:
            result = future.result()
            for row in result if isinstance(result, list) else [result]:
                if check is not None:
                    check(row)
                rows.append(row)
                if on_field is not None:
                    on_field(row)
    finally:  # an error or an interrupt (Ctrl-C, a failing callback) cancels the fields still in flight
        completed.close()
    return rows


def field_tables(rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fields table with its QC flags, and the failed fields' errors; refused when every field failed."""
    fields = pd.DataFrame(rows).sort_values(["plate", "well", "field"]).reset_index(drop=True)
    failures = fields[fields["status"] == "failed"][["plate", "well", "field", "error"]]
    fields = field_qc_flags(fields.drop(columns=[c for c in ("traceback",) if c in fields]))
    if (fields["status"] != "done").all():
        raise ScreenxaiError(f"every field failed; first error: {failures['error'].iloc[0]}")
    return fields, failures


def _write_run_tables(out: Path, fields: pd.DataFrame, wells: pd.DataFrame, failures: pd.DataFrame,
                      loaded: Bundle | None) -> None:
    """Write the field, well, profile and failure tables, and the bundle and its formula table beside them."""
    write_parquet_atomic(fields, out / "fields.parquet")
    write_parquet_atomic(wells, out / "wells.parquet")
    write_parquet_atomic(well_profiles(wells), out / "profiles.parquet")
    if not failures.empty:
        write_parquet_atomic(failures, out / "failures.parquet")
    if loaded is None:
        return
    if loaded.path.resolve() != (out / "bundle").resolve():
        copy_bundle(loaded.path, out / "bundle")
    interpretable = out / "bundle" / "interpretable" / "interpretable.parquet"
    if interpretable.exists():
        write_parquet_atomic(pd.read_parquet(interpretable), out / "interpretable.parquet")


def with_missing_chunks(row: dict, plates: dict[str, Plate], config: CellConfig) -> dict:
    """A finished field's status row, with ``missing_chunks`` and its flag counted now when the row lacks them.

    Rows written before the count existed lack it; the field's arrays are
    still in the plate, so a resumed run counts them rather than guess.
    """
    if "missing_chunks" in row or row["status"] != "done":
        return row
    opened = plates[row["plate"]].open_field(row["well"], row["field"])
    count = opened.missing_chunks(labels_read(config, row.get("label_source", "")))
    return {**row, "missing_chunks": count, "qc_missing_chunks": count > 0}


def raise_for_strict(row: dict, plates: dict[str, Plate], config: CellConfig) -> None:
    """Raise what stops a ``--strict`` run at a field's status row: the field failed, or its arrays lack chunks.

    The arrays are the field's image and the plate labels its cells were
    found with; the error names each that lacks chunks. Without
    ``--strict`` such a field is recorded (failed, or done and flagged
    ``qc_missing_chunks``) and the run goes on.
    """
    where = f"field {row['plate']}/{row['well']}/{row['field']}"
    if row["status"] == "failed":
        raise ScreenxaiError(f"{where} failed (--strict): {row['error']}")
    if row.get("missing_chunks", 0) > 0:
        plate = plates[row["plate"]]
        arrays = plate.open_field(row["well"], row["field"]).arrays(labels_read(config, row["label_source"]))
        counts = {path: missing_chunks(array) for path, array in arrays.items()}
        lacking = [path for path, count in counts.items() if count]
        named = (" and ".join(f"{counts[path]} chunk(s) of array {path}" for path in lacking)
                 or f"{row['missing_chunks']} chunk(s) of its arrays {', '.join(arrays)}")  # restored since counted
        fills = " or ".join(sorted({str(arrays[path].fill_value) for path in lacking or arrays}))
        raise PlateError(f"{where}: {named} are missing from {plate.url} (--strict stops here; without it the "
                         f"absent chunks read as {fills} and the field is flagged qc_missing_chunks)")


RUN_RECORD = ".screenxai-run.json"


def run_record(plates: Sequence[Plate], wells: Sequence[str] | None, config: CellConfig,
               bundle: Bundle | None) -> dict:
    """What a run's outputs depend on; a resumed run must match it, and the manifest's ``config_hash`` is its hash."""
    return {"plates": [p.url for p in plates], "wells": list(wells) if wells else None,
            "cells": _jsonable(asdict(config)), "bundle": None if bundle is None else bundle_fingerprint(bundle.path)}


def record_hash(record: dict) -> str:
    """SHA-256 of a run record (``run_record``) in canonical JSON."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def bundle_fingerprint(path: Path) -> str:
    """The bundle's content hash: the hash of its manifest of every file (``verify_bundle``)."""
    return verify_bundle(path)


def claim_output(out: Path, record: dict, resume: bool) -> bool:
    """Refuse a folder holding another run (or any run, without ``resume``); record this run's settings.

    Returns whether this run created the record (False when it resumes one).
    """
    path = out / RUN_RECORD
    if path.exists():
        found = json.loads(path.read_text())
        if not resume:
            raise ScreenxaiError(f"{out} already holds a run; pass --resume to continue it, --overwrite to replace "
                                 "it, or choose another output folder")
        changed = sorted(k for k in record if found.get(k) != record[k])
        if changed:
            raise ScreenxaiError(f"cannot resume the run in {out}: its {', '.join(changed)} differ from this "
                                 "run's (another bundle, configuration, plates or wells); pass --overwrite instead "
                                 "of --resume to replace it, or choose another output folder")
        return False
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return True


def clear_run(out: Path, keep: Sequence[Path] = ()) -> None:
    """Remove the run in ``out`` (tables, cells, bundle, report, ...), but not the paths in ``keep`` (plates).

    A non-empty folder without a run record or run bundle is refused, so
    ``--overwrite`` never empties a folder that holds something else. The
    record goes last: a clearing cut short still reads as a run.
    """
    if not out.is_dir():
        return
    if not any((out / name).exists() for name in (RUN_RECORD, "bundle", "bundle.work")) and any(out.iterdir()):
        raise ScreenxaiError(f"{out} holds no screenxai run to overwrite; choose an empty or new output folder")
    kept = [Path(k).resolve() for k in keep]
    for entry in sorted(out.iterdir(), key=lambda e: e.name == RUN_RECORD):
        path = entry.resolve()
        if any(path == k or path in k.parents for k in kept):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextmanager
def _unclaimed_on_failure(out: Path, tasks: Sequence[FieldTask], claimed: bool) -> Iterator[None]:
    """Drop the run record this run wrote when it fails before writing any field: a plain rerun then starts afresh."""
    try:
        yield
    except BaseException:
        if claimed and not any(is_done(t.cells_path) for t in tasks):
            (out / RUN_RECORD).unlink(missing_ok=True)
        raise


def model_configs(plates: Sequence[Plate], config: CellConfig, bundle: Bundle) -> dict[str, CellConfig]:
    """Per plate: the bundle's crop size and intensities normalised on the plate's own negative controls."""
    return {p.name: replace(config, crop_size=bundle.crop_size, normalisation=fit_normalisation(p)) for p in plates}


def _model_graph(tasks: list[FieldTask], client: Client, configs: dict[str, CellConfig], bundle: Bundle,
                 fields_per_batch: int) -> Generator[Future, None, None]:
    """Cell tasks per field feeding model tasks per group of fields; yields the model tasks as they complete.

    Groups are submitted a few at a time (``batches_in_flight``), so cut
    crops wait in worker memory only for the groups about to be scored.
    """
    client.register_plugin(BundlePlugin.from_path(bundle.path))
    training: dict[str, set[str]] = {}
    for cell_id in bundle.config["provenance"].get("training_cells", []):
        training.setdefault(cell_id.rsplit("/", 1)[0], set()).add(cell_id)
    resources, model_workers, threads = model_capacity(client)
    groups = batch_fields(tasks, fields_per_batch, max(1, model_workers))
    token = uuid.uuid4().hex[:8]

    def submit(group: list[FieldTask]) -> Future:
        cut = [client.submit(cut_field, t, configs[t.plate_name], pure=False,
                             key=f"cut-{t.plate_name}-{t.well}-{t.field}-{token}") for t in group]
        seen = frozenset().union(*(training.get(f"{t.plate_name}/{t.well}/{t.field}", set()) for t in group))
        return client.submit(score_fields, cut, group, seen, resources=resources, pure=False,
                             key=f"score-{group[0].plate_name}-{group[0].well}-{group[0].field}-{token}")

    in_flight = batches_in_flight(max(1, model_workers), threads, len(groups[0]))
    return bounded_completion(client, map(submit, groups), in_flight)


def _exemplars(cells: dd.DataFrame, aggregates: pd.DataFrame, layouts: dict, bundle: Bundle, per_condition: int,
               per_well: int, client: Client) -> pd.DataFrame:
    """The cells to render: ``per_condition`` of each class, then ``per_well`` of each well (each cell once)."""
    class_column = bundle.config["class_column"]
    chosen = []
    if per_condition > 0:
        chosen.append(choose_exemplars(cells, layouts, class_column, bundle.class_names, per_condition, client))
    if per_well > 0:
        chosen.append(choose_well_exemplars(cells, aggregates, layouts, class_column, bundle.class_names, per_well,
                                            client))
    return pd.concat(chosen, ignore_index=True).drop_duplicates("cell_id").reset_index(drop=True)


def _write_attribute_tables(out: Path, aggregates: pd.DataFrame, layouts: dict, explain: Path,
                            wells: pd.DataFrame, bundle: Bundle) -> pd.DataFrame:
    """Write ``attributes``, ``treatments``, ``similarity`` (and, two-class, ``readouts``) tables; return ``wells``
    with every attribute id's and contrast readout's SD and robust z."""
    from screenxai.explain import attribute_axis_cosines, load_contrast_readouts, load_directions
    from screenxai.explain.contrast import shift_cosines
    from screenxai.pipeline.treatments import treatment_tables

    directions, attributes = load_directions(explain)
    contrasts = load_contrast_readouts(explain)
    conditions = bundle_conditions(bundle)
    metrics = bundle.config["provenance"].get("classifier_metrics", {})
    auc = metrics.get("auc_vs_negative") or {conditions.treatments[0]: metrics.get("auc", {}).get(
        conditions.treatments[0], float("nan"))}
    try:
        tables = treatment_tables(with_layouts(aggregates, layouts), attributes, conditions, auc,
                                  contrasts=contrasts, axis_cosines=attribute_axis_cosines(directions, attributes),
                                  shift_cosines=shift_cosines(directions, contrasts["treatment"].tolist()))
    except (ValueError, KeyError) as err:  # no negative wells, no dose axis: the attributes without statistics
        write_parquet_atomic(attributes.assign(statistics_error=str(err)), out / "attributes.parquet")
        return wells
    named = tables.attributes
    if conditions.two_class:
        try:
            named, readouts = attribute_tables(aggregates, layouts, named)
            write_parquet_atomic(readouts, out / "readouts.parquet")
        except ValueError:  # no positive controls or no dose axis: no control statistics
            pass
    write_parquet_atomic(named, out / "attributes.parquet")
    write_parquet_atomic(tables.treatments, out / "treatments.parquet")
    write_parquet_atomic(tables.similarity, out / "similarity.parquet")
    spread = aggregates[["plate", "well", *[c for c in aggregates.columns
                                           if c.startswith(("sd_attribute_", "sd_contrast_"))]]]
    return wells.merge(spread, on=["plate", "well"], how="left").merge(tables.well_scores, on=["plate", "well"],
                                                                       how="left")


def bundle_conditions(bundle: Bundle) -> Conditions:
    """The classes a bundle's classifier tells apart: its class column, negative class first, then treatments."""
    names = tuple(bundle.class_names)
    return Conditions(bundle.config["class_column"], names[0], names[1:])


def copy_bundle(source: Path, target: Path) -> None:
    """Put the run's bundle in its output folder (replacing an older copy whole) so the run is self-contained."""
    with atomic_folder(target) as building:
        shutil.copytree(source, building, dirs_exist_ok=True)


def write_manifest(out: Path, plates: Sequence[Plate], config: CellConfig, fields: pd.DataFrame,
                   seconds: float, record: dict, bundle: Bundle | None = None) -> Path:
    """``manifest.json``: versions, config, bundle hash, plates, timings and per-field status.

    ``config_hash`` is the hash of ``record``, the run record that ``--resume`` checks.
    """
    manifest = {
        "screenxai": __version__,
        "python": platform.python_version(),
        "dependencies": {name: version(name) for name in DEPENDENCIES},
        "config": {"cells": _jsonable(asdict(config))},
        "bundle": None if bundle is None else {"path": str(bundle.path), "content_hash": bundle.content_hash},
        "config_hash": record_hash(record),
        "plates": [{"name": p.name, "url": p.url, "ngff_version": p.ngff_version, "wells": len(p.wells),
                    "fields": len(p.field_keys()), "channels": p.channel_names} for p in plates],
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "seconds": round(seconds, 3),
        "fields": fields[["plate", "well", "field", "status", "error", "seconds"]].to_dict(orient="records"),
    }
    return write_json_atomic(out / "manifest.json", manifest)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def open_plates(paths: Sequence[str | Path], layout: str | Path | None = None) -> list[Plate]:
    """Open every plate; one layout CSV, when given, applies to all of them."""
    return [open_plate(path, layout=layout) for path in paths]
