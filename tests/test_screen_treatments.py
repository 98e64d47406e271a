"""Every treatment of a simulated multi-treatment screen explained by ``screenxai run`` with the tiny preset.

The plate is the simulator's ``treatments`` design (docs/simulation.md):
six treatments with planted mechanisms fixed before any method ran. One
bundle is trained with the run's defaults (class column ``compound``, each
treatment's two top dose levels) and every well scored, once per test run
(``treatment_screen``); the tests read the run's tables back.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import documented_columns
from screenxai.explain import load_directions
from screenxai.explain.ranking import FIRST_GAIN_SHARE, axis_cosines
from screenxai.explain.validation import grouping_agreement, names_factor, pseudo_treatment_calls
from screenxai.models.bundle import load_bundle
from screenxai.pipeline.run import bundle_conditions
from screenxai.pipeline.summary import with_layouts
from screenxai.plate.simulate import MECHANISM_GROUPS, NEGATIVE_CONTROL, TREATMENTS

PSEUDO_FALSE_POSITIVE_BOUND = 0.1  # stated margin: at most one pseudo-treatment of negative wells in ten called active

@pytest.fixture(scope="module")
def run(treatment_screen):
    return treatment_screen


def test_the_classifier_tells_every_treatment_from_the_negative_control_trained_on_top_doses(run):
    bundle = load_bundle(run.bundle)
    assert bundle.config["class_column"] == "compound"
    assert bundle.class_names == (NEGATIVE_CONTROL, *sorted(TREATMENTS))
    layout = run.layout.set_index("well")
    wells = [key.split("/", 1)[1] for key in bundle.config["provenance"]["wells"]]
    doses = layout.loc[wells]
    assert set(doses.loc[doses["compound"] != NEGATIVE_CONTROL, "dose_index"]) == {run.columns - 2, run.columns - 1}
    assert set(layout.index[layout["compound"] == NEGATIVE_CONTROL]) <= set(wells)
    auc = bundle.config["provenance"]["classifier_metrics"]["auc_vs_negative"]
    assert set(auc) == set(TREATMENTS)


def test_every_treatment_keeps_distinct_named_attributes(run):
    """A treatment keeps only changes its cells show: each whose change the tiny decoder draws keeps some, the
    granulator (texture, not drawn) and the inert treatment may keep none."""
    attributes = pd.read_parquet(run.out / "attributes.parquet")
    directions, _ = load_directions(run.bundle / "explain")
    cosines = axis_cosines(directions)
    drawn = {treatment for treatment, factors in TREATMENTS.items() if set(factors) - {"texture"}}
    assert drawn <= set(attributes["treatment"]) <= set(TREATMENTS)
    for treatment, rows in attributes.groupby("treatment"):
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1)), treatment
        assert rows["name"].is_unique, (treatment, rows["name"].tolist())
        kept = rows["direction"].to_numpy()
        pairs = cosines[np.ix_(kept, kept)][np.triu_indices(len(kept), 1)]
        assert (pairs < 0.8).all(), (treatment, pairs)


def test_each_top_attribute_is_named_after_the_planted_change_the_tiny_decoder_draws(run):
    """The naming half of issue 15, item 6, for translocation and nuclear size.

    The tiny preset's decoder does not draw the granulator's texture, so that
    treatment is left to benchmarks/README.md. Every name is grounded in the
    training cells: its Spearman there is recorded.
    """
    attributes = pd.read_parquet(run.out / "attributes.parquet")
    top = attributes[attributes["rank"] == 1].set_index("treatment")["name"]
    for treatment, factors in TREATMENTS.items():
        drawn = [factor for factor in factors if factor != "texture"]
        if drawn:
            assert any(names_factor(top[treatment], factor) for factor in drawn), (treatment, top[treatment])
    assert attributes["name_spearman"].notna().all(), attributes[["attribute", "name", "name_spearman"]]


def test_ranking_every_treatment_costs_one_cache(run):
    """One inversion per ranked cell and one decode per (cell, direction, sign), whatever the treatments."""
    summary = json.loads((run.bundle / "explain" / "directions.json").read_text())
    directions, _ = load_directions(run.bundle / "explain")
    n, k, steps = 32, directions.n_directions, 10
    assert summary["unet_evaluations"]["ranking"] == n * steps + n * 2 * k * steps
    assert summary["unet_evaluations"]["treatments"] == len(TREATMENTS)
    assert k >= 2 * len(TREATMENTS)


def test_every_treatment_gets_a_contrast_direction_recorded_as_the_source(run):
    """One contrast direction per treatment after the learned ones; each attribute says which kind it uses."""
    directions, _ = load_directions(run.bundle / "explain")
    attributes = pd.read_parquet(run.out / "attributes.parquet")
    assert directions.n_linear == len(TREATMENTS)
    contrast = {directions.n_learned + i: f"contrast {t}" for i, t in enumerate(sorted(TREATMENTS))}
    expected = attributes["direction"].map(lambda k: contrast.get(k, "learned"))
    assert attributes["source"].tolist() == expected.tolist()


def test_a_treatments_own_contrast_direction_is_first_unless_its_gain_is_under_half_the_best(run):
    """Rank 1 is chosen on all ranked cells: an own contrast edit kept lower gained under half of rank 1's."""
    attributes = pd.read_parquet(run.out / "attributes.parquet")
    own = attributes[(attributes["source"] == "contrast " + attributes["treatment"]) & (attributes["sign"] == 1)]
    assert (own["rank"] == 1).any(), attributes[["treatment", "rank", "attribute", "source", "mean_delta_p_all"]]
    best = attributes[attributes["rank"] == 1].set_index("treatment")["mean_delta_p_all"]
    lower = own[own["rank"] > 1]
    assert (lower["mean_delta_p_all"] < FIRST_GAIN_SHARE * lower["treatment"].map(best).astype(float)).all(), lower


