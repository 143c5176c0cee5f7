"""The engine's import layout: ``bundle/`` stands below ``data/`` (it imports nothing from it; the tiny bundle's
pretraining recipe, which writes synthetic phantoms, is :mod:`VistaFinetuneLib.tiny_pretraining`), and no two engine
modules import each other, not even for type checking (``finetune/pipeline`` <-> ``finetune/result`` did)."""

import ast
from pathlib import Path

import pytest

from VistaFinetuneLib.resources import ENGINE_ROOT

pytestmark = pytest.mark.unit

LIB = Path(ENGINE_ROOT) / "VistaFinetuneLib"


def engine_imports(path: Path) -> set[str]:
    """The VistaFinetuneLib modules a file imports anywhere (functions and TYPE_CHECKING blocks included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("VistaFinetuneLib"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("VistaFinetuneLib"))
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(LIB.parent).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(p): p for p in LIB.rglob("*.py")}


def test_bundle_imports_nothing_from_data():
    offenders = {
        name: sorted(i for i in engine_imports(path) if i.startswith("VistaFinetuneLib.data"))
        for name, path in MODULES.items()
        if name.startswith("VistaFinetuneLib.bundle")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_two_engine_modules_import_each_other():
    imports = {name: engine_imports(path) & set(MODULES) for name, path in MODULES.items()}
    mutual = sorted((a, b) for a in imports for b in imports[a] if a < b and a in imports.get(b, set()))
    assert mutual == []
