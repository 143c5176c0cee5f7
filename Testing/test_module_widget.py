"""The module widget's own code, run under SlicerAppStandIn with real jobs on the tiny bundle.

One scripted session, as a user would click it: setup() -> check the job environment -> read a dataset folder
-> choose classes -> start a finetune and cancel it -> start another -> "restart Slicer" (save the scene, load it
into a new scene, build a new widget: it re-attaches to the running job) -> follow it to the end through the
QTimer -> results -> review -> a table row click; then a screenshot of the panel with every section open.
The second job is the only real training (1 epoch on micro phantoms, formal evaluation and review included).
"""

import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from job_python import job_python
from slicer_app_standin import SlicerAppStandIn

from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.jobs import control, processes

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
MODULE_SCRIPT = ROOT / "VistaFinetune" / "VistaFinetune.py"
JOB_TIMEOUT = 600.0
# Set to a path (e.g. docs/panel.png) to keep the screenshot; the test always writes one to its own folder.
SCREENSHOT_ENV = "VISTAFINETUNE_PANEL_SCREENSHOT"


@dataclass
class Session:
    """What the scripted session saw."""

    standIn: SlicerAppStandIn
    widget: object  # the widget built after the restart
    environmentText: str = ""
    cpuWarning: str = ""
    caseRows: int = 0
    validationTicks: list[bool] = field(default_factory=list)
    mappingIds: list[int | None] = field(default_factory=list)
    newStructureNote: str = ""
    splitError: str = ""
    cancelled: control.JobState | None = None
    cancelledLeftovers: list[int] = field(default_factory=list)
    runDir: Path | None = None
    reattached: bool = False
    restoredEpochs: int | None = None
    startEnabledAgain: bool = False
    headlines: list[str] = field(default_factory=list)
    percents: list[int] = field(default_factory=list)
    final: control.JobState | None = None
    screenshot: Path | None = None


def loadModule():
    spec = importlib.util.spec_from_file_location("VistaFinetune", MODULE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["VistaFinetune"] = module
    spec.loader.exec_module(module)
    return module


def newWidget(module):
    widget = module.VistaFinetuneWidget()
    widget.setup()
    return widget


def reloadScene(standIn: SlicerAppStandIn, folder: Path) -> None:
    """Save the scene to a .mrml file and load it into a fresh scene (what closing and reopening Slicer does)."""
    import slicer

    path = folder / "scene.mrml"
    standIn.scene.SetURL(str(path))
    assert standIn.scene.Commit(), "the scene could not be saved"
    scene = slicer.vtkMRMLScene()
    scene.SetURL(str(path))
    assert scene.Import(), "the saved scene could not be loaded"
    standIn.scene = scene
    slicer.mrmlScene = scene


@pytest.fixture(scope="module")
def session(tiny_bundle_dir, tmp_path_factory) -> Session:
    root = tmp_path_factory.mktemp("panel")
    dataset = root / "data"
    synthetic.write_dataset(dataset, 4, seed=11, spec=synthetic.MICRO_SPEC)
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"1": "Liver", "2": "Spleen", "3": "Kidney L"}}))
    saved_home = os.environ.get("VISTAFINETUNE_HOME")
    os.environ["VISTAFINETUNE_HOME"] = str(root / "home")
    standIn = SlicerAppStandIn().install()
    module = loadModule()
    seen = Session(standIn, None)
    try:
        widget = newWidget(module)
        ui = widget.ui
        ui.jobPythonPathLineEdit.currentPath = job_python()
        ui.bundlePathLineEdit.currentPath = str(tiny_bundle_dir)
        ui.datasetPathLineEdit.currentPath = str(dataset)

        ui.checkEnvironmentButton.click()
        assert standIn.processEventsUntil(lambda: "interpreter:" in ui.environmentTextEdit.toPlainText(), 120)
        seen.environmentText = ui.environmentTextEdit.toPlainText()
        seen.cpuWarning = ui.cpuWarningLabel.text

        ui.readCasesButton.click()
        assert standIn.processEventsUntil(lambda: ui.casesTableWidget.rowCount() == 4, 120), standIn.errors
        seen.caseRows = ui.casesTableWidget.rowCount()
        seen.validationTicks = [row.validation for row in widget.caseRows]
        seen.mappingIds = [row.class_id for row in widget.mappingRows]
        kidney = ui.mappingTableWidget.cellWidget(2, 2)
        kidney.setCurrentIndex(kidney.findText("new structure"))
        seen.newStructureNote = ui.mappingTableWidget.item(2, 3).text()
        kidney.setCurrentIndex(kidney.findData(14))

        # The engine's message reaches the user: no validation case ticked.
        validation = [i for i, row in enumerate(widget.caseRows) if row.validation]
        for i in validation:
            ui.casesTableWidget.item(i, 1).setCheckState(widget_unchecked())
        ui.startButton.click()
        seen.splitError = standIn.errors[-1] if standIn.errors else ""
        for i in validation:
            ui.casesTableWidget.item(i, 1).setCheckState(widget_checked())

        ui.epochsSpinBox.setValue(1)  # through the parameter node binding
        ui.learningRateSpinBox.setValue(0.002)

        ui.startButton.click()  # job 1: cancelled as soon as it runs
        first = widget.controller.run_dir
        assert standIn.processEventsUntil(lambda: control.poll_job(first).phase is not None, 120)
        ui.cancelButton.click()
        assert standIn.processEventsUntil(lambda: not widget.following, 60)
        seen.cancelled = control.poll_job(first)
        standIn.processEventsUntil(lambda: control.job_processes(first) == [], 10)  # the supervisor exits last
        seen.cancelledLeftovers = control.job_processes(first)

        ui.startButton.click()  # job 2: followed to the end, across a "restart"
        seen.runDir = widget.controller.run_dir
        assert standIn.processEventsUntil(lambda: control.poll_job(seen.runDir).phase is not None, 120)
        widget.cleanup()
        reloadScene(standIn, root)
        widget = newWidget(module)
        seen.widget = widget
        seen.reattached = widget.following and widget.controller.run_dir == seen.runDir
        seen.restoredEpochs = widget._parameterNode.epochs

        def watch() -> bool:
            seen.headlines.append(widget.ui.progressLabel.text)
            seen.percents.append(widget.ui.progressBar.value)
            return not widget.following

        assert standIn.processEventsUntil(watch, JOB_TIMEOUT, interval=0.5), widget.ui.logTextEdit.toPlainText()
        seen.final = control.poll_job(seen.runDir)
        seen.headlines.append(widget.ui.progressLabel.text)
        seen.percents.append(widget.ui.progressBar.value)
        # The restarted panel reads its environment and cases again (also what the screenshot shows).
        widget.ui.checkEnvironmentButton.click()
        widget.ui.readCasesButton.click()
        assert standIn.processEventsUntil(
            lambda: widget.ui.casesTableWidget.rowCount() == 4 and not widget.pending, 120
        ), standIn.errors
        seen.startEnabledAgain = widget.ui.startButton.isEnabled()
        yield seen
    finally:
        for run in root.glob("home/runs/finetune-*"):
            if run.is_dir():
                control.cancel_job(run, grace_seconds=2)
        standIn.uninstall()
        sys.modules.pop("VistaFinetune", None)
        if saved_home is None:
            os.environ.pop("VISTAFINETUNE_HOME", None)
        else:
            os.environ["VISTAFINETUNE_HOME"] = saved_home