@pytest.mark.acceptance
def test_inert_treatment_and_pseudo_treatments_of_negative_wells_are_inactive_and_the_others_active(run):
    """Issue 15, item 6: activity calls exact, and treatments made of negative wells are called inactive.

    A pseudo-treatment is a random half of the negative wells, called
    against the other half. No call can find every one inactive: its null
    is the most extreme of the 15 pairs that 6 remaining wells make, which
    a pair of truly alike wells beats now and then (3-7% on plates of
    independent normal wells, ``exchangeable_false_positive_rate``). The
    stated margin: at most one in ten of 200 random ones called active.
    (The same item's factor-tracking goal is not met; benchmarks/README.md
    has its figures.)
    """
    calls = pd.read_parquet(run.out / "treatments.parquet").set_index("treatment")["active"]
    assert calls.to_dict() == {t: bool(factors) for t, factors in TREATMENTS.items()}
    wells = with_layouts(pd.read_parquet(run.out / "wells.parquet"), {})
    pseudo = pseudo_treatment_calls(wells, bundle_conditions(load_bundle(run.bundle)))
    assert (pseudo["top_wells"] == 2).all() and (pseudo["wells"] == 6).all()
    assert pseudo["active"].mean() <= PSEUDO_FALSE_POSITIVE_BOUND, pseudo[pseudo["active"]]


@pytest.mark.acceptance
def test_mechanism_groups_are_exactly_the_planted_mechanisms(run):
    """Issue 15, item 6: mechanism groups exact (adjusted Rand index 1.0 against the planted ones).

    The two translocators share a group; the enlarger, the granulator and
    the dual treatment (translocation and nuclear area at once) each have
    their own; the inert treatment is ``inactive``.
    """
    treatments = pd.read_parquet(run.out / "treatments.parquet")
    assert grouping_agreement(treatments, dict(MECHANISM_GROUPS)) == 1.0, treatments[["treatment", "group"]]


