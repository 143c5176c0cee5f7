"""A click answered on its windows' region only equals the whole-volume answer voxel for voxel (the tiny network,
the bundle's own post-processing and inversion), and the region file sits where it belongs in the world."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.inference.models import pretrained_model
from VistaFinetuneLib.inference.point_region import place_region, processed_box, window_boxes
from VistaFinetuneLib.inference.predictor import Predictor
from VistaFinetuneLib.inference.segment import SegmentRequest, segment


@pytest.fixture(scope="module")
def case(tmp_path_factory, tiny_bundle_dir):
    """A phantom larger than one point window, its liver, and a warm predictor."""
    root = tmp_path_factory.mktemp("region")
    spec = synthetic.PhantomSpec(shape=(96, 80, 48), label_values={"liver": 1})
    synthetic.write_dataset(root, 1, seed=5, spec=spec)
    truth = np.asarray(nib.load(root / "labelsTr" / "case_000.nii.gz").dataobj) == 1
    predictor = Predictor(pretrained_model(tiny_bundle_dir), device="cpu")
    return root / "imagesTr" / "case_000.nii.gz", truth, predictor


def deepest(mask: np.ndarray) -> list[float]:
    return [float(v) for v in np.unravel_index(int(ndimage.distance_transform_edt(mask).argmax()), mask.shape)]


def answer(predictor, image, out, region: bool, **prompts) -> tuple[np.ndarray, dict]:
    request = SegmentRequest(image=image, output=out, points_space="ijk", region=region, **prompts)
    response = segment(predictor, request)
    labels = np.asarray(nib.load(response["output"]).dataobj)
    if response["region"] is not None:
        labels = place_region(labels, response["region"]["start"], response["region"]["shape"])
    return labels, response


@pytest.mark.e2e
@pytest.mark.parametrize(
    "prompt",
    ["positive click", "positive and negative clicks", "class and click"],
)
def test_a_region_answer_equals_the_whole_volume_answer(case, tmp_path, prompt):
    image, liver, predictor = case
    inside, outside = deepest(liver), deepest(~liver)
    prompts = {
        "positive click": {"points": [inside], "point_labels": [1]},
        "positive and negative clicks": {"points": [inside, outside], "point_labels": [1, 0]},
        "class and click": {"points": [inside], "point_labels": [1], "classes": [1]},
    }[prompt]
    whole, whole_response = answer(predictor, image, tmp_path / "whole.nii.gz", False, **prompts)
    part, part_response = answer(predictor, image, tmp_path / "part.nii.gz", True, **prompts)
    assert whole_response["region"] is None
    region = nib.load(part_response["output"])
    assert region.shape != liver.shape and all(a <= b for a, b in zip(region.shape, liver.shape, strict=True))
    assert whole.any()
    np.testing.assert_array_equal(part, whole)
    start = np.asarray(part_response["region"]["start"], dtype=float)
    expected = nib.load(image).affine.copy()
    expected[:3, 3] += expected[:3, :3] @ start
    np.testing.assert_allclose(region.affine, expected, atol=1e-4)


@pytest.mark.e2e
def test_a_class_prompt_asked_for_a_region_answers_the_whole_volume(case, tmp_path):
    image, liver, predictor = case
    labels, response = answer(predictor, image, tmp_path / "class.nii.gz", True, classes=[1])
    assert response["region"] is None and labels.shape == liver.shape


@pytest.mark.unit
def test_far_apart_windows_are_read_as_separate_boxes_that_miss_no_processed_voxel():
    import torch

    prediction = torch.full((1, 120, 100, 90), float("nan"))
    windows = [(slice(3, 35), slice(5, 37), slice(0, 32)), (slice(20, 52), slice(30, 62), slice(10, 42)),
               (slice(85, 117), slice(60, 92), slice(55, 87))]  # fmt: skip
    for window in windows:
        prediction[(0, *window)] = torch.rand(tuple(w.stop - w.start for w in window))
    box = processed_box(prediction)
    boxes = window_boxes(prediction, box)
    assert len(boxes) == 2  # the two touching windows, and the far one
    covered = torch.zeros(prediction.shape[1:], dtype=torch.bool)
    for part in boxes:
        covered[part] = True
    assert not (~torch.isnan(prediction[0]) & ~covered).any()
    assert covered.sum() < 0.5 * covered.numel()
