import logging
import os

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import *

MINIMUM_SLICER_VERSION = (5, 10)


class SegmentEditorVISTA3D(ScriptedLoadableModule):
    """Registers the VISTA3D Segment Editor effect (a hidden module, as Slicer's scripted effects do)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Segment Editor VISTA3D")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["VistaFinetune developers"]
        self.parent.hidden = True
        self.parent.helpText = _(
            "Adds the VISTA3D effect to the Segment Editor: class prompts and positive/negative clicks answered by "
            "the pretrained or a finetuned VISTA3D model (VistaFinetune extension)."
        )
        self.parent.acknowledgementText = _("Part of the VistaFinetune extension.")
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        version = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
        if version < MINIMUM_SLICER_VERSION:  # vtkSlicerSegmentEditorLogic, which the effect uses, is new in 5.10
            logging.error(
                _("The VISTA3D Segment Editor effect needs 3D Slicer {minimum} or newer; this is Slicer {version}. "
                  "It is not registered.").format(minimum="{}.{}".format(*MINIMUM_SLICER_VERSION),
                                                  version="{}.{}".format(*version))
            )  # fmt: skip
            return
        import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects

        instance = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
        effectFilename = os.path.join(os.path.dirname(__file__), self.__class__.__name__ + "Lib/SegmentEditorEffect.py")
        instance.setPythonSource(effectFilename.replace("\\", "/"))
        instance.self().register()
