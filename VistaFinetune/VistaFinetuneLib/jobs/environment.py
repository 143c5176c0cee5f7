"""Job environments: describe any Python interpreter a job could run in, and create the managed one.

An interpreter is probed by running a small script in it (``python -c``), so it needs neither this engine nor
anything but the standard library; torch is imported there, never here.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from VistaFinetuneLib.bundle.compat import FLOAT_TARGET_LOSS, monai_version_tuple
from VistaFinetuneLib.environment import PACKAGES
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.jobs import processes
from VistaFinetuneLib.jobs.child_env import child_environment
from VistaFinetuneLib.resources import RESOURCES

REQUIREMENTS = RESOURCES / "requirements.txt"
TORCH_REQUIREMENTS = RESOURCES / "requirements-torch.txt"
CUDA_BUILDS = ("cu121", "cu124", "cu126", "cpu")
TORCH_INDEX = "https://download.pytorch.org/whl/"
PROBE_TIMEOUT_S = 120.0
# Besides the packages output.json records: fire runs ``python -m monai.bundle run``.
PROBE_PACKAGES = (*PACKAGES, "fire")
NOTE = "note: "
MARKER = "VISTAFINETUNE-PROBE "

# Runs inside the probed interpreter: standard library only, plain syntax, one marked JSON line on stdout.
PROBE_CODE = """
import json, platform, sys
packages = json.loads(sys.argv[1])
info = {"python": platform.python_version(), "sys_executable": sys.executable, "platform": platform.platform(),
        "packages": {}, "torch_cuda": None, "cuda_available": False, "gpus": [], "torch_error": None}
try:
    from importlib import metadata
    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
except ImportError:
    import pkg_resources
    def version(name):
        try:
            return pkg_resources.get_distribution(name).version
        except pkg_resources.DistributionNotFound:
            return None
for name in packages:
    info["packages"][name] = version(name)
if info["packages"].get("torch"):
    try:
        import torch
        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = bool(torch.cuda.is_available())
        for index in range(torch.cuda.device_count() if info["cuda_available"] else 0):
            gpu = {"index": index, "name": torch.cuda.get_device_name(index)}
            try:
                free, total = torch.cuda.mem_get_info(index)
                gpu["total_mb"], gpu["free_mb"] = int(total / 2**20), int(free / 2**20)
            except Exception as error:
                gpu["error"] = "%s: %s" % (type(error).__name__, error)
            info["gpus"].append(gpu)
    except Exception as error:
        info["torch_error"] = "%s: %s" % (type(error).__name__, error)
sys.stdout.write("\\n" + MARKER + json.dumps(info) + "\\n")
""".replace("MARKER", repr(MARKER))


def has_nvidia_gpu() -> bool:
    """Whether this machine has an NVIDIA driver (``nvidia-smi`` on PATH or ``/proc/driver/nvidia``)."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()


def resolve_interpreter(python: str) -> str:
    """An interpreter path as given (absolute, symlinks kept so a venv stays a venv), or found on PATH."""
    if os.sep not in python:
        found = shutil.which(python)
        if found is None:
            raise UserError(f"{python}: no such interpreter on PATH; give the path to its python executable")
        return found
    path = os.path.abspath(python)
    if not os.path.isfile(path):
        raise UserError(f"{python}: no such interpreter (file not found)")
    if not os.access(path, os.X_OK):
        raise UserError(f"{python}: not executable; give the path to a python executable")
    return path


def probe_interpreter(python: str, timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    """Python, torch/CUDA, GPUs and package versions of the interpreter ``python``, probed in a subprocess."""
    path = resolve_interpreter(python)
    command = [path, "-c", PROBE_CODE, json.dumps(list(PROBE_PACKAGES))]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=timeout_s, env=child_environment(False)
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"{python}: the environment probe did not finish within {timeout_s:.0f} s") from None
    except OSError as error:
        raise UserError(f"{python}: cannot run it ({error.strerror or error})") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:]) or f"exit code {done.returncode}"
        raise UserError(f"{python}: the environment probe failed ({tail}); is it a Python >= 3.8 interpreter?")
    info = json.loads(lines[-1][len(MARKER) :])
    info["executable"] = path
    info["host_nvidia_gpu"] = has_nvidia_gpu()
    return info


