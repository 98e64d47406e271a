"""Fast checks of screenxai.explain without trained models: directions, selection, statistics, naming, store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from explanation_quality import classifier_reliance, partial_spearman
from screenxai.explain import (DirectionConfig, Directions, EditEffect, cell_region, classifier_guide,
                               learn_directions, load_directions, save_directions)
from screenxai.explain.directions import nt_xent, subspace_rank
from screenxai.explain.naming import cohens_d, describe, feature_associations, named_feature, readout_names
from screenxai.explain.ranking import RankingCache, nearest_better_attribute, select_attributes
from screenxai.explain.scores import attribute_axis_cosines
from screenxai.models.autoencoder import AutoencoderConfig, DiffusionAutoencoder
from screenxai.models.classifier import CellClassifier, ClassifierConfig
from screenxai.stats import fit_dose_response, robust_z, ssmd, well_statistics, z_prime

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    """Latents on a 3-dimensional subspace of a 16-dimensional space."""
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 16, generator=gen)
    return torch.randn(500, 3, generator=gen) @ basis + 0.01 * torch.randn(500, 16, generator=gen)


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="n_directions"):
        DirectionConfig(n_directions=1)
    with pytest.raises(ValueError, match="temperature"):
        DirectionConfig(temperature=0)
    with pytest.raises(ValueError, match="response_cells"):
        DirectionConfig(response_cells=0)
    with pytest.raises(ValueError, match="outside_weight"):
        DirectionConfig(outside_weight=-0.5)


def test_directions_are_unit_vectors_in_the_data_subspace(latents):
    assert subspace_rank(latents) == 3
    directions = learn_directions(latents, DirectionConfig(n_directions=3, epochs=2, steps_per_epoch=10))
    z = latents[:20]
    for k in range(3):
        d = directions.direction(z, k)
        assert torch.allclose(d.norm(dim=1), torch.ones(20), atol=1e-5)
        off_subspace = d - (d @ directions.components.T) @ directions.components
        assert off_subspace.norm(dim=1).max() < 1e-4
    projection = directions.project(latents)
    assert torch.allclose(projection.std(0), torch.ones(3), atol=1e-3)
    edited = directions.edit(z, 0, 1.0)
    assert torch.allclose((edited - z).norm(dim=1), directions.scales[0].expand(20), atol=1e-5)


def test_directions_reject_bad_input(latents):
    directions = Directions(16, 2, 8)
    with pytest.raises(ValueError, match="shape"):
        directions.direction(torch.zeros(4, 15), 0)
    with pytest.raises(ValueError, match="does not exist"):
        directions.direction(torch.zeros(4, 16), 2)


def test_nt_xent_prefers_consistent_distinct_changes():
    gen = torch.Generator().manual_seed(0)
    axes = torch.eye(4)[:, None, :] + 0.05 * torch.randn(4, 8, 4, generator=gen)
    scattered = torch.randn(4, 8, 4, generator=gen)
    assert nt_xent(axes, 0.5) < nt_xent(scattered, 0.5) - 0.5
    opposite = torch.cat([axes[:2], -axes[:2]])  # a direction and its reverse count as one edit
    assert nt_xent(opposite, 0.5) > nt_xent(axes, 0.5) + 0.3


def synthetic_cache(gains: np.ndarray) -> RankingCache:
    """A cache whose target-class (1) probability rises from 0.1 by ``gains`` per (cell, direction, sign)."""
    n = gains.shape[0]
    base = np.full(n, 0.1, np.float32)
    p1 = base[:, None, None] + gains
    edited = np.stack([1 - p1, p1], axis=-1).astype(np.float32)
    return RankingCache(torch.zeros(n, 2), torch.zeros(n, 1), np.stack([1 - base, base], 1), edited)


def test_greedy_selection_drops_explained_cells_and_counts_the_reference():
    gains = np.zeros((4, 3, 2), np.float32)
    gains[:, 0, 0] = [0.6, 0.6, 0.0, 0.0]  # flips cells 0 and 1
    gains[:, 1, 1] = [0.39, 0.39, 0.1, 0.1]  # second best over all cells, flips none
    gains[:, 2, 0] = [0.0, 0.0, 0.45, 0.45]  # third over all cells, best on the remaining ones
    table = select_attributes(synthetic_cache(gains), target_class=1, n_attributes=2, threshold=0.0,
                              steps_inv=5, steps_dec=7)
    assert table["direction"].tolist() == [0, 2]
    assert table["sign"].tolist() == [1, 1]
    assert table["n_cells"].tolist() == [4, 2]
    assert table["mean_delta_p"].round(4).tolist() == [0.3, 0.45]
    assert table["coverage"].tolist() == [0.5, 1.0]
    assert table["reference_unet_evaluations"].tolist() == [4 * (5 + 2 * 3 * 7), 2 * (5 + 2 * 2 * 7)]


def test_a_first_direction_takes_rank_one_only_with_half_the_best_gain_above_the_threshold():
    gains = np.zeros((4, 3, 2), np.float32)
    gains[:, 0, 0] = 0.5  # the largest mean gain
    gains[:, 2, 0] = 0.3  # the treatment's own direction: less gain, more than half the best
    gains[:, 2, 1] = 0.35
    table = select_attributes(synthetic_cache(gains), 1, 2, 0.0, 1, 1, first=2)
    assert table["attribute"].tolist() == ["d2p", "d0p"]
    assert select_attributes(synthetic_cache(gains), 1, 2, 0.0, 1, 1)["attribute"].tolist() == ["d0p", "d2n"]
    assert select_attributes(synthetic_cache(gains), 1, 1, 0.32, 1, 1, first=2)["attribute"].tolist() == ["d0p"]
    eligible = np.ones((3, 2), bool)
    eligible[2, 0] = False  # its cells do not show the change: the greedy order stands
    assert select_attributes(synthetic_cache(gains), 1, 1, 0.0, 1, 1, eligible=eligible,
                             first=2)["attribute"].tolist() == ["d0p"]
    gains[:, 2, 0] = 0.2  # under half the best gain: the greedy order stands
    assert select_attributes(synthetic_cache(gains), 1, 1, 0.0, 1, 1, first=2)["attribute"].tolist() == ["d0p"]


def test_a_kept_attribute_is_matched_to_the_better_one_it_repeats():
    directions = Directions(4, 4, 8)
    directions.axes.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.6, 0.8, 0, 0], [-1.0, 0, 0, 0]]))
    table = pd.DataFrame({"rank": [1, 2, 3], "direction": [0, 1, 3], "sign": [1, 1, -1]})
    nearest = nearest_better_attribute(directions, table)
    assert nearest["nearest_rank"].tolist() == [0, 1, 1]  # direction 3 at sign -1 is direction 0 again
    np.testing.assert_allclose(nearest["nearest_cosine"], [0.0, 0.0, 1.0], atol=1e-6)
    table = pd.DataFrame({"rank": [1, 2, 3], "direction": [0, 1, 2], "sign": [1, 1, 1]})
    nearest = nearest_better_attribute(directions, table)
    assert nearest["nearest_rank"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(nearest["nearest_cosine"], [0.0, 0.0, 0.8], atol=1e-6)


def test_attribute_axis_cosines_are_signed_by_each_attributes_sense():
    directions = Directions(4, 3, 8)
    directions.axes.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0.6, 0.8, 0, 0]]))
    attributes = pd.DataFrame({"attribute": ["d0p", "d0n", "d2p", "d0p"], "direction": [0, 0, 2, 0],
                               "sign": [1, -1, 1, 1]})
    cosines = attribute_axis_cosines(directions, attributes)
    assert list(cosines.index) == list(cosines.columns) == ["d0p", "d0n", "d2p"]  # each id once
    np.testing.assert_allclose(cosines.to_numpy(), [[1.0, -1.0, 0.6], [-1.0, 1.0, -0.6], [0.6, -0.6, 1.0]], atol=1e-9)


def test_selection_stops_at_the_threshold():
    gains = np.full((4, 3, 2), 0.01, np.float32)
    with pytest.raises(ValueError, match="threshold"):
        select_attributes(synthetic_cache(gains), 1, 2, 0.05, 1, 1)


def test_control_statistics_match_hand_computation():
    neg, pos = np.array([1.0, 1.2, 0.8]), np.array([3.0, 3.2, 2.8])
    assert z_prime(neg, pos) == pytest.approx(1 - 3 * 0.4 / 2.0)
    assert ssmd(neg, pos) == pytest.approx(2.0 / np.sqrt(0.08))
    assert robust_z(np.array([1.0, 2.0]), np.array([0.0, 1.0, 2.0])) == pytest.approx([0.0, 1 / 1.4826])


def test_dose_response_fit_recovers_ec50_and_hill():
    dose = np.repeat([0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30], 3)
    response = 1 + 4 / (1 + (0.5 / dose) ** 1.5) + np.random.default_rng(0).normal(0, 0.05, len(dose))
    fit = fit_dose_response(dose, response)
    assert fit["ec50"] == pytest.approx(0.5, rel=0.15)
    assert fit["hill"] == pytest.approx(1.5, rel=0.2)
    assert fit["r2"] > 0.99


def test_well_statistics_on_a_layout():
    rng = np.random.default_rng(0)
    rows = []
    for i, (control, dose) in enumerate([("negative", 0)] * 3 + [("positive", 10)] * 3
                                        + [("dose", d) for d in (0.1, 0.3, 1, 3)]):
        value = dose / (1 + dose)
        rows += [{"plate": "p", "well": f"W{i}", "control": control, "dose": dose,
                  "readout": value + rng.normal(0, 0.05)} for _ in range(20)]
    wells, summary = well_statistics(pd.DataFrame(rows), ["readout"])
    assert len(wells) == 10 and (wells["n_cells"] == 20).all()
    assert {"readout_mean", "readout_sd", "readout_robust_z"} <= set(wells.columns)
    row = summary.iloc[0]
    assert row["dose_spearman"] == pytest.approx(1.0) and row["n_dose_wells"] == 4
    assert row["z_prime"] > 0.5
    with pytest.raises(ValueError, match="positive"):
        well_statistics(pd.DataFrame(rows).query("control != 'positive'"), ["readout"])


def test_partial_spearman_removes_a_shared_cause():
    rng = np.random.default_rng(0)
    cause = rng.normal(size=2000)
    x, y = cause + 0.3 * rng.normal(size=2000), cause + 0.3 * rng.normal(size=2000)
    assert abs(partial_spearman(x, y, cause)) < 0.1
    assert partial_spearman(x, x + 0.1 * rng.normal(size=2000), cause) > 0.5


def test_classifier_reliance_tells_a_read_factor_from_one_that_only_moves_with_it():
    rng = np.random.default_rng(0)
    dose = rng.uniform(0, 1, 2000)
    factors = pd.DataFrame({"read": dose + 0.3 * rng.normal(size=2000), "ignored": dose + 0.3 * rng.normal(size=2000)})
    probability = 1 / (1 + np.exp(-4 * (factors["read"].to_numpy() - 0.5)))
    assert np.corrcoef(probability, factors["ignored"])[0, 1] > 0.4  # it moves with the probability through dose
    reliance = classifier_reliance(probability, factors)
    assert reliance["read"] > 0.95 and abs(reliance["ignored"]) < 0.05


def test_naming_text_from_effects():
    assert cohens_d(np.array([0.0, 1.0, 2.0]), np.array([2.0, 3.0, 4.0])) == pytest.approx(2.0)
    effects = pd.Series({"area": 0.05, "perimeter": 0.1, "reporter_ratio": 2.31, "reporter_texture": -0.9,
                         "DNA_ratio": 0.5})
    name, changes = describe(effects, ["DNA", "reporter"])
    assert name == "reporter nucleus/ring ratio up"
    assert changes == ("reporter nucleus/ring ratio up (d = +2.3); reporter texture down (d = -0.9); "
                       "nuclear area unchanged")


def test_a_rendered_side_effect_that_real_cells_do_not_show_gives_way_to_the_change_they_do():
    # The decoder draws a larger nucleus with its DNA spilling into the ring: DNA ratio has the largest |d|.
    effects = pd.Series({"area": 2.2, "DNA_ratio": -2.8, "reporter_ratio": 0.3, "reporter_texture": np.nan})
    rng = np.random.default_rng(0)
    score = rng.normal(size=500)
    features = pd.DataFrame({"area": np.exp(score + 0.5 * rng.normal(size=500)),  # follows the score
                             "DNA_ratio": -score * 0.1 + rng.normal(size=500),  # barely
                             "reporter_ratio": rng.normal(size=500), "reporter_texture": rng.normal(size=500)})
    association = feature_associations(pd.DataFrame({"attribute_d3p": score}), features).loc["d3p"]
    assert association["area"] > 0.8 and abs(association["DNA_ratio"]) < 0.2
    assert named_feature(effects) == "DNA_ratio"
    assert named_feature(effects, association) == "area"
    assert describe(effects, ["DNA", "reporter"], association)[0] == "nuclear area up"


def test_a_real_association_of_the_opposite_sign_or_on_a_small_effect_does_not_name_it():
    effects = pd.Series({"area": 2.0, "reporter_ratio": -1.5, "reporter_texture": 0.5})
    association = pd.Series({"area": 0.1, "reporter_ratio": 0.9, "reporter_texture": 0.95})
    assert named_feature(effects, association) == "area"  # reporter_ratio's sign disagrees, texture's d is small
    assert named_feature(effects, association.drop(["area"])) == "area"  # nothing agrees: the largest |d|
    assert named_feature(pd.Series({"area": np.nan})) is None


def test_feature_associations_are_spearman_per_attribute_and_refuse_unmatched_rows():
    scores = pd.DataFrame({"attribute_d0p": [1.0, 2.0, 3.0, 4.0], "attribute_d1n": [4.0, 3.0, 1.0, 2.0]})
    features = pd.DataFrame({"area": [10.0, 20.0, 30.0, 400.0]}, index=[7, 8, 9, 10])
    table = feature_associations(scores, features)
    assert table.loc["d0p", "area"] == pytest.approx(1.0)
    assert table.loc["d1n", "area"] == pytest.approx(-0.8)
    with pytest.raises(ValueError, match="3 rows of scores for 4"):
        feature_associations(scores.iloc[:3], features)


def test_an_association_over_the_cells_an_attribute_explains_ignores_another_treatments_change():
    """Across the screen the score also follows a change of another treatment; among its own cells it does not.

    Treatment 1 raises the score and the reporter ratio; treatment 2 lowers
    the score and raises texture (a confound across the screen), and
    neither moves the other's feature.
    """
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 200)
    score = rng.normal(size=600) + 2.0 * (labels == 1) - 3.0 * (labels == 2)
    features = pd.DataFrame({"reporter_ratio": 0.3 * rng.normal(size=600) + 1.0 * (labels == 1),
                             "reporter_texture": 0.3 * rng.normal(size=600) + 3.0 * (labels == 2)})
    scores = pd.DataFrame({"attribute_d0p": score})
    everywhere = feature_associations(scores, features).loc["d0p"]
    own = feature_associations(scores, features, {"d0p": np.isin(labels, [0, 1])}).loc["d0p"]
    assert abs(everywhere["reporter_texture"]) > abs(everywhere["reporter_ratio"])
    assert own["reporter_ratio"] > 0.5 and abs(own["reporter_texture"]) < 0.2
    effects = pd.Series({"reporter_ratio": 1.5, "reporter_texture": -1.0})  # the decoder draws both
    assert named_feature(effects, everywhere) == "reporter_texture"
    assert named_feature(effects, own) == "reporter_ratio"


def test_a_readout_is_named_by_the_feature_its_real_cells_follow_best_with_its_sign():
    rng = np.random.default_rng(1)
    score = rng.normal(size=300)
    features = pd.DataFrame({"reporter_texture": score + 0.3 * rng.normal(size=300),
                             "area": -score + 1.5 * rng.normal(size=300),
                             "reporter_ratio": rng.normal(size=300)})
    associations = feature_associations(pd.DataFrame({"contrast_d4": score, "contrast_d5": -score}), features)
    names = readout_names(associations, ["DNA", "reporter"]).set_index("readout")
    assert names.loc["contrast_d4", "name"] == "reporter texture up"
    assert names.loc["contrast_d5", "name"] == "reporter texture down"
    expected = associations.loc["contrast_d4", "reporter_texture"]
    assert names.loc["contrast_d4", "name_spearman"] == pytest.approx(expected)
    empty = readout_names(pd.DataFrame({"area": [np.nan]}, index=["contrast_d6"]), ["DNA", "reporter"])
    assert pd.isna(empty.loc[0, "name"]) and np.isnan(empty.loc[0, "name_spearman"])


def test_store_round_trip(latents, tmp_path):
    directions = learn_directions(latents, DirectionConfig(n_directions=2, epochs=1, steps_per_epoch=2))
    attributes = pd.DataFrame({"rank": [1], "direction": [1], "sign": [-1], "target_class": [1],
                               "mean_delta_p": [np.float32(0.4)], "name": ["nuclear area up"]})
    save_directions(directions, attributes, tmp_path / "explain", DirectionConfig(n_directions=2))
    loaded, table = load_directions(tmp_path / "explain")
    assert torch.equal(loaded.direction(latents[:5], 1), directions.direction(latents[:5], 1))
    assert torch.equal(loaded.project(latents[:5]), directions.project(latents[:5]))
    pd.testing.assert_frame_equal(table, attributes, check_dtype=False)
    with pytest.raises(FileNotFoundError, match="no directions"):
        load_directions(tmp_path / "nothing")


def planted_guide(latents: torch.Tensor, read: list[torch.Tensor], spill: torch.Tensor | None = None):
    """A guide whose classifier reads ``z`` along the axes ``read``; moving along ``spill`` counts as outside."""
    centre = latents.mean(0)

    def proba(z: torch.Tensor) -> torch.Tensor:
        logit = 3 * sum((z - centre) @ axis for axis in read)
        return torch.stack([torch.sigmoid(-logit), torch.sigmoid(logit)], dim=-1)

    return _guide(proba, spill)


def _guide(proba, spill: torch.Tensor | None = None):
    """An ``EditEffect`` guide from a probability function of latents; moving along ``spill`` counts as outside."""
    def guide(z: torch.Tensor, edited: torch.Tensor) -> EditEffect:
        change = edited - z
        outside = (change @ spill).abs() if spill is not None else torch.zeros(change.shape[:2])
        before, after = proba(z), proba(edited)
        return EditEffect((after - before).abs().sum(-1), change.norm(dim=-1) - outside, outside, before, after)

    return guide


def three_class_guide(latents: torch.Tensor, first: torch.Tensor, second: torch.Tensor):
    """A classifier of a negative class and two treatments: treatment 1 lies along ``first``, 2 along ``second``."""
    centre = latents.mean(0)

    def proba(z: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([torch.zeros(z.shape[:-1]), 3 * (z - centre) @ first, 3 * (z - centre) @ second], -1)
        return torch.softmax(logits, -1)

    return _guide(proba)


def test_per_treatment_guidance_gives_each_treatment_its_own_axis(latents):
    """Each treatment gets a direction along its own axis (cosine >= 0.9), which the shared reward does not give.

    Directions 0 and 2 target treatment 1, 1 and 3 treatment 2. With the
    shared reward (the L1 change of all probabilities) nothing ties a
    direction to a treatment: fewer than both axes get a direction.
    """
    first, second = subspace_axes(latents)
    config = DirectionConfig(n_directions=4, epochs=6, steps_per_epoch=20, response_cells=16, seed=0,
                             target_classes=(1, 2, 1, 2))
    guide = three_class_guide(latents, first, second)
    learned = learn_directions(latents, config, guide=guide)
    assert float((learned.axes[[0, 2]] @ first).abs().max()) >= 0.9, learned.axes @ first
    assert float((learned.axes[[1, 3]] @ second).abs().max()) >= 0.9, learned.axes @ second
    shared = learn_directions(latents, DirectionConfig(**{**config.to_dict(), "target_classes": ()}), guide=guide)
    assert min(best_alignment(shared, first), best_alignment(shared, second)) < 0.9
    with pytest.raises(ValueError, match="target_classes"):
        DirectionConfig(target_classes=(1, -1))


def test_selection_skips_a_direction_along_a_kept_axis():
    """Direction 1 raises the target most after direction 0 but lies on its axis; direction 2 is kept instead."""
    gains = np.zeros((4, 3, 2), np.float32)
    gains[:, 0, 0], gains[:, 1, 1], gains[:, 2, 0] = 0.5, 0.4, 0.2
    cosines = np.array([[1.0, 0.95, 0.1], [0.95, 1.0, 0.2], [0.1, 0.2, 1.0]])
    table = select_attributes(synthetic_cache(gains), 1, 2, 0.0, 1, 1, cosines, max_cosine=0.8)
    assert table["direction"].tolist() == [0, 2]
    assert table["attribute"].tolist() == ["d0p", "d2p"]
    unfiltered = select_attributes(synthetic_cache(gains), 1, 2, 0.0, 1, 1)
    assert unfiltered["direction"].tolist() == [0, 1]
    assert unfiltered["attribute"].tolist() == ["d0p", "d1n"]


def subspace_axes(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two orthonormal axes inside the latents' subspace."""
    first = torch.nn.functional.normalize(latents[0] - latents.mean(0), dim=0)
    second = latents[1] - latents.mean(0)
    return first, torch.nn.functional.normalize(second - (second @ first) * first, dim=0)


