import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

ENGINE_PACKAGE = "VistaFinetuneLib"
MINIMUM_SLICER_VERSION = (5, 10)  # the VISTA3D effect uses vtkSlicerSegmentEditorLogic, new in Slicer 5.10
POLL_INTERVAL_MS = 1000
EXPORT_STEP_MS = 20  # the scene export reads one case per tick; Slicer repaints in between
PLOT_SIZE = (360, 120)


def slicerVersionProblem() -> str:
    """Why this Slicer cannot run the extension ("" when it can)."""
    version = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
    if version >= MINIMUM_SLICER_VERSION:
        return ""
    return _(
        "VISTA3D Finetune needs 3D Slicer {minimum} or newer; this is Slicer {version}. "
        "Install a current Slicer from https://download.slicer.org."
    ).format(minimum="{}.{}".format(*MINIMUM_SLICER_VERSION), version="{}.{}".format(*version))


#
# VistaFinetune
#


class VistaFinetune(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VISTA3D Finetune")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["VistaFinetune developers"]
        self.parent.helpText = _(
            "Finetune NVIDIA's VISTA3D (NV-Segment-CT) CT segmentation model on your own CT images and "
            "segmentations with the MONAI <i>vista3d</i> bundle, in a background job, then compare the pretrained "
            "and finetuned predictions. The same engine runs from a terminal (<code>vista-finetune</code>). "
            'See the <a href="https://github.com/vistafinetune/SlicerVistaFinetune#readme">README</a>.'
        )
        self.parent.acknowledgementText = _(
            'This extension builds on <a href="https://monai.io">MONAI</a> and its model zoo bundle of '
            'NVIDIA\'s VISTA3D model, and on <a href="https://www.slicer.org">3D Slicer</a>. '
            "VISTA3D and its weights are provided by NVIDIA under their own license terms."
        )
        if slicerVersionProblem():
            logging.error(slicerVersionProblem())
            self.parent.helpText = slicerVersionProblem() + "<br>" + self.parent.helpText


#
# VistaFinetuneParameterNode
#


@parameterNodeWrapper
class VistaFinetuneParameterNode:
    """The panel's state, saved with the scene (a reloaded scene re-attaches to its run)."""

    jobPython: str = ""
    bundleDir: str = ""  # empty: the tiny reference bundle
    runsFolder: str = ""
    datasetDir: str = ""
    datalist: str = ""
    # Slicer's GUI connectors replace a bound spin box's range unless the field says it: these are the .ui's.
    epochs: Annotated[int, WithinRange(1, 10000)] = 5
    learningRate: Annotated[float, WithinRange(0.0, 1.0)] = 5e-5
    patchSize: str = "[128, 128, 128]"
    cacheRate: Annotated[float, WithinRange(0.0, 1.0)] = 1.0
    classPromptsOnly: bool = False
    runDir: str = ""  # the run the panel follows


#
# VistaFinetuneWidget
#


class VistaFinetuneWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: a thin layer of Qt over the panel controller (VistaFinetuneLib.panel), which drives the jobs."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.controller = None
        self.caseRows = []
        self.mappingRows = []
        self.catalog = None
        self.environment = None  # the last EnvironmentReport
        self.results = None  # the last RunResults
        self.pending = {}  # name -> BackgroundCall (environment probe, case audit)
        self.setupJobDir = None  # a bundle download or environment creation being followed
        self.setupJobDone = None  # what to do when that job completes
        self.timer = None
        self.following = False
        self.sceneExport = None  # the scene cases being written before a start (see startSceneExport)
        self.sceneCases = []  # (volume, segmentation) pairs added from the scene; empty: a folder or datalist
        self.reviewRows = []  # the Review table's rows (ClassDice)
        self.reviewScene = None  # the loaded case: its nodes
        self.worker = None  # the warm worker's client (VistaFinetuneLib.interactive), started on first review
        self.pendingReview = None  # (case, Ticket) while the worker predicts  # a run is followed and has not finished

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if slicerVersionProblem():  # say so in the panel instead of failing on a missing Slicer class later
            self.versionLabel = qt.QLabel(slicerVersionProblem())
            self.versionLabel.wordWrap = True
            self.layout.addWidget(self.versionLabel)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VistaFinetune.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = VistaFinetuneLogic()

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onPollTimer)
        self.exportTimer = qt.QTimer()
        self.exportTimer.setInterval(EXPORT_STEP_MS)
        self.exportTimer.connect("timeout()", self.onExportStep)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.checkEnvironmentButton.connect("clicked(bool)", self.onCheckEnvironment)
        self.ui.createEnvironmentButton.connect("clicked(bool)", self.onCreateEnvironment)
        self.ui.downloadBundleButton.connect("clicked(bool)", self.onDownloadBundle)
        self.ui.readCasesButton.connect("clicked(bool)", self.onReadCases)
        self.ui.addSceneCaseButton.connect("clicked(bool)", self.onAddSceneCase)
        self.ui.casesTableWidget.connect("itemChanged(QTableWidgetItem*)", self.onCaseItemChanged)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.reattachButton.connect("clicked(bool)", self.onReattach)
        self.ui.openReviewButton.connect("clicked(bool)", self.onOpenReview)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReport)
        self.ui.loadReviewButton.connect("clicked(bool)", self.onLoadReview)
        self.ui.reviewTableWidget.connect("cellClicked(int,int)", self.onReviewRowClicked)
        for name, edit in self.pathEdits().items():
            # ctkPathLineEdit signals currentPathChanged only for valid (non-empty) input: watch its line edit so
            # that clearing a field is stored too (an empty bundle folder means the tiny bundle again).
            lineEdit = edit.findChild(qt.QLineEdit)
            if lineEdit is not None:
                lineEdit.connect("textChanged(QString)", lambda text, name=name: self.onPathChanged(name, text))
            else:
                edit.connect("currentPathChanged(QString)", lambda path, name=name: self.onPathChanged(name, path))

        self.setupCorrection()
        self.initializeParameterNode()
        self.updateButtons()

    def pathEdits(self) -> dict:
        """Path fields of the parameter node and their line edits (kept in sync by hand: they are plain strings)."""
        return {
            "jobPython": self.ui.jobPythonPathLineEdit,
            "bundleDir": self.ui.bundlePathLineEdit,
            "runsFolder": self.ui.runsFolderPathLineEdit,
            "datasetDir": self.ui.datasetPathLineEdit,
            "datalist": self.ui.datalistPathLineEdit,
        }

    # --- parameter node ------------------------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self.timer is not None:
            self.timer.stop()
        if self.worker is not None:
            from VistaFinetuneLib.panel.background import close_in_background

            close_in_background(self.worker)
            self.worker = None
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is not None:  # None: this Slicer is too old (setup said so)
            self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.timer.stop()
        self.stopSceneExport()
        self.following = False  # the closing scene's run: re-attached from the next scene's parameter node
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        self.logic.setDefaultParameters(parameterNode)
        self.setParameterNode(parameterNode)
        if parameterNode.runDir and os.path.isdir(parameterNode.runDir):
            self.attachRun(parameterNode.runDir)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            for name, edit in self.pathEdits().items():
                edit.currentPath = getattr(self._parameterNode, name)
            self.replaceController()
        self.updateButtons()

    def replaceController(self) -> None:
        """A controller for the chosen runs folder and job Python; the run being followed stays followed."""
        followed = self.controller.run_dir if self.controller is not None and self.following else None
        self.controller = self.logic.controller(self._parameterNode)
        if followed is not None:
            self.controller.attach(followed)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self.updateButtons()

    def onPathChanged(self, name: str, path: str) -> None:
        if self._parameterNode and getattr(self._parameterNode, name) != path:
            setattr(self._parameterNode, name, path)
            if name in ("runsFolder", "jobPython"):
                self.replaceController()

    def updateButtons(self) -> None:
        running = self.following or self.sceneExport is not None
        hasData = bool(self.caseRows)
        self.ui.startButton.setEnabled(hasData and not running)
        self.ui.startButton.setToolTip(
            _("Start the finetune in the background.") if hasData else _("Read the training cases first.")
        )
        self.ui.cancelButton.setEnabled(running)
        self.ui.openReviewButton.setEnabled(self.results is not None)
        self.ui.openReportButton.setEnabled(self.results is not None and self.results.report_html is not None)
        self.ui.loadReviewButton.setEnabled(
            self.results is not None and self.ui.reviewCaseComboBox.count > 0 and self.pendingReview is None
        )

    def showError(self, message: str) -> None:
        """The engine's message, in the status line and a dialog."""
        self.ui.statusLabel.setText(message)
        slicer.util.errorDisplay(message)

    # --- Setup ---------------------------------------------------------------------------------------------------

    def onCheckEnvironment(self) -> None:
        from VistaFinetuneLib.panel.background import BackgroundCall
        from VistaFinetuneLib.panel.controller import describe_environment

        python = self._parameterNode.jobPython or self.logic.slicerPython()
        self.ui.environmentTextEdit.setPlainText(_("Checking {python} ...").format(python=python))
        self.pending["environment"] = BackgroundCall(lambda: describe_environment(python))
        self.timer.start()

    def showEnvironment(self, report) -> None:
        from VistaFinetuneLib.panel.controller import CPU_WARNING

        self.environment = report
        self.ui.environmentTextEdit.setPlainText("\n".join(report.lines))
        self.ui.cpuWarningLabel.setText(_(CPU_WARNING) if report.on_cpu else "")
        self.ui.cpuWarningLabel.setStyleSheet("color: #b00000; font-weight: bold" if report.on_cpu else "")
        self.updatePlan()

    def onCreateEnvironment(self) -> None:
        from VistaFinetuneLib.errors import UserError
        from VistaFinetuneLib.panel.controller import managed_environment_commands

        directory = Path(self.logic.managedEnvironmentDir())
        cuda = self.ui.cudaComboBox.currentText
        commands = managed_environment_commands(directory, cuda, self.logic.slicerPython())
        question = _(
            "Create the managed job environment in\n{directory}\n\nIt runs these commands (Slicer's own Python is "
            "not changed):\n\n{commands}\n\nThis downloads about 3 GB and takes several minutes. Continue?"
        ).format(directory=directory, commands="\n".join(commands))
        if not slicer.util.confirmOkCancelDisplay(question):
            return
        try:
            self.setupJobDir = self.controller.start_environment_creation(directory, cuda, self.logic.slicerPython())
        except UserError as error:
            self.showError(str(error))
            return
        from VistaFinetuneLib.jobs.environment import venv_python

        self.setupJobDone = lambda: self.setPath("jobPython", str(venv_python(directory)))  # read once it exists
        self.ui.bundleProgressBar.setRange(0, 0)
        self.timer.start()

    def onDownloadBundle(self) -> None:
        from VistaFinetuneLib.errors import UserError
        from VistaFinetuneLib.panel.controller import BUNDLE_WEIGHTS_MB

        name = self.ui.bundleNameComboBox.currentText
        parent = Path(self.controller.runs_root) / "bundles"
        question = _("Download the {name} bundle (about {size} MB of weights) into {folder}?").format(
            name=name, size=BUNDLE_WEIGHTS_MB, folder=parent / name
        )
        if not slicer.util.confirmOkCancelDisplay(question):
            return
        try:
            self.setupJobDir = self.controller.start_bundle_download(name, parent)
        except UserError as error:
            self.showError(str(error))
            return
        self.setupJobDone = lambda: self.setPath("bundleDir", str(parent / name))
        self.ui.bundleProgressBar.setRange(0, 0)  # the download reports no percentage: a busy bar
        self.timer.start()

    def setPath(self, name: str, path: str) -> None:
        setattr(self._parameterNode, name, path)
        self.pathEdits()[name].currentPath = path

    def pollSetupJob(self) -> None:
        from VistaFinetuneLib.jobs.control import poll_job

        state = poll_job(self.setupJobDir)
        self.ui.environmentTextEdit.setPlainText("\n".join(state.log_tail))
        if state.finished:
            self.ui.bundleProgressBar.setRange(0, 100)
            self.ui.bundleProgressBar.setValue(100 if state.state == "completed" else 0)
            if state.state == "completed":
                self.setupJobDone()
            else:
                self.showError(
                    _("{folder}: {state}; see the log above").format(folder=self.setupJobDir, state=state.state)
                )
            self.setupJobDir = None

    # --- Training data and Class mapping -------------------------------------------------------------------------

    def onReadCases(self) -> None:
        from VistaFinetuneLib.panel import training_data
        from VistaFinetuneLib.panel.background import BackgroundCall

        self.sceneCases = []  # a folder or datalist replaces the scene's cases
        datasetDir = self._parameterNode.datasetDir or None
        datalist = self._parameterNode.datalist or None
        self.ui.casesStatusLabel.setText(_("Reading and checking the cases ..."))
        self.pending["cases"] = BackgroundCall(
            lambda: training_data.case_rows(training_data.read_cases(datasetDir, datalist))
        )
        self.timer.start()

    def onAddSceneCase(self) -> None:
        """Add the chosen volume and its segmentation as a case (scene cases replace a folder's)."""
        from VistaFinetuneLib.panel.training_data import CaseRow

        volume = self.ui.sceneVolumeSelector.currentNode()
        segmentation = self.ui.sceneSegmentationSelector.currentNode()
        if volume is None or segmentation is None:
            self.ui.casesStatusLabel.setText(_("Choose a scene volume and the segmentation drawn on it."))
            return
        if not self.sceneCases:
            self.caseRows = []
        self.sceneCases.append((volume, segmentation))
        content = segmentation.GetSegmentation()
        names = [content.GetNthSegment(i).GetName() for i in range(content.GetNumberOfSegments())]
        row = CaseRow(volume.GetName(), Path(), Path(), validation=len(self.sceneCases) == 1)
        row.warnings = [_("segments: {names}").format(names=", ".join(names))]
        self.showCases([*self.caseRows, row])

    def sceneSegments(self):
        from VistaFinetuneLib.scene.mapping import collect_segments

        return collect_segments([segmentation for _, segmentation in self.sceneCases])

    def sceneMappingRows(self):
        """One row per distinct segment name, with the scene logic's suggestion (name or terminology)."""
        from VistaFinetuneLib.panel.training_data import MappingRow
        from VistaFinetuneLib.scene.mapping import suggest_mapping

        choices = suggest_mapping(self.sceneSegments(), self.catalog)
        return [MappingRow(index + 1, name, choice.class_id) for index, (name, choice) in enumerate(choices.items())]

    def sceneChoices(self) -> dict:
        from VistaFinetuneLib.scene.mapping import ClassChoice

        return {row.name: ClassChoice(row.class_id, "user") for row in self.mappingRows}

    def sceneExportCases(self) -> list:
        """The scene cases to export (the scene logic: the CT's grid, class ids as label values)."""
        from VistaFinetuneLib.scene.export import ExportCase

        return [
            ExportCase(volume, segmentation, row.validation)
            for (volume, segmentation), row in zip(self.sceneCases, self.caseRows, strict=True)
        ]

    def showCases(self, rows) -> None:
        from VistaFinetuneLib.panel import training_data

        self.caseRows = rows
        table = self.ui.casesTableWidget
        table.blockSignals(True)
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            table.setItem(index, 0, qt.QTableWidgetItem(row.name))
            check = qt.QTableWidgetItem()
            check.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
            check.setCheckState(qt.Qt.Checked if row.validation else qt.Qt.Unchecked)
            table.setItem(index, 1, check)
            table.setItem(index, 2, qt.QTableWidgetItem(", ".join(str(v) for v in row.label_values)))
            notes = qt.QTableWidgetItem("; ".join(row.problems + row.warnings) or _("OK"))
            notes.setToolTip("\n".join(row.problems + row.warnings))
            if row.problems:
                notes.setForeground(qt.QBrush(qt.QColor("#b00000")))
            table.setItem(index, 3, notes)
        table.blockSignals(False)
        usable = [row for row in rows if row.usable]
        problems = training_data.split_problems(rows)
        self.ui.casesStatusLabel.setText(
            _("{usable} of {total} cases usable, {validation} for validation.").format(
                usable=len(usable), total=len(rows), validation=sum(row.validation for row in usable)
            )
            + ("" if not problems else " " + " ".join(problems))
        )
        self.showMapping()
        self.updatePlan()
        self.updateButtons()

    def onCaseItemChanged(self, item) -> None:
        if item.column() == 1 and item.row() < len(self.caseRows):
            self.caseRows[item.row()].validation = item.checkState() == qt.Qt.Checked

    def showMapping(self) -> None:
        from VistaFinetuneLib.panel import training_data

        self.catalog = self.logic.catalog(self._parameterNode.bundleDir)
        if self.sceneCases:
            self.mappingRows = self.sceneMappingRows()
        else:
            values = training_data.label_values(self.caseRows)
            names = training_data.dataset_label_names(self._parameterNode.datasetDir or None)
            self.mappingRows = training_data.mapping_rows(values, names, self.catalog)
        choices = training_data.class_choices(self.catalog)
        table = self.ui.mappingTableWidget
        table.setRowCount(len(self.mappingRows))
        for index, row in enumerate(self.mappingRows):
            table.setItem(index, 0, qt.QTableWidgetItem(str(row.value)))
            table.setItem(index, 1, qt.QTableWidgetItem(row.name or _("(no name)")))
            combo = qt.QComboBox()
            combo.setEditable(True)  # type to search the bundle's classes
            combo.setInsertPolicy(qt.QComboBox.NoInsert)
            combo.completer().setFilterMode(qt.Qt.MatchContains)
            combo.completer().setCompletionMode(qt.QCompleter.PopupCompletion)
            combo.addItem(_("(choose a class)"), -1)
            for classId, text in choices:
                combo.addItem(text, classId)
            combo.addItem(_("new structure"), 0)
            if row.class_id is not None:
                combo.setCurrentIndex(combo.findData(row.class_id))
            combo.connect(
                "currentIndexChanged(int)", lambda i, index=index, combo=combo: self.onClassChosen(index, combo)
            )
            table.setCellWidget(index, 2, combo)
            table.setItem(index, 3, qt.QTableWidgetItem(self.mappingNote(row)))
        self.updateMappingMessages()

    def mappingNote(self, row) -> str:
        if row.class_id is None:
            return _("no suggestion: choose a class")
        if row.score is not None:
            return _("suggested from the name (match {score:.0%})").format(score=row.score)
        return ""

    def onClassChosen(self, index: int, combo) -> None:
        from VistaFinetuneLib.panel import training_data

        row = self.mappingRows[index]
        classId = combo.itemData(combo.currentIndex)
        if classId == 0:  # a brand-new structure gets a free id
            taken = [r.class_id for r in self.mappingRows if r.class_id is not None and r is not row]
            row.class_id = training_data.new_structure_id(self.catalog, taken)
            self.ui.mappingTableWidget.setItem(
                index, 3, qt.QTableWidgetItem(_("new structure: id {id}").format(id=row.class_id))
            )
        else:
            row.class_id = None if classId is None or classId < 0 else int(classId)
            row.score = None
            self.ui.mappingTableWidget.setItem(index, 3, qt.QTableWidgetItem(self.mappingNote(row)))
        self.updateMappingMessages()
        self.updatePlan()  # every mapped class is prompted each step: the patch depends on how many there are

    def updateMappingMessages(self) -> None:
        from VistaFinetuneLib.errors import UserError
        from VistaFinetuneLib.panel import training_data

        if self.sceneCases:
            from VistaFinetuneLib.scene.mapping import ClassChoice, check_mapping

            choices = {row.name: ClassChoice(row.class_id, "user") for row in self.mappingRows}
            try:
                error, warnings = None, check_mapping(self.sceneSegments(), choices, self.catalog)
            except UserError as problem:
                error, warnings = str(problem), []
        else:
            values = training_data.label_values(self.caseRows)
            error, warnings = training_data.mapping_messages(self.mappingRows, values, self.catalog)
        self.ui.mappingMessagesLabel.setText("\n".join(([error] if error else []) + warnings) or _("Mapping complete."))

    # --- Training --------------------------------------------------------------------------------------------------

    def updatePlan(self) -> None:
        """Pre-fill the plan from the engine's planner for this environment, number of training cases and number of
        mapped classes."""
        from VistaFinetuneLib.panel.controller import default_settings

        if self.environment is None or not self.caseRows:
            return
        nTrain = sum(1 for row in self.caseRows if row.usable and not row.validation)
        nClasses = len({row.class_id for row in self.mappingRows if row.class_id is not None})
        settings = default_settings(
            self.logic.bundleDir(self._parameterNode), self.environment.plan_environment, nTrain, nClasses
        )
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.epochs = settings.epochs
            self._parameterNode.learningRate = settings.learning_rate
            self._parameterNode.patchSize = str(settings.patch_size)
            self._parameterNode.cacheRate = settings.cache_rate
        self.ui.planLabel.setText(_("Plan: ") + "; ".join(settings.rationale))

    def trainingSettings(self):
        from VistaFinetuneLib.errors import UserError
        from VistaFinetuneLib.panel.controller import TrainingSettings

        try:
            patch = json.loads(self._parameterNode.patchSize)
        except ValueError:
            patch = None
        if not (isinstance(patch, list) and len(patch) == 3 and all(isinstance(x, int) and x > 0 for x in patch)):
            raise UserError(
                _("patch size {text!r}: write three positive integers, e.g. [128, 128, 128]").format(
                    text=self._parameterNode.patchSize
                )
            )
        return TrainingSettings(
            epochs=self._parameterNode.epochs,
            learning_rate=self._parameterNode.learningRate,
            patch_size=patch,
            cache_rate=self._parameterNode.cacheRate,
            class_prompts_only=self._parameterNode.classPromptsOnly,
        )

    def onStart(self) -> None:
        from VistaFinetuneLib.errors import UserError

        bundleDir = self.logic.bundleDir(self._parameterNode) if self._parameterNode.bundleDir else None
        try:
            settings = self.trainingSettings()
            if self.sceneCases:
                self.startSceneExport(settings, bundleDir)
                return
            view = self.controller.start(self.caseRows, self.mappingRows, self.catalog, settings, bundleDir)
        except UserError as error:
            self.showError(str(error))
            return
        self.followStartedRun(view)

    def followStartedRun(self, view) -> None:
        self._parameterNode.runDir = str(self.controller.run_dir)
        self.results = None
        self.following = True
        self.showProgress(view)
        self.timer.start()
        self.updateButtons()

    def startSceneExport(self, settings, bundleDir) -> None:
        """Write the scene cases as a training set, then start on it. Slicer never waits: one case is read from
        the scene per timer tick (MRML work stays on this thread) and its files are written in a thread; Cancel
        stops it between cases."""
        from VistaFinetuneLib.panel.controller import training_data_path
        from VistaFinetuneLib.scene.export import TrainingSetWriter

        runDir = self.controller.new_run_dir()
        writer = TrainingSetWriter(self.sceneExportCases(), self.sceneChoices(), self.catalog,
                                   training_data_path(runDir).parent / "dataset")  # fmt: skip
        self.sceneExport = {"writer": writer, "runDir": runDir, "settings": settings, "bundleDir": bundleDir,
                            "next": 0, "writing": None}  # fmt: skip
        self.showExportProgress()
        self.exportTimer.start()
        self.updateButtons()

    def showExportProgress(self) -> None:
        export = self.sceneExport
        total = len(export["writer"].cases)
        written = len(export["writer"].exported)
        self.ui.progressLabel.setText(
            _("Writing the scene cases for training: {written} of {total} written").format(written=written, total=total)
        )
        self.ui.progressBar.setValue(int(10 * written / max(total, 1)))

    def onExportStep(self) -> None:
        from VistaFinetuneLib.errors import UserError
        from VistaFinetuneLib.panel.background import BackgroundCall

        export = self.sceneExport
        if export is None:
            self.exportTimer.stop()
            return
        writing = export["writing"]
        if writing is not None and not writing.done:
            return
        try:
            if writing is not None and writing.error is not None:
                raise UserError(writing.error)
            writer = export["writer"]
            if export["next"] < len(writer.cases):
                arrays = writer.read_case(export["next"])
                export["next"] += 1
                export["writing"] = BackgroundCall(lambda: writer.write_case(arrays))
                self.showExportProgress()
                return
            self.exportTimer.stop()
            self.sceneExport = None
            training = writer.finish()
            view = self.controller.start_exported(export["runDir"], training.datalist, training.label_mappings,
                                                  training.class_names, export["settings"], export["bundleDir"])
        except UserError as error:
            self.stopSceneExport()
            self.showError(str(error))
            return
        self.followStartedRun(view)

    def stopSceneExport(self) -> None:
        """Stop a scene export before its start; its partial files go (in a thread, after the file being written)."""
        export, self.sceneExport = self.sceneExport, None
        self.exportTimer.stop()
        if export is None:
            return
        from VistaFinetuneLib.panel.background import BackgroundCall

        writing, folder = export["writing"], export["writer"].dataset_dir.parent

        def removePartialExport():
            if writing is not None:
                writing.wait()
            shutil.rmtree(folder, ignore_errors=True)

        BackgroundCall(removePartialExport)
        self.updateButtons()

    def onCancel(self) -> None:
        from VistaFinetuneLib.errors import UserError

        if self.sceneExport is not None:
            self.stopSceneExport()
            self.ui.progressLabel.setText(_("Cancelled before the start: the scene cases were not all written."))
            return
        try:
            self.showProgress(self.controller.cancel())
        except UserError as error:
            self.showError(str(error))

    def onReattach(self) -> None:
        runDir = self.controller.latest_run()
        if runDir is None:
            self.showError(_("{folder}: no run folders to re-attach to").format(folder=self.controller.runs_root))
            return
        self.attachRun(str(runDir))

    def attachRun(self, runDir: str) -> None:
        view = self.controller.attach(Path(runDir))
        self._parameterNode.runDir = str(self.controller.run_dir)
        self.showProgress(view)
        self.following = not view.finished
        if view.finished:
            self.showResults()
        else:
            self.timer.start()
        self.updateButtons()

    def onPollTimer(self) -> None:
        """Everything slow is polled here, once a second; nothing here waits."""
        for name, call in list(self.pending.items()):
            if not call.done:
                continue
            del self.pending[name]
            if call.error is not None:
                self.showError(call.error)
                if name == "cases":
                    self.ui.casesStatusLabel.setText(call.error)
            elif name == "environment":
                self.showEnvironment(call.result)
            elif name == "cases":
                self.showCases(call.result)
        if self.setupJobDir is not None:
            self.pollSetupJob()
        if self.pendingReview is not None:
            self.pollReview()
        if self.following:
            view = self.controller.poll()
            self.showProgress(view)
            if view.finished:
                self.following = False
                if view.state == "failed":
                    self.showError(view.headline)
                self.showResults()
        if not self.pending and self.setupJobDir is None and self.pendingReview is None and not self.following:
            self.timer.stop()
        self.updateButtons()

    def showProgress(self, view) -> None:
        from VistaFinetuneLib.panel.curves import curve_picture

        self.ui.progressBar.setValue(view.percent)
        self.ui.progressLabel.setText(_(view.headline))
        self.ui.etaLabel.setText(view.eta)
        self.ui.logTextEdit.setPlainText("\n".join(view.log))
        picture = curve_picture(view.loss, view.val_dice, view.max_epochs, PLOT_SIZE[0], PLOT_SIZE[1])
        self.drawCurves(picture)

    def drawCurves(self, picture) -> None:
        pixmap = qt.QPixmap(picture.width, picture.height)
        pixmap.fill(qt.QColor("white"))
        painter = qt.QPainter(pixmap)
        for points, color in ((picture.loss, "#808080"), (picture.dice, "#1a8f1a")):
            pen = qt.QPen(qt.QColor(color))
            pen.setWidth(2)
            painter.setPen(pen)
            for (x1, y1), (x2, y2) in zip(points, points[1:], strict=False):
                painter.drawLine(x1, y1, x2, y2)
        painter.setPen(qt.QPen(qt.QColor("black")))
        painter.drawText(8, 14, picture.caption)
        painter.end()
        self.ui.curvesLabel.setPixmap(pixmap)

    # --- Results and Review --------------------------------------------------------------------------------------

    def showResults(self) -> None:
        from VistaFinetuneLib.errors import UserError

        try:
            self.results = self.controller.results()
        except UserError as error:
            self.results = None
            self.ui.verdictLabel.setText(_("No results: {reason}").format(reason=self.ui.progressLabel.text or error))
            self.updateButtons()
            return
        results = self.results
        self.ui.verdictLabel.setText(results.verdict)
        self.ui.reasonsLabel.setText("\n".join(results.reasons))
        self.ui.resultsWarningLabel.setText("\n".join(results.warnings))
        self.ui.resultsWarningLabel.setStyleSheet("color: #b00000" if results.warnings else "")
        self.fillDiceTable(self.ui.resultsTableWidget, results.per_class)
        self.ui.reviewCaseComboBox.clear()
        for case in results.validation_cases:
            self.ui.reviewCaseComboBox.addItem(case)
        self.ui.resultsCollapsibleButton.collapsed = False
        self.showRounds()
        self.updateButtons()

    def fillDiceTable(self, table, rows) -> None:
        def number(value) -> str:
            return "-" if value is None else f"{value:.4f}"

        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            table.setItem(index, 0, qt.QTableWidgetItem(f"{row.class_id}: {row.name}"))
            table.setItem(index, 1, qt.QTableWidgetItem(number(row.pretrained)))
            table.setItem(index, 2, qt.QTableWidgetItem(number(row.finetuned)))
            change = row.difference
            table.setItem(index, 3, qt.QTableWidgetItem("-" if change is None else f"{change:+.4f}"))

    def onOpenReview(self) -> None:
        self.ui.reviewCollapsibleButton.collapsed = False
        self.ui.reviewStatusLabel.setText(_("Choose a validation case and load it side by side."))

    def onOpenReport(self) -> None:
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(self.results.report_html)))

    def onLoadReview(self) -> None:
        """Ask the warm worker for the case's pretrained and finetuned predictions; the timer loads them."""
        from VistaFinetuneLib.errors import UserError
        from VistaFinetuneLib.panel.review_predictions import request_case_predictions

        case = self.ui.reviewCaseComboBox.currentText
        self.reviewRows = self.results.per_case.get(case, [])
        self.fillDiceTable(self.ui.reviewTableWidget, self.reviewRows)
        self.reviewScene = None
        try:
            if self.worker is None:
                self.worker = self.logic.workerClient(self._parameterNode, self.results)
            classIds = [row.class_id for row in self.results.per_class]
            ticket = request_case_predictions(
                self.worker, self.results.run_dir, case, self.results.case_images[case], classIds
            )
        except UserError as error:
            self.ui.reviewStatusLabel.setText(str(error))
            return
        self.pendingReview = (case, ticket)
        self.ui.loadReviewButton.setEnabled(False)
        self.ui.reviewStatusLabel.setText(
            _("Predicting {case} with the pretrained and the finetuned model ...").format(case=case)
        )
        self.timer.start()

    def pollReview(self) -> None:
        from VistaFinetuneLib.errors import UserError

        case, ticket = self.pendingReview
        if not ticket.done:
            return
        self.pendingReview = None
        if ticket.error is not None:
            self.ui.reviewStatusLabel.setText(_("The VISTA3D worker: {error}").format(error=ticket.error))
            return
        try:
            self.reviewScene = self.logic.loadComparison(self.results, case, ticket.result)
            self.logic.showComparison(self.reviewScene)
        except UserError as error:
            loaded = _("Loaded {case}; ").format(case=case) if self.reviewScene else ""
            self.ui.reviewStatusLabel.setText(loaded + str(error))
            return
        self.ui.reviewStatusLabel.setText(
            _("{case}: pretrained | finetuned side by side ({seconds:.1f} s in the worker), ground truth outlined. "
              "Click a row to centre the views.").format(case=case, seconds=ticket.seconds or 0.0)
        )  # fmt: skip

    def onReviewRowClicked(self, row: int, column: int) -> None:
        if self.reviewScene is None or row >= len(self.reviewRows):
            return
        structure = self.reviewRows[row]
        centre = self.logic.centreOn(self.reviewScene, structure.class_id)
        if centre is None:
            self.ui.reviewStatusLabel.setText(
                _("{structure}: in neither prediction nor the ground truth of this case").format(
                    structure=structure.name
                )
            )
        else:
            self.ui.reviewStatusLabel.setText(
                _("Views centred on {id}: {structure} (R {r:.1f}, A {a:.1f}, S {s:.1f} mm)").format(
                    id=structure.class_id, structure=structure.name, r=centre[0], a=centre[1], s=centre[2]
                )
            )

    # --- Correct and finetune again --------------------------------------------------------------------------------

    def setupCorrection(self) -> None:
        self.ui.addCorrectionButton.connect("clicked(bool)", self.onAddCorrection)
        self.ui.finetuneAgainButton.connect("clicked(bool)", self.onFinetuneAgain)
        self.ui.routingCheckBox.connect("toggled(bool)", self.onRoutingToggled)

    def onRoutingToggled(self, checked: bool) -> None:
        """Class routing on or off for the Review's and the effect's predictions (kept in the scene's settings)."""
        if self._parameterNode:
            self._parameterNode.parameterNode.SetParameter("ClassRouting", "true" if checked else "false")

    def onAddCorrection(self) -> None:
        """Export the chosen volume and its corrected segmentation as a correction of the followed run."""
        from VistaFinetuneLib.errors import UserError
        from VistaFinetuneLib.panel.correction import pending_summary
        from VistaFinetuneLib.scene.corrections import add_correction

        volume = self.ui.correctionVolumeSelector.currentNode()
        segmentation = self.ui.correctionSegmentationSelector.currentNode()
        runDir = self.controller.run_dir if self.controller else None
        if volume is None or segmentation is None or runDir is None:
            self.showError(_("Follow a finished run and choose a volume and its corrected segmentation first."))
            return
        try:
            entry = add_correction(volume, segmentation, runDir, self.logic.catalog(self._parameterNode.bundleDir))
        except UserError as error:
            self.showError(str(error))
            return
        self.ui.correctionsLabel.setText(pending_summary(runDir))
        self.ui.statusLabel.setText(_("Added {case} as a correction of {run}.").format(case=entry["name"], run=runDir))

    def onFinetuneAgain(self) -> None:
        """Start the next round from the followed run with the added corrections."""
        from VistaFinetuneLib.errors import UserError

        try:
            view = self.controller.finetune_again(self.ui.startFromPreviousCheckBox.checked)
        except UserError as error:
            self.showError(str(error))
            return
        self._parameterNode.runDir = str(self.controller.run_dir)
        self.results = None
        self.showProgress(view)
        self.following = not view.finished
        self.timer.start()
        self.updateButtons()

    def showRounds(self) -> None:
        """The rounds plot (round on x, Dice per class on y) and the forgetting table of the followed run."""
        from VistaFinetuneLib.panel.correction import forgetting_rows, pending_summary, read_output, rounds_picture

        output = read_output(self.controller.run_dir)
        picture = rounds_picture(output, PLOT_SIZE[0], PLOT_SIZE[1])
        pixmap = qt.QPixmap(picture.width, picture.height)
        pixmap.fill(qt.QColor("white"))
        painter = qt.QPainter(pixmap)
        for classLabel, color, points in picture.lines:
            pen = qt.QPen(qt.QColor(color))
            pen.setWidth(2)
            painter.setPen(pen)
            for (x1, y1), (x2, y2) in zip(points, points[1:], strict=False):
                painter.drawLine(x1, y1, x2, y2)
            for x, y in points:
                painter.drawEllipse(x - 2, y - 2, 4, 4)
            if points:
                painter.drawText(points[-1][0] - 24, points[-1][1] - 4, classLabel)
        painter.setPen(qt.QPen(qt.QColor("black")))
        painter.drawText(8, 14, picture.caption)
        painter.end()
        self.ui.roundsPlotLabel.setPixmap(pixmap)
        self.roundsPicture = picture
        rows, note = forgetting_rows(output)
        table = self.ui.forgettingTableWidget
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            cells = (row.class_label, row.agreement, row.pretrained_vs_truth, row.finetuned_vs_truth)
            for column, text in enumerate(cells + (_("yes") if row.flagged else _("no"),)):
                table.setItem(index, column, qt.QTableWidgetItem(text))
        self.ui.forgettingNoteLabel.setText(note)
        self.ui.correctionsLabel.setText(pending_summary(self.controller.run_dir))

    def onReload(self) -> None:
        # Forget the engine package too, so that edits under VistaFinetuneLib are picked up on reload.
        for name in [n for n in sys.modules if n == ENGINE_PACKAGE or n.startswith(ENGINE_PACKAGE + ".")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)


