"""Train the classifier, then the diffusion autoencoder, from crops and their table; bundle the result.

Stages run in order: ``classifier`` then ``autoencoder`` (the autoencoder
needs the frozen classifier, from this run or from an earlier bundle).

With a checkpoint directory, each stage saves its state after every epoch
(``classifier.pt``, ``autoencoder.pt``); calling ``train_models`` again with
the same arguments continues where an interrupted run stopped and, on CPU,
ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from screenxai.models.autoencoder import AutoencoderConfig
from screenxai.models.bundle import Bundle, Provenance, save_bundle
from screenxai.models.classifier import ClassifierConfig
from screenxai.models.presets import Preset, get_preset
from screenxai.models.progress import ProgressCallback
from screenxai.models.splits import DEFAULT_CLASS_COLUMN, WellSplit, class_labels
from screenxai.models.train_autoencoder import TrainedAutoencoder, train_autoencoder
from screenxai.models.train_classifier import ClassifierMetrics, TrainedClassifier, train_classifier


STAGES = ("classifier", "autoencoder")


@dataclass
class TrainedModels:
    """The outcome of ``train_models``: the models of the stages run, the preset and the class column used.

    ``autoencoder`` is None when only the classifier stage ran.
    """

    classifier: TrainedClassifier
    autoencoder: TrainedAutoencoder | None
    preset: Preset
    class_column: str


def check_stages(stages: Sequence[str], known: Sequence[str] = STAGES) -> tuple[str, ...]:
    """``stages`` in the order of ``known``; ``ValueError`` naming an unknown one."""
    unknown = [s for s in stages if s not in known]
    if unknown or not stages:
        raise ValueError(f"unknown or no training stages {list(unknown) or list(stages)}; "
                         f"the stages are {list(known)}")
    return tuple(s for s in known if s in stages)


def validation_rows(table: pd.DataFrame, split: WellSplit) -> np.ndarray:
    """Whether each row's ``(plate, well)`` is one of the classifier's validation wells."""
    held_out = set(split.val_wells)
    return np.array([(str(p), str(w)) in held_out for p, w in zip(table["plate"], table["well"], strict=True)])


def train_models(
    crops: np.ndarray,
    table: pd.DataFrame,
    preset: str | Preset = "tiny",
    class_column: str = DEFAULT_CLASS_COLUMN,
    class_names: Sequence[str] | None = ("negative", "positive"),
    seed: int | None = None,
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    checkpoint_dir: str | Path | None = None,
    stages: Sequence[str] = STAGES,
    classifier: TrainedClassifier | None = None,
) -> TrainedModels:
    """Train a classifier on the cells of ``class_names``, then an autoencoder on the cells of its training wells.

    ``crops`` (N, C, S, S) float32 in [-1, 1] must have the preset's crop
    size S; ``table`` has one row per crop with ``plate``, ``well`` and
    ``class_column``. ``seed`` replaces the preset's seeds. The autoencoder
    never sees the classifier's validation wells; their cells give its
    validation loss. Without the ``classifier`` stage, ``classifier`` (an
    earlier stage's result) is required.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    stages = check_stages(stages)
    if seed is not None:
        preset = preset.with_seed(seed)
    if crops.ndim != 4 or crops.shape[-1] != preset.crop_size or crops.shape[-2] != preset.crop_size:
        raise ValueError(f"crops of shape {crops.shape} do not fit preset {preset.name!r} "
                         f"(crop size {preset.crop_size})")
    if len(crops) != len(table):
        raise ValueError(f"{len(crops)} crops but {len(table)} table rows")
    checkpoints = Path(checkpoint_dir) if checkpoint_dir is not None else None
    n_channels = crops.shape[1]
    if "classifier" in stages:
        n_classes = len(class_names) if class_names is not None else table[class_column].nunique()
        classifier = train_classifier(
            crops, table, ClassifierConfig(in_channels=n_channels, n_classes=n_classes, **preset.classifier),
            preset.classifier_training, class_column, class_names, device, progress,
            checkpoints / "classifier.pt" if checkpoints else None)
    elif classifier is None:
        raise ValueError("the autoencoder stage needs a trained classifier: run the classifier stage too")
    autoencoder = None
    if "autoencoder" in stages:
        config = AutoencoderConfig(in_channels=n_channels, image_size=preset.crop_size,
                                   n_classes=len(classifier.class_names), **preset.autoencoder)
        held_out = validation_rows(table, classifier.split)
        autoencoder = train_autoencoder(crops[~held_out], classifier.model, config, preset.autoencoder_training,
                                        device, progress, checkpoints / "autoencoder.pt" if checkpoints else None,
                                        val_crops=crops[held_out])
    return TrainedModels(classifier, autoencoder, preset, class_column)


def save_trained(path: str | Path, trained: TrainedModels, table: pd.DataFrame, channel_names: Sequence[str],
                 normalisation: dict, overwrite: bool = False, extra: dict | None = None) -> Path:
    """Write ``trained`` as a model bundle; provenance lists the plates and wells of ``table``."""
    wells = sorted(set(zip(table["plate"].astype(str), table["well"].astype(str), strict=True)))
    provenance = Provenance(
        plates=sorted({p for p, _ in wells}), wells=[f"{p}/{w}" for p, w in wells],
        seed=trained.preset.autoencoder_training.seed,
        preset=trained.preset.name,
        extra={"preset_settings": trained.preset.to_dict(),
               "classifier_metrics": trained.classifier.metrics.to_dict(),
               "validation_wells": [f"{p}/{w}" for p, w in trained.classifier.split.val_wells],
               **(extra or {})})
    models = {"classifier": trained.classifier.model}
    if trained.autoencoder is not None:
        models["autoencoder"] = trained.autoencoder.model
    return save_bundle(path, models, channel_names=channel_names, class_names=trained.classifier.class_names,
                       crop_size=trained.preset.crop_size, normalisation=normalisation,
                       provenance=provenance, class_column=trained.class_column, overwrite=overwrite)


def classifier_from_bundle(bundle: Bundle, table: pd.DataFrame) -> TrainedClassifier:
    """The bundle's classifier with its recorded metrics and its well split re-applied to ``table``."""
    provenance = bundle.config["provenance"]
    val_wells = {tuple(key.split("/", 1)) for key in provenance.get("validation_wells", [])}
    labels, _ = class_labels(table, bundle.config["class_column"], bundle.class_names)
    keys = list(zip(table["plate"].astype(str), table["well"].astype(str), strict=True))
    in_val = np.array([k in val_wells for k in keys])
    used = labels >= 0
    split = WellSplit(np.flatnonzero(used & ~in_val), np.flatnonzero(used & in_val),
                      tuple(sorted({k for k, v, u in zip(keys, in_val, used) if u and not v})),
                      tuple(sorted(val_wells)))
    metrics = ClassifierMetrics(**provenance["classifier_metrics"])
    return TrainedClassifier(bundle["classifier"], bundle.class_names, split, metrics)
