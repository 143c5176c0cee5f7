"""Where each class's ground-truth voxels went: the share labelled as each scored class or as background.

Rows are ground-truth classes, columns the class each of those voxels was labelled as (``0``: background, which
also takes VISTA3D's "not processed" 255 and any id outside the scored classes). Rows sum to one, so
"liver 0.000" reads as "liver: 97% labelled left kidney".
"""

from __future__ import annotations

import numpy as np

BACKGROUND = 0


def confusion_counts(prediction: np.ndarray, truth: np.ndarray, class_ids: list[int]) -> dict[int, dict[int, int]]:
    """Truth class -> labelled-as (a class id or 0) -> voxel count, for two label maps on one grid."""
    labelled = np.where(np.isin(prediction, class_ids), prediction, BACKGROUND)
    counts = {}
    for truth_id in class_ids:
        inside = labelled[truth == truth_id]
        counts[truth_id] = {column: int((inside == column).sum()) for column in [*class_ids, BACKGROUND]}
    return counts


def add_counts(total: dict[int, dict[int, int]], counts: dict[int, dict[int, int]]) -> None:
    """Add one case's counts to a running total (in place)."""
    for truth_id, row in counts.items():
        target = total.setdefault(truth_id, {})
        for column, n in row.items():
            target[column] = target.get(column, 0) + n


def confusion_shares(counts: dict[int, dict[int, int]]) -> dict[str, dict[str, float]]:
    """Each row as shares of its ground-truth voxels (JSON keys); classes without truth voxels are left out."""
    shares = {}
    for truth_id, row in counts.items():
        total = sum(row.values())
        if total:
            shares[str(truth_id)] = {str(column): round(n / total, 6) for column, n in row.items()}
    return shares


def confusion_rows(shares: dict[str, dict[str, float]], names: dict[int, str], model: str) -> list[dict]:
    """Table rows (model, ground truth class, labelled as, share) for every nonzero share."""

    def label(key: str) -> str:
        return "background" if key == str(BACKGROUND) else f"{key} {names.get(int(key), '')}".strip()

    return [
        {"model": model, "ground truth": label(truth_id), "labelled as": label(column), "share": share}
        for truth_id, row in shares.items()
        for column, share in row.items()
        if share > 0
    ]


def misplaced(shares: dict[str, dict[str, float]], names: dict[int, str], at_least: float = 0.05) -> list[str]:
    """Sentences for the largest share of each class labelled as another class, when it is at least ``at_least``."""
    sentences = []
    for truth_id, row in shares.items():
        others = {k: v for k, v in row.items() if k not in (truth_id, str(BACKGROUND))}
        if others:
            column, share = max(others.items(), key=lambda item: item[1])
            if share >= at_least:
                truth_name = names.get(int(truth_id), f"class {truth_id}")
                sentences.append(f"{truth_name}: {share:.0%} labelled {names.get(int(column), f'class {column}')}")
    return sentences
