"""Which Python the tests' jobs and workers run in.

In the job environment (.venv) that is the test's own interpreter. In the Slicer-Python test environment
(.venv-slicer: no torch, no MONAI, as in Slicer) it is the project's .venv, as a user's job environment would be;
VISTAFINETUNE_TEST_JOB_PYTHON names another one.
"""

import importlib.util
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLICER_PYTHON = importlib.util.find_spec("monai") is None


def job_python() -> str:
    """The job environment's interpreter."""
    if not SLICER_PYTHON:
        return sys.executable
    python = os.environ.get("VISTAFINETUNE_TEST_JOB_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    assert Path(python).exists(), f"no job environment at {python}: run `make` first (it builds .venv)"
    return python


@cache
def job_python_has(module: str) -> bool:
    """Whether the job environment can import ``module`` (asked in a child when it is another interpreter)."""
    if not SLICER_PYTHON:
        return importlib.util.find_spec(module) is not None
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([job_python(), "-c", code], env={"PATH": os.environ.get("PATH", "")}).returncode == 0
