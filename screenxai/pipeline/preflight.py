"""Checks of a command's options against its opened plates, made before a cluster starts or a task is submitted.

A mistyped preset, channel or class would otherwise surface inside a Dask
task, after the cluster started and the output folder was claimed; here it
is one ``PreflightError`` naming the option and what the input offers.
"""

from __future__ import annotations

from collections.abc import Sequence

from screenxai.cells.field import nuclear_channel_index
from screenxai.errors import PlateError, ScreenxaiError
from screenxai.models.presets import PRESETS
from screenxai.plate.reader import Plate


class PreflightError(ScreenxaiError):
    """An option names a preset, channel or class that the models or plates do not have."""


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
