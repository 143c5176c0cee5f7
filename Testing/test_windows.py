"""Windows branches, run here by simulation (processes.on_windows, i.e. os.name == "nt", patched; the Windows API
and taskkill replaced by recorders, named as test doubles): the job Python in Scripts\\python.exe, liveness without
os.kill (which terminates a process on Windows), and cancel as taskkill of the job's tree, never killpg or SIGKILL."""

import json
import os
import signal
import socket
import subprocess

import pytest

from VistaFinetuneLib.bundle.runner import BundleRun
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.jobs import control, environment, processes
from VistaFinetuneLib.jobs.supervisor import JobFiles, Supervisor

pytestmark = pytest.mark.unit


class Kernel32StandIn:
    """Test double for the Windows API calls processes.alive makes: pids in ``running`` run, others are gone."""

    def __init__(self, running: set[int]) -> None:
        self.running = running
        self.closed = []

    def OpenProcess(self, access, inherit, pid):  # noqa: N802 - the Windows API's names
        return pid if pid in self.running else 0

    def GetExitCodeProcess(self, handle, code):  # noqa: N802
        code._obj.value = processes.STILL_ACTIVE
        return 1

    def CloseHandle(self, handle):  # noqa: N802
        self.closed.append(handle)

    def GetLastError(self):  # noqa: N802
        return 87  # ERROR_INVALID_PARAMETER: no such process


@pytest.fixture
def windows(monkeypatch):
    """Windows as far as the job code can tell; records taskkill, and fails on any POSIX-only call."""
    kernel = Kernel32StandIn({4242, 4343})
    taskkills = []

    def forbidden(name):
        def call(*args, **kwargs):
            raise AssertionError(f"{name} called on Windows: {args}")

        return call

    def run(command, **kwargs):
        assert command[0] == "taskkill", command
        taskkills.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(processes, "on_windows", lambda: True)
    monkeypatch.setattr(processes, "_kernel32", lambda: kernel)
    monkeypatch.setattr(processes.subprocess, "run", run)
    monkeypatch.setattr(os, "kill", forbidden("os.kill"))
    monkeypatch.setattr(os, "killpg", forbidden("os.killpg"))
    monkeypatch.setattr(os, "waitpid", forbidden("os.waitpid"))
    return kernel, taskkills


def test_the_venv_interpreter_is_scripts_python_exe_on_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "on_windows", lambda: True)  # os.name == "nt"
    assert environment.venv_python(tmp_path / "env") == tmp_path / "env" / "Scripts" / "python.exe"
    commands = environment.create_environment_commands(tmp_path / "env", "cpu", python="C:/Slicer/PythonSlicer.exe")
    assert commands[1][0] == str(tmp_path / "env" / "Scripts" / "python.exe")
    monkeypatch.setattr(processes, "on_windows", lambda: False)
    assert environment.venv_python(tmp_path / "env") == tmp_path / "env" / "bin" / "python"
    (tmp_path / "env" / "Scripts").mkdir(parents=True)
    (tmp_path / "env" / "Scripts" / "python.exe").touch()
    assert environment.venv_python(tmp_path / "env") == tmp_path / "env" / "Scripts" / "python.exe"  # found


def test_liveness_asks_the_windows_api_and_never_os_kill(windows):
    kernel, taskkills = windows
    assert processes.alive(4242) and not processes.alive(999)
    assert kernel.closed == [4242]
    assert processes.group_members(4343) == [4343] and processes.group_members(998) == []
    assert processes.reap_children() == []


def test_ending_processes_is_taskkill_of_the_tree(windows):
    kernel, taskkills = windows
    assert processes.signal_group(4242, processes.KILL)
    processes.signal_pids([4343], signal.SIGTERM)
    assert taskkills == [["taskkill", "/PID", "4242", "/T", "/F"], ["taskkill", "/PID", "4343", "/T", "/F"]]


def test_cancel_ends_the_jobs_tree_and_the_supervisor_records_a_cancel(windows, tmp_path):
    kernel, taskkills = windows
    run_dir = tmp_path / "run"
    files = JobFiles(run_dir)
    files.job_json.parent.mkdir(parents=True)
    files.job_json.write_text(json.dumps({"supervisor_pid": 4343, "pid": 4242, "pgid": 4242,
                                          "host": socket.gethostname(), "started": 1.0}))  # fmt: skip
    control.cancel_job(run_dir, wait=False)
    assert taskkills == [["taskkill", "/PID", "4242", "/T", "/F"]]
    assert json.loads(files.cancel_json.read_text())["grace_seconds"] == 10.0


def test_the_supervisor_starts_the_job_in_a_new_process_group(windows, tmp_path, monkeypatch):
    started = {}

    class PopenRecorder:  # test double: what subprocess.Popen was asked
        def __init__(self, command, **kwargs):
            started.update(kwargs, command=command)
            self.pid = 4242

    monkeypatch.setattr(subprocess, "Popen", PopenRecorder)
    monkeypatch.setattr(os, "setpgid", lambda *args: pytest.fail("os.setpgid on Windows"), raising=False)
    Supervisor(tmp_path / "run", ["python", "-c", "pass"]).start()
    assert started["creationflags"] == processes.NEW_PROCESS_GROUP
    assert "process_group" not in started and "preexec_fn" not in started


def test_multi_gpu_training_is_refused_on_windows_with_the_way_out(windows, tmp_path):
    common = {"bundle_dir": tmp_path, "config_files": [tmp_path / "train.json"], "cwd": tmp_path,
              "log_path": tmp_path / "train.log", "args_path": tmp_path / "a.json", "python": "python.exe"}  # fmt: skip
    with pytest.raises(UserError, match="does not run on Windows; set NPROC_PER_NODE=1"):
        BundleRun(**common, nproc_per_node=2).command()
    assert BundleRun(**common).command()[:3] == ["python.exe", "-m", "monai.bundle"]