def widget_checked():
    import qt

    return qt.Qt.Checked


def widget_unchecked():
    import qt

    return qt.Qt.Unchecked


def test_setup_reports_the_job_environment_and_warns_on_cpu(session):
    assert f"interpreter: {job_python()}" in session.environmentText
    assert "torch:" in session.environmentText and "packages:" in session.environmentText
    assert session.cpuWarning.startswith("Training would run on the CPU")  # no GPU on the CI machines


def test_training_data_and_class_mapping_from_a_dataset_folder(session):
    assert session.caseRows == 4 and sum(session.validationTicks) == 1
    assert session.mappingIds == [1, 3, 14]  # suggested from dataset.json's names: liver, spleen, left kidney
    assert session.newStructureNote == "new structure: id 133"


def test_the_engine_message_is_shown_when_the_split_is_unusable(session):
    assert session.splitError == "no validation case: tick 'validation' for at least one usable case"


def test_cancel_stops_the_job_and_every_process(session):
    assert session.cancelled.state == "cancelled" and session.cancelledLeftovers == []


def test_a_new_widget_on_the_reloaded_scene_reattaches_to_the_running_job(session):
    assert session.reattached
    assert session.widget._parameterNode.runDir == str(session.runDir)
    assert session.restoredEpochs == 1  # the plan as edited, restored from the saved scene


def test_progress_is_followed_to_the_end(session):
    assert session.final.state == "completed", session.final.log_tail
    assert any(h.startswith("Training: epoch 1/1") for h in session.headlines)
    transitions = list(dict.fromkeys(zip(session.headlines, session.percents, strict=True)))
    assert session.percents == sorted(session.percents), transitions
    assert session.percents[-1] == 100
    widget = session.widget
    assert widget.ui.progressLabel.text == "Finished: see Results."
    assert not widget.ui.cancelButton.isEnabled()
    assert session.startEnabledAgain  # once the restarted panel has read its cases again
    assert not widget.ui.curvesLabel.pixmap().isNull()
    assert not widget.timer.isActive()  # nothing left to poll