def requirement_spec(name: str, requirements: Path = REQUIREMENTS) -> str:
    """The line of ``requirements.txt`` that pins ``name`` (the bare name when it is not listed)."""
    for line in requirements.read_text(encoding="utf-8").splitlines():
        spec = line.split("#", 1)[0].strip()
        bare = spec.split(";")[0]
        for sign in "<>=!~[ ":
            bare = bare.split(sign)[0]
        if bare.lower() == name.lower():
            return spec
    return name


def pinned_torch() -> str:
    """The torch requirement of ``requirements-torch.txt``, e.g. ``torch==2.13.0``."""
    return requirement_spec("torch", TORCH_REQUIREMENTS)


def pip(python: str, *args: str) -> str:
    """A pip command line for ``python``, quoted for a POSIX shell."""
    return shlex.join([python, "-m", "pip", "install", *args])


def requirements_report(info: dict) -> list[str]:
    """What keeps the bundle from running in the probed environment, each with its fix; ``note:`` lines inform."""
    python = info.get("executable") or "python"
    packages = info.get("packages", {})
    gpu_host = bool(info.get("host_nvidia_gpu"))
    cuda_choice = "cu126 (or the cuXXX your driver supports: see 'CUDA Version' in nvidia-smi)"
    report = []
    torch = packages.get("torch")
    if torch is None:
        if gpu_host:
            fix = pip(python, pinned_torch(), "--index-url", TORCH_INDEX + "cu126") + f"  # {cuda_choice}"
        else:
            fix = pip(python, "-r", str(TORCH_REQUIREMENTS))
        report.append(f"torch is not installed. Fix: {fix}")
    elif info.get("torch_error"):
        fix = pip(python, "--force-reinstall", f"torch=={torch.split('+')[0]}")
        report.append(f"torch {torch} is installed but does not import ({info['torch_error']}). Fix: {fix}")
    elif gpu_host and not info.get("torch_cuda"):
        fix = pip(python, "--force-reinstall", f"torch=={torch.split('+')[0]}", "--index-url", TORCH_INDEX + "cu126")
        report.append(
            f"torch {torch} is a CPU-only build but this machine has an NVIDIA GPU. Fix: {fix}  # {cuda_choice}"
        )
    elif gpu_host and not info.get("cuda_available"):
        report.append(
            f"torch {torch} is built for CUDA {info['torch_cuda']} but sees no GPU. Fix: check nvidia-smi (a driver "
            f"too old for CUDA {info['torch_cuda']}?) and CUDA_VISIBLE_DEVICES"
        )
    monai = packages.get("monai")
    numpy = packages.get("numpy")
    if monai is None:
        report.append(f"monai is not installed. Fix: {pip(python, '-r', str(REQUIREMENTS))}")
    elif monai_version_tuple(monai) < (1, 5):
        if numpy is not None and monai_version_tuple(numpy) >= (2, 0):
            report.append(
                f"numpy < 2 needed: monai {monai} does not support numpy {numpy}. "
                f"Fix: {pip(python, requirement_spec('numpy'))}"
            )
    else:
        report.append(
            f"{NOTE}monai {monai} >= 1.5: compatibility override {FLOAT_TARGET_LOSS} will be stacked (the bundle's "
            "loss gets a float target; reference stack: monai 1.4.0)"
        )
    if numpy is None:
        report.append(f"numpy is not installed. Fix: {pip(python, requirement_spec('numpy'))}")
    for name in ("pytorch-ignite", "nibabel", "einops", "fire"):
        if packages.get(name) is None:
            report.append(f"{name} is not installed. Fix: {pip(python, requirement_spec(name))}")
    return report


def unmet(report: list[str]) -> list[str]:
    """The problems of a report (its lines that are not notes)."""
    return [line for line in report if not line.startswith(NOTE)]


