import os
from pathlib import Path

import qt
import slicer
import vtk
from SegmentEditorEffects import *
from slicer.i18n import tr as _

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.interactive.class_list import model_classes, point_rule, search_classes
from VistaFinetuneLib.interactive.models import finished_run_choices, pretrained_choice
from VistaFinetuneLib.interactive.worker_client import WorkerClient
from VistaFinetuneLib.panel.background import close_in_background
from VistaFinetuneLib.scene.layout import register_layout, show_comparison
from VistaFinetuneLib.scene.predictions import ClassNaming, import_comparison
from VistaFinetuneLib.scene.prompt_logic import PromptLogic, add_class_segment, segment_class
from VistaFinetuneLib.scene.prompt_points import PromptMarkers, click_to_prompt

POLL_MS = 50

# One worker for every copy of the effect (each Segment Editor widget clones it), stopped when Slicer quits.
_sharedWorker = {"client": None, "key": None, "quitConnected": False}


def sharedWorkerClient(python, bundleDir):
    """The warm worker's client for this interpreter and bundle, started on first use."""
    key = (python, str(bundleDir))
    if _sharedWorker["client"] is not None and _sharedWorker["key"] != key:
        stopSharedWorker()
    if _sharedWorker["client"] is None:
        outputDir = Path(slicer.app.temporaryPath) / "VISTA3D-worker"
        _sharedWorker["client"] = WorkerClient(python, Path(bundleDir), outputDir)
        _sharedWorker["key"] = key
        if not _sharedWorker["quitConnected"]:
            slicer.app.aboutToQuit.connect(stopSharedWorker)
            _sharedWorker["quitConnected"] = True
    return _sharedWorker["client"]


