"""A small ResNet-style CNN that tells the classes of single-cell crops apart.

GroupNorm instead of BatchNorm: outputs do not depend on batch composition,
so a cell gets the same probability whatever else is in its batch, and small
or class-imbalanced batches train as well as large ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from screenxai.models.batches import map_batches


@dataclass(frozen=True)
class ClassifierConfig:
    """Shape of a ``CellClassifier``.

    ``width`` channels in the first stage, doubled at each of ``stages``
    stages (each halving the resolution after the first), with
    ``blocks_per_stage`` residual blocks per stage.
    """

    in_channels: int
    n_classes: int = 2
    width: int = 16
    stages: int = 3
    blocks_per_stage: int = 1
    dropout: float = 0.0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (projected when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = _norm(out_channels)
        self.skip = (nn.Identity() if stride == 1 and in_channels == out_channels
                     else nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                        _norm(out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.silu(h + self.skip(x))


class CellClassifier(nn.Module):
    """Crops (N, C, H, W) in [-1, 1] -> class logits (N, n_classes)."""

    architecture = "CellClassifier"

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, config.width, 3, 1, 1, bias=False),
                                   _norm(config.width), nn.SiLU()]
        channels = config.width
        for stage in range(config.stages):
            out_channels = config.width * 2**stage
            for block in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(ResidualBlock(channels, out_channels, stride))
                channels = out_channels
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(channels, config.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))
        return self.head(self.dropout(pooled))


@torch.no_grad()
def predict_proba(model: nn.Module, crops: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, n_classes) of ``crops`` as float32, in batches, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = map_batches(lambda batch: torch.softmax(model(batch.to(device, torch.float32)).float(), dim=1).cpu(),
                      torch.as_tensor(crops), batch_size)
    model.train(was_training)
    if not out:
        return np.zeros((0, model.config.n_classes), np.float32)
    return torch.cat(out).numpy()
