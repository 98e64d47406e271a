"""Per-treatment tables from a per-well table with planted attribute responses (no models)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from screenxai.explain.validation import (exchangeable_false_positive_rate, pseudo_treatment_calls,
                                          readout_report, treatment_report)
from screenxai.pipeline.treatments import label_treatments, treatment_tables
from screenxai.plate.conditions import Conditions
from screenxai.stats import profile_similarity, treatment_profiles

DOSES = [0.1, 0.3, 1.0, 3.0, 10.0]
NOISE_SD = 0.1  # well-to-well SD of every attribute's well mean, chosen before the tables were computed
EFFECT = 2.0  # planted maximal change of an attribute's well mean: 20 noise SDs


def planted_wells(seed: int = 0) -> pd.DataFrame:
    """12 negative wells; ``hi`` and ``lo`` move d0p (EC50 0.3 and 3), ``big`` moves d1p, ``none`` nothing."""
    rng = np.random.default_rng(seed)
    rows = [{"well": f"N{i:02d}", "compound": "DMSO", "control": "negative", "dose": 0.0, "dose_index": 0}
            for i in range(12)]
    for compound in ("hi", "lo", "big", "none"):
        for replicate in range(2):
            rows += [{"well": f"{compound}{replicate}{i}", "compound": compound, "control": "treated", "dose": dose,
                      "dose_index": i + 1} for i, dose in enumerate(DOSES)]
    wells = pd.DataFrame(rows).assign(plate="p")
    ec50 = {"hi": 0.3, "lo": 3.0}
    hill = wells["dose"] / (wells["dose"] + wells["compound"].map(ec50).fillna(1.0))
    wells["mean_attribute_d0p"] = EFFECT * hill * wells["compound"].isin(["hi", "lo"])
    wells["mean_attribute_d1p"] = EFFECT * hill * wells["compound"].eq("big")
    for column in ("mean_attribute_d0p", "mean_attribute_d1p"):
        wells[column] += rng.normal(0, NOISE_SD, len(wells))
    return wells


def kept_attributes() -> pd.DataFrame:
    rows = [("hi", 1, "d0p"), ("lo", 1, "d0p"), ("big", 1, "d1p"), ("big", 2, "d0p"), ("none", 1, "d1p")]
    return pd.DataFrame([{"treatment": t, "rank": r, "attribute": a, "direction": int(a[1]), "sign": 1,
                          "name": f"feature {a[1]} up"} for t, r, a in rows])


@pytest.fixture(scope="module")
def tables():
    conditions = Conditions("compound", "DMSO", ("big", "hi", "lo", "none"))
    return treatment_tables(planted_wells(), kept_attributes(), conditions, {"hi": 0.9, "lo": 0.8})


def test_treatments_are_called_grouped_and_ordered(tables):
    table = tables.treatments.set_index("treatment")
    assert table["active"].to_dict() == {"hi": True, "lo": True, "big": True, "none": False}
    assert table.loc["hi", "group"] == table.loc["lo", "group"] != table.loc["big", "group"]
    assert table.loc["none", "group"] == "inactive"
    assert list(tables.treatments["treatment"])[-1] == "none"
    assert table.loc["hi", "auc_vs_negative"] == 0.9 and np.isnan(table.loc["big", "auc_vs_negative"])
    assert table.loc["big", "top_attribute"] == "d1p"


def test_a_top_attribute_that_does_not_move_at_the_top_dose_is_not_named(tables):
    """``none`` keeps d1p, which its wells do not move: the row keeps the id and says no name."""
    table = tables.treatments.set_index("treatment")
    assert table.loc["none", "top_attribute"] == "d1p" and abs(table.loc["none", "robust_z_top_dose"]) < 3
    assert pd.isna(table.loc["none", "top_attribute_name"])
    assert table.loc["big", "top_attribute_name"] == "feature 1 up" and table.loc["big", "robust_z_top_dose"] > 10


def test_each_kept_attribute_gets_its_treatments_dose_response(tables):
    named = tables.attributes.set_index(["treatment", "rank"])
    assert named.loc[("hi", 1), "ec50"] < named.loc[("lo", 1), "ec50"]
    assert named.loc[("hi", 1), "ec50"] == pytest.approx(0.3, rel=0.5)
    assert named.loc[("big", 1), "max_effect"] == pytest.approx(EFFECT * 10 / 11, rel=0.2)
    assert named.loc[("big", 1), "robust_z_top_dose"] > 10
    assert abs(named.loc[("big", 2), "robust_z_top_dose"]) < 3  # big does not move d0p
    assert named.loc[("hi", 1), "dose_spearman"] > 0.8


def test_every_well_gets_robust_z_of_every_attribute_id(tables):
    scores = tables.well_scores
    assert {"robust_z_attribute_d0p", "robust_z_attribute_d1p"} <= set(scores.columns)
    wells = planted_wells()
    negative = scores.loc[wells["compound"].eq("DMSO").to_numpy(), "robust_z_attribute_d0p"]
    assert negative.median() == pytest.approx(0.0, abs=1e-9)


def test_a_pseudo_treatment_of_negative_wells_is_inactive():
    """Half of the negative wells relabelled as a treatment with a dose series: nothing beyond their spread."""
    wells = planted_wells(seed=1)
    fake = wells.index[wells["compound"].eq("DMSO")][:6]
    wells.loc[fake, "compound"] = "fake"
    wells.loc[fake, "dose_index"] = [1, 2, 3, 4, 5, 5]
    wells.loc[fake, "dose"] = [0.1, 0.3, 1.0, 3.0, 10.0, 10.0]
    attributes = pd.concat([kept_attributes(), kept_attributes().iloc[:1].assign(treatment="fake")])
    conditions = Conditions("compound", "DMSO", ("big", "fake", "hi", "lo", "none"))
    table = treatment_tables(wells, attributes, conditions, {}).treatments.set_index("treatment")
    assert not table.loc["fake", "active"] and table.loc["hi", "active"]


def test_pseudo_treatments_are_halves_of_the_negative_wells_shaped_like_the_treatments_and_rarely_active():
    """Each draw: 6 of the 12 negative wells, 2 at the top dose as every treatment has; few beat the null."""
    wells = planted_wells(seed=1)
    conditions = Conditions("compound", "DMSO", ("big", "hi", "lo", "none"))
    calls = pseudo_treatment_calls(wells, conditions, draws=100)
    assert len(calls) == 100 and (calls["wells"] == 6).all() and (calls["top_wells"] == 2).all()
    assert set(calls["readout"]) <= {"attribute_d0p", "attribute_d1p"}
    assert calls["active"].mean() <= 0.1


def test_truly_alike_negative_wells_still_make_a_few_pseudo_treatments_active():
    """The null is the most extreme of 15 pairs: a pair of alike wells beats it now and then, not often."""
    rate = exchangeable_false_positive_rate(12, 12, 2, draws=300)
    assert 0.0 < rate <= 0.1


def test_the_two_class_treatment_is_every_non_negative_well():
    wells = pd.DataFrame({"plate": "p", "well": ["A01", "A02", "A03"], "control": ["negative", "dose", "positive"]})
    labelled = label_treatments(wells, Conditions("control", "negative", ("positive",)))
    assert labelled["treatment"].tolist() == ["negative", "positive", "positive"]


def quiet_wells(seed: int) -> pd.DataFrame:
    """``planted_wells`` with ``none`` renamed ``quiet``, which moves only the contrast readout d2 (EC50 1)."""
    wells = planted_wells()
    rng = np.random.default_rng(seed)
    wells.loc[wells["compound"].eq("none"), "compound"] = "quiet"
    hill = wells["dose"] / (wells["dose"] + 1.0)
    wells["mean_contrast_d2"] = EFFECT * hill * wells["compound"].eq("quiet") + rng.normal(0, NOISE_SD, len(wells))
    return wells


def test_a_treatment_only_its_contrast_readout_sees_is_active_and_groups_ignore_readouts():
    """``quiet`` moves no kept attribute, only a contrast readout: active through it; the similarity is unchanged."""
    wells = quiet_wells(seed=2)
    attributes = kept_attributes().replace({"treatment": {"none": "quiet"}})
    conditions = Conditions("compound", "DMSO", ("big", "hi", "lo", "quiet"))
    tables = treatment_tables(wells, attributes, conditions, {})
    table = tables.treatments.set_index("treatment")
    assert table["active"].to_dict() == {"hi": True, "lo": True, "big": True, "quiet": True}
    assert table.loc["quiet", "activity_readout"] == "contrast_d2"
    assert table.loc["big", "activity_readout"] == "attribute_d1p"
    assert "robust_z_contrast_d2" in tables.well_scores
    without = treatment_tables(wells.drop(columns="mean_contrast_d2"), attributes, conditions, {})
    assert not without.treatments.set_index("treatment").loc["quiet", "active"]
    profiles = treatment_profiles(label_treatments(wells, conditions), "treatment",
                                  ["mean_attribute_d0p", "mean_attribute_d1p"], "DMSO", 1, "dose_index")
    expected = profile_similarity(profiles.rename(columns=lambda c: c.removeprefix("mean_attribute_")),
                                  weighed_over=list(conditions.treatments), floor=3.0)
    pd.testing.assert_frame_equal(tables.similarity, expected.assign(basis="attribute_profile"))


def test_a_screen_where_no_treatment_keeps_an_attribute_gets_its_tables_from_the_readouts():
    """``quiet`` is the only treatment and keeps nothing: its row is called, grouped and described by its readout."""
    from screenxai.explain.fit import no_attributes

    wells = quiet_wells(seed=5)
    wells = wells[wells["compound"].isin(["DMSO", "quiet"])]
    readouts = pd.DataFrame({"readout": ["contrast_d2"], "treatment": ["quiet"], "name": ["reporter texture up"],
                             "name_spearman": [0.9]})
    tables = treatment_tables(wells, no_attributes(), Conditions("compound", "DMSO", ("quiet",)), {"quiet": 0.99},
                              contrasts=readouts)
    row = tables.treatments.set_index("treatment").loc["quiet"]
    assert bool(row["active"]) and row["activity_readout"] == "contrast_d2" and row["group"] != "inactive"
    assert pd.isna(row["top_attribute"]) and np.isnan(row["ec50"])
    assert row["readout_name"] == "reporter texture up" and row["readout_robust_z_top_dose"] > 10
    assert tables.attributes.empty and {"ec50", "robust_z_top_dose", "name"} <= set(tables.attributes.columns)


def test_each_treatment_row_describes_its_own_contrast_readout():
    """``quiet`` keeps no attribute; its own readout gives it a name, a robust z and a dose trend in its row."""
    wells = quiet_wells(seed=3)
    wells["mean_contrast_d3"] = np.random.default_rng(4).normal(0, NOISE_SD, len(wells))
    attributes = kept_attributes()[lambda t: t["treatment"] != "none"]
    readouts = pd.DataFrame({"readout": ["contrast_d2", "contrast_d3"], "treatment": ["quiet", "hi"],
                             "name": ["reporter texture up", "nuclear area up"], "name_spearman": [0.9, 0.4]})
    conditions = Conditions("compound", "DMSO", ("big", "hi", "lo", "quiet"))
    table = treatment_tables(wells, attributes, conditions, {}, contrasts=readouts).treatments.set_index("treatment")
    assert table.loc["quiet", "readout"] == "contrast_d2"
    assert table.loc["quiet", "readout_name"] == "reporter texture up"
    assert table.loc["quiet", "readout_spearman"] == 0.9
    assert table.loc["quiet", "readout_robust_z_top_dose"] > 10
    assert table.loc["quiet", "readout_dose_spearman"] > 0.8
    assert pd.isna(table.loc["quiet", "top_attribute"])
    assert abs(table.loc["hi", "readout_robust_z_top_dose"]) < 3  # d3 is noise: its name says nothing of hi
    assert pd.isna(table.loc["hi", "readout_name"]) and table.loc["hi", "readout"] == "contrast_d3"
    assert pd.isna(table.loc["big", "readout"]) and np.isnan(table.loc["big", "readout_robust_z_top_dose"])


def test_the_readout_report_tracks_each_treatments_own_readout_against_its_planted_factor():
    """``quiet``'s readout follows its planted texture per well; ``big`` has no readout, so nothing is tracked."""
    wells = quiet_wells(seed=5)
    texture = wells["dose"] / (wells["dose"] + 1.0) * wells["compound"].eq("quiet")
    cells = wells.loc[wells.index.repeat(3), ["plate", "well"]].assign(texture=np.repeat(texture.to_numpy(), 3))
    treatments = pd.DataFrame({"treatment": ["quiet", "big"], "readout": ["contrast_d2", None],
                               "readout_name": ["reporter texture up", None]})
    report = readout_report(wells, treatments, cells, {"quiet": ("texture",), "big": ("texture",)}, "DMSO")
    report = report.set_index("treatment")
    assert report.loc["quiet", "spearman"] > 0.8 and report.loc["quiet", "named"]
    assert report.loc["quiet", "readout"] == "contrast_d2"
    assert np.isnan(report.loc["big", "spearman"]) and not report.loc["big", "named"]


