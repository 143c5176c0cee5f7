"""The engine's own NIfTI-1 reader and writer (what Slicer's process uses: Slicer ships no nibabel), checked against
nibabel, which the job environment has: same voxels, same affine (sform, qform, neither), scaling, byte order."""

import gzip

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from VistaFinetuneLib.data.nifti import NiftiError, read_nifti, write_nifti

pytestmark = pytest.mark.unit


def oblique_affine(seed: int, flip: bool) -> np.ndarray:
    affine = np.eye(4)
    handedness = np.diag([1.0, 1.0, -1.0]) if flip else np.eye(3)
    affine[:3, :3] = Rotation.random(random_state=seed).as_matrix() @ np.diag([0.7, 1.3, 2.5]) @ handedness
    affine[:3, 3] = [10.5, -20.25, 30.0]
    return affine


@pytest.mark.parametrize(
    ("dtype", "suffix", "flip"),
    [(np.int16, ".nii.gz", False), (np.float32, ".nii", True), (np.uint8, ".nii.gz", True), (np.float64, ".nii", 0)],
)
def test_written_files_read_the_same_in_nibabel(tmp_path, dtype, suffix, flip):
    affine = oblique_affine(3, flip)
    voxels = np.random.default_rng(0).integers(0, 100, (5, 6, 7)).astype(dtype)
    path = tmp_path / f"volume{suffix}"
    write_nifti(path, voxels, affine)
    image = nib.load(path)
    assert np.array_equal(np.asarray(image.dataobj), voxels) and image.get_data_dtype() == voxels.dtype
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    np.testing.assert_allclose(image.get_qform(), affine, atol=1e-4)  # the qform says the same as the sform
    assert (int(image.header["sform_code"]), int(image.header["qform_code"])) == (1, 1)


@pytest.mark.parametrize("which", ["sform", "qform", "neither"])
def test_nibabel_files_read_with_nibabels_affine_and_scaling(tmp_path, which):
    affine = oblique_affine(5, flip=which == "qform")
    voxels = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = nib.Nifti1Image(voxels, affine)
    image.set_sform(affine if which == "sform" else None, code=1 if which == "sform" else 0)
    image.set_qform(affine if which == "qform" else None, code=1 if which == "qform" else 0)
    image.header.set_slope_inter(2.0, -5.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(image, path)
    data, read_affine = read_nifti(path)
    reference = nib.load(path)
    np.testing.assert_allclose(data, np.asarray(reference.dataobj))
    assert data.dtype.kind == "f"
    np.testing.assert_allclose(read_affine, reference.affine, atol=1e-5)


def test_big_endian_and_four_dimensional_files(tmp_path):
    voxels = np.arange(3 * 4 * 5 * 2, dtype=">i4").reshape(3, 4, 5, 2)
    image = nib.Nifti1Image(voxels, np.diag([2.0, 3.0, 4.0, 1.0]))
    image.set_data_dtype(">i4")
    nib.save(image, tmp_path / "big.nii")
    data, affine = read_nifti(tmp_path / "big.nii")
    assert data.shape == (3, 4, 5, 2) and np.array_equal(data, voxels)
    np.testing.assert_allclose(affine, np.diag([2.0, 3.0, 4.0, 1.0]))


def test_damaged_files_are_refused_with_the_reason(tmp_path):
    path = tmp_path / "volume.nii.gz"
    write_nifti(path, np.zeros((8, 8, 8), np.int16), np.eye(4))
    raw = gzip.decompress(path.read_bytes())
    (tmp_path / "short.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NiftiError, match="truncated"):
        read_nifti(tmp_path / "short.nii")
    (tmp_path / "text.nii").write_bytes(b"not a nifti file" * 40)
    with pytest.raises(NiftiError, match="NIfTI-1"):
        read_nifti(tmp_path / "text.nii")
    (tmp_path / "cut.nii.gz").write_bytes(path.read_bytes()[:60])
    with pytest.raises((EOFError, OSError)):
        read_nifti(tmp_path / "cut.nii.gz")
