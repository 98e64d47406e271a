"""Training of the diffusion autoencoder, with the classifier frozen.

Batches are drawn at random (seeded) from all crops; each crop gets a random
symmetry of the square (a rotated cell is still a cell), no intensity
jitter (the autoencoder should reproduce intensities). The loss is the
diffusion loss plus ``aux_weight`` times the auxiliary decoder's
reconstruction loss.

A UNet learns to use ``z_sem`` only if ``z_sem`` already tells cells apart
when the UNet trains; a randomly initialised encoder does not, and the UNet
settles on ignoring it. So ``pretrain_epochs`` first train the encoder and
the auxiliary decoder alone as a deterministic autoencoder (stage
"semantic"), which costs about a tenth of a UNet step per step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from screenxai.models.augment import augment
from screenxai.models.autoencoder import AutoencoderConfig, DiffusionAutoencoder
from screenxai.models.classifier import CellClassifier
from screenxai.models.device import generator, resolve_device
from screenxai.models.progress import EpochLoop, EpochResult, ProgressCallback, restore_training_state


@dataclass(frozen=True)
class AutoencoderTraining:
    """How a diffusion autoencoder is trained. ``steps_per_epoch`` None: one pass over the crops."""

    epochs: int = 10
    pretrain_epochs: int = 0
    batch_size: int = 64
    steps_per_epoch: int | None = None
    lr: float = 1e-3
    aux_weight: float = 1.0
    grad_clip: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class TrainedAutoencoder:
    """A trained autoencoder with its per-epoch mean losses."""

    model: DiffusionAutoencoder
    history: list[dict] = field(default_factory=list)


def validation_loss(model: DiffusionAutoencoder, crops: torch.Tensor, pretraining: bool, aux_weight: float,
                    seed: int, batch_size: int) -> float:
    """The training loss on held-out crops, with noise drawn from a fixed seed so epochs compare."""
    gen = generator(seed)
    total = 0.0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(crops), batch_size):
            x = crops[start:start + batch_size].to(_model_device(model))
            losses = semantic_losses(model, x) if pretraining else model.training_losses(x, gen)
            loss = losses.get("diffusion", 0.0) + aux_weight * losses.get("aux", 0.0)
            total += float(loss) * len(x)
    model.train()
    return total / len(crops)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def semantic_losses(model: DiffusionAutoencoder, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The auxiliary decoder's reconstruction loss alone: no UNet evaluation."""
    return {"aux": torch.nn.functional.mse_loss(model.aux_decoder(model.latent(x)).float(), x.float())}


def train_autoencoder(
    crops: np.ndarray,
    classifier: CellClassifier,
    config: AutoencoderConfig,
    training: AutoencoderTraining = AutoencoderTraining(),
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    checkpoint: Path | None = None,
    val_crops: np.ndarray | None = None,
) -> TrainedAutoencoder:
    """Train a ``DiffusionAutoencoder`` on ``crops`` (N, C, H, W) in [-1, 1] around a frozen ``classifier``.

    With ``val_crops`` (cells of wells not trained on), each epoch also
    reports the loss on them (``val_loss`` in the history and progress).

    With ``checkpoint``, the state is saved after every epoch and a run
    finding a checkpoint there continues from it; on CPU the final weights
    equal those of an uninterrupted run.
    """
    device = resolve_device(device)
    torch.manual_seed(training.seed)
    model = DiffusionAutoencoder(config, classifier.to(device)).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=training.lr, weight_decay=0.0)
    gen = generator(training.seed)
    data = torch.from_numpy(np.ascontiguousarray(crops, np.float32))
    held_out = None if val_crops is None or len(val_crops) == 0 else torch.from_numpy(
        np.ascontiguousarray(val_crops, np.float32))
    steps = training.steps_per_epoch or max(1, len(data) // training.batch_size)
    initial: dict = {"epoch": 0, "history": []}
    state = restore_training_state(checkpoint, model, optimiser, gen, initial)
    if training.pretrain_epochs and model.aux_decoder is None:
        raise ValueError("pretrain_epochs need an autoencoder with aux_decoder")
    total_epochs = training.pretrain_epochs + training.epochs
    model.train()

    def train_epoch(epoch: int) -> dict[str, float]:
        pretraining = epoch < training.pretrain_epochs
        sums: dict[str, float] = {}
        for _ in range(steps):
            index = torch.randint(0, len(data), (training.batch_size,), generator=gen)
            x = augment(data[index], gen, intensity_jitter=0.0).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                losses = (semantic_losses(model, x) if pretraining else model.training_losses(x, gen))
            loss = losses.get("diffusion", 0.0) + training.aux_weight * losses.get("aux", 0.0)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, training.grad_clip)
            optimiser.step()
            for name, value in {"loss": loss, **losses}.items():
                sums[name] = sums.get(name, 0.0) + value.item()
        return {k: v / steps for k, v in sums.items()}

    def validate(epoch: int, losses: dict[str, float]) -> EpochResult:
        pretraining = epoch < training.pretrain_epochs
        val_loss = None if held_out is None else validation_loss(
            model, held_out, pretraining, training.aux_weight, training.seed, training.batch_size)
        stage = "semantic" if pretraining else "autoencoder"
        return EpochResult(losses["loss"], val_loss, {"epoch": epoch, "stage": stage, **losses, "val_loss": val_loss})

    loop = EpochLoop(model, optimiser, gen, state, checkpoint, progress)
    loop.run("semantic", state["epoch"], training.pretrain_epochs, train_epoch, validate)
    loop.run("autoencoder", max(state["epoch"], training.pretrain_epochs), total_epochs, train_epoch, validate,
             offset=training.pretrain_epochs)
    model.eval()
    return TrainedAutoencoder(model, state["history"])