#
# VistaFinetuneLogic
#


class VistaFinetuneLogic(ScriptedLoadableModuleLogic):
    """Where the panel's defaults come from, and the panel controller for a parameter node.

    VistaFinetuneLib never imports torch or monai at import time; the heavy work runs in job processes.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return VistaFinetuneParameterNode(super().getParameterNode())

    @staticmethod
    def engine():
        return importlib.import_module(ENGINE_PACKAGE)

    def engineVersion(self) -> str:
        return self.engine().__version__

    @staticmethod
    def userFolder() -> Path:
        """Where the panel keeps runs and the managed job environment by default."""
        return Path(os.environ.get("VISTAFINETUNE_HOME") or Path.home() / "VistaFinetune")

    def managedEnvironmentDir(self) -> str:
        return str(self.userFolder() / "job-environment")

    @staticmethod
    def slicerPython() -> str:
        """The interpreter that runs Slicer's Python (PythonSlicer), used to create the managed environment. In
        Slicer, ``sys.executable`` is the Slicer application itself, so it is only the last resort (outside Slicer)."""
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        home = getattr(slicer.app, "slicerHome", None)
        inHome = Path(home) / "bin" / name if home else None
        return shutil.which("PythonSlicer") or (str(inHome) if inHome and inHome.is_file() else sys.executable)

    def setDefaultParameters(self, parameterNode) -> None:
        if not parameterNode.runsFolder:
            parameterNode.runsFolder = str(self.userFolder() / "runs")
        if not parameterNode.jobPython:
            from VistaFinetuneLib.jobs.environment import venv_python

            managed = venv_python(self.managedEnvironmentDir())  # bin/python, or Scripts\python.exe on Windows
            parameterNode.jobPython = str(managed) if managed.is_file() else self.slicerPython()

    def controller(self, parameterNode):
        from VistaFinetuneLib.panel.controller import PanelController

        return PanelController(Path(parameterNode.runsFolder), parameterNode.jobPython or self.slicerPython())

    @staticmethod
    def bundleDir(parameterNode) -> Path:
        """The chosen bundle, or the tiny reference bundle's configs (for its label table and defaults)."""
        from VistaFinetuneLib.resources import RESOURCES

        return Path(parameterNode.bundleDir) if parameterNode.bundleDir else RESOURCES / "TinyBundle"

    def workerClient(self, parameterNode, results):
        """The warm worker's client in the job environment (the process starts with the first request)."""
        from VistaFinetuneLib.interactive.worker_client import WorkerClient
        from VistaFinetuneLib.panel.review_predictions import predictions_dir

        python = parameterNode.jobPython or self.slicerPython()
        return WorkerClient(python, results.bundle_dir, predictions_dir(results.run_dir))

    def loadComparison(self, results, case: str, predictions: dict) -> dict:
        """Load a validation case, its ground truth and both predictions (model -> file) as nodes (scene logic)."""
        from VistaFinetuneLib.panel.results import ground_truth_file
        from VistaFinetuneLib.scene import nodes
        from VistaFinetuneLib.scene.predictions import ClassNaming, import_comparison, import_prediction

        scene = slicer.mrmlScene
        naming = ClassNaming(self.catalog(str(results.bundle_dir or "")))
        volume = nodes.read_volume(scene, results.case_images[case], case)
        truthFile = ground_truth_file(results.run_dir, case)
        truth = import_prediction(truthFile, volume, naming, f"{case} — ground truth") if truthFile else None
        return {"volume": volume, "truth": truth, "predictions": import_comparison(predictions, volume, naming, case)}

    def showComparison(self, reviewScene: dict) -> None:
        """Switch to the linked pretrained | finetuned layout and show the nodes there."""
        from VistaFinetuneLib.scene import layout

        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:  # None without a main window
            layoutNode = layoutManager.layoutLogic().GetLayoutNode()
            layoutManager.setLayout(layout.register_layout(layoutNode))
        layout.show_comparison(reviewScene["volume"], reviewScene["truth"], reviewScene["predictions"])

    @staticmethod
    def centreOn(reviewScene: dict, classId: int):
        """Centre every slice view on the structure (finetuned prediction, else ground truth, else pretrained)."""
        from VistaFinetuneLib.scene.predictions import class_segment_ids

        predictions = reviewScene["predictions"]
        for segmentation in (predictions.get("finetuned"), reviewScene["truth"], predictions.get("pretrained")):
            segmentId = class_segment_ids(segmentation).get(classId) if segmentation is not None else None
            if segmentId:
                centre = segmentation.GetSegmentCenterRAS(segmentId)
                if centre is not None:
                    slicer.vtkMRMLSliceNode.JumpAllSlices(
                        slicer.mrmlScene, *centre, slicer.vtkMRMLSliceNode.CenteredJumpSlice
                    )
                    return list(centre)
        return None

    def catalog(self, bundleDir: str):
        from VistaFinetuneLib.bundle.labels import LabelCatalog
        from VistaFinetuneLib.resources import RESOURCES

        return LabelCatalog.from_bundle(Path(bundleDir) if bundleDir else RESOURCES / "TinyBundle")