def format_environment(info: dict, report: list[str]) -> list[str]:
    """The environment and its requirement check, as lines a person reads."""
    packages = info.get("packages", {})
    torch = packages.get("torch")
    if torch is None:
        torch_line = "not installed"
    else:
        build = f"CUDA {info['torch_cuda']} build" if info.get("torch_cuda") else "CPU-only build"
        torch_line = f"{torch} ({build}); torch.cuda.is_available(): {info.get('cuda_available', False)}"
    gpus = info.get("gpus", [])
    driver = " (but this machine has an NVIDIA driver)" if not gpus and info.get("host_nvidia_gpu") else ""
    lines = [
        f"interpreter: {info['executable']} (Python {info['python']})",
        f"torch:       {torch_line}",
        f"GPUs:        {len(gpus)}{driver}",
    ]
    for gpu in gpus:
        memory = gpu.get("error") or f"{gpu['total_mb']} MB total, {gpu['free_mb']} MB free"
        lines.append(f"  GPU {gpu['index']}: {gpu['name']}, {memory}")
    versions = ", ".join(f"{name} {packages.get(name) or 'missing'}" for name in PROBE_PACKAGES if name != "torch")
    lines.append(f"packages:    {versions}")
    problems = unmet(report)
    lines.append("requirements: " + ("met" if not problems else f"NOT met ({len(problems)} problem(s))"))
    lines.extend(f"  - {line}" for line in report)
    return lines


def choose_cuda_build(cuda: str | None, gpu_present: bool) -> str:
    """The torch build to install: ``--cuda`` as given; without it CPU, but only on a machine with no NVIDIA GPU."""
    if cuda is not None:
        if cuda not in CUDA_BUILDS:
            raise UserError(f"--cuda {cuda}: choose one of {', '.join(CUDA_BUILDS)}")
        return cuda
    if gpu_present:
        raise UserError(
            "this machine has an NVIDIA GPU: choose the torch build with --cuda cu121|cu124|cu126 (the newest your "
            "driver supports: 'CUDA Version' in nvidia-smi), or --cuda cpu to install a CPU-only torch on purpose"
        )
    return "cpu"


def venv_python(directory: Path | str) -> Path:
    """The interpreter of the venv in ``directory``: ``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere; an
    existing one in the other layout is found as well (a venv made by another tool or copied)."""
    directory = Path(directory)
    layouts = [("Scripts", "python.exe"), ("bin", "python")]
    if not processes.on_windows():
        layouts.reverse()
    for folder, name in layouts:
        if (directory / folder / name).is_file():
            return directory / folder / name
    return directory / layouts[0][0] / layouts[0][1]


def create_environment_commands(directory: Path | str, cuda: str, python: str = sys.executable) -> list[list[str]]:
    """The commands that create the managed job environment in ``directory`` with ``python``'s venv module: a venv,
    torch, the pinned stack. (In Slicer, ``sys.executable`` is the Slicer application: name PythonSlicer.)"""
    if cuda not in CUDA_BUILDS:
        raise UserError(f"--cuda {cuda}: choose one of {', '.join(CUDA_BUILDS)}")
    directory = Path(directory).absolute()
    created = str(venv_python(directory))
    return [
        [python, "-m", "venv", str(directory)],
        [created, "-m", "pip", "install", "--upgrade", "pip"],
        [created, "-m", "pip", "install", pinned_torch(), "--index-url", TORCH_INDEX + cuda],
        [created, "-m", "pip", "install", "-r", str(REQUIREMENTS)],
    ]


def create_environment(
    directory: Path, cuda: str | None, log: Callable[[str], None] = print, gpu_present: bool | None = None
) -> str:
    """Create the managed job environment (printing each command before it runs); return its interpreter."""
    build = choose_cuda_build(cuda, has_nvidia_gpu() if gpu_present is None else gpu_present)
    if directory.exists() and any(directory.iterdir()):
        raise UserError(f"{directory}: the folder is not empty; choose a new folder (or delete this one)")
    if cuda is None:
        log("no NVIDIA GPU on this machine: installing the CPU build of torch")
    for command in create_environment_commands(directory, build):
        log("$ " + shlex.join(command))
        code = subprocess.run(command, env=child_environment(False)).returncode
        if code != 0:
            raise UserError(f"{shlex.join(command)} failed (exit code {code}); {directory} is incomplete")
    return str(venv_python(directory.absolute()))