def test_the_treatment_report_finds_the_best_of_the_top_attributes_and_judges_the_names():
    """``big``'s area follows d1p, which it ranks second behind d0p (noise for it); ``hi`` keeps nothing."""
    wells = planted_wells(seed=7)
    area = wells["dose"] / (wells["dose"] + 1.0) * wells["compound"].eq("big")
    cells = wells.loc[wells.index.repeat(3), ["plate", "well"]].assign(nuclear_area=np.repeat(area.to_numpy(), 3))
    attributes = pd.DataFrame({"treatment": "big", "rank": [2, 1], "attribute": ["d1p", "d0p"],
                               "name": ["nuclear area up", "reporter in the nucleus up"]})
    report = treatment_report(wells, attributes, cells, {"big": ("nuclear_area",), "hi": ("nuclear_area",)}, "DMSO")
    report = report.set_index("treatment")
    big, hi = report.loc["big"], report.loc["hi"]
    assert big["top_attribute"] == "d0p" and big["top_spearman"] < 0.5 and not big["top_named"]
    assert big["best_rank"] == 2 and big["best_spearman"] > 0.9 and big["best_named"]
    assert pd.isna(hi["top_attribute"]) and np.isnan(hi["top_spearman"]) and hi["best_rank"] == -1
    assert not hi["top_named"] and not hi["best_named"]


