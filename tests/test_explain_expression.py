"""Which attributes a treatment's cells show: shifts along each direction and the eligibility they decide."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from screenxai.explain import Directions
from screenxai.explain.expression import expressed, treatment_shifts
from screenxai.explain.ranking import RankingCache, select_attributes


def axis_directions(axes: list[list[float]]) -> Directions:
    """Directions whose scoring axes are ``axes`` (unit scales, zero mean)."""
    directions = Directions(len(axes[0]), len(axes), 8)
    directions.axes.copy_(torch.tensor(axes))
    return directions


def shifted_cells(shift: list[float], n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Negative cells (label 0) from a standard normal, treated cells (label 1) shifted by ``shift``."""
    gen = torch.Generator().manual_seed(seed)
    negative = torch.randn(n, len(shift), generator=gen)
    treated = torch.randn(n, len(shift), generator=gen) + torch.tensor(shift)
    return torch.cat([negative, treated]), np.repeat([0, 1], n)


def test_shifts_are_in_the_negative_cells_sds_for_both_signs():
    directions = axis_directions([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    z, labels = shifted_cells([2.0, -1.0, 0.0])
    z[labels == 0, 2] *= 2  # the negative control's spread sets the unit
    shifts = treatment_shifts(directions, z, labels, target=1)
    assert shifts.shape == (3, 2)
    np.testing.assert_allclose(shifts[:, 0], [2.0, -1.0, 0.0], atol=0.06)
    np.testing.assert_allclose(shifts[:, 1], -shifts[:, 0])


def test_a_class_without_cells_has_no_shift():
    directions = axis_directions([[1.0, 0], [0, 1.0]])
    z, labels = shifted_cells([1.0, 0.0], n=10)
    assert np.isnan(treatment_shifts(directions, z, labels, target=2)).all()
    with pytest.raises(ValueError, match="labels"):
        treatment_shifts(directions, z, labels[:-1], target=1)


def test_only_changes_the_cells_show_enough_are_eligible():
    shifts = np.array([[4.0, -4.0], [1.9, -1.9], [-2.5, 2.5], [0.0, 0.0]])
    mask = expressed(shifts, 0.5)
    assert mask.tolist() == [[True, False], [False, False], [False, True], [False, False]]
    assert expressed(shifts, 0.0)[:, 0].tolist() == [True, True, False, True]  # 0 admits every non-negative shift
    assert expressed(np.full((2, 2), np.nan)).all()  # nothing known: nothing excluded
    with pytest.raises(ValueError, match="min_expression"):
        expressed(shifts, 1.5)


def test_selection_passes_over_an_edit_the_treatments_cells_do_not_show():
    """Direction 0 moves the classifier most, but the treated cells shift along direction 1: it ranks first."""
    n = 4
    gains = np.zeros((n, 2, 2), np.float32)
    gains[:, 0, 0], gains[:, 1, 0] = 0.6, 0.3
    p1 = 0.1 + gains
    cache = RankingCache(torch.zeros(n, 2), torch.zeros(n, 1), np.tile([0.9, 0.1], (n, 1)),
                         np.stack([1 - p1, p1], axis=-1))
    directions = axis_directions([[1.0, 0], [0, 1.0]])
    z, labels = shifted_cells([0.3, 3.0])
    eligible = expressed(treatment_shifts(directions, z, labels, 1))
    table = select_attributes(cache, 1, 2, 0.0, 1, 1, eligible=eligible)
    assert table["attribute"].tolist() == ["d1p"]
    assert select_attributes(cache, 1, 2, 0.0, 1, 1)["attribute"].tolist() == ["d0p", "d1p"]


def test_a_screen_whose_treatments_show_no_change_that_moves_the_classifier_has_no_candidates():
    """The treated cells shift along direction 1, whose edits lower the treatment's probability: no candidate,
    an empty table rather than an error (the explain stage then keeps no attribute)."""
    from screenxai.explain.fit import ExplainSettings, _treatment_candidates

    n = 4
    gains = np.zeros((n, 2, 2), np.float32)
    gains[:, 0, 0], gains[:, 1, :] = 0.6, -0.05
    p1 = 0.1 + gains
    cache = RankingCache(torch.zeros(n, 2), torch.zeros(n, 1), np.tile([0.9, 0.1], (n, 1)),
                         np.stack([1 - p1, p1], axis=-1))
    directions = axis_directions([[1.0, 0], [0, 1.0]])
    z, labels = shifted_cells([0.3, 3.0])
    candidates = _treatment_candidates(cache, directions, ["DMSO", "quiet"], ExplainSettings(n_attributes=2), z,
                                       labels)
    assert candidates.empty
    z, labels = shifted_cells([3.0, 0.3])  # now the change the cells show is the one that moves the classifier
    shown = _treatment_candidates(cache, directions, ["DMSO", "quiet"], ExplainSettings(n_attributes=2), z, labels)
    assert shown["attribute"].tolist() == ["d0p"] and shown["treatment"].tolist() == ["quiet"]
