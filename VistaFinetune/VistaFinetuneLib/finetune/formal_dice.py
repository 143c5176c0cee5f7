"""Formal Dice per mapped class, from the predictions the bundle's ``evaluate.json`` saves at original spacing.

The bundle's own ``val_mean_dice`` of ``evaluate.json`` loses the last mapped class when two or more are mapped
(its ``MeanDice`` counts classes ``1..num_classes-1`` with ``num_classes = len(label_set)``). Here every
mapped class counts: each saved prediction (global VISTA3D ids, 255 = not processed) is compared with the
ground truth relabelled through the same ``label_mappings``, on the ground truth's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from VistaFinetuneLib.data.dataset import Case
from VistaFinetuneLib.review.confusion import add_counts, confusion_counts, confusion_shares
from VistaFinetuneLib.review.seg_metrics import dice

METHOD = (
    "Dice per mapped class per validation case, computed by VistaFinetune from the predictions saved by "
    "evaluate.json (original spacing and grid) against the ground truth relabelled with label_mappings; "
    "value 255 counts as background; a case whose ground truth lacks a class is skipped for that class unless "
    "the prediction has it (then Dice 0); class Dice = mean over cases; overall = mean over classes; confusion: per "
    "ground-truth class, the share of its voxels (all validation cases) labelled as each mapped class or background."
)


@dataclass(frozen=True)
class FormalDice:
    """Per-case and per-class Dice of one checkpoint."""

    per_case: dict[str, dict[int, float | None]]
    per_class: dict[int, float | None]
    mean: float | None
    bundle_val_mean_dice: float | None
    confusion: dict[str, dict[str, float]]

    def to_json(self) -> dict:
        return {
            "mean": self.mean,
            "per_class": {str(k): v for k, v in self.per_class.items()},
            "per_case": {case: {str(k): v for k, v in d.items()} for case, d in self.per_case.items()},
            "bundle_val_mean_dice": self.bundle_val_mean_dice,
            "confusion": self.confusion,
            "method": METHOD,
        }


def prediction_path(output_dir: Path, case_name: str) -> Path:
    """Where ``SaveImaged`` (separate folder, postfix ``trans``) puts a case's prediction."""
    return output_dir / case_name / f"{case_name}_trans.nii.gz"


def read_bundle_metric(output_dir: Path) -> float | None:
    """``val_mean_dice`` from the bundle's ``metrics.csv``, if written."""
    path = output_dir / "metrics.csv"
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        name, _, value = line.partition(",") if "," in line else line.partition("\t")
        if name.strip() == "val_mean_dice":
            return float(value)
    return None


def formal_dice(output_dir: Path, cases: list[Case], label_mappings: list[list[int]]) -> FormalDice:
    """Score the saved predictions of ``cases`` for every mapped class."""
    mapping = {int(source): int(target) for source, target in label_mappings}
    classes = sorted(set(mapping.values()))
    per_case: dict[str, dict[int, float | None]] = {}
    counts: dict[int, dict[int, int]] = {}
    for case in cases:
        path = prediction_path(output_dir, case.name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the evaluation saved no prediction for case {case.name}")
        prediction = np.asarray(nib.load(path).dataobj).squeeze()
        truth_values = np.asarray(nib.load(case.label).dataobj).squeeze()
        if prediction.shape != truth_values.shape:
            raise ValueError(f"{path}: prediction shape {prediction.shape} != label shape {truth_values.shape}")
        truth = np.zeros(truth_values.shape, dtype=np.int32)
        for source, target in mapping.items():
            truth[truth_values == source] = target
        prediction = np.rint(prediction).astype(np.int32)
        prediction[prediction == 255] = 0
        per_case[case.name] = {c: dice(prediction == c, truth == c) for c in classes}
        add_counts(counts, confusion_counts(prediction, truth, classes))
    per_class: dict[int, float | None] = {}
    for c in classes:
        scores = [d[c] for d in per_case.values() if d[c] is not None]
        per_class[c] = float(np.mean(scores)) if scores else None
    scored = [v for v in per_class.values() if v is not None]
    return FormalDice(
        per_case=per_case,
        per_class=per_class,
        mean=float(np.mean(scored)) if scored else None,
        bundle_val_mean_dice=read_bundle_metric(output_dir),
        confusion=confusion_shares(counts),
    )
