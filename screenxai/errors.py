"""Errors that screenxai raises for bad input.

Every message names the file, well, field or column at fault and what is
wrong, so a user can fix the input without reading a traceback.
"""


class ScreenxaiError(Exception):
    """Base class of all errors about a user's input or outputs."""


class PlateError(ScreenxaiError):
    """A path is not a readable OME-Zarr HCS plate, or a well or field is missing."""


class LayoutError(ScreenxaiError):
    """A plate layout is malformed or disagrees with its plate."""


class ConversionError(ScreenxaiError):
    """TIFF files cannot be turned into a plate as asked."""


class StatisticsError(ScreenxaiError, ValueError):
    """A well table lacks the columns or wells a screen statistic needs."""


class BundleError(ScreenxaiError):
    """A model bundle is missing, damaged, too new, or does not fit the plate."""