def best_alignment(directions: Directions, axis: torch.Tensor) -> float:
    return float((directions.axes @ axis).abs().max())


def test_a_guide_turns_a_direction_toward_what_the_classifier_reads(latents):
    """With a response that reads one axis of the subspace, a learned direction aligns with that axis.

    Without it the directions span the subspace in no preferred orientation;
    the response term is what makes one of them the classifier's.
    """
    axis, _ = subspace_axes(latents)
    config = DirectionConfig(n_directions=3, epochs=3, steps_per_epoch=20, response_cells=16, seed=0)
    plain = learn_directions(latents, config)
    guided = learn_directions(latents, config, guide=planted_guide(latents, [axis]))
    assert best_alignment(guided, axis) >= 0.9
    assert best_alignment(guided, axis) > best_alignment(plain, axis) + 0.05
    with pytest.raises(ValueError, match="response_weight"):
        DirectionConfig(response_weight=-1)


def test_the_outside_penalty_keeps_directions_off_what_changes_the_background(latents):
    """The classifier reads two axes; one of them also changes the background. Penalised, the direction drops it."""
    cell, background = subspace_axes(latents)
    guide = planted_guide(latents, [cell, background], spill=background)
    config = DirectionConfig(n_directions=3, epochs=3, steps_per_epoch=20, response_cells=16, seed=0,
                             outside_weight=0.0)
    free = learn_directions(latents, config, guide=guide)
    penalised = learn_directions(latents, DirectionConfig(**{**config.to_dict(), "outside_weight": 2.0}), guide=guide)
    assert best_alignment(penalised, cell) >= 0.9
    assert best_alignment(penalised, cell) > best_alignment(free, cell) + 0.1


