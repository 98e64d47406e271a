"""Nucleus segmentation of a 2D image, and matched-object scoring of label images.

``segment_nuclei`` is a classical pipeline: Gaussian smoothing, a global
threshold that finds dim nuclei too, a marker-controlled watershed that
splits touching nuclei, and a per-nucleus edge. ``match_objects`` scores a
label image against a ground truth by one-to-one matching of objects at an
IoU threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from skimage import filters, measure, morphology, segmentation


@dataclass(frozen=True)
class SegmentationParams:
    """Parameters of ``segment_nuclei``; lengths in pixels, areas in pixels².

    The threshold and edge were tuned on simulated plates
    (``screenxai.plate.simulate``), the splitting of touching nuclei by eye on
    BBBC013 (the simulator's nuclei seldom touch); the defaults were then
    checked on a real annotated image (see the tests).

    Attributes
    ----------
    smoothing_sigma : float
        Sigma of the Gaussian applied first (suppresses noise and chromatin
        texture). Default 1.5.
    min_area : int
        Objects smaller than this are removed (debris, fragments). Default 30.
    max_hole_area : int
        Holes up to this size inside the foreground are filled. Default 200.
    marker_sigma : float
        Sigma of the smoothing of the distance transform and of the image
        before they make the watershed relief; larger merges more. Default 2.0.
    h : float
        Minimum height of a maximum of the watershed relief (distance to the
        background in pixels times relative intensity, see
        ``split_touching``) above the saddle to its neighbour for it to seed
        its own nucleus (the h-maxima criterion); larger keeps more
        elongated or lobed nuclei whole. Default 0.5.
    edge_fraction : float
        Each nucleus's final edge is where the smoothed image falls to this
        fraction of the nucleus's mean intensity above background (0.5: half
        its level, like a half-maximum edge). ``0`` keeps the detection mask.
        Default 0.5.
    """

    smoothing_sigma: float = 1.5
    min_area: int = 30
    max_hole_area: int = 200
    marker_sigma: float = 2.0
    h: float = 0.5
    edge_fraction: float = 0.5


def foreground_mask(smooth: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Boolean foreground by Li's threshold, small holes filled and small objects removed.

    Li's minimum-cross-entropy threshold sits lower than Otsu's on the
    skewed histograms of nuclear stains, so dim nuclei are found too; their
    edges are tightened afterwards (``refine_edges``).
    """
    if np.ptp(smooth) == 0:
        return np.zeros(smooth.shape, bool)
    mask = smooth > filters.threshold_li(smooth)
    holes = measure.label(~mask, connectivity=1)
    small = (holes > 0) & (remove_small(holes, params.max_hole_area) == 0)
    mask |= small & ~np.isin(holes, border_labels(holes))  # background cut off by the edge is no hole
    return remove_small(measure.label(mask), params.min_area) > 0


def border_labels(labels: np.ndarray) -> np.ndarray:
    """The label values (0 excluded) that touch the image's edge."""
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.setdiff1d(edge, [0])


def remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """A copy of ``labels`` without the objects smaller than ``min_area`` pixels."""
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    return np.where(small[labels], 0, labels)