def test_a_change_kept_under_several_ids_counts_once_in_the_groups():
    """``hi``, ``lo`` and ``both`` keep one change as d0p, d2p, d3p (collinear axes); ``both`` and ``big`` move d1p.

    Counted three times, the shared change makes ``both`` look like ``hi``
    (above the 0.8 cut, as a treatment with a second change should not);
    counted once, ``both`` is a group of its own.
    """
    wells = planted_wells(seed=5)
    both = wells[wells["compound"].eq("big")].assign(compound="both", well=lambda t: "both" + t["well"])
    wells = pd.concat([wells, both], ignore_index=True)
    rng = np.random.default_rng(6)
    hill = wells["dose"] / (wells["dose"] + wells["compound"].map({"hi": 0.3, "lo": 3.0}).fillna(1.0))
    shared = EFFECT * hill * wells["compound"].isin(["hi", "lo", "both"])
    wells["mean_attribute_d1p"] = EFFECT * hill * wells["compound"].isin(["big", "both"])
    for column in ("mean_attribute_d0p", "mean_attribute_d1p", "mean_attribute_d2p", "mean_attribute_d3p"):
        wells[column] = (wells["mean_attribute_d1p"] if column.endswith("d1p") else shared) + rng.normal(
            0, NOISE_SD, len(wells))
    rows = [("hi", 1, "d0p"), ("lo", 1, "d2p"), ("both", 1, "d3p"), ("both", 2, "d1p"), ("big", 1, "d1p"),
            ("none", 1, "d1p")]
    attributes = pd.DataFrame([{"treatment": t, "rank": r, "attribute": a, "direction": int(a[1]), "sign": 1,
                                "name": f"feature {a[1]} up"} for t, r, a in rows])
    ids = ["d0p", "d2p", "d3p", "d1p"]
    matrix = np.zeros((4, 4))
    matrix[:3, :3] = 0.9  # the first three ids are one axis
    np.fill_diagonal(matrix, 1.0)
    cosines = pd.DataFrame(matrix, index=ids, columns=ids)
    conditions = Conditions("compound", "DMSO", ("big", "both", "hi", "lo", "none"))

    def groups(axis_cosines):
        tables = treatment_tables(wells, attributes, conditions, {}, axis_cosines=axis_cosines)
        pairs = tables.similarity.set_index(["treatment", "other"])["similarity"]
        return tables.treatments.set_index("treatment")["group"], pairs[("both", "hi")]

    counted_thrice, similarity_thrice = groups(None)
    counted_once, similarity_once = groups(cosines)
    assert similarity_thrice > 0.8 and counted_thrice["both"] == counted_thrice["hi"]
    assert similarity_once < 0.7
    assert len({counted_once[t] for t in ("both", "hi", "big")}) == 3 and counted_once["hi"] == counted_once["lo"]
    assert counted_once["none"] == "inactive"


