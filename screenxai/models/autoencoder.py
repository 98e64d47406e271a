"""The classifier-aware diffusion autoencoder of DiffEx.

A semantic encoder ``E(x) -> w`` and the frozen classifier ``f`` give the
latent ``z_sem = Linear([softmax(f(x)); w])``; a denoising UNet built from
diffusers blocks predicts from ``(x_t, t, z_sem)``. How the UNet sees
``z_sem`` is the ``conditioning`` of the config:

``"additive"``
    ``z_sem`` is added to the time embedding (``UNet2DModel`` with
    ``class_embed_type="identity"``). Cheap, but a UNet readily learns to
    ignore such a signal.
``"scale"``
    DiffAE's adaptive group norm: time scale-shift in every ResNet block and
    a ``z_sem``-dependent scale and shift on each block's second GroupNorm
    (``ZModulatedNorm``), zero-initialised so training starts from the plain UNet.
``"cross_attention"``
    ``UNet2DConditionModel`` attending to ``z_sem`` cut into tokens.

With ``decoder_input`` the UNet also receives, as extra input channels, the
image an auxiliary deterministic decoder makes from ``z_sem`` alone; the
auxiliary decoder is trained to reconstruct the cell (``aux_decoder``). The
diffusion model then refines a picture that only ``z_sem`` determines, so it
cannot ignore ``z_sem``. With ``hint_residual`` (``sample`` prediction only)
the UNet predicts the clean image as that picture plus a correction, so a
decode from a fresh ``x_T`` starts from what ``z_sem`` says, not from the mean cell.

Schedulers: ``DDPMScheduler`` in training, ``DDIMScheduler`` for decoding and
``DDIMInverseScheduler`` for inversion, both with "trailing" timesteps (the
first decoding step is at t = T-1, where a fresh Gaussian x_T belongs) and
``clip_sample`` off (clipping breaks the invertibility of DDIM). Inversion
uses ``set_alpha_to_one=False``: with ``True`` its first step divides by
``1 - alpha = 0`` and gives NaN for ``sample`` prediction. Even with
``False`` that first step recovers the noise by dividing by
``sqrt(1 - alpha_bar_0)`` (0.01), which multiplies any error of a ``sample``
or ``v_prediction`` model a hundredfold; for those, the first step is taken
by ``first_inversion_step`` instead.

``unet_evaluations`` counts UNet evaluations per image: a forward pass on a
batch of n images adds n. ``decode`` and ``invert`` with ``steps`` add
``steps`` per image.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.models.resnet import ResnetBlock2D
from torch import nn
from torch.nn import functional as F

from screenxai.models.classifier import CellClassifier, ResidualBlock

CONDITIONINGS = ("additive", "scale", "cross_attention")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Shape and recipe of a ``DiffusionAutoencoder``; see the module docstring for the choices."""

    in_channels: int
    image_size: int
    n_classes: int
    latent_dim: int = 64
    z_dim: int = 64
    encoder_width: int = 16
    encoder_stages: int = 3
    unet_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: bool = False
    norm_groups: int = 8
    conditioning: str = "scale"
    decoder_input: bool = True
    hint_residual: bool = False
    aux_decoder: bool = True
    prediction_type: str = "sample"
    beta_schedule: str = "linear"
    num_train_timesteps: int = 1000
    cross_attention_tokens: int = 4

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.decoder_input and not self.aux_decoder:
            raise ValueError("decoder_input needs aux_decoder")
        if self.hint_residual and not (self.decoder_input and self.prediction_type == "sample"):
            raise ValueError("hint_residual needs decoder_input and prediction_type 'sample'")
        if self.image_size % 2 ** (len(self.unet_channels) - 1):
            raise ValueError(f"image_size {self.image_size} is not divisible by the UNet's downsampling")

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        data = asdict(self)
        data["unet_channels"] = list(self.unet_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> AutoencoderConfig:
        """The inverse of ``to_dict``; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown autoencoder settings {sorted(unknown)}")
        return cls(**{**data, "unet_channels": tuple(data.get("unet_channels", cls.unet_channels))})


class SemanticEncoder(nn.Module):
    """Crops -> semantic vector ``w`` (N, latent_dim): residual CNN, global average pool, linear."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        width = config.encoder_width
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, width, 3, 1, 1)]
        channels = width
        for stage in range(config.encoder_stages):
            out = width * 2**stage
            layers.append(ResidualBlock(channels, out, 2 if stage > 0 else 1))
            channels = out
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(channels, config.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x).mean(dim=(2, 3)))


