"""The VISTA3D effect against Slicer's own rules, under SegmentEditorStandIn (a test stand-in for Slicer's Segment
Editor): its button is enabled on an empty segmentation (class prompts make their own segments), its point
markers leave the user's active markups place list as it was, and stopping the worker never blocks Slicer's
thread. No worker is started here."""

import threading

import pytest
from effect_scene import build_effect_scene
from segment_editor_standin import SegmentEditorStandIn

from VistaFinetuneLib.scene.prompt_points import MARKER_NAMES

pytestmark = pytest.mark.unit
EFFECT_FILE = __import__("pathlib").Path(__file__).resolve().parents[1] / "SegmentEditorVISTA3D" / \
    "SegmentEditorVISTA3DLib" / "SegmentEditorEffect.py"  # fmt: skip


@pytest.fixture
def effect(tmp_path, monkeypatch):
    monkeypatch.setenv("VISTAFINETUNE_HOME", str(tmp_path / "home"))
    standin = SegmentEditorStandIn(tmp_path / "slicer-temporary").install()
    try:
        scene = build_effect_scene(seed=3, scene=standin.scene)
        editorNode = scene.editor.GetSegmentEditorNode()
        editorNode.SetAndObserveSegmentationNode(scene.segmentation)
        editorNode.SetAndObserveSourceVolumeNode(scene.volume)
        effect, module = standin.createEffect(EFFECT_FILE, editorNode, scene.editor)
        effect.setupOptionsFrame()
        yield standin, scene, effect
        effect.cleanup()
        module.stopSharedWorker()
    finally:
        standin.uninstall()


def test_the_button_is_enabled_on_an_empty_segmentation_and_with_no_segment_selected(effect):
    standin, scene, effect = effect
    segmentation = scene.segmentation.GetSegmentation()
    scene.editor.GetSegmentEditorNode().SetSelectedSegmentID(None)
    assert effect.scriptedEffect.buttonEnabled()
    segmentation.RemoveAllSegments()
    assert effect.scriptedEffect.buttonEnabled()


def test_the_users_active_place_list_stays_active(effect):
    standin, scene, effect = effect
    import slicer

    own = standin.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "My landmarks")
    selection = standin.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    assert selection.GetActivePlaceNodeID() == own.GetID()  # the stand-in's Markups logic made it active
    effect.activate()
    markers = [n for n in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode", standin.scene)
               if n.GetName() in MARKER_NAMES.values()]  # fmt: skip
    assert len(markers) == 2  # the effect's markers exist ...
    assert selection.GetActivePlaceNodeID() == own.GetID()  # ... and the user's list is still the active one
    selection.SetActivePlaceNodeID(markers[0].GetID())  # even if a marker list became active meanwhile,
    effect.deactivate()
    assert selection.GetActivePlaceNodeID() == own.GetID()  # the user's is active again when the effect leaves
    assert standin.scene.IsNodePresent(own) and own.GetNumberOfControlPoints() == 0
    assert not any(standin.scene.IsNodePresent(n) for n in markers)


class SlowToCloseClient:
    """Test double for a worker client whose close() takes long (a worker finishing its request)."""

    def __init__(self) -> None:
        self.release, self.closed = threading.Event(), threading.Event()
        self.closedOn = None

    def close(self) -> None:
        self.closedOn = threading.current_thread()
        self.release.wait(10)
        self.closed.set()


def test_stopping_the_worker_leaves_slicers_thread(effect):
    standin, scene, effect = effect
    module = type(effect).__init__.__globals__  # the effect file's namespace
    slow = SlowToCloseClient()
    module["_sharedWorker"]["client"] = slow
    module["stopSharedWorker"]()  # what Slicer's aboutToQuit and a change of bundle call; returns at once
    slow.release.set()
    assert slow.closed.wait(10)
    assert slow.closedOn is not threading.main_thread()  # closed in a thread of its own, not on Slicer's
