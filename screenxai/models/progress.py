"""Progress reports of training and the checkpoints that let it resume."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from screenxai.errors import ScreenxaiError
from screenxai.io import atomic_file


@dataclass(frozen=True)
class Progress:
    """One finished epoch of one training stage.

    ``eta_s`` is the estimated time left in this stage, from the mean epoch
    time so far; ``val_loss`` is None where the stage has no validation.
    """

    stage: str
    epoch: int
    epochs: int
    loss: float
    val_loss: float | None
    eta_s: float


ProgressCallback = Callable[[Progress], None]
StepCallback = Callable[[str, int, int], None]  # (step, done, total) of a stage made of named steps


class EpochClock:
    """Estimates the time left from the mean duration of the epochs run in this process."""

    def __init__(self, first_epoch: int, epochs: int) -> None:
        self.start = time.perf_counter()
        self.first_epoch = first_epoch
        self.epochs = epochs

    def eta(self, epoch: int) -> float:
        """Seconds left after finishing 0-based ``epoch``."""
        done = epoch + 1 - self.first_epoch
        return (time.perf_counter() - self.start) / max(done, 1) * (self.epochs - epoch - 1)


class TrainingDiverged(ScreenxaiError):
    """A training loss became NaN or infinite."""


def check_finite(loss: float, stage: str, epoch: int) -> None:
    """Stop training with a clear error instead of carrying NaN weights on silently."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"{stage} training diverged in epoch {epoch}: the loss is {loss}; "
                               "lower the learning rate or check the crops for NaN")


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` with ``torch.save`` atomically, so an interrupted save leaves the last checkpoint."""
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path | None) -> dict | None:
    """The state saved at ``path``, or None when there is none."""
    if path is None or not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def save_training_state(path: Path, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
                        gen: torch.Generator, state: dict) -> None:
    """Checkpoint everything an exact resume needs: weights, optimiser, both random streams, loop state."""
    save_checkpoint({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                     "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "state": state}, path)


def restore_training_state(path: Path | None, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
                           gen: torch.Generator, state: dict) -> dict:
    """Load a ``save_training_state`` checkpoint into the objects; return its loop state (``state`` if none)."""
    saved = load_checkpoint(path)
    if saved is None:
        return state
    model.load_state_dict(saved["model"])
    optimiser.load_state_dict(saved["optimiser"])
    gen.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    return saved["state"]


@dataclass(frozen=True)
class EpochResult:
    """What one epoch of training measured: its mean loss, its validation loss and its history row."""

    loss: float
    val_loss: float | None
    record: dict


@dataclass
class EpochLoop:
    """The epoch loop both trainings share: run an epoch, check its loss, record it, checkpoint, report.

    ``state`` is the resumable loop state (``restore_training_state``): its
    ``epoch`` is the next epoch to run, its ``history`` a row per epoch.
    """

    model: torch.nn.Module
    optimiser: torch.optim.Optimizer
    gen: torch.Generator
    state: dict
    checkpoint: Path | None = None
    progress: ProgressCallback | None = None

    def run(self, stage: str, first: int, end: int, train_epoch: Callable[[int], dict[str, float]],
            validate: Callable[[int, dict[str, float]], EpochResult], offset: int = 0,
            stop: Callable[[int], bool] | None = None) -> None:
        """Epochs ``first`` to ``end - 1`` of ``stage``, reported as numbered from ``offset`` within the stage.

        ``train_epoch(epoch)`` returns the epoch's mean losses (``loss`` the
        total), checked finite before ``validate(epoch, losses)`` scores the
        epoch. ``stop(epoch)``, checked before each epoch, ends the stage early.
        """
        clock = EpochClock(first, end)
        for epoch in range(first, end):
            if stop is not None and stop(epoch):
                break
            losses = train_epoch(epoch)
            check_finite(losses["loss"], stage, epoch)
            result = validate(epoch, losses)
            self.state["history"].append(result.record)
            self.state["epoch"] = epoch + 1
            if self.checkpoint is not None:
                save_training_state(self.checkpoint, self.model, self.optimiser, self.gen, self.state)
            if self.progress is not None:
                self.progress(Progress(stage, epoch - offset, end - offset, result.loss, result.val_loss,
                                       clock.eta(epoch)))
