"""screenxai: explain what treatments do to cells in high-content screens."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("screenxai")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
