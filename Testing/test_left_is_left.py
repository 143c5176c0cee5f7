"""Left is left: RAS +x is the patient's right, and every picture is radiological (patient's right on the left).

Sides are judged from what was saved: NIfTI files are written, read back with nibabel, and world positions come
from the file's affine through ``nibabel.affines.apply_affine`` (not from the engine's own tables or functions).
"""

import subprocess
import sys

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine

from VistaFinetuneLib.data import geometry, synthetic
from VistaFinetuneLib.review import figures as review_figures

pytestmark = pytest.mark.unit

SHAPE = (40, 36, 24)


def rotation(axis: int, degrees: float) -> np.ndarray:
    """A 3x3 rotation about world axis ``axis``."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    i, j = [k for k in range(3) if k != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def storage_affine(order: str) -> np.ndarray:
    """A voxel-to-RAS affine for one way scanners store volumes."""
    linear = {
        "identity": np.diag([2.0, 2.0, 2.0]),
        "flipped-i": np.diag([-2.0, 2.0, 2.0]),
        "lps-like": np.diag([-2.0, -2.0, 2.0]),
        "oblique": rotation(2, 20.0) @ rotation(0, 12.0) @ np.diag([-2.0, -2.0, 2.0]),
        "anisotropic-permuted": np.array([[0.0, -0.7, 0.0], [0.0, 0.0, -5.0], [0.8, 0.0, 0.0]]),
    }[order]
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = (13.0, -170.0, -420.0)
    return affine


ORDERS = ["identity", "flipped-i", "lps-like", "oblique", "anisotropic-permuted"]


def saved_right_half_volume(order: str, tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """A volume bright where RAS x is right of its centre, saved as NIfTI and read back: (array, file affine)."""
    affine = storage_affine(order)
    world = apply_affine(affine, np.indices(SHAPE).reshape(3, -1).T)
    centre = apply_affine(affine, (np.asarray(SHAPE) - 1) / 2.0)
    image = np.where(world[:, 0] > centre[0], 400, -1000).reshape(SHAPE).astype(np.int16)
    path = tmp_path / f"{order}.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), path)
    saved = nib.load(path)
    return np.asarray(saved.dataobj), saved.affine


def panels(figure) -> dict[tuple[int, int], tuple]:
    """(row, column) -> (axes, (top, bottom, left, right) pixel box a few pixels inside the frame)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure).draw()
    height = int(round(figure.get_figheight() * figure.dpi))
    boxes = {}
    for ax in figure.axes:
        spec, box = ax.get_subplotspec(), ax.get_window_extent()
        pixels = (height - int(box.y1) + 3, height - int(box.y0) - 3, int(box.x0) + 3, int(box.x1) - 3)
        boxes[(spec.rowspan.start, spec.colspan.start)] = (ax, pixels)
    return boxes


