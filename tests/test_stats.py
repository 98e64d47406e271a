"""Per-treatment screen statistics on synthetic well tables with planted answers.

The screen: 36 negative wells, of which 24 are relabelled as treatment F
(so F is really negative wells) and 12 stay negative; treatments A-E on a
dose series of 8 half-log doses (0.01-30) in 3 replicate wells. Every well
has three attributes, each a baseline plus Gaussian well-to-well noise of
SD 0.2 (SD 0.05 in the screen the dose-response fits are checked on, see
``precise_wells``). Planted four-parameter effects (top over baseline, EC50, Hill):
A moves attribute 1 (2.0, 0.3, 1.5); B moves attribute 1 less potently
(2.0, 3.0, 1.0); C moves attribute 2 (1.5, 1.0, 1.0); D moves attributes 1
and 2 (1.5, 1.0, 1.0 each); E and F move nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from screenxai.errors import StatisticsError
from screenxai.stats import (FIT_KEYS, call_activity, dose_response, dose_responses, four_parameter,
                             mechanism_groups, merge_collinear, negative_profiles, null_activity, profile_similarity,
                             robust_z, top_dose_wells, treatment_profiles)

NOISE_SD = 0.2
FIT_NOISE_SD = 0.05
DOSES = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
REPLICATES = 3
BASELINE = {"attr1": 1.0, "attr2": 5.0, "attr3": -2.0}
PLANTED = {"A": {"attr1": (2.0, 0.3, 1.5)}, "B": {"attr1": (2.0, 3.0, 1.0)}, "C": {"attr2": (1.5, 1.0, 1.0)},
           "D": {"attr1": (1.5, 1.0, 1.0), "attr2": (1.5, 1.0, 1.0)}, "E": {}}
ATTRIBUTES = list(BASELINE)
TOP_DOSES = 2
MECHANISMS = {"A": "m1", "B": "m1", "C": "m2", "D": "m3", "E": "inactive", "F": "inactive"}


def dose_series(treatment: str) -> list[dict]:
    """Layout rows of one treatment's dose wells: dose, dose_index (1 = lowest)."""
    return [{"treatment": treatment, "dose": dose, "dose_index": index}
            for index, dose in enumerate(DOSES, start=1) for _ in range(REPLICATES)]


def screen_wells(n_negative: int = 12, seed: int = 0, noise_sd: float = NOISE_SD) -> pd.DataFrame:
    """The module docstring's screen as a well table (one row per well)."""
    rng = np.random.default_rng(seed)
    rows = [{"treatment": "negative", "dose": 0.0, "dose_index": 0} for _ in range(n_negative)]
    rows += dose_series("F")  # negative wells relabelled: no effect, drawn below like the negatives
    for treatment in PLANTED:
        rows += dose_series(treatment)
    wells = pd.DataFrame(rows)
    wells.insert(0, "well", [f"W{i:03d}" for i in range(len(wells))])
    for attribute, baseline in BASELINE.items():
        effect = np.zeros(len(wells))
        for treatment, planted in PLANTED.items():
            if attribute in planted:
                top, ec50, hill = planted[attribute]
                mine = wells["treatment"].eq(treatment).to_numpy()
                effect[mine] = four_parameter(wells.loc[mine, "dose"].to_numpy(), 0.0, top, np.log(ec50), hill)
        wells[attribute] = baseline + effect + rng.normal(0, noise_sd, len(wells))
    return wells


@pytest.fixture(scope="module")
def wells() -> pd.DataFrame:
    return screen_wells()


@pytest.fixture(scope="module")
def precise_wells() -> pd.DataFrame:
    """The screen at well-to-well noise SD 0.05, where a four-parameter fit can pin EC50 to 20%.

    Over 8 doses x 3 wells the fitted log EC50 is unbiased but spreads with
    the noise: at SD 0.2 about 0.16 for A and 0.45 for B (too wide for 20%),
    at SD 0.05 about 0.04 and 0.08 (screens of other seeds than this one).
    """
    return screen_wells(noise_sd=FIT_NOISE_SD)