def test_results_show_the_run_output(session):
    widget = session.widget
    result = json.loads((session.runDir / "output.json").read_text())
    table = widget.ui.resultsTableWidget
    assert [table.item(r, 0).text() for r in range(table.rowCount())] == ["1: liver", "3: spleen", "14: left kidney"]
    ft = result["output"]["formal_dice"]["finetuned"]["per_class"]
    assert table.item(2, 2).text() == ("-" if ft["14"] is None else f"{ft['14']:.4f}")
    expected = "Recommendation: use the finetuned checkpoint." if result["output"]["improved"] else "No evidence"
    assert widget.ui.verdictLabel.text.startswith(expected)
    assert widget.ui.reasonsLabel.text.split("\n") == result["output"]["decision_rationale"]
    assert widget.ui.openReportButton.isEnabled() == Path(result["review"]["html"]).is_file()


def addComparisonViews(scene) -> dict:
    """The slice views Slicer's layout manager makes for the comparison layout (the stand-in has no views)."""
    import slicer

    from VistaFinetuneLib.scene.layout import VIEWS

    views = {}
    for view in VIEWS:
        sliceNode = slicer.vtkMRMLSliceNode()
        sliceNode.SetLayoutName(view.name)
        scene.AddNode(sliceNode)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(view.name)
        scene.AddNode(composite)
        views[view.name] = (view, sliceNode)
    return views


def test_review_loads_the_case_side_by_side_and_a_row_click_centres_the_views(session):
    import numpy as np

    from VistaFinetuneLib.panel.review_predictions import predictions_dir
    from VistaFinetuneLib.scene.predictions import class_segment_ids

    widget = session.widget
    ui = widget.ui
    ui.openReviewButton.click()
    assert ui.reviewCollapsibleButton.collapsed is False
    assert ui.reviewCaseComboBox.count == 1
    views = addComparisonViews(session.standIn.scene)
    ui.loadReviewButton.click()
    case = ui.reviewCaseComboBox.currentText
    assert ui.reviewStatusLabel.text.startswith(f"Predicting {case}") and not ui.loadReviewButton.isEnabled()
    assert session.standIn.processEventsUntil(lambda: widget.pendingReview is None, 300)  # the warm worker answers
    status = ui.reviewStatusLabel.text
    assert status.startswith(f"{case}: pretrained | finetuned side by side ("), status
    formal = json.loads((session.runDir / "output.json").read_text())["output"]["formal_dice"]
    liver = formal["pretrained"]["per_case"][case]["1"]
    assert ui.reviewTableWidget.rowCount() == 3
    assert ui.reviewTableWidget.item(0, 1).text() == ("-" if liver is None else f"{liver:.4f}")
    nodes = widget.reviewScene
    names = {nodes["truth"].GetName()} | {n.GetName() for n in nodes["predictions"].values()}
    assert names == {f"{case} — ground truth", f"{case} — VISTA3D pretrained", f"{case} — VISTA3D finetuned"}
    for model, segmentation in nodes["predictions"].items():
        shownIn = set(segmentation.GetDisplayNode().GetViewNodeIDs())
        assert shownIn == {node.GetID() for view, node in views.values() if view.model == model}
    assert set(nodes["truth"].GetDisplayNode().GetViewNodeIDs()) == {node.GetID() for _, node in views.values()}

    written = predictions_dir(session.runDir)
    assert {p.relative_to(written).as_posix() for p in written.rglob("*.nii.gz")} == {
        f"pretrained/{case}.nii.gz",
        f"finetuned/{case}.nii.gz",
    }  # the worker's outputs were loaded
    ui.reviewTableWidget.cellClicked.emit(2, 0)  # left kidney
    assert ui.reviewStatusLabel.text.startswith("Views centred on 14: left kidney"), ui.reviewStatusLabel.text
    centre = None
    for segmentation in (nodes["predictions"]["finetuned"], nodes["truth"], nodes["predictions"]["pretrained"]):
        segmentId = class_segment_ids(segmentation).get(14)
        if segmentId:
            centre = np.array(segmentation.GetSegmentCenterRAS(segmentId))
            break
    for _, sliceNode in views.values():
        matrix = sliceNode.GetSliceToRAS()
        origin = np.array([matrix.GetElement(i, 3) for i in range(3)])
        assert np.allclose(origin, centre, atol=0.5)  # every view jumped to the kidney's centre
    worker = widget.worker.pid
    widget.cleanup()  # closing the module panel stops the worker
    assert session.standIn.processEventsUntil(lambda: not processes.alive(worker), 30)


