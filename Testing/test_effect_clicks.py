"""The VISTA3D effect's click -> voxel -> segment-write path on real MRML nodes (slicer-core, no worker).

A click's display position goes through a real slice node (axial, sagittal, coronal and an oblique reformat) to the
voxel of a synthetic CT on a rotated, anisotropic grid under a parent transform; Slicer's own
``vtkSlicerSegmentEditorLogic.XyToIjk`` is the reference. Writes go through Slicer's Segment Editor logic.
"""

import numpy as np
import pytest
import slicer
import vtk
from effect_scene import build_effect_scene, oriented_volume_image, xy_of

from VistaFinetuneLib.data.geometry import ijk_to_ras, ras_to_ijk
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.interactive.point_session import PointSession
from VistaFinetuneLib.scene.nodes import matrix_to_array
from VistaFinetuneLib.scene.prompt_points import PromptMarkers, click_to_prompt
from VistaFinetuneLib.scene.segment_update import apply_with_editor_logic, changed_voxel_writes, segment_fingerprint
from VistaFinetuneLib.scene.volume_grid import volume_world_affine

pytestmark = pytest.mark.unit

ORIENTATIONS = ("Axial", "Sagittal", "Coronal", "Oblique")


@pytest.fixture(scope="module")
def effect_scene():
    return build_effect_scene()


def liver_voxels(labels: np.ndarray, count: int, seed: int = 0) -> list[tuple[int, int, int]]:
    found = np.argwhere(labels == 1)
    picks = np.random.default_rng(seed).choice(len(found), size=count, replace=False)
    return [tuple(int(v) for v in found[p]) for p in picks]


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_click_finds_the_voxel_under_the_cursor_through_the_parent_transform(effect_scene, orientation):
    world = volume_world_affine(effect_scene.volume)
    transform = effect_scene.volume.GetParentTransformNode()
    image = oriented_volume_image(effect_scene.volume)
    for voxel in liver_voxels(effect_scene.labels, 5):
        centre = ijk_to_ras(world, np.asarray(voxel, dtype=float))
        slice_node = effect_scene.slice_node(orientation, centre)
        xy = xy_of(slice_node, centre)
        prompt = click_to_prompt(slice_node, xy, effect_scene.volume, positive=True)
        assert prompt.ijk == voxel
        np.testing.assert_allclose(prompt.ras, centre, atol=1e-6)
        # Slicer's own conversion, which the Segment Editor's effects use, agrees.
        reference = [0, 0, 0]
        slicer.vtkSlicerSegmentEditorLogic.XyToIjk(list(xy), reference, slice_node, image, transform)
        assert tuple(reference) == voxel
        # Ignoring the parent transform would land far from it.
        untransformed = vtk.vtkMatrix4x4()
        effect_scene.volume.GetIJKToRASMatrix(untransformed)
        local = ras_to_ijk(matrix_to_array(untransformed), centre)
        assert np.abs(local - np.asarray(voxel)).max() > 3


def test_click_between_voxel_centres_rounds_to_the_nearest_voxel(effect_scene):
    world = volume_world_affine(effect_scene.volume)
    voxel = liver_voxels(effect_scene.labels, 1, seed=3)[0]
    near = ijk_to_ras(world, np.asarray(voxel) + np.array([0.4, -0.3, 0.0]))
    slice_node = effect_scene.slice_node("Axial", near)
    assert click_to_prompt(slice_node, xy_of(slice_node, near), effect_scene.volume, positive=False).ijk == voxel


def test_click_outside_the_volume_names_it(effect_scene):
    world = volume_world_affine(effect_scene.volume)
    outside = ijk_to_ras(world, np.array([-6.0, 10.0, 10.0]))
    slice_node = effect_scene.slice_node("Axial", outside)
    with pytest.raises(UserError, match="outside volume 'Synthetic CT'"):
        click_to_prompt(slice_node, xy_of(slice_node, outside), effect_scene.volume, positive=True)