def test_wells_carry_every_attribute_ids_mean_sd_and_robust_z(run):
    wells = pd.read_parquet(run.out / "wells.parquet")
    ids = pd.read_parquet(run.out / "attributes.parquet")["attribute"].unique()
    for attribute in ids:
        for prefix in ("mean", "sd", "robust_z"):
            assert f"{prefix}_attribute_{attribute}" in wells, (prefix, attribute)
    negative = wells[wells["compound"] == NEGATIVE_CONTROL]
    medians = negative[[f"robust_z_attribute_{a}" for a in ids]].median()
    assert (medians.abs() < 1e-6).all()  # robust z is centred on the negative wells' median


def test_treatments_table_has_one_row_per_treatment_active_first(run):
    table = pd.read_parquet(run.out / "treatments.parquet")
    assert sorted(table["treatment"]) == sorted(TREATMENTS)
    order = list(zip(~table["active"], -table["activity_z"], strict=True))
    assert order == sorted(order)
    assert (table.loc[~table["active"], "group"] == "inactive").all()
    attributes = pd.read_parquet(run.out / "attributes.parquet")
    top = attributes[attributes["rank"] == 1].set_index("treatment")["attribute"]
    found = table.set_index("treatment")["top_attribute"]
    assert found.dropna().to_dict() == top.to_dict()
    assert found.isna().sum() == len(TREATMENTS) - len(top)  # a treatment that keeps none has no top attribute


def test_similarity_is_a_symmetric_table_of_every_pair(run):
    similarity = pd.read_parquet(run.out / "similarity.parquet")
    square = similarity.pivot(index="treatment", columns="other", values="similarity")
    assert sorted(square.index) == sorted(TREATMENTS) == sorted(square.columns)
    np.testing.assert_allclose(square.to_numpy(), square.to_numpy().T, atol=1e-9)
    np.testing.assert_allclose(np.diag(square.to_numpy()), 1.0, atol=1e-9)


def test_counterfactuals_render_every_treatments_attributes(run):
    dataset = xr.open_zarr(run.out / "counterfactuals.zarr")
    attributes = pd.read_parquet(run.out / "attributes.parquet")
    assert sorted(dataset["attribute"].to_numpy()) == sorted(f"{t}/{r}" for t, r in
                                                             zip(attributes["treatment"], attributes["rank"]))
    assert set(dataset["treatment"].to_numpy()) == set(TREATMENTS)
    assert dataset["image_raw"].sel(c="reporter").min() >= 0  # raw camera units, not [-1, 1]
    first = str(dataset["cell"].to_numpy()[0])
    assert dataset["original"].sel(cell=first).shape[0] == 2


@pytest.mark.parametrize("section, path", [("attributes.parquet", "attributes.parquet"),
                                           ("treatments.parquet", "treatments.parquet"),
                                           ("similarity.parquet", "similarity.parquet")])
def test_every_documented_column_of_the_treatment_tables_reads_back(run, section, path):
    data = pd.read_parquet(run.out / path)
    features = [c.removeprefix("d_") for c in data.columns if c.startswith("d_")]
    for name, dtype in documented_columns("outputs.md", section).items():
        columns = [f"d_{f}" for f in features] if name == "d_{feature}" else [name]
        for column in columns:
            assert column in data, f"{section}: documented column {column} missing"
            kind = "string" if pd.api.types.is_string_dtype(data[column].dtype) else str(data[column].dtype)
            assert kind == dtype, f"{section}: {column} is {data[column].dtype}, docs say {dtype}"


def test_each_treatments_own_readout_is_named_after_its_planted_change_texture_included(run):
    """A contrast readout is named from the real cells alone, so the granulator's texture, which the tiny
    decoder does not draw, gets words too; the inert treatment's readout moves nothing and names nothing."""
    treatments = pd.read_parquet(run.out / "treatments.parquet").set_index("treatment")
    for treatment, factors in TREATMENTS.items():
        row = treatments.loc[treatment]
        if not factors:
            assert abs(row["readout_robust_z_top_dose"]) < 3 and pd.isna(row["readout_name"]), row
            continue
        assert any(names_factor(row["readout_name"], factor) for factor in factors), (treatment, row["readout_name"])
        assert row["readout_robust_z_top_dose"] > 3, row
