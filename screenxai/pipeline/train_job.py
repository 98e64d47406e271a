"""``screenxai train`` as a Dask job: fill a crop cache with field tasks, then train in one task on a worker.

The client only plans: the cells are cut by workers into the crop cache
(``screenxai.pipeline.crop_cache``), and the training itself is one task,
sent to a worker that declares a ``GPU`` resource when the cluster has one,
so the machine the user types on needs no GPU. Progress travels back as
distributed events on the topic ``TRAIN_TOPIC``.

Everything a run needs to resume lives in its work folder, ``OUT.work``
beside the bundle: the crop cache, the checkpoints of each stage and the
settings they were made with. Running the same command again after an
interruption reuses the cached fields and continues from the last finished
epoch; other settings are refused rather than mixed with the old state.
The work folder is removed once the bundle is written (unless kept).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from distributed import Client, get_worker

from screenxai import __version__
from screenxai.errors import ScreenxaiError
from screenxai.models import latent_checks
from screenxai.models.bundle import load_bundle, seal_bundle
from screenxai.models.presets import get_preset
from screenxai.models.progress import Progress
from screenxai.models.training import (STAGES, check_stages, classifier_from_bundle, save_trained, train_models,
                                       validation_rows)
from screenxai.pipeline.allocator import relax_malloc_thresholds
from screenxai.pipeline.cluster import gpu_resources
from screenxai.pipeline.crop_cache import build_crop_cache, read_crop_cache
from screenxai.io import write_json_atomic
from screenxai.pipeline.sinks import write_parquet_atomic
from screenxai.cells.features import feature_columns
from screenxai.cells.field import nuclear_channel_index, reporter_channel_index
from screenxai.interpret.latent_names import describe_latents, latent_features
from screenxai.models.splits import class_labels
from screenxai.plate.conditions import ConditionError, Conditions, screen_conditions, training_wells
from screenxai.plate.reader import Plate

TRAIN_TOPIC = "screenxai-train"
JOB_STAGES = (*STAGES, "explain", "interpretable")
INTERPRETABLE_FOLDER = "interpretable"
EXPLAIN_FOLDER = "explain"
ADVERSARIAL_CELLS = 64
SETTINGS_NAME = "settings.json"


class TrainJobError(ScreenxaiError):
    """A training job cannot start as asked."""


@dataclass(frozen=True)
class TrainSettings:
    """What ``screenxai train`` trains and on which cells.

    ``class_column`` holds the classes (default: ``compound`` when the
    layout has several treatments, else ``control``) and ``class_names``
    names them, the negative control first (default: read from the layout,
    ``screenxai.plate.conditions``). ``wells`` maps plate names to wells to
    sample; by default the negative wells and each treatment's
    ``top_dose_levels`` highest dose levels (the two controls in a
    negative/positive design).
    At most ``max_cells_per_well`` interior cells are taken per well.
    ``check_cells`` held-out cells (of the classifier's validation wells)
    give the latent checks of the closing summary. The ``explain`` stage
    learns at least ``explain_directions`` directions and ranks them on
    ``explain_cells`` negative-control cells, keeping ``explain_attributes``
    distinct attributes per treatment (``screenxai.explain.fit``); with
    ``explain_guided`` the directions are classifier-guided, otherwise plain
    LatentCLR directions; ``explain_contrast`` adds each treatment's contrast
    direction (``screenxai.explain.contrast``). ``reporter_channel`` is the channel the
    interpretable model's adversarial check reads (default: the first that
    is not the nuclear one). ``torch_threads`` is how many threads
    torch trains with; by default the threads of the worker it runs on
    (``worker_threads``).
    """

    preset: str = "small"
    stages: tuple[str, ...] = JOB_STAGES
    class_column: str | None = None
    class_names: tuple[str, ...] = ()
    top_dose_levels: int = 2
    seed: int = 0
    max_cells_per_well: int | None = 500
    nuclear_channel: str | None = None
    wells: dict[str, list[str]] | None = None
    check_cells: int = 128
    check_steps: int = 10
    explain_cells: int = 32
    explain_directions: int = 10
    explain_attributes: int = 3
    explain_guided: bool = True
    explain_contrast: bool = True
    reporter_channel: str | None = None
    torch_threads: int | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {**asdict(self), "stages": list(self.stages), "class_names": list(self.class_names)}


@dataclass
class TrainResult:
    """What a training job wrote and measured."""

    bundle: Path
    summary: dict
    seconds: float
    fields: list[dict] = field(default_factory=list)


def worker_threads() -> int:
    """Threads the Dask worker running this task was given (cores of the machine outside a worker).

    Torch trains on as many threads as the scheduler allotted the worker, so
    a training task never runs more threads than its worker has cores for:
    several torch threads on busy cores slow training many times over.
    """
    try:
        return max(1, get_worker().state.nthreads)
    except ValueError:  # not in a worker
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def work_folder(out: Path) -> Path:
    """Where a job keeps its crop cache and checkpoints: ``OUT.work`` beside the bundle."""
    return out.with_name(out.name + ".work")


def plate_conditions(plate: Plate, settings: TrainSettings) -> Conditions:
    """The classes of ``plate``'s layout that ``settings`` asks for; ``TrainJobError`` when it has none."""
    if plate.layout is None:
        raise TrainJobError(f"plate {plate.name} ({plate.url}) has no layout to find the classes in; "
                            "give one with --layout")
    try:
        return screen_conditions(plate.layout, settings.class_column, settings.class_names or None,
                                 source=f"layout of plate {plate.name} ({plate.url})")
    except ConditionError as err:
        raise TrainJobError(str(err)) from err


