"""Runs in the Slicer-Python test environment (.venv-slicer): the panel and the effect load with only what a stock
3D Slicer ships. A fresh interpreter (guard on, Slicer stand-ins installed) loads VistaFinetune.py, runs the
widget's setup(), loads the effect file and imports every engine module of the Slicer side; nothing outside
Slicer's packages may be imported on the way."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from job_python import SLICER_PYTHON
from slicer_python_guard import SlicerPythonGuard

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not SLICER_PYTHON, reason="runs in .venv-slicer (make test-slicer)"),
]
ROOT = Path(__file__).resolve().parents[1]

LOAD_THE_SLICER_SIDE = """
import importlib, importlib.util, pkgutil, sys
sys.path[:0] = [{testing!r}, {engine!r}]
import slicer_python_guard
guard = slicer_python_guard.install()
from segment_editor_standin import SegmentEditorStandIn
standIn = SegmentEditorStandIn({temporary!r}).install()
spec = importlib.util.spec_from_file_location("VistaFinetune", {script!r})
module = importlib.util.module_from_spec(spec)
sys.modules["VistaFinetune"] = module
spec.loader.exec_module(module)
module.VistaFinetuneWidget().setup()
spec = importlib.util.spec_from_file_location("SegmentEditorVISTA3DLib.SegmentEditorEffect", {effect!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
import VistaFinetuneLib
for package in ("panel", "scene", "interactive"):
    folder = importlib.import_module("VistaFinetuneLib." + package).__path__
    for info in pkgutil.iter_modules(folder):
        importlib.import_module(f"VistaFinetuneLib.{{package}}.{{info.name}}")
print("refused:", sorted(set(guard.refused)))
"""


def test_the_environment_is_shaped_like_slicers_python():
    assert int(np.__version__.split(".")[0]) >= 2  # Slicer >= 5.10 ships numpy 2
    with pytest.raises(ModuleNotFoundError, match="does not ship"):
        import matplotlib  # noqa: F401 - installed here as a VTK wheel dependency; Slicer has none
    guard = next(finder for finder in sys.meta_path if isinstance(finder, SlicerPythonGuard))
    guard.refused.remove("matplotlib")  # recorded (a test would fail), and expected here


def test_the_panel_and_the_effect_load_with_only_slicers_packages(tmp_path):
    code = LOAD_THE_SLICER_SIDE.format(
        testing=str(ROOT / "Testing"), engine=str(ROOT / "VistaFinetune"), temporary=str(tmp_path),
        script=str(ROOT / "VistaFinetune" / "VistaFinetune.py"),
        effect=str(ROOT / "SegmentEditorVISTA3D" / "SegmentEditorVISTA3DLib" / "SegmentEditorEffect.py"),
    )  # fmt: skip
    env = {"QT_QPA_PLATFORM": "offscreen", "VISTAFINETUNE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "refused: []"
