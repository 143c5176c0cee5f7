"""What the job process runs on: Python, torch and CUDA, GPUs and their memory, host RAM, package versions.

Nothing here imports torch: versions come from package metadata, GPUs from ``nvidia-smi``.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "monai", "numpy", "pytorch-ignite", "nibabel", "scipy", "einops")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages the bundle needs (None when missing)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host_ram_mb() -> int:
    """Physical memory of the host in MB."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    except (ValueError, OSError, AttributeError):
        return 0


def torch_cuda_build() -> str | None:
    """The CUDA version torch was built for (None: a CPU build or no torch), read without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    if not version_file.is_file():
        return None
    match = re.search(r"^cuda\b[^=]*=\s*(.+)$", version_file.read_text(), flags=re.MULTILINE)
    try:
        return ast.literal_eval(match.group(1)) if match else None
    except (ValueError, SyntaxError):
        return None


def visible_gpus() -> list[dict]:
    """GPUs as ``nvidia-smi`` sees them, limited to ``CUDA_VISIBLE_DEVICES`` when that lists indices.

    Asking nvidia-smi rather than torch keeps the job's own process free of a CUDA context (hundreds of MB of
    GPU memory that the training child would otherwise lose).
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        output = subprocess.run(
            [smi, "--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in output.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 4 and fields[0].isdigit() and fields[2].isdigit() and fields[3].isdigit():
            gpus.append(
                {"index": int(fields[0]), "name": fields[1], "total_mb": int(fields[2]), "free_mb": int(fields[3])}
            )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(part.strip().isdigit() for part in visible.split(",") if part.strip()):
        order = [int(part) for part in visible.split(",") if part.strip()]
        by_index = {gpu["index"]: gpu for gpu in gpus}
        gpus = [by_index[i] for i in order if i in by_index]
    return gpus


def gpu_index(device: str | None) -> int:
    """``cuda:N`` -> N; ``cuda`` (or anything else) -> 0."""
    match = re.fullmatch(r"cuda(?::(\d+))?", str(device or ""))
    return int(match.group(1) or 0) if match else 0


def probe(device: str | None = None) -> dict:
    """The environment record of output.json (a superset of the seed skill's ``environment``); the ``gpu_*``
    fields describe the chosen GPU (``device``), not always the first."""
    cuda_build = torch_cuda_build()
    gpus = visible_gpus() if cuda_build is not None else []
    chosen = device or ("cuda:0" if gpus else "cpu")
    index = gpu_index(chosen)
    first = (gpus[index] if index < len(gpus) else gpus[0]) if gpus else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "executable": sys.executable,
        "packages": package_versions(),
        "torch_cuda": cuda_build,
        "cuda_available": bool(gpus),
        "gpu_count": len(gpus),
        "gpu_name": first["name"] if first else "",
        "gpu_total_mb": first["total_mb"] if first else 0,
        "gpu_free_mb": first["free_mb"] if first else 0,
        "gpus": gpus,
        "host_ram_mb": host_ram_mb(),
        "cpu_count": os.cpu_count() or 1,
        "device": chosen,
    }
