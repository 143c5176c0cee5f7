"""The synthetic CT generator: deterministic, CT-like, with the geometry and labels asked for."""

import nibabel as nib
import numpy as np
import pytest

from VistaFinetuneLib.data import synthetic

pytestmark = pytest.mark.unit


def world_centroid(label: np.ndarray, value: int, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(label == value).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def test_same_seed_gives_identical_cases_and_other_seeds_differ():
    spec = synthetic.MICRO_SPEC
    image_a, label_a, affine_a = synthetic.make_case(3, 1, spec)
    image_b, label_b, affine_b = synthetic.make_case(3, 1, spec)
    image_c, _, affine_c = synthetic.make_case(4, 1, spec)
    assert np.array_equal(image_a, image_b) and np.array_equal(label_a, label_b)
    assert np.array_equal(affine_a, affine_b)
    assert not np.array_equal(image_a, image_c)
    assert not np.allclose(affine_a, affine_c)


def test_intensities_are_hounsfield_units_with_distinct_tissues():
    image, label, _ = synthetic.make_case(0, 0, synthetic.PhantomSpec())
    assert image.dtype == np.int16
    assert np.percentile(image, 5) < -900  # air around the body
    assert image.max() > 500  # bone
    means = {value: image[label == value].mean() for value in (1, 2, 3)}
    assert abs(means[1] - means[2]) > 50 and abs(means[1] - means[3]) > 50 and abs(means[2] - means[3]) > 50
    body = image > -500
    assert 0.2 < body.mean() < 0.95


def test_label_values_are_the_ones_asked_for_and_unlabelled_organs_stay_in_the_image():
    spec = synthetic.PhantomSpec(label_values={"liver": 7, "left kidney": 200})
    image, label, _ = synthetic.make_case(0, 0, spec)
    assert set(np.unique(label)) == {0, 7, 200}
    full_image, full_label, _ = synthetic.make_case(0, 0, synthetic.PhantomSpec())
    assert np.array_equal(image, full_image)  # the spleen is still drawn, just not labelled
    assert (full_label == 2).sum() > 100


def test_affines_are_not_identity_and_anatomy_stays_in_world_coordinates():
    spec = synthetic.PhantomSpec()
    centroids = []
    for index in range(3):
        _, label, affine = synthetic.make_case(5, index, spec)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        assert np.all(np.abs(spacing - 1.0) > 0.5)
        assert np.linalg.det(affine[:3, :3]) > 0 and affine[0, 0] < 0  # flipped x and y, proper rotation
        assert np.abs(affine[:3, 3]).max() > 10
        body_centre = affine[:3, :3] @ ((np.asarray(spec.shape) - 1) / 2) + affine[:3, 3]
        centroids.append(world_centroid(label, 1, affine) - body_centre)
    # Liver centre relative to the body centre: the organ's mean position, jittered by a few mm only.
    assert np.ptp(np.array(centroids), axis=0).max() < 10
    assert all(c[0] > 10 for c in centroids)  # the liver is on the patient's right (+x in RAS)


def test_write_dataset_writes_matching_image_label_pairs(tmp_path):
    items = synthetic.write_dataset(tmp_path / "ds", 2, seed=1, spec=synthetic.MICRO_SPEC)
    assert [item["image"] for item in items] == ["imagesTr/case_000.nii.gz", "imagesTr/case_001.nii.gz"]
    for item in items:
        image = nib.load(tmp_path / "ds" / item["image"])
        label = nib.load(tmp_path / "ds" / item["label"])
        assert image.shape == label.shape == synthetic.MICRO_SPEC.shape
        assert np.allclose(image.affine, label.affine)
        assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
        assert set(np.unique(np.asarray(label.dataobj))) == {0, 1, 2, 3}
