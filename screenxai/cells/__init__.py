"""Cells of a field: nucleus segmentation, single-cell crops, morphology features, normalisation."""

from screenxai.cells.crops import crop_cells
from screenxai.cells.features import measure_features, perinuclear_rings
from screenxai.cells.field import CellBatch, CellConfig, field_qc, nuclear_channel_index, process_field
from screenxai.cells.normalise import NormalisationStats, denormalise, fit_normalisation, normalise, stats_from_images
from screenxai.cells.segment import MatchResult, SegmentationParams, match_objects, segment_nuclei

__all__ = [
    "CellBatch",
    "CellConfig",
    "MatchResult",
    "NormalisationStats",
    "SegmentationParams",
    "crop_cells",
    "denormalise",
    "field_qc",
    "fit_normalisation",
    "match_objects",
    "measure_features",
    "normalise",
    "nuclear_channel_index",
    "perinuclear_rings",
    "process_field",
    "segment_nuclei",
    "stats_from_images",
]