# --- the one world <-> voxel function ----------------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
def test_world_and_voxel_conversions_agree_with_nibabel_and_invert_each_other(order):
    affine = storage_affine(order)
    ijk = np.array([[0.0, 0.0, 0.0], [3.5, 7.0, 11.25], [39.0, 35.0, 23.0]])
    ras = geometry.ijk_to_ras(affine, ijk)
    assert np.allclose(ras, apply_affine(affine, ijk))
    assert np.allclose(geometry.ras_to_ijk(affine, ras), ijk)
    assert np.allclose(geometry.ijk_to_ras(affine, ijk[1]), ras[1])  # one point as a (3,) array
    x, y, z = geometry.voxel_centres_ras(affine, SHAPE)
    assert np.allclose((x[3, 7, 11], y[3, 7, 11], z[3, 7, 11]), apply_affine(affine, (3, 7, 11)))
    assert np.allclose(geometry.voxel_spacing_mm(affine), np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def test_voxel_to_voxel_maps_target_indices_onto_the_same_world_point_of_the_source():
    source, target = storage_affine("oblique"), storage_affine("anisotropic-permuted")
    target_ijk = np.array([5.0, 6.0, 7.0])
    source_ijk = apply_affine(geometry.voxel_to_voxel(source, target), target_ijk)
    assert np.allclose(apply_affine(source, source_ijk), apply_affine(target, target_ijk))


# --- the phantoms ------------------------------------------------------------------------------------------


def test_saved_phantoms_put_the_liver_on_the_patient_right_and_the_spleen_and_left_kidney_on_the_left(tmp_path):
    spec = synthetic.PhantomSpec(label_values={"liver": 1, "spleen": 2, "left kidney": 3, "lesion": 4})
    items = synthetic.write_dataset(tmp_path, num_cases=3, seed=11, spec=spec)
    for item in items:
        image, label = nib.load(tmp_path / item["image"]), nib.load(tmp_path / item["label"])
        assert np.allclose(image.affine, label.affine)
        values = np.asarray(label.dataobj)
        centre_x = apply_affine(label.affine, (np.asarray(values.shape) - 1) / 2.0)[0]
        x = {v: apply_affine(label.affine, np.argwhere(values == v))[:, 0].mean() - centre_x for v in (1, 2, 3, 4)}
        assert x[1] > 10 and x[4] > 10, item  # liver and its lesion: patient right, +x
        assert x[2] < -10 and x[3] < -10, item  # spleen and left kidney: patient left, -x


# --- the pictures ------------------------------------------------------------------------------------------


def test_display_directions_are_those_of_slicers_slice_views():
    """Screen right and screen up of each displayed plane equal the SliceToRAS columns of Slicer's presets."""
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    shape = (5, 6, 7)
    world = np.indices(shape)  # a canonical RAS volume: index k grows towards +x, +y, +z
    for plane in review_figures.PLANES:
        slice_node.SetOrientation(plane.capitalize())
        slice_to_ras = slice_node.GetSliceToRAS()
        screen_right = [slice_to_ras.GetElement(r, 0) for r in range(3)]
        screen_up = [slice_to_ras.GetElement(r, 1) for r in range(3)]
        cut = [review_figures.display_slice(world[axis], plane, (2, 3, 3)) for axis in range(3)]
        rightward = [np.sign(c[0, -1] - c[0, 0]) for c in cut]  # change along a row, left to right
        upward = [np.sign(c[0, 0] - c[-1, 0]) for c in cut]  # change along a column, bottom to top
        assert rightward == pytest.approx(screen_right), plane
        assert upward == pytest.approx(screen_up), plane


@pytest.mark.parametrize("order", ORDERS)
def test_the_patient_right_half_is_on_the_screens_left_under_r_in_every_axial_and_coronal_panel(order, tmp_path):
    image, affine = saved_right_half_volume(order, tmp_path)
    truth = np.zeros(image.shape, dtype=np.uint8)
    args = (image, affine, truth, {"pretrained": truth, "finetuned": truth}, 1)
    png = review_figures.case_montage(*args, tmp_path / "montage.png", title=order)
    rgb = mpimg.imread(png)[..., :3]
    checked = 0
    for (row, _), (ax, (top, bottom, left, right)) in panels(review_figures.montage_figure(*args, title=order)).items():
        plane = review_figures.PLANES[row]
        if plane == "sagittal":
            continue
        panel = rgb[top:bottom, left:right].mean(axis=2)
        bright_cols = np.nonzero(panel > 0.8)[1]
        assert len(bright_cols) > 100, (order, plane)
        assert np.mean(bright_cols < panel.shape[1] / 2) > 0.9, (order, plane)  # right half of the body: left
        letters = {t.get_text(): t.get_window_extent().x0 for t in ax.texts}
        if letters:  # the orientation letters are on the first column's panels
            assert letters["R"] < left + (right - left) / 2 < letters["L"], (order, plane)
        checked += 1
    assert checked == 6


def test_review_command_on_an_lps_stored_clinical_ct_draws_the_liver_on_the_screens_left(tmp_path):
    """A CT stored like most scanners' (array axes towards patient Left, Posterior), reviewed from the command line."""
    shape = (64, 56, 20)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-0.78, -0.78, 2.5])
    affine[:3, 3] = (24.9, 21.8, -310.0)
    world = apply_affine(affine, np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    centre = apply_affine(affine, (np.asarray(shape) - 1) / 2.0)
    liver = ((world - centre - (12.0, 0.0, 0.0)) / (10.0, 9.0, 15.0)) ** 2
    label = (liver.sum(axis=-1) <= 1.0).astype(np.uint8)
    ct = np.where(label == 1, 60, -100).astype(np.int16)
    for folder, array in (("ct", ct), ("gt", label)):
        (tmp_path / folder).mkdir()
        nifti = nib.Nifti1Image(array, affine)
        nifti.set_qform(affine, code=1)
        nifti.set_sform(affine, code=1)
        nib.save(nifti, tmp_path / folder / "patient 01.nii.gz")
    gt, out = tmp_path / "gt", tmp_path / "review"
    command = [sys.executable, "-m", "VistaFinetuneLib", "review", "--pred-a", gt, "--pred-b", gt]
    command += ["--ground-truth", gt, "--images", tmp_path / "ct", "--output-dir", out]
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rgb = mpimg.imread(out / "montages" / "patient 01_class1.png")[..., :3]
    saved = nib.load(tmp_path / "ct" / "patient 01.nii.gz")
    figure = review_figures.montage_figure(
        np.asarray(saved.dataobj),
        saved.affine,
        label,
        {"a": label, "b": label},
        1,
        title="patient 01 — liver (class 1)",
    )
    for (row, _), (_, (top, bottom, left, right)) in panels(figure).items():
        if review_figures.PLANES[row] == "sagittal":
            continue
        r, g, b = (rgb[top:bottom, left:right, k] for k in range(3))
        outline_cols = np.nonzero((r > 0.8) & (g > 0.3) & (b < 0.3))[1]  # yellow truth / orange prediction outline
        assert len(outline_cols) > 10
        assert outline_cols.mean() < (right - left) / 2  # the liver, at +x, is drawn left of the middle
