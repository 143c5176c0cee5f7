"""Markups control points (RAS) become point prompts for the prediction engine.

A control point is a positive click when it is selected (Slicer's default for a new point) and a negative click
when the user unselected it; points without a defined position are skipped. The engine takes points as voxel
indices ``[i, j, k]`` of the image it segments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer

from VistaFinetuneLib.data.geometry import ras_to_ijk
from VistaFinetuneLib.errors import UserError

POSITIVE, NEGATIVE = 1, 0


@dataclass(frozen=True)
class PointPrompts:
    """Points in the image's voxel indices, and a label per point (1 positive, 0 negative)."""

    points_ijk: list[list[int]]
    labels: list[int]

    def to_json(self) -> dict:
        return {"points": self.points_ijk, "point_labels": self.labels}


def point_prompts(
    markups: slicer.vtkMRMLMarkupsNode, image_affine: np.ndarray, shape: tuple[int, int, int]
) -> PointPrompts:
    """The node's defined control points (world RAS, transforms applied) as voxel indices of the image grid."""
    points, labels = [], []
    for index in range(markups.GetNumberOfControlPoints()):
        if markups.GetNthControlPointPositionStatus(index) != slicer.vtkMRMLMarkupsNode.PositionDefined:
            continue
        ras = [0.0, 0.0, 0.0]
        markups.GetNthControlPointPositionWorld(index, ras)
        ijk = np.rint(ras_to_ijk(image_affine, np.asarray(ras))).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= np.asarray(shape)):
            raise UserError(
                f'markups "{markups.GetName()}": point {markups.GetNthControlPointLabel(index) or index + 1} at RAS '
                f"{np.round(ras, 1).tolist()} lies outside the image"
            )
        points.append(ijk.tolist())
        labels.append(POSITIVE if markups.GetNthControlPointSelected(index) else NEGATIVE)
    if not points:
        raise UserError(f'markups "{markups.GetName()}" has no placed control points to prompt with')
    return PointPrompts(points, labels)
