"""Turn per-well, per-channel (and per-field) TIFF files into an OME-Zarr plate.

File names are described by a pattern such as
``Channel{channel}-{index}-{row}-{column}.tif``: ``{row}``, ``{column}`` and
``{channel}`` are required, ``{field}`` is optional, and any other
placeholder (``{index}``) matches text that is ignored. Every problem is
reported before anything is written, and the plate is published atomically,
so a failed conversion leaves nothing that looks like a finished plate.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from screenxai.errors import ConversionError, ScreenxaiError
from screenxai.plate.layout import read_layout, validate_layout
from screenxai.plate.wells import well_id, well_sort_key
from screenxai.plate.writer import FieldImage, PlateWriter

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KNOWN = {
    "row": r"[A-Za-z]{1,2}",
    "column": r"\d{1,3}",
    "field": r"\d{1,4}",
    "channel": r"[^/\\]+?",
}
_REQUIRED = ("row", "column", "channel")
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class TiffFile:
    """One TIFF file and where it belongs on the plate."""

    path: Path
    well: str
    field: int
    channel: str


def pattern_regex(pattern: str) -> re.Pattern:
    """Compile a file-name pattern with ``{placeholders}`` into a regular expression."""
    names = _PLACEHOLDER.findall(pattern)
    missing = [n for n in _REQUIRED if n not in names]
    if missing:
        raise ConversionError(f"pattern {pattern!r} lacks placeholder(s) {['{' + n + '}' for n in missing]}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConversionError(f"pattern {pattern!r} uses placeholder(s) {repeated} more than once")
    parts, last = [], 0
    for match in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[last:match.start()]))
        name = match.group(1)
        parts.append(f"(?P<{name}>{_KNOWN.get(name, r'.+?')})")
        last = match.end()
    parts.append(re.escape(pattern[last:]))
    return re.compile("^" + "".join(parts) + "$")


def scan_tiffs(tiff_dir: Path, pattern: str) -> list[TiffFile]:
    """Match every TIFF in ``tiff_dir`` against ``pattern``; any that misses is an error."""
    if not tiff_dir.is_dir():
        raise ConversionError(f"{tiff_dir}: not a folder of TIFF files")
    regex = pattern_regex(pattern)
    found, unmatched = [], []
    for path in sorted(tiff_dir.iterdir()):
        if path.suffix.lower() not in TIFF_SUFFIXES:
            continue
        match = regex.match(path.name)
        if match is None:
            unmatched.append(path.name)
            continue
        field = int(match.group("field")) if "field" in match.groupdict() else 0
        found.append(TiffFile(path, well_id(match.group("row"), match.group("column")), field, match.group("channel")))
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
        raise ConversionError(f"{tiff_dir}: {len(unmatched)} TIFF file(s) do not match pattern {pattern!r}: {shown}")
    if not found:
        raise ConversionError(f"{tiff_dir}: no TIFF files (*.tif, *.tiff) found")
    return found


def _channel_order(channels: set[str]) -> list[str]:
    return sorted(channels, key=lambda c: (0, int(c), "") if c.isdigit() else (1, 0, c))


def _group_fields(files: list[TiffFile]) -> tuple[dict[tuple[str, int], dict[str, Path]], list[str]]:
    """Group files by (well, field) and check every field has every channel exactly once."""
    fields: dict[tuple[str, int], dict[str, Path]] = defaultdict(dict)
    for item in files:
        key = (item.well, item.field)
        if item.channel in fields[key]:
            raise ConversionError(
                f"well {item.well} field {item.field}: channel {item.channel!r} given twice "
                f"({fields[key][item.channel].name} and {item.path.name})"
            )
        fields[key][item.channel] = item.path
    channels = _channel_order({f.channel for f in files})
    for (well, field), by_channel in fields.items():
        missing = [c for c in channels if c not in by_channel]
        if missing:
            raise ConversionError(f"well {well} field {field}: no file for channel(s) {missing}")
    ordered = dict(sorted(fields.items(), key=lambda kv: (well_sort_key(kv[0][0]), kv[0][1])))
    return ordered, channels


def _read_tiff(path: Path) -> np.ndarray:
    try:
        data = tifffile.imread(path)
    except Exception as err:  # tifffile raises many types for damaged files
        raise ConversionError(f"{path}: not a readable TIFF ({err})") from err
    if data.ndim not in (2, 3):
        raise ConversionError(f"{path}: expected a 2-D (y, x) or 3-D (z, y, x) image, got shape {data.shape}")
    return data if data.ndim == 3 else data[None]


def _stack_field(by_channel: Mapping[str, Path], channels: list[str], reference: dict) -> np.ndarray:
    """Read a field's channels into (c, z, y, x), checking shape and dtype against the first file."""
    planes = []
    for channel in channels:
        path = by_channel[channel]
        data = _read_tiff(path)
        if not reference:
            reference.update(shape=data.shape, dtype=data.dtype, path=path)
        elif data.shape != reference["shape"] or data.dtype != reference["dtype"]:
            raise ConversionError(
                f"{path}: shape {data.shape} dtype {data.dtype} disagrees with {reference['path'].name} "
                f"(shape {reference['shape']} dtype {reference['dtype']})"
            )
        planes.append(data)
    return np.stack(planes)


