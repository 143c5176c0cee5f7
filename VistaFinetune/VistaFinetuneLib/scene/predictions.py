"""A prediction NIfTI (VISTA3D class ids; in uint8 and float files 255 = not processed) becomes a segmentation node
on the CT's geometry.

Each class present becomes one segment: named by the user's own segment name when the class was finetuned
(mapped from one of their segments), else by the bundle's class name; coloured and coded with the shipped
standard terminology (:mod:`terminology`), or with the user's own terminology entry for a finetuned class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.data.geometry import ijk_to_ras as grid_to_ras
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.scene import nodes
from VistaFinetuneLib.scene.mapping import ClassChoice, SegmentRef
from VistaFinetuneLib.scene.terminology import class_color, class_table

NOT_PROCESSED = 255  # in uint8 and float files only
MAX_CLASS_ID = 65535
CLASS_TAG = "VistaFinetune.ClassId"  # segment tag: the VISTA3D class id a segment shows
MODEL_TITLES = {"pretrained": "VISTA3D pretrained", "finetuned": "VISTA3D finetuned"}


@dataclass(frozen=True)
class ClassNaming:
    """How classes are named and coded: the user's names and terminology entries for the finetuned classes."""

    catalog: LabelCatalog
    user_names: dict[int, str] = field(default_factory=dict)
    user_terminology: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_mapping(
        cls, catalog: LabelCatalog, choices: dict[str, ClassChoice], segments: list[SegmentRef]
    ) -> ClassNaming:
        """The first segment name (and its terminology, unless it is Slicer's default) mapped to each class."""
        names: dict[int, str] = {}
        terminology: dict[int, str] = {}
        for segment in segments:
            class_id = choices[segment.name].class_id if segment.name in choices else None
            if class_id is None or class_id in names:
                continue
            names[class_id] = segment.name
            if choices[segment.name].source == "terminology":
                terminology[class_id] = segment.terminology
        return cls(catalog, names, terminology)

    def name(self, class_id: int) -> str:
        if class_id in self.user_names:
            return self.user_names[class_id]
        return self.catalog.name(class_id) if class_id in self.catalog.classes else f"new structure {class_id}"

    def terminology(self, class_id: int) -> str | None:
        if class_id in self.user_terminology:
            return self.user_terminology[class_id]
        entry = class_table().get(class_id)
        return None if entry is None else entry.serialized()


def _ras_bounds(node: slicer.vtkMRMLVolumeNode) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest RAS coordinates of the node's voxel centres."""
    shape = np.asarray(nodes.voxels(node).shape)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * (shape - 1)
    ras = grid_to_ras(nodes.ijk_to_ras(node), corners)
    return ras.min(axis=0), ras.max(axis=0)


def _check_overlap(labelmap: slicer.vtkMRMLLabelMapVolumeNode, volume: slicer.vtkMRMLScalarVolumeNode, path: Path):
    """Refuse a prediction whose grid lies entirely outside the CT's bounding box."""
    (low_a, high_a), (low_b, high_b) = _ras_bounds(labelmap), _ras_bounds(volume)
    if np.any(high_a < low_b - 1e-3) or np.any(high_b < low_a - 1e-3):
        raise UserError(f'{path}: the prediction does not overlap volume "{volume.GetName()}" (another case?)')


def class_values(stored: np.ndarray, path: Path) -> np.ndarray:
    """The class ids of a prediction file's voxels. In a uint8 or float file (older files, the bundle's own outputs)
    255 means "not processed" and becomes 0; a uint16 file (ids above 254, NV-Segment-CTMR) holds only class ids."""
    values = np.rint(stored).astype(np.int64)
    if stored.dtype == np.uint8 or stored.dtype.kind == "f":
        values[values == NOT_PROCESSED] = 0
    if values.size and (values.min() < 0 or values.max() > MAX_CLASS_ID):
        raise UserError(f"{path}: values {values.min()}..{values.max()} are not VISTA3D class ids (0..{MAX_CLASS_ID})")
    return values.astype(np.uint16 if values.size and values.max() > NOT_PROCESSED else np.uint8)


def import_prediction(
    path: Path, volume: slicer.vtkMRMLScalarVolumeNode, naming: ClassNaming, node_name: str
) -> slicer.vtkMRMLSegmentationNode:
    """A new segmentation node ``node_name`` holding one segment per class in the prediction file."""
    scene = volume.GetScene()
    labelmap = nodes.read_labelmap(scene, Path(path), f"{node_name} (reading)")
    try:
        _check_overlap(labelmap, volume, Path(path))
        values = class_values(nodes.voxels(labelmap), Path(path))
        nodes.set_voxels(labelmap, values, nodes.ijk_to_ras(labelmap))
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", node_name)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        if values.any() and not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            labelmap, segmentation
        ):
            raise UserError(f"{path}: Slicer could not import the prediction as segments")
    finally:
        display = labelmap.GetDisplayNode()
        scene.RemoveNode(labelmap)
        if display is not None:
            scene.RemoveNode(display)
    _describe_segments(segmentation, naming)
    return segmentation


def _describe_segments(segmentation: slicer.vtkMRMLSegmentationNode, naming: ClassNaming) -> None:
    """Name, colour and code each imported segment by its class id (its label value)."""
    content = segmentation.GetSegmentation()
    for index in range(content.GetNumberOfSegments()):
        segment = content.GetSegment(content.GetNthSegmentID(index))
        class_id = segment.GetLabelValue()
        segment.SetName(naming.name(class_id))
        segment.SetColor(*class_color(class_id))
        segment.SetTag(CLASS_TAG, str(class_id))
        terminology = naming.terminology(class_id)
        if terminology is not None:
            segment.SetTerminology(terminology)


def import_comparison(
    predictions: dict[str, Path], volume: slicer.vtkMRMLScalarVolumeNode, naming: ClassNaming, case_name: str
) -> dict[str, slicer.vtkMRMLSegmentationNode]:
    """One node per model (``{"pretrained": path, "finetuned": path}``), named ``CASE — VISTA3D MODEL``."""
    return {
        model: import_prediction(path, volume, naming, f"{case_name} — {MODEL_TITLES.get(model, model)}")
        for model, path in predictions.items()
    }


def class_segment_ids(segmentation: slicer.vtkMRMLSegmentationNode) -> dict[int, str]:
    """Class id -> segment id of a node made by :func:`import_prediction`."""
    content = segmentation.GetSegmentation()
    found = {}
    for index in range(content.GetNumberOfSegments()):
        segment_id = content.GetNthSegmentID(index)
        tag = vtk.reference("")
        if content.GetSegment(segment_id).GetTag(CLASS_TAG, tag):
            found[int(str(tag))] = segment_id
    return found
