"""The VISTA3D effect ships as Slicer's scripted effects do, and its layers import the right way.

A hidden module (SegmentEditorVISTA3D.py) registers the effect file SegmentEditorVISTA3DLib/SegmentEditorEffect.py
(``setPythonSource`` takes the class name from the file name); both and the icon are installed by the module's
CMakeLists; the effect's logic (VistaFinetuneLib/scene, VistaFinetuneLib/interactive) imports no Qt and no
``slicer.app``; nothing on the Slicer side imports torch or monai.
"""

import ast
import re
from pathlib import Path

import pytest
from test_extension_layout import cmakeSetValues, cmakeString, cmakeText

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
EFFECT_MODULE = ROOT / "SegmentEditorVISTA3D"
EFFECT_FILE = EFFECT_MODULE / "SegmentEditorVISTA3DLib" / "SegmentEditorEffect.py"
LOGIC_FILES = sorted(
    [*(ROOT / "VistaFinetune" / "VistaFinetuneLib" / "scene").glob("*.py")]
    + [*(ROOT / "VistaFinetune" / "VistaFinetuneLib" / "interactive").glob("*.py")]
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_effect_module_cmake_installs_exactly_its_files():
    text = cmakeText(EFFECT_MODULE / "CMakeLists.txt")
    name = cmakeString(text, "MODULE_NAME")
    assert name == EFFECT_MODULE.name
    listed = {
        value.replace("${MODULE_NAME}", name)
        for variable in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES")
        for value in cmakeSetValues(text, variable)
    }
    present = {p.relative_to(EFFECT_MODULE).as_posix() for p in EFFECT_MODULE.rglob("*") if p.is_file()}
    present -= {"CMakeLists.txt"}
    present = {p for p in present if "__pycache__" not in p}
    assert listed == present
    assert re.search(r"slicerMacroBuildScriptedModule\(", text)
    assert re.search(r"\badd_subdirectory\(\s*SegmentEditorVISTA3D\s*\)", cmakeText(ROOT / "CMakeLists.txt"))


def test_registration_points_at_the_effect_file_and_names_the_effect():
    module = (EFFECT_MODULE / "SegmentEditorVISTA3D.py").read_text(encoding="utf-8")
    assert 'slicer.app.connect("startupCompleted()", self.registerEditorEffect)' in module
    assert 'self.__class__.__name__ + "Lib/SegmentEditorEffect.py"' in module
    assert "self.parent.hidden = True" in module
    effect = EFFECT_FILE.read_text(encoding="utf-8")
    assert re.search(r"class SegmentEditorEffect\(AbstractScriptedSegmentEditorEffect\)", effect)
    assert 'scriptedEffect.name = "VISTA3D"' in effect
    assert "clonedEffect.setPythonSource(__file__" in effect


def test_layers_import_one_way():
    for path in [EFFECT_FILE, EFFECT_MODULE / "SegmentEditorVISTA3D.py", *LOGIC_FILES]:
        heavy = {m for m in imported_modules(path) if m.split(".")[0] in ("torch", "monai")}
        assert not heavy, f"{path.name} imports {heavy}: the Slicer process never imports torch or monai"
    for path in LOGIC_FILES:
        gui = {m for m in imported_modules(path) if m.split(".")[0] in ("qt", "ctk", "PySide6", "PythonQt")}
        assert not gui, f"{path} imports {gui}: the effect's logic is Qt-free"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        uses_app = any(
            isinstance(n, ast.Attribute)
            and n.attr == "app"
            and isinstance(n.value, ast.Name)
            and n.value.id == "slicer"
            for n in ast.walk(tree)
        )
        assert not uses_app, f"{path} uses slicer.app"
    for path in (ROOT / "VistaFinetune" / "VistaFinetuneLib" / "interactive").glob("*.py"):
        assert "slicer" not in {m.split(".")[0] for m in imported_modules(path)}, f"{path}: MRML belongs in scene/"