@pytest.fixture(scope="module")
def profiles(wells) -> pd.DataFrame:
    return treatment_profiles(wells, "treatment", ATTRIBUTES, "negative", top_doses=TOP_DOSES)


@pytest.fixture(scope="module")
def activity(wells, profiles) -> pd.DataFrame:
    sizes = top_dose_wells(wells, "treatment", "negative", TOP_DOSES)["treatment"].value_counts()
    return call_activity(profiles, negative_profiles(wells, "treatment", ATTRIBUTES, "negative"), sizes)


@pytest.mark.parametrize("treatment", ["A", "B"])
def test_dose_response_recovers_the_planted_ec50_and_hill(precise_wells, treatment):
    top, ec50, hill = PLANTED[treatment]["attr1"]
    fit = dose_response(precise_wells, "attr1", treatment, "treatment", "negative", dose="dose")
    assert fit["ec50"] == pytest.approx(ec50, rel=0.2)
    assert fit["hill"] == pytest.approx(hill, rel=0.25)
    assert fit["bottom"] == pytest.approx(BASELINE["attr1"], abs=0.1)
    assert fit["max_effect"] == pytest.approx(fit["top"] - fit["bottom"])
    assert fit["n_doses"] == len(DOSES)


def test_dose_response_max_effect_is_the_planted_top(precise_wells):
    fit = dose_response(precise_wells, "attr1", "A", "treatment", "negative", dose="dose")
    assert fit["max_effect"] == pytest.approx(PLANTED["A"]["attr1"][0], rel=0.1)


def test_dose_responses_fit_every_treatment_and_attribute(precise_wells):
    table = dose_responses(precise_wells, "treatment", ATTRIBUTES, "negative", dose="dose")
    assert list(table.columns) == ["treatment", "attribute", *FIT_KEYS, "max_effect", "n_doses"]
    assert len(table) == 6 * len(ATTRIBUTES) and set(table["treatment"]) == set("ABCDEF")
    c_attr2 = table.set_index(["treatment", "attribute"]).loc[("C", "attr2")]
    assert c_attr2["ec50"] == pytest.approx(1.0, rel=0.2)
    assert c_attr2["max_effect"] == pytest.approx(1.5, rel=0.15)


def test_fewer_than_four_dose_levels_give_nan_fit_values(wells):
    three = wells[~wells["treatment"].eq("A") | wells["dose_index"].isin([6, 7, 8])]
    fit = dose_response(three, "attr1", "A", "treatment", "negative", dose="dose")
    assert fit["n_doses"] == 3
    assert all(np.isnan(fit[key]) for key in [*FIT_KEYS, "max_effect"])


def test_too_few_negative_wells_is_a_clear_error():
    few = screen_wells(n_negative=1)
    with pytest.raises(StatisticsError, match=r"at least 2 negative wells .* found 1"):
        treatment_profiles(few, "treatment", ATTRIBUTES, "negative")
    with pytest.raises(ValueError, match="found 1"):
        dose_response(few, "attr1", "A", "treatment", "negative", dose="dose")
    with pytest.raises(StatisticsError, match="found 2"):
        negative_profiles(screen_wells(n_negative=2), "treatment", ATTRIBUTES, "negative")


def test_missing_columns_and_treatments_are_named(wells):
    with pytest.raises(StatisticsError, match="attr9"):
        treatment_profiles(wells, "treatment", ["attr1", "attr9"], "negative")
    with pytest.raises(StatisticsError, match="'Z'"):
        dose_response(wells, "attr1", "Z", "treatment", "negative", dose="dose")


def test_top_dose_wells_are_each_treatments_highest_levels(wells):
    top = top_dose_wells(wells, "treatment", "negative", top_doses=1)
    assert top["treatment"].value_counts().to_dict() == dict.fromkeys("ABCDEF", REPLICATES)
    assert set(top["dose_index"]) == {8}
    assert set(top_dose_wells(wells, "treatment", "negative", top_doses=2)["dose_index"]) == {7, 8}


