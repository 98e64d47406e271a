"""The conditions of a screen read from its layout: class column, negative class, treatments, training wells."""

from __future__ import annotations

import pandas as pd
import pytest

from screenxai.plate.conditions import (ConditionError, default_class_column, negative_wells, screen_conditions,
                                        training_wells, treatment_wells)
from screenxai.plate.simulate import NEGATIVE_CONTROL, TREATMENTS, design_layout


@pytest.fixture(scope="module")
def screen() -> pd.DataFrame:
    return design_layout("treatments", columns=5)


@pytest.fixture(scope="module")
def controls() -> pd.DataFrame:
    return design_layout("controls", columns=6)


def test_a_screen_of_several_compounds_is_classed_by_compound(screen, controls):
    assert default_class_column(screen) == "compound"
    assert default_class_column(controls) == "control"
    conditions = screen_conditions(screen)
    assert conditions.negative == NEGATIVE_CONTROL
    assert set(conditions.treatments) == set(TREATMENTS)
    assert conditions.class_names[0] == NEGATIVE_CONTROL and not conditions.two_class
    two = screen_conditions(controls)
    assert two.class_names == ("negative", "positive") and two.two_class


def test_the_classifier_trains_on_negatives_and_each_treatments_top_doses(screen):
    conditions = screen_conditions(screen)
    wells = set(training_wells(screen, conditions, top_dose_levels=2))
    expected = set(screen.loc[(screen["compound"] == NEGATIVE_CONTROL) | screen["dose_index"].isin([3, 4]), "well"])
    assert wells == expected
    one = set(training_wells(screen, conditions, top_dose_levels=1))
    assert one == set(screen.loc[(screen["compound"] == NEGATIVE_CONTROL) | (screen["dose_index"] == 4), "well"])
    with pytest.raises(ConditionError, match="at least 1"):
        training_wells(screen, conditions, top_dose_levels=0)


def test_a_treatments_wells_are_all_its_doses_and_the_two_class_treatment_is_every_non_negative_well(screen, controls):
    conditions = screen_conditions(screen)
    assert set(treatment_wells(screen, conditions, "dual")) == set(screen.loc[screen["compound"] == "dual", "well"])
    assert set(negative_wells(screen, conditions)) == set(screen.loc[screen["column"] == 1, "well"])
    two = screen_conditions(controls)
    assert set(treatment_wells(controls, two, "positive")) == set(controls.loc[controls["column"] > 1, "well"])


def test_conditions_the_layout_lacks_are_named(screen):
    with pytest.raises(ConditionError, match="no column 'plate_batch'.*--class-column"):
        screen_conditions(screen, "plate_batch")
    with pytest.raises(ConditionError, match=r"no well has compound = \['aspirin'\]"):
        screen_conditions(screen, "compound", ["DMSO", "aspirin"])
    mixed = screen.assign(compound=screen["compound"].where(screen["well"] != "A01", "water"))
    with pytest.raises(ConditionError, match="negative wells must share one compound"):
        screen_conditions(mixed, "compound")