def test_cell_region_is_the_inscribed_disc():
    region = cell_region(32)
    assert region[16, 16] == 1 and region[0, 0] == 0 and region[16, 0] == 1
    assert region.sum().item() == pytest.approx(np.pi * 16**2, rel=0.03)
    assert cell_region(32, 0.25).sum() < region.sum()
    with pytest.raises(ValueError, match="radius"):
        cell_region(32, 0.0)


def test_classifier_guide_judges_edits_with_the_decoder_and_classifier():
    """No edit: no response and no change; an edit: a change inside and outside the region, shaped (K, B)."""
    torch.manual_seed(0)
    classifier = CellClassifier(ClassifierConfig(in_channels=2, n_classes=2, width=8, stages=2)).eval()
    config = AutoencoderConfig(in_channels=2, image_size=16, n_classes=2, latent_dim=8, z_dim=8, encoder_width=8,
                               encoder_stages=2, unet_channels=(16, 16))
    autoencoder = DiffusionAutoencoder(config, classifier).eval()
    guide = classifier_guide(autoencoder)
    z = torch.randn(5, 8)
    same = guide(z, z.expand(2, 5, 8))
    for field in (same.response, same.inside, same.outside):
        assert field.shape == (2, 5) and field.abs().max() < 1e-6
    moved = guide(z, torch.stack([z + 3.0, z - 3.0]))
    assert (moved.inside > 0).all() and (moved.outside > 0).all()
    assert torch.isfinite(moved.response).all()
    with pytest.raises(ValueError, match="auxiliary decoder"):
        classifier_guide(DiffusionAutoencoder(AutoencoderConfig(**{**config.to_dict(), "aux_decoder": False,
                                                                    "decoder_input": False}), classifier))
