"""The module panel's .ui loads outside Slicer, and every widget the module script uses exists in it.

Slicer's CTK and qMRML widgets cannot be created without Slicer, so small PySide6 stand-ins with the same
class names take their place; this checks the .ui structure and names, not Slicer's widgets themselves.
"""

import os
import re
from pathlib import Path
from xml.etree import ElementTree

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # must be set before Qt is imported

import pytest
from PySide6.QtCore import SIGNAL, Property, QFile, QIODevice, Signal, Slot
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import QApplication, QComboBox, QGroupBox, QWidget

pytestmark = pytest.mark.unit

MODULE_DIR = Path(__file__).resolve().parents[1] / "VistaFinetune"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "VistaFinetune.ui"
MODULE_SCRIPT = MODULE_DIR / "VistaFinetune.py"


# Stand-ins for Slicer's CTK/qMRML widgets, which cannot exist without Slicer.
# Their class names must match the <customwidget> class names in the .ui file.


class ctkCollapsibleButton(QGroupBox):
    """Stand-in: a collapsible section; its header text maps to the group box title."""

    def _getText(self) -> str:
        return self.title()

    def _setText(self, text: str) -> None:
        self.setTitle(text)

    text = Property(str, _getText, _setText)


class qMRMLNodeComboBox(QComboBox):
    """Stand-in: a node selector; it only remembers the properties the .ui sets."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._nodeTypes: list[str] = []
        self._showChildNodeTypes = True
        self._addEnabled = True
        self._removeEnabled = True

    def _getNodeTypes(self) -> list:
        return self._nodeTypes

    def _setNodeTypes(self, value: list) -> None:
        self._nodeTypes = list(value)

    nodeTypes = Property("QStringList", _getNodeTypes, _setNodeTypes)
    showChildNodeTypes = Property(
        bool, lambda self: self._showChildNodeTypes, lambda self, v: setattr(self, "_showChildNodeTypes", v)
    )
    addEnabled = Property(bool, lambda self: self._addEnabled, lambda self, v: setattr(self, "_addEnabled", v))
    removeEnabled = Property(bool, lambda self: self._removeEnabled, lambda self, v: setattr(self, "_removeEnabled", v))

    # Declared with Slicer's C++ signature so that the .ui's connections resolve; never called here.
    @Slot("vtkMRMLScene*")
    def setMRMLScene(self, scene) -> None:
        """Nothing to do in a stand-in."""


class qMRMLWidget(QWidget):
    """Stand-in: the panel's top-level widget, which broadcasts the MRML scene to its children."""

    # Declared with Slicer's C++ signature so that the .ui's connections resolve. PySide6 cannot marshal an
    # unknown vtkMRMLScene* argument, so the tests count the connections instead of emitting the signal.
    mrmlSceneChanged = Signal("vtkMRMLScene*")


@pytest.fixture(scope="module")
def app():
    return QApplication.instance() or QApplication([])


@pytest.fixture
def panel(app):
    loader = QUiLoader()
    for standIn in (ctkCollapsibleButton, qMRMLNodeComboBox, qMRMLWidget):
        loader.registerCustomWidget(standIn)
    uiFile = QFile(str(UI_FILE))
    assert uiFile.open(QIODevice.OpenModeFlag.ReadOnly), f"cannot open {UI_FILE}"
    try:
        widget = loader.load(uiFile)
    finally:
        uiFile.close()
    assert widget is not None, loader.errorString()
    yield widget
    widget.deleteLater()


def referencedUiNames() -> set[str]:
    return set(re.findall(r"self\.ui\.(\w+)", MODULE_SCRIPT.read_text(encoding="utf-8")))


def test_toplevel_is_mrml_widget(panel):
    assert isinstance(panel, qMRMLWidget)
    assert panel.objectName() == "VistaFinetune"


def test_module_script_references_existing_widgets(panel):
    names = referencedUiNames()
    assert names, "VistaFinetune.py references no self.ui.<name> widgets; the regex or the module changed"
    missing = sorted(name for name in names if panel.findChild(QWidget, name) is None)
    assert missing == [], f"widgets used by VistaFinetune.py but absent from VistaFinetune.ui: {missing}"


def test_expected_widgets_and_node_types(panel):
    volume = panel.findChild(qMRMLNodeComboBox, "inputVolumeSelector")
    segmentation = panel.findChild(qMRMLNodeComboBox, "inputSegmentationSelector")
    assert volume is not None and volume.nodeTypes == ["vtkMRMLScalarVolumeNode"]
    assert segmentation is not None and segmentation.nodeTypes == ["vtkMRMLSegmentationNode"]
    titles = {box.title() for box in panel.findChildren(ctkCollapsibleButton)}
    assert {"Inputs", "Finetune"} <= titles
    for name in ("startButton", "cancelButton", "progressBar", "statusLabel"):
        assert panel.findChild(QWidget, name) is not None, name


def test_scene_is_broadcast_to_every_node_selector(panel):
    selectors = panel.findChildren(qMRMLNodeComboBox)
    assert len(selectors) == 2
    connections = ElementTree.parse(UI_FILE).getroot().findall("./connections/connection")
    wired = {
        c.findtext("receiver")
        for c in connections
        if c.findtext("sender") == "VistaFinetune"
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert wired == {selector.objectName() for selector in selectors}
    # The loader actually made those connections (a failed connect only prints a warning).
    assert panel.receivers(SIGNAL("mrmlSceneChanged(vtkMRMLScene*)")) == len(selectors)


def test_panel_screenshot(panel, tmp_path):
    panel.resize(360, 420)
    panel.show()
    QApplication.processEvents()
    target = tmp_path / "panel.png"
    assert panel.grab().save(str(target))
    assert target.stat().st_size > 0