def job_conditions(plates: Sequence[Plate], settings: TrainSettings) -> Conditions:
    """The classes every plate shares (the treatments of all plates together)."""
    found = [plate_conditions(p, settings) for p in plates]
    columns = {c.class_column for c in found}
    negatives = {c.negative for c in found}
    if len(columns) != 1 or len(negatives) != 1:
        raise TrainJobError(f"the plates disagree on the class column or negative class: "
                            f"{sorted(columns)}, {sorted(negatives)}; give --class-column and --classes")
    treatments = tuple(sorted({t for c in found for t in c.treatments}))
    return Conditions(found[0].class_column, found[0].negative, treatments)


def wells_to_sample(plates: Sequence[Plate], settings: TrainSettings) -> dict[str, list[str]]:
    """Each plate's wells to cut: those given, else its negative wells and each treatment's top doses."""
    chosen = {}
    for plate in plates:
        given = (settings.wells or {}).get(plate.name)
        if given:
            missing = sorted(set(given) - set(plate.wells))
            if missing:
                raise TrainJobError(f"plate {plate.name} ({plate.url}) has no well(s) {missing}")
            chosen[plate.name] = list(given)
            continue
        conditions = plate_conditions(plate, settings)
        wells = training_wells(plate.layout, conditions, settings.top_dose_levels)
        if not wells:
            raise TrainJobError(f"plate {plate.name}: no well has {conditions.class_column} in "
                                f"{list(conditions.class_names)}")
        chosen[plate.name] = wells
    return chosen


def check_job_stages(stages: Sequence[str]) -> tuple[str, ...]:
    """``stages`` in the order they run; ``TrainJobError`` naming an unknown one."""
    try:
        return check_stages(stages, JOB_STAGES)
    except ValueError as err:
        raise TrainJobError(str(err)) from err


def _claim_work_folder(work: Path, out: Path, settings: TrainSettings, plates: Sequence[Plate],
                       wells: dict[str, list[str]]) -> None:
    """Create the work folder, or check that the one found holds this job's cells.

    A folder whose cells were cut from other plates or wells, or with other
    sampling, is refused. Checkpoints made with other training settings
    (preset, classes, seed) cannot be resumed and are removed; stages of
    one job (``train`` then ``interpret``) share the folder's crop cache.
    """
    cells = {"plates": [p.url for p in plates], "wells": wells, "preset": settings.preset,
             "max_cells_per_well": settings.max_cells_per_well, "nuclear_channel": settings.nuclear_channel,
             "seed": settings.seed, "screenxai": __version__}
    training = {"class_column": settings.class_column, "class_names": list(settings.class_names),
                "top_dose_levels": settings.top_dose_levels}
    path = work / SETTINGS_NAME
    if path.exists():
        found = json.loads(path.read_text())
        if found.get("cells") != cells:
            raise TrainJobError(f"{work} holds an interrupted training of {out} on other cells (plates, wells, "
                                "sampling or preset); delete it to start afresh, or run the same command to resume")
        if found.get("training") != training:
            shutil.rmtree(work / "checkpoints", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"cells": cells, "training": training})


def _report(progress: Progress) -> None:
    """Send one epoch's progress to the client as a distributed event."""
    try:
        worker = get_worker()
    except ValueError:  # called outside a worker: nobody to tell
        return
    worker.log_event(TRAIN_TOPIC, asdict(progress))


