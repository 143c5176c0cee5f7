"""SegmentEditorStandIn: a test stand-in for the parts of Slicer's Segment Editor that a scripted effect uses.

It extends :class:`slicer_app_standin.SlicerAppStandIn` (``qt`` on PySide6, ``slicer.mrmlScene`` on slicer-core)
with what only the Slicer application has:

- ``SegmentEditorEffects.AbstractScriptedSegmentEditorEffect`` and a ``scriptedEffect`` adaptor whose writes and
  undo go through Slicer's real ``vtkSlicerSegmentEditorLogic`` (the class the Slicer >= 5.10 adaptor delegates to);
  its options frame is a plain widget the effect's options are added to;
- ``slicer.qSlicerSegmentEditorAbstractEffect.ModificationMode*``; ``slicer.app.temporaryPath`` and
  ``slicer.app.aboutToQuit``;
- a slice widget (``className()``, ``mrmlSliceNode()``) and a real VTK interactor that carries a click's display
  position and modifier keys, as Slicer's Segment Editor forwards them to ``processInteractionEvents``.

Registration, cloning, the real event routing, rendering and PythonQt itself can only be checked in Slicer.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import slicer
import vtk
from PySide6 import QtCore, QtWidgets
from slicer_app_standin import SlicerAppStandIn

# The adaptor's ModificationMode* constants have the values of the logic's (Set, Add, Remove, RemoveAll).
MODIFICATION_MODES = {
    name: getattr(slicer.vtkSlicerSegmentEditorLogic, name)
    for name in ("ModificationModeSet", "ModificationModeAdd", "ModificationModeRemove", "ModificationModeRemoveAll")
}


class SignalStandIn(QtCore.QObject):
    """A Qt signal object, for ``slicer.app.aboutToQuit.connect(slot)``."""

    fired = QtCore.Signal()

    def connect(self, slot) -> None:
        self.fired.connect(slot)

    def emit(self) -> None:
        self.fired.emit()


class AbstractScriptedSegmentEditorEffect:
    """Stand-in for SegmentEditorEffects.AbstractScriptedSegmentEditorEffect: keeps the adaptor."""

    def __init__(self, scriptedEffect) -> None:
        self.scriptedEffect = scriptedEffect


class ScriptedEffectStandIn:
    """The ``scriptedEffect`` adaptor, backed by a real segment editor node and logic of the stand-in's scene."""

    def __init__(self, scene, editorNode, editorLogic) -> None:
        self.scene = scene
        self.editorNode = editorNode
        self.editorLogic = editorLogic
        self.name = ""
        self.title = ""
        self.perSegment = True
        self.requireSegments = True
        self.frame = QtWidgets.QWidget()
        self.form = QtWidgets.QFormLayout(self.frame)
        self.undoStates = 0

    def parameterSetNode(self):
        return self.editorNode

    def buttonEnabled(self) -> bool:
        """Whether the Segment Editor enables the effect's button (qMRMLSegmentEditorWidget's rule)."""
        segmentation = self.editorNode.GetSegmentationNode()
        available = segmentation is not None and segmentation.GetSegmentation().GetNumberOfSegments() > 0
        selected = bool(self.editorNode.GetSelectedSegmentID())
        return not self.requireSegments or (available and (selected or not self.perSegment))

    def optionsFrame(self):
        return self.frame

    def addOptionsWidget(self, widgetOrLayout) -> None:
        if isinstance(widgetOrLayout, QtWidgets.QLayout):
            self.form.addRow(widgetOrLayout)
        else:
            self.form.addRow(widgetOrLayout)

    def addLabeledOptionsWidget(self, label: str, widgetOrLayout) -> None:
        self.form.addRow(label, widgetOrLayout)

    def saveStateForUndo(self) -> None:
        self.editorLogic.SaveStateForUndo()
        self.undoStates += 1

    def _sync(self) -> None:
        self.editorLogic.SetSegmentationNode(self.editorNode.GetSegmentationNode())
        self.editorLogic.SetSourceVolumeNode(self.editorNode.GetSourceVolumeNode())
        self.editorLogic.SetCurrentSegmentID(self.editorNode.GetSelectedSegmentID())

    def modifySelectedSegmentByLabelmap(self, labelmap, mode) -> None:
        self._sync()
        self.editorLogic.ModifySegmentByLabelmap(
            self.editorNode.GetSegmentationNode(), self.editorNode.GetSelectedSegmentID(), labelmap, mode,
            self.perSegment, False,
        )  # fmt: skip

    def modifySegmentByLabelmap(self, segmentationNode, segmentId, labelmap, mode) -> None:
        self._sync()
        self.editorLogic.ModifySegmentByLabelmap(segmentationNode, segmentId, labelmap, mode, self.perSegment,
                                                 False)  # fmt: skip


class SliceWidgetStandIn:
    """What processInteractionEvents asks of a slice view widget."""

    def __init__(self, sliceNode) -> None:
        self.sliceNode = sliceNode

    def className(self) -> str:
        return "qMRMLSliceWidget"

    def mrmlSliceNode(self):
        return self.sliceNode


def clickInteractor(xy: tuple[float, float], shift: bool = False, control: bool = False):
    """A real VTK interactor holding a click's display position (pixels) and modifier keys."""
    interactor = vtk.vtkGenericRenderWindowInteractor()
    interactor.SetEventInformation(int(round(xy[0])), int(round(xy[1])), int(control), int(shift))
    return interactor


class SegmentEditorStandIn(SlicerAppStandIn):
    """SlicerAppStandIn plus the Segment Editor pieces above, on the stand-in's scene."""

    def __init__(self, temporaryPath: Path) -> None:
        super().__init__()
        self.temporaryPath = Path(temporaryPath)

    def install(self) -> SegmentEditorStandIn:
        super().install()
        effects = types.ModuleType("SegmentEditorEffects", "SegmentEditorStandIn: the scripted effect base class")
        effects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
        effects.__all__ = ["AbstractScriptedSegmentEditorEffect"]
        self._savedModules.setdefault("SegmentEditorEffects", sys.modules.get("SegmentEditorEffects"))
        sys.modules["SegmentEditorEffects"] = effects
        self._set(self.slicer, "qSlicerSegmentEditorAbstractEffect", types.SimpleNamespace(**MODIFICATION_MODES))
        self.slicer.app.temporaryPath = str(self.temporaryPath)
        self.slicer.app.aboutToQuit = SignalStandIn()
        return self

    def createEffect(self, effectFile: Path, editorNode, editorLogic):
        """Load an effect file as setPythonSource does (class SegmentEditorEffect) with an adaptor on the given
        segment editor node and logic (of the stand-in's scene)."""
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"{Path(effectFile).parent.name}_standin", effectFile)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        adaptor = ScriptedEffectStandIn(self.scene, editorNode, editorLogic)
        return module.SegmentEditorEffect(adaptor), module
