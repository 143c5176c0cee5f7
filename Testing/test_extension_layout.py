"""The extension's files are laid out and declared the way the Slicer build and the ExtensionsIndex expect."""

import json
import re
import struct
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "VistaFinetune"
EXTENSION_CMAKE = ROOT / "CMakeLists.txt"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
CATALOG_ENTRY = ROOT / "VistaFinetune.json"
ICONS = [ROOT / "Resources" / "Icons" / "VistaFinetune.png", MODULE_DIR / "Resources" / "Icons" / "VistaFinetune.png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cmakeText(path: Path) -> str:
    """The CMake file without comments."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())


def cmakeSetValues(text: str, variable: str) -> list[str]:
    # Arguments are quoted strings (which may contain parentheses) or bare words.
    pattern = rf'\bset\(\s*{re.escape(variable)}((?:\s+(?:"[^"]*"|[^\s"()]+))*)\s*\)'
    match = re.search(pattern, text, re.IGNORECASE)
    assert match, f"set({variable} ...) not found"
    return re.findall(r'"[^"]*"|[^\s"]+', match.group(1))


def cmakeString(text: str, variable: str) -> str:
    values = cmakeSetValues(text, variable)
    assert len(values) == 1, f"{variable} should be one quoted string, got {values}"
    return values[0].strip('"')


def moduleListedFiles() -> dict[str, list[str]]:
    text = cmakeText(MODULE_CMAKE)
    moduleName = cmakeString(text, "MODULE_NAME")
    listed = {}
    for variable in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        listed[variable] = [value.replace("${MODULE_NAME}", moduleName) for value in cmakeSetValues(text, variable)]
    return listed


def filesUnder(folder: Path, pattern: str = "*") -> set[str]:
    return {
        path.relative_to(MODULE_DIR).as_posix()
        for path in folder.rglob(pattern)
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


# (a) module CMakeLists lists exactly the files that exist


def test_module_cmake_lists_every_engine_script():
    scripts = set(moduleListedFiles()["MODULE_PYTHON_SCRIPTS"])
    assert "VistaFinetune.py" in scripts
    missing = sorted(filesUnder(MODULE_DIR / "VistaFinetuneLib", "*.py") - scripts)
    assert missing == [], f"add to MODULE_PYTHON_SCRIPTS in {MODULE_CMAKE}: {missing}"


def test_module_cmake_lists_every_resource():
    resources = set(moduleListedFiles()["MODULE_PYTHON_RESOURCES"])
    missing = sorted(filesUnder(MODULE_DIR / "Resources") - resources)
    assert missing == [], f"add to MODULE_PYTHON_RESOURCES in {MODULE_CMAKE}: {missing}"


def test_module_cmake_lists_only_existing_files():
    listed = moduleListedFiles()
    absent = sorted(path for paths in listed.values() for path in paths if not (MODULE_DIR / path).is_file())
    assert absent == [], f"listed in {MODULE_CMAKE} but missing: {absent}"
    for paths in listed.values():
        assert len(paths) == len(set(paths)), f"duplicate entries: {paths}"


def test_module_cmake_builds_scripted_module_with_tests():
    text = cmakeText(MODULE_CMAKE)
    assert re.search(r"slicerMacroBuildScriptedModule\(.*WITH_GENERIC_TESTS", text, re.DOTALL)
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)


# (b) extension CMakeLists


def test_extension_cmake_structure():
    text = cmakeText(EXTENSION_CMAKE)
    assert re.search(r"\bproject\(\s*VistaFinetune\s*\)", text)
    assert re.search(r"\bfind_package\(\s*Slicer\s+REQUIRED\s*\)", text)
    assert "include(${Slicer_USE_FILE})" in text
    assert cmakeString(text, "EXTENSION_DEPENDS") == "NA"  # torch and MONAI live in the job environment
    # The minimum Slicer (vtkSlicerSegmentEditorLogic: 5.10) is declared, checked at configure time and at load.
    assert cmakeString(text, "VistaFinetune_MINIMUM_SLICER_VERSION") == "5.10"
    assert re.search(r"if\(\s*Slicer_VERSION\s+VERSION_LESS\s+VistaFinetune_MINIMUM_SLICER_VERSION\s*\)", text)
    assert "MINIMUM_SLICER_VERSION = (5, 10)" in (MODULE_DIR / "VistaFinetune.py").read_text(encoding="utf-8")
    assert re.search(r"\badd_subdirectory\(\s*VistaFinetune\s*\)", text)
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text
    assert "include(${Slicer_EXTENSION_CPACK})" in text
    assert "## NEXT_MODULE" in EXTENSION_CMAKE.read_text(encoding="utf-8")  # Extension Wizard marker


def test_extension_icon_url_points_at_repository_file():
    iconUrl = cmakeString(cmakeText(EXTENSION_CMAKE), "EXTENSION_ICONURL")
    match = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(.+)", iconUrl)
    assert match, iconUrl
    assert (ROOT / match.group(1)).is_file(), f"EXTENSION_ICONURL names {match.group(1)}, which does not exist"
    screenshots = cmakeString(cmakeText(EXTENSION_CMAKE), "EXTENSION_SCREENSHOTURLS").split()
    assert screenshots and all(url.startswith("https://raw.githubusercontent.com/") for url in screenshots)
    for url in screenshots:
        path = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(.+)", url).group(1)
        assert (ROOT / path).is_file(), f"EXTENSION_SCREENSHOTURLS names {path}, which does not exist"
    legacy = (ROOT / "VistaFinetune.s4ext").read_text(encoding="utf-8")
    declared = dict(line.split(" ", 1) for line in legacy.splitlines() if line and not line.startswith("#"))
    assert declared["depends"].strip() == "NA"
    for url in declared["screenshoturls"].split() + declared["iconurl"].split():
        path = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(.+)", url).group(1)
        assert (ROOT / path).is_file(), f"VistaFinetune.s4ext names {path}, which does not exist"


# (c) ExtensionsIndex catalog entry


def test_catalog_entry():
    entry = json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))
    for key in ("$schema", "category", "scm_url"):  # required by the catalog entry schema
        assert entry.get(key), f"missing required key {key!r}"
    assert "slicer-extension-catalog-entry-schema" in entry["$schema"]

    text = cmakeText(EXTENSION_CMAKE)
    assert entry["scm_url"] == cmakeString(text, "EXTENSION_HOMEPAGE")
    assert entry["category"] == cmakeString(text, "EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == [] and cmakeString(text, "EXTENSION_DEPENDS") == "NA"
    assert entry["build_subdirectory"] == "."
    assert entry["scm_revision"] == "main"
    assert entry["tier"] in (1, 3, 5)
    # The index requires the file to be named after the CMake project, and the repository to start with "Slicer".
    assert CATALOG_ENTRY.stem == re.search(r"\bproject\(\s*(\w+)", text).group(1)
    assert entry["scm_url"].rsplit("/", 1)[-1].startswith("Slicer")


# (d) icons


@pytest.mark.parametrize("icon", ICONS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_icon_is_128_png(icon):
    data = icon.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    _length, chunkType, width, height = struct.unpack(">I4sII", data[8:24])
    assert chunkType == b"IHDR"
    assert (width, height) == (128, 128)
    assert len(data) < 20_000


# (e) licence


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "http://www.apache.org/licenses/" in text
    assert "END OF TERMS AND CONDITIONS" in text


# (e) the README's in-Slicer commands


def test_readme_slicer_commands_work_as_written():
    """slicer.util.selectModule raises without a main window; both module folders are given to Slicer."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.replace("\\\n", " ").splitlines()  # shell continuation lines joined
    commands = [line for line in lines if line.startswith("Slicer ")]
    assert commands, "no Slicer command in the README"
    for command in commands:
        assert not ("--no-main-window" in command and "selectModule" in command), command
        assert "VistaFinetune" in command and "SegmentEditorVISTA3D" in command, command
