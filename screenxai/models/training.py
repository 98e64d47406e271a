"""Train the classifier, then the diffusion autoencoder, from crops and their table; bundle the result.

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
from screenxai.models.bundle import Provenance, save_bundle
from screenxai.models.classifier import ClassifierConfig
from screenxai.models.presets import Preset, get_preset
from screenxai.models.progress import ProgressCallback
from screenxai.models.splits import DEFAULT_CLASS_COLUMN
from screenxai.models.train_autoencoder import TrainedAutoencoder, train_autoencoder
from screenxai.models.train_classifier import TrainedClassifier, train_classifier


@dataclass
class TrainedModels:
    """The outcome of ``train_models``: both models, the preset and the class column used."""

    classifier: TrainedClassifier
    autoencoder: TrainedAutoencoder
    preset: Preset
    class_column: str


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
) -> TrainedModels:
    """Train a classifier on the cells of ``class_names``, then an autoencoder on all ``crops``.

    ``crops`` (N, C, S, S) float32 in [-1, 1] must have the preset's crop
    size S; ``table`` has one row per crop with ``plate``, ``well`` and
    ``class_column``. ``seed`` replaces the preset's seeds.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if seed is not None:
        preset = preset.with_seed(seed)
    if crops.ndim != 4 or crops.shape[-1] != preset.crop_size or crops.shape[-2] != preset.crop_size:
        raise ValueError(f"crops of shape {crops.shape} do not fit preset {preset.name!r} "
                         f"(crop size {preset.crop_size})")
    if len(crops) != len(table):
        raise ValueError(f"{len(crops)} crops but {len(table)} table rows")
    checkpoints = Path(checkpoint_dir) if checkpoint_dir is not None else None
    n_channels = crops.shape[1]
    n_classes = len(class_names) if class_names is not None else table[class_column].nunique()
    classifier = train_classifier(
        crops, table, ClassifierConfig(in_channels=n_channels, n_classes=n_classes, **preset.classifier),
        preset.classifier_training, class_column, class_names, device, progress,
        checkpoints / "classifier.pt" if checkpoints else None)
    config = AutoencoderConfig(in_channels=n_channels, image_size=preset.crop_size,
                               n_classes=len(classifier.class_names), **preset.autoencoder)
    autoencoder = train_autoencoder(crops, classifier.model, config, preset.autoencoder_training, device, progress,
                                    checkpoints / "autoencoder.pt" if checkpoints else None)
    return TrainedModels(classifier, autoencoder, preset, class_column)


def save_trained(path: str | Path, trained: TrainedModels, table: pd.DataFrame, channel_names: Sequence[str],
                 normalisation: dict, overwrite: bool = False) -> Path:
    """Write ``trained`` as a model bundle; provenance lists the plates and wells of ``table``."""
    wells = sorted(set(zip(table["plate"].astype(str), table["well"].astype(str), strict=True)))
    provenance = Provenance(
        plates=sorted({p for p, _ in wells}), wells=[f"{p}/{w}" for p, w in wells],
        seed=trained.preset.autoencoder_training.seed,
        preset=trained.preset.name,
        extra={"preset_settings": trained.preset.to_dict(),
               "classifier_metrics": trained.classifier.metrics.to_dict(),
               "validation_wells": [f"{p}/{w}" for p, w in trained.classifier.split.val_wells]})
    return save_bundle(path, {"classifier": trained.classifier.model, "autoencoder": trained.autoencoder.model},
                       channel_names=channel_names, class_names=trained.classifier.class_names,
                       crop_size=trained.preset.crop_size, normalisation=normalisation,
                       provenance=provenance, class_column=trained.class_column, overwrite=overwrite)
