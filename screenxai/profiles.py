"""Per-well profiles in the conventions of image-based profiling tools (pycytominer, cytominer).

A run's well table renamed so that such tools find their columns without
being told: ``Metadata_``-prefixed plate, well, layout, count and QC
columns, and every per-well feature under the one compartment prefix
``Cells_`` (``Cells_Morphology_*`` medians, ``Cells_Classifier_p_*`` mean
probabilities, ``Cells_Attribute_*`` mean attribute scores, ...), which is
what pycytominer's ``features="infer"`` looks for.
"""

from __future__ import annotations

import re

import pandas as pd

from screenxai.errors import ScreenxaiError

COMPARTMENT = "Cells"
KEYS = {"plate": "Metadata_Plate", "well": "Metadata_Well"}
QC_MEASURES = ("saturated_fraction", "focus")  # field-level QC measures summarised per well
# Well-table patterns and the feature name each becomes, under the compartment prefix, in this order.
FEATURE_PATTERNS = (
    (re.compile(r"median_(?P<name>.+)"), "Morphology_{name}"),
    (re.compile(r"mean_p_(?P<name>.+)"), "Classifier_p_{name}"),
    (re.compile(r"mean_attribute_(?P<name>.+)"), "Attribute_{name}"),
    (re.compile(r"sd_attribute_(?P<name>.+)"), "Attribute_{name}_sd"),
    (re.compile(r"mean_contrast_(?P<name>.+)"), "Contrast_{name}"),
    (re.compile(r"sd_contrast_(?P<name>.+)"), "Contrast_{name}_sd"),
    (re.compile(r"mean_formula_value"), "Formula_value"),
    (re.compile(r"fraction_formula_positive"), "Formula_fraction_positive"),
)
# Per-well z-scores against the negative controls: the normalisation profiling tools do themselves.
LEFT_OUT = re.compile(r"robust_z_(attribute|contrast)_.+")


class ProfileError(ScreenxaiError):
    """A well table cannot be turned into profiles."""


def profile_name(column: str) -> str | None:
    """The profile column a well-table column becomes; None for one left out (a robust z-score).

    Counts (``n_*``), QC flags (``qc_*``) and measures, and every column
    that is not a known per-well feature (the plate's layout) become
    ``Metadata_{column}``.
    """
    if column in KEYS:
        return KEYS[column]
    if LEFT_OUT.fullmatch(column):
        return None
    for pattern, name in FEATURE_PATTERNS:
        match = pattern.fullmatch(column)
        if match:
            return f"{COMPARTMENT}_" + name.format(**match.groupdict())
    return f"Metadata_{column}"


def well_profiles(wells: pd.DataFrame) -> pd.DataFrame:
    """One row per plate and well of ``wells`` (a run's ``wells.parquet``), metadata columns first, then features.

    Features are float64; metadata keep their dtypes (plate and well as
    strings). Raises :class:`ProfileError` when a key column is missing, a
    plate and well repeat, or two columns would get one name.
    """
    missing = [c for c in KEYS if c not in wells.columns]
    if missing:
        raise ProfileError(f"well table lacks the column(s) {missing}: profiles need one row per plate and well")
    duplicated = wells.duplicated(list(KEYS))
    if duplicated.any():
        first = wells.loc[duplicated, list(KEYS)].iloc[0]
        raise ProfileError(f"well table has more than one row for plate {first['plate']!r}, well {first['well']!r}")
    names = {c: profile_name(str(c)) for c in wells.columns}
    kept = {c: n for c, n in names.items() if n is not None}
    clashes = pd.Series(list(kept)).groupby(pd.Series(list(kept.values()))).apply(list)
    clashes = clashes[clashes.map(len) > 1]
    if len(clashes):
        raise ProfileError(f"well table columns {clashes.iloc[0]} would all become profile column {clashes.index[0]!r}")
    profiles = wells[list(kept)].rename(columns=kept)
    profiles[list(KEYS.values())] = profiles[list(KEYS.values())].astype("string")
    metadata = [n for n in kept.values() if n.startswith("Metadata_")]
    features = [n for n in kept.values() if not n.startswith("Metadata_")]
    profiles = profiles.astype({f: "float64" for f in features})
    return profiles[metadata + features].sort_values(list(KEYS.values())).reset_index(drop=True)


def feature_names(profiles: pd.DataFrame) -> list[str]:
    """The profile's feature columns (those under the compartment prefix), in order."""
    return [c for c in profiles.columns if c.startswith(f"{COMPARTMENT}_")]
