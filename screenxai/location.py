"""Where a plate is: a local path, or a URL that zarr reads through fsspec (``s3://``, ``gs://``, ``https://``)."""

from __future__ import annotations

from pathlib import Path

import click


class PlateLocation(click.ParamType):
    """A command-line plate: URLs stay strings (a ``Path`` would fold ``s3://b`` into ``s3:/b``), paths become Paths."""

    name = "PLATE"

    def convert(self, value, param, ctx) -> str | Path:
        if isinstance(value, Path):
            return value
        return str(value) if "://" in str(value) else Path(value)
