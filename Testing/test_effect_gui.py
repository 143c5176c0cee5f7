"""The VISTA3D effect's own GUI code (SegmentEditorVISTA3DLib/SegmentEditorEffect.py) under the SegmentEditorStandIn:
its options panel, a click forwarded as Slicer's Segment Editor forwards it, the model list with a finished run's
class names, class prompts into new segments, and the worker stopped when Slicer quits. The worker is real (the
tiny bundle); writes and undo go through Slicer's Segment Editor logic (slicer-core).
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import vtk
from effect_scene import build_effect_scene, copy_run_with_names, xy_of
from job_python import job_python, job_python_has
from scipy import ndimage
from segment_editor_standin import SegmentEditorStandIn, SliceWidgetStandIn, clickInteractor

from VistaFinetuneLib.data.geometry import ijk_to_ras
from VistaFinetuneLib.scene.volume_grid import volume_world_affine

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not job_python_has("skimage"),
        reason="the bundle's point post-processing needs scikit-image (VistaFinetune/Resources/requirements.txt)",
    ),
]
ROOT = Path(__file__).resolve().parents[1]
EFFECT_FILE = ROOT / "SegmentEditorVISTA3D" / "SegmentEditorVISTA3DLib" / "SegmentEditorEffect.py"
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def editor(tiny_bundle_dir, smoke_run_dir, tmp_path_factory):
    standin = SegmentEditorStandIn(tmp_path_factory.mktemp("slicer-temporary")).install()
    runs = tmp_path_factory.mktemp("runs")
    copy_run_with_names(smoke_run_dir, runs, "kidney-run", {"14": "My left kidney"})
    try:
        scene = build_effect_scene(seed=21, scene=standin.scene)
        import VistaFinetune  # the module whose panel chooses the job environment, bundle and runs folder

        parameterNode = VistaFinetune.VistaFinetuneLogic().getParameterNode()
        parameterNode.jobPython = job_python()
        parameterNode.bundleDir = str(tiny_bundle_dir)
        parameterNode.runsFolder = str(runs)
        editorNode = scene.editor.GetSegmentEditorNode()
        editorNode.SetAndObserveSegmentationNode(scene.segmentation)
        editorNode.SetAndObserveSourceVolumeNode(scene.volume)
        editorNode.SetSelectedSegmentID(scene.segment_id)
        effect, module = standin.createEffect(EFFECT_FILE, editorNode, scene.editor)
        effect.setupOptionsFrame()
        effect.activate()
        yield standin, scene, effect, module, runs
        effect.cleanup()
        module.stopSharedWorker()
    finally:
        standin.uninstall()


def waitForResult(standin, effect) -> str:
    assert standin.processEventsUntil(lambda: not effect.pollTimer.isActive(), TIMEOUT_S), "no result in time"
    return effect.statusLabel.text


def test_options_panel_lists_models_and_classes_with_the_users_names(editor, tmp_path):
    standin, scene, effect, module, runs = editor
    assert effect.scriptedEffect.name == "VISTA3D"
    titles = [effect.modelSelector.itemText(i) for i in range(effect.modelSelector.count)]
    assert titles[0].startswith("Pretrained") and len(titles) == 2
    assert "kidney-run" in titles[1] and "liver, spleen, My left kidney" in titles[1] and "formal Dice" in titles[1]
    effect.modelSelector.setCurrentIndex(1)
    # The run's classes come first under the user's names, tagged "finetuned" when the run's checkpoint is used.
    improved = json.loads((runs / "kidney-run" / "output.json").read_text())["output"]["recommended"] == "finetuned"
    tag = ", finetuned" if improved else ""
    expected = f"My left kidney (14{tag})"
    listed = [effect.classList.item(i).text() for i in range(effect.classList.count)]
    assert listed[:3] == [f"liver (1{tag})", f"spleen (3{tag})", expected]  # mapping 1->1, 2->3, 3->14
    assert ("not improved" in titles[1]) != improved
    effect.classFilter.setText("kidney")
    shown = [effect.classList.item(i).text() for i in range(effect.classList.count)]
    assert expected in shown and "kidney (2)" in shown and "liver (1)" not in shown
    effect.classFilter.setText("")
    frame = effect.scriptedEffect.optionsFrame()
    frame.resize(460, 420)
    frame.show()
    standin.application.processEvents()
    assert frame.width() <= 480, "a long model title widens the options panel"
    picture = frame.grab()
    assert picture.save(str(tmp_path / "effect.png"))
    if os.environ.get("VISTAFINETUNE_SCREENSHOTS"):  # where the README's picture is made: docs/effect.png
        assert picture.save(str(Path(os.environ["VISTAFINETUNE_SCREENSHOTS"]) / "effect.png"))
    effect.modelSelector.setCurrentIndex(0)


def test_a_click_in_a_slice_view_updates_the_selected_segment(editor):
    standin, scene, effect, module, runs = editor
    liver = scene.labels == 1
    depth = ndimage.distance_transform_edt(liver)
    inside = tuple(int(v) for v in np.unravel_index(depth.argmax(), depth.shape))
    centre = ijk_to_ras(volume_world_affine(scene.volume), np.asarray(inside, dtype=float))
    sliceNode = scene.slice_node("Axial", centre)
    view = SliceWidgetStandIn(sliceNode)
    xy = xy_of(sliceNode, centre)
    # Slicer's own right-clicks and Ctrl+clicks are left alone.
    assert not effect.processInteractionEvents(clickInteractor(xy), vtk.vtkCommand.RightButtonPressEvent, view)
    assert not effect.processInteractionEvents(clickInteractor(xy, control=True), vtk.vtkCommand.LeftButtonPressEvent,
                                               view)  # fmt: skip
    assert effect.processInteractionEvents(clickInteractor(xy), vtk.vtkCommand.LeftButtonPressEvent, view)
    assert effect.pollTimer.isActive() and effect.cancelButton.enabled  # the GUI did not wait
    status = waitForResult(standin, effect)
    assert "voxels changed" in status and "worker" in status, status
    assert scene.segment_on_volume_grid()[inside]
    assert effect.scriptedEffect.undoStates == 1
    positive = effect.markers.node(True)
    assert positive.GetNumberOfControlPoints() == 1
    # Shift+click: a negative point.
    assert effect.processInteractionEvents(clickInteractor(xy, shift=True), vtk.vtkCommand.LeftButtonPressEvent, view)
    waitForResult(standin, effect)
    assert effect.markers.node(False).GetNumberOfControlPoints() == 1
    assert not scene.segment_on_volume_grid()[inside]


def test_segment_classes_compare_and_quitting_stops_the_worker(editor):
    standin, scene, effect, module, runs = editor
    effect.classFilter.setText("liver")
    assert effect.classList.item(0).text() == "liver (1)"
    effect.classList.item(0).setSelected(True)
    effect.intoSelectedCheckBox.setChecked(False)
    before = scene.segmentation.GetSegmentation().GetNumberOfSegments()
    effect.applyButton.click()
    status = waitForResult(standin, effect)
    assert "voxels changed" in status, status
    segmentation = scene.segmentation.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == before + 1
    newId = segmentation.GetNthSegmentID(before)
    assert segmentation.GetSegment(newId).GetName() == "liver"
    liver = scene.labels == 1
    assert (scene.segment_on_volume_grid(newId) & liver).sum() > 0.5 * liver.sum()
    # Compare: with a run that improved, two segmentations; with one that did not, a clear refusal.
    effect.modelSelector.setCurrentIndex(1)
    effect.classList.clearSelection()
    improved = json.loads((runs / "kidney-run" / "output.json").read_text())["output"]["recommended"] == "finetuned"
    effect.compareButton.click()
    if improved:
        assert "pretrained and finetuned in" in waitForResult(standin, effect)
        names = {scene.scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode").GetName()
                 for i in range(scene.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))}  # fmt: skip
        assert {"Synthetic CT — VISTA3D pretrained", "Synthetic CT — VISTA3D finetuned"} <= names
    else:
        assert "finetuned run that improved" in effect.statusLabel.text
    process = effect.logic.client.connection.process
    standin.slicer.app.aboutToQuit.emit()  # the worker is stopped in a thread: Slicer does not wait for it
    assert standin.processEventsUntil(lambda: process.poll() is not None, 60), "the worker still runs after quitting"
