"""A volume node's voxel grid in the world: its IJK-to-RAS composed with a linear parent transform, and its voxels.

Arrays here are indexed (i, j, k) like NIfTI and nibabel; VTK and ``slicer.util.arrayFromVolume`` use (k, j, i).
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.scene.nodes import matrix_to_array


def local_to_world(node: slicer.vtkMRMLTransformableNode) -> np.ndarray:
    """The 4x4 map from a node's own coordinates to world RAS (identity without a parent transform)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise UserError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}'; harden the transform "
            "(Data module: right-click the node, Harden transform) before prompting VISTA3D on it"
        )
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return matrix_to_array(matrix)


def volume_world_affine(volume_node: slicer.vtkMRMLScalarVolumeNode) -> np.ndarray:
    """The voxel-to-world-RAS affine of a volume node, its parent transform included (the NIfTI affine)."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    return local_to_world(volume_node) @ matrix_to_array(ijk_to_ras)


def volume_shape(volume_node: slicer.vtkMRMLScalarVolumeNode) -> tuple[int, int, int]:
    """(I, J, K) voxel counts of a volume node."""
    image = volume_node.GetImageData()
    if image is None:
        raise UserError(f"volume '{volume_node.GetName()}' holds no image data")
    return tuple(int(n) for n in image.GetDimensions())


def volume_voxels(volume_node: slicer.vtkMRMLScalarVolumeNode) -> np.ndarray:
    """A copy of a single-component volume's voxels, indexed (i, j, k)."""
    image = volume_node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise UserError(f"volume '{volume_node.GetName()}' holds no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise UserError(f"volume '{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} components; "
                        "VISTA3D needs a single-channel CT")  # fmt: skip
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    i, j, k = image.GetDimensions()
    return flat.reshape(k, j, i).transpose(2, 1, 0).copy()