def test_screenshot_with_every_section_open(session, tmp_path):
    widget = session.widget
    for name in ("setup", "trainingData", "classMapping", "training", "results", "review"):
        getattr(widget.ui, f"{name}CollapsibleButton").collapsed = False
    panel = widget.parent
    panel.show()
    panel.resize(480, max(1200, panel.sizeHint().height()))  # Slicer scrolls the panel; offscreen Qt would squeeze it
    session.standIn.application.processEvents()
    target = tmp_path / "panel.png"
    image = panel.grab().toImage()
    assert image.save(str(target))
    assert image.width() >= 480 and image.height() >= 1200  # every section open needs at least this much
    colours = {image.pixel(x, y) for x in range(0, image.width(), 20) for y in range(0, image.height(), 20)}
    assert len(colours) > 5  # not blank
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(target, os.environ[SCREENSHOT_ENV])


def test_cases_from_the_scene_are_exported_and_trained_on(session):
    """Add from scene: two volumes with segmentations -> rows, suggested classes -> Start exports them
    through the scene logic and starts the job on that export (cancelled at once: the training ran above)."""
    import scene_helpers
    import slicer

    from VistaFinetuneLib.jobs.supervisor import JobFiles
    from VistaFinetuneLib.panel.controller import training_data_path

    scene = session.standIn.scene
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()  # Slicer keeps one per scene (converter rules)
    segmentations.SetMRMLScene(scene)
    names = {"liver": "Liver", "spleen": "Spleen", "left kidney": "Kidney L"}
    for index in range(2):
        image, label, affine = scene_helpers.phantom(index)
        volume = scene_helpers.add_volume(scene, f"CT {index}", image, affine)
        segments = scene_helpers.organ_segments(label, affine, names)
        scene_helpers.add_segmentation(scene, f"CT {index} segments", volume, segments)
    widget = newWidget(sys.modules["VistaFinetune"])
    ui = widget.ui
    for index in range(2):
        ui.sceneVolumeSelector.setCurrentIndex(ui.sceneVolumeSelector.findText(f"CT {index}"))
        ui.sceneSegmentationSelector.setCurrentIndex(ui.sceneSegmentationSelector.findText(f"CT {index} segments"))
        ui.addSceneCaseButton.click()
    assert [ui.casesTableWidget.item(r, 0).text() for r in range(ui.casesTableWidget.rowCount())] == ["CT 0", "CT 1"]
    assert [row.validation for row in widget.caseRows] == [True, False]
    assert [(row.name, row.class_id) for row in widget.mappingRows] == [("Liver", 1), ("Spleen", 3), ("Kidney L", 14)]
    assert ui.mappingMessagesLabel.text == "Mapping complete."

    ui.epochsSpinBox.setValue(1)
    # Start returns at once: the cases are written in steps (Slicer repaints), and Cancel stops that before a start.
    ui.startButton.click()
    assert widget.sceneExport is not None and not widget.following, session.standIn.errors
    assert "Writing the scene cases" in ui.progressLabel.text and ui.cancelButton.isEnabled()
    cancelled = widget.sceneExport["runDir"]
    ui.cancelButton.click()
    assert widget.sceneExport is None and not widget.following and ui.startButton.isEnabled()
    assert session.standIn.processEventsUntil(lambda: not training_data_path(cancelled).parent.exists(), 30)
    assert not cancelled.exists()  # no job was started
    ui.startButton.click()
    assert session.standIn.processEventsUntil(lambda: widget.following, 120), session.standIn.errors
    runDir = widget.controller.run_dir
    exported = training_data_path(runDir).parent / "dataset"
    items = json.loads((exported / "datalist.json").read_text())["training"]
    assert [(item["image"], item["fold"]) for item in items] == [
        ("imagesTr/CT_0.nii.gz", 0),
        ("imagesTr/CT_1.nii.gz", 1),
    ]
    arguments = json.loads(JobFiles(runDir).job_json.read_text())["engine_args"]
    assert arguments[arguments.index("--datalist") + 1] == str(exported / "datalist.json")
    assert json.loads(arguments[arguments.index("--label-mapping") + 1]) == [[1, 1], [3, 3], [14, 14]]
    # Cancel once the supervisor runs the job (its signal handler is set before it starts the job).
    assert session.standIn.processEventsUntil(lambda: "pid" in json.loads(JobFiles(runDir).job_json.read_text()), 60)
    ui.cancelButton.click()
    assert session.standIn.processEventsUntil(lambda: not widget.following, 60)
    assert control.poll_job(runDir).state == "cancelled"
    assert session.standIn.processEventsUntil(lambda: control.job_processes(runDir) == [], 10)  # the supervisor too
