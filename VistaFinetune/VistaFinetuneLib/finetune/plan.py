"""Choose patch size, cache rate, epochs, GPU count and loader workers from the machine; caller flags always win.

Training memory grows with the classes prompted: the bundle's sampler (``max_prompt`` null) prompts every mapped
class each step, and each one that gets point prompts runs the point head over the whole patch. Measured on an
H200 (vista3d132, MONAI 1.6.1, AMP, AdamW, DiceCE per prompt; peak reserved MB of one training step, by
bench/plan_memory.py):

| patch | 1 class with points | each further class with points | 1..32 classes, no points |
| 64^3  | 5128  | +244  | 4462..4982   |
| 96^3  | 6946  | +845  | 5552..6306   |
| 128^3 | 12064 | +1866 | 8904..10268  |
| 160^3 | 19860 | +3378 | 13728..17206 |

so a further class costs about 1 GB per million patch voxels with points, and about 50 MB without
(``--auto-seg`` drops every point prompt). The plan takes the largest patch whose estimate, with a quarter of
headroom for the allocator and the CUDA context on top, fits the chosen GPU's free memory (the least free GPU for
multi-GPU training).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from VistaFinetuneLib.environment import gpu_index

# patch -> measured peak reserved MB of one class: (with point prompts, without)
MEASURED_PATCHES: tuple[tuple[list[int], int, int], ...] = (
    ([64, 64, 64], 5_128, 4_462),
    ([96, 96, 96], 6_946, 5_552),
    ([128, 128, 128], 12_064, 8_904),
    ([160, 160, 160], 19_860, 13_728),
)
LARGEST_PATCH = [192, 192, 128]  # NV-Segment-CTMR's; its one-class peaks extrapolated from 96^3..160^3
LARGEST_PATCH_MB = (22_400, 15_800)
CLASS_MB_PER_MVOXEL = {True: 1_000, False: 50}  # each further prompted class, with / without point prompts
HEADROOM = 1.25
CUDA_CONTEXT_MB = 500
CASE_CACHE_MB = 50  # RAM one cached, resampled CT case takes, roughly
MAX_WORKERS = 8


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
    num_workers: int | None = None  # data loader workers per process; None: keep the bundle's own

    def to_json(self) -> dict:
        return asdict(self)


def estimated_peak_mb(patch: list[int], n_classes: int, point_prompts: bool) -> int:
    """The planned GPU memory of a training step: the measured one-class peak, each further class, headroom."""
    voxels_m = math.prod(patch) / 1e6
    one = next((m[1 if point_prompts else 2] for m in MEASURED_PATCHES if m[0] == patch), None)
    if one is None:
        one = LARGEST_PATCH_MB[0 if point_prompts else 1] if patch == LARGEST_PATCH else round(3_400 + 4_000 * voxels_m)
    further = max(n_classes - 1, 0) * CLASS_MB_PER_MVOXEL[point_prompts] * voxels_m
    return round((one + further) * HEADROOM + CUDA_CONTEXT_MB)


def patch_for_memory(free_mb: int, n_classes: int = 1, point_prompts: bool = True) -> list[int]:
    """The largest patch whose estimated training peak for ``n_classes`` prompted classes fits ``free_mb``
    (the smallest when none does)."""
    ladder = [m[0] for m in MEASURED_PATCHES] + [LARGEST_PATCH]
    fitting = [p for p in ladder if estimated_peak_mb(p, n_classes, point_prompts) <= free_mb]
    return fitting[-1] if fitting else ladder[0]


def free_gpu_memory(environment: dict, multi_gpu: bool) -> tuple[int, str]:
    """The free memory the patch is sized by, and where: the chosen GPU (``device``), or the least free of all
    GPUs for multi-GPU training."""
    gpus = environment.get("gpus") or []
    if not gpus:
        return int(environment.get("gpu_free_mb", 0)), "the GPU"
    if multi_gpu:
        return min(int(g["free_mb"]) for g in gpus), f"the least free of {len(gpus)} GPUs"
    index = gpu_index(environment.get("device"))
    gpu = gpus[index] if index < len(gpus) else gpus[0]
    return int(gpu["free_mb"]), f"{environment.get('device') or 'cuda:0'} ({gpu.get('name', 'GPU')})"


def plan_workers(environment: dict, nproc: int) -> tuple[int | None, str]:
    """Data loader workers per training process from the CPU count (0 on a CPU-only run: the cores train)."""
    cpus = int(environment.get("cpu_count") or 0)
    if not cpus:
        return None, "loader workers: the bundle's own (CPU count unknown)"
    if not environment.get("cuda_available") or not str(environment.get("device", "")).startswith("cuda"):
        return 0, f"loader workers 0: no GPU, so the {cpus} CPU cores train and workers would only compete"
    workers = max(0, min(MAX_WORKERS, cpus // nproc - 1))
    return workers, f"loader workers {workers}: {cpus} CPU cores over {nproc} process(es), one core each kept"


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
    n_classes: int = 1,
    point_prompts: bool = True,
) -> Plan:
    """Plan a finetune for this machine and dataset size; ``n_classes`` mapped classes are prompted each step,
    with point prompts unless ``point_prompts`` is False (auto-seg)."""
    why: list[str] = []
    on_gpu = bool(environment.get("cuda_available")) and str(environment.get("device", "")).startswith("cuda")
    nproc = int(os.environ.get("NPROC_PER_NODE") or environment.get("gpu_count", 0) or 1)
    multi_gpu = allow_multi_gpu and on_gpu and nproc >= 2
    if patch_size is not None:
        why.append(f"patch {patch_size}: given by the caller")
    elif on_gpu:
        free_mb, where = free_gpu_memory(environment, multi_gpu)
        patch_size = patch_for_memory(free_mb, n_classes, point_prompts)
        peak = estimated_peak_mb(patch_size, n_classes, point_prompts)
        prompts = f"{n_classes} prompted class(es) {'with' if point_prompts else 'without'} point prompts"
        fits = "fits" if peak <= free_mb else "does NOT fit (the smallest patch; map fewer classes or use --auto-seg)"
        why.append(f"patch {patch_size}: the largest whose estimated peak for {prompts} ({peak} MB) {fits} "
                   f"{free_mb} MB free on {where}")  # fmt: skip
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
    if multi_gpu:
        why.append(f"multi-GPU: {nproc} processes with torchrun and multi_gpu_train.json")
    else:
        nproc = 1
        why.append("single process" + ("" if allow_multi_gpu else " (this preset runs on one GPU)"))
    workers, reason = plan_workers(environment, nproc)
    why.append(reason)
    return Plan(patch_size, cache_rate, epochs, learning_rate, nproc, multi_gpu, why, workers)
