"""Attribute directions in ``z_sem`` space, learned contrastively (LatentCLR-style); no UNet calls.

K small MLPs ``g_k`` each propose, at every latent ``z``, a unit direction
``d_k(z) = g_k(z) / ||g_k(z)||``; an edit is ``z + alpha * s_k * d_k(z)``.
Directions live in the principal subspace of the cells' latents (the few
dimensions they occupy; see ``Directions``), so edits stay on the data.
A projector maps the change an edit makes to features, and an NT-Xent loss
pulls together the changes one direction makes to different cells and pushes
apart the changes of different directions, so the K directions become K
distinct, consistent edits.

By default the change is taken in whitened principal coordinates of
``z_sem``, so every dimension the cells occupy counts alike. With ``features`` (for
example ``decoder_features(autoencoder)``, the autoencoder's deterministic
auxiliary decoder) it is taken on what the edit does to an image, as
LatentCLR takes it on a generator's feature maps; the UNet is never called.

With ``guide`` (``classifier_guide(autoencoder)``: the classifier's
probabilities on the auxiliary decoder's image of a latent, still no UNet),
each direction is also rewarded for how much its edit changes what the
classifier reads in the cell region (``response_weight``) and penalised for
how much it changes the image outside that region (``outside_weight``).
Unsupervised directions alone span the latents' subspace in no preferred
orientation, so whether one of them moves the classifier was left to
chance; a reward on the response alone finds edits that move the classifier
through the background as well as through the cell.

``alpha`` is in standard-deviation units throughout: after learning,
``calibrate`` records for each direction its mean axis ``a_k`` (the
normalised average of ``d_k`` over the cells) and ``s_k``, the standard
deviation of the cells' ``z_sem`` projected on ``a_k``. An edit of
``alpha = 1`` therefore moves a cell by about one cell-to-cell spread along
the attribute, whatever the direction.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from screenxai.models.autoencoder import DiffusionAutoencoder
from screenxai.models.device import generator

FeatureMap = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DirectionConfig:
    """How directions are learned.

    ``n_directions`` is K; ``hidden`` the width of each direction MLP and of
    the projector; ``alpha`` the edit size in training (in SD units of the
    principal subspace); ``temperature`` that of NT-Xent;
    ``subspace_variance`` the share of the latents' variance the principal
    subspace keeps. With a ``guide``: ``response_weight`` weighs the reward
    for changing the classifier's response and ``outside_weight`` the penalty
    on the share of the image change that falls outside the cell region
    (mean |change| outside over inside), both measured on the first
    ``response_cells`` latents of each batch (one decoder and classifier pass
    over K + 1 copies of them per step; this pass is most of a step's cost,
    and 4 cells a step gave the same flips, localisation and cross-seed
    agreement as 16 in a quarter of the time, see ``benchmarks/README.md``).
    With ``target_classes`` (one class index per direction, cycled), the
    reward of direction k is the rise of its class's probability against
    the negative control (``EditEffect.gain``) instead of the change of all
    probabilities: each treatment of a screen gets directions that move
    cells towards it, where one shared reward lets every direction chase
    the treatment that is easiest to reach.
    """

    n_directions: int = 10
    hidden: int = 64
    projection_dim: int = 64
    epochs: int = 20
    steps_per_epoch: int = 20
    batch_size: int = 64
    temperature: float = 0.5
    alpha: float = 2.0
    lr: float = 1e-3
    subspace_variance: float = 0.99
    response_weight: float = 1.0
    outside_weight: float = 1.0
    response_cells: int = 4
    target_classes: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_directions", "hidden", "projection_dim", "epochs", "steps_per_epoch", "response_cells"):
            if getattr(self, name) < 1:
                raise ValueError(f"DirectionConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.n_directions < 2:
            raise ValueError(f"DirectionConfig.n_directions must be at least 2 to contrast, got {self.n_directions}")
        if self.batch_size < 2:
            raise ValueError(f"DirectionConfig.batch_size must be at least 2, got {self.batch_size}")
        if self.temperature <= 0 or self.alpha <= 0 or self.lr <= 0:
            raise ValueError("DirectionConfig.temperature, alpha and lr must be positive")
        for name in ("response_weight", "outside_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"DirectionConfig.{name} must be at least 0, got {getattr(self, name)}")
        if any(t < 0 for t in self.target_classes):
            raise ValueError(f"DirectionConfig.target_classes must be class indices, got {self.target_classes}")
        if not 0 < self.subspace_variance <= 1:
            raise ValueError(f"DirectionConfig.subspace_variance must lie in (0, 1], got {self.subspace_variance}")

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {**asdict(self), "target_classes": list(self.target_classes)}


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, n_out))


class Directions(nn.Module):
    """K directions on the principal subspace of ``z_sem``, with their calibration.

    The cells' latents occupy a few dimensions of ``z_sem``; an edit off that
    subspace leaves the data. So each learned direction is an MLP that reads
    the whitened principal coordinates ``u = (z - mean) V^T / sd`` of a
    latent (``rank`` of them) and proposes a change in those coordinates,
    mapped back to ``z_sem``; a cell is scored on its mean axis.

    The last ``n_linear`` directions are fixed (see
    ``screenxai.explain.contrast``): each edits along one unit vector of
    ``z_sem`` (``linear``), the same at every latent, and scores cells on
    another (``linear_axes``), the statistic that best detects that edit.
    ``edit_scales`` holds the spread along what each direction edits,
    ``scales`` the spread along what it scores; the two are the same for
    learned directions.
    """

    def __init__(self, z_dim: int, n_directions: int, hidden: int = 64, rank: int | None = None,
                 n_linear: int = 0) -> None:
        super().__init__()
        rank = z_dim if rank is None else rank
        if not 1 <= rank <= z_dim:
            raise ValueError(f"subspace rank must lie in 1..{z_dim}, got {rank}")
        if not 0 <= n_linear <= n_directions:
            raise ValueError(f"n_linear must lie in 0..{n_directions}, got {n_linear}")
        self.z_dim, self.n_directions, self.hidden, self.rank = z_dim, n_directions, hidden, rank
        self.n_linear = n_linear
        self.nets = nn.ModuleList(_mlp(rank, hidden, rank) for _ in range(n_directions - n_linear))
        self.register_buffer("mean", torch.zeros(z_dim))
        self.register_buffer("components", torch.eye(rank, z_dim))
        self.register_buffer("sd", torch.ones(rank))
        self.register_buffer("linear", torch.zeros(n_linear, z_dim))
        self.register_buffer("linear_axes", torch.zeros(n_linear, z_dim))
        self.register_buffer("axes", torch.zeros(n_directions, z_dim))
        self.register_buffer("scales", torch.ones(n_directions))
        self.register_buffer("edit_scales", torch.ones(n_directions))

    @property
    def n_learned(self) -> int:
        """How many directions are MLPs (the first ones)."""
        return self.n_directions - self.n_linear

    def _check(self, z: torch.Tensor, k: int) -> None:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"expected latents of shape (N, {self.z_dim}), got {tuple(z.shape)}")
        if not 0 <= k < self.n_directions:
            raise ValueError(f"direction {k} does not exist; there are {self.n_directions} "
                             f"(0..{self.n_directions - 1})")

    @torch.no_grad()
    def fit_subspace(self, z: torch.Tensor) -> Directions:
        """Set mean, principal components and their SDs from latents ``z``, keeping ``self.rank`` components."""
        self._check(z, 0)
        self.mean.copy_(z.mean(0))
        _, singular, vt = torch.linalg.svd(z - self.mean, full_matrices=False)
        self.components.copy_(vt[:self.rank])
        self.sd.copy_((singular[:self.rank] / max(len(z) - 1, 1) ** 0.5).clamp_min(1e-8))
        return self

    def whiten(self, z: torch.Tensor) -> torch.Tensor:
        """Whitened principal coordinates (N, rank) of latents."""
        return (z - self.mean) @ self.components.T / self.sd

    def direction(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """Unit vectors ``d_k(z)`` in ``z_sem`` (N, z_dim), inside the principal subspace."""
        self._check(z, k)
        if k >= self.n_learned:
            return self.linear[k - self.n_learned].expand(len(z), -1)
        change = F.normalize(self.nets[k](self.whiten(z)), dim=1)
        return F.normalize((change * self.sd) @ self.components, dim=1)

    def edit(self, z: torch.Tensor, k: int, alpha: float | torch.Tensor) -> torch.Tensor:
        """``z + alpha * s_k * d_k(z)``: ``alpha`` in SD units along the edit, a number or one per latent."""
        alpha = torch.as_tensor(alpha, dtype=z.dtype, device=z.device).reshape(-1, 1)
        return z + alpha * self.edit_scales[k] * self.direction(z, k)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Each latent's position along every mean axis, in SD units from the mean: (N, K)."""
        self._check(z, 0)
        return (z - self.mean) @ self.axes.T / self.scales

    @torch.no_grad()
    def calibrate(self, z: torch.Tensor) -> Directions:
        """Set each direction's scoring axis and the SDs of latents ``z`` along it and along its edit.

        A learned direction scores on its mean axis (the normalised average
        of ``d_k`` over ``z``); a fixed one on its ``linear_axes`` row.
        """
        self._check(z, 0)
        centred = z - self.mean
        for k in range(self.n_directions):
            edit = F.normalize(self.direction(z, k).mean(0), dim=0)
            axis = edit if k < self.n_learned else self.linear_axes[k - self.n_learned]
            self.axes[k].copy_(axis)
            self.scales[k] = (centred @ axis).std().clamp_min(1e-8)
            self.edit_scales[k] = (centred @ edit).std().clamp_min(1e-8)
        return self

    @torch.no_grad()
    def with_linear(self, edits: torch.Tensor, axes: torch.Tensor) -> Directions:
        """A copy with fixed directions appended after the learned ones, uncalibrated.

        Direction ``n_learned + i`` edits along ``edits[i]`` and scores on
        ``axes[i]`` (both (M, z_dim)); each is made a unit vector inside the
        principal subspace.
        """
        for name, vectors in (("edits", edits), ("axes", axes)):
            if vectors.ndim != 2 or vectors.shape != (len(edits), self.z_dim):
                raise ValueError(f"expected {name} of shape ({len(edits)}, {self.z_dim}), got {tuple(vectors.shape)}")
        extended = Directions(self.z_dim, self.n_directions + len(edits), self.hidden, self.rank,
                              self.n_linear + len(edits)).to(self.mean.device)
        extended.nets.load_state_dict(self.nets.state_dict())
        for name in ("mean", "components", "sd"):
            getattr(extended, name).copy_(getattr(self, name))
        extended.linear.copy_(torch.cat([self.linear, self._inside(edits)]))
        extended.linear_axes.copy_(torch.cat([self.linear_axes, self._inside(axes)]))
        return extended

    def _inside(self, vectors: torch.Tensor) -> torch.Tensor:
        """``vectors`` projected into the principal subspace, as unit vectors."""
        vectors = vectors.to(self.mean.device, self.mean.dtype)
        return F.normalize((vectors @ self.components.T) @ self.components, dim=1)

    def axis_agreement(self, z: torch.Tensor) -> torch.Tensor:
        """Mean cosine of ``d_k(z)`` with its mean axis, per direction (1: the direction is the same everywhere)."""
        with torch.no_grad():
            return torch.stack([(self.direction(z, k) @ self.axes[k]).mean() for k in range(self.n_directions)])


