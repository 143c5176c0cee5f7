"""Where the engine's files are: the package root (put on bundle runs' PYTHONPATH) and the module's Resources."""

from pathlib import Path

ENGINE_ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ENGINE_ROOT / "Resources"
