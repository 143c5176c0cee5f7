"""Where the voxels went: per ground-truth class, the share labelled as each mapped class or background."""

import numpy as np
import pytest

from VistaFinetuneLib.review.confusion import (
    add_counts,
    confusion_counts,
    confusion_rows,
    confusion_shares,
    misplaced,
)

pytestmark = pytest.mark.unit


def test_a_liver_labelled_as_left_kidney_reads_as_such():
    truth = np.zeros((10, 10, 10), np.int32)
    truth[:5] = 1  # liver: 500 voxels
    truth[8:] = 14  # left kidney: 200 voxels
    prediction = np.zeros_like(truth)
    prediction[:5] = 14
    prediction[0, 0, :3] = 0  # 3 liver voxels left as background
    prediction[0, 1, :2] = 255  # 2 "not processed": background too
    prediction[8:] = 14
    counts = confusion_counts(prediction, truth, [1, 14])
    assert counts[1] == {1: 0, 14: 495, 0: 5}
    shares = confusion_shares(counts)
    assert shares["1"] == {"1": 0.0, "14": 0.99, "0": 0.01}
    assert shares["14"]["14"] == 1.0
    assert misplaced(shares, {1: "liver", 14: "left kidney"}) == ["liver: 99% labelled left kidney"]
    rows = confusion_rows(shares, {1: "liver", 14: "left kidney"}, "pretrained")
    assert {"model": "pretrained", "ground truth": "1 liver", "labelled as": "14 left kidney", "share": 0.99} in rows
    assert all(row["share"] > 0 for row in rows)


def test_counts_add_over_cases_and_classes_without_truth_are_left_out():
    truth = np.array([1, 1, 0, 0])
    total: dict = {}
    add_counts(total, confusion_counts(np.array([1, 3, 0, 0]), truth, [1, 3]))
    add_counts(total, confusion_counts(np.array([1, 1, 0, 0]), truth, [1, 3]))
    assert total[1] == {1: 3, 3: 1, 0: 0}
    shares = confusion_shares(total)
    assert shares["1"]["3"] == 0.25 and "3" not in shares  # class 3 has no truth voxels
    assert misplaced(shares, {1: "liver", 3: "spleen"}, at_least=0.3) == []