def subspace_rank(z: torch.Tensor, variance: float = 0.99) -> int:
    """The number of principal components of latents ``z`` that explain ``variance`` of their variance."""
    singular = torch.linalg.svdvals(z - z.mean(0))
    explained = torch.cumsum(singular**2, 0) / (singular**2).sum()
    rank = int(torch.searchsorted(explained, torch.tensor(variance, dtype=explained.dtype)).item()) + 1
    return min(rank, z.shape[1])


def decoder_features(autoencoder: DiffusionAutoencoder) -> FeatureMap:
    """A frozen copy of the autoencoder's auxiliary decoder as a feature map (image of ``z_sem``, flattened)."""
    if autoencoder.aux_decoder is None:
        raise ValueError("the autoencoder has no auxiliary decoder to take features from")
    decoder = copy.deepcopy(autoencoder.aux_decoder).eval().requires_grad_(False)

    def features(z: torch.Tensor) -> torch.Tensor:
        return decoder(z).flatten(1)

    return features


@dataclass
class EditEffect:
    """What K edits of B latents do, judged without the UNet; each field is (K, B).

    ``response``: the L1 change of the classifier's class probabilities;
    ``inside`` and ``outside``: the mean |change| per pixel of the rendered
    image inside and outside the cell region; ``proba_before`` (B, n_classes)
    and ``proba_after`` (K, B, n_classes): the probabilities themselves.
    """

    response: torch.Tensor
    inside: torch.Tensor
    outside: torch.Tensor
    proba_before: torch.Tensor
    proba_after: torch.Tensor

    def gain(self, target_classes: tuple[int, ...]) -> torch.Tensor:
        """(K, B): the rise, by each edit, of its target class's probability against class 0 alone.

        Direction k targets ``target_classes[k % n]`` = t; the probability is
        ``p_t / (p_t + p_0)``, the classifier's odds of t over the negative
        control (class 0), which other treatments' classes do not dilute.
        """
        n_edits = self.proba_after.shape[0]
        targets = torch.tensor([target_classes[k % len(target_classes)] for k in range(n_edits)],
                               device=self.proba_after.device)
        after = self.proba_after.gather(2, targets[:, None, None].expand(-1, self.proba_after.shape[1], 1))[..., 0]
        before = self.proba_before[:, targets].T
        return (after / (after + self.proba_after[..., 0] + 1e-8)
                - before / (before + self.proba_before[:, 0] + 1e-8))


