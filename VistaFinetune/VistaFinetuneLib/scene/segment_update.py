"""Write a prediction into one segment, changing only the voxels that differ from what was written before.

The Segment Editor's "set" write mode first erases the whole segment, so a click never uses it: the voxels a
prediction switches on are written with "add" and those it switches off with "remove", each as a labelmap cropped
to the changed voxels and resampled onto the segmentation's reference geometry (the grid the Segment Editor's
modifier labelmaps live on). The writes go through the Segment Editor (the effect's
``modifySelectedSegmentByLabelmap``, or ``vtkSlicerSegmentEditorLogic`` headless), after one ``saveStateForUndo``,
so its undo takes a click back and its masking and overwrite settings apply.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from VistaFinetuneLib.scene.nodes import array_to_matrix, matrix_to_array
from VistaFinetuneLib.scene.volume_grid import local_to_world, volume_world_affine

ADD = "add"
REMOVE = "remove"
EDITOR_MODES = {
    ADD: slicer.vtkSlicerSegmentEditorLogic.ModificationModeAdd,
    REMOVE: slicer.vtkSlicerSegmentEditorLogic.ModificationModeRemove,
}


@dataclass(frozen=True)
class LabelmapWrite:
    """One Segment Editor write: "add" or "remove" these voxels (a labelmap in the segmentation's coordinates)."""

    mode: str
    labelmap: slicer.vtkOrientedImageData
    voxels: int


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest index box holding every True voxel of a 3D mask (None when it has none)."""
    box = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def oriented_labelmap(
    mask: np.ndarray, box: tuple[slice, ...], ijk_to_local: np.ndarray
) -> slicer.vtkOrientedImageData:
    """The voxels of ``mask`` inside ``box`` as a binary labelmap whose extent keeps the full grid's indices."""
    crop = np.ascontiguousarray(mask[box].transpose(2, 1, 0), dtype=np.uint8)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(box[0].start, box[0].stop - 1, box[1].start, box[1].stop - 1, box[2].start, box[2].stop - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = crop.ravel()
    image.SetImageToWorldMatrix(array_to_matrix(ijk_to_local))
    return image


def reference_geometry(segmentation_node) -> slicer.vtkOrientedImageData | None:
    """The segmentation's reference grid (no voxels), or None when it has none yet."""
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    text = segmentation_node.GetSegmentation().GetConversionParameter(name)
    if not text:
        return None
    matrix, extent = vtk.vtkMatrix4x4(), [0, -1, 0, -1, 0, -1]
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, matrix, extent)
    geometry = slicer.vtkOrientedImageData()
    geometry.SetExtent(extent)
    geometry.SetImageToWorldMatrix(matrix)
    return geometry


def onto_reference(labelmap: slicer.vtkOrientedImageData, reference: slicer.vtkOrientedImageData | None):
    """``labelmap`` resampled (nearest neighbour) onto the part of the reference grid it covers; None if outside."""
    if reference is None:
        return labelmap
    source, target = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(source)
    reference.GetImageToWorldMatrix(target)
    source, target = matrix_to_array(source), matrix_to_array(target)
    if np.allclose(source, target, atol=1e-6):
        return labelmap
    x0, x1, y0, y1, z0, z1 = labelmap.GetExtent()
    corners = np.array([[x, y, z, 1.0] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)])
    indices = (np.linalg.inv(target) @ source @ corners.T)[:3].T
    lower = np.floor(indices.min(axis=0)).astype(int) - 1
    upper = np.ceil(indices.max(axis=0)).astype(int) + 1
    bounds = np.array(reference.GetExtent()).reshape(3, 2)
    lower, upper = np.maximum(lower, bounds[:, 0]), np.minimum(upper, bounds[:, 1])
    if np.any(lower > upper):
        return None
    region = slicer.vtkOrientedImageData()
    region.SetExtent(lower[0], upper[0], lower[1], upper[1], lower[2], upper[2])
    region.SetImageToWorldMatrix(array_to_matrix(target))
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, region, resampled)
    return resampled


def volume_to_segmentation(volume_node, segmentation_node) -> np.ndarray:
    """The map from the volume's voxel indices to the segmentation node's own coordinates (transforms included)."""
    return np.linalg.inv(local_to_world(segmentation_node)) @ volume_world_affine(volume_node)


def changed_voxel_writes(
    previous: np.ndarray | None, prediction: np.ndarray, volume_node, segmentation_node
) -> list[LabelmapWrite]:
    """The writes that turn ``previous`` (a mask on the volume's grid, None = nothing) into ``prediction``."""
    previous = np.zeros_like(prediction, dtype=bool) if previous is None else previous.astype(bool)
    prediction = prediction.astype(bool)
    ijk_to_local = volume_to_segmentation(volume_node, segmentation_node)
    reference = reference_geometry(segmentation_node)
    writes = []
    for mode, changed in ((REMOVE, previous & ~prediction), (ADD, prediction & ~previous)):
        box = bounding_box(changed)
        if box is not None:
            labelmap = onto_reference(oriented_labelmap(changed, box, ijk_to_local), reference)
            if labelmap is not None:
                writes.append(LabelmapWrite(mode, labelmap, int(changed.sum())))
    return writes


def apply_with_editor_logic(
    editor_logic: slicer.vtkSlicerSegmentEditorLogic, segmentation_node, writes: dict[str, list[LabelmapWrite]]
) -> None:
    """Apply writes (segment id -> writes) headless through Slicer's own Segment Editor logic, as one undo step."""
    if not any(writes.values()):
        return
    editor_logic.SaveStateForUndo()
    for segment_id, segment_writes in writes.items():
        for write in segment_writes:
            editor_logic.ModifySegmentByLabelmap(
                segmentation_node, segment_id, write.labelmap, EDITOR_MODES[write.mode], True, False
            )


def segment_fingerprint(segmentation_node, segment_id: str) -> str:
    """A digest of a segment's voxels and where they are: it changes with any edit, and returns after an undo."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        return "missing"
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    labelmap = segment.GetRepresentation(name)
    scalars = None if labelmap is None else labelmap.GetPointData().GetScalars()
    if scalars is None:
        return "empty"
    x0, x1, y0, y1, z0, z1 = labelmap.GetExtent()
    mask = numpy_support.vtk_to_numpy(scalars).reshape(z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)
    mask = mask == segment.GetLabelValue()
    box = bounding_box(mask)
    if box is None:
        return "empty"
    digest = hashlib.blake2b(digest_size=16)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    corner = [z0 + box[0].start, y0 + box[1].start, x0 + box[2].start]
    digest.update(np.asarray([matrix.GetElement(r, c) for r in range(3) for c in range(4)] + corner).tobytes())
    digest.update(np.packbits(mask[box]).tobytes() + str(mask[box].shape).encode())
    return digest.hexdigest()
