"""Diffusion autoencoder: conditioning, schedulers, UNet counter, training determinism and resume."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from diffusers import DDIMInverseScheduler
from torch import nn

from screenxai.models.autoencoder import (CONDITIONINGS, PREDICTION_TYPES, AutoencoderConfig,
                                          DiffusionAutoencoder)
from screenxai.models.classifier import CellClassifier, ClassifierConfig
from screenxai.models.latent_checks import latent_use
from screenxai.models.train_autoencoder import AutoencoderTraining, train_autoencoder
from toy_cells import toy_cells

torch.set_num_threads(1)
SIZE = 16


def tiny_config(**changes) -> AutoencoderConfig:
    settings = dict(in_channels=2, image_size=SIZE, n_classes=2, latent_dim=8, z_dim=8, encoder_width=8,
                    encoder_stages=2, unet_channels=(16, 16))
    return AutoencoderConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def classifier() -> CellClassifier:
    torch.manual_seed(0)
    return CellClassifier(ClassifierConfig(in_channels=2, n_classes=2, width=8, stages=2)).eval()


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    return torch.from_numpy(toy_cells(wells_per_class=2, cells_per_well=32, size=SIZE, seed=0)[0])


def test_config_round_trip_and_validation():
    config = tiny_config(conditioning="additive", prediction_type="v_prediction")
    assert AutoencoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="conditioning"):
        tiny_config(conditioning="concat")
    with pytest.raises(ValueError, match="prediction_type"):
        tiny_config(prediction_type="x0")
    with pytest.raises(ValueError, match="decoder_input needs aux_decoder"):
        tiny_config(aux_decoder=False)
    with pytest.raises(ValueError, match="hint_residual needs"):
        tiny_config(hint_residual=True, prediction_type="epsilon")
    with pytest.raises(ValueError, match="hint_residual needs"):
        tiny_config(hint_residual=True, decoder_input=False)
    assert not AutoencoderConfig.from_dict({k: v for k, v in tiny_config().to_dict().items()
                                            if k != "hint_residual"}).hint_residual


class _Zero(nn.Module):
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x_t[:, :2])


def test_hint_residual_predicts_a_correction_to_the_decoder_image(classifier, crops):
    """A UNet that outputs zero predicts the auxiliary decoder's image, so a fresh x_T decodes to it."""
    model = DiffusionAutoencoder(tiny_config(hint_residual=True), classifier).eval()
    model.unet = _Zero()
    x = crops[:4]
    z = model.encode(x)
    with torch.no_grad():
        hint = model.aux_decoder(z)
        t = torch.full((4,), 500)
        assert torch.equal(model.denoise(torch.randn_like(x), t, z), hint)
        plain = DiffusionAutoencoder(tiny_config(), classifier).eval()
        plain.unet = _Zero()
        assert torch.equal(plain.denoise(torch.randn_like(x), t, z), torch.zeros_like(x))
    assert torch.allclose(model.decode(torch.randn_like(x), z, steps=5), hint.clamp(-1, 1), atol=1e-5)


def test_unet_counter_counts_per_image_evaluations(classifier, crops):
    model = DiffusionAutoencoder(tiny_config(), classifier).eval()
    x = crops[:4]
    z = model.encode(x)
    assert model.unet_evaluations == 0
    x_t = model.invert(x, z, steps=3)
    assert model.unet_evaluations == 12
    model.decode(x_t, z, steps=5)
    assert model.unet_evaluations == 32
    model.training_losses(crops[:6], torch.Generator().manual_seed(0))
    assert model.unet_evaluations == 38


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_inversion_and_decoding_are_finite_for_every_prediction_type(classifier, crops, prediction_type):
    model = DiffusionAutoencoder(tiny_config(prediction_type=prediction_type), classifier).eval()
    inverse, forward = model.inversion_scheduler(4), model.decoding_scheduler(4)
    assert not inverse.config.set_alpha_to_one and not inverse.config.clip_sample and not forward.config.clip_sample
    assert int(forward.timesteps[0]) == model.config.num_train_timesteps - 1
    assert forward.timesteps.flip(0).tolist() == inverse.timesteps.tolist()
    z = model.encode(crops[:4])
    x_t = model.invert(crops[:4], z, 4)
    assert torch.isfinite(x_t).all()
    assert torch.isfinite(model.decode(x_t, z, 4)).all()


