"""Measure DiffEx explanations (screenxai.explain) on the simulated screen and record the figures as JSON.

Usage: python -m benchmarks.bench_explain --bundle BUNDLE [--out FILE]

BUNDLE is one that ``benchmarks/bench_models.py`` trained (it saves
``WORKDIR/NAME-bundle``): the bundle's models were trained on the cells of
the simulated plate with seed 0, and explanations are measured on the cells
of the plate with seed 1, both made (and cached) in ``--workdir`` exactly as
bench_models makes them, with the simulator's truth joined. Everything runs
on one CPU thread. Directions are classifier-guided (``classifier_guide``)
unless ``--unguided``. Negative controls: random directions, the UNet with
``z_sem`` zeroed, and a classifier trained on well-shuffled labels.

``probe_ceiling`` records what a supervised linear probe of ``z_sem`` reaches
per factor (cross-validated ridge; Spearman and partial Spearman given the
classifier's probability): what the latent carries, against which the
unsupervised directions' tracking is read. ``classifier_reliance`` records,
per factor, the partial Spearman of the classifier's probability with it
given the other factor: whether the classifier reads it at all.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the explanation-quality measures

from benchmarks.bench_models import simulated_cells  # noqa: E402
from explanation_quality import (classifier_reliance, factor_tracking, flip_rates, localisation,  # noqa: E402
                                 partial_spearman)
from screenxai.explain import (DirectionConfig, attribute_scores, classifier_guide, direction_agreement,  # noqa: E402
                               learn_directions, make_counterfactuals, name_attributes, random_directions,
                               rank_attributes)
from screenxai.models import load_bundle, predict_proba  # noqa: E402
from screenxai.models.classifier import ClassifierConfig  # noqa: E402
from screenxai.models.latent_checks import encode  # noqa: E402
from screenxai.models.metrics import ridge_cv_predictions  # noqa: E402
from screenxai.models.presets import get_preset  # noqa: E402
from screenxai.models.train_classifier import train_classifier  # noqa: E402
from screenxai.stats import well_statistics  # noqa: E402

FACTORS = ["translocation", "nuclear_area"]


def zeroed_latent(autoencoder):
    """A copy of the autoencoder whose UNet (and auxiliary decoder input) sees ``z_sem = 0``."""
    model = copy.deepcopy(autoencoder)
    denoise = model.denoise

    def zero_denoise(self, x_t, t, z, hint=None):
        return denoise(x_t, t, torch.zeros_like(z), None)

    model.denoise = types.MethodType(zero_denoise, model)
    return model


def shuffled_controls(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The table with control-well labels permuted by well, half of each class's wells going to the other."""
    table = table.copy()
    rng = np.random.default_rng(seed)
    relabel = {}
    for name, other in (("negative", "positive"), ("positive", "negative")):
        wells = rng.permutation(table.loc[table["control"] == name, "well"].unique())
        relabel.update({w: (other if i % 2 else name) for i, w in enumerate(wells)})
    controls = table["control"].isin(["negative", "positive"])
    table.loc[controls, "control"] = table.loc[controls, "well"].map(relabel)
    return table