def run_training(cache: str, out: str, work: str, settings: TrainSettings, conditions: Conditions) -> dict:
    """Train the asked stages on the cached crops and write the bundle; runs as one task on a worker.

    Returns the closing summary: the classifier's validation figures by well
    split, the latent checks on held-out cells and, with the
    ``interpretable`` stage, the interpretable model's report.
    """
    import torch

    crops, table, description = read_crop_cache(cache)
    out_path, checkpoints = Path(out), Path(work) / "checkpoints"
    preset = get_preset(settings.preset)
    if crops.shape[-1] != preset.crop_size:
        raise TrainJobError(f"crop cache {cache} holds {crops.shape[-1]} px crops; preset {preset.name!r} "
                            f"needs {preset.crop_size} px")
    stages = check_job_stages(settings.stages)
    model_stages = tuple(s for s in stages if s in STAGES)
    relax_malloc_thresholds()  # a worker started by `dask worker` has a fixed trim threshold that slows torch
    torch.set_num_threads(settings.torch_threads or worker_threads())
    torch.manual_seed(settings.seed)
    classifier, summary = None, {}
    if "classifier" not in stages:
        bundle = load_bundle(out_path, replacing=rewritten(stages))
        if tuple(bundle.channel_names) != tuple(description["channel_names"]):
            raise TrainJobError(f"bundle {out_path} was trained on channels {list(bundle.channel_names)}, "
                                f"the plates have {description['channel_names']}")
        classifier = classifier_from_bundle(bundle, table)
        summary = dict(bundle.config["provenance"].get("training_summary", {}))
    if model_stages:
        trained = train_models(crops, table, preset, conditions.class_column, conditions.class_names, settings.seed,
                               progress=_report, checkpoint_dir=checkpoints, stages=model_stages,
                               classifier=classifier)
        classifier = trained.classifier
        summary = {"classifier": classifier.metrics.to_dict(),
                   "validation_wells": [f"{p}/{w}" for p, w in classifier.split.val_wells],
                   "n_cells": len(table), "n_wells": int(table[["plate", "well"]].drop_duplicates().shape[0])}
        if trained.autoencoder is not None:
            summary["autoencoder"] = _latent_summary(trained, crops, table, settings)
        save_trained(out_path, trained, table, description["channel_names"],
                     {"method": "negative-control percentiles", "plates": description["normalisation"]},
                     overwrite=True, extra={"training_summary": summary, "stages": list(model_stages),
                                            "training_cells": table["cell_id"].astype(str).tolist()})
    if "explain" in stages:
        autoencoder = trained.autoencoder.model if model_stages and trained.autoencoder is not None \
            else load_bundle(out_path, replacing=rewritten(stages))["autoencoder"]
        summary["explain"] = _explain(crops, table, autoencoder, classifier, out_path, settings, conditions,
                                      description["channel_names"])
    if "interpretable" in stages:
        summary["interpretable"] = _fit_interpretable(crops, table, classifier, out_path, settings, conditions,
                                                      description["channel_names"])
    if {"explain", "interpretable"} & set(stages):
        seal_bundle(out_path)
    return summary


def rewritten(stages: Sequence[str]) -> tuple[str, ...]:
    """The bundle folders the later stages of ``stages`` write anew (not checked when loading the bundle)."""
    return tuple(folder for stage, folder in (("explain", EXPLAIN_FOLDER), ("interpretable", INTERPRETABLE_FOLDER))
                 if stage in stages)


def _explain(crops: np.ndarray, table, autoencoder, classifier, out: Path, settings: TrainSettings,
             conditions: Conditions, channel_names: Sequence[str]) -> dict:
    """Fit every treatment's attributes on the classifier's training wells and save them in ``explain/``."""
    from screenxai.explain import save_directions
    from screenxai.explain.fit import ExplainSettings, as_records, fit_explanations

    labels, _ = class_labels(table, conditions.class_column, conditions.class_names)
    explain = ExplainSettings(n_directions=settings.explain_directions, n_cells=settings.explain_cells,
                              n_attributes=settings.explain_attributes, guided=settings.explain_guided,
                              contrast=settings.explain_contrast, seed=settings.seed,
                              directions=get_preset(settings.preset).directions)
    nuclear = nuclear_channel_index(channel_names, settings.nuclear_channel)
    fitted = fit_explanations(autoencoder, crops, labels, ~validation_rows(table, classifier.split),
                              conditions.class_names, channel_names, nuclear, explain,
                              features=table[feature_columns(channel_names)].reset_index(drop=True),
                              on_step=StepReporter("explain"))
    save_directions(fitted.directions, fitted.attributes, out / EXPLAIN_FOLDER, fitted.config, guided=fitted.guided,
                    unet_evaluations=fitted.unet_evaluations, contrast_treatments=fitted.contrast_treatments,
                    contrast_names=fitted.contrast_names)
    return as_records(fitted)


