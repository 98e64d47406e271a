"""Model bundles: a directory of safetensors weights, one ``config.json`` and a file manifest.

A bundle holds everything needed to use its models on a new plate: each
model's architecture and configuration, the crop size, channel names and
intensity normalisation the crops must have, the class names, and where the
training data came from. ``files.json`` (``screenxai.models.manifest``)
records a SHA-256 of every file of the bundle, so a truncated, swapped,
removed or added file is refused rather than silently used; the hash of
``files.json`` identifies the whole bundle.

A model class that can be bundled has an ``architecture`` name, a
``config`` with ``to_dict()``, and optionally ``shared_modules``: names of
submodules owned by another model of the bundle (the autoencoder's frozen
classifier), which are saved once, with their owner.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

import screenxai
from screenxai.errors import BundleError
from screenxai.io import atomic_folder
from screenxai.models.autoencoder import AutoencoderConfig, DiffusionAutoencoder
from screenxai.models.classifier import CellClassifier, ClassifierConfig
from screenxai.models.device import resolve_device
from screenxai.models.manifest import seal_bundle, sha256_file, verify_bundle

__all__ = ["Bundle", "BundleError", "Provenance", "check_channels", "load_bundle", "register_architecture",
           "save_bundle", "seal_bundle", "sha256_file", "verify_bundle"]

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"

Builder = Callable[[dict, Mapping[str, nn.Module]], nn.Module]
_BUILDERS: dict[str, Builder] = {
    CellClassifier.architecture: lambda config, _: CellClassifier(ClassifierConfig(**config)),
    DiffusionAutoencoder.architecture: lambda config, loaded: DiffusionAutoencoder(
        AutoencoderConfig.from_dict(config), loaded["classifier"]),
}


def register_architecture(name: str, builder: Builder) -> None:
    """Let bundles hold models of ``name``: ``builder(config_dict, models_loaded_before)`` makes one."""
    _BUILDERS[name] = builder


@dataclass
class Bundle:
    """Models loaded from a bundle, with the bundle's settings.

    ``models`` maps a model's role (``classifier``, ``autoencoder`` ...) to
    the model in eval mode; ``config`` is ``config.json`` as written;
    ``content_hash`` is the SHA-256 of ``files.json``.
    """

    path: Path
    config: dict
    models: dict[str, nn.Module]
    content_hash: str

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(self.config["channel_names"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config["class_names"])

    @property
    def crop_size(self) -> int:
        return int(self.config["crop_size"])

    @property
    def normalisation(self) -> dict:
        return self.config["normalisation"]

    def __getitem__(self, role: str) -> nn.Module:
        if role not in self.models:
            raise BundleError(f"bundle {self.path} has no {role!r} model (it has {sorted(self.models)})")
        return self.models[role]


@dataclass(frozen=True)
class Provenance:
    """Where a bundle's training data came from and how it was trained."""

    plates: Sequence[str] = ()
    wells: Sequence[str] = ()
    seed: int = 0
    preset: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict, with the screenxai version that trained."""
        return {"plates": list(self.plates), "wells": list(self.wells), "seed": self.seed, "preset": self.preset,
                "screenxai_version": screenxai.__version__, **self.extra}


def _own_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without submodules another model of the bundle saves."""
    shared = tuple(f"{name}." for name in getattr(model, "shared_modules", ()))
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(shared)}