def test_set_alpha_to_one_is_what_breaks_sample_prediction_inversion():
    scheduler = DDIMInverseScheduler(prediction_type="sample", set_alpha_to_one=True, clip_sample=False,
                                     timestep_spacing="trailing")
    scheduler.set_timesteps(4)
    x = torch.ones(1, 1, 2, 2)
    assert not torch.isfinite(scheduler.step(x, int(scheduler.timesteps[0]), x).prev_sample).all()


def _unet_output(model: DiffusionAutoencoder, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.denoise(x, torch.full((len(x),), 500), z)


def test_scale_conditioning_starts_as_identity_and_then_conditions(classifier, crops):
    model = DiffusionAutoencoder(tiny_config(conditioning="scale", decoder_input=False), classifier).eval()
    x, z = crops[:3], torch.randn(3, 8)
    assert torch.equal(_unet_output(model, x, z), _unet_output(model, x, torch.zeros_like(z)))
    modulations = [m for name, m in model.unet.named_modules() if name.endswith("to_scale_shift")]
    assert len(modulations) >= 4
    with torch.no_grad():
        for layer in modulations:
            layer.weight.normal_(0, 0.1)
    assert not torch.allclose(_unet_output(model, x, z), _unet_output(model, x, torch.zeros_like(z)))


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_every_conditioning_reaches_the_unet_output(classifier, crops, conditioning):
    torch.manual_seed(1)
    model = DiffusionAutoencoder(tiny_config(conditioning=conditioning, decoder_input=False), classifier).eval()
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "to_scale_shift" in name:
                p.normal_(0, 0.1)
    x, z = crops[:3], torch.randn(3, 8)
    assert not torch.allclose(_unet_output(model, x, z), _unet_output(model, x, z.flip(0)))


def test_threads_sharing_one_model_each_get_the_output_of_their_own_z_sem(classifier, crops):
    """Two threads denoise with one scale-conditioned model at once; each gets exactly what it gets alone."""
    torch.manual_seed(2)
    model = DiffusionAutoencoder(tiny_config(conditioning="scale", decoder_input=False), classifier).eval()
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "to_scale_shift" in name:
                p.normal_(0, 0.5)
    x, latents = crops[:2], [torch.randn(2, 8), torch.randn(2, 8)]
    alone = [_unet_output(model, x, z) for z in latents]
    assert not torch.allclose(alone[0], alone[1])
    barrier = threading.Barrier(2)

    def denoise_repeatedly(z: torch.Tensor) -> list[torch.Tensor]:
        barrier.wait()
        return [_unet_output(model, x, z) for _ in range(40)]

    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(denoise_repeatedly, latents))
    for outputs, expected in zip(together, alone):
        assert all(torch.equal(output, expected) for output in outputs)


def test_latent_depends_on_the_frozen_classifier(crops):
    torch.manual_seed(0)
    first = CellClassifier(ClassifierConfig(in_channels=2, n_classes=2, width=8, stages=2))
    model = DiffusionAutoencoder(tiny_config(), first)
    assert not any(p.requires_grad for p in model.classifier.parameters())
    z = model.encode(crops[:4])
    with torch.no_grad():
        first.head.bias.add_(torch.tensor([3.0, -3.0]))
    assert not torch.allclose(model.encode(crops[:4]), z)


