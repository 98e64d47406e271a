"""A sparse two-layer network over the VAE latents: few inputs, few weights.

Training has three phases, all full-batch (a few thousand cells of a few
latents fit in memory): a group-lasso phase (the L1 norm of each input's
weight column) that drives unneeded inputs towards zero; an input-pruning
phase that drops the weakest input, fine-tunes, and repeats until at most
``max_active`` inputs remain; and a magnitude-pruning phase that keeps the
largest ``weight_density`` of the remaining weights and fine-tunes again.
The few inputs left are what the symbolic regression gets to work with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class SparseConfig:
    """Sizes and schedule of the sparse classifier."""

    hidden: int = 16
    max_active: int = 5
    l1: float = 0.02
    steps: int = 300
    prune_steps: int = 100
    weight_density: float = 0.5
    lr: float = 0.01
    seed: int = 0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


class SparseClassifier(nn.Module):
    """Latents (N, D) -> positive-class logit (N,), through masked weights.

    Inputs are standardised with the training latents' mean and SD (kept as
    buffers); ``input_mask`` says which latents are used, ``mask1`` and
    ``mask2`` which weights survived pruning.
    """

    architecture = "SparseClassifier"

    def __init__(self, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.latent_dim, self.hidden = latent_dim, hidden
        self.layer1 = nn.Linear(latent_dim, hidden)
        self.layer2 = nn.Linear(hidden, 1)
        self.register_buffer("mean", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self.register_buffer("input_mask", torch.ones(latent_dim))
        self.register_buffer("mask1", torch.ones(hidden, latent_dim))
        self.register_buffer("mask2", torch.ones(1, hidden))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = (z - self.mean) / self.scale
        h = F.silu(F.linear(x, self.layer1.weight * self.mask1 * self.input_mask, self.layer1.bias))
        return F.linear(h, self.layer2.weight * self.mask2, self.layer2.bias)[:, 0]

    @property
    def selected(self) -> list[int]:
        """Indices of the latents the model uses."""
        return torch.nonzero(self.input_mask, as_tuple=True)[0].tolist()

    def group_norms(self) -> torch.Tensor:
        """L2 norm of each input's (masked) first-layer weights."""
        return (self.layer1.weight * self.mask1 * self.input_mask).norm(dim=0)

    def n_nonzero(self) -> int:
        """Weights and biases still in use (biases of dead hidden units not counted)."""
        w1 = self.mask1 * self.input_mask * (self.layer1.weight != 0)
        alive = (w1.sum(1) > 0) & (self.mask2[0] > 0)
        return int(w1[alive].sum() + alive.sum() + (self.mask2 * alive).sum() + 1)


def _fit(model: SparseClassifier, x: torch.Tensor, target: torch.Tensor, steps: int, lr: float, l1: float) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        if l1 > 0:
            loss = loss + l1 * model.group_norms().sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()


def train_sparse(latents: np.ndarray, target: np.ndarray, config: SparseConfig) -> SparseClassifier:
    """Fit a ``SparseClassifier`` to soft or hard positive-class ``target`` in [0, 1] (N,).

    Returns the model in eval mode with at most ``config.max_active`` inputs.
    """
    if config.max_active < 1:
        raise ValueError(f"max_active must be at least 1, got {config.max_active}")
    if not 0 < config.weight_density <= 1:
        raise ValueError(f"weight_density must lie in (0, 1], got {config.weight_density}")
    latents = np.asarray(latents, np.float32)
    torch.manual_seed(config.seed)
    model = SparseClassifier(latents.shape[1], config.hidden)
    model.mean.copy_(torch.from_numpy(latents.mean(0)))
    model.scale.copy_(torch.from_numpy(latents.std(0) + 1e-6))
    x, y = torch.from_numpy(latents), torch.from_numpy(np.asarray(target, np.float32))
    _fit(model, x, y, config.steps, config.lr, config.l1)
    with torch.no_grad():
        norms = model.group_norms()
        model.input_mask.copy_((norms > 1e-3 * norms.max()).float())
    while int(model.input_mask.sum()) > config.max_active:
        with torch.no_grad():
            norms = torch.where(model.input_mask > 0, model.group_norms(), torch.inf)
            model.input_mask[int(norms.argmin())] = 0
        _fit(model, x, y, config.prune_steps, config.lr, config.l1)
    with torch.no_grad():
        for weight, mask in ((model.layer1.weight, model.mask1), (model.layer2.weight, model.mask2)):
            live = (weight * mask).abs()
            if mask is model.mask1:
                live = live * model.input_mask
            n_keep = max(1, int(round(config.weight_density * int((live > 0).sum()))))
            threshold = live.flatten().topk(n_keep).values[-1]
            mask.copy_((live >= threshold).float())
    _fit(model, x, y, config.prune_steps, config.lr, 0.0)
    model.eval()
    return model


@torch.no_grad()
def sparse_logit(model: SparseClassifier, latents: np.ndarray) -> np.ndarray:
    """The sparse model's positive-class logit (N,) of ``latents``."""
    return model(torch.from_numpy(np.asarray(latents, np.float32))).numpy()
