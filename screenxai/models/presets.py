"""Named model sizes: ``tiny`` (tests), ``small`` (CPU demo), ``base`` (GPU).

A preset fixes the crop size, both architectures and both training
schedules, and may shorten the schedules of the later stages (direction
learning, the interpretable model), which otherwise keep their defaults.
Budgets, measured on a 2-core CPU shared with other work: ``tiny`` trains
in a few minutes at 32 px; ``small`` in under 15 minutes on the cells of a
24-well simulated plate. ``base`` is meant for a GPU (64 px, tens of
millions of parameters, bfloat16 autocast on CUDA).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dataclasses import dataclass, field, replace

from screenxai.models.train_autoencoder import AutoencoderTraining
from screenxai.models.train_classifier import ClassifierTraining


@dataclass(frozen=True)
class Preset:
    """Sizes and schedules of the classifier and the diffusion autoencoder.

    ``classifier`` and ``autoencoder`` hold the architecture settings of
    ``ClassifierConfig`` and ``AutoencoderConfig`` that do not follow from
    the data (channels, classes and crop size do). ``directions`` and
    ``interpretable`` override defaults of ``DirectionConfig`` (the explain
    stage's direction learning) and ``InterpretConfig`` (e.g. their step
    counts); empty in the named presets.
    """

    name: str
    crop_size: int
    classifier: dict = field(default_factory=dict)
    classifier_training: ClassifierTraining = ClassifierTraining()
    autoencoder: dict = field(default_factory=dict)
    autoencoder_training: AutoencoderTraining = AutoencoderTraining()
    directions: dict = field(default_factory=dict)
    interpretable: dict = field(default_factory=dict)

    def with_seed(self, seed: int) -> Preset:
        """The same preset with both trainings seeded with ``seed``."""
        return replace(self, classifier_training=replace(self.classifier_training, seed=seed),
                       autoencoder_training=replace(self.autoencoder_training, seed=seed))

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"name": self.name, "crop_size": self.crop_size, "classifier": self.classifier,
                "classifier_training": self.classifier_training.to_dict(),
                "autoencoder": {k: list(v) if isinstance(v, tuple) else v for k, v in self.autoencoder.items()},
                "autoencoder_training": self.autoencoder_training.to_dict(),
                "directions": dict(self.directions), "interpretable": dict(self.interpretable)}


# The recipe that makes z_sem carry the cell on a CPU budget (see benchmarks/results/models_cpu.json):
# x0 ("sample") prediction, DiffAE-style scale conditioning, the auxiliary decoder's image as extra UNet
# input, and the encoder pretrained with the auxiliary decoder before the UNet trains.
_RECIPE = dict(conditioning="scale", decoder_input=True, aux_decoder=True, prediction_type="sample")

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny", crop_size=32,
        classifier=dict(width=16, stages=3, blocks_per_stage=1),
        classifier_training=ClassifierTraining(epochs=4, batch_size=64, steps_per_epoch=30, patience=2),
        autoencoder=dict(latent_dim=64, z_dim=64, encoder_width=16, encoder_stages=3,
                         unet_channels=(16, 32, 64), layers_per_block=1, hint_residual=True, **_RECIPE),
        autoencoder_training=AutoencoderTraining(pretrain_epochs=20, epochs=4, batch_size=32, steps_per_epoch=30,
                                                 lr=2e-3)),
    "small": Preset(
        name="small", crop_size=32,
        classifier=dict(width=16, stages=3, blocks_per_stage=1),
        classifier_training=ClassifierTraining(epochs=10, batch_size=64, steps_per_epoch=40, patience=3),
        autoencoder=dict(latent_dim=64, z_dim=64, encoder_width=16, encoder_stages=3,
                         unet_channels=(32, 64, 64), layers_per_block=1, **_RECIPE),
        autoencoder_training=AutoencoderTraining(pretrain_epochs=20, epochs=10, batch_size=32, steps_per_epoch=40,
                                                 lr=1e-3)),
    "base": Preset(
        name="base", crop_size=64,
        classifier=dict(width=32, stages=4, blocks_per_stage=2, dropout=0.1),
        classifier_training=ClassifierTraining(epochs=40, batch_size=128, patience=6),
        autoencoder=dict(latent_dim=256, z_dim=256, encoder_width=32, encoder_stages=4,
                         unet_channels=(64, 128, 256, 256), layers_per_block=2, attention=True, norm_groups=32,
                         **_RECIPE),
        autoencoder_training=AutoencoderTraining(pretrain_epochs=20, epochs=100, batch_size=64, lr=2e-4)),
}


@contextmanager
def registered_preset(preset: Preset) -> Iterator[Preset]:
    """Make ``preset`` known by its name while the block runs (e.g. a smaller model for a test).

    Only this process learns it: workers in other processes do not.
    """
    if preset.name in PRESETS:
        raise ValueError(f"a preset named {preset.name!r} exists already")
    PRESETS[preset.name] = preset
    try:
        yield preset
    finally:
        del PRESETS[preset.name]


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets are {sorted(PRESETS)}")
    return PRESETS[name]
