"""Where models run and how runs are made reproducible.

CUDA is used when present, CPU otherwise; everything also runs on CPU. A
seed fixes every random number torch, numpy and Python draw, so that a run
with the same seed gives the same weights on CPU.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def default_device() -> torch.device:
    """The first CUDA device when one is present, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` or ``"auto"`` picks ``default_device()``."""
    if device is None or device == "auto":
        return default_device()
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch random generator on ``device`` seeded with ``seed``.

    Training draws its batches, augmentations and noise from generators like
    this one rather than from global state, so results do not depend on what
    else ran before in the process.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
