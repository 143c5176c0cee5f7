"""The environment every child Python gets (environment probe, jobs, the warm worker, environment creation).

Slicer's launcher sets ``PYTHONHOME``, ``PYTHONPATH`` (its stdlib and site-packages) and ``PYTHONNOUSERSITE`` for its
own interpreter; a job Python that inherits them starts with Slicer's stdlib and packages, and fails. In Slicer the
child gets the environment Slicer itself was started from (``slicer.util.startupEnvironment()``); elsewhere the
calling process's environment without those variables, and with only the ``PYTHONPATH`` entries outside the calling
Python's prefix and outside the installation ``PYTHONHOME`` names (Slicer's: the folder above its ``lib/Python``).
The engine's own folder always comes first on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from VistaFinetuneLib.resources import ENGINE_ROOT

LAUNCHER_VARIABLES = ("PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONEXECUTABLE")


def child_environment(engine_on_path: bool = True) -> dict[str, str]:
    """The environment for a child process that runs another Python (the job environment's)."""
    env = _slicer_startup_environment()
    if env is None:
        env = dict(os.environ)
        foreign = _interpreter_roots(env.get("PYTHONHOME"))
        for name in LAUNCHER_VARIABLES:
            env.pop(name, None)
        kept = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry and not _under(entry, foreign)]
        env["PYTHONPATH"] = os.pathsep.join(kept)
    if engine_on_path:
        paths = [str(ENGINE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p != str(ENGINE_ROOT)]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    if not env.get("PYTHONPATH"):
        env.pop("PYTHONPATH", None)
    return env


def _slicer_startup_environment() -> dict[str, str] | None:
    """Slicer's ``startupEnvironment()`` when this process is Slicer's (its application object exists)."""
    slicer = sys.modules.get("slicer")
    app = getattr(slicer, "app", None)
    if app is None or not hasattr(app, "startupEnvironment"):
        return None
    import slicer.util  # only in Slicer's process

    return {str(key): str(value) for key, value in slicer.util.startupEnvironment().items()}


def _interpreter_roots(python_home: str | None) -> list[Path]:
    """Folders whose contents belong to the calling Python (or to the one PYTHONHOME names), not to a child's."""
    roots = {Path(sys.prefix)}
    if python_home:
        home = Path(python_home).absolute()
        roots.add(home.parent.parent if home.parent.name == "lib" else home)  # Slicer: <Slicer>/lib/Python
    return [root.resolve() for root in roots]


def _under(entry: str, roots: list[Path]) -> bool:
    path = Path(entry).absolute().resolve()
    return any(path == root or root in path.parents for root in roots)
