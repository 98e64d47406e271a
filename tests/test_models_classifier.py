"""Classifier: split by well, balanced batches, augmentation, determinism, quality on toy cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from screenxai.errors import ScreenxaiError
from screenxai.models.augment import augment, dihedral
from screenxai.models.classifier import CellClassifier, ClassifierConfig, predict_proba
from screenxai.models.device import generator
from screenxai.models.metrics import roc_auc
from screenxai.models.splits import SplitError, class_labels, split_by_well
from screenxai.models.train_classifier import (ClassifierTraining, balanced_batch, train_classifier)
from toy_cells import toy_cells

torch.set_num_threads(1)
FAST = ClassifierTraining(epochs=3, batch_size=32, steps_per_epoch=6, patience=5, seed=3)
CONFIG = ClassifierConfig(in_channels=2, n_classes=2, width=8, stages=2)


@pytest.fixture(scope="module")
def cells():
    return toy_cells(wells_per_class=4, cells_per_well=30, seed=1)


def _wells(table: pd.DataFrame, index: np.ndarray) -> set[tuple[str, str]]:
    return set(zip(table["plate"].iloc[index], table["well"].iloc[index], strict=True))


def test_split_keeps_wells_whole_and_every_class_on_both_sides(cells):
    _, table = cells
    labels, _ = class_labels(table)
    for seed in range(5):
        split = split_by_well(table, "control", 0.25, seed)
        assert not _wells(table, split.train_index) & _wells(table, split.val_index)
        assert len(split.train_index) + len(split.val_index) == len(table)
        for k in (0, 1):
            assert (labels[split.train_index] == k).any() and (labels[split.val_index] == k).any()
    again, same = split_by_well(table, "control", 0.25, 7), split_by_well(table, "control", 0.25, 7)
    assert again.val_wells == same.val_wells and np.array_equal(again.val_index, same.val_index)


def test_split_by_plate_and_well_not_well_name_alone(cells):
    _, table = cells
    two_plates = pd.concat([table, table.assign(plate="other")], ignore_index=True)
    split = split_by_well(two_plates, "control", 0.5, 0)
    assert not _wells(two_plates, split.train_index) & _wells(two_plates, split.val_index)
    assert len(split.val_wells) == 8


def test_split_refuses_a_class_with_one_well(cells):
    _, table = cells
    one_positive_well = table[(table["control"] == "negative") | (table["well"] == "B06")]
    with pytest.raises(SplitError, match="'positive'.*1 well") as info:
        split_by_well(one_positive_well, "control", 0.25, 0)
    assert isinstance(info.value, ScreenxaiError)


def test_split_refuses_a_missing_column_and_leaves_out_other_classes(cells):
    _, table = cells
    with pytest.raises(SplitError, match="no class column 'treatment'"):
        split_by_well(table, "treatment")
    with_dose = pd.concat([table, table.iloc[:5].assign(well="Z01", control="dose")], ignore_index=True)
    split = split_by_well(with_dose, "control", 0.25, 0, class_names=("negative", "positive"))
    assert ("toy", "Z01") not in set(split.train_wells) | set(split.val_wells)


def test_balanced_batches_draw_classes_equally():
    labels = torch.tensor([0] * 95 + [1] * 5)
    index = balanced_batch(labels, 2, 4000, generator(0))
    share = labels[index].float().mean().item()
    assert 0.46 < share < 0.54


def test_dihedral_group_and_augment_keep_content():
    x = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3).repeat(8, 1, 1, 1)
    out = dihedral(x, torch.arange(8))
    assert torch.equal(out[1], torch.rot90(x[0], 1, (-2, -1)))
    assert torch.equal(out[4], x[0].flip(-1))
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8
    background = -torch.ones(4, 2, 8, 8)
    assert torch.allclose(augment(background, generator(0), 0.1), background, atol=0.051)


def test_roc_auc_known_values():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.25


def test_predict_proba_does_not_depend_on_batch_size(cells):
    crops, _ = cells
    torch.manual_seed(0)
    model = CellClassifier(CONFIG)
    a = predict_proba(model, crops[:50], batch_size=7)
    b = predict_proba(model, crops[:50], batch_size=50)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a.sum(1), 1, atol=1e-5)


@pytest.fixture(scope="module")
def trained(cells):
    crops, table = cells
    return train_classifier(crops, table, CONFIG, FAST)


def test_same_seed_same_weights(cells, trained):
    crops, table = cells
    again = train_classifier(crops, table, CONFIG, FAST)
    for name, value in trained.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name
    other = train_classifier(crops, table, CONFIG, ClassifierTraining(**{**FAST.to_dict(), "seed": 4}))
    assert not torch.equal(other.model.head.weight, trained.model.head.weight)


def test_training_separates_toy_classes_on_held_out_wells(trained):
    metrics = trained.metrics
    assert metrics.n_val_wells == 2 and metrics.n_val_cells == 60
    assert metrics.auc["positive"] > 0.95 and metrics.accuracy > 0.85
    assert set(metrics.auc) == {"negative", "positive"}
    assert len(trained.history) == FAST.epochs


def test_interrupted_training_resumes_to_the_same_weights(cells, trained, tmp_path):
    crops, table = cells
    checkpoint = tmp_path / "classifier.pt"

    def stop_after_first_epoch(progress):
        if progress.epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(crops, table, CONFIG, FAST, progress=stop_after_first_epoch, checkpoint=checkpoint)
    epochs_seen = []
    resumed = train_classifier(crops, table, CONFIG, FAST, checkpoint=checkpoint,
                               progress=lambda p: epochs_seen.append(p.epoch))
    assert epochs_seen == [1, 2]
    for name, value in trained.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
