"""screenxai: explain what treatments do to cells in high-content screens."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("screenxai")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

_NOTEBOOK_API = {"Screen", "Results", "open_results"}


def __getattr__(name: str):
    """``screenxai.Screen`` and ``screenxai.open_results``, imported on first use (they pull in Dask and torch)."""
    if name in _NOTEBOOK_API:
        from screenxai import screen

        return getattr(screen, name)
    raise AttributeError(f"module 'screenxai' has no attribute {name!r}")
