"""Well names: ``B03`` in tables, ``B/03`` in NGFF paths.

Screens name wells as a row letter and a column number. screenxai's canonical
form is the row letters followed by a two-digit column (``A01``, ``H12``,
``AF48`` on 1536-well plates). Plates written elsewhere may use ``"3"`` as a
column name; ``well_id`` normalises every spelling to the canonical one.
"""

from __future__ import annotations

import re

_WELL_RE = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")


def well_id(row: str, column: str | int) -> str:
    """Canonical well name from a row name and a column name or number."""
    return f"{str(row).upper()}{int(column):02d}"


def parse_well(name: str) -> tuple[str, int]:
    """Split a well name such as ``"B03"``, ``"b3"`` or ``"B 03"`` into (row, column number).

    Raises ``ValueError`` naming the offending text when it is not a well name.
    """
    match = _WELL_RE.match(str(name))
    if match is None or int(match.group(2)) == 0:
        raise ValueError(f"{name!r} is not a well name like 'B03'")
    return match.group(1).upper(), int(match.group(2))


def normalise_well(name: str) -> str:
    """Canonical form of any accepted well spelling (``"b3"`` -> ``"B03"``)."""
    row, column = parse_well(name)
    return well_id(row, column)


def row_index(row: str) -> int:
    """Zero-based index of a row name: A -> 0, Z -> 25, AA -> 26."""
    row = row.upper()
    if len(row) == 1:
        return ord(row) - ord("A")
    return 26 * (ord(row[0]) - ord("A") + 1) + ord(row[1]) - ord("A")


def well_sort_key(well: str) -> tuple[int, int]:
    """Sort key ordering wells row by row, then by column number."""
    row, column = parse_well(well)
    return row_index(row), column
