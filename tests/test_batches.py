"""Inference in batches of a bounded set of shapes: the scoring models see few distinct batch sizes, same outputs."""

import numpy as np
import pytest
import torch

from screenxai.interpret.tcvae import BetaTCVAE, TCVAEConfig, encode_means
from screenxai.models.autoencoder import AutoencoderConfig, DiffusionAutoencoder
from screenxai.models.batches import map_batches, padded_rows
from screenxai.models.classifier import CellClassifier, ClassifierConfig, predict_proba
from screenxai.pipeline.model_stage import _encode

torch.set_num_threads(1)
SIZE = 16
CELL_COUNTS = range(1, 601, 7)  # the cells of a group of fields: almost every count differs


@pytest.fixture(scope="module")
def classifier() -> CellClassifier:
    torch.manual_seed(0)
    return CellClassifier(ClassifierConfig(in_channels=2, n_classes=3, width=8, stages=2)).eval()


def batch_sizes_seen(module: torch.nn.Module, run) -> set[int]:
    """The batch sizes ``module`` is called with while ``run()`` runs."""
    seen: set[int] = set()
    handle = module.register_forward_pre_hook(lambda _, args: seen.add(args[0].shape[0]))
    try:
        run()
    finally:
        handle.remove()
    return seen


def crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 2, SIZE, SIZE)).astype(np.float32)


def test_padded_rows_round_up_to_the_multiple_and_never_past_the_batch():
    assert [padded_rows(n, 256) for n in (1, 31, 32, 33, 250, 256)] == [32, 32, 32, 64, 256, 256]
    assert padded_rows(5, 4, multiple=32) == 4


def test_map_batches_gives_each_row_its_own_output_and_cuts_the_padding():
    x = torch.arange(70, dtype=torch.float32).reshape(35, 2)
    parts = map_batches(lambda batch: batch.sum(dim=1, keepdim=True), x, batch_size=16, multiple=8)
    assert [len(p) for p in parts] == [16, 16, 3]
    assert torch.equal(torch.cat(parts), x.sum(dim=1, keepdim=True))
    assert map_batches(lambda batch: batch, x[:0], batch_size=16) == []


def test_the_classifier_sees_at_most_eight_batch_sizes_whatever_the_cell_count(classifier):
    seen = batch_sizes_seen(classifier, lambda: [predict_proba(classifier, crops(n), 256) for n in CELL_COUNTS])
    assert seen <= {32 * k for k in range(1, 9)}
    assert len(seen) == 8


def test_padding_leaves_every_cells_probability_unchanged(classifier):
    x = crops(300)
    with torch.no_grad():
        alone = torch.cat([torch.softmax(classifier(torch.from_numpy(x[i:i + 1])), dim=1) for i in range(len(x))])
    np.testing.assert_allclose(predict_proba(classifier, x, 256), alone.numpy(), atol=1e-5)


def test_the_encoder_and_the_formulas_vae_see_bounded_batch_sizes_with_unchanged_latents(classifier):
    torch.manual_seed(0)
    config = AutoencoderConfig(in_channels=2, image_size=SIZE, n_classes=3, latent_dim=8, z_dim=8, encoder_width=8,
                               encoder_stages=2, unet_channels=(16, 16))
    autoencoder = DiffusionAutoencoder(config, classifier).eval()
    vae = BetaTCVAE(TCVAEConfig(in_channels=2, image_size=SIZE, latent_dim=4, width=8)).eval()
    allowed = {32 * k for k in range(1, 9)}
    encoder_sizes = batch_sizes_seen(autoencoder.encoder,
                                     lambda: [_encode(autoencoder, crops(n), 256) for n in CELL_COUNTS])
    vae_sizes = batch_sizes_seen(vae, lambda: [encode_means(vae, crops(n), 256) for n in CELL_COUNTS])
    assert encoder_sizes == vae_sizes == allowed
    x = crops(45, seed=1)
    with torch.no_grad():
        np.testing.assert_allclose(_encode(autoencoder, x, 256), autoencoder.encode(torch.from_numpy(x)).numpy(),
                                   atol=1e-5)
        np.testing.assert_allclose(encode_means(vae, x, 256), vae(torch.from_numpy(x)).numpy(), atol=1e-5)