def parse_channel_names(text: str | None, channels: list[str]) -> list[str]:
    """Channel names from ``"1=GFP,2=DNA"``; tokens without a name keep their own."""
    mapping: dict[str, str] = {}
    for item in filter(None, (text or "").split(",")):
        token, sep, name = item.partition("=")
        if not sep or not name.strip():
            raise ConversionError(f"channel names {text!r}: {item!r} is not of the form TOKEN=NAME")
        mapping[token.strip()] = name.strip()
    unknown = sorted(set(mapping) - set(channels))
    if unknown:
        raise ConversionError(f"channel names {text!r}: channel(s) {unknown} not found in the files (found {channels})")
    names = [mapping.get(c, c) for c in channels]
    if len(set(names)) != len(names):
        raise ConversionError(f"channel names {names} are not unique")
    return names


def convert_tiffs(
    tiff_dir: str | Path,
    out: str | Path,
    pattern: str,
    layout: pd.DataFrame | str | Path | None = None,
    channel_names: str | None = None,
    name: str | None = None,
    pixel_size_um: float | None = None,
    ngff_version: str = "0.5",
    overwrite: bool = False,
) -> Path:
    """Convert a folder of TIFFs into an OME-Zarr HCS plate at ``out``.

    ``layout`` (DataFrame or CSV path) is validated against the wells found
    and stored in the plate. ``channel_names`` maps the ``{channel}`` tokens
    to names, e.g. ``"1=GFP,2=DNA"``. Returns the plate path.
    """
    tiff_dir, out = Path(tiff_dir), Path(out)
    fields, channels = _group_fields(scan_tiffs(tiff_dir, pattern))
    names = parse_channel_names(channel_names, channels)
    wells = sorted({well for well, _ in fields}, key=well_sort_key)
    table = None
    if layout is not None:
        source = str(layout) if isinstance(layout, (str, Path)) else "layout"
        table = read_layout(layout) if isinstance(layout, (str, Path)) else layout
        table = validate_layout(table, source=source, plate_wells=wells)
    reference: dict = {}
    try:
        with PlateWriter(out, name=name or out.stem, channel_names=names, ngff_version=ngff_version,
                         pixel_size_um=pixel_size_um, overwrite=overwrite) as writer:
            for (well, field), by_channel in fields.items():
                writer.add_field(FieldImage(well, field, _stack_field(by_channel, channels, reference)))
            if table is not None:
                writer.set_layout(table)
    except ScreenxaiError:
        raise
    except OSError as err:
        raise ConversionError(f"writing {out} failed: {err}") from err
    return out
