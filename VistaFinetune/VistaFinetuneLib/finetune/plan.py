"""Choose patch size, cache rate, epochs and GPU count from the machine; caller flags always win.

The patch ladder follows measured peak training memory of the full VISTA3D network (MONAI 1.4.0, cache 0,
1.5 mm): 64^3 5.5 GB, 96^3 8.1 GB, 128^3 13.2 GB, 160^3 21.6 GB, [192,192,128] 24.2 GB.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

PATCH_LADDER_MB = ((8_000, [64, 64, 64]), (16_000, [96, 96, 96]), (32_000, [128, 128, 128]), (48_000, [160, 160, 160]))
LARGEST_PATCH = [192, 192, 128]
LADDER_PEAK_MB = {  # the measured peaks above, per patch (what bench/gpu_readiness.py compares against)
    (64, 64, 64): 5_500, (96, 96, 96): 8_100, (128, 128, 128): 13_200, (160, 160, 160): 21_600, (192, 192, 128): 24_200,
}  # fmt: skip
CASE_CACHE_MB = 50  # RAM one cached, resampled CT case takes, roughly


@dataclass
class Plan:
    """What the training phase will run with, and why."""

    patch_size: list[int] | None  # None: keep the bundle's own
    train_dataset_cache_rate: float
    epochs: int
    learning_rate: float | None  # None: keep the bundle's own
    nproc_per_node: int
    multi_gpu: bool
    rationale: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def patch_for_memory(free_mb: int) -> list[int]:
    """The largest patch of the ladder that fits in ``free_mb`` of GPU memory."""
    for limit, patch in PATCH_LADDER_MB:
        if free_mb < limit:
            return patch
    return LARGEST_PATCH


def make_plan(
    environment: dict,
    n_train_cases: int,
    *,
    patch_size: list[int] | None = None,
    cache_rate: float | None = None,
    epochs: int | None = None,
    learning_rate: float | None = None,
    default_epochs: int = 5,
    allow_multi_gpu: bool = True,
) -> Plan:
    """Plan a finetune for this machine and dataset size."""
    why: list[str] = []
    gpu_free = int(environment.get("gpu_free_mb", 0))
    if patch_size is not None:
        why.append(f"patch {patch_size}: given by the caller")
    elif environment.get("cuda_available") and str(environment.get("device", "")).startswith("cuda"):
        patch_size = patch_for_memory(gpu_free)
        why.append(f"patch {patch_size}: the largest that fits {gpu_free} MB of free GPU memory")
    else:
        why.append("patch: the bundle's own (no GPU, so no memory to size it by)")
    if cache_rate is not None:
        why.append(f"cache rate {cache_rate}: given by the caller")
    else:
        ram = int(environment.get("host_ram_mb", 0))
        cache_rate = max(0.0, min(1.0, ram * 0.25 / (max(n_train_cases, 1) * CASE_CACHE_MB)))
        cache_rate = round(cache_rate, 3)
        why.append(f"cache rate {cache_rate}: a quarter of {ram} MB host RAM over {n_train_cases} training cases")
    if epochs is not None:
        why.append(f"epochs {epochs}: given by the caller")
    else:
        epochs = default_epochs
        why.append(f"epochs {epochs}: the preset's default")
    if learning_rate is not None:
        why.append(f"learning rate {learning_rate}: given by the caller")
    nproc = int(os.environ.get("NPROC_PER_NODE") or environment.get("gpu_count", 0) or 1)
    multi_gpu = allow_multi_gpu and nproc >= 2
    if multi_gpu:
        why.append(f"multi-GPU: {nproc} processes with torchrun and multi_gpu_train.json")
    else:
        nproc = 1
        why.append("single process" + ("" if allow_multi_gpu else " (this preset runs on one GPU)"))
    return Plan(patch_size, cache_rate, epochs, learning_rate, nproc, multi_gpu, why)