class StepReporter:
    """Sends a stage's steps to the client as progress events, ``<stage>: <step>``, with the time left in each step.

    A step's name may end in a detail in parentheses (``formula (dual)``);
    the time left is estimated over all calls of the name before it.
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.first: dict[str, tuple[float, int]] = {}

    def __call__(self, step: str, done: int, total: int) -> None:
        start, first = self.first.setdefault(step.partition(" (")[0], (time.perf_counter(), done))
        left = (time.perf_counter() - start) / (done - first) * (total - done) if done > first else float("nan")
        _report(Progress(f"{self.stage}: {step}", done - 1, total, float("nan"), None, left))


def _fit_interpretable(crops: np.ndarray, table, classifier, out: Path, settings: TrainSettings,
                       conditions: Conditions, channel_names: Sequence[str]) -> dict:
    """Fit the interpretable model on the classifier's training wells, score and attack it on its validation wells.

    Two classes get one formula; a screen of many treatments gets one
    formula per treatment against the negative control, over one shared VAE
    (``screenxai.interpret.treatments``). Writes ``interpretable/`` into the
    bundle with the interpretable table (one row per formula) and the
    adversarial sweeps (``adversarial.parquet``).
    """
    from screenxai.interpret import InterpretConfig, fit_interpretable, fit_treatments, save_interpretable
    from screenxai.interpret.treatments import name_latents, view_of

    held_out = validation_rows(table, classifier.split)
    train_crops, train_table = crops[~held_out], table[~held_out].reset_index(drop=True)
    heldout = (crops[held_out], table[held_out].reset_index(drop=True))
    config = InterpretConfig(seed=settings.seed, **get_preset(settings.preset).interpretable)
    names = conditions.class_names
    features = feature_columns(channel_names)
    step = StepReporter("interpretable")
    if len(names) > 2:
        fitted = fit_treatments(train_crops, train_table, classifier.model, config, conditions.class_column, names,
                                heldout=heldout, on_step=step)
        models, black_boxes = fitted.models, {t: view_of(classifier.model, names, t) for t in fitted.models}
    else:
        fitted = fit_interpretable(train_crops, train_table, classifier.model, config, conditions.class_column,
                                   names, heldout=heldout, on_step=step)
        models, black_boxes = {names[1]: fitted}, {names[1]: classifier.model}
    sweeps = []
    for k, (treatment, model) in enumerate(models.items(), start=1):
        sweeps.append(_adversarial(model, black_boxes[treatment], heldout, settings, channel_names)
                      .assign(treatment=treatment))
        step(f"adversarial sweep ({treatment})", k, len(models))
    if len(names) > 2:
        name_latents(fitted, train_crops, train_table, features, channel_names)
    else:
        named = latent_features(fitted.latents(train_crops), train_table[features], fitted.report["formula_variables"],
                                channel_names)
        fitted.report["latent_features"] = named.to_dict(orient="records")
    folder = save_interpretable(fitted, out / INTERPRETABLE_FOLDER, overwrite=True)
    write_parquet_atomic(pd.concat(sweeps, ignore_index=True), folder / "adversarial.parquet")
    report = fitted.report if len(names) == 2 else {
        **fitted.report, "treatments": [{"treatment": t, **m.report} for t, m in models.items()]}
    write_parquet_atomic(interpretable_table(report), folder / "interpretable.parquet")
    return report


def _adversarial(model, black_box, heldout: tuple[np.ndarray, pd.DataFrame], settings: TrainSettings,
                 channel_names: Sequence[str]) -> pd.DataFrame:
    """PGD sweep on up to ``ADVERSARIAL_CELLS`` held-out cells of ``model``'s two classes; notes it in its report."""
    from screenxai.interpret import adversarial_check, flip_budgets

    held_crops, held_table = heldout
    labels, _ = class_labels(held_table, model.class_column, model.class_names)
    known = np.flatnonzero(labels >= 0)
    attacked = np.random.default_rng(settings.seed).permutation(known)[:ADVERSARIAL_CELLS]
    nuclear = nuclear_channel_index(channel_names, settings.nuclear_channel)
    reporter = reporter_channel_index(channel_names, nuclear, settings.reporter_channel)
    sweep = adversarial_check(model, black_box, held_crops[attacked], labels[attacked],
                              nuclear_channel=nuclear, reporter_channel=reporter)
    model.report["adversarial"] = {"cells": len(attacked), "reporter_channel": channel_names[reporter],
                                   "half_flip_budget": flip_budgets(sweep)}
    return sweep


