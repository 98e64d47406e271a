"""Acceptance: the classifier stage of ``screenxai train`` on the real BBBC013 plate, judged on unseen wells."""

from __future__ import annotations

import pytest

from screenxai.models.classifier import predict_proba


@pytest.mark.acceptance
def test_bbbc013_negative_vs_positive_reaches_95_percent_on_validation_wells(bbbc013_classifier,
                                                                               bbbc013_control_cells):
    crops, table = bbbc013_control_cells
    split = bbbc013_classifier.split
    assert set(split.val_wells).isdisjoint(split.train_wells)
    assert {table["control"].iloc[i] for i in split.val_index} == {"negative", "positive"}
    assert bbbc013_classifier.metrics.accuracy >= 0.95, bbbc013_classifier.metrics
    predicted = predict_proba(bbbc013_classifier.model, crops[split.val_index]).argmax(1)
    truth = (table["control"].iloc[split.val_index] == "positive").to_numpy().astype(int)
    assert (predicted == truth).mean() >= 0.95
