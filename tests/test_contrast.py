"""Contrast directions: each treatment's mean shift (the edit) and linear discriminant (the score) in ``z_sem``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from screenxai.explain import DirectionConfig, learn_directions, load_directions, save_directions
from screenxai.explain.contrast import MIN_CELLS, contrast_vectors, shift_cosines, with_contrast_directions

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def screen() -> tuple[torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents of a negative class and two treatments in a 4-dimensional subspace of a 16-dimensional space.

    Treatment 1 shifts cells by 1.5 along ``first`` and by 1.5 along a
    ``nuisance`` axis whose spread is four times larger; treatment 2 shifts
    them by -1.5 along ``second``.
    """
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 4, generator=gen))[0].T  # orthonormal rows
    first, second, nuisance = basis[0], basis[1], basis[2]
    labels = np.repeat([0, 1, 2], 300)
    z = torch.randn(900, 4, generator=gen) @ basis + 4 * torch.randn(900, 1, generator=gen) * nuisance
    z[labels == 1] += 1.5 * first + 1.5 * nuisance
    z[labels == 2] -= 1.5 * second
    return z + 0.01 * torch.randn(900, 16, generator=gen), labels, first, second, nuisance


@pytest.fixture(scope="module")
def learned(screen):
    z, *_ = screen
    return learn_directions(z, DirectionConfig(n_directions=2, epochs=1, steps_per_epoch=5))


def test_the_edit_is_the_mean_shift_and_the_score_discounts_a_wide_nuisance(screen, learned):
    """Treatment 1's edit follows its whole shift; its score leans on the narrow axis, not the wide one."""
    z, labels, first, second, nuisance = screen
    edits, axes, classes = contrast_vectors(learned, z, labels, [1, 2])
    assert classes == [1, 2]
    for vectors in (edits, axes):
        assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)
        off_subspace = vectors - (vectors @ learned.components.T) @ learned.components
        assert off_subspace.norm(dim=1).max() < 1e-4
    shift = torch.nn.functional.normalize(first + nuisance, dim=0)
    assert float(edits[0] @ shift) >= 0.95, edits[0] @ shift
    assert float(axes[0] @ first) >= 0.9 and float((axes[0] @ nuisance).abs()) <= 0.3, axes[0] @ basis_of(screen)
    assert float(edits[1] @ second) <= -0.95 and float(axes[1] @ second) <= -0.95  # towards the treatment


def basis_of(screen) -> torch.Tensor:
    _, _, first, second, nuisance = screen
    return torch.stack([first, second, nuisance]).T


def test_the_score_is_the_discriminant(screen, learned):
    """A cell's score on a contrast direction orders cells as the discriminant's decision function does."""
    z, labels, *_ = screen
    extended, _ = with_contrast_directions(learned, z, labels, [1])
    rows = labels <= 1
    u = learned.whiten(z).numpy()
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(u[rows], labels[rows])
    projection = extended.project(z)[:, extended.n_learned].numpy()
    assert np.corrcoef(projection, lda.decision_function(u))[0, 1] > 0.999


def test_contrast_directions_are_fixed_calibrated_and_leave_the_learned_ones_alone(screen, learned):
    z, labels, *_ = screen
    extended, classes = with_contrast_directions(learned, z, labels, [1, 2])
    assert (extended.n_directions, extended.n_linear, extended.n_learned) == (4, 2, 2)
    for k in range(learned.n_directions):
        assert torch.equal(extended.direction(z[:8], k), learned.direction(z[:8], k))
        assert torch.allclose(extended.project(z)[:, k], learned.project(z)[:, k], atol=1e-4)
    assert torch.allclose(extended.project(z).std(0), torch.ones(4), atol=1e-3)
    edits, _, _ = contrast_vectors(learned, z, labels, [1, 2])
    for k in range(2, 4):
        edited = extended.edit(z[:8], k, 2.0)
        assert torch.allclose(edited - z[:8], (2 * extended.edit_scales[k] * edits[k - 2]).expand(8, -1), atol=1e-5)
        assert torch.isclose(extended.edit_scales[k], ((z - z.mean(0)) @ edits[k - 2]).std(), rtol=1e-4)


