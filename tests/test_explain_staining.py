"""Staining axes: a channel scaled about the background, and vectors made orthogonal to a span."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from screenxai.explain.staining import orthonormal_rows, scaled_channel, staining_axes, without


def test_a_scaled_channel_keeps_its_background_and_the_other_channels():
    crops = np.stack([np.full((4, 4), -1.0), np.linspace(-1, 1, 16).reshape(4, 4)])[None].astype(np.float32)
    crops = np.concatenate([crops, crops[:, ::-1]], axis=0)  # (2 crops, 2 channels)
    brighter = scaled_channel(crops, 1, 1.5)
    np.testing.assert_array_equal(brighter[:, 0], crops[:, 0])
    assert brighter[0, 1, 0, 0] == -1.0  # the background level does not move
    np.testing.assert_allclose(brighter[0, 1, 1, 0], (crops[0, 1, 1, 0] + 1) * 1.5 - 1, rtol=1e-6)
    assert brighter.max() == 1.0 and (brighter[:, 1] >= crops[:, 1]).all()  # brighter, clipped at the top
    assert crops[0, 1, 3, 3] == 1.0 and crops.dtype == np.float32  # the input is left as it was


def test_orthonormal_rows_span_the_rows_once():
    a, b = torch.tensor([1.0, 2.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 1.0, 0.0])
    basis = orthonormal_rows(torch.stack([a, 2 * a, b]))
    assert basis.shape == (2, 4)
    torch.testing.assert_close(basis @ basis.T, torch.eye(2), atol=1e-6, rtol=0)
    for vector in (a, b):
        torch.testing.assert_close(without(vector[None], basis), torch.zeros(1, 4), atol=1e-6, rtol=0)
    assert orthonormal_rows(torch.zeros(0, 4)).shape == (0, 4)


def test_without_removes_the_span_and_keeps_the_rest():
    basis = orthonormal_rows(torch.tensor([[1.0, 1.0, 0.0]]))
    vectors = torch.tensor([[2.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
    result = without(vectors, basis)
    torch.testing.assert_close(result @ basis.T, torch.zeros(2, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(result, torch.tensor([[1.0, -1.0, 3.0], [0.0, 0.0, 1.0]]))
    assert torch.equal(without(vectors, torch.zeros(0, 3)), vectors)


@pytest.mark.parametrize("gain", [0.0, 1.0, 1.5])
def test_the_staining_gain_must_lie_between_zero_and_one(gain):
    with pytest.raises(ValueError, match="gain"):
        staining_axes(None, np.zeros((2, 1, 4, 4), np.float32), gain=gain)