def other_classifier(crops, table, seed):
    preset = get_preset("tiny").with_seed(seed)
    config = ClassifierConfig(in_channels=crops.shape[1], n_classes=2, **preset.classifier)
    return train_classifier(crops, table, config, preset.classifier_training, "control", ("negative", "positive"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--workdir", default="/tmp/screenxai-bench-models")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "explain_cpu.json"))
    parser.add_argument("--cells", type=int, default=32)
    parser.add_argument("--directions", type=int, default=10)
    parser.add_argument("--attributes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--unguided", action="store_true", help="plain LatentCLR directions, no classifier guide")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    bundle = load_bundle(args.bundle)
    ae = bundle["autoencoder"].eval()
    workdir = Path(args.workdir)
    train_crops, train_table = simulated_cells(workdir, 0, bundle.crop_size)
    test_crops, test_table = simulated_cells(workdir, 1, bundle.crop_size)
    channels = list(bundle.channel_names)
    target = list(bundle.class_names).index("positive")
    result: dict = {"bundle": args.bundle, "preset": bundle.config.get("provenance", {}).get("preset"),
                    "hardware": f"{platform.machine()}, {torch.get_num_threads()} torch thread, torch "
                                f"{torch.__version__}, 2 cores shared with other work, no GPU",
                    "settings": vars(args)}
    timings = {}

    t = time.time()
    sample = np.random.default_rng(0).choice(len(train_crops), 2000, replace=False)
    z_train = encode(ae, train_crops[sample])
    guide = None if args.unguided else classifier_guide(ae)
    directions = learn_directions(z_train, DirectionConfig(n_directions=args.directions, seed=0), guide=guide)
    directions_seed1 = learn_directions(z_train, DirectionConfig(n_directions=args.directions, seed=1), guide=guide)
    timings["learn_directions_two_seeds"] = time.time() - t

    negative = np.flatnonzero(test_table["control"].eq("negative"))
    cells = np.random.default_rng(0).choice(negative, args.cells, replace=False)
    rank = dict(target_class=target, n_attributes=args.attributes, steps_inv=args.steps, steps_dec=args.steps,
                alpha=args.alpha)
    t = time.time()
    ranking = rank_attributes(ae, directions, test_crops[cells], **rank)
    timings["ranking"] = time.time() - t
    n, k = args.cells, args.directions
    result["ranking"] = {"attributes": ranking.attributes.to_dict(orient="records"),
                         "unet_evaluations": ranking.unet_evaluations,
                         "expected_N_Tinv_plus_N_2K_Tdec": n * args.steps + n * 2 * k * args.steps,
                         "reference_unet_evaluations": ranking.reference_unet_evaluations,
                         "ratio": ranking.evaluation_ratio}
    random = random_directions(z_train, k, seed=0)
    controls = {"random_directions": rank_attributes(ae, random, test_crops[cells], **rank, threshold=-1.0),
                "zeroed_z_sem": rank_attributes(zeroed_latent(ae), directions, test_crops[cells], **rank,
                                                threshold=-1.0)}
    result["ranking_controls"] = {name: r.attributes[["rank", "direction", "sign", "mean_delta_p", "flip_rate_all"]]
                                  .to_dict(orient="records") for name, r in controls.items()}
    ranking_seed1 = rank_attributes(ae, directions_seed1, test_crops[cells], **rank)

    t = time.time()
    cf = make_counterfactuals(ae, directions, ranking.attributes, test_crops[cells], test_table.iloc[cells],
                              channels, steps_inv=args.steps, steps_dec=args.steps)
    cf_seed1 = make_counterfactuals(ae, directions_seed1, ranking_seed1.attributes.iloc[:1], test_crops[cells],
                                    test_table.iloc[cells], channels, steps_inv=args.steps, steps_dec=args.steps)
    timings["counterfactuals"] = time.time() - t
    named = name_attributes(ranking.attributes, cf, channels)
    named_seed1 = name_attributes(ranking_seed1.attributes.iloc[:1], cf_seed1, channels)
    result["attributes"] = named.to_dict(orient="records")

    t = time.time()
    second = other_classifier(train_crops, train_table, seed=1).model
    shuffled = other_classifier(train_crops, shuffled_controls(train_table, seed=0), seed=0).model
    timings["train_second_and_shuffled_classifiers"] = time.time() - t
    cf_zeroed = make_counterfactuals(zeroed_latent(ae), directions, ranking.attributes, test_crops[cells],
                                     test_table.iloc[cells], channels, steps_inv=args.steps, steps_dec=args.steps)
    result["flips"] = {"classifier": flip_rates(cf), "second_classifier": flip_rates(cf, second),
                       "shuffled_label_classifier": flip_rates(cf, shuffled),
                       "zeroed_z_sem": flip_rates(cf_zeroed), "goal": {"classifier": 0.8, "second_classifier": 0.6}}
    result["localisation_inside_over_outside"] = {"value": localisation(cf), "goal": 3.0}

    t = time.time()
    scores = attribute_scores(ae, directions, ranking.attributes, test_crops)
    random_scores = attribute_scores(ae, random, controls["random_directions"].attributes, test_crops)
    timings["scores_all_test_cells"] = time.time() - t
    p = predict_proba(ae.classifier, test_crops)[:, target]
    tracking = factor_tracking(scores, test_table[FACTORS], p)
    result["factor_tracking"] = {"learned": tracking.to_dict(orient="records"),
                                 "random_directions": factor_tracking(random_scores, test_table[FACTORS], p)
                                 .to_dict(orient="records"),
                                 "goal": {"abs_spearman": 0.7, "partial_spearman": 0.5}}
    result["classifier_reliance"] = classifier_reliance(p, test_table[FACTORS])
    z_test = encode(ae, test_crops).numpy()
    result["probe_ceiling"] = {}
    for factor in FACTORS:
        truth = test_table[factor].to_numpy()
        probe = ridge_cv_predictions(z_test, truth)
        result["probe_ceiling"][factor] = {"spearman": float(spearmanr(probe, truth).statistic),
                                           "partial_spearman": partial_spearman(probe, truth, p)}
    cells_table = pd.concat([test_table.reset_index(drop=True), scores], axis=1)
    _, summary = well_statistics(cells_table, [*scores.columns, "reporter_ratio"], dose_column="dose")
    result["well_statistics"] = summary.to_dict(orient="records")
    top = ranking.attributes.iloc[0]
    top1 = ranking_seed1.attributes.iloc[0]
    scores_seed1 = attribute_scores(ae, directions_seed1, ranking_seed1.attributes.iloc[:1], test_crops)
    result["stability"] = {
        "top_direction_cosine": direction_agreement(directions, directions_seed1, int(top.direction),
                                                    int(top1.direction), int(top.sign), int(top1.sign)),
        "top_score_rank_agreement": float(spearmanr(scores["attribute_1"], scores_seed1["attribute_1"]).statistic),
        "top_name_seed0": named["name"].iloc[0], "top_name_seed1": named_seed1["name"].iloc[0],
        "names_agree": bool(named["name"].iloc[0] == named_seed1["name"].iloc[0])}
    timings["total"] = time.time() - started
    result["seconds"] = timings
    Path(args.out).write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps({k: result[k] for k in ("flips", "localisation_inside_over_outside", "stability")}, indent=2))


if __name__ == "__main__":
    main()
