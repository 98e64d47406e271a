"""Contrast directions: each treatment's linear discriminant against the negative control, as fixed directions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from screenxai.explain import DirectionConfig, learn_directions, load_directions, save_directions
from screenxai.explain.contrast import MIN_CELLS, contrast_vectors, with_contrast_directions

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def screen() -> tuple[torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]:
    """Latents of a negative class and two treatments in a 4-dimensional subspace of a 16-dimensional space.

    Treatment 1 shifts cells along ``first``, treatment 2 along ``second``; a
    nuisance axis with four times the spread is shifted by neither.
    """
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 4, generator=gen))[0].T  # orthonormal rows
    first, second, nuisance = basis[0], basis[1], basis[2]
    labels = np.repeat([0, 1, 2], 300)
    z = torch.randn(900, 4, generator=gen) @ basis + 4 * torch.randn(900, 1, generator=gen) * nuisance
    z[labels == 1] += 1.5 * first
    z[labels == 2] -= 1.5 * second
    return z + 0.01 * torch.randn(900, 16, generator=gen), labels, first, second


@pytest.fixture(scope="module")
def learned(screen):
    z, *_ = screen
    return learn_directions(z, DirectionConfig(n_directions=2, epochs=1, steps_per_epoch=5))


def test_each_treatment_gets_a_unit_vector_along_its_own_shift(screen, learned):
    z, labels, first, second = screen
    vectors, classes = contrast_vectors(learned, z, labels, [1, 2])
    assert classes == [1, 2]
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)
    assert float(vectors[0] @ first) >= 0.95, vectors @ first
    assert float(vectors[1] @ second) <= -0.95, vectors @ second  # pointing from the negative to the treatment
    off_subspace = vectors - (vectors @ learned.components.T) @ learned.components
    assert off_subspace.norm(dim=1).max() < 1e-4


def test_projection_on_a_contrast_direction_is_the_discriminant_score(screen, learned):
    """A cell's position along the direction orders cells as the discriminant's decision function does."""
    z, labels, *_ = screen
    extended, _ = with_contrast_directions(learned, z, labels, [1])
    rows = labels <= 1
    u = learned.whiten(z).numpy()
    decision = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(u[rows], labels[rows]).decision_function(u)
    projection = extended.project(z)[:, extended.n_learned].numpy()
    assert np.corrcoef(projection, decision)[0, 1] > 0.999


def test_contrast_directions_are_fixed_calibrated_and_leave_the_learned_ones_alone(screen, learned):
    z, labels, *_ = screen
    extended, classes = with_contrast_directions(learned, z, labels, [1, 2])
    assert (extended.n_directions, extended.n_linear, extended.n_learned) == (4, 2, 2)
    for k in range(learned.n_directions):
        assert torch.equal(extended.direction(z[:8], k), learned.direction(z[:8], k))
    for k in range(2, 4):
        d = extended.direction(z[:8], k)
        assert torch.allclose(d, d[:1].expand(8, -1))
        assert torch.allclose(extended.axes[k], d[0])
    assert torch.allclose(extended.project(z).std(0), torch.ones(4), atol=1e-3)
    edited = extended.edit(z[:8], 3, 2.0)
    assert torch.allclose((edited - z[:8]).norm(dim=1), 2 * extended.scales[3].expand(8), atol=1e-4)


def test_a_class_with_too_few_cells_gets_no_direction(screen, learned):
    z, labels, *_ = screen
    sparse = labels.copy()
    sparse[np.flatnonzero(labels == 2)[MIN_CELLS - 1:]] = -1
    vectors, classes = contrast_vectors(learned, z, sparse, [1, 2])
    assert classes == [1] and vectors.shape == (1, 16)
    with pytest.raises(ValueError, match="labels"):
        contrast_vectors(learned, z, labels[:-1], [1])


def test_contrast_directions_survive_the_store(screen, learned, tmp_path):
    z, labels, *_ = screen
    extended, _ = with_contrast_directions(learned, z, labels, [1, 2])
    attributes = pd.DataFrame({"rank": [1], "direction": [3], "sign": [1], "name": ["nuclear area up"]})
    save_directions(extended, attributes, tmp_path / "explain")
    loaded, _ = load_directions(tmp_path / "explain")
    assert loaded.n_linear == 2
    assert torch.equal(loaded.project(z[:10]), extended.project(z[:10]))
    assert torch.equal(loaded.direction(z[:3], 3), extended.direction(z[:3], 3))
