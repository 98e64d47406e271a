"""Checks of a command's options against its opened plates, made before a cluster starts or a task is submitted.

A mistyped preset, channel or class, or a layout missing a processed well,
would otherwise surface inside a Dask task, after the cluster started and
the output folder was claimed; here it is one ``PreflightError`` naming the
option or file and what the input offers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from screenxai.cells.field import nuclear_channel_index
from screenxai.errors import PlateError, ScreenxaiError
from screenxai.models.presets import PRESETS
from screenxai.plate.reader import Plate


class PreflightError(ScreenxaiError):
    """An option names a preset, channel or class that the models or plates do not have, or a layout lacks a well."""


def check_preset(name: str) -> str:
    """``name`` when it is a known model preset; ``PreflightError`` naming the presets otherwise."""
    if name not in PRESETS:
        raise PreflightError(f"--preset {name!r} is not a model preset; known presets: {', '.join(sorted(PRESETS))}")
    return name


def check_nuclear_channel(plates: Sequence[Plate], nuclear_channel: str | None) -> None:
    """Refuse a nuclear channel (named, or guessed from stain names) that a plate does not have."""
    for plate in plates:
        try:
            nuclear_channel_index(plate.channel_names, nuclear_channel)
        except PlateError as err:
            raise PreflightError(f"plate {plate.name} ({plate.url}): {err} (--nuclear-channel)") from None


def check_classes(plates: Sequence[Plate], settings) -> None:
    """Refuse ``--class-column``/``--classes`` that a plate's layout lacks, naming the classes it has."""
    from screenxai.pipeline.train_job import job_conditions

    job_conditions(plates, settings)


def bundle_preset(bundle: Path) -> str | None:
    """The preset a bundle folder was trained with (or its interrupted training in ``BUNDLE.work`` uses)."""
    config = bundle / "config.json"
    settings = bundle.with_name(bundle.name + ".work") / "settings.json"
    try:
        if config.exists():
            return json.loads(config.read_text())["provenance"]["preset"]
        if settings.exists():
            return json.loads(settings.read_text())["cells"]["preset"]
    except (ValueError, KeyError, TypeError) as err:
        raise PreflightError(f"cannot read the preset of {bundle}: {err!r}; pass --overwrite to train it anew") \
            from None
    return None


def check_bundle_preset(bundle: Path, preset: str, out: Path) -> None:
    """Refuse to train or reuse ``out``'s bundle with ``preset`` when it was trained with another one."""
    found = bundle_preset(bundle)
    if found is not None and found != preset:
        raise PreflightError(
            f"{bundle} was trained with the {found!r} preset, not {preset!r}; to keep it, run with --preset {found}; "
            f"to train a {preset!r} bundle, choose another output folder (-o) or pass --overwrite to replace the run "
            f"in {out}; or score with a bundle you have (--bundle)")


def renders_counterfactuals(bundle: Path | None, cells_only: bool = False) -> bool:
    """Whether a run renders exemplar cells: it trains a bundle (with attributes) or scores with one that has them."""
    from screenxai.pipeline.train_job import EXPLAIN_FOLDER

    return not cells_only and (bundle is None or (bundle / EXPLAIN_FOLDER).is_dir())


def check_layout_wells(plates: Sequence[Plate], wells: Sequence[str] | None, layout: Path | None) -> None:
    """Refuse a layout without a row for a well the run processes, naming the layout and the wells.

    Exemplar cells are chosen by their wells' conditions in the layout; a
    selected well without a row has none, and a run whose selected wells
    all lack one would find no exemplar to render only after every field
    was written. ``layout`` is the ``--layout`` file (``None``: each plate's own).
    """
    for plate in plates:
        if plate.layout is None:
            continue
        listed = set(plate.layout["well"])
        processed = dict.fromkeys(key.well for key in plate.field_keys(list(wells) if wells else None))
        missing = [well for well in processed if well not in listed]
        if missing:
            source = f"layout file {layout}" if layout is not None else f"the layout stored in {plate.url}"
            remedy = "leave them out of --wells" if wells else "select the wells it lists with --wells"
            raise PreflightError(f"{source} has no row for well(s) {', '.join(missing)} of plate {plate.name}, "
                                 f"so their cells have no condition to choose exemplars by; add the well(s) to the "
                                 f"layout or {remedy}")
