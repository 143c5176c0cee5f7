"""Children started from Slicer's process get a clean environment: the environment probe, a job, the warm worker
and environment creation all run when the calling process carries Slicer's launcher variables. Slicer is faked
here (a stand-in, named as one): PYTHONHOME points at a fake Slicer's lib/Python, PYTHONPATH at its site-packages,
which hold a numpy that raises on import, and PYTHONNOUSERSITE is set, as Slicer's launcher sets them."""

import os
import sys
import types
from pathlib import Path

import pytest

from VistaFinetuneLib.interactive.worker_client import WorkerClient
from VistaFinetuneLib.jobs import child_env, control, environment
from VistaFinetuneLib.resources import ENGINE_ROOT

pytestmark = pytest.mark.e2e


@pytest.fixture
def fake_slicer(tmp_path, monkeypatch) -> Path:
    """The launcher variables of a fake Slicer installed at ``tmp_path/fakeslicer``, set in this process."""
    home = tmp_path / "fakeslicer" / "lib" / "Python"
    site = home / "lib" / "python3.12" / "site-packages"
    (site / "numpy").mkdir(parents=True)
    (site / "numpy" / "__init__.py").write_text("raise ImportError(\"Slicer's numpy 2 was imported\")\n")
    user_paths = tmp_path / "user-paths"
    user_paths.mkdir()
    monkeypatch.setenv("PYTHONHOME", str(home))
    monkeypatch.setenv("PYTHONNOUSERSITE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(user_paths), str(ENGINE_ROOT)]))
    return tmp_path / "fakeslicer"


def test_child_environment_drops_the_launcher_variables_and_keeps_the_engine_and_user_paths(fake_slicer, tmp_path):
    env = child_env.child_environment()
    assert "PYTHONHOME" not in env and "PYTHONNOUSERSITE" not in env
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ENGINE_ROOT), str(tmp_path / "user-paths")]
    without_engine = child_env.child_environment(engine_on_path=False)["PYTHONPATH"].split(os.pathsep)
    assert without_engine == [str(tmp_path / "user-paths"), str(ENGINE_ROOT)]  # the user's own order


def test_in_slicer_the_startup_environment_is_the_base(fake_slicer, monkeypatch):
    """In Slicer, ``slicer.util.startupEnvironment()`` (what Slicer was started with) is the child's environment."""

    class StartupEnvironment:  # the QProcessEnvironment that slicer.app.startupEnvironment() returns
        values = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/home/user/tools", "HOME": "/home/user"}

        def keys(self):
            return list(self.values)

        def value(self, key):
            return self.values[key]

    import slicer.util

    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(startupEnvironment=StartupEnvironment), raising=False)
    env = child_env.child_environment()
    expected_path = f"{ENGINE_ROOT}{os.pathsep}/home/user/tools"
    assert env == {"PATH": "/usr/bin:/bin", "HOME": "/home/user", "PYTHONPATH": expected_path}


def test_the_probe_runs(fake_slicer):
    info = environment.probe_interpreter(sys.executable)
    assert info["packages"]["numpy"].startswith("1.")  # the job environment's numpy, not the fake Slicer's


def test_a_job_runs(fake_slicer, tmp_path):
    run_dir = tmp_path / "run"
    control.start_job(run_dir, ["synthetic", str(tmp_path / "data"), "--micro", "--cases", "1"], python=sys.executable)
    state = control.wait_job(run_dir, timeout=120, interval=0.2)
    assert state.state == "completed", state.log_tail
    assert (tmp_path / "data" / "imagesTr").is_dir()


def test_the_worker_runs(fake_slicer, tiny_bundle_dir, tmp_path):
    client = WorkerClient(sys.executable, tiny_bundle_dir, tmp_path / "worker")
    try:
        assert client.call({"op": "ping"}, timeout_s=120)["ok"]
    finally:
        client.close()


def test_environment_creation_runs_its_commands_in_a_clean_environment(fake_slicer, tmp_path, monkeypatch):
    check = "import os, sys; import numpy; assert 'PYTHONHOME' not in os.environ; print(numpy.__version__)"
    commands = [[sys.executable, "-c", check]]  # instead of venv + pip (minutes, and the network)
    monkeypatch.setattr(environment, "create_environment_commands", lambda directory, cuda: commands)
    assert environment.create_environment(tmp_path / "env", "cpu", log=lambda line: None)