def test_markers_show_positive_and_negative_points_at_the_clicked_voxels(effect_scene):
    world = volume_world_affine(effect_scene.volume)
    voxels = liver_voxels(effect_scene.labels, 3, seed=5)
    points = []
    for index, voxel in enumerate(voxels):
        centre = ijk_to_ras(world, np.asarray(voxel, dtype=float))
        slice_node = effect_scene.slice_node("Coronal", centre)
        points.append(click_to_prompt(slice_node, xy_of(slice_node, centre), effect_scene.volume, index != 1))
    markers = PromptMarkers(effect_scene.scene)
    markers.show(points)
    positive, negative = markers.node(True), markers.node(False)
    assert (positive.GetNumberOfControlPoints(), negative.GetNumberOfControlPoints()) == (2, 1)
    position = [0.0, 0.0, 0.0]
    negative.GetNthControlPointPositionWorld(0, position)
    np.testing.assert_allclose(position, points[1].ras, atol=1e-4)
    assert (
        positive.GetLocked()
        and positive.GetDisplayNode().GetSelectedColor() != negative.GetDisplayNode().GetSelectedColor()
    )
    markers.show(points[:1])
    assert (positive.GetNumberOfControlPoints(), negative.GetNumberOfControlPoints()) == (1, 0)
    markers.remove()
    assert not effect_scene.scene.IsNodePresent(positive)


def box_mask(shape, lower, upper):
    mask = np.zeros(shape, dtype=bool)
    mask[lower[0] : upper[0], lower[1] : upper[1], lower[2] : upper[2]] = True
    return mask


def test_writes_change_only_what_the_new_prediction_changed_and_undo_takes_them_back():
    scene = build_effect_scene(seed=12)
    shape = scene.labels.shape
    painted = box_mask(shape, (2, 2, 2), (8, 8, 6))  # the user's own voxels, far from the predictions
    writes = changed_voxel_writes(None, painted, scene.volume, scene.segmentation)
    apply_with_editor_logic(scene.editor, scene.segmentation, {scene.segment_id: writes})
    np.testing.assert_array_equal(scene.segment_on_volume_grid(), painted)
    session = PointSession(("test",))
    session.sync(segment_fingerprint(scene.segmentation, scene.segment_id))
    first = box_mask(shape, (20, 20, 10), (34, 30, 20))
    second = box_mask(shape, (24, 18, 12), (38, 28, 22))  # grows one way, shrinks the other
    for prediction in (first, second):
        writes = changed_voxel_writes(session.previous_prediction(), prediction, scene.volume, scene.segmentation)
        if prediction is second:
            assert {w.mode for w in writes} == {"add", "remove"}
            assert sum(w.voxels for w in writes) == int((first ^ second).sum())
        apply_with_editor_logic(scene.editor, scene.segmentation, {scene.segment_id: writes})
        session.record((), prediction, segment_fingerprint(scene.segmentation, scene.segment_id))
        np.testing.assert_array_equal(scene.segment_on_volume_grid(), painted | prediction)
    # The Segment Editor's undo restores the state after the first prediction; the session follows it.
    scene.editor.Undo()
    np.testing.assert_array_equal(scene.segment_on_volume_grid(), painted | first)
    assert session.sync(segment_fingerprint(scene.segmentation, scene.segment_id))
    np.testing.assert_array_equal(session.previous_prediction(), first)
    # Undoing the first prediction too brings the session back to its start.
    scene.editor.Undo()
    np.testing.assert_array_equal(scene.segment_on_volume_grid(), painted)
    assert session.sync(segment_fingerprint(scene.segmentation, scene.segment_id))
    assert session.previous_prediction() is None and len(session.steps) == 1
    # A state the session never saw (here: before the user's painting) starts it afresh.
    scene.editor.Undo()
    assert not scene.segment_on_volume_grid().any()
    session.record((), first, "a later state")
    assert not session.sync(segment_fingerprint(scene.segmentation, scene.segment_id))
    assert session.previous_prediction() is None and len(session.steps) == 1


def test_writes_land_at_the_same_world_position_in_a_segmentation_under_another_transform():
    scene = build_effect_scene(seed=13, segmentation_under_volume_transform=False)
    prediction = scene.labels == 1
    writes = changed_voxel_writes(None, prediction, scene.volume, scene.segmentation)
    apply_with_editor_logic(scene.editor, scene.segmentation, {scene.segment_id: writes})
    found = scene.segment_on_volume_grid()
    dice = 2 * (found & prediction).sum() / (found.sum() + prediction.sum())
    assert dice > 0.9  # resampled onto a grid rotated against the volume's: only the surface voxels may differ
    assert found[~prediction].mean() < 0.01
