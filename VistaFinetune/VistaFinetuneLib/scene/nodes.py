"""Node geometry and voxels as numpy: IJK-to-RAS affines, ``[i, j, k]`` arrays, NIfTI files through storage nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from VistaFinetuneLib.errors import UserError


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a 4x4 numpy array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A 4x4 numpy array as a vtkMatrix4x4."""
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(volume_node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The volume's IJK-to-RAS matrix (its NIfTI affine)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


def voxels(volume_node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """A copy of the volume's voxels indexed ``[i, j, k]``; a clear error for a node without image data."""
    image = volume_node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise UserError(f'volume "{volume_node.GetName()}": the node holds no image data')
    dims = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return flat.reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0).copy()


def set_voxels(volume_node: slicer.vtkMRMLVolumeNode, array: np.ndarray, affine: np.ndarray) -> None:
    """Give the node the ``[i, j, k]`` array ``array`` on the grid ``affine`` (its IJK-to-RAS)."""
    array = np.asarray(array)
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    vtk_type = numpy_support.get_vtk_array_type(array.dtype)
    image.AllocateScalars(vtk_type, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.transpose(2, 1, 0).ravel()
    volume_node.SetAndObserveImageData(image)
    volume_node.SetIJKToRASMatrix(array_to_matrix(np.asarray(affine, dtype=np.float64)))


def read_volume(
    scene: slicer.vtkMRMLScene, path: Path, name: str, class_name: str = "vtkMRMLScalarVolumeNode"
) -> slicer.vtkMRMLVolumeNode:
    """Read a NIfTI into a new volume node (scalar, or ``vtkMRMLLabelMapVolumeNode``) of ``scene``."""
    if not Path(path).is_file():
        raise UserError(f"{path}: the file does not exist")
    node = scene.AddNewNodeByClass(class_name, name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node) or node.GetImageData() is None:
        scene.RemoveNode(node)
        raise UserError(f"{path}: cannot read it as a volume")
    return node


def read_labelmap(scene: slicer.vtkMRMLScene, path: Path, name: str) -> slicer.vtkMRMLLabelMapVolumeNode:
    """Read a label NIfTI into a new labelmap node of ``scene``."""
    return read_volume(scene, path, name, "vtkMRMLLabelMapVolumeNode")