Guide = Callable[[torch.Tensor, torch.Tensor], EditEffect]


def cell_region(size: int, radius: float = 0.5) -> torch.Tensor:
    """A (size, size) mask of the central disc of ``radius`` crop widths (0.5: the disc inscribed in the crop).

    Crops are centred on their nucleus, so this disc holds the cell and the
    corners hold background.
    """
    if radius <= 0:
        raise ValueError(f"cell region radius must be positive, got {radius}")
    offset = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(offset, offset, indexing="ij")
    return ((yy**2 + xx**2).sqrt() <= radius * size).float()


def classifier_guide(autoencoder: DiffusionAutoencoder, radius: float = 0.5) -> Guide:
    """Frozen copies of the auxiliary decoder and classifier that judge edits of latents.

    Each latent and its edits are rendered by the auxiliary decoder. The
    classifier reads the cell region (``cell_region(size, radius)``) of each
    image set on the background of the batch's mean latent, so an edit is
    credited for what it does to the cell only; the change outside the region
    is reported for the penalty.
    """
    if autoencoder.aux_decoder is None:
        raise ValueError("the autoencoder has no auxiliary decoder to render latents for the classifier")
    decoder = copy.deepcopy(autoencoder.aux_decoder).eval().requires_grad_(False)
    classifier = copy.deepcopy(autoencoder.classifier).eval().requires_grad_(False)
    region = cell_region(autoencoder.config.image_size, radius)

    def guide(z: torch.Tensor, edited: torch.Tensor) -> EditEffect:
        n_edits, batch = edited.shape[:2]
        mask = region.to(z.device)
        images = decoder(torch.cat([z, edited.reshape(-1, z.shape[1]), z.mean(0, keepdim=True)]))
        before, after, background = images[:batch], images[batch:-1], images[-1:]
        proba = torch.softmax(classifier((images[:-1] * mask + background * (1 - mask)).clamp(-1, 1)).float(), 1)
        edited_proba = proba[batch:].reshape(n_edits, batch, -1)
        response = (edited_proba - proba[:batch]).abs().sum(-1)
        change = (after.reshape(n_edits, batch, *before.shape[1:]) - before).abs().mean(2)
        inside = (change * mask).sum((-2, -1)) / mask.sum()
        outside = (change * (1 - mask)).sum((-2, -1)) / (1 - mask).sum()
        return EditEffect(response, inside, outside, proba[:batch], edited_proba)

    return guide


