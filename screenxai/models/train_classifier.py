"""Training of the cell classifier: class-balanced batches, augmentation, early stopping.

Validation cells come from other wells than training cells (see
``split_by_well``). The loss on validation is class-balanced too, so early
stopping is not ruled by the larger class.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from screenxai.models.augment import augment
from screenxai.models.classifier import CellClassifier, ClassifierConfig, predict_proba
from screenxai.models.device import generator, resolve_device
from screenxai.models.metrics import roc_auc
from screenxai.models.progress import EpochLoop, EpochResult, ProgressCallback, restore_training_state
from screenxai.models.splits import DEFAULT_CLASS_COLUMN, WellSplit, class_labels, split_by_well


@dataclass(frozen=True)
class ClassifierTraining:
    """How a classifier is trained. ``steps_per_epoch`` None: one pass over the training cells."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 4
    steps_per_epoch: int | None = None
    intensity_jitter: float = 0.1
    val_fraction: float = 0.25
    seed: int = 0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class ClassifierMetrics:
    """Validation figures of the kept (best) epoch; ``auc`` is one-vs-rest per class name."""

    val_loss: float
    accuracy: float
    balanced_accuracy: float
    auc: dict[str, float]
    n_val_cells: int
    n_val_wells: int
    best_epoch: int
    auc_vs_negative: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class TrainedClassifier:
    """A trained classifier with its classes, well split, metrics and per-epoch history."""

    model: CellClassifier
    class_names: tuple[str, ...]
    split: WellSplit
    metrics: ClassifierMetrics
    history: list[dict] = field(default_factory=list)


def balanced_batch(labels: torch.Tensor, n_classes: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of ``size`` cells: a class drawn uniformly, then a cell uniformly within it."""
    by_class = [torch.nonzero(labels == k, as_tuple=True)[0] for k in range(n_classes)]
    chosen = torch.randint(0, n_classes, (size,), generator=gen)
    out = torch.empty(size, dtype=torch.long)
    for k, members in enumerate(by_class):
        rows = (chosen == k).nonzero(as_tuple=True)[0]
        out[rows] = members[torch.randint(0, len(members), (len(rows),), generator=gen)]
    return out


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse class frequencies, scaled to mean 1 over the classes present."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def evaluate(model: CellClassifier, crops: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
             batch_size: int) -> tuple[float, float, float, dict[str, float], dict[str, float]]:
    """Class-balanced loss, accuracy, balanced accuracy, per-class AUC and AUC against the first class on ``crops``."""
    proba = predict_proba(model, crops, batch_size)
    n_classes = len(class_names)
    log_p = torch.log(torch.from_numpy(proba).clamp_min(1e-12))
    loss = float(F.nll_loss(log_p, torch.from_numpy(labels), weight=class_weights(labels, n_classes)))
    predicted = proba.argmax(1)
    accuracy = float((predicted == labels).mean())
    recalls = [float((predicted[labels == k] == k).mean()) for k in range(n_classes) if (labels == k).any()]
    auc = {name: roc_auc(labels == k, proba[:, k]) for k, name in enumerate(class_names)}
    return loss, accuracy, float(np.mean(recalls)), auc, auc_against_first(proba, labels, class_names)


def auc_against_first(proba: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Per class after the first: ROC AUC of ``p_k / (p_k + p_0)`` between cells of class k and of class 0.

    The first class is the negative control, so this is how well the
    classifier tells each treatment from it, whatever the other classes.
    """
    result = {}
    for k, name in enumerate(class_names[1:], start=1):
        pair = (labels == 0) | (labels == k)
        score = proba[pair, k] / np.maximum(proba[pair, k] + proba[pair, 0], 1e-12)
        result[name] = roc_auc(labels[pair] == k, score)
    return result


def train_classifier(
    crops: np.ndarray,
    table: pd.DataFrame,
    config: ClassifierConfig | None = None,
    training: ClassifierTraining = ClassifierTraining(),
    class_column: str = DEFAULT_CLASS_COLUMN,
    class_names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    checkpoint: Path | None = None,
) -> TrainedClassifier:
    """Train a ``CellClassifier`` on ``crops`` (N, C, H, W) labelled by ``table[class_column]``.

    The cells are split by well; each epoch runs class-balanced, augmented
    batches, then scores the validation wells; training stops after
    ``patience`` epochs without a better validation loss and the best epoch's
    weights are kept. With ``checkpoint``, the state is saved after every
    epoch and a run finding a checkpoint there continues from it, giving on
    CPU the same weights as an uninterrupted run.
    """
    device = resolve_device(device)
    labels, names = class_labels(table, class_column, class_names)
    split = split_by_well(table, class_column, training.val_fraction, training.seed, names)
    config = config or ClassifierConfig(in_channels=crops.shape[1], n_classes=len(names))
    if config.n_classes != len(names) or config.in_channels != crops.shape[1]:
        raise ValueError(f"classifier config {config} does not fit {crops.shape[1]} channels and classes {names}")
    torch.manual_seed(training.seed)
    model = CellClassifier(config).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    gen = generator(training.seed)
    train_x = torch.from_numpy(np.ascontiguousarray(crops[split.train_index], np.float32))
    train_y = torch.from_numpy(labels[split.train_index])
    val_x, val_y = crops[split.val_index], labels[split.val_index]
    steps = training.steps_per_epoch or max(1, len(train_x) // training.batch_size)
    initial: dict = {"epoch": 0, "best_loss": float("inf"), "best_epoch": -1, "best_model": None, "history": []}
    state = restore_training_state(checkpoint, model, optimiser, gen, initial)

    def train_epoch(epoch: int) -> dict[str, float]:
        model.train()
        total = 0.0
        for _ in range(steps):
            index = balanced_batch(train_y, len(names), training.batch_size, gen)
            x = augment(train_x[index], gen, training.intensity_jitter).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(model(x).float(), train_y[index].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item()
        return {"loss": total / steps}

    def validate(epoch: int, losses: dict[str, float]) -> EpochResult:
        val_loss, accuracy, balanced, _, _ = evaluate(model, val_x, val_y, names, training.batch_size * 4)
        if val_loss < state["best_loss"]:
            state.update(best_loss=val_loss, best_epoch=epoch, best_model=copy.deepcopy(model.state_dict()))
        return EpochResult(losses["loss"], val_loss, {"epoch": epoch, "loss": losses["loss"], "val_loss": val_loss,
                                                      "val_accuracy": accuracy, "val_balanced_accuracy": balanced})

    def patience_spent(epoch: int) -> bool:
        return state["best_epoch"] >= 0 and epoch - state["best_epoch"] > training.patience

    EpochLoop(model, optimiser, gen, state, checkpoint, progress).run(
        "classifier", state["epoch"], training.epochs, train_epoch, validate, stop=patience_spent)
    model.load_state_dict(state["best_model"])
    model.eval()
    val_loss, accuracy, balanced, auc, auc_vs_negative = evaluate(model, val_x, val_y, names,
                                                                  training.batch_size * 4)
    metrics = ClassifierMetrics(val_loss, accuracy, balanced, auc, len(val_y), len(split.val_wells),
                                state["best_epoch"], auc_vs_negative)
    return TrainedClassifier(model, names, split, metrics, state["history"])
