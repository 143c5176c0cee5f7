"""Segmentation metrics: hand-computed cases, the empty-mask rules, label maps, and agreement with MONAI."""

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from VistaFinetuneLib.review.seg_metrics import EMPTY_MASK_RULES, MaskMetrics, label_metrics, mask_metrics

pytestmark = pytest.mark.unit

ANISOTROPIC = (0.5, 0.5, 3.0)


def sphere(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def box(shape: tuple[int, int, int], start: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = True
    return mask


def test_identical_spheres_are_a_perfect_match():
    mask = sphere((30, 30, 30), (15, 14, 16), 9.0)
    result = mask_metrics(mask, mask.copy(), (1.0, 1.0, 1.0))
    assert (result.dice, result.hd95_mm, result.msd_mm, result.nsd) == (1.0, 0.0, 0.0, 1.0)
    assert result.predicted_ml == result.reference_ml == pytest.approx(np.count_nonzero(mask) / 1000.0)
    assert result.volume_difference_ml == 0.0


def test_concentric_cubes_match_hand_computed_distances():
    inner = box((30, 30, 30), (10, 10, 10), (10, 10, 10))  # surface: 10^3 - 8^3 = 488 voxels, all 1 mm away
    outer = box((30, 30, 30), (9, 9, 9), (12, 12, 12))  # 12^3 - 10^3 = 728: 600 faces at 1, 120 edges at √2, 8 at √3
    result = mask_metrics(inner, outer, (1.0, 1.0, 1.0), tolerance_mm=2.0)
    assert result.dice == pytest.approx(2 * 1000 / (1000 + 1728))
    assert result.hd95_mm == pytest.approx(math.sqrt(2))  # 95th percentile of the outer surface's distances
    assert result.msd_mm == pytest.approx((488 + 600 + 120 * math.sqrt(2) + 8 * math.sqrt(3)) / (488 + 728))
    assert result.nsd == 1.0
    assert mask_metrics(inner, outer, (1.0, 1.0, 1.0), tolerance_mm=1.0).nsd == pytest.approx(1088 / 1216)
    assert result.volume_difference_ml == pytest.approx(-0.728)


@pytest.mark.parametrize("shift", [1, 2])
def test_shift_along_the_thick_axis_costs_shift_times_its_spacing(shift):
    truth = box((48, 48, 12), (4, 4, 3), (40, 40, 4))
    prediction = np.roll(truth, shift, axis=2)
    result = mask_metrics(prediction, truth, ANISOTROPIC)
    assert result.hd95_mm == pytest.approx(3.0 * shift, abs=1e-9)
    assert result.dice == pytest.approx((4 - shift) / 4)
    assert result.nsd < 1.0  # the shifted caps lie 3 mm or more apart, beyond the 2 mm tolerance


def test_masks_touching_the_array_border_have_their_border_voxels_as_surface():
    full = np.ones((6, 6, 6), dtype=bool)
    result = mask_metrics(full, full, (1.0, 1.0, 1.0))
    assert (result.hd95_mm, result.msd_mm, result.nsd) == (0.0, 0.0, 1.0)
    # Whole cube (surface 152) vs its first five slices (surface 132): only the x=5 face (36 voxels, 1 mm from
    # the slab's x=4 face) and the slab's 16 inner x=4 face voxels (1 mm from the border faces) are off.
    slab = full.copy()
    slab[5] = False
    result = mask_metrics(full, slab, (1.0, 1.0, 1.0), tolerance_mm=0.5)
    assert result.msd_mm == pytest.approx((36 + 16) / (152 + 132))
    assert result.hd95_mm == 1.0
    assert result.nsd == pytest.approx((152 - 36 + 132 - 16) / (152 + 132))


def test_surface_is_face_connected():
    cube = box((7, 7, 7), (1, 1, 1), (5, 5, 5))  # surface 125 - 27 = 98
    notched = cube.copy()
    notched[1, 1, 1:6] = False  # one cube edge removed: 120 voxels, surface 120 - 27 = 93
    # The notch's 5 voxels lie 1 mm from the notched surface; every other surface voxel is shared. With a
    # 26-neighbour erosion the 3 voxels diagonal to the notch would be surface too (8 / 194 instead).
    result = mask_metrics(cube, notched, (1.0, 1.0, 1.0), tolerance_mm=0.5)
    assert result.msd_mm == pytest.approx(5 / (98 + 93))
    assert result.nsd == pytest.approx((98 + 93 - 5) / (98 + 93))


def test_one_voxel_masks():
    spot = box((5, 5, 5), (2, 2, 2), (1, 1, 1))
    same = mask_metrics(spot, spot.copy(), ANISOTROPIC)
    assert (same.dice, same.hd95_mm, same.msd_mm, same.nsd) == (1.0, 0.0, 0.0, 1.0)
    along_thick = mask_metrics(np.roll(spot, 1, axis=2), spot, ANISOTROPIC, tolerance_mm=2.0)
    assert (along_thick.dice, along_thick.hd95_mm, along_thick.msd_mm, along_thick.nsd) == (0.0, 3.0, 3.0, 0.0)
    along_thin = mask_metrics(np.roll(spot, 1, axis=0), spot, ANISOTROPIC, tolerance_mm=2.0)
    assert (along_thin.dice, along_thin.hd95_mm, along_thin.msd_mm, along_thin.nsd) == (0.0, 0.5, 0.5, 1.0)


def test_both_empty_is_not_scored():
    empty = np.zeros((8, 8, 8), dtype=bool)
    result = mask_metrics(empty, empty, ANISOTROPIC)
    assert result == MaskMetrics(None, None, None, None, 0.0, 0.0, 0.0)
    assert json.loads(json.dumps(result.to_json()))["dice"] is None


@pytest.mark.parametrize("empty_side", ["prediction", "reference"])
def test_exactly_one_empty_scores_zero_and_leaves_distances_missing(empty_side):
    present = box((8, 8, 8), (2, 2, 2), (3, 3, 2))
    empty = np.zeros_like(present)
    prediction, reference = (empty, present) if empty_side == "prediction" else (present, empty)
    result = mask_metrics(prediction, reference, ANISOTROPIC)
    assert (result.dice, result.nsd, result.hd95_mm, result.msd_mm) == (0.0, 0.0, None, None)
    volume = 18 * 0.75 / 1000.0
    expected = (0.0, volume) if empty_side == "reference" else (volume, 0.0)
    assert (result.reference_ml, result.predicted_ml) == pytest.approx(expected)
    assert result.volume_difference_ml == pytest.approx(expected[1] - expected[0])


def test_empty_mask_rules_are_one_paragraph_naming_every_case():
    assert "\n" not in EMPTY_MASK_RULES
    for phrase in ("both", "exactly one", "255", "Volumes"):
        assert phrase in EMPTY_MASK_RULES


def test_volumes_are_voxel_counts_times_voxel_volume():
    rng = np.random.default_rng(5)
    prediction, reference = rng.random((20, 20, 20)) < 0.3, rng.random((20, 20, 20)) < 0.2
    result = mask_metrics(prediction, reference, (0.5, 0.5, 2.0))
    assert result.predicted_ml == pytest.approx(np.count_nonzero(prediction) * 0.5 / 1000, rel=1e-12)
    assert result.reference_ml == pytest.approx(np.count_nonzero(reference) * 0.5 / 1000, rel=1e-12)
    assert result.volume_difference_ml == pytest.approx(result.predicted_ml - result.reference_ml, rel=1e-12)


def test_label_metrics_match_per_class_masks_and_ignore_not_processed():
    reference = np.zeros((24, 24, 12), dtype=np.uint8)
    reference[2:10, 2:10, 2:6] = 1
    reference[14:20, 14:20, 4:10] = 3
    reference[0:2, 20:24, 0:2] = 255
    prediction = np.zeros_like(reference)
    prediction[3:10, 2:11, 2:7] = 1
    prediction[14:19, 15:20, 5:10] = 3
    prediction[0:6, 18:24, 0:4] = 255  # "not processed": foreground of no class, not even class 255
    prediction[20:22, 2:4, 2:4] = 7  # predicted only
    results = label_metrics(prediction, reference, ANISOTROPIC, [1, 3, 7, 9, 255])
    assert list(results) == [1, 3, 7, 9, 255]
    for class_id in (1, 3, 7, 9):
        assert results[class_id] == mask_metrics(prediction == class_id, reference == class_id, ANISOTROPIC)
    assert results[7].dice == 0.0 and results[7].hd95_mm is None
    assert results[9] == MaskMetrics(None, None, None, None, 0.0, 0.0, 0.0)
    assert results[255].predicted_ml == 0.0 and results[255].dice == 0.0
    assert results[255].reference_ml == pytest.approx(16 * 0.75 / 1000)


def test_mismatched_inputs_are_rejected():
    mask = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="shape"):
        mask_metrics(mask, np.zeros((4, 4, 5), dtype=bool), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        mask_metrics(mask, mask, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        label_metrics(mask, mask, (1.0, 0.0, 1.0), [1])


def blob_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping smooth random shapes on a 40^3 grid (they touch the border too)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((40, 40, 40))
    other = base + 0.6 * rng.standard_normal((40, 40, 40))
    smooth_base, smooth_other = ndimage.gaussian_filter(base, 3.0), ndimage.gaussian_filter(other, 3.0)
    return smooth_base > 0.0, smooth_other > 0.2 * smooth_other.std()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_monai_on_random_blobs(seed):
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")
    spacing, tolerance = (0.7, 0.9, 2.5), 2.0
    diagonal = math.sqrt(sum(s * s for s in spacing))
    prediction, reference = blob_pair(seed)
    ours = mask_metrics(prediction, reference, spacing, tolerance_mm=tolerance)

    def one_hot(mask):
        return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))

    p, y = one_hot(prediction), one_hot(reference)
    assert ours.dice == pytest.approx(metrics.compute_dice(p, y, include_background=False).item(), abs=1e-6)
    hd95 = metrics.compute_hausdorff_distance(p, y, percentile=95, spacing=spacing).item()
    msd = metrics.compute_average_surface_distance(p, y, symmetric=True, spacing=spacing).item()
    nsd = metrics.compute_surface_dice(p, y, class_thresholds=[tolerance], spacing=spacing).item()
    assert ours.hd95_mm == pytest.approx(hd95, abs=diagonal)
    assert ours.msd_mm == pytest.approx(msd, abs=diagonal)
    assert ours.nsd == pytest.approx(nsd, abs=1e-6)
    assert 0.5 < ours.dice < 0.99 and ours.hd95_mm > 0  # a real disagreement, not a trivial case