def test_latent_shifts_decide_the_groups_when_every_treatment_has_one():
    """Shifts that make ``big`` act like ``hi`` group them, whatever the attribute profiles say; without a shift
    for every treatment the attribute profiles decide, as in ``tables``."""
    conditions = Conditions("compound", "DMSO", ("big", "hi", "lo", "none"))
    names = ["big", "hi", "lo", "none"]
    matrix = np.array([[1.0, 0.95, 0.9, 0.0], [0.95, 1.0, 0.97, 0.1], [0.9, 0.97, 1.0, 0.1], [0.0, 0.1, 0.1, 1.0]])
    shifts = pd.DataFrame(matrix, index=names, columns=names)

    def tables_with(cosines):
        return treatment_tables(planted_wells(), kept_attributes(), conditions, {}, shift_cosines=cosines)

    shifted = tables_with(shifts)
    groups = shifted.treatments.set_index("treatment")["group"]
    assert groups["big"] == groups["hi"] == groups["lo"] and groups["none"] == "inactive"
    assert set(shifted.similarity["basis"]) == {"latent_shift"}
    pairs = shifted.similarity.set_index(["treatment", "other"])["similarity"]
    assert pairs[("big", "hi")] == 0.95 and len(pairs) == 16
    partial = tables_with(shifts.drop(index="lo", columns="lo"))
    groups = partial.treatments.set_index("treatment")["group"]
    assert set(partial.similarity["basis"]) == {"attribute_profile"}
    assert groups["hi"] == groups["lo"] != groups["big"]