def stopSharedWorker():
    client = _sharedWorker["client"]
    _sharedWorker["client"] = None
    _sharedWorker["key"] = None
    if client is not None:
        close_in_background(client)  # Slicer does not wait for the worker process to exit


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """VISTA3D: class prompts and positive/negative clicks answered by the pretrained or a finetuned VISTA3D.

    The effect is a thin GUI over VistaFinetuneLib.scene.prompt_logic; the model runs in the warm worker process.
    """

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "VISTA3D"  # untranslated: the effect's key
        scriptedEffect.title = _("VISTA3D")
        scriptedEffect.perSegment = True
        # Class prompts make their own segments and Compare writes none: an empty segmentation, or none selected,
        # must not disable the button (Slicer enables it if !requireSegments || (segment available and selected)).
        scriptedEffect.requireSegments = False
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = None
        self.markers = None
        self.catalog = None
        self.models = []
        self.classes = []
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_MS)
        self.pollTimer.connect("timeout()", self.onPoll)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return (
            "<html>"
            + _(
                "Segment with NVIDIA's VISTA3D, pretrained or finetuned with VistaFinetune.<br>"
                "<b>Class prompts:</b> choose classes and click <i>Segment classes</i>.<br>"
                "<b>Clicks:</b> left-click in a slice view adds a positive point (Shift+click: negative) to the "
                "selected segment; every click refines the same segment, and Undo takes a click back.<br>"
                "The model runs in a separate worker process that starts on the first request and stays warm."
            )
            + "</html>"
        )

    # Options panel

    def setupOptionsFrame(self):
        self.modelSelector = qt.QComboBox()
        self.modelSelector.toolTip = _("The pretrained bundle, or the recommended checkpoint of a finished finetune")
        # Run titles are long (name, date, classes, Dice): keep them from widening the Segment Editor's panel.
        self.modelSelector.setSizeAdjustPolicy(qt.QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.modelSelector.setMinimumContentsLength(24)
        self.refreshModelsButton = qt.QPushButton(_("Refresh"))
        self.refreshModelsButton.toolTip = _("List the finished finetune runs again")
        modelRow = qt.QHBoxLayout()
        modelRow.addWidget(self.modelSelector, 1)
        modelRow.addWidget(self.refreshModelsButton)
        self.scriptedEffect.addLabeledOptionsWidget(_("Model:"), modelRow)

        self.classFilter = qt.QLineEdit()
        self.classFilter.placeholderText = _("Search classes (name or id)")
        self.scriptedEffect.addLabeledOptionsWidget(_("Classes:"), self.classFilter)
        self.classList = qt.QListWidget()
        self.classList.setSelectionMode(qt.QAbstractItemView.ExtendedSelection)
        self.classList.setMinimumHeight(120)
        self.scriptedEffect.addOptionsWidget(self.classList)
        self.intoSelectedCheckBox = qt.QCheckBox(_("Into the selected segment (one class)"))
        self.intoSelectedCheckBox.toolTip = _("Unchecked: each class goes to a new segment named after it")
        self.applyButton = qt.QPushButton(_("Segment classes"))
        self.applyButton.toolTip = _("Segment the source volume with the chosen classes (adds to the segments)")
        applyRow = qt.QHBoxLayout()
        applyRow.addWidget(self.intoSelectedCheckBox)
        applyRow.addWidget(self.applyButton)
        self.scriptedEffect.addOptionsWidget(applyRow)

        self.compareButton = qt.QPushButton(_("Compare pretrained and finetuned"))
        self.compareButton.toolTip = _(
            "Segment the source volume with both models (the chosen classes, else the run's) into two "
            "segmentations, shown side by side"
        )
        self.scriptedEffect.addOptionsWidget(self.compareButton)

        self.positiveButton = qt.QRadioButton(_("Positive"))
        self.positiveButton.toolTip = _("Left-click adds a point inside the structure (Shift+click: the opposite)")
        self.negativeButton = qt.QRadioButton(_("Negative"))
        self.negativeButton.toolTip = _("Left-click adds a point outside the structure (Shift+click: the opposite)")
        self.positiveButton.checked = True
        self.clearPointsButton = qt.QPushButton(_("Clear points"))
        self.clearPointsButton.toolTip = _("Forget the clicks; the next click starts afresh from the segment as it is")
        self.cancelButton = qt.QPushButton(_("Cancel"))
        self.cancelButton.enabled = False
        pointRow = qt.QHBoxLayout()
        pointRow.addWidget(self.positiveButton)
        pointRow.addWidget(self.negativeButton)
        pointRow.addWidget(self.clearPointsButton)
        pointRow.addWidget(self.cancelButton)
        self.scriptedEffect.addLabeledOptionsWidget(_("Clicks:"), pointRow)

        self.ruleLabel = qt.QLabel()
        self.ruleLabel.wordWrap = True
        self.ruleLabel.visible = False
        self.scriptedEffect.addOptionsWidget(self.ruleLabel)
        self.statusLabel = qt.QLabel(_("The model starts on the first request."))
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        self.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.refreshModelsButton.connect("clicked()", self.refreshModels)
        self.classFilter.connect("textChanged(QString)", self.updateClassList)
        self.applyButton.connect("clicked()", self.onApply)
        self.compareButton.connect("clicked()", self.onCompare)
        self.clearPointsButton.connect("clicked()", self.onClearPoints)
        self.cancelButton.connect("clicked()", self.onCancel)

    def moduleSettings(self):
        """The job environment, bundle and runs folder chosen in the VistaFinetune module."""
        import VistaFinetune

        moduleLogic = VistaFinetune.VistaFinetuneLogic()
        parameterNode = moduleLogic.getParameterNode()
        moduleLogic.setDefaultParameters(parameterNode)
        bundleDir = str(moduleLogic.bundleDir(parameterNode))  # none chosen: the shipped tiny reference bundle
        return parameterNode.jobPython, bundleDir, parameterNode.runsFolder

    def refreshModels(self):
        python, bundleDir, runsFolder = self.moduleSettings()
        try:
            self.catalog = LabelCatalog.from_bundle(Path(bundleDir))
            runs = finished_run_choices(Path(runsFolder)) if Path(runsFolder).is_dir() else []
        except UserError as error:
            self.showStatus(str(error))
            return
        self.models = [pretrained_choice(Path(bundleDir).name), *runs]
        current = self.logic.model.title if self.logic is not None else None
        wasBlocked = self.modelSelector.blockSignals(True)
        self.modelSelector.clear()
        for choice in self.models:
            self.modelSelector.addItem(choice.title)
        titles = [choice.title for choice in self.models]
        self.modelSelector.setCurrentIndex(titles.index(current) if current in titles else 0)
        self.modelSelector.blockSignals(wasBlocked)
        client = sharedWorkerClient(python, bundleDir)
        if self.logic is None or self.logic.client is not client:
            self.logic = PromptLogic(client, self.models[0])
        self.onModelChanged(self.modelSelector.currentIndex)

    def onModelChanged(self, index):
        if not 0 <= index < len(self.models) or self.catalog is None:
            return
        choice = self.models[index]
        if self.logic is not None:
            self.logic.set_model(choice)
        self.classes = model_classes(self.catalog, choice)
        self.updateClassList()
        self.updateRule()

    def updateClassList(self, text=None):
        text = self.classFilter.text if text is None else text
        self.classList.clear()
        for modelClass in search_classes(self.classes, text):
            item = qt.QListWidgetItem(modelClass.title)
            item.setData(qt.Qt.UserRole, modelClass.id)
            self.classList.addItem(item)

    def selectedClasses(self):
        ids = [item.data(qt.Qt.UserRole) for item in self.classList.selectedItems()]
        return [c for c in self.classes if c.id in ids]

    def segmentClass(self, segmentationNode, segmentId):
        return segment_class(segmentationNode, segmentId, self.classes)

    def updateRule(self):
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode() if parameterSetNode else None
        segmentId = parameterSetNode.GetSelectedSegmentID() if parameterSetNode else None
        rule = point_rule(self.segmentClass(segmentationNode, segmentId)) if segmentationNode and segmentId else None
        self.ruleLabel.text = rule or ""
        self.ruleLabel.visible = rule is not None

    def showStatus(self, text):
        self.statusLabel.text = text

    # Effect hooks

    def activate(self):
        self.markers = PromptMarkers(slicer.mrmlScene)
        if self.logic is None:
            self.refreshModels()
        self.updateRule()
        self.showMarkers()

    def deactivate(self):
        if self.markers is not None:
            self.markers.remove()
            self.markers = None

    def cleanup(self):
        self.pollTimer.stop()
        self.deactivate()

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget" or eventId != vtk.vtkCommand.LeftButtonPressEvent:
            return False
        if callerInteractor.GetControlKey() or callerInteractor.GetAltKey():
            return False  # Slicer's own modified clicks
        positive = self.positiveButton.checked != bool(callerInteractor.GetShiftKey())
        self.onClick(viewWidget.mrmlSliceNode(), callerInteractor.GetEventPosition(), positive)
        return True

    # Requests

    def targets(self):
        """Source volume, segmentation node and selected segment id, or a message saying what is missing."""
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        volumeNode = parameterSetNode.GetSourceVolumeNode()
        segmentationNode = parameterSetNode.GetSegmentationNode()
        segmentId = parameterSetNode.GetSelectedSegmentID()
        if volumeNode is None or segmentationNode is None:
            raise UserError(_("Select a segmentation and its source volume first."))
        if self.logic is None:
            self.refreshModels()
            if self.logic is None:
                raise UserError(self.statusLabel.text)
        self.logic.routing = self.moduleRouting()
        return volumeNode, segmentationNode, segmentId

    def moduleRouting(self):
        """Class routing as the VistaFinetune module's checkbox sets it (on unless turned off there)."""
        import VistaFinetune

        parameterNode = VistaFinetune.VistaFinetuneLogic().getParameterNode()
        return parameterNode.parameterNode.GetParameter("ClassRouting") != "false"

    def onClick(self, sliceNode, xy, positive):
        try:
            volumeNode, segmentationNode, segmentId = self.targets()
            if not segmentId:
                raise UserError(_("Select the segment to click on first."))
            prompt = click_to_prompt(sliceNode, (float(xy[0]), float(xy[1])), volumeNode, positive)
            modelClass = self.segmentClass(segmentationNode, segmentId)
            self.logic.click(volumeNode, segmentationNode, segmentId, prompt, modelClass)
        except UserError as error:
            self.showStatus(str(error))
            return
        self.showMarkers(self.logic.pending.points)
        self.startWaiting(_("VISTA3D is segmenting ..."))

    def onApply(self):
        classes = self.selectedClasses()
        try:
            volumeNode, segmentationNode, segmentId = self.targets()
            if not classes:
                raise UserError(_("Choose one or more classes in the list first."))
            if self.intoSelectedCheckBox.checked and len(classes) == 1 and segmentId:
                targets, newSegments = {classes[0].id: segmentId}, frozenset()
            else:
                targets = {}
                for modelClass in classes:
                    targets[modelClass.id] = add_class_segment(segmentationNode, modelClass)
                newSegments = frozenset(targets.values())
            self.logic.segment_classes(volumeNode, segmentationNode, targets, newSegments)
        except UserError as error:
            self.showStatus(str(error))
            return
        self.startWaiting(_("VISTA3D is segmenting {count} class(es) ...").format(count=len(classes)))

    def onCompare(self):
        try:
            volumeNode, _segmentationNode, _segmentId = self.targets()
            choice = self.logic.model
            classIds = [c.id for c in self.selectedClasses()] or sorted(choice.class_names)
            self.logic.compare(volumeNode, choice, classIds)
        except UserError as error:
            self.showStatus(str(error))
            return
        self.startWaiting(_("VISTA3D is segmenting with both models ..."))

    def showComparison(self, outputs):
        """Two segmentation nodes (pretrained, finetuned) and, in Slicer, the linked side-by-side layout."""
        volumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        naming = ClassNaming(self.catalog, dict(self.logic.model.class_names))
        predictions = {model: Path(path) for model, path in outputs.items()}
        nodes = import_comparison(predictions, volumeNode, naming, volumeNode.GetName())
        layoutManager = slicer.app.layoutManager() if hasattr(slicer.app, "layoutManager") else None
        if layoutManager is not None:
            layoutManager.setLayout(register_layout(layoutManager.layoutLogic().GetLayoutNode()))
            slicer.app.processEvents()
            show_comparison(volumeNode, None, nodes)
        return nodes

    def startWaiting(self, text):
        self.showStatus(text)
        self.applyButton.enabled = False
        self.compareButton.enabled = False
        self.cancelButton.enabled = True
        self.pollTimer.start()

    def stopWaiting(self):
        self.pollTimer.stop()
        self.applyButton.enabled = True
        self.compareButton.enabled = True
        self.cancelButton.enabled = False

    def onCancel(self):
        if self.logic is not None:
            self.logic.client.cancel()

    def onClearPoints(self):
        if self.logic is not None:
            self.logic.forget_points()
        self.showMarkers(())

    # Results

    def onPoll(self):
        try:
            outcome = self.logic.collect(self.applyWrites) if self.logic is not None else None
        except Exception as error:  # never leave the timer firing into the same failure
            self.stopWaiting()
            self.showStatus(_("Writing the result failed: {error}").format(error=error))
            raise
        if outcome is None:
            return
        self.stopWaiting()
        text = outcome.message
        if outcome.ok and outcome.worker_seconds and outcome.network_seconds is not None:
            share = outcome.network_seconds / outcome.worker_seconds
            text += _(" (worker {seconds:.2f} s, network {share:.0%})").format(
                seconds=outcome.worker_seconds, share=share
            )
        elif outcome.ok and outcome.worker_seconds is not None:
            text += _(" (worker {seconds:.2f} s)").format(seconds=outcome.worker_seconds)
        if outcome.ok and outcome.outputs:
            try:
                self.showComparison(outcome.outputs)
            except UserError as error:
                text = str(error)
        notice = self.logic.client.notice
        if notice:
            text += " " + _("Note: {notice}.").format(notice=notice)
            self.logic.client.notice = None
        self.showStatus(text)
        self.showMarkers()

    def applyWrites(self, writes):
        """One undo step, then add/remove writes through the Segment Editor (masking and overwrite apply)."""
        modes = {
            "add": slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd,
            "remove": slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeRemove,
        }
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode()
        selectedId = parameterSetNode.GetSelectedSegmentID()
        self.scriptedEffect.saveStateForUndo()
        for segmentId, segmentWrites in writes.items():
            for write in segmentWrites:
                if segmentId == selectedId:
                    self.scriptedEffect.modifySelectedSegmentByLabelmap(write.labelmap, modes[write.mode])
                else:
                    self.scriptedEffect.modifySegmentByLabelmap(
                        segmentationNode, segmentId, write.labelmap, modes[write.mode]
                    )

    def showMarkers(self, points=None):
        if self.markers is None:
            return
        if points is None:
            points = ()
            parameterSetNode = self.scriptedEffect.parameterSetNode()
            if self.logic is not None and parameterSetNode is not None and parameterSetNode.GetSourceVolumeNode():
                segmentationNode = parameterSetNode.GetSegmentationNode()
                segmentId = parameterSetNode.GetSelectedSegmentID()
                if segmentationNode is not None and segmentId:
                    modelClass = self.segmentClass(segmentationNode, segmentId)
                    points = self.logic.points_of(parameterSetNode.GetSourceVolumeNode(), segmentId, modelClass)
        self.markers.show(list(points))
