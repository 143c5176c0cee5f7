"""The panel's correction loop under SlicerAppStandIn (a test stand-in for the Slicer application): follow a finished
run, add two corrected cases from the scene (*Add to training set*), *Finetune again* (a real round 2 job on the
tiny bundle), then the rounds plot and the forgetting table of the new round.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from job_python import job_python
from slicer_app_standin import SlicerAppStandIn

from VistaFinetuneLib.data.nifti import read_nifti
from VistaFinetuneLib.jobs import control
from VistaFinetuneLib.panel import correction

pytestmark = pytest.mark.e2e

MODULE_SCRIPT = Path(__file__).resolve().parents[1] / "VistaFinetune" / "VistaFinetune.py"
NAMES = {"liver": "Liver", "left kidney": "Kidney L"}


def loadModule():
    spec = importlib.util.spec_from_file_location("VistaFinetune", MODULE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["VistaFinetune"] = module
    spec.loader.exec_module(module)
    return module


def addCase(scene, name: str, index: int):
    """A phantom volume and its (corrected) segmentation with a liver and a left kidney segment."""
    import scene_helpers

    image, label, affine = scene_helpers.phantom(index, seed=31)
    volume = scene_helpers.add_volume(scene, name, image, affine)
    segments = scene_helpers.organ_segments(label, affine, NAMES)
    return volume, scene_helpers.add_segmentation(scene, f"{name} corrected", volume, segments)


def test_correct_add_and_finetune_again(round_one_run, tiny_bundle_dir, tmp_path):
    import numpy as np
    import slicer

    saved_home = os.environ.get("VISTAFINETUNE_HOME")
    os.environ["VISTAFINETUNE_HOME"] = str(tmp_path / "home")
    standIn = SlicerAppStandIn().install()
    nextRun = None
    try:
        scene = standIn.scene
        segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        segmentations.SetMRMLScene(scene)
        widget = loadModule().VistaFinetuneWidget()
        widget.setup()
        ui = widget.ui
        ui.jobPythonPathLineEdit.currentPath = job_python()
        ui.bundlePathLineEdit.currentPath = str(tiny_bundle_dir)
        ui.runsFolderPathLineEdit.currentPath = str(tmp_path / "runs")
        widget.attachRun(str(round_one_run))
        assert [line[0] for line in widget.roundsPicture.lines] == ["14"]
        assert ui.forgettingTableWidget.item(0, 0).text() == "1: liver"

        for index, name in enumerate(("fix 1", "fix 2", "a_000")):
            volume, segmentation = addCase(scene, name, index)
            for selector in (ui.correctionVolumeSelector, ui.correctionSegmentationSelector):
                selector.setMRMLScene(scene)  # the stand-in lists nodes when given the scene; Slicer's watches it
            ui.correctionVolumeSelector.setCurrentIndex(ui.correctionVolumeSelector.findText(volume.GetName()))
            selector = ui.correctionSegmentationSelector
            selector.setCurrentIndex(selector.findText(segmentation.GetName()))
            ui.addCorrectionButton.click()
        assert "a validation case" in standIn.errors[-1]  # a_000 validates round 1: refused
        record = correction.read_corrections(round_one_run)
        assert [c["name"] for c in record["cases"]] == ["fix_1", "fix_2"]
        assert {c["correction_of"] for c in record["cases"]} == {str(round_one_run)}
        assert record["cases"][0]["segments_left_out"] == ["Liver"]
        label = read_nifti(Path(record["cases"][0]["label"]))[0]
        assert set(np.unique(label).tolist()) == {0, 3}  # the left kidney written as the run's label value
        assert ui.correctionsLabel.text.startswith("2 corrected case(s)")

        ui.finetuneAgainButton.click()
        nextRun = widget.controller.run_dir
        assert widget.following and nextRun != round_one_run, standIn.errors
        assert standIn.processEventsUntil(lambda: not widget.following, 600, interval=0.5), ui.logTextEdit.toPlainText()
        output = json.loads((nextRun / "output.json").read_text())
        assert [r["run_dir"] for r in output["rounds"]] == [str(round_one_run), str(nextRun)]
        assert output["rounds"][1]["new_cases"] == ["fix_1", "fix_2"]
        assert "forgetting guard" in Path(output["review"]["html"]).read_text()  # the review page says it too
        (label14, _, points), = widget.roundsPicture.lines
        assert label14 == "14" and len(points) == 2 and points[0][0] < points[1][0]  # round 1 then round 2
        assert ui.forgettingTableWidget.item(0, 0).text() == "1: liver"
    finally:
        if nextRun is not None:
            control.cancel_job(nextRun, grace_seconds=2)
        standIn.uninstall()
        sys.modules.pop("VistaFinetune", None)
        if saved_home is None:
            os.environ.pop("VISTAFINETUNE_HOME", None)
        else:
            os.environ["VISTAFINETUNE_HOME"] = saved_home