def split_touching(mask: np.ndarray, smooth: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Label a foreground mask, splitting touching nuclei by a marker-controlled watershed.

    The relief is the smoothed distance to the background times the image's
    intensity relative to its clump's mean: a nucleus centre is both far
    from the clump's edge (a neck between two nuclei is narrow) and bright
    (the junction between nuclei is dimmer). Its h-maxima are the markers.
    """
    clumps = measure.label(mask)
    relief = marker_relief(mask, clumps, smooth, params)
    markers = measure.label(h_maxima_per_clump(relief, clumps, params.h))
    return segmentation.watershed(-relief, markers, mask=mask)


def marker_relief(mask: np.ndarray, clumps: np.ndarray, smooth: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """The smoothed distance to the background times the smoothed intensity over its clump's mean (float32)."""
    distance = filters.gaussian(ndi.distance_transform_edt(mask), sigma=params.marker_sigma, preserve_range=True)
    intensity = filters.gaussian(smooth, sigma=params.marker_sigma, preserve_range=True)
    clump_mean = np.maximum(label_means(clumps, intensity), np.finfo(np.float32).tiny)
    return (distance * np.clip(intensity / clump_mean[clumps], 0, None)).astype(np.float32)


def h_maxima_per_clump(relief: np.ndarray, clumps: np.ndarray, h: float) -> np.ndarray:
    """``skimage.morphology.h_maxima`` of ``relief`` clump by clump, without one transform per clump.

    A clump whose relief spans less than ``h`` has no maximum. Most clumps
    hold one nucleus and their relief one regional maximum
    (``skimage.morphology.local_maxima``, one pass over the field), which is
    then their only h-maximum. Only clumps with several regional maxima need
    the grey reconstruction behind ``h_maxima``, which sorts every pixel it is
    given: it runs on their bounding boxes alone.
    """
    peaks = measure.label(morphology.local_maxima(np.where(clumps > 0, relief, 0)))
    clump_of_peak = np.zeros(int(peaks.max()) + 1, np.int64)
    clump_of_peak[peaks[peaks > 0]] = clumps[peaks > 0]
    peaks_per_clump = np.bincount(clump_of_peak[1:], minlength=int(clumps.max()) + 1)
    maxima = np.zeros(relief.shape, bool)
    for label, box in enumerate(ndi.find_objects(clumps), start=1):
        if box is None:
            continue
        inside = clumps[box] == label
        values = np.where(inside, relief[box], 0)
        if peaks_per_clump[label] == 1:
            found = peaks[box] > 0 if np.ptp(values) >= h else np.zeros(values.shape, bool)
        else:
            found = morphology.h_maxima(values, h).astype(bool)
        maxima[box] |= found & inside
    return maxima


def label_means(labels: np.ndarray, image: np.ndarray, minlength: int = 0) -> np.ndarray:
    """Mean of ``image`` over each label, indexed by label value 0..max (0 where a label is empty).

    At least ``minlength`` values, so that labels absent from ``labels`` still have a place.
    """
    n = max(int(labels.max()) + 1, minlength)
    sums = np.bincount(labels.ravel(), weights=image.ravel().astype(np.float64), minlength=n)
    return sums / np.maximum(np.bincount(labels.ravel(), minlength=n), 1)


def refine_edges(labels: np.ndarray, smooth: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Drop each nucleus's pixels below ``edge_fraction`` of its own mean level above background.

    A per-nucleus edge suits bright and dim nuclei alike, where one global
    threshold makes dim nuclei too small or bright ones too large.
    """
    outside = smooth[labels == 0]
    background = np.median(outside) if outside.size else float(smooth.min())  # a crop filled by one nucleus
    edge = background + params.edge_fraction * (label_means(labels, smooth) - background)
    return np.where(smooth > edge[labels], labels, 0)


def segment_nuclei(dna: np.ndarray, params: SegmentationParams | None = None) -> np.ndarray:
    """Segment nuclei in a 2D nuclear-stain image.

    Smooth; find the foreground with Li's threshold; split touching nuclei
    by a watershed from h-maxima of an intensity-weighted distance transform
    (``split_touching``); set each nucleus's edge at a fraction of its own
    intensity (``refine_edges``); remove small objects and number the rest.

    Parameters
    ----------
    dna : ndarray, shape (y, x)
        Nuclear stain (DNA, DAPI, Hoechst...), any real dtype.
    params : SegmentationParams, optional
        Defaults to ``SegmentationParams()``.

    Returns
    -------
    labels : ndarray of int32, shape (y, x)
        0 is background; nuclei are numbered 1..N without gaps.
    """
    if dna.ndim != 2:
        raise ValueError(f"segment_nuclei expects a 2D (y, x) image, got shape {dna.shape}")
    params = params or SegmentationParams()
    smooth = filters.gaussian(dna.astype(np.float32), sigma=params.smoothing_sigma, preserve_range=True)
    labels = split_touching(foreground_mask(smooth, params), smooth, params)
    if params.edge_fraction > 0 and labels.any():
        labels = refine_edges(labels, smooth, params)
    labels = remove_small(labels, params.min_area)
    relabelled, _, _ = segmentation.relabel_sequential(labels)
    return relabelled.astype(np.int32)


class MatchResult(NamedTuple):
    """Matched-object scores of a predicted label image against a truth."""

    f1: float
    precision: float
    recall: float
    mean_iou: float


def iou_matrix(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every predicted object with every true object, from the overlap contingency table.

    Returns the (n_pred, n_truth) IoU matrix and the label ids of its rows
    and columns.
    """
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    truth_ids, truth_index = np.unique(truth, return_inverse=True)
    overlap = coo_matrix((np.ones(pred.size), (pred_index.ravel(), truth_index.ravel())),
                         shape=(len(pred_ids), len(truth_ids))).toarray()
    pred_area = overlap.sum(axis=1, keepdims=True)
    truth_area = overlap.sum(axis=0, keepdims=True)
    iou = overlap / (pred_area + truth_area - overlap)
    keep_pred, keep_truth = pred_ids != 0, truth_ids != 0
    return iou[keep_pred][:, keep_truth], pred_ids[keep_pred], truth_ids[keep_truth]


def match_objects(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> MatchResult:
    """Score predicted objects against true objects by one-to-one IoU matching.

    Pairs are matched to maximise total IoU (Hungarian assignment) among
    pairs with IoU >= ``iou``; with ``iou`` >= 0.5 such pairs are already
    (almost always) unique. A matched pair is a true positive, an unmatched
    prediction a false positive and an unmatched true object a false
    negative.

    Parameters
    ----------
    pred, truth : ndarray of int
        Label images of the same shape, 0 = background.
    iou : float
        Minimum intersection over union of a match.

    Returns
    -------
    MatchResult
        ``(f1, precision, recall, mean_iou)``; ``mean_iou`` is the mean IoU of
        the matched pairs (NaN when there is none). Empty inputs score 1 when
        both are empty, else 0.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"label images differ in shape: {pred.shape} vs {truth.shape}")
    scores, _, _ = iou_matrix(pred, truth)
    n_pred, n_truth = scores.shape
    if n_pred == 0 or n_truth == 0:
        perfect = float(n_pred == n_truth)
        return MatchResult(perfect, perfect, perfect, float("nan"))
    candidate = np.where(scores >= iou, scores, 0.0)
    rows, cols = linear_sum_assignment(candidate, maximize=True)
    matched = scores[rows, cols][candidate[rows, cols] > 0]
    tp = len(matched)
    precision, recall = tp / n_pred, tp / n_truth
    f1 = 2 * tp / (n_pred + n_truth)
    return MatchResult(f1, precision, recall, float(matched.mean()) if tp else float("nan"))