def test_a_class_with_too_few_cells_gets_no_direction(screen, learned):
    z, labels, *_ = screen
    sparse = labels.copy()
    sparse[np.flatnonzero(labels == 2)[MIN_CELLS - 1:]] = -1
    edits, axes, classes = contrast_vectors(learned, z, sparse, [1, 2])
    assert classes == [1] and edits.shape == axes.shape == (1, 16)
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
    assert torch.equal(loaded.edit(z[:3], 3, 1.0), extended.edit(z[:3], 3, 1.0))


def test_directions_saved_before_contrast_directions_still_load(learned, screen, tmp_path):
    """A version-1 store (learned directions only, no edit scales) loads and edits as it did."""
    z, *_ = screen
    save_directions(learned, pd.DataFrame({"rank": [1], "direction": [0], "sign": [1]}), tmp_path / "explain")
    from safetensors.torch import load_file, save_file
    weights = tmp_path / "explain" / "directions.safetensors"
    tensors = {k: v for k, v in load_file(weights).items() if k not in ("linear", "linear_axes", "edit_scales")}
    save_file(tensors, weights)
    meta_path = tmp_path / "explain" / "directions.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 1
    del meta["n_linear"]
    meta_path.write_text(json.dumps(meta))
    loaded, _ = load_directions(tmp_path / "explain")
    assert loaded.n_linear == 0
    assert torch.allclose(loaded.edit(z[:5], 1, 2.0), learned.edit(z[:5], 1, 2.0))


def test_every_contrast_direction_is_read_out_per_cell_towards_its_treatment(screen, learned):
    """One ``contrast_d{k}`` column per contrast direction, after the learned ones, higher in its treatment's cells."""
    from screenxai.explain import contrast_columns, contrast_scores_from_latents

    z, labels, *_ = screen
    extended, _ = with_contrast_directions(learned, z, labels, [1, 2])
    scores = contrast_scores_from_latents(extended, z)
    assert contrast_columns(extended) == list(scores.columns) == ["contrast_d2", "contrast_d3"]
    np.testing.assert_array_equal(scores.to_numpy(), extended.project(z)[:, 2:].numpy())
    for column, treatment in (("contrast_d2", 1), ("contrast_d3", 2)):
        values = scores[column].to_numpy()
        assert values[labels == treatment].mean() - values[labels == 0].mean() > 1.0, column
    assert list(contrast_scores_from_latents(learned, z).columns) == []


def test_the_store_records_the_treatment_of_each_contrast_direction(screen, learned, tmp_path):
    z, labels, *_ = screen
    extended, _ = with_contrast_directions(learned, z, labels, [1, 2])
    save_directions(extended, pd.DataFrame({"rank": [1], "direction": [3], "sign": [1]}), tmp_path / "explain",
                    contrast_treatments=["one", "two"])
    meta = json.loads((tmp_path / "explain" / "directions.json").read_text())
    assert meta["contrast_treatments"] == ["one", "two"]


def test_contrast_readouts_read_back_with_their_column_treatment_and_name(screen, learned, tmp_path):
    from screenxai.explain import load_contrast_readouts

    z, labels, *_ = screen
    extended, _ = with_contrast_directions(learned, z, labels, [1, 2])
    names = [{"name": "reporter texture up", "name_spearman": 0.9}, {"name": None, "name_spearman": None}]
    save_directions(extended, pd.DataFrame({"rank": [1], "direction": [3], "sign": [1]}), tmp_path / "explain",
                    contrast_treatments=["one", "two"], contrast_names=names)
    table = load_contrast_readouts(tmp_path / "explain")
    assert table["readout"].tolist() == ["contrast_d2", "contrast_d3"]
    assert table["treatment"].tolist() == ["one", "two"]
    assert table.loc[0, "name"] == "reporter texture up" and table.loc[0, "name_spearman"] == 0.9
    assert pd.isna(table.loc[1, "name"]) and np.isnan(table.loc[1, "name_spearman"])
    save_directions(extended, pd.DataFrame({"rank": [1], "direction": [3], "sign": [1]}), tmp_path / "old",
                    contrast_treatments=["one", "two"])
    assert load_contrast_readouts(tmp_path / "old")["name"].isna().all()
    save_directions(learned, pd.DataFrame({"rank": [1], "direction": [1], "sign": [1]}), tmp_path / "none")
    assert load_contrast_readouts(tmp_path / "none").empty


