"""Import guard for the Slicer-Python test environment (.venv-slicer): only what a stock 3D Slicer ships imports.

The environment is built from VistaFinetune/Resources/requirements-slicer-test.txt, but pip brings along what those
packages depend on (the VTK wheel pulls in matplotlib, which Slicer does not ship). The guard refuses every
installed top-level package outside the allowed distributions (torch, nibabel, ... are not installed at all) with
the ``ModuleNotFoundError`` Slicer's own Python would raise, and remembers each refusal so the test fails.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import sys

# What a stock Slicer ships (reference/slicer-runtime.md), the named stand-ins for its MRML and Qt, and pytest's own.
ALLOWED_DISTRIBUTIONS = {
    "numpy", "scipy", "simpleitk", "pydicom", "requests", "certifi", "charset-normalizer", "idna", "urllib3",
    "pillow", "packaging", "pip", "setuptools", "wheel",
    "slicer-core", "vtk", "pyside6-essentials", "shiboken6",
    "pytest", "iniconfig", "pluggy", "pygments",
    "vistafinetune",  # the engine itself: on Slicer's module path there; its egg-info appears after `pip install -e .`
}  # fmt: skip


def blocked_packages() -> set[str]:
    """The installed top-level import names that Slicer's Python would not find (torch, nibabel, ... are not
    installed here at all)."""
    blocked = set()
    for top, distributions in importlib.metadata.packages_distributions().items():
        if not any(name.lower().replace("_", "-") in ALLOWED_DISTRIBUTIONS for name in distributions):
            blocked.add(top)
    return blocked


class SlicerPythonGuard(importlib.abc.MetaPathFinder):
    """A meta path finder that refuses the installed packages outside Slicer's and records each refusal."""

    def __init__(self, blocked: set[str]) -> None:
        self.blocked = blocked
        self.refused: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in self.blocked:
            self.refused.append(fullname)
            raise ModuleNotFoundError(f"No module named '{fullname}' (3D Slicer does not ship it)", name=fullname)
        return None


def install() -> SlicerPythonGuard:
    """Put the guard first on ``sys.meta_path``; an already imported refused package counts as refused."""
    guard = SlicerPythonGuard(blocked_packages())
    guard.refused.extend(name for name in sys.modules if name.partition(".")[0] in guard.blocked)
    sys.meta_path.insert(0, guard)
    return guard
