"""The one place where world (RAS, mm) and voxel (IJK) coordinates meet.

RAS is the NIfTI world and Slicer's: +x is the patient's Right, +y Anterior, +z Superior. A grid is its shape and
its voxel-to-RAS affine (the NIfTI affine, Slicer's IJKToRAS). Points are arrays of shape (N, 3), or (3,) for one.
"""

from __future__ import annotations

import numpy as np


def ijk_to_ras(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """RAS millimetres of voxel indices (fractional indices allowed)."""
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ np.asarray(affine, dtype=np.float64)[:3, :3].T + np.asarray(affine, dtype=np.float64)[:3, 3]


def ras_to_ijk(affine: np.ndarray, ras: np.ndarray) -> np.ndarray:
    """Fractional voxel indices of RAS millimetre points (round them to get the voxel that holds each point)."""
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    ras = np.asarray(ras, dtype=np.float64)
    return ras @ inverse[:3, :3].T + inverse[:3, 3]


def voxel_centres_ras(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """RAS millimetres of every voxel centre of a grid, shape (3, *shape): ``x, y, z = voxel_centres_ras(...)``."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    return ijk_to_ras(affine, ijk).T.reshape(3, *shape)


def grid_centre_ras(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """RAS millimetres of the centre of a grid (the middle of its corner voxels' centres)."""
    return ijk_to_ras(affine, (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0)


def voxel_to_voxel(source_affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """The 4x4 map from a target grid's indices to a source grid's indices (what resampling needs)."""
    return np.linalg.inv(np.asarray(source_affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)


def voxel_spacing_mm(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along i, j, k in mm."""
    return tuple(float(x) for x in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))
