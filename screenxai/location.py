"""Where a plate or a published run is: a local path, or a URL read and written through fsspec (``s3://``, ...)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import click


class PlateLocation(click.ParamType):
    """A command-line plate: URLs stay strings (a ``Path`` would fold ``s3://b`` into ``s3:/b``), paths become Paths."""

    name = "PLATE"

    def convert(self, value, param, ctx) -> str | Path:
        if isinstance(value, Path):
            return value
        return str(value) if "://" in str(value) else Path(value)


def credentials_in_url(url: str) -> bool:
    """Whether ``url`` carries a user name or password (``s3://key:secret@bucket/...``)."""
    return "://" in url and "@" in urlsplit(url).netloc


def url_without_credentials(url: str) -> str:
    """``url`` cut to its scheme and host, safe to print whatever its netloc held."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/..."