def interpretable_table(report: dict) -> pd.DataFrame:
    """One row per formula (per treatment, with many): the formula and its held-out figures beside the black box's.

    ``report`` is a two-class model's report, or one with a ``treatments``
    list of the treatments' reports (the ``interpretable`` table).
    """
    return pd.DataFrame([_formula_row(r) for r in report.get("treatments", [report])])


def _formula_row(report: dict) -> dict:
    """The ``interpretable`` table's row of one formula's report."""
    held = report["heldout"]
    return {
        "treatment": report["positive_class"],
        "formula": report["formula"], "complexity": int(report["complexity"]),
        "positive_class": report["positive_class"], "inputs": ",".join(report["formula_variables"]),
        "latent_features": describe_latents(pd.DataFrame(report.get("latent_features", []),
                                                         columns=["latent", "feature", "label", "spearman"])),
        "accuracy_blackbox": held["accuracy"]["blackbox"], "accuracy_sparse": held["accuracy"]["sparse"],
        "accuracy_formula": held["accuracy"]["formula"], "fidelity": held["fidelity"],
        "agreement": held["agreement"], "n_heldout_cells": int(report["cells"]["heldout"]),
        "n_heldout_wells": int(report["wells"]["heldout"]),
        "parameters_blackbox": int(report["parameters"]["blackbox"]),
        "parameters_sparse": int(report["parameters"]["sparse_nonzero"]),
        "flip_budget_blackbox": report["adversarial"]["half_flip_budget"].get("blackbox", float("nan")),
        "flip_budget_formula": report["adversarial"]["half_flip_budget"].get("formula", float("nan")),
    }


def _latent_summary(trained, crops: np.ndarray, table, settings: TrainSettings) -> dict:
    """Latent checks on cells of the classifier's validation wells (never seen by the autoencoder)."""
    model = trained.autoencoder.model
    held_out = np.flatnonzero(validation_rows(table, trained.classifier.split))
    pick = np.random.default_rng(settings.seed).permutation(held_out)[:settings.check_cells]
    history = trained.autoencoder.history
    summary = {"final_loss": history[-1]["loss"], "final_val_loss": history[-1].get("val_loss"),
               "n_check_cells": len(pick), "check_steps": settings.check_steps}
    if len(pick) >= 2:
        use = latent_checks.latent_use(model, crops[pick], steps=settings.check_steps, seed=settings.seed)
        summary["latent_use"] = use.to_dict()
        summary["reconstruction_mae"] = latent_checks.reconstruction_error(model, crops[pick],
                                                                           settings.check_steps)
    return summary


def _as_progress(message: dict) -> Progress:
    """A ``Progress`` from an event message (distributed adds the sending worker's address)."""
    return Progress(**{k: message[k] for k in Progress.__dataclass_fields__})


def train(plates: Sequence[Plate], out: str | Path, client: Client, settings: TrainSettings = TrainSettings(),
          on_field: Callable[[dict], None] | None = None, on_progress: Callable[[Progress], None] | None = None,
          keep_work: bool = False) -> TrainResult:
    """Cut the training cells of ``plates`` into a crop cache, train on a worker, write the bundle at ``out``.

    Resumes an interrupted job with the same settings from its work folder.
    """
    start = time.perf_counter()
    out = Path(out).absolute()
    check_job_stages(settings.stages)
    if "classifier" not in settings.stages and not (out / "config.json").exists():
        raise TrainJobError(f"stages {list(settings.stages)} need the classifier of an existing bundle at {out}")
    wells = wells_to_sample(plates, settings)
    conditions = job_conditions(plates, settings)
    work = work_folder(out)
    _claim_work_folder(work, out, settings, plates, wells)
    fields: list[dict] = []

    def field_done(row: dict) -> None:
        fields.append(row)
        if on_field is not None:
            on_field(row)

    cache = build_crop_cache(plates, work / "cache", client, wells, get_preset(settings.preset).crop_size,
                             settings.nuclear_channel, settings.max_cells_per_well, settings.seed, field_done)
    if on_progress is not None:
        client.subscribe_topic(TRAIN_TOPIC, lambda event: on_progress(_as_progress(event[1])))
    try:
        future = client.submit(run_training, str(cache), str(out), str(work), settings, conditions, pure=False,
                               resources=gpu_resources(client), key=f"train-{out.name}-{uuid.uuid4().hex[:8]}")
        summary = future.result()
    finally:
        if on_progress is not None:
            client.unsubscribe_topic(TRAIN_TOPIC)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return TrainResult(out, summary, time.perf_counter() - start, fields)
