"""Models of DiffEx on plain arrays: cell classifier, classifier-aware diffusion autoencoder, bundles.

Inputs are float32 crops (N, C, H, W) in [-1, 1] and a pandas table with
``plate``, ``well`` and a class column; nothing here knows about plates or Dask.
"""

from screenxai.models.autoencoder import AutoencoderConfig, DiffusionAutoencoder
from screenxai.models.bundle import (Bundle, BundleError, Provenance, check_channels, load_bundle,
                                     register_architecture, save_bundle)
from screenxai.models.classifier import CellClassifier, ClassifierConfig, predict_proba
from screenxai.models.device import default_device, seed_everything
from screenxai.models.latent_checks import LatentUse, latent_use, probe_factors, reconstruction_error
from screenxai.models.presets import PRESETS, Preset, get_preset
from screenxai.models.progress import Progress
from screenxai.models.splits import SplitError, WellSplit, class_labels, split_by_well
from screenxai.models.train_autoencoder import AutoencoderTraining, TrainedAutoencoder, train_autoencoder
from screenxai.models.train_classifier import (ClassifierMetrics, ClassifierTraining, TrainedClassifier,
                                               train_classifier)
from screenxai.models.training import TrainedModels, save_trained, train_models

__all__ = [
    "PRESETS",
    "AutoencoderConfig",
    "AutoencoderTraining",
    "Bundle",
    "BundleError",
    "CellClassifier",
    "ClassifierConfig",
    "ClassifierMetrics",
    "ClassifierTraining",
    "DiffusionAutoencoder",
    "LatentUse",
    "Preset",
    "Progress",
    "Provenance",
    "SplitError",
    "TrainedAutoencoder",
    "TrainedClassifier",
    "TrainedModels",
    "WellSplit",
    "check_channels",
    "class_labels",
    "default_device",
    "get_preset",
    "latent_use",
    "load_bundle",
    "predict_proba",
    "probe_factors",
    "reconstruction_error",
    "register_architecture",
    "save_bundle",
    "save_trained",
    "seed_everything",
    "split_by_well",
    "train_autoencoder",
    "train_classifier",
    "train_models",
]