def test_a_store_without_attributes_reads_back_their_columns_and_scores_nothing(screen, learned, tmp_path):
    """A screen where no treatment keeps an attribute: the table has no row, the readouts are still scored."""
    from screenxai.explain import attribute_axis_cosines, contrast_scores_from_latents, scores_from_latents
    from screenxai.explain.fit import no_attributes

    z, labels, *_ = screen
    extended, _ = with_contrast_directions(learned, z, labels, [1])
    save_directions(extended, no_attributes(), tmp_path / "explain", contrast_treatments=["one"])
    loaded, attributes = load_directions(tmp_path / "explain")
    assert attributes.empty and list(attributes.columns) == list(no_attributes().columns)
    assert attributes["direction"].dtype == np.int64 and attributes["name"].dtype == object
    assert scores_from_latents(loaded, attributes, z).shape == (len(z), 0)
    assert attribute_axis_cosines(loaded, attributes).empty
    assert list(contrast_scores_from_latents(loaded, z).columns) == ["contrast_d2"]


def test_contrast_readouts_of_an_altered_store_are_refused_by_name(screen, learned, tmp_path):
    from screenxai.errors import BundleError
    from screenxai.explain import load_contrast_readouts

    z, labels, *_ = screen
    extended, _ = with_contrast_directions(learned, z, labels, [1, 2])
    save_directions(extended, pd.DataFrame({"rank": [1], "direction": [3], "sign": [1]}), tmp_path / "explain",
                    contrast_treatments=["one", "two"])
    meta_path = tmp_path / "explain" / "directions.json"
    meta = json.loads(meta_path.read_text())
    meta["contrast_treatments"] = ["one", "two", "three"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"directions\.json names 3 contrast treatments for 2"):
        load_contrast_readouts(tmp_path / "explain")


def test_shift_cosines_tell_one_change_at_two_potencies_from_a_second_change(screen, learned):
    """Treatment 3 is treatment 1 at half the shift; treatment 4 makes treatment 1's change without its nuisance
    part, plus treatment 2's."""
    z, labels, first, second, nuisance = screen
    gen = torch.Generator().manual_seed(1)
    negative = z[labels == 0]
    weaker = negative + 0.75 * (first + nuisance)
    both = negative + 1.5 * first - 1.5 * second
    z = torch.cat([z, weaker + 0.1 * torch.randn(weaker.shape, generator=gen), both])
    labels = np.concatenate([labels, np.full(len(weaker), 3), np.full(len(both), 4)])
    directions, kept = with_contrast_directions(learned, z, labels, [1, 2, 3, 4])
    cosines = shift_cosines(directions, ["one", "two", "one-weaker", "both"])
    assert kept == [1, 2, 3, 4]
    assert list(cosines.index) == list(cosines.columns) == ["one", "two", "one-weaker", "both"]
    np.testing.assert_allclose(np.diag(cosines.to_numpy()), 1.0, atol=1e-9)
    assert cosines.loc["one", "one-weaker"] > 0.95
    assert abs(cosines.loc["one", "two"]) < 0.2
    assert 0.3 < cosines.loc["both", "one"] < 0.8 and 0.3 < cosines.loc["both", "two"] < 0.8
    assert shift_cosines(learned, []).empty  # directions saved without their treatments' names
    with pytest.raises(ValueError, match="contrast directions"):
        shift_cosines(directions, ["one", "two"])
