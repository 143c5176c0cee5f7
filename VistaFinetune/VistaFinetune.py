import importlib
import os
import sys

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

ENGINE_PACKAGE = "VistaFinetuneLib"


#
# VistaFinetune
#


class VistaFinetune(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VistaFinetune")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["VistaFinetune developers"]
        self.parent.helpText = _(
            "Finetune NVIDIA's VISTA3D (NV-Segment-CT) CT segmentation model on your own CT images and "
            "segmentations, using the MONAI <i>vista3d</i> bundle, then compare the pretrained and finetuned "
            "predictions. The panel is still under construction; the headless engine "
            "(<code>vista-finetune</code> or <code>python -m VistaFinetuneLib</code>) already runs from a terminal. "
            'See the <a href="https://github.com/vistafinetune/SlicerVistaFinetune#readme">README</a> for details.'
        )
        self.parent.acknowledgementText = _(
            'This extension builds on <a href="https://monai.io">MONAI</a> and its model zoo bundle of '
            'NVIDIA\'s VISTA3D model, and on <a href="https://www.slicer.org">3D Slicer</a>. '
            "VISTA3D and its weights are provided by NVIDIA under their own license terms."
        )


#
# VistaFinetuneWidget
#


class VistaFinetuneWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Placeholder panel: the inputs and controls exist, but finetuning is not wired to them yet."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VistaFinetune.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VistaFinetuneLogic()

        # Nothing runs from the panel yet, so the controls stay disabled rather than pretending to work.
        notYet = _("Not available in the panel yet; use the headless engine from a terminal.")
        self.ui.startButton.enabled = False
        self.ui.startButton.toolTip = notYet
        self.ui.cancelButton.enabled = False
        self.ui.cancelButton.toolTip = notYet
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = self.statusText()

    def statusText(self) -> str:
        try:
            version = self.logic.engineVersion()
            location = self.logic.enginePath()
        except (ImportError, AttributeError, OSError) as error:  # report a broken install, do not hide it
            return _("This panel is under construction. The headless engine could not be loaded: {error}").format(
                error=error
            )
        return _(
            "This panel is under construction. The headless engine (version {version}) is available from a "
            "terminal as 'vista-finetune' or 'python -m VistaFinetuneLib' (package folder: {location})."
        ).format(version=version, location=location)

    def cleanup(self) -> None:
        self.removeObservers()

    def onReload(self) -> None:
        # Forget the engine package too, so that edits under VistaFinetuneLib are picked up on reload.
        for name in [n for n in sys.modules if n == ENGINE_PACKAGE or n.startswith(ENGINE_PACKAGE + ".")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)


#
# VistaFinetuneLogic
#


class VistaFinetuneLogic(ScriptedLoadableModuleLogic):
    """Thin facade over the headless engine package VistaFinetuneLib.

    VistaFinetuneLib never imports torch or monai at import time, so using this logic keeps Slicer light;
    the heavy work runs in separate job processes started by the engine.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    @staticmethod
    def engine():
        return importlib.import_module(ENGINE_PACKAGE)

    def engineVersion(self) -> str:
        return self.engine().__version__

    def enginePath(self) -> str:
        return os.path.dirname(os.path.abspath(self.engine().__file__))


#
# VistaFinetuneTest
#


class VistaFinetuneTest(ScriptedLoadableModuleTest):
    """Tests that run inside Slicer (Reload & Test, or ctest on the Slicer extensions factory)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_engineImportsWithoutTorch()

    def test_engineImportsWithoutTorch(self) -> None:
        self.delayDisplay("Importing the headless engine")

        def isEngineModule(name: str) -> bool:
            return name == ENGINE_PACKAGE or name.startswith(ENGINE_PACKAGE + ".")

        # Import the engine afresh (it may already be loaded by the widget), then put the old modules back.
        previous = {name: module for name, module in sys.modules.items() if isEngineModule(name)}
        for name in previous:
            del sys.modules[name]
        before = set(sys.modules)
        try:
            engine = importlib.import_module(ENGINE_PACKAGE)
            added = set(sys.modules) - before
        finally:
            for name in [n for n in sys.modules if isEngineModule(n)]:
                del sys.modules[name]
            sys.modules.update(previous)

        heavy = sorted(name for name in added if name.split(".")[0] in ("torch", "monai"))
        self.assertEqual(heavy, [], "importing VistaFinetuneLib must not import torch or monai")
        self.assertTrue(engine.__version__)
        self.assertEqual(VistaFinetuneLogic().engineVersion(), engine.__version__)
        self.delayDisplay("Test passed")