class _HintCopier(nn.Module):
    """Stands in for a UNet that uses z_sem fully: predicts x0 as the auxiliary decoder's image of z_sem."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return x_t[:, self.channels:]


TRAINING = AutoencoderTraining(epochs=2, pretrain_epochs=1, steps_per_epoch=2, batch_size=8, seed=5)


@pytest.fixture(scope="module")
def semantic_model(classifier, crops) -> DiffusionAutoencoder:
    """Encoder and auxiliary decoder trained (no UNet training), so z_sem carries the toy cell."""
    training = AutoencoderTraining(epochs=0, pretrain_epochs=6, steps_per_epoch=25, batch_size=32, lr=3e-3)
    return train_autoencoder(crops.numpy(), classifier, tiny_config(), training).model


def test_latent_check_passes_a_unet_that_uses_z_and_fails_one_that_ignores_it(semantic_model, crops):
    cells = crops[:48].numpy()
    semantic_model.unet = _HintCopier(2)
    assert latent_use(semantic_model, cells, steps=4).improvement > 0.2
    original = semantic_model.denoise

    def ignoring_z(x_t, t, z, hint=None):
        return original(x_t, t, torch.zeros_like(z))

    semantic_model.denoise = ignoring_z
    try:
        assert abs(latent_use(semantic_model, cells, steps=4).improvement) < 1e-6
    finally:
        del semantic_model.denoise


def test_an_untrained_scale_unet_ignores_z_and_fails_the_check(semantic_model, classifier, crops):
    model = DiffusionAutoencoder(tiny_config(decoder_input=False), classifier).eval()
    model.encoder.load_state_dict(semantic_model.encoder.state_dict())
    assert abs(latent_use(model, crops[:32].numpy(), steps=3).improvement) < 1e-6


def test_training_is_deterministic_and_resumes_exactly(classifier, crops, tmp_path):
    data = crops.numpy()
    first = train_autoencoder(data, classifier, tiny_config(), TRAINING)
    second = train_autoencoder(data, classifier, tiny_config(), TRAINING)
    stages = [h["stage"] for h in first.history]
    assert stages == ["semantic", "autoencoder", "autoencoder"]
    checkpoint = tmp_path / "autoencoder.pt"

    def stop(progress):
        if (progress.stage, progress.epoch) == ("autoencoder", 0):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_autoencoder(data, classifier, tiny_config(), TRAINING, progress=stop, checkpoint=checkpoint)
    seen = []
    resumed = train_autoencoder(data, classifier, tiny_config(), TRAINING, checkpoint=checkpoint,
                                progress=lambda p: seen.append((p.stage, p.epoch)))
    assert seen == [("autoencoder", 1)]
    reference = first.model.state_dict()
    for name, value in reference.items():
        assert torch.equal(value, second.model.state_dict()[name]), name
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert first.history == resumed.history


class _NoiselessOracle(nn.Module):
    """Predicts x0 = x_t / sqrt(alpha_bar_t): exact for the noise-free inputs that inversion starts from."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.alphas_cumprod = alphas_cumprod

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return x_t / self.alphas_cumprod[t.long()].sqrt()[:, None, None, None]


def test_sample_prediction_inversion_is_well_conditioned(classifier, crops):
    model = DiffusionAutoencoder(tiny_config(prediction_type="sample", decoder_input=False), classifier).eval()
    model.unet = _NoiselessOracle(model.training_scheduler().alphas_cumprod)
    x = crops[:4]
    z = model.encode(x)
    assert torch.allclose(model.decode(model.invert(x, z, steps=1), z, steps=1), x.clamp(-1, 1), atol=1e-4)


