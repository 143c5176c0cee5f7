"""The tiny reference bundle: the VISTA3D bundle's configuration interface around a 272k-parameter network.

It ships whole in ``Resources/TinyBundle``: configs, scripts, and "pretrained" weights (``models/model.pt``, 1.1 MB)
with their record (``docs/pretraining.json``: recipe, trajectory, SHA-256, the build key, the versions used), so
every machine runs the demo and the tests on the same weights. How the weights are made (and made again) is
:mod:`VistaFinetuneLib.tiny_pretraining`'s: the model knows the liver (VISTA3D class 1) and has never been taught
the left kidney (14).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from VistaFinetuneLib.bundle.source import sha256_file
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.resources import RESOURCES
from VistaFinetuneLib.run_files import read_user_json

TEMPLATE_DIR = RESOURCES / "TinyBundle"
BUILT_FOLDERS = ("models", "docs")
PRETRAINED_CLASS = ("liver", 1)
UNTAUGHT_CLASS = ("left kidney", 14)


def ignored(relative: Path) -> bool:
    """Files of the shipped bundle that are not its template: the weights, their record, Python caches."""
    return relative.parts[0] in BUILT_FOLDERS or "__pycache__" in relative.parts or relative.suffix == ".pyc"


def copy_template(dest: Path) -> None:
    """Copy the bundle's configs and scripts (no weights, no record, no caches) to ``dest``."""
    shutil.copytree(TEMPLATE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *BUILT_FOLDERS))


def ensure_tiny_bundle(bundle_dir: Path = TEMPLATE_DIR) -> Path:
    """The shipped tiny bundle, after checking that its weights are the ones its record names."""
    weights, record_path = bundle_dir / "models" / "model.pt", bundle_dir / "docs" / "pretraining.json"
    for path in (weights, record_path):
        if not path.is_file():
            raise UserError(f"{path}: the tiny bundle's shipped file is missing; restore it from the repository")
    expected = read_user_json(record_path, "tiny bundle record").get("weights_sha256")
    actual = sha256_file(weights)
    if actual != expected:
        raise UserError(
            f"{weights}: SHA-256 {actual} differs from {expected} recorded in {record_path}; the weights were "
            "changed: restore them from the repository or rebuild them (make tiny-weights)"
        )
    return bundle_dir


def pretraining_record(bundle_dir: Path) -> dict:
    """The pretraining trajectory recorded when the bundle was built."""
    return json.loads((bundle_dir / "docs" / "pretraining.json").read_text())
