"""Saving and loading an interpretable model: safetensors weights and one ``interpretable.json``.

The JSON holds the settings, the class names, the printed formula (parsed
back on load, so the loaded model evaluates exactly the text saved), the
report, and a SHA-256 of each weights file, so a damaged file is refused.
The directory is built beside its target and swapped into place as a whole
(``screenxai.io.atomic_folder``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from screenxai.errors import ScreenxaiError
from screenxai.io import atomic_folder
from screenxai.interpret.fit import InterpretableModel, InterpretConfig
from screenxai.interpret.formula import Formula
from screenxai.interpret.sparse import SparseClassifier
from screenxai.interpret.tcvae import BetaTCVAE, TCVAEConfig

FORMAT_VERSION = 1
CONFIG_NAME = "interpretable.json"
WEIGHTS = {"vae": "vae.safetensors", "sparse": "sparse.safetensors"}


class InterpretStoreError(ScreenxaiError):
    """A saved interpretable model is missing, damaged or too new."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_interpretable(model: InterpretableModel, directory: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` to ``directory`` (refused if it exists, unless ``overwrite``)."""
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise InterpretStoreError(f"{directory} already exists; pass overwrite=True to replace it")
    with atomic_folder(directory) as tmp:
        hashes = {}
        for role, module in (("vae", model.vae), ("sparse", model.sparse)):
            (tmp / WEIGHTS[role]).write_bytes(save(_state(module)))  # save_file would make it 0600
            hashes[role] = _sha256(tmp / WEIGHTS[role])
        document = {"format_version": FORMAT_VERSION, "config": model.config.to_dict(),
                    "vae": model.vae.config.to_dict(),
                    "sparse": {"latent_dim": model.sparse.latent_dim, "hidden": model.sparse.hidden},
                    "class_names": list(model.class_names), "class_column": model.class_column,
                    "formula": model.formula, "sha256": hashes, "report": model.report}
        (tmp / CONFIG_NAME).write_text(json.dumps(document, indent=2, default=float))
    return directory


def _weights(directory: Path, role: str, expected: str) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS[role]
    if not path.is_file():
        raise InterpretStoreError(f"{directory}: weights file {path.name} is missing")
    if _sha256(path) != expected:
        raise InterpretStoreError(f"{directory}: weights file {path.name} is corrupt (SHA-256 differs from "
                                  f"{CONFIG_NAME})")
    try:
        return load_file(path)
    except SafetensorError as err:
        raise InterpretStoreError(f"{directory}: weights file {path.name} is unreadable: {err}") from err


def load_interpretable(directory: str | Path) -> InterpretableModel:
    """The model saved in ``directory``, on CPU in eval mode."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise InterpretStoreError(f"{directory} holds no interpretable model: {CONFIG_NAME} is missing")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InterpretStoreError(f"{path} is not valid JSON: {err}") from err
    version = document.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InterpretStoreError(f"{path} has format version {version!r}; this screenxai reads up to "
                                  f"{FORMAT_VERSION}")
    vae = BetaTCVAE(TCVAEConfig(**document["vae"]))
    sparse = SparseClassifier(**document["sparse"])
    for role, module in (("vae", vae), ("sparse", sparse)):
        try:
            module.load_state_dict(_weights(directory, role, document["sha256"][role]))
        except RuntimeError as err:
            raise InterpretStoreError(f"{directory}: {WEIGHTS[role]} does not fit its architecture: {err}") from err
        module.eval()
    return InterpretableModel(vae, sparse, Formula.parse(document["formula"]),
                              InterpretConfig.from_dict(document["config"]), tuple(document["class_names"]),
                              document["class_column"], document["report"])
