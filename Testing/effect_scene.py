"""Scenes for the VISTA3D effect's tests: a synthetic CT on a rotated, anisotropic grid under a parent transform,
a segmentation under another transform, real slice nodes and Slicer's Segment Editor logic (slicer-core)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.data.geometry import ras_to_ijk
from VistaFinetuneLib.scene.nodes import array_to_matrix, matrix_to_array
from VistaFinetuneLib.scene.volume_grid import local_to_world, volume_world_affine

SPEC = synthetic.PhantomSpec(shape=(56, 48, 30), spacing_mm=(2.2, 1.8, 3.4))


def rotation(
    axis: tuple[float, float, float], degrees: float, translation: tuple[float, float, float],
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:  # fmt: skip
    """A rigid 4x4 transform: rotation about ``axis`` through ``centre``, then translation (mm)."""
    transform = vtk.vtkTransform()
    transform.Translate(*(np.asarray(translation) + np.asarray(centre)))
    transform.RotateWXYZ(degrees, *axis)
    transform.Translate(*(-np.asarray(centre)))
    return matrix_to_array(transform.GetMatrix())


@dataclass
class EffectScene:
    scene: slicer.vtkMRMLScene
    volume: slicer.vtkMRMLScalarVolumeNode
    segmentation: slicer.vtkMRMLSegmentationNode
    segment_id: str
    editor: slicer.vtkSlicerSegmentEditorLogic
    labels: np.ndarray  # the phantom's label map, (i, j, k)
    segmentations_logic: slicer.vtkSlicerSegmentationsModuleLogic

    def slice_node(self, orientation: str, through_ras: np.ndarray) -> slicer.vtkMRMLSliceNode:
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene)
        node = self.scene.CreateNodeByClass("vtkMRMLSliceNode")  # a copy of the scene's default: with presets
        node.UnRegister(None)
        node.SetName(orientation)
        node.SetLayoutName(orientation)
        self.scene.AddNode(node)
        node.SetDimensions(640, 480, 1)
        node.SetFieldOfView(250.0, 187.5, 1.0)
        if orientation == "Oblique":
            node.SetOrientationToAxial()
            tilted = matrix_to_array(node.GetSliceToRAS()) @ rotation((1.0, 0.3, 0.0), 33.0, (0.0, 0.0, 0.0))
            node.GetSliceToRAS().DeepCopy(array_to_matrix(tilted))
        else:
            node.SetOrientation(orientation)
        node.JumpSliceByCentering(*through_ras)
        node.UpdateMatrices()
        assert orientation == "Oblique" or node.GetOrientation() == orientation
        return node

    def segment_on_volume_grid(self, segment_id: str | None = None) -> np.ndarray:
        """The segment's voxels looked up at every volume voxel centre through both nodes' transforms."""
        segment_id = segment_id or self.segment_id
        labelmap = slicer.vtkOrientedImageData()
        self.segmentations_logic.GetSegmentBinaryLabelmapRepresentation(self.segmentation, segment_id, labelmap, False)
        shape = SPEC.shape
        ijk = np.indices(shape).reshape(3, -1).T.astype(np.float64)
        world = ijk @ volume_world_affine(self.volume)[:3, :3].T + volume_world_affine(self.volume)[:3, 3]
        local = ras_to_ijk(local_to_world(self.segmentation), world)
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        index = np.floor(ras_to_ijk(matrix_to_array(matrix), local) + 0.5).astype(int)
        x0, x1, y0, y1, z0, z1 = labelmap.GetExtent()
        if x1 < x0:
            return np.zeros(shape, dtype=bool)
        values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(
            z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1
        )
        index -= np.array([x0, y0, z0])
        inside = np.all((index >= 0) & (index < np.array([x1 - x0 + 1, y1 - y0 + 1, z1 - z0 + 1])), axis=1)
        found = np.zeros(len(index), dtype=bool)
        found[inside] = values[index[inside, 2], index[inside, 1], index[inside, 0]] > 0
        return found.reshape(shape)


def build_effect_scene(
    seed: int = 11, segmentation_under_volume_transform: bool = True, scene: slicer.vtkMRMLScene | None = None
) -> EffectScene:
    """The segmentation shares the volume's transform (its grid then coincides with the volume's), or sits under
    a transform of its own (its grid is then rotated against the volume's)."""
    image, labels, affine = synthetic.make_case(seed, 0, SPEC)
    scene = scene or slicer.vtkMRMLScene()
    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLScene(scene)

    volume = slicer.vtkMRMLScalarVolumeNode()
    volume.SetName("Synthetic CT")
    scene.AddNode(volume)
    vtk_image = vtk.vtkImageData()
    vtk_image.SetDimensions(*image.shape)
    vtk_image.AllocateScalars(vtk.VTK_SHORT, 1)
    numpy_support.vtk_to_numpy(vtk_image.GetPointData().GetScalars())[:] = image.transpose(2, 1, 0).ravel()
    volume.SetAndObserveImageData(vtk_image)
    volume.SetIJKToRASMatrix(array_to_matrix(affine))
    volume_transform = slicer.vtkMRMLLinearTransformNode()
    volume_transform.SetName("Volume registration")
    scene.AddNode(volume_transform)
    volume_transform.SetMatrixTransformToParent(array_to_matrix(rotation((0.2, 0.4, 1.0), 21.0, (12.0, -7.0, 30.0))))
    volume.SetAndObserveTransformNodeID(volume_transform.GetID())

    segmentation = slicer.vtkMRMLSegmentationNode()
    segmentation.SetName("Segmentation")
    scene.AddNode(segmentation)
    segmentation.CreateDefaultDisplayNodes()
    if segmentation_under_volume_transform:
        segmentation.SetAndObserveTransformNodeID(volume_transform.GetID())
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)  # the same grid as the volume's
    else:
        # Made for the volume, then moved under a transform of its own: its grid is rotated against the volume's.
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        own = slicer.vtkMRMLLinearTransformNode()
        scene.AddNode(own)
        centre = volume_world_affine(volume) @ np.append((np.asarray(SPEC.shape) - 1) / 2.0, 1.0)
        own.SetMatrixTransformToParent(array_to_matrix(rotation((1.0, 0.0, 0.0), -9.0, (-4.0, 3.0, 5.0), centre[:3])))
        segmentation.SetAndObserveTransformNodeID(own.GetID())
    segment_id = segmentation.GetSegmentation().AddEmptySegment("liver", "Liver", [0.86, 0.5, 0.4])

    editor_node = slicer.vtkMRMLSegmentEditorNode()
    scene.AddNode(editor_node)
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(scene)
    editor.SetSegmentEditorNode(editor_node)
    editor.SetSegmentationNode(segmentation)
    editor.SetSourceVolumeNode(volume)
    editor.SetCurrentSegmentID(segment_id)
    return EffectScene(scene, volume, segmentation, segment_id, editor, labels, segmentations_logic)


def oriented_volume_image(volume: slicer.vtkMRMLScalarVolumeNode) -> slicer.vtkOrientedImageData:
    """The volume's voxels with its IJK-to-RAS, as Slicer's static XyToIjk expects them."""
    image = slicer.vtkOrientedImageData()
    image.ShallowCopy(volume.GetImageData())
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def xy_of(slice_node: slicer.vtkMRMLSliceNode, ras: np.ndarray) -> tuple[float, float]:
    """Where a world point on the slice plane appears in the view (display pixels)."""
    xy = np.linalg.inv(matrix_to_array(slice_node.GetXYToRAS())) @ np.append(ras, 1.0)
    assert abs(xy[2]) < 1e-6, "the point is not on the slice plane"
    return float(xy[0]), float(xy[1])


def copy_run_with_names(run_dir: Path, runs_root: Path, name: str, class_names: dict[str, str]) -> Path:
    """A copy of a finished run whose run.json records the names the user gave its classes."""
    copy = runs_root / name
    shutil.copytree(run_dir, copy)
    record = json.loads((copy / "run.json").read_text())
    record["class_names"] = class_names
    (copy / "run.json").write_text(json.dumps(record))
    return copy
