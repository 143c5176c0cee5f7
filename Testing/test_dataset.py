"""The dataset: finding pairs, reading datalists, auditing NIfTI files, splitting into folds."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.data.dataset import (
    Case,
    assign_folds,
    audit_cases,
    find_cases,
    read_datalist,
    write_datalist,
)
from VistaFinetuneLib.errors import UserError

pytestmark = pytest.mark.unit

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
AFFINE[:3, 3] = [-30.0, 20.0, -600.0]


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def ct_image(shape=(12, 10, 8), seed=0) -> np.ndarray:
    """Air around a soft-tissue block: CT-like HU values."""
    image = np.full(shape, -1000, dtype=np.int16)
    image[3:-3, 3:-3, 2:-2] = 40
    return image + np.random.default_rng(seed).integers(-5, 5, shape, dtype=np.int16)


def organ_label(shape=(12, 10, 8)) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[4:7, 4:6, 3:5] = 1
    label[7:9, 4:6, 3:4] = 2
    return label


def make_pair(root: Path, name: str, image=None, label=None, label_affine=AFFINE, ext=".nii.gz") -> Case:
    image_path = save(root / "imagesTr" / f"{name}{ext}", ct_image() if image is None else image)
    label_path = save(root / "labelsTr" / f"{name}{ext}", organ_label() if label is None else label, label_affine)
    return Case(name, image_path, label_path)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("phantoms")
    return root, synthetic.write_dataset(root, 3, seed=5, spec=synthetic.MICRO_SPEC)


# Finding pairs


def test_find_cases_pairs_by_name_sorted_with_absolute_paths_and_ignores_other_files(phantoms):
    root, items = phantoms
    (root / "imagesTr" / "notes.txt").write_text("not an image")
    (root / "labelsTr" / "._case_000.nii.gz").write_bytes(b"macOS resource fork")
    (root / "imagesTr" / ".hidden.nii.gz").write_bytes(b"hidden")
    cases = find_cases(root)
    assert [case.name for case in cases] == ["case_000", "case_001", "case_002"]
    for case, item in zip(cases, items, strict=True):
        assert case.image == (root / item["image"]).absolute() and case.image.is_absolute()
        assert case.label == (root / item["label"]).absolute() and case.fold is None


def test_find_cases_accepts_nii_and_nii_gz_mixed(tmp_path):
    save(tmp_path / "imagesTr" / "b.nii", ct_image())
    save(tmp_path / "labelsTr" / "b.nii.gz", organ_label())
    save(tmp_path / "imagesTr" / "a.nii.gz", ct_image())
    save(tmp_path / "labelsTr" / "a.nii", organ_label())
    cases = find_cases(tmp_path)
    assert [(c.name, c.image.name, c.label.name) for c in cases] == [
        ("a", "a.nii.gz", "a.nii"),
        ("b", "b.nii", "b.nii.gz"),
    ]


def test_image_without_label_names_the_image(tmp_path):
    make_pair(tmp_path, "good")
    save(tmp_path / "imagesTr" / "lonely.nii.gz", ct_image())
    with pytest.raises(UserError, match=r"lonely\.nii\.gz: the image has no label"):
        find_cases(tmp_path)


def test_label_without_image_names_the_label(tmp_path):
    make_pair(tmp_path, "good")
    save(tmp_path / "labelsTr" / "orphan.nii", organ_label())
    with pytest.raises(UserError, match=r"orphan\.nii: the label has no image"):
        find_cases(tmp_path)


def test_same_name_twice_in_one_folder_is_an_error(tmp_path):
    make_pair(tmp_path, "a")
    save(tmp_path / "imagesTr" / "a.nii", ct_image())
    with pytest.raises(UserError, match="same name"):
        find_cases(tmp_path)


def test_missing_empty_or_incomplete_dataset_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_cases(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        find_cases(tmp_path / "file")
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(UserError, match="labelsTr: missing"):
        find_cases(tmp_path)
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "imagesTr" / "readme.md").write_text("no images here")
    with pytest.raises(UserError, match="imagesTr: no .nii or .nii.gz images"):
        find_cases(tmp_path)


# Datalists


def test_datalist_paths_relative_to_dataset_dir_or_datalist_folder_or_absolute(phantoms, tmp_path):
    root, items = phantoms
    listed = [dict(item, fold=index % 2) for index, item in enumerate(items)]
    listed[2]["image"] = str((root / items[2]["image"]).absolute())
    elsewhere = tmp_path / "lists" / "datalist.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps({"training": listed}))
    cases = read_datalist(elsewhere, root)
    assert [case.image for case in cases] == [(root / item["image"]).absolute() for item in items]
    assert [case.label for case in cases] == [(root / item["label"]).absolute() for item in items]
    assert [case.fold for case in cases] == [0, 1, 0] and cases[0].name == "case_000"
    beside = root / "datalist.json"
    beside.write_text(json.dumps({"training": items}))
    assert [case.image for case in read_datalist(beside, None)] == [case.image for case in cases]
    assert all(case.fold is None for case in read_datalist(beside, None))
    with pytest.raises(UserError, match="does not exist"):  # relative to the datalist's own folder: not there
        read_datalist(elsewhere, None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"validation": []}), 'no "training" list'),
        (json.dumps(["imagesTr/case_000.nii.gz"]), 'no "training" list'),
        (json.dumps({"training": [{"image": "imagesTr/case_000.nii.gz"}]}), 'item 0 has no "label" path'),
        (json.dumps({"training": ["imagesTr/case_000.nii.gz"]}), "item 0 is not an object"),
        (
            json.dumps({"training": [{"image": "imagesTr/nope.nii.gz", "label": "labelsTr/case_000.nii.gz"}]}),
            r"imagesTr/nope\.nii\.gz does not exist",
        ),
        (
            json.dumps(
                {"training": [{"image": "imagesTr/case_000.nii.gz", "label": "labelsTr/case_000.nii.gz", "fold": "1"}]}
            ),
            "fold '1'; a fold must be an integer",
        ),
        (
            json.dumps(
                {"training": [{"image": "imagesTr/case_000.nii.gz", "label": "labelsTr/case_000.nii.gz", "fold": 1.5}]}
            ),
            "fold must be an integer",
        ),
        (
            json.dumps(
                {"training": [{"image": "imagesTr/case_000.nii.gz", "label": "labelsTr/case_000.nii.gz", "fold": True}]}
            ),
            "fold must be an integer",
        ),
    ],
)
def test_datalist_errors_name_the_file_and_the_problem(phantoms, tmp_path, content, message):
    root, _ = phantoms
    datalist = tmp_path / "my list.json"
    datalist.write_text(content)
    with pytest.raises(UserError, match=message) as raised:
        read_datalist(datalist, root)
    assert str(datalist) in str(raised.value)


def test_unreadable_datalist_names_the_file(tmp_path):
    with pytest.raises(UserError, match=r"missing\.json: cannot read the datalist"):
        read_datalist(tmp_path / "missing.json", tmp_path)


# Auditing


def test_audit_numbers_match_the_files(phantoms):
    root, _ = phantoms
    cases = find_cases(root)
    audit = audit_cases(cases)
    assert [case.name for case in audit.cases] == ["case_000", "case_001", "case_002"]
    assert audit.label_values == [1, 2, 3]
    for case, result in zip(cases, audit.cases, strict=True):
        image_nifti, label_nifti = nib.load(case.image), nib.load(case.label)
        image, label = np.asanyarray(image_nifti.dataobj), np.asanyarray(label_nifti.dataobj)
        spacing = np.asarray(label_nifti.header.get_zooms()[:3], dtype=float)
        assert result.shape == image.shape == synthetic.MICRO_SPEC.shape
        np.testing.assert_allclose(result.spacing_mm, spacing, rtol=1e-5)
        expected = {v: int(np.count_nonzero(label == v)) for v in range(1, 4) if np.count_nonzero(label == v)}
        assert result.label_voxels == expected
        for value, voxels in expected.items():
            assert result.label_volumes_ml[value] == pytest.approx(voxels * np.prod(spacing) / 1000.0, rel=1e-5)
        assert (result.hu_p1, result.hu_p50, result.hu_p99) == pytest.approx(np.percentile(image, [1, 50, 99]))
        assert result.looks_like_ct and result.warnings == []
    as_json = json.loads(json.dumps(audit.to_json()))
    assert as_json["label_values"] == [1, 2, 3]
    assert as_json["cases"][0]["label_voxels"] == {str(k): v for k, v in audit.cases[0].label_voxels.items()}
    assert as_json["cases"][0]["shape"] == list(synthetic.MICRO_SPEC.shape)


def test_shape_mismatch_gives_both_shapes(tmp_path):
    case = make_pair(tmp_path, "a", label=np.zeros((12, 10, 9), dtype=np.uint8))
    with pytest.raises(UserError, match=r"a\.nii\.gz: shape \(12, 10, 9\) differs from the image shape \(12, 10, 8\)"):
        audit_cases([case])


def test_affine_mismatch_gives_the_difference_and_float_noise_passes(tmp_path):
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    case = make_pair(tmp_path, "shifted", label_affine=shifted)
    with pytest.raises(UserError, match=r"shifted\.nii\.gz: .*affine differs .* by up to 1 mm"):
        audit_cases([case])
    noisy = AFFINE.copy()
    noisy[:3, 3] += 1e-4
    noisy[0, 0] += 1e-6
    assert audit_cases([make_pair(tmp_path, "noisy", label_affine=noisy)]).cases[0].label_voxels == {1: 12, 2: 4}


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_truncated_file_is_an_error_naming_it(tmp_path, ext):
    case = make_pair(tmp_path, "cut", image=np.zeros((40, 40, 40), dtype=np.int16) - 1000, ext=ext)
    data = case.image.read_bytes()
    case.image.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=rf"imagesTr/cut{ext.replace('.', '[.]')}: cannot read the NIfTI file"):
        audit_cases([case])


def test_garbage_file_is_an_error_naming_it(tmp_path):
    case = make_pair(tmp_path, "junk")
    case.label.write_bytes(b"this is not a nifti file" * 20)
    with pytest.raises(UserError, match=r"labelsTr/junk\.nii\.gz: cannot read"):
        audit_cases([case])


def test_fractional_float_label_is_an_error_but_integer_floats_are_fine(tmp_path):
    label = organ_label().astype(np.float32)
    assert audit_cases([make_pair(tmp_path, "whole", label=label)]).cases[0].label_voxels == {1: 12, 2: 4}
    label[5, 5, 4] = 0.5
    with pytest.raises(UserError, match=r"frac\.nii\.gz: the label has non-integer values \(e\.g\. 0\.5\)"):
        audit_cases([make_pair(tmp_path, "frac", label=label)])


@pytest.mark.parametrize("bad", [300, -1, 255])
def test_label_values_outside_0_to_254_are_an_error(tmp_path, bad):
    label = organ_label().astype(np.int16)
    label[0, 0, 0] = bad
    with pytest.raises(UserError, match=r"big\.nii\.gz: label values must be 0\.\.254"):
        audit_cases([make_pair(tmp_path, "big", label=label)])


def test_non_ct_image_is_a_warning_not_an_error(tmp_path):
    image = np.random.default_rng(1).uniform(0.0, 1.0, (12, 10, 8)).astype(np.float32)
    result = audit_cases([make_pair(tmp_path, "mr", image=image)]).cases[0]
    assert not result.looks_like_ct
    assert len(result.warnings) == 1 and "does not look like CT" in result.warnings[0]
    assert "mr.nii.gz" in result.warnings[0] and result.label_voxels == {1: 12, 2: 4}


def test_scaling_in_the_header_is_applied_before_judging_hu(tmp_path):
    raw = (ct_image() + 1024).astype(np.uint16)  # stored 0..~1070 with intercept -1024, as many scanners write
    path = tmp_path / "imagesTr" / "scaled.nii.gz"
    path.parent.mkdir(parents=True)
    nifti = nib.Nifti1Image(raw, AFFINE)
    nifti.header.set_slope_inter(1.0, -1024.0)
    nib.save(nifti, path)
    label_path = save(tmp_path / "labelsTr" / "scaled.nii.gz", organ_label())
    result = audit_cases([Case("scaled", path, label_path)]).cases[0]
    assert result.looks_like_ct and result.hu_p1 < -900


def test_4d_image_needs_a_single_volume(tmp_path):
    single = make_pair(tmp_path, "one", image=ct_image()[..., None])
    assert audit_cases([single]).cases[0].shape == (12, 10, 8)
    multi = make_pair(tmp_path, "two", image=np.stack([ct_image(), ct_image()], axis=-1))
    with pytest.raises(UserError, match=r"two\.nii\.gz: shape \(12, 10, 8, 2\) is not a single 3D volume"):
        audit_cases([multi])


def test_empty_label_is_a_warning(tmp_path):
    result = audit_cases([make_pair(tmp_path, "bg", label=np.zeros((12, 10, 8), np.uint8))]).cases[0]
    assert result.label_voxels == {} and any("label is empty" in w for w in result.warnings)


# Folds


def cases_named(count: int) -> list[Case]:
    return [
        Case(f"c{i:02d}", Path(f"/d/imagesTr/c{i:02d}.nii.gz"), Path(f"/d/labelsTr/c{i:02d}.nii.gz"))
        for i in range(count)
    ]


def test_fold_assignment_is_deterministic_and_seed_dependent():
    cases = cases_named(10)
    first = assign_folds(cases, seed=3)
    assert first == assign_folds(list(reversed(cases)), seed=3)
    assert [case.name for case in first] == [case.name for case in cases]
    folds_by_seed = {tuple(case.fold for case in assign_folds(cases, seed=seed)) for seed in range(6)}
    assert len(folds_by_seed) > 1


@pytest.mark.parametrize(("count", "validation"), [(2, 1), (3, 1), (7, 1), (8, 2), (10, 2), (12, 2), (23, 5)])
def test_fold_zero_gets_about_a_fifth_and_training_keeps_the_rest(count, validation):
    assigned = assign_folds(cases_named(count), seed=0)
    folds = [case.fold for case in assigned]
    assert folds.count(0) == validation
    assert all(fold in range(5) for fold in folds) and len(assigned) == count
    assert sorted(case.name for case in assigned) == [case.name for case in cases_named(count)]
    assert [case.fold for case in assign_folds(cases_named(count), seed=0, num_folds=2)].count(0) == max(
        1, min(round(count / 2), count - 1)
    )


def test_too_few_cases_for_a_split():
    with pytest.raises(UserError, match="need at least two"):
        assign_folds(cases_named(1))
    with pytest.raises(UserError, match="need at least two"):
        assign_folds([])


def test_given_folds_are_kept_and_fold_zero_is_required(phantoms):
    root, items = phantoms
    datalist = root / "folds.json"
    datalist.write_text(json.dumps({"training": [dict(items[0], fold=3), dict(items[1], fold=0), items[2]]}))
    kept = assign_folds(read_datalist(datalist, root), seed=99)
    assert [case.fold for case in kept] == [3, 0, None]
    with pytest.raises(UserError, match="no validation case: no item has fold 0"):
        assign_folds([Case("a", Path("/a"), Path("/b"), 1), Case("b", Path("/c"), Path("/d"))])
    with pytest.raises(UserError, match="no training case"):
        assign_folds([Case("a", Path("/a"), Path("/b"), 0), Case("b", Path("/c"), Path("/d"), 0)])


def test_write_datalist_round_trips_with_absolute_paths(phantoms, tmp_path):
    root, _ = phantoms
    cases = assign_folds(find_cases(root), seed=1)
    cases = [*cases[1:], Case(cases[0].name, cases[0].image, cases[0].label)]  # unsorted, one without fold
    path = tmp_path / "out" / "datalist.json"
    path.parent.mkdir()
    write_datalist(cases, path)
    content = json.loads(path.read_text())
    assert [Path(item["image"]).name for item in content["training"]] == [f"case_00{i}.nii.gz" for i in range(3)]
    assert all(Path(item["image"]).is_absolute() and Path(item["label"]).is_absolute() for item in content["training"])
    assert "fold" not in content["training"][0]
    assert read_datalist(path, tmp_path / "unused") == sorted(cases, key=lambda case: case.name)
    assert sorted(p.name for p in path.parent.iterdir()) == ["datalist.json"]


def test_odd_characters_in_file_names(tmp_path):
    prefix = "Patient 'A' \"$HOME\" ünï 肝"
    dataset = tmp_path / "data set $x"
    synthetic.write_dataset(dataset, 2, seed=2, spec=synthetic.MICRO_SPEC, prefix=prefix)
    cases = find_cases(dataset)
    assert [case.name for case in cases] == [f"{prefix}_000", f"{prefix}_001"]
    audit = audit_cases(cases)
    assert [case.name for case in audit.cases] == [case.name for case in cases] and audit.label_values == [1, 2, 3]
    path = dataset / "datalist ü.json"
    write_datalist(assign_folds(cases), path)
    assert [(case.name, case.image, case.fold is not None) for case in read_datalist(path, None)] == [
        (case.name, case.image, True) for case in cases
    ]