def test_profiles_point_along_the_planted_attributes(profiles):
    assert list(profiles.index) == list("ABCDEF") and list(profiles.columns) == ATTRIBUTES
    for treatment, planted in PLANTED.items():
        if planted:
            direction = np.array([1.0 if a in planted else 0.0 for a in ATTRIBUTES])
            vector = profiles.loc[treatment].to_numpy()
            assert vector @ direction / np.linalg.norm(vector) / np.linalg.norm(direction) > 0.95
            assert (vector[direction > 0] > 3).all()
    assert (profiles.loc[["E", "F"]].abs() < 3).all().all()


def test_profiles_are_means_of_per_well_robust_z(wells, profiles):
    negative = wells.loc[wells["treatment"].eq("negative"), "attr2"].to_numpy()
    c_top = wells[wells["treatment"].eq("C") & wells["dose_index"].ge(7)]["attr2"].to_numpy()
    assert profiles.loc["C", "attr2"] == pytest.approx(robust_z(c_top, negative).mean())


def test_profile_similarity_is_cosine_similarity_of_norm_scaled_attributes_in_a_long_table():
    profiles = pd.DataFrame({"a1": [1.0, 1.0, 0.0], "a2": [0.0, 2.0, 0.0]}, index=["X", "Y", "Z"])
    table = profile_similarity(profiles)
    assert list(table.columns) == ["treatment", "other", "similarity"] and len(table) == 9
    pairs = table.set_index(["treatment", "other"])["similarity"]
    # a1 / sqrt(2), a2 / 2: X = (0.71, 0), Y = (0.71, 1)
    assert pairs[("X", "Y")] == pytest.approx(np.sqrt(0.5) / np.sqrt(1.5))
    assert pairs[("Y", "X")] == pytest.approx(pairs[("X", "Y")])
    assert pairs[("X", "X")] == pytest.approx(1.0) and pairs[("Y", "Y")] == pytest.approx(1.0)
    assert pairs[("X", "Z")] == 0.0 and pairs[("Z", "Z")] == 0.0


def test_a_sharp_attribute_does_not_decide_the_similarity_of_a_two_mechanism_treatment():
    """D moves both changes fully; a1's robust z is 20x a2's, so unscaled D would look like A alone."""
    profiles = pd.DataFrame({"a1": [100.0, 0.0, 100.0], "a2": [0.0, 5.0, 5.0]}, index=["A", "B", "D"])
    pairs = profile_similarity(profiles).set_index(["treatment", "other"])["similarity"]
    assert pairs[("D", "A")] == pytest.approx(np.sqrt(0.5)) and pairs[("D", "B")] == pytest.approx(np.sqrt(0.5))


def test_profiles_of_no_attribute_are_similar_to_nothing():
    pairs = profile_similarity(pd.DataFrame(index=["A", "B"]))
    assert len(pairs) == 4 and (pairs["similarity"] == 0).all()


