"""Build MRML scenes for the scene-logic tests: real slicer-core nodes, synthetic CT-like phantoms."""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.scene import nodes

ORGAN_VALUES = synthetic.MICRO_SPEC.label_values  # liver 1, spleen 2, left kidney 3


def new_scene() -> slicer.vtkMRMLScene:
    """A scene whose segmentation converter rules are registered (a segmentations logic attached first)."""
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    scene._vistaSegmentationsLogic = logic  # keep it alive with the scene
    return scene


def add_volume(scene, name: str, array: np.ndarray, affine: np.ndarray) -> slicer.vtkMRMLScalarVolumeNode:
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    nodes.set_voxels(volume, array, affine)
    return volume


def add_segmentation(
    scene,
    name: str,
    reference: slicer.vtkMRMLScalarVolumeNode | None,
    segments: dict[str, tuple[np.ndarray, np.ndarray]],
    terminology: dict[str, str] | None = None,
) -> slicer.vtkMRMLSegmentationNode:
    """A segmentation with one segment per ``name: (mask [i, j, k], grid affine)``; masks may lie on any grid."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    if reference is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    for index, (segment_name, (mask, affine)) in enumerate(segments.items()):
        segment_id = node.GetSegmentation().AddEmptySegment("", segment_name, [0.2 + 0.2 * index, 0.5, 0.4])
        image = slicer.vtkOrientedImageData()
        image.SetDimensions(*mask.shape)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = (
            np.asarray(mask, dtype=np.uint8).transpose(2, 1, 0).ravel()
        )
        image.SetImageToWorldMatrix(nodes.array_to_matrix(affine))
        assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(image, node, segment_id)
        if terminology and segment_name in terminology:
            node.GetSegmentation().GetSegment(segment_id).SetTerminology(terminology[segment_name])
    return node


def phantom(index: int, seed: int = 11):
    """(HU image, label map, affine) of a micro phantom: flipped, tilted axes and anisotropic spacing."""
    return synthetic.make_case(seed, index, synthetic.MICRO_SPEC)


def organ_segments(label: np.ndarray, affine: np.ndarray, names: dict[str, str]) -> dict:
    """``{user's segment name: (mask, affine)}`` for organs named ``{organ: user's name}``."""
    return {user: (label == ORGAN_VALUES[organ], affine) for organ, user in names.items()}
