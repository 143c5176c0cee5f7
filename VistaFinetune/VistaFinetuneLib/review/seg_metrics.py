"""Segmentation metrics of a prediction against its ground truth, on the ground truth's grid and spacing.

Dice, HD95, mean symmetric surface distance, normalized surface Dice and volumes, with MONAI 1.4's surface
conventions (``monai.metrics.compute_hausdorff_distance`` / ``compute_average_surface_distance`` /
``compute_surface_dice`` with ``use_subvoxels=False``): the surface of a mask is the mask minus its erosion by
the face-connected (6-neighbour) cross, voxels on the volume border included; a surface voxel's distance is the
exact Euclidean distance in mm (``distance_transform_edt`` with the voxel spacing) to the nearest surface voxel of
the other mask. Speed comes from cropping both masks to the bounding box of their union (plus one voxel) before
anything else and from computing the two distance transforms once for all three surface metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

NOT_PROCESSED = 255  # VISTA3D's "not processed" output value: never foreground of any class in a prediction
HD_PERCENTILE = 95.0

EMPTY_MASK_RULES = (
    "When both the prediction and the reference of a class are empty, the class is not scored: Dice, HD95, "
    "MSD and NSD are all missing (null). When exactly one of them is empty, Dice and NSD are 0 and HD95 and MSD "
    "are missing (null), not infinite, since there is no surface to measure to. Volumes (voxel count x voxel "
    "volume) are always reported. In label maps, prediction value 255 (VISTA3D's 'not processed') is never "
    "foreground of any class."
)


@dataclass(frozen=True)
class MaskMetrics:
    """Metrics of one predicted mask against its reference mask (see ``EMPTY_MASK_RULES`` for the None cases)."""

    dice: float | None
    hd95_mm: float | None
    msd_mm: float | None
    nsd: float | None
    reference_ml: float
    predicted_ml: float
    volume_difference_ml: float  # predicted - reference

    def to_json(self) -> dict:
        return asdict(self)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float | None:
    """Dice of two boolean masks; None when both are empty (nothing to score)."""
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def mask_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float = 2.0
) -> MaskMetrics:
    """Metrics of two boolean (or 0/1) masks on the same grid; ``spacing_mm`` is per array axis.

    Both empty: every score None. Exactly one empty: Dice 0, NSD 0, HD95 and MSD None. Volumes always.
    """
    predicted = np.asarray(prediction, dtype=bool)
    truth = np.asarray(reference, dtype=bool)
    spacing = _checked(predicted, truth, spacing_mm, tolerance_mm)
    return _cropped_metrics(predicted, truth, spacing, tolerance_mm)


def label_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_mm: Sequence[float],
    class_ids: list[int],
    tolerance_mm: float = 2.0,
) -> dict[int, MaskMetrics]:
    """``mask_metrics`` of each class id of two label maps on the same grid (same empty-mask rules).

    Prediction value 255 ("not processed") never counts as foreground, even for class id 255.
    """
    predicted = np.asarray(prediction)
    truth = np.asarray(reference)
    spacing = _checked(predicted, truth, spacing_mm, tolerance_mm)
    results = {}
    for class_id in class_ids:
        truth_mask = truth == class_id
        predicted_mask = predicted == class_id if class_id != NOT_PROCESSED else np.zeros(truth.shape, dtype=bool)
        results[int(class_id)] = _cropped_metrics(predicted_mask, truth_mask, spacing, tolerance_mm)
    return results


def _checked(
    prediction: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float
) -> tuple[float, ...]:
    """Validate shapes, spacing and tolerance; the spacing as a float tuple."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != reference.ndim:
        raise ValueError(f"spacing {spacing} does not match {reference.ndim}-D arrays")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive, got {spacing}")
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance_mm}")
    return spacing


def _bounding_box(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """Per-axis [start, stop) of the foreground, or None when empty; each later axis scans only the slab found."""
    box = []
    view = mask
    for axis in range(mask.ndim):
        others = tuple(i for i in range(mask.ndim) if i != axis)
        hits = np.flatnonzero(view.any(axis=others))
        if hits.size == 0:
            return None
        start, stop = int(hits[0]), int(hits[-1]) + 1
        box.append((start, stop))
        view = view[(slice(None),) * axis + (slice(start, stop),)]
    return box


def _cropped_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...], tolerance_mm: float
) -> MaskMetrics:
    """Crop both masks to their union's bounding box plus one voxel, then score them."""
    voxel_ml = math.prod(spacing) / 1000.0
    boxes = [box for box in (_bounding_box(prediction), _bounding_box(reference)) if box is not None]
    if not boxes:
        return MaskMetrics(None, None, None, None, 0.0, 0.0, 0.0)
    union = tuple(slice(min(b[i][0] for b in boxes), max(b[i][1] for b in boxes)) for i in range(prediction.ndim))
    predicted = np.pad(prediction[union], 1)
    truth = np.pad(reference[union], 1)
    predicted_count = int(np.count_nonzero(predicted))
    truth_count = int(np.count_nonzero(truth))
    volumes = (truth_count * voxel_ml, predicted_count * voxel_ml, (predicted_count - truth_count) * voxel_ml)
    if predicted_count == 0 or truth_count == 0:
        return MaskMetrics(0.0, None, None, 0.0, *volumes)
    overlap = int(np.count_nonzero(predicted & truth))
    dice = 2.0 * overlap / (predicted_count + truth_count)
    predicted_surface, truth_surface = _surface(predicted), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)[predicted_surface]
    to_prediction = ndimage.distance_transform_edt(~predicted_surface, sampling=spacing)[truth_surface]
    hd95 = max(float(np.percentile(to_truth, HD_PERCENTILE)), float(np.percentile(to_prediction, HD_PERCENTILE)))
    surface_count = to_truth.size + to_prediction.size
    msd = (float(to_truth.sum()) + float(to_prediction.sum())) / surface_count
    within = int(np.count_nonzero(to_truth <= tolerance_mm)) + int(np.count_nonzero(to_prediction <= tolerance_mm))
    return MaskMetrics(dice, hd95, msd, within / surface_count, *volumes)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one face neighbour outside the mask (the array border counts as outside)."""
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)