def test_attributes_are_scaled_over_the_weighed_treatments_and_never_below_the_floor():
    profiles = pd.DataFrame({"a1": [6.0, 8.0, 0.0], "noise": [0.5, -0.5, 9.0]}, index=["A", "B", "inactive"])
    pairs = profile_similarity(profiles, weighed_over=["A", "B"], floor=3.0).set_index(["treatment", "other"])
    # a1 / 10 (its norm over A and B), noise / 3 (its norm 0.71 is below the floor)
    a, b = np.array([0.6, 0.5 / 3]), np.array([0.8, -0.5 / 3])
    assert pairs.loc[("A", "B"), "similarity"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    inactive = np.array([0.0, 3.0])
    assert pairs.loc[("A", "inactive"), "similarity"] == pytest.approx(
        a @ inactive / np.linalg.norm(a) / np.linalg.norm(inactive))


def test_attributes_along_one_axis_merge_into_one_signed_mean_column():
    """a1 and a2 are one axis (cosine 0.95), a3 reads it backwards (-0.9); b is another change."""
    profiles = pd.DataFrame({"a1": [4.0, 0.0], "a2": [6.0, 0.0], "a3": [-5.0, 0.0], "b": [0.0, 7.0]}, index=["X", "Y"])
    ids = ["a1", "a2", "a3", "b"]
    cosines = pd.DataFrame([[1.0, 0.95, -0.9, 0.1], [0.95, 1.0, -0.85, 0.0], [-0.9, -0.85, 1.0, 0.05],
                            [0.1, 0.0, 0.05, 1.0]], index=ids, columns=ids)
    merged = merge_collinear(profiles, cosines, 0.8)
    assert list(merged.columns) == ["a1+a2+a3", "b"]
    assert merged.loc["X", "a1+a2+a3"] == pytest.approx(5.0) and merged.loc["Y", "b"] == 7.0
    assert list(merge_collinear(profiles, cosines, 0.99).columns) == ids
    with pytest.raises(StatisticsError, match="a4"):
        merge_collinear(profiles.assign(a4=1.0), cosines)


def test_a_change_kept_three_times_does_not_outweigh_a_second_change():
    """D does both changes; the first is kept as three collinear ids. Merged, D is 1/sqrt(2) from A, not sqrt(3/4)."""
    profiles = pd.DataFrame({"t1": [9.0, 0.0, 9.0], "t2": [8.0, 0.0, 8.0], "t3": [10.0, 0.0, 10.0],
                             "area": [0.0, 6.0, 6.0]}, index=["A", "B", "D"])
    ids = list(profiles.columns)
    matrix = np.zeros((4, 4))
    matrix[:3, :3] = 0.9  # the first three ids are one axis
    np.fill_diagonal(matrix, 1.0)
    cosines = pd.DataFrame(matrix, index=ids, columns=ids)
    unmerged = profile_similarity(profiles).set_index(["treatment", "other"])["similarity"]
    merged = profile_similarity(merge_collinear(profiles, cosines)).set_index(["treatment", "other"])["similarity"]
    assert unmerged[("D", "A")] == pytest.approx(np.sqrt(0.75))
    assert merged[("D", "A")] == pytest.approx(np.sqrt(0.5)) and merged[("D", "B")] == pytest.approx(np.sqrt(0.5))


def test_similarity_separates_the_planted_mechanisms(profiles):
    pairs = profile_similarity(profiles).set_index(["treatment", "other"])["similarity"]
    assert pairs[("A", "B")] > 0.9
    assert pairs[("A", "C")] < 0.3


def test_negative_profiles_score_each_well_against_the_others():
    wells = pd.DataFrame({"treatment": ["negative"] * 5 + ["T"], "attr": [0.0, 1.0, 2.0, 3.0, 10.0, 5.0]})
    scores = negative_profiles(wells, "treatment", ["attr"], "negative")
    assert list(scores.index) == [0, 1, 2, 3, 4]
    # the outlier against [0, 1, 2, 3]: median 1.5, MAD 1.0
    assert scores.loc[4, "attr"] == pytest.approx(8.5 / 1.4826)
    # the first well against [1, 2, 3, 10]: median 2.5, MAD 1.0
    assert scores.loc[0, "attr"] == pytest.approx(-2.5 / 1.4826)


def test_activity_calls_the_planted_treatments_active(activity):
    assert list(activity.columns) == ["n_wells", "activity_z", "null_z", "top_attribute", "active"]
    assert activity["active"].to_dict() == {t: t in "ABCD" for t in "ABCDEF"}
    assert (activity["n_wells"] == TOP_DOSES * REPLICATES).all()
    assert activity.loc[["A", "B"], "top_attribute"].eq("attr1").all()
    assert activity.loc["C", "top_attribute"] == "attr2"


def test_negative_wells_under_a_treatment_label_are_inactive_without_a_threshold(wells, profiles):
    """With threshold 0 only the null of pseudo-treatments of negative wells decides."""
    sizes = TOP_DOSES * REPLICATES
    calls = call_activity(profiles, negative_profiles(wells, "treatment", ATTRIBUTES, "negative"), sizes,
                          threshold=0.0)
    assert calls["active"].to_dict() == {t: t in "ABCD" for t in "ABCDEF"}
    assert calls.loc["F", "activity_z"] < calls.loc["F", "null_z"]


def test_a_pseudo_treatment_needs_more_negative_wells_than_its_size(wells):
    scores = negative_profiles(wells, "treatment", ATTRIBUTES, "negative")
    with pytest.raises(StatisticsError, match="needs more than 12 negative wells, found 12"):
        null_activity(scores, 12)


def test_mechanism_groups_recover_the_planted_mechanisms(profiles, activity):
    groups = mechanism_groups(profile_similarity(profiles), activity)
    assert adjusted_rand_score([MECHANISMS[t] for t in groups.index], groups.to_numpy()) == 1.0
    assert groups[activity["activity_z"].idxmax()] == "G1" and groups["E"] == groups["F"] == "inactive"


def hand_made(similar: dict[tuple[str, str], float], strength: dict[str, float], inactive: tuple[str, ...] = ()):
    """A long similarity table (unlisted pairs 0.1, diagonal 1) and an activity table."""
    names = [*strength, *inactive]
    value = {**{(a, b): 0.1 for a in names for b in names}, **{(a, a): 1.0 for a in names}}
    for (a, b), s in similar.items():
        value[(a, b)] = value[(b, a)] = s
    similarity = pd.DataFrame([(a, b, s) for (a, b), s in value.items()], columns=["treatment", "other", "similarity"])
    activity = pd.DataFrame({"activity_z": [*strength.values(), *[1.0] * len(inactive)],
                             "active": [True] * len(strength) + [False] * len(inactive)}, index=names)
    return similarity, activity


def test_mechanism_groups_are_named_by_their_strongest_member_and_cut_at_the_similarity():
    similarity, activity = hand_made({("W", "X"): 0.9, ("Y", "Z"): 0.85}, {"W": 5, "X": 4, "Y": 9, "Z": 3}, ("V",))
    assert mechanism_groups(similarity, activity).to_dict() == {"W": "G2", "X": "G2", "Y": "G1", "Z": "G1",
                                                                "V": "inactive"}
    assert mechanism_groups(similarity, activity, cut=0.95).to_dict() == {"W": "G2", "X": "G3", "Y": "G1",
                                                                          "Z": "G4", "V": "inactive"}


def test_mechanism_groups_use_average_linkage():
    """R is within the cut of Q alone but not of {P, Q} on average, so single linkage would join it."""
    similarity, activity = hand_made({("P", "Q"): 0.9, ("Q", "R"): 0.85, ("P", "R"): 0.6}, {"P": 5, "Q": 4, "R": 6})
    assert mechanism_groups(similarity, activity).to_dict() == {"P": "G2", "Q": "G2", "R": "G1"}


def test_mechanism_groups_of_one_or_no_active_treatment():
    similarity, activity = hand_made({}, {"P": 5}, ("Q",))
    assert mechanism_groups(similarity, activity).to_dict() == {"P": "G1", "Q": "inactive"}
    assert mechanism_groups(similarity, activity.assign(active=False)).eq("inactive").all()


def test_the_null_is_matched_to_each_treatments_group_size(wells, profiles):
    """Over all groups of k wells the largest |mean| is that of the k most extreme wells, so it falls with k."""
    scores = negative_profiles(wells, "treatment", ATTRIBUTES, "negative")
    ordered = np.sort(scores.to_numpy(), axis=0)
    for k in (1, 2, 3):
        extreme = np.maximum(ordered[-k:].mean(axis=0), -ordered[:k].mean(axis=0)).max()
        assert null_activity(scores, k) == pytest.approx(extreme)
    calls = call_activity(profiles, scores, pd.Series({t: 2 if t in "AB" else 3 for t in "ABCDEF"}))
    assert calls.loc["A", "null_z"] == pytest.approx(null_activity(scores, 2))
    assert calls.loc["C", "null_z"] == pytest.approx(null_activity(scores, 3))
    assert calls.loc["C", "null_z"] < calls.loc["A", "null_z"]