def test_counterfactuals_decode_the_unedited_cells_once_for_every_attribute(classifier, crops):
    """alpha 0 is the same image for every attribute: decoded once per batch, and equal to a decode of its own."""
    import numpy as np
    import pandas as pd

    from screenxai.explain import DirectionConfig, learn_directions, make_counterfactuals

    torch.manual_seed(3)
    model = DiffusionAutoencoder(tiny_config(), classifier).eval()
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "to_scale_shift" in name:
                p.normal_(0, 0.5)  # make z_sem matter to the UNet, so edits change the image
    x = crops[:6]
    z = model.encode(x)
    directions = learn_directions(z.detach(), DirectionConfig(n_directions=3, epochs=1, steps_per_epoch=2))
    attributes = pd.DataFrame({"attribute": ["d0p", "d1n", "d2p"], "rank": [1, 2, 3], "direction": [0, 1, 2],
                               "sign": [1, -1, 1], "target_class": 1})
    table = pd.DataFrame({"plate": "p", "well": "A01", "field": 0, "label": np.arange(len(x))})
    before = model.unet_evaluations
    rendered = make_counterfactuals(model, directions, attributes, x.numpy(), table, ["DNA", "reporter"],
                                    alphas=(-1.5, 0.0, 1.5), steps_inv=2, steps_dec=2)
    assert model.unet_evaluations - before == len(x) * 2 + len(x) * (3 * 2 + 1) * 2  # inversion, 6 edits, 1 unedited
    with torch.no_grad():
        unedited = model.decode(model.invert(x, z, 2), z, 2).numpy()
    images = rendered["image"]
    for attribute in rendered["attribute"].to_numpy():
        assert np.array_equal(images.sel(attribute=attribute, alpha=0.0).to_numpy(), unedited)
        assert not np.allclose(images.sel(attribute=attribute, alpha=1.5).to_numpy(), unedited)


def test_counterfactuals_render_only_the_pairs_asked_for_and_the_rest_is_nan(classifier, crops):
    """A treatment's exemplars are decoded along its own attributes only; the others' pairs are NaN, not decoded."""
    import numpy as np
    import pandas as pd

    from screenxai.explain import DirectionConfig, learn_directions, make_counterfactuals
    from screenxai.explain.counterfactuals import strip_pairs

    torch.manual_seed(3)
    model = DiffusionAutoencoder(tiny_config(), classifier).eval()
    x = crops[:6]
    z = model.encode(x)
    directions = learn_directions(z.detach(), DirectionConfig(n_directions=3, epochs=1, steps_per_epoch=2))
    attributes = pd.DataFrame({"treatment": ["drug_a", "drug_a", "drug_b"], "attribute": ["d0p", "d1n", "d2p"],
                               "rank": [1, 2, 1], "direction": [0, 1, 2], "sign": [1, -1, 1],
                               "target_class": 1})
    conditions = ["DMSO", "DMSO", "drug_a", "drug_a", "drug_b", ""]
    pairs = strip_pairs(conditions, attributes, ["drug_a", "drug_b"])
    assert pairs.tolist() == [[True, True, True], [True, True, True], [True, True, False], [True, True, False],
                              [False, False, True], [True, True, True]]
    table = pd.DataFrame({"plate": "p", "well": "A01", "field": 0, "label": np.arange(len(x))})
    args = (model, directions, attributes, x.numpy(), table, ["DNA", "reporter"])
    full = make_counterfactuals(*args, alphas=(-1.5, 0.0, 1.5), steps_inv=2, steps_dec=2)
    before = model.unet_evaluations
    masked = make_counterfactuals(*args, alphas=(-1.5, 0.0, 1.5), steps_inv=2, steps_dec=2, rendered=pairs)
    edits = int(pairs.sum()) * 2  # two non-zero alphas per rendered pair
    assert model.unet_evaluations - before == len(x) * 2 + (edits + len(x)) * 2  # inversion, edits, one unedited
    assert masked["rendered"].to_numpy().tolist() == pairs.tolist()
    probability = masked["probability"].to_numpy()
    assert np.isnan(probability[~pairs]).all() and not np.isnan(probability[pairs]).any()
    assert np.isnan(masked["image"].to_numpy()[~pairs]).all()
    np.testing.assert_allclose(masked["image"].to_numpy()[pairs], full["image"].to_numpy()[pairs], atol=1e-5)
    assert strip_pairs(conditions, attributes.drop(columns="treatment"), ["drug_a", "drug_b"]).all()
