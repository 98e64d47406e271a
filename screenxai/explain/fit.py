"""Fit the explanations of a screen: directions, then per treatment distinct, named attributes.

One set of directions is learned on the training cells' latents, and one
contrast direction per treatment is added (``screenxai.explain.contrast``);
a treatment's own one takes its first rank where its edit moves cells
towards the treatment about as much as the best candidate's.
The negative-control cells to rank on are inverted once and decoded once per
(direction, sign); the cache holds every class's probability, so each
treatment's ranking reads the same decodes. A treatment's kept attributes
are distinct changes: a direction along the axis of one already kept
(|cosine| >= ``max_cosine``) is no candidate, and an attribute whose
morphology name repeats a better one's is dropped for the next candidate.
Given the training cells' measured morphology, each name is the rendered
change that the real cells' attribute scores follow best
(``screenxai.explain.naming``), and each contrast readout is named by the
feature its treatment's and the negative control's real cells follow best,
kept as an attribute or not: a change the decoder cannot draw still gets
words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from screenxai.explain.counterfactuals import ALPHAS, make_counterfactuals
from screenxai.explain.contrast import with_contrast_directions
from screenxai.explain.directions import DirectionConfig, Directions, classifier_guide, learn_directions
from screenxai.explain.expression import MIN_EXPRESSION, expressed, treatment_shifts
from screenxai.explain.naming import feature_associations, name_attributes, readout_names
from screenxai.explain.ranking import axis_cosines, build_cache, nearest_better_attribute, select_attributes
from screenxai.explain.scores import contrast_scores_from_latents, scores_from_latents, unique_attributes
from screenxai.models.autoencoder import DiffusionAutoencoder
from screenxai.models.latent_checks import encode
from screenxai.models.progress import StepCallback
from screenxai.stats import DISTINCT_COSINE

CANDIDATE_SPARE = 2  # candidates ranked beyond the kept attributes, to replace ones whose name repeats


@dataclass(frozen=True)
class ExplainSettings:
    """How a screen's explanations are fitted.

    ``n_directions`` directions are learned (at least two per treatment in a
    screen of several); ``n_cells`` negative-control cells are ranked on;
    each treatment keeps ``n_attributes``; ``shown_cells`` of the ranked
    cells are rendered to name the attributes. ``guided``: classifier-guided
    directions, in a screen of several treatments each direction rewarded
    for moving cells towards one treatment (``DirectionConfig.target_classes``).
    ``max_cosine``: kept attributes of a treatment have mean axes with
    |cosine| below it. ``contrast``: each treatment's contrast direction
    (its cells' linear discriminant against the negative control) joins the
    learned ones as a candidate. ``directions`` overrides further
    ``DirectionConfig`` defaults (e.g. ``epochs``; a preset's ``directions``).
    """

    n_directions: int = 10
    n_cells: int = 32
    n_attributes: int = 3
    shown_cells: int = 16
    guided: bool = True
    contrast: bool = True
    max_cosine: float = DISTINCT_COSINE
    min_expression: float = MIN_EXPRESSION
    alpha: float = 2.0
    steps_inv: int = 10
    steps_dec: int = 10
    directions: dict = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class Explanations:
    """Learned directions and the attribute table: one row per treatment and kept attribute, best first.

    ``contrast_treatments``: the treatment of each contrast direction, in
    order; ``contrast_names``: for each, the ``name`` and ``name_spearman``
    of its readout over the real cells (``readout_names``; None without the
    cells' features).
    """

    directions: Directions
    attributes: pd.DataFrame
    config: DirectionConfig
    guided: bool
    unet_evaluations: dict[str, int]
    contrast_treatments: list[str]
    contrast_names: list[dict]


def direction_config(settings: ExplainSettings, n_classes: int, guided: bool) -> DirectionConfig:
    """The directions to learn: two per treatment at least, each targeting one treatment when guided."""
    treatments = n_classes - 1
    if treatments <= 1:
        return DirectionConfig(n_directions=settings.n_directions, seed=settings.seed, **settings.directions)
    n_directions = max(settings.n_directions, 2 * treatments)
    targets = tuple(1 + k % treatments for k in range(n_directions)) if guided else ()
    return DirectionConfig(n_directions=n_directions, target_classes=targets, seed=settings.seed,
                           **settings.directions)


def fit_explanations(autoencoder: DiffusionAutoencoder, crops: np.ndarray, labels: np.ndarray,
                     training_rows: np.ndarray, class_names: Sequence[str], channel_names: Sequence[str],
                     nuclear_channel: int, settings: ExplainSettings = ExplainSettings(),
                     features: pd.DataFrame | None = None,
                     on_step: StepCallback | None = None) -> Explanations:
    """Learn directions on the training cells and keep, for every treatment, distinct named attributes.

    ``labels`` holds each crop's class index (0: the negative control, -1:
    none); ``training_rows`` marks the classifier's training wells, the only
    cells learned and ranked on. ``features``: the morphology features
    measured on each crop's cell (a row per crop), which ground the names in
    the training cells. ``on_step(step, done, total)`` reports progress.
    """
    step = on_step or (lambda *_: None)
    guided = settings.guided and autoencoder.aux_decoder is not None
    config = direction_config(settings, len(class_names), guided)
    guide = classifier_guide(autoencoder) if guided else None
    z = encode(autoencoder, crops[training_rows])
    directions = learn_directions(z, config, guide=guide, on_epoch=lambda done, total: step("directions", done, total))
    contrasted: list[int] = []
    if settings.contrast:
        directions, contrasted = with_contrast_directions(directions, z, labels[training_rows],
                                                          list(range(1, len(class_names))))
    source = np.flatnonzero((labels == 0) & training_rows)
    if len(source) == 0:
        raise ValueError(f"no training cell of the negative class {class_names[0]!r} to rank attributes on")
    pick = np.random.default_rng(settings.seed).permutation(source)[:settings.n_cells]
    before = autoencoder.unet_evaluations
    cache = build_cache(autoencoder, directions, crops[pick], settings.alpha, settings.steps_inv, settings.steps_dec,
                        on_direction=lambda k, n: step("ranking", k, n))
    ranked = autoencoder.unet_evaluations
    candidates = _treatment_candidates(cache, directions, class_names, settings, z, labels[training_rows], contrasted)
    if candidates.empty:  # no treatment has a change its cells show that moves cells towards it
        attributes = no_attributes()
    else:
        shown = pick[:min(len(pick), settings.shown_cells)]
        real = None
        if features is not None:
            real = (z, features[training_rows], _cells_explained(candidates, labels[training_rows], class_names))
        named = _name_candidates(autoencoder, directions, candidates, crops[shown], channel_names, nuclear_channel,
                                 step, real)
        attributes = _keep_distinct(named, directions, settings.n_attributes)
    readouts = _name_readouts(directions, z, labels[training_rows], contrasted,
                              None if features is None else features[training_rows], channel_names)
    attributes.insert(attributes.columns.get_loc("name"), "source",
                      attributes["direction"].map(_direction_sources(directions, contrasted, class_names)))
    evaluations = {"ranking": ranked - before, "naming": autoencoder.unet_evaluations - ranked,
                   "reference": int(attributes["reference_unet_evaluations"].sum()),
                   "treatments": len(class_names) - 1}
    return Explanations(directions, attributes, config, guided, evaluations,
                        [str(class_names[c]) for c in contrasted], readouts)


def no_attributes() -> pd.DataFrame:
    """The attribute table of a screen where no treatment keeps an attribute: its columns, no row."""
    columns = {"treatment": "object", "rank": "int64", "attribute": "object", "direction": "int64", "sign": "int64",
               "target_class": "int64", "name": "object", "changes": "object", "mean_delta_p": "float64",
               "flip_rate": "float64", "name_spearman": "float64", "reference_unet_evaluations": "int64",
               "alpha": "float64", "nearest_rank": "int64", "nearest_cosine": "float64"}
    return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in columns.items()})


def _name_readouts(directions: Directions, z: torch.Tensor, labels: np.ndarray, contrasted: Sequence[int],
                   features: pd.DataFrame | None, channel_names: Sequence[str]) -> list[dict]:
    """Each contrast readout's name over the real cells of the negative control and of its treatment."""
    if features is None or not contrasted:
        return [{"name": None, "name_spearman": None} for _ in contrasted]
    scores = contrast_scores_from_latents(directions, z)
    among = {column: np.isin(labels, [0, target]) for column, target in zip(scores.columns, contrasted, strict=True)}
    names = readout_names(feature_associations(scores, features, among), channel_names)
    return [{"name": row.name, "name_spearman": None if np.isnan(row.name_spearman) else float(row.name_spearman)}
            for row in names.itertuples(index=False)]


def _direction_sources(directions: Directions, contrasted: Sequence[int],
                       class_names: Sequence[str]) -> dict[int, str]:
    """What each direction is: ``learned``, or ``contrast <treatment>`` for a treatment's contrast direction."""
    sources = {k: "learned" for k in range(directions.n_learned)}
    sources.update({directions.n_learned + i: f"contrast {class_names[c]}" for i, c in enumerate(contrasted)})
    return sources


def _treatment_candidates(cache, directions: Directions, class_names: Sequence[str], settings: ExplainSettings,
                          z: torch.Tensor, labels: np.ndarray, contrasted: Sequence[int] = ()) -> pd.DataFrame:
    """Each treatment's ranked candidates from the shared cache: changes its cells show, distinct axes, a few spare.

    ``z`` and ``labels`` are the training cells' latents and class indices;
    ``contrasted`` the classes with a contrast direction, in the order they
    follow the learned ones. A treatment's own contrast direction comes first
    when its edit moves cells towards the treatment with at least half the
    best candidate's gain (``FIRST_GAIN_SHARE``): it is the
    treatment's average change, which the learned directions only approach,
    and its score is the linear statistic that detects that change best. A
    treatment without candidates has no row; the table is empty when none has.
    """
    cosines = axis_cosines(directions)
    n_candidates = min(settings.n_attributes + CANDIDATE_SPARE, directions.n_directions)
    own = {target: directions.n_learned + i for i, target in enumerate(contrasted)}
    tables = []
    for target, treatment in enumerate(class_names[1:], start=1):
        eligible = expressed(treatment_shifts(directions, z, labels, target), settings.min_expression)
        try:
            table = select_attributes(cache, target, n_candidates, 0.0, settings.steps_inv, settings.steps_dec,
                                      cosines, settings.max_cosine, eligible=eligible, first=own.get(target))
        except ValueError:  # no change its cells show moves cells towards it: it keeps no attribute
            continue
        tables.append(table.assign(treatment=str(treatment), alpha=settings.alpha))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _cells_explained(candidates: pd.DataFrame, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per candidate attribute id, the cells of the negative control and of the treatments it is a candidate of."""
    index = {str(name): k for k, name in enumerate(class_names)}
    return {attribute: np.isin(labels, [0, *[index[t] for t in rows["treatment"]]])
            for attribute, rows in candidates.groupby("attribute", sort=False)}


def _name_candidates(autoencoder: DiffusionAutoencoder, directions: Directions, candidates: pd.DataFrame,
                     crops: np.ndarray, channel_names: Sequence[str], nuclear_channel: int,
                     step: StepCallback, real: tuple | None = None) -> pd.DataFrame:
    """Render every candidate attribute id once on the shown cells and name it; the names joined to ``candidates``.

    A name compares the cells at alpha 0 and at the exemplar strips' largest
    alpha (``attribute_effects``), so only those two are rendered. ``real``:
    the training cells' latents, measured features and, per attribute id, the
    cells it explains (``_cells_explained``), whose Spearman with each
    attribute's score picks the name among the rendered changes.
    """
    unique = unique_attributes(candidates).assign(target_class=1)
    table = pd.DataFrame({"plate": "", "well": "", "field": 0, "label": np.arange(len(crops))})
    rendered = make_counterfactuals(autoencoder, directions, unique, crops, table, channel_names,
                                    alphas=(0.0, max(ALPHAS)))
    associations = None
    if real is not None:
        z, features, among = real
        associations = feature_associations(scores_from_latents(directions, unique, z), features, among)
    names = name_attributes(unique, rendered, channel_names, nuclear_channel=nuclear_channel,
                            associations=associations)
    step("naming", 1, 1)
    return candidates.merge(names.drop(columns=["direction", "sign", "target_class"]), on="attribute", how="left")


def _keep_distinct(candidates: pd.DataFrame, directions: Directions, n_attributes: int) -> pd.DataFrame:
    """Per treatment, the best ``n_attributes`` candidates whose names differ, ranked 1..n again."""
    kept = []
    for treatment, rows in candidates.groupby("treatment", sort=False):
        rows = rows.sort_values("rank").drop_duplicates("name").head(n_attributes).reset_index(drop=True)
        rows["rank"] = np.arange(1, len(rows) + 1)
        rows[["nearest_rank", "nearest_cosine"]] = nearest_better_attribute(directions, rows)
        kept.append(rows)
    table = pd.concat(kept, ignore_index=True)
    first = ["treatment", "rank", "attribute", "direction", "sign", "target_class", "name", "changes"]
    return table[[*first, *[c for c in table.columns if c not in first]]]


def as_records(explanations: Explanations) -> dict:
    """The summary of the explain stage for the bundle's training summary (JSON-ready)."""
    columns = ["treatment", "rank", "attribute", "direction", "source", "sign", "mean_delta_p", "flip_rate",
               "nearest_rank", "nearest_cosine", "name", "name_spearman", "changes"]
    return {"attributes": explanations.attributes[columns].to_dict(orient="records"),
            "guided": explanations.guided, "n_directions": explanations.directions.n_directions,
            "n_contrast_directions": explanations.directions.n_linear,
            "contrast_treatments": explanations.contrast_treatments,
            "contrast_names": explanations.contrast_names,
            "unet_evaluations": explanations.unet_evaluations}

