"""Job environments: probing an interpreter, the requirement check with its fixes, and the managed environment."""

import json
import platform
import subprocess
import sys
from importlib import metadata

import pytest

from VistaFinetuneLib import cli
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.jobs import environment as job_environment
from VistaFinetuneLib.jobs.environment import (
    PROBE_PACKAGES,
    REQUIREMENTS,
    choose_cuda_build,
    create_environment,
    create_environment_commands,
    format_environment,
    probe_interpreter,
    requirements_report,
    unmet,
)

pytestmark = pytest.mark.unit


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def described(**packages) -> dict:
    """A probe result for a machine without GPU, with the given package versions (others missing)."""
    return {
        "executable": "/envs/job/bin/python",
        "python": "3.11.9",
        "packages": {name: packages.get(name.replace("-", "_")) for name in PROBE_PACKAGES},
        "torch_cuda": None,
        "cuda_available": False,
        "gpus": [],
        "torch_error": None,
        "host_nvidia_gpu": False,
    }


REFERENCE = {"torch": "2.13.0+cpu", "monai": "1.4.0", "numpy": "1.26.4", "pytorch_ignite": "0.5.5"}
REFERENCE |= {"nibabel": "5.4.2", "scipy": "1.17.1", "einops": "0.8.2", "fire": "0.7.1"}


# --- probing an interpreter ----------------------------------------------------------------------------------------


