"""Saving and loading an interpretable model: safetensors weights and one ``interpretable.json``.

The JSON holds the settings, the class names, the printed formula (parsed
back on load, so the loaded model evaluates exactly the text saved), the
report, and a SHA-256 of each weights file, so a damaged file is refused.
A two-class model is written in layout 1 (``vae`` and ``sparse`` weights,
one formula); the models of a screen of many treatments in layout 2: the
shared ``vae`` weights, ``sparse-<k>`` weights of the treatment of class
index ``k``, and one entry (formula, report) per treatment.
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
from screenxai.interpret.treatments import TreatmentModels

FORMAT_VERSION = 2
SINGLE_VERSION = 1  # the layout of a two-class model
CONFIG_NAME = "interpretable.json"
WEIGHTS = {"vae": "vae.safetensors", "sparse": "sparse.safetensors"}


class InterpretStoreError(ScreenxaiError):
    """A saved interpretable model is missing, damaged or too new."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _sparse_file(index: int) -> str:
    return f"sparse-{index}.safetensors"


def _write_weights(folder: Path, name: str, module: torch.nn.Module) -> str:
    """Write ``module``'s weights to ``folder/name``; their SHA-256."""
    (folder / name).write_bytes(save(_state(module)))  # save_file would make it 0600
    return _sha256(folder / name)


def _sparse_shape(sparse: SparseClassifier) -> dict:
    return {"latent_dim": sparse.latent_dim, "hidden": sparse.hidden}


def save_interpretable(model: InterpretableModel | TreatmentModels, directory: str | Path,
                       overwrite: bool = False) -> Path:
    """Write ``model`` (two-class, or one per treatment) to ``directory``; refused if it exists unless ``overwrite``."""
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise InterpretStoreError(f"{directory} already exists; pass overwrite=True to replace it")
    with atomic_folder(directory) as tmp:
        document = _treatments_document(model, tmp) if isinstance(model, TreatmentModels) \
            else _single_document(model, tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(document, indent=2, default=float))
    return directory


def _single_document(model: InterpretableModel, tmp: Path) -> dict:
    """Layout 1: the weights of a two-class model written into ``tmp``, and its JSON document."""
    hashes = {role: _write_weights(tmp, WEIGHTS[role], module)
              for role, module in (("vae", model.vae), ("sparse", model.sparse))}
    return {"format_version": SINGLE_VERSION, "config": model.config.to_dict(), "vae": model.vae.config.to_dict(),
            "sparse": _sparse_shape(model.sparse), "class_names": list(model.class_names),
            "class_column": model.class_column, "formula": model.formula, "sha256": hashes, "report": model.report}


def _treatments_document(models: TreatmentModels, tmp: Path) -> dict:
    """Layout 2: the shared VAE and each treatment's sparse network written into ``tmp``, and the JSON document."""
    hashes = {WEIGHTS["vae"]: _write_weights(tmp, WEIGHTS["vae"], models.vae)}
    entries = []
    for treatment, model in models.models.items():
        name = _sparse_file(models.class_names.index(treatment))
        hashes[name] = _write_weights(tmp, name, model.sparse)
        entries.append({"treatment": treatment, "weights": name, "sparse": _sparse_shape(model.sparse),
                        "formula": model.formula, "report": model.report})
    return {"format_version": FORMAT_VERSION, "layout": "treatments", "config": models.config.to_dict(),
            "vae": models.vae.config.to_dict(), "class_names": list(models.class_names),
            "class_column": models.class_column, "sha256": hashes, "treatments": entries, "report": models.report}


def _weights(directory: Path, name: str, expected: str) -> dict[str, torch.Tensor]:
    path = directory / name
    if not path.is_file():
        raise InterpretStoreError(f"{directory}: weights file {path.name} is missing")
    if _sha256(path) != expected:
        raise InterpretStoreError(f"{directory}: weights file {path.name} is corrupt (SHA-256 differs from "
                                  f"{CONFIG_NAME})")
    try:
        return load_file(path)
    except SafetensorError as err:
        raise InterpretStoreError(f"{directory}: weights file {path.name} is unreadable: {err}") from err


def _load_module(module: torch.nn.Module, directory: Path, name: str, expected: str) -> torch.nn.Module:
    """``module`` with the weights of ``directory/name``, in eval mode."""
    try:
        module.load_state_dict(_weights(directory, name, expected))
    except RuntimeError as err:
        raise InterpretStoreError(f"{directory}: {name} does not fit its architecture: {err}") from err
    return module.eval()


def load_interpretable(directory: str | Path) -> InterpretableModel | TreatmentModels:
    """The model saved in ``directory`` (layout 1: two-class; layout 2: one per treatment), on CPU in eval mode."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise InterpretStoreError(f"{directory} holds no interpretable model: {CONFIG_NAME} is missing")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InterpretStoreError(f"{path} is not valid JSON: {err}") from err
    version = document.get("format_version")
    if not isinstance(version, int) or not SINGLE_VERSION <= version <= FORMAT_VERSION:
        raise InterpretStoreError(f"{path} has format version {version!r}; this screenxai reads "
                                  f"{SINGLE_VERSION} to {FORMAT_VERSION}")
    if version == FORMAT_VERSION and document.get("layout") == "treatments":
        return _load_treatments(directory, document)
    if version != SINGLE_VERSION:
        raise InterpretStoreError(f"{path}: format version {version} has no layout {document.get('layout')!r}")
    vae = _load_module(BetaTCVAE(TCVAEConfig(**document["vae"])), directory, WEIGHTS["vae"],
                       document["sha256"]["vae"])
    sparse = _load_module(SparseClassifier(**document["sparse"]), directory, WEIGHTS["sparse"],
                          document["sha256"]["sparse"])
    return InterpretableModel(vae, sparse, Formula.parse(document["formula"]),
                              InterpretConfig.from_dict(document["config"]), tuple(document["class_names"]),
                              document["class_column"], document["report"])


def _load_treatments(directory: Path, document: dict) -> TreatmentModels:
    """Layout 2: the shared VAE and each treatment's two-class model over it."""
    hashes = document["sha256"]
    vae = _load_module(BetaTCVAE(TCVAEConfig(**document["vae"])), directory, WEIGHTS["vae"], hashes[WEIGHTS["vae"]])
    config = InterpretConfig.from_dict(document["config"])
    names, column = tuple(document["class_names"]), document["class_column"]
    models = {}
    for entry in document["treatments"]:
        if entry["weights"] not in hashes:
            raise InterpretStoreError(f"{directory}: {CONFIG_NAME} lists no SHA-256 for {entry['weights']}")
        sparse = _load_module(SparseClassifier(**entry["sparse"]), directory, entry["weights"],
                              hashes[entry["weights"]])
        models[entry["treatment"]] = InterpretableModel(vae, sparse, Formula.parse(entry["formula"]), config,
                                                        (names[0], entry["treatment"]), column, entry["report"])
    return TreatmentModels(vae, models, config, names, column, document["report"])
