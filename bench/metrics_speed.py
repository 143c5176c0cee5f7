"""Benchmark: ``seg_metrics.label_metrics`` versus MONAI's metric functions on one CT-sized synthetic case.

    .venv/bin/python bench/metrics_speed.py [--tolerance-mm 2.0] [--seed 0]

A 512x512x300 label map at spacing (0.8, 0.8, 1.5) mm holds a liver-sized (~1500 mL, id 1) and a kidney-sized
(~150 mL, id 5) smooth blob; the prediction is a shifted, re-noised copy of each. Both sides compute Dice, HD95,
MSD, NSD and volumes per class on the same inputs in the same run (MONAI: ``compute_dice``,
``compute_hausdorff_distance(percentile=95)``, ``compute_average_surface_distance(symmetric=True)``,
``compute_surface_dice`` on one-hot tensors built outside its timing). Each side gets one warm-up call on a tiny
case, then one timed run. Prints the values side by side, the largest differences and MONAI time / our time
(target: at least 3).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import ndimage

from VistaFinetuneLib.review.seg_metrics import MaskMetrics, label_metrics

SHAPE = (512, 512, 300)
SPACING = (0.8, 0.8, 1.5)
# id: (name, centre voxel, ellipsoid semi-axes in mm, target volume in mL)
ORGANS = {
    1: ("liver", (200, 230, 150), (90.0, 75.0, 60.0), 1500.0),
    5: ("kidney", (380, 400, 120), (28.0, 25.0, 55.0), 150.0),
}
FIELDS = ("dice", "hd95_mm", "msd_mm", "nsd", "reference_ml", "predicted_ml")


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int) -> np.ndarray:
    """Unit-variance low-frequency noise: a ``coarse``^3 random grid upsampled cubically to ``shape``."""
    grid = rng.standard_normal((coarse,) * len(shape))
    field = ndimage.zoom(grid, [n / coarse for n in shape], order=3, grid_mode=True, mode="grid-wrap")
    return (field - field.mean()) / field.std()


def masks_at_volume(field: np.ndarray, volume_ml: float) -> np.ndarray:
    """The ``field <= level`` mask whose volume is ``volume_ml``."""
    count = round(volume_ml * 1000.0 / math.prod(SPACING))
    level = np.partition(field.ravel(), count - 1)[count - 1]
    return field <= level


def synthetic_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth and prediction label maps (uint8) with the two organs."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(SHAPE, dtype=np.uint8)
    prediction = np.zeros(SHAPE, dtype=np.uint8)
    for class_id, (_, centre, semi_axes, volume_ml) in ORGANS.items():
        half = [math.ceil(1.35 * a / s) for a, s in zip(semi_axes, SPACING, strict=True)]
        box = tuple(slice(c - h, c + h) for c, h in zip(centre, half, strict=True))
        axes = np.ogrid[tuple(slice(-h, h) for h in half)]
        radius = np.sqrt(sum((x * s / a) ** 2 for x, s, a in zip(axes, SPACING, semi_axes, strict=True)))
        shape = radius.shape
        field = radius + 0.12 * smooth_field(rng, shape, 6)
        truth[box][masks_at_volume(field, volume_ml)] = class_id
        # Prediction: shifted by a voxel or two, with finer extra noise and a few percent volume error.
        moved = np.roll(field, tuple(rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
        noisy = moved + 0.05 * smooth_field(rng, shape, 14)
        prediction[box][masks_at_volume(noisy, volume_ml * rng.uniform(0.93, 1.07))] = class_id
    return truth, prediction


def one_hot(labels: np.ndarray, class_ids: list[int]):
    """[1, 1 + classes, ...] float tensor: background channel, then one channel per class id."""
    import torch

    channels = [np.isin(labels, class_ids, invert=True)] + [labels == c for c in class_ids]
    stacked = torch.empty((1, len(channels), *labels.shape), dtype=torch.float32)
    for index, channel in enumerate(channels):
        stacked[0, index] = torch.from_numpy(channel)
    return stacked


def monai_metrics(prediction, truth, class_ids: list[int], tolerance_mm: float) -> tuple[dict, dict[str, float]]:
    """MONAI's values per class (as MaskMetrics) and the seconds each function took."""
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    seconds: dict[str, float] = {}

    def timed(name: str, function, *args, **kwargs):
        started = time.perf_counter()
        value = function(*args, **kwargs)
        seconds[name] = time.perf_counter() - started
        return value[0].tolist()

    dice = timed("compute_dice", compute_dice, prediction, truth, include_background=False)
    hd95 = timed("compute_hausdorff_distance", compute_hausdorff_distance, prediction, truth, percentile=95,
                 spacing=SPACING)  # fmt: skip
    msd = timed("compute_average_surface_distance", compute_average_surface_distance, prediction, truth,
                symmetric=True, spacing=SPACING)  # fmt: skip
    nsd = timed("compute_surface_dice", compute_surface_dice, prediction, truth,
                class_thresholds=[tolerance_mm] * len(class_ids), spacing=SPACING)  # fmt: skip
    started = time.perf_counter()
    voxel_ml = math.prod(SPACING) / 1000.0
    reference_ml = (truth[0, 1:].sum(dim=tuple(range(1, truth.ndim - 1))) * voxel_ml).tolist()
    predicted_ml = (prediction[0, 1:].sum(dim=tuple(range(1, truth.ndim - 1))) * voxel_ml).tolist()
    seconds["volumes"] = time.perf_counter() - started
    values = {}
    for i, class_id in enumerate(class_ids):
        difference = predicted_ml[i] - reference_ml[i]
        values[class_id] = MaskMetrics(dice[i], hd95[i], msd[i], nsd[i], reference_ml[i], predicted_ml[i], difference)
    return values, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tolerance-mm", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    class_ids = sorted(ORGANS)

    started = time.perf_counter()
    truth, prediction = synthetic_case(args.seed)
    print(f"case {SHAPE} at {SPACING} mm built in {time.perf_counter() - started:.1f} s")

    # Warm-up on a tiny case (imports, first-call set-up), excluded from the timings.
    tiny_truth, tiny_prediction = np.zeros((16, 16, 16), np.uint8), np.zeros((16, 16, 16), np.uint8)
    tiny_truth[4:10, 4:10, 4:10], tiny_prediction[5:11, 4:10, 4:10] = 1, 1
    tiny_truth[11:14, 11:14, 11:14], tiny_prediction[11:14, 11:14, 10:13] = 5, 5
    label_metrics(tiny_prediction, tiny_truth, SPACING, class_ids, args.tolerance_mm)
    monai_metrics(one_hot(tiny_prediction, class_ids), one_hot(tiny_truth, class_ids), class_ids, args.tolerance_mm)

    started = time.perf_counter()
    ours = label_metrics(prediction, truth, SPACING, class_ids, args.tolerance_mm)
    ours_s = time.perf_counter() - started

    started = time.perf_counter()
    prediction_onehot, truth_onehot = one_hot(prediction, class_ids), one_hot(truth, class_ids)
    onehot_s = time.perf_counter() - started
    del prediction, truth
    started = time.perf_counter()
    theirs, seconds = monai_metrics(prediction_onehot, truth_onehot, class_ids, args.tolerance_mm)
    monai_s = time.perf_counter() - started

    diagonal = math.sqrt(sum(s * s for s in SPACING))
    largest = dict.fromkeys(FIELDS, 0.0)
    for class_id in class_ids:
        print(f"\nclass {class_id} ({ORGANS[class_id][0]})   {'VistaFinetune':>16} {'MONAI':>16} {'|diff|':>10}")
        for field in FIELDS:
            a, b = getattr(ours[class_id], field), getattr(theirs[class_id], field)
            difference = abs(a - b)
            largest[field] = max(largest[field], difference)
            print(f"  {field:<22} {a:>16.6f} {b:>16.6f} {difference:>10.2e}")
    print("\nlargest |difference|: " + ", ".join(f"{k} {v:.2e}" for k, v in largest.items()))
    print(f"(distance tolerance for agreement: one voxel diagonal = {diagonal:.3f} mm)")
    print("\nMONAI per function: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))
    distances_s = monai_s - seconds["compute_dice"] - seconds["volumes"]
    print(f"one-hot tensors for MONAI (not timed): {onehot_s:.2f} s; MONAI's three distance functions alone: "
          f"{distances_s:.2f} s ({distances_s / ours_s:.1f}x our full set)")  # fmt: skip
    print(f"VistaFinetune seg_metrics: {ours_s:.2f} s   MONAI: {monai_s:.2f} s   speed ratio MONAI/ours: "
          f"{monai_s / ours_s:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