def nt_xent(changes: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over changes (K, B, D): positives share the direction (first index), negatives do not.

    The similarity is the absolute cosine, so a direction and its opposite
    count as the same edit: K directions must make K different changes, not
    K/2 changes and their reverses.
    """
    n_directions, batch, _ = changes.shape
    h = F.normalize(changes.reshape(n_directions * batch, -1), dim=1)
    logits = (h @ h.T).abs() / temperature
    direction_of = torch.arange(n_directions, device=h.device).repeat_interleave(batch)
    self_mask = torch.eye(len(h), dtype=torch.bool, device=h.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    same = (direction_of[:, None] == direction_of[None, :]) & ~self_mask
    log_all = torch.logsumexp(logits, dim=1)
    log_same = torch.logsumexp(logits.masked_fill(~same, float("-inf")), dim=1)
    return (log_all - log_same).mean()


def _subspace_directions(z: torch.Tensor, n_directions: int, hidden: int, variance: float) -> Directions:
    return Directions(z.shape[1], n_directions, hidden, subspace_rank(z, variance)).to(z.device).fit_subspace(z)


def learn_directions(z: torch.Tensor, config: DirectionConfig = DirectionConfig(),
                     features: FeatureMap | None = None, guide: Guide | None = None,
                     on_epoch: Callable[[int, int], None] | None = None) -> Directions:
    """Learn K directions on latents ``z`` (N, z_dim) with NT-Xent, then calibrate them on ``z``.

    ``features`` (frozen, optional) maps latents to the space in which an
    edit's change is measured; default: the whitened principal coordinates.
    ``guide`` (frozen, optional, e.g. ``classifier_guide``): the mean change
    of its response is rewarded (``config.response_weight``) and the share
    of image change outside the cell penalised (``config.outside_weight``).
    ``on_epoch(done, total)`` is called after each epoch.
    """
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"expected latents of shape (N >= 2, z_dim), got {tuple(z.shape)}")
    z = z.detach().float()
    torch.manual_seed(config.seed)
    directions = _subspace_directions(z, config.n_directions, config.hidden, config.subspace_variance)
    feature_map = features or directions.whiten
    with torch.no_grad():
        feature_dim = feature_map(z[:2]).shape[1]
    projector = _mlp(feature_dim, config.hidden, config.projection_dim).to(z.device)
    optimiser = torch.optim.Adam([*directions.parameters(), *projector.parameters()], lr=config.lr)
    step_size = config.alpha * directions.sd.pow(2).mean().sqrt()
    gen = generator(config.seed)
    batch = min(config.batch_size, len(z))
    for step in range(config.epochs * config.steps_per_epoch):
        zb = z[torch.randperm(len(z), generator=gen)[:batch].to(z.device)]
        edited = [zb + step_size * directions.direction(zb, k) for k in range(config.n_directions)]
        base = feature_map(zb)
        changes = torch.stack([feature_map(e) - base for e in edited])
        loss = nt_xent(projector(changes), config.temperature)
        if guide is not None:
            cells = config.response_cells
            effect = guide(zb[:cells], torch.stack(edited)[:, :cells])
            spill = effect.outside.mean(1) / (effect.inside.mean(1) + 1e-3)
            reward = effect.gain(config.target_classes) if config.target_classes else effect.response
            loss = loss - config.response_weight * reward.mean() + config.outside_weight * spill.mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if on_epoch is not None and (step + 1) % config.steps_per_epoch == 0:
            on_epoch((step + 1) // config.steps_per_epoch, config.epochs)
    return directions.eval().requires_grad_(False).calibrate(z)


def random_directions(z: torch.Tensor, n_directions: int, hidden: int = 64, seed: int = 0,
                      variance: float = 0.99) -> Directions:
    """Untrained direction MLPs on the same subspace, calibrated on ``z``: the negative control."""
    torch.manual_seed(seed)
    directions = _subspace_directions(z.detach().float(), n_directions, hidden, variance)
    return directions.eval().requires_grad_(False).calibrate(z.detach().float())


def direction_agreement(first: Directions, second: Directions, first_direction: int, second_direction: int,
                        first_sign: int = 1, second_sign: int = 1) -> float:
    """Cosine similarity of two signed mean axes (e.g. the top attribute learned with two seeds)."""
    a = first.axes[first_direction] * first_sign
    b = second.axes[second_direction] * second_sign
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))