#
# VistaFinetuneTest
#


class VistaFinetuneTest(ScriptedLoadableModuleTest):
    """Tests that run inside Slicer (Reload & Test, or ctest on the Slicer extensions factory).

    test_panelRoundTrip needs a job environment with torch and monai and a built tiny reference bundle:
    VISTAFINETUNE_JOB_PYTHON (its interpreter) and VISTAFINETUNE_TINY_BUNDLE (the folder printed by
    ``vista-finetune tiny-bundle``). Without them it is skipped with a message saying so.
    """

    JOB_TIMEOUT_S = 900

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_engineImportsWithoutTorch()
        self.setUp()
        self.test_panelRoundTrip()

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
            importlib.import_module(ENGINE_PACKAGE + ".panel.controller")
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

    def waitFor(self, predicate, timeoutSeconds: float) -> bool:
        """Let Slicer's event loop run (the panel's QTimer polls) until ``predicate()`` or the timeout."""
        import time

        deadline = time.monotonic() + timeoutSeconds
        while time.monotonic() < deadline:
            slicer.app.processEvents()
            if predicate():
                return True
            time.sleep(0.1)
        return predicate()

    def makeSceneCases(self, folder: Path) -> list:
        """Synthetic CT volumes and segmentations (segments Liver, Spleen, Kidney L) built in the scene."""
        from VistaFinetuneLib.data import synthetic

        synthetic.write_dataset(folder / "phantoms", 4, seed=7, spec=synthetic.MICRO_SPEC)
        segmentations = slicer.modules.segmentations.logic()
        cases = []
        for image in sorted((folder / "phantoms" / "imagesTr").glob("*.nii.gz")):
            volume = slicer.util.loadVolume(str(image))
            labels = slicer.util.loadLabelVolume(str(folder / "phantoms" / "labelsTr" / image.name))
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", volume.GetName() + " labels")
            segmentations.ImportLabelmapToSegmentationNode(labels, segmentation)
            for index, name in enumerate(("Liver", "Spleen", "Kidney L")):
                segmentation.GetSegmentation().GetNthSegment(index).SetName(name)
            slicer.mrmlScene.RemoveNode(labels)
            cases.append((volume, segmentation))
        return cases

    def test_panelRoundTrip(self) -> None:
        """Scene cases -> export (scene logic) -> tiny finetune through the job API -> import -> tables."""
        import tempfile

        python = os.environ.get("VISTAFINETUNE_JOB_PYTHON")
        bundle = os.environ.get("VISTAFINETUNE_TINY_BUNDLE")
        if not (python and bundle):
            self.delayDisplay("Skipped: set VISTAFINETUNE_JOB_PYTHON and VISTAFINETUNE_TINY_BUNDLE for the round trip")
            return
        folder = Path(tempfile.mkdtemp(prefix="VistaFinetuneTest-"))
        self.delayDisplay("Building synthetic CT volumes and segmentations in the scene")
        cases = self.makeSceneCases(folder)
        self.assertEqual(len(cases), 4)

        slicer.util.selectModule("VistaFinetune")
        widget = slicer.modules.VistaFinetuneWidget
        ui = widget.ui
        ui.jobPythonPathLineEdit.currentPath = python
        ui.bundlePathLineEdit.currentPath = bundle
        ui.runsFolderPathLineEdit.currentPath = str(folder / "runs")
        for volume, segmentation in cases:
            ui.sceneVolumeSelector.setCurrentNode(volume)
            ui.sceneSegmentationSelector.setCurrentNode(segmentation)
            ui.addSceneCaseButton.click()
        self.assertEqual(ui.casesTableWidget.rowCount, 4)
        self.assertEqual([row.validation for row in widget.caseRows], [True, False, False, False])
        self.assertEqual([row.class_id for row in widget.mappingRows], [1, 3, 14])

        self.delayDisplay("Exporting and finetuning the tiny bundle in the background (1 epoch)")
        ui.epochsSpinBox.value = 1
        ui.startButton.click()  # the scene cases are written in steps, then the job starts
        self.assertTrue(self.waitFor(lambda: widget.following, 120), widget.ui.statusLabel.text)
        exported = widget.controller.run_dir.parent / f"{widget.controller.run_dir.name}.inputs" / "dataset"
        self.assertTrue((exported / "datalist.json").is_file())
        self.assertTrue(self.waitFor(lambda: not widget.following, self.JOB_TIMEOUT_S), ui.logTextEdit.plainText)
        self.assertEqual(ui.progressLabel.text, "Finished: see Results.")
        self.assertEqual(ui.progressBar.value, 100)

        self.delayDisplay("Results, and the review side by side")
        self.assertEqual(ui.resultsTableWidget.rowCount, 3)
        self.assertEqual(ui.resultsTableWidget.item(2, 0).text(), "14: left kidney")
        self.assertTrue(ui.verdictLabel.text)
        ui.openReviewButton.click()
        self.assertEqual(ui.reviewCaseComboBox.count, 1)
        ui.loadReviewButton.click()
        self.assertTrue(self.waitFor(lambda: widget.pendingReview is None, 600))  # the warm worker predicts the case
        self.assertTrue(
            ui.reviewStatusLabel.text.startswith(ui.reviewCaseComboBox.currentText), ui.reviewStatusLabel.text
        )
        self.assertEqual(ui.reviewTableWidget.rowCount, 3)
        self.assertEqual(len(widget.reviewScene["predictions"]), 2)
        widget.onReviewRowClicked(2, 0)
        self.assertTrue(
            ui.reviewStatusLabel.text.startswith("Views centred on 14: left kidney"), ui.reviewStatusLabel.text
        )
        self.delayDisplay("Test passed")