def test_probe_of_this_interpreter_matches_its_installed_packages():
    info = probe_interpreter(sys.executable)
    assert info["python"] == platform.python_version()
    assert info["executable"] == sys.executable
    assert info["packages"] == {name: installed(name) for name in PROBE_PACKAGES}
    import torch

    assert info["torch_cuda"] == torch.version.cuda
    assert info["cuda_available"] == torch.cuda.is_available()
    assert len(info["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert info["torch_error"] is None


def test_a_missing_interpreter_is_named(tmp_path):
    fake = tmp_path / "no-such-env" / "bin" / "python"
    with pytest.raises(UserError, match="no-such-env/bin/python"):
        probe_interpreter(str(fake))
    with pytest.raises(UserError, match="python-nowhere-9"):
        probe_interpreter("python-nowhere-9")


def test_an_interpreter_that_is_not_python_or_hangs_is_named(tmp_path):
    not_python = tmp_path / "not-python"
    not_python.write_text("#!/bin/sh\necho hello\n")
    not_python.chmod(0o755)
    with pytest.raises(UserError, match="not-python: the environment probe failed"):
        probe_interpreter(str(not_python))
    hangs = tmp_path / "hangs"
    hangs.write_text("#!/bin/sh\nsleep 30\n")
    hangs.chmod(0o755)
    with pytest.raises(UserError, match="hangs: the environment probe did not finish within 1 s"):
        probe_interpreter(str(hangs), timeout_s=1)


def test_an_environment_without_torch_gets_the_pip_command(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    info = probe_interpreter(python)
    info["host_nvidia_gpu"] = False  # the fix this machine gets (no GPU here)
    assert info["executable"] == python and info["packages"]["torch"] is None and info["torch_cuda"] is None
    report = requirements_report(info)
    torch_line = next(line for line in report if line.startswith("torch is not installed"))
    assert f"{python} -m pip install -r " in torch_line and torch_line.endswith("requirements-torch.txt")
    assert any(line.startswith("monai is not installed") and str(REQUIREMENTS) in line for line in report)
    assert unmet(report) == report


# --- the requirement check -----------------------------------------------------------------------------------------


def test_the_reference_stack_meets_the_requirements():
    assert requirements_report(described(**REFERENCE)) == []


def test_monai_1_4_with_numpy_2_needs_numpy_below_2():
    report = requirements_report(described(**(REFERENCE | {"numpy": "2.4.6"})))
    assert len(report) == 1
    assert report[0].startswith("numpy < 2 needed") and report[0].endswith(
        "/envs/job/bin/python -m pip install 'numpy<2'"
    )


def test_monai_1_5_or_newer_is_met_with_the_override_noted():
    report = requirements_report(described(**(REFERENCE | {"monai": "1.6.1", "numpy": "2.4.6"})))
    assert unmet(report) == []
    assert len(report) == 1 and report[0].startswith("note: monai 1.6.1 >= 1.5") and "float-target-loss" in report[0]


def test_missing_ignite_and_fire_get_their_pinned_requirements():
    report = requirements_report(described(**(REFERENCE | {"pytorch_ignite": None, "fire": None})))
    assert report == [
        "pytorch-ignite is not installed. Fix: /envs/job/bin/python -m pip install 'pytorch-ignite>=0.4.11'",
        "fire is not installed. Fix: /envs/job/bin/python -m pip install 'fire>=0.6'",
    ]


def test_a_cpu_torch_on_a_gpu_machine_is_a_problem():
    info = described(**REFERENCE) | {"host_nvidia_gpu": True}
    (line,) = requirements_report(info)
    assert line.startswith("torch 2.13.0+cpu is a CPU-only build but this machine has an NVIDIA GPU")
    assert "--force-reinstall torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" in line
    info |= {"torch_cuda": "12.6", "cuda_available": False}
    (line,) = requirements_report(info)
    assert line.startswith("torch 2.13.0+cpu is built for CUDA 12.6 but sees no GPU")
    missing = described(**(REFERENCE | {"torch": None})) | {"host_nvidia_gpu": True}
    (line,) = requirements_report(missing)
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" in line


def test_the_description_lists_gpus_and_problems():
    info = described(**(REFERENCE | {"numpy": "2.0.0"})) | {"torch_cuda": "12.6", "cuda_available": True}
    info["gpus"] = [{"index": 0, "name": "NVIDIA H100", "total_mb": 81559, "free_mb": 80000}]
    lines = format_environment(info, requirements_report(info))
    assert "torch:       2.13.0+cpu (CUDA 12.6 build); torch.cuda.is_available(): True" in lines
    assert "  GPU 0: NVIDIA H100, 81559 MB total, 80000 MB free" in lines
    assert "requirements: NOT met (1 problem(s))" in lines


# --- the managed environment ---------------------------------------------------------------------------------------


def test_create_commands_install_the_chosen_torch_build_then_the_pinned_stack(tmp_path):
    commands = create_environment_commands(tmp_path / "env", "cu126")
    python = str(tmp_path / "env" / "bin" / "python")
    assert commands[0] == [sys.executable, "-m", "venv", str(tmp_path / "env")]
    assert [
        python,
        "-m",
        "pip",
        "install",
        "torch==2.13.0",
        "--index-url",
        "https://download.pytorch.org/whl/cu126",
    ] in (commands)
    assert commands[-1] == [python, "-m", "pip", "install", "-r", str(REQUIREMENTS)]
    cpu = create_environment_commands(tmp_path / "env", "cpu")
    assert any("https://download.pytorch.org/whl/cpu" in command for command in cpu)
    with pytest.raises(UserError, match="--cuda cu118"):
        create_environment_commands(tmp_path / "env", "cu118")


def test_with_a_gpu_the_torch_build_must_be_chosen_explicitly():
    with pytest.raises(UserError, match="NVIDIA GPU.*--cuda cpu to install a CPU-only torch on purpose"):
        choose_cuda_build(None, gpu_present=True)
    assert choose_cuda_build("cpu", gpu_present=True) == "cpu"
    assert choose_cuda_build("cu124", gpu_present=True) == "cu124"
    assert choose_cuda_build(None, gpu_present=False) == "cpu"
    assert choose_cuda_build("cu126", gpu_present=False) == "cu126"  # e.g. built on a login node for GPU nodes


def test_create_refuses_before_running_anything(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(job_environment.subprocess, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(UserError, match="NVIDIA GPU"):
        create_environment(tmp_path / "env", None, gpu_present=True)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(UserError, match="used: the folder is not empty"):
        create_environment(tmp_path / "used", "cpu", gpu_present=False)
    monkeypatch.setattr(job_environment, "has_nvidia_gpu", lambda: True)
    assert cli.main(["env", "create", str(tmp_path / "env")]) == 2
    assert "this machine has an NVIDIA GPU" in capsys.readouterr().err
    assert ran == [] and not (tmp_path / "env").exists()


def test_create_prints_each_command_before_running_it(tmp_path, monkeypatch):
    ran, printed = [], []
    monkeypatch.setattr(job_environment.subprocess, "run", lambda command, env: ran.append(command) or FakeDone(0))
    python = create_environment(tmp_path / "env", "cu126", log=printed.append, gpu_present=True)
    assert python == str(tmp_path / "env" / "bin" / "python")
    assert ran == create_environment_commands(tmp_path / "env", "cu126")
    assert printed == ["$ " + " ".join(command) for command in ran]
    monkeypatch.setattr(job_environment.subprocess, "run", lambda command, env: FakeDone(1))
    with pytest.raises(UserError, match="venv .* failed \\(exit code 1\\)"):
        create_environment(tmp_path / "env2", "cpu", log=printed.append, gpu_present=False)


class FakeDone:
    def __init__(self, returncode: int) -> None:
        self.returncode = returncode


def test_env_command_line(capsys, tmp_path):
    assert cli.main(["env", "--python", str(tmp_path / "missing-python")]) == 2
    assert "missing-python: no such interpreter" in capsys.readouterr().err
    assert cli.main(["env", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["requirements_met"] is True and printed["packages"]["monai"] == installed("monai")
