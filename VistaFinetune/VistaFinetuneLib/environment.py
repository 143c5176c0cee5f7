"""What the job process runs on: Python, torch and CUDA, GPUs and their memory, host RAM, package versions.

Imports torch when called (a job process), never at module import.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

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


def probe(device: str | None = None) -> dict:
    """The environment record of output.json (a superset of the seed skill's ``environment``)."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(
                {
                    "index": index,
                    "name": torch.cuda.get_device_name(index),
                    "total_mb": int(total / 2**20),
                    "free_mb": int(free / 2**20),
                }
            )
    chosen = device or ("cuda:0" if gpus else "cpu")
    first = gpus[0] if gpus else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "executable": sys.executable,
        "packages": package_versions(),
        "torch_cuda": torch.version.cuda,
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
