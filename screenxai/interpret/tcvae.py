"""A small convolutional beta-TCVAE: the disentangled features the interpretable model reads.

The ELBO's KL term splits into index-code mutual information, total
correlation (TC) between latent dimensions and dimension-wise KL to the
prior (Chen et al., "Isolating Sources of Disentanglement in VAEs", 2018).
Weighting only the TC term by ``beta`` pushes the dimensions towards
independence without starving the reconstruction. ``log q(z)`` and
``log prod_d q(z_d)`` are estimated on each minibatch by minibatch-weighted
sampling. With ``beta = 1`` the loss is the plain VAE's.

A pixel loss lets a VAE ignore texture: spots at random places cannot be
drawn back from a few latents, so the best decode is smooth whatever the
cell. With ``texture_maps`` the VAE also encodes and reconstructs each
channel's texture map, the local RMS of the crop's fine detail (the crop
less its Gaussian blur), which is smooth and follows how spotty the cell
is: the latents then carry texture.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from screenxai.models.batches import map_batches
from screenxai.models.device import generator

LOG_2PI = math.log(2 * math.pi)
DETAIL_SIGMA = 1.0  # px: the blur whose residual is a crop's fine detail
TEXTURE_SIGMA = 2.0  # px: the neighbourhood over which the detail's RMS is taken
TEXTURE_SCALE = 0.25  # RMS (in [-1, 1] crop units) that maps to the top of the range


@dataclass(frozen=True)
class TCVAEConfig:
    """Shape of a ``BetaTCVAE``: crop channels and size, latent size, convolution width, texture maps or not."""

    in_channels: int
    image_size: int = 32
    latent_dim: int = 10
    width: int = 32
    texture_maps: bool = False

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


class BetaTCVAE(nn.Module):
    """Crops (N, C, S, S) in [-1, 1] <-> Gaussian latents (N, latent_dim).

    Three stride-2 convolutions down to S/8, a linear layer to the posterior
    mean and log-variance, and the mirror image back to pixels (tanh output).
    With ``texture_maps`` the encoder reads, and the decoder draws, each
    channel's texture map after the channels (``target``).
    """

    architecture = "BetaTCVAE"

    def __init__(self, config: TCVAEConfig) -> None:
        super().__init__()
        if config.image_size % 8:
            raise ValueError(f"BetaTCVAE needs a crop size divisible by 8, got {config.image_size}")
        self.config = config
        w, side = config.width, config.image_size // 8
        self._side = side
        channels = config.in_channels * (2 if config.texture_maps else 1)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, w, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 4, 2, 1), nn.SiLU(),
            nn.Flatten(), nn.Linear(2 * w * side * side, 128), nn.SiLU(),
            nn.Linear(128, 2 * config.latent_dim))
        self.decoder_input = nn.Sequential(
            nn.Linear(config.latent_dim, 128), nn.SiLU(), nn.Linear(128, 2 * w * side * side), nn.SiLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * w, 2 * w, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(w, channels, 4, 2, 1), nn.Tanh())

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """What the VAE encodes and reconstructs: the crops, and after them their texture maps when it has them."""
        return torch.cat([x, texture_maps(x)], dim=1) if self.config.texture_maps else x

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``q(z | x)``."""
        return self.posterior_of_target(self.target(x))

    def posterior_of_target(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``posterior`` from crops already made into ``target(x)``."""
        mean, log_var = self.encoder(target).chunk(2, dim=1)
        return mean, log_var.clamp(-12, 8)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (with texture maps after the channels, when the VAE has them) from latents."""
        h = self.decoder_input(z).view(len(z), -1, self._side, self._side)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior means: the cell's features."""
        return self.posterior(x)[0]


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of (N, C, H, W) blurred by a separable Gaussian, borders reflected."""
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def texture_maps(x: torch.Tensor) -> torch.Tensor:
    """Each channel's local RMS of fine detail (crop less its blur), mapped from [0, TEXTURE_SCALE] to [-1, 1]."""
    detail = x - _gaussian_blur(x, DETAIL_SIGMA)
    rms = (_gaussian_blur(detail**2, TEXTURE_SIGMA).clamp_min(0) + 1e-12).sqrt()  # finite gradient where flat
    return 2 * (rms / TEXTURE_SCALE).clamp(max=1) - 1


def _log_normal(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    return -0.5 * (LOG_2PI + log_var + (z - mean) ** 2 * torch.exp(-log_var))


def tcvae_loss(model: BetaTCVAE, x: torch.Tensor, dataset_size: int, beta: float,
               gen: torch.Generator | None = None, recon_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Batch means of the loss and its parts: reconstruction, MI, TC and dimension-wise KL.

    The reconstruction term is the summed squared error over pixels times
    ``recon_weight`` (a Gaussian likelihood with fixed variance). Minibatch
    weighted sampling: ``log q(z_i) ~ logsumexp_j log q(z_i | x_j) - log(N M)``
    for a batch of M out of ``dataset_size`` = N cells.
    """
    target = model.target(x)
    mean, log_var = model.posterior_of_target(target)
    noise = torch.randn(mean.shape, generator=gen).to(mean.device)
    z = mean + torch.exp(0.5 * log_var) * noise
    recon = recon_weight * ((model.decode(z) - target) ** 2).flatten(1).sum(1)
    log_qz_given_x = _log_normal(z, mean, log_var).sum(1)
    log_pz = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    pairwise = _log_normal(z[:, None, :], mean[None, :, :], log_var[None, :, :])  # (M, M, D)
    log_norm = math.log(dataset_size * len(x))
    log_qz = torch.logsumexp(pairwise.sum(2), dim=1) - log_norm
    log_prod_qz = (torch.logsumexp(pairwise, dim=1) - log_norm).sum(1)
    mi = (log_qz_given_x - log_qz).mean()
    tc = (log_qz - log_prod_qz).mean()
    dim_kl = (log_prod_qz - log_pz).mean()
    recon = recon.mean()
    return {"loss": recon + mi + beta * tc + dim_kl, "recon": recon, "mi": mi, "tc": tc, "dim_kl": dim_kl}


def train_tcvae(crops: np.ndarray, config: TCVAEConfig, beta: float, steps: int, batch_size: int = 64,
                lr: float = 1e-3, seed: int = 0, recon_weight: float = 1.0,
                on_step: Callable[[int, int], None] | None = None) -> tuple[BetaTCVAE, list[dict]]:
    """Train a ``BetaTCVAE`` on ``crops`` for ``steps`` seeded random batches; the model and a loss log.

    The log holds the mean of each loss part over every tenth of the steps;
    ``on_step(done, steps)`` is called as each tenth is logged.
    """
    if len(crops) < 2:
        raise ValueError(f"a beta-TCVAE needs at least 2 crops to train on, got {len(crops)}")
    torch.manual_seed(seed)
    model = BetaTCVAE(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    gen = generator(seed)
    data = torch.from_numpy(np.ascontiguousarray(crops, np.float32))
    size = min(batch_size, len(data))
    log: list[dict] = []
    window: list[dict[str, float]] = []
    model.train()
    for step in range(steps):
        index = torch.randint(0, len(data), (size,), generator=gen)
        parts = tcvae_loss(model, data[index], len(data), beta, gen, recon_weight)
        optimiser.zero_grad(set_to_none=True)
        parts["loss"].backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimiser.step()
        window.append({k: float(v.detach()) for k, v in parts.items()})
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            log.append({"step": step + 1, **{k: float(np.mean([w[k] for w in window])) for k in window[0]}})
            window = []
            if on_step is not None:
                on_step(step + 1, steps)
    model.eval()
    return model, log


@torch.no_grad()
def encode_means(model: BetaTCVAE, crops: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Posterior means (N, latent_dim) of ``crops`` as float32."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(crops, np.float32))
    out = map_batches(model, x, batch_size)
    if not out:
        return np.zeros((0, model.config.latent_dim), np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def reconstruction_mse(model: BetaTCVAE, crops: np.ndarray) -> float:
    """Mean squared error of decoding the posterior means of ``crops`` (the crops' channels, not texture maps)."""
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(crops, np.float32))
        return float(((model.decode(model(x))[:, :x.shape[1]] - x) ** 2).mean())

