"""The module panel's .ui loads under SlicerAppStandIn, every widget and widget attribute the module script uses
exists there, and the module never imports torch or monai (read statically and checked at run time)."""

import ast
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from slicer_app_standin import CUSTOM_WIDGETS, SlicerAppStandIn

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "VistaFinetune"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "VistaFinetune.ui"
MODULE_SCRIPT = MODULE_DIR / "VistaFinetune.py"
SECTIONS = ["Setup", "Training data", "Class mapping", "Training", "Results", "Review", "Correct and finetune again"]
HEAVY = ("torch", "monai")


@pytest.fixture(scope="module")
def standIn():
    standIn = SlicerAppStandIn().install()
    yield standIn
    standIn.uninstall()


@pytest.fixture(scope="module")
def panel(standIn):
    import slicer.util

    widget = slicer.util.loadUI(str(UI_FILE))
    yield widget
    widget.deleteLater()


def moduleSource() -> str:
    return MODULE_SCRIPT.read_text(encoding="utf-8")


def test_toplevel_and_sections(panel):
    assert type(panel).__name__ == "qMRMLWidget" and panel.objectName() == "VistaFinetune"
    sections = [w for w in panel.findChildren(CUSTOM_WIDGETS["ctkCollapsibleButton"])]
    assert [section.text for section in sections] == SECTIONS


def test_every_ui_widget_the_module_uses_exists(panel):
    import slicer.util

    ui = slicer.util.childWidgetVariables(panel)
    names = set(re.findall(r"self\.ui\.(\w+)", moduleSource()))
    assert len(names) > 40, "the regex or the module changed"
    missing = sorted(name for name in names if not hasattr(ui, name))
    assert missing == [], f"used by VistaFinetune.py but absent from VistaFinetune.ui: {missing}"


def test_every_widget_attribute_the_module_uses_exists_on_that_class(panel):
    """``self.ui.NAME.ATTR`` in the module: ATTR is a method, signal or (PythonQt-style) property of NAME's class."""
    import slicer.util

    ui = slicer.util.childWidgetVariables(panel)
    uses = set(re.findall(r"self\.ui\.(\w+)\.(\w+)", moduleSource()))
    signals = set(re.findall(r"self\.ui\.(\w+)\.connect\(\"(\w+)\(", moduleSource()))
    assert len(uses) > 40 and len(signals) > 10
    wrong = sorted(f"{name}.{attr} ({type(getattr(ui, name)).__name__})" for name, attr in uses | signals
                   if not hasattr(getattr(ui, name), attr))  # fmt: skip
    assert wrong == []


def test_parameter_names_in_the_ui_are_fields_of_the_parameter_node():
    fields = set()
    for node in ast.walk(ast.parse(moduleSource())):
        if isinstance(node, ast.ClassDef) and node.name == "VistaFinetuneParameterNode":
            fields = {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    bound = {
        prop.findtext("string")
        for prop in ElementTree.parse(UI_FILE).getroot().iter("property")
        if prop.get("name") == "SlicerParameterName"
    }
    assert bound == {"epochs", "learningRate", "patchSize", "cacheRate", "classPromptsOnly"}
    assert bound <= fields and "runDir" in fields  # the followed run is saved with the scene


def test_scene_is_broadcast_to_every_node_selector(panel):
    selectors = panel.findChildren(CUSTOM_WIDGETS["qMRMLNodeComboBox"])
    assert {s.objectName() for s in selectors} == {
        "sceneVolumeSelector", "sceneSegmentationSelector", "correctionVolumeSelector", "correctionSegmentationSelector"
    }  # fmt: skip
    wired = {
        c.findtext("receiver")
        for c in ElementTree.parse(UI_FILE).getroot().findall("./connections/connection")
        if c.findtext("sender") == "VistaFinetune"
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert wired == {s.objectName() for s in selectors}
    from PySide6.QtCore import SIGNAL

    assert panel.receivers(SIGNAL("mrmlSceneChanged(vtkMRMLScene*)")) == len(selectors)  # the loader connected them


def test_module_script_never_imports_torch_or_monai():
    """Static: no import statement and no importlib call in the module names torch or monai."""
    found = []
    for node in ast.walk(ast.parse(moduleSource())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(node.module or "")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ):  # fmt: skip
            found += [arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
    assert "slicer" in found and "VistaFinetuneLib.panel.controller" in found  # the walk sees the imports
    assert [name for name in found if name.split(".")[0] in HEAVY] == []


RUNTIME_CHECK = """
import importlib.util, pkgutil, sys
sys.path.insert(0, {testing!r})
from slicer_app_standin import SlicerAppStandIn
SlicerAppStandIn().install()
spec = importlib.util.spec_from_file_location("VistaFinetune", {script!r})
module = importlib.util.module_from_spec(spec)
sys.modules["VistaFinetune"] = module
spec.loader.exec_module(module)
widget = module.VistaFinetuneWidget()
widget.setup()
import VistaFinetuneLib.panel
for info in pkgutil.iter_modules(VistaFinetuneLib.panel.__path__):
    importlib.import_module("VistaFinetuneLib.panel." + info.name)
print(sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "monai")))
"""


def test_module_setup_and_panel_logic_import_no_torch_or_monai(tmp_path):
    """At run time, in a fresh interpreter: the module, its widget's setup() and every panel module."""
    code = RUNTIME_CHECK.format(testing=str(ROOT / "Testing"), script=str(MODULE_SCRIPT))
    env = {"PYTHONPATH": str(MODULE_DIR), "QT_QPA_PLATFORM": "offscreen", "VISTAFINETUNE_HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
