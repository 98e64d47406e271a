"""OME-Zarr HCS plates: reading, writing, layouts, TIFF conversion and simulation."""

from screenxai.plate.layout import read_layout, validate_layout, wells_with
from screenxai.plate.reader import FieldKey, Plate, Well, open_plate
from screenxai.plate.wells import normalise_well, parse_well, well_id
from screenxai.plate.writer import FieldImage, PlateWriter, write_plate

__all__ = [
    "FieldImage",
    "FieldKey",
    "Plate",
    "PlateWriter",
    "Well",
    "normalise_well",
    "open_plate",
    "parse_well",
    "read_layout",
    "validate_layout",
    "well_id",
    "wells_with",
    "write_plate",
]