def save_bundle(path: str | Path, models: Mapping[str, nn.Module], *, channel_names: Sequence[str],
                class_names: Sequence[str], crop_size: int, normalisation: dict,
                provenance: Provenance = Provenance(), class_column: str = "control",
                overwrite: bool = False) -> Path:
    """Write ``models`` (role -> model) and their settings as a bundle directory at ``path``.

    The bundle is built in a temporary directory beside ``path`` and swapped
    into place (``screenxai.io.atomic_folder``), so ``path`` is either absent,
    the old bundle, or the complete new one, sealed with its ``files.json``.
    Models are loaded back in the order given, so a model whose builder
    needs another (the autoencoder needs the classifier) comes after it.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise BundleError(f"{path} already exists; pass overwrite=True to replace it")
    for role, model in models.items():
        if getattr(model, "architecture", None) not in _BUILDERS:
            raise BundleError(f"model {role!r} ({type(model).__name__}) has no registered architecture")
    with atomic_folder(path) as tmp:
        entries = {}
        for role, model in models.items():
            filename = f"{role}.safetensors"
            (tmp / filename).write_bytes(save(_own_weights(model)))  # save_file would make it 0600
            entries[role] = {"architecture": model.architecture, "config": model.config.to_dict(),
                             "file": filename, "sha256": sha256_file(tmp / filename)}
        config = {"format_version": FORMAT_VERSION, "crop_size": int(crop_size),
                  "channel_names": list(channel_names), "normalisation": normalisation,
                  "class_column": class_column, "class_names": list(class_names),
                  "provenance": provenance.to_dict(), "models": entries}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=False))
        seal_bundle(tmp)
    return path


def _read_config(path: Path) -> dict:
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise BundleError(f"{path} is not a model bundle: {CONFIG_NAME} is missing")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{config_path} is not valid JSON: {err}") from err
    version = config.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{config_path} has no integer format_version")
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle {path} has format version {version}, newer than the {FORMAT_VERSION} this "
                          f"screenxai {screenxai.__version__} reads; upgrade screenxai")
    return config


def _load_model(path: Path, role: str, entry: dict, loaded: Mapping[str, nn.Module]) -> nn.Module:
    weights_path = path / entry["file"]
    if not weights_path.is_file():
        raise BundleError(f"bundle {path}: weights file {entry['file']} of model {role!r} is missing")
    if sha256_file(weights_path) != entry["sha256"]:
        raise BundleError(f"bundle {path}: weights file {entry['file']} of model {role!r} is corrupt "
                          "(its SHA-256 differs from the one in config.json)")
    if entry["architecture"] not in _BUILDERS:
        raise BundleError(f"bundle {path}: model {role!r} has unknown architecture {entry['architecture']!r}")
    try:
        weights = load_file(weights_path)
    except SafetensorError as err:
        raise BundleError(f"bundle {path}: weights file {entry['file']} is unreadable: {err}") from err
    model = _BUILDERS[entry["architecture"]](entry["config"], loaded)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    shared = tuple(f"{name}." for name in getattr(model, "shared_modules", ()))
    missing = [k for k in missing if not k.startswith(shared)]
    if missing or unexpected:
        raise BundleError(f"bundle {path}: weights of model {role!r} do not fit its architecture "
                          f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model


def load_bundle(path: str | Path, device: str | torch.device | None = "cpu",
                replacing: Sequence[str] = ()) -> Bundle:
    """Load the bundle at ``path`` after checking every file of it against ``files.json``.

    Models come back in eval mode on ``device`` (``None``: CUDA when present).
    ``replacing``: folders the caller is about to rewrite and seal again,
    left unchecked (see ``verify_bundle``).
    """
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise BundleError(f"{path} is not a model bundle: {CONFIG_NAME} is missing")
    content_hash = verify_bundle(path, replacing)
    config = _read_config(path)
    models: dict[str, nn.Module] = {}
    for role, entry in config["models"].items():
        models[role] = _load_model(path, role, entry, models)
    target = resolve_device(device)
    for model in models.values():
        model.to(target).eval()
    return Bundle(path, config, models, content_hash)


def check_channels(bundle: Bundle, channel_names: Sequence[str]) -> None:
    """Raise ``BundleError`` unless a plate's ``channel_names`` are the bundle's, in the same order."""
    if tuple(channel_names) != bundle.channel_names:
        raise BundleError(f"the plate's channels {list(channel_names)} are not those the bundle {bundle.path} "
                          f"was trained on {list(bundle.channel_names)}")
