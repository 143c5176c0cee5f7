"""The Setup section's slots under SlicerAppStandIn: they ask before installing or downloading, say what and where,
and do nothing when the user declines; re-attaching with no runs names the folder. (Installing and downloading
themselves need the network; the job API that runs them is tested in test_jobs.py.)"""

import importlib.util
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from slicer_app_standin import SlicerAppStandIn

from VistaFinetuneLib.jobs.supervisor import JobFiles
from VistaFinetuneLib.resources import RESOURCES

pytestmark = pytest.mark.unit

MODULE_SCRIPT = Path(__file__).resolve().parents[1] / "VistaFinetune" / "VistaFinetune.py"
EFFECT_MODULE_SCRIPT = MODULE_SCRIPT.parents[1] / "SegmentEditorVISTA3D" / "SegmentEditorVISTA3D.py"


@pytest.fixture
def panel(tmp_path):
    saved = os.environ.get("VISTAFINETUNE_HOME")
    os.environ["VISTAFINETUNE_HOME"] = str(tmp_path / "home")
    standIn = SlicerAppStandIn().install()
    spec = importlib.util.spec_from_file_location("VistaFinetune", MODULE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["VistaFinetune"] = module
    try:
        spec.loader.exec_module(module)
        widget = module.VistaFinetuneWidget()
        widget.setup()
        yield standIn, widget, tmp_path / "home"
    finally:
        standIn.uninstall()
        sys.modules.pop("VistaFinetune", None)
        if saved is None:
            os.environ.pop("VISTAFINETUNE_HOME", None)
        else:
            os.environ["VISTAFINETUNE_HOME"] = saved


def test_defaults_come_from_the_users_folder(panel):
    standIn, widget, home = panel
    assert widget._parameterNode.runsFolder == str(home / "runs")
    assert widget.ui.runsFolderPathLineEdit.currentPath == str(home / "runs")
    assert widget.controller.runs_root == home / "runs"
    assert not widget.ui.startButton.isEnabled() and not widget.ui.cancelButton.isEnabled()


def test_the_managed_environment_is_described_and_confirmed_first(panel):
    standIn, widget, home = panel
    standIn.answer = False
    widget.ui.cudaComboBox.setCurrentIndex(widget.ui.cudaComboBox.findText("cpu"))
    widget.ui.createEnvironmentButton.click()
    question = standIn.questions[-1]
    target = home / "job-environment"
    assert str(target) in question and "Slicer's own Python is not changed" in question
    assert f"-m venv {target}" in question and "download.pytorch.org/whl/cpu" in question
    assert not target.exists() and widget.setupJobDir is None  # declined: nothing created, no job


def test_a_bundle_download_names_its_size_and_place_first(panel):
    standIn, widget, home = panel
    standIn.answer = False
    widget.ui.bundleNameComboBox.setCurrentIndex(widget.ui.bundleNameComboBox.findText("nv-segment-ct"))
    widget.ui.downloadBundleButton.click()
    target = home / "runs" / "bundles" / "nv-segment-ct"
    assert standIn.questions[-1] == f"Download the nv-segment-ct bundle (about 872 MB of weights) into {target}?"
    assert not (home / "runs").exists() and widget.setupJobDir is None


def test_reattach_without_runs_names_the_folder(panel):
    standIn, widget, home = panel
    widget.ui.reattachButton.click()
    assert standIn.errors == [f"{home / 'runs'}: no run folders to re-attach to"]
    assert widget.ui.statusLabel.text == standIn.errors[0]


def test_unreadable_training_data_shows_the_engine_message(panel, tmp_path):
    standIn, widget, home = panel
    widget.ui.datasetPathLineEdit.currentPath = str(tmp_path / "missing")
    widget.ui.readCasesButton.click()
    message = f"{tmp_path / 'missing'}: the dataset folder does not exist"
    assert standIn.processEventsUntil(lambda: standIn.errors == [message], 30), standIn.errors
    assert widget.ui.casesStatusLabel.text == message and widget.caseRows == []


def test_clearing_a_path_field_is_stored(panel):
    """CTK does not signal an emptied path field; the panel still stores it (empty bundle: the tiny bundle)."""
    standIn, widget, home = panel
    ui, node = widget.ui, widget._parameterNode
    ui.bundlePathLineEdit.currentPath = str(home / "my-bundle")
    ui.datalistPathLineEdit.currentPath = str(home / "datalist.json")
    assert (node.bundleDir, node.datalist) == (str(home / "my-bundle"), str(home / "datalist.json"))
    ui.bundlePathLineEdit.currentPath = ""
    ui.datalistPathLineEdit.currentPath = ""
    assert (node.bundleDir, node.datalist) == ("", "")
    assert widget.logic.bundleDir(node) == RESOURCES / "TinyBundle"


def test_the_training_numbers_keep_the_forms_ranges(panel):
    """Slicer's GUI connectors replace the spin boxes' ranges unless the parameter says it: epochs stay >= 1,
    the learning rate >= 0 and the cache rate within [0, 1]."""
    standIn, widget, home = panel
    ui, node = widget.ui, widget._parameterNode
    assert (ui.epochsSpinBox.minimum, ui.epochsSpinBox.maximum) == (1, 10000)
    ui.epochsSpinBox.setValue(0)
    ui.learningRateSpinBox.setValue(-0.5)
    ui.cacheRateSpinBox.setValue(1.5)
    assert (node.epochs, node.learningRate, node.cacheRate) == (1, 0.0, 1.0)
    with pytest.raises(ValueError):
        node.cacheRate = 2.0  # the parameter node refuses it as well


class SlowToCloseWorker:
    """Test double for the review worker's client, whose close() takes long (its process finishing a request)."""

    def __init__(self) -> None:
        self.release, self.closed = threading.Event(), threading.Event()
        self.closedOn = None

    def close(self) -> None:
        self.closedOn = threading.current_thread()
        self.release.wait(10)
        self.closed.set()


def test_closing_the_panel_does_not_wait_for_the_worker(panel):
    standIn, widget, home = panel
    slow = widget.worker = SlowToCloseWorker()
    widget.cleanup()  # returns at once: the worker is stopped in a thread
    slow.release.set()
    assert slow.closed.wait(10) and slow.closedOn is not threading.main_thread()


def test_a_new_controller_keeps_following_the_run_and_a_closed_scene_stops_it(panel):
    """Choosing another runs folder or job Python replaces the controller while a run is followed; closing the scene
    stops following (no disabled Start, no "no run to follow" every second)."""
    standIn, widget, home = panel
    run = home / "runs" / "finetune-followed"
    job = JobFiles(run).job_json
    job.parent.mkdir(parents=True)
    job.write_text(json.dumps({"host": socket.gethostname(), "started": time.time()}))  # a running job, as polled
    widget.attachRun(str(run))
    assert widget.following and widget.ui.cancelButton.isEnabled()
    widget.ui.runsFolderPathLineEdit.currentPath = str(home / "other-runs")
    widget.ui.jobPythonPathLineEdit.currentPath = sys.executable
    widget.onPollTimer()
    assert widget.controller.run_dir == run and widget.following and standIn.errors == []
    standIn.scene.Clear(0)  # File > Close scene
    assert not widget.following and not widget.ui.cancelButton.isEnabled()
    widget.onPollTimer()
    assert standIn.errors == []


def test_an_older_slicer_is_told_the_minimum_version(tmp_path, caplog):
    """Slicer 5.8 lacks vtkSlicerSegmentEditorLogic: the panel says which Slicer it needs, and the effect is not
    registered (with the same message in the log) instead of failing later."""
    standIn = SlicerAppStandIn().install()
    standIn.slicer.app.minorVersion = 8
    try:
        module = loadScript("VistaFinetune", MODULE_SCRIPT)
        widget = module.VistaFinetuneWidget()
        widget.setup()
        widget.enter()
        assert "needs 3D Slicer 5.10 or newer; this is Slicer 5.8" in widget.versionLabel.text
        effectModule = loadScript("SegmentEditorVISTA3D", EFFECT_MODULE_SCRIPT)
        registrar = object.__new__(effectModule.SegmentEditorVISTA3D)
        registrar.registerEditorEffect()  # in 5.10 this would import Slicer's scripted-effect adaptor
        assert "needs 3D Slicer 5.10 or newer; this is Slicer 5.8. It is not registered." in caplog.text
    finally:
        standIn.uninstall()
        sys.modules.pop("VistaFinetune", None)
        sys.modules.pop("SegmentEditorVISTA3D", None)


def loadScript(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_environment_dialog_names_pythonslicer_not_the_slicer_application(panel, tmp_path, monkeypatch):
    """In Slicer, sys.executable is the Slicer application: the venv is made by PythonSlicer, and the dialog says so."""
    standIn, widget, home = panel
    slicerBin = tmp_path / "Slicer-5.10" / "bin"
    slicerBin.mkdir(parents=True)
    pythonSlicer = slicerBin / "PythonSlicer"
    pythonSlicer.write_text("#!/bin/sh\n")
    pythonSlicer.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "Slicer-5.10" / "Slicer"))
    monkeypatch.setenv("PATH", f"{slicerBin}{os.pathsep}{os.environ.get('PATH', '')}")
    standIn.answer = False
    widget.ui.cudaComboBox.setCurrentIndex(widget.ui.cudaComboBox.findText("cpu"))
    widget.ui.createEnvironmentButton.click()
    question = standIn.questions[-1]
    assert f"{pythonSlicer} -m venv {home / 'job-environment'}" in question
    assert f"{sys.executable} -m venv" not in question