class LatentDecoder(nn.Module):
    """``z_sem`` -> image (N, C, H, W) in a deterministic way: linear to a 4x4 grid, then upsampling convs."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.base = 4
        width = config.encoder_width * 2 ** (config.encoder_stages - 1)
        self.width = width
        self.project = nn.Linear(config.z_dim, width * self.base**2)
        layers: list[nn.Module] = []
        size = self.base
        while size < config.image_size:
            out = max(width // 2, config.encoder_width)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, out, 3, 1, 1),
                       nn.GroupNorm(min(8, out), out), nn.SiLU()]
            width, size = out, size * 2
        layers.append(nn.Conv2d(width, config.in_channels, 3, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        grid = self.project(z).view(len(z), self.width, self.base, self.base)
        return self.layers(F.silu(grid))


_Z_SEM: ContextVar[torch.Tensor | None] = ContextVar("z_sem", default=None)
"""The ``z_sem`` of the forward pass under way in this thread (or asyncio task), read by ``ZModulatedNorm``.

diffusers' blocks hand a ResNet block only ``(hidden_states, temb)`` and call
its ``norm2`` on ``hidden_states`` alone, so no argument of a UNet call
reaches the norm. Passing ``z_sem`` as an argument would mean rewriting both
``UNet2DModel.forward`` and ``ResnetBlock2D.forward``. A ``ContextVar`` is the
narrowest alternative: it is set for one ``ConditionedUNet.forward`` call and
reset when the call returns, each thread and task sees only its own value (so
threads sharing one model never read each other's latents; a thread started
inside the call sees none), and the model holds no mutable state, so its
``state_dict`` is that of the plain layers.
"""


class ZModulatedNorm(nn.Module):
    """A GroupNorm whose output is scaled by ``1 + s(z)`` and shifted by ``b(z)``, with s = b = 0 at start.

    ``z`` is the ``z_sem`` that ``ConditionedUNet.forward`` set for this call (``_Z_SEM``).
    """

    def __init__(self, norm: nn.GroupNorm, z_dim: int) -> None:
        super().__init__()
        self.norm = norm
        self.to_scale_shift = nn.Linear(z_dim, 2 * norm.num_channels)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = _Z_SEM.get()
        if z is None:
            raise RuntimeError("ZModulatedNorm called outside ConditionedUNet.forward")
        scale, shift = self.to_scale_shift(z).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        return self.norm(h) * (1 + scale) + shift


class ConditionedUNet(nn.Module):
    """A diffusers UNet that predicts from ``(x_t, t, z_sem)`` with the config's conditioning."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        stages = len(config.unet_channels)
        in_channels = config.in_channels * (2 if config.decoder_input else 1)
        common = dict(sample_size=config.image_size, in_channels=in_channels, out_channels=config.in_channels,
                      block_out_channels=tuple(config.unet_channels), layers_per_block=config.layers_per_block,
                      norm_num_groups=config.norm_groups)
        if config.conditioning == "cross_attention":
            dim = config.unet_channels[-1]
            self.unet = UNet2DConditionModel(
                **common, cross_attention_dim=dim, attention_head_dim=8,
                down_block_types=("DownBlock2D",) * (stages - 1) + ("CrossAttnDownBlock2D",),
                up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (stages - 1))
            self.to_tokens = nn.Linear(config.z_dim, config.cross_attention_tokens * dim)
            return
        attention = "AttnDownBlock2D" if config.attention else "DownBlock2D"
        self.unet = UNet2DModel(
            **common, attention_head_dim=8,
            down_block_types=("DownBlock2D",) * (stages - 1) + (attention,),
            up_block_types=(attention.replace("Down", "Up"),) + ("UpBlock2D",) * (stages - 1),
            class_embed_type="identity" if config.conditioning == "additive" else None,
            resnet_time_scale_shift="scale_shift" if config.conditioning == "scale" else "default")
        if config.conditioning == "additive":
            self.to_time_embedding = nn.Linear(config.z_dim, config.unet_channels[0] * 4)
        else:
            for block in [m for m in self.unet.modules() if isinstance(m, ResnetBlock2D)]:
                block.norm2 = ZModulatedNorm(block.norm2, config.z_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        conditioning = self.config.conditioning
        if conditioning == "cross_attention":
            tokens = self.to_tokens(z).view(len(z), self.config.cross_attention_tokens, -1)
            return self.unet(x_t, t, encoder_hidden_states=tokens).sample
        if conditioning == "additive":
            return self.unet(x_t, t, class_labels=self.to_time_embedding(z)).sample
        token = _Z_SEM.set(z)
        try:
            return self.unet(x_t, t).sample
        finally:
            _Z_SEM.reset(token)


class DiffusionAutoencoder(nn.Module):
    """Classifier-aware diffusion autoencoder: ``encode``, ``invert``, ``decode`` on batches of crops.

    ``classifier`` is frozen and owned by the caller (``shared_modules``:
    a bundle saves it with the classifier, not again here).
    """

    architecture = "DiffusionAutoencoder"
    shared_modules = ("classifier",)

    def __init__(self, config: AutoencoderConfig, classifier: CellClassifier) -> None:
        super().__init__()
        self.config = config
        self.classifier = classifier.requires_grad_(False).eval()
        self.encoder = SemanticEncoder(config)
        self.to_z = nn.Linear(config.n_classes + config.latent_dim, config.z_dim)
        self.unet = ConditionedUNet(config)
        self.aux_decoder = LatentDecoder(config) if config.aux_decoder else None
        self.unet_evaluations = 0

    def train(self, mode: bool = True) -> DiffusionAutoencoder:
        """Set train mode on the trainable parts; the classifier stays in eval mode."""
        super().train(mode)
        self.classifier.eval()
        return self

    # --- schedulers -------------------------------------------------------
    def _scheduler_settings(self) -> dict:
        return dict(num_train_timesteps=self.config.num_train_timesteps, beta_schedule=self.config.beta_schedule,
                    prediction_type=self.config.prediction_type, clip_sample=False)

    def training_scheduler(self) -> DDPMScheduler:
        """The forward (noising) process used in training."""
        return DDPMScheduler(**self._scheduler_settings())

    def decoding_scheduler(self, steps: int) -> DDIMScheduler:
        """Deterministic DDIM from t = T-1 to a clean image in ``steps`` steps."""
        scheduler = DDIMScheduler(**self._scheduler_settings(), timestep_spacing="trailing", set_alpha_to_one=True)
        scheduler.set_timesteps(steps)
        return scheduler

    def inversion_scheduler(self, steps: int) -> DDIMInverseScheduler:
        """DDIM run backwards, clean image to t = T-1; ``set_alpha_to_one=False`` keeps it finite."""
        scheduler = DDIMInverseScheduler(**self._scheduler_settings(), timestep_spacing="trailing",
                                         set_alpha_to_one=False)
        scheduler.set_timesteps(steps)
        return scheduler

    # --- latents ----------------------------------------------------------
    def semantic(self, x: torch.Tensor) -> torch.Tensor:
        """``w = E(x)``, with gradients."""
        return self.encoder(x)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """``z_sem = Linear([softmax(f(x)); E(x)])`` with gradients through E and the linear map only."""
        with torch.no_grad():
            probabilities = torch.softmax(self.classifier(x).float(), dim=1)
        return self.to_z(torch.cat([probabilities.to(x.dtype), self.encoder(x)], dim=1))

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                hint: torch.Tensor | None = None) -> torch.Tensor:
        """One UNet evaluation per image of the batch; ``hint`` is the auxiliary decoder's image of ``z``."""
        self.unet_evaluations += len(x_t)
        if not self.config.decoder_input:
            return self.unet(x_t, t, z)
        hint = (self.aux_decoder(z) if hint is None else hint).to(x_t.dtype)
        prediction = self.unet(torch.cat([x_t, hint], dim=1), t, z)
        return prediction + hint if self.config.hint_residual else prediction

    def training_losses(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Diffusion loss (MSE to the prediction type's target) and auxiliary reconstruction loss."""
        scheduler = self.training_scheduler()
        z = self.latent(x)
        noise = torch.randn(x.shape, generator=gen, device=gen.device).to(x)
        t = torch.randint(0, self.config.num_train_timesteps, (len(x),), generator=gen, device=gen.device).to(x.device)
        x_t = scheduler.add_noise(x, noise, t)
        target = {"epsilon": noise, "sample": x,
                  "v_prediction": scheduler.get_velocity(x, noise, t)}[self.config.prediction_type]
        hint = self.aux_decoder(z) if self.aux_decoder is not None else None
        losses = {"diffusion": F.mse_loss(self.denoise(x_t, t, z, hint).float(), target.float())}
        if hint is not None:
            losses["aux"] = F.mse_loss(hint.float(), x.float())
        return losses

    # --- the batched API --------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``z_sem`` of crops (N, C, H, W) -> (N, z_dim)."""
        return self.latent(x)

    @torch.no_grad()
    def invert(self, x: torch.Tensor, z: torch.Tensor, steps: int = 20) -> torch.Tensor:
        """The stochastic code ``x_T`` of crops ``x`` given their ``z_sem``, by DDIM inversion."""
        scheduler = self.inversion_scheduler(steps)
        hint = self.aux_decoder(z) if self.config.decoder_input else None
        sample = x
        for i, t in enumerate(scheduler.timesteps):
            if i == 0 and self.config.prediction_type != "epsilon":
                sample = self.first_inversion_step(x, int(t), z, hint, scheduler.alphas_cumprod)
                continue
            output = self.denoise(sample, t.expand(len(x)).to(x.device), z, hint)
            sample = scheduler.step(output, int(t), sample).prev_sample
        return sample

    def first_inversion_step(self, x: torch.Tensor, t: int, z: torch.Tensor, hint: torch.Tensor | None,
                             alphas_cumprod: torch.Tensor) -> torch.Tensor:
        """``x_t`` from a clean ``x`` that the last decoding step (``x_t`` -> predicted ``x0``) maps back to ``x``.

        One fixed-point iteration of ``x_t = sqrt(a) x + sqrt(1 - a) eps(x_t)``
        from ``x_t = sqrt(a) x``, where ``eps`` is the noise the model sees
        given its own ``x0`` prediction: well conditioned, one UNet evaluation.
        """
        alpha = alphas_cumprod[t].to(x)
        guess = alpha.sqrt() * x
        output = self.denoise(guess, torch.full((len(x),), t, device=x.device), z, hint)
        x0 = output if self.config.prediction_type == "sample" else alpha.sqrt() * guess - (1 - alpha).sqrt() * output
        eps = (guess - alpha.sqrt() * x0) / (1 - alpha).sqrt()
        return guess + (1 - alpha).sqrt() * eps

    @torch.no_grad()
    def decode(self, x_t: torch.Tensor, z: torch.Tensor, steps: int = 20) -> torch.Tensor:
        """Crops from stochastic codes ``x_T`` and latents ``z_sem`` by deterministic DDIM, clamped to [-1, 1]."""
        scheduler = self.decoding_scheduler(steps)
        hint = self.aux_decoder(z) if self.config.decoder_input else None
        sample = x_t
        for t in scheduler.timesteps:
            output = self.denoise(sample, t.expand(len(x_t)).to(x_t.device), z, hint)
            sample = scheduler.step(output, int(t), sample).prev_sample
        return sample.clamp(-1, 1)
