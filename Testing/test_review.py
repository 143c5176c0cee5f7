"""``vista-finetune review``: metrics tables, pictures and one HTML page, for a run or any two prediction sets."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.review.compare import on_grid, review_predictions


def write_like(path, array, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), path)


@pytest.fixture()
def prediction_sets(tmp_path):
    """Ground truth for two micro phantoms, a perfect prediction set and an eroded one."""
    synthetic.write_dataset(tmp_path / "data", 2, seed=4, spec=synthetic.MICRO_SPEC)
    for name in ("case_000", "case_001"):
        label = nib.load(tmp_path / "data" / "labelsTr" / f"{name}.nii.gz")
        truth = np.asarray(label.dataobj)
        write_like(tmp_path / "perfect" / f"{name}.nii.gz", truth, label.affine)
        eroded = np.where(ndimage.binary_erosion(truth > 0), truth, 0)
        write_like(tmp_path / "eroded" / name / f"{name}_trans.nii.gz", eroded, label.affine)  # bundle layout
    return tmp_path


@pytest.mark.unit
def test_review_of_two_prediction_sets(prediction_sets, tmp_path):
    root = prediction_sets
    result = review_predictions(
        root / "perfect", root / "eroded", root / "data" / "labelsTr", tmp_path / "review",
        images=root / "data" / "imagesTr", names=("perfect", "eroded"),
    )  # fmt: skip
    with open(result["metrics_csv"]) as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 2 * 3 * 2  # cases x classes x models
    assert all(float(r["dice"]) == 1.0 and float(r["hd95_mm"]) == 0.0 for r in rows if r["model"] == "perfect")
    assert all(0.0 < float(r["dice"]) < 1.0 for r in rows if r["model"] == "eroded")
    summary = json.loads((tmp_path / "review" / "metrics.json").read_text())["summary"]
    paired = [s for s in summary if "paired" in s["model"]]
    assert len(paired) == 3 and all(s["dice_mean"] < 0 and s["cases"] == 2 for s in paired)
    page = (tmp_path / "review" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(result["pictures"]) == 6  # 2 cases x 3 classes
    assert "http" not in page.replace("http-equiv", "")


@pytest.mark.unit
def test_predictions_on_another_grid_are_resampled_onto_the_truth(prediction_sets, tmp_path):
    label = nib.load(prediction_sets / "data" / "labelsTr" / "case_000.nii.gz")
    truth = np.asarray(label.dataobj)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = truth.shape[0] - 1  # voxel i -> n-1-i
    flipped_affine = label.affine @ flip
    assert np.array_equal(on_grid(truth[::-1], flipped_affine, truth.shape, label.affine), truth)


@pytest.mark.unit
def test_review_refuses_missing_inputs(prediction_sets, tmp_path):
    root = prediction_sets
    with pytest.raises(UserError, match="not found"):
        review_predictions(root / "nowhere", root / "eroded", root / "data" / "labelsTr", tmp_path / "r")
    (root / "eroded" / "case_001" / "case_001_trans.nii.gz").unlink()
    with pytest.raises(UserError, match="case_001"):
        review_predictions(root / "perfect", root / "eroded", root / "data" / "labelsTr", tmp_path / "r")


@pytest.mark.e2e
def test_finetune_reviews_its_run_and_agrees_with_the_formal_dice(smoke_run_dir):
    result = json.loads((smoke_run_dir / "output.json").read_text())
    review = result["review"]
    assert (smoke_run_dir / "review" / "report.html").is_file() and review["html"].endswith("report.html")
    with open(review["metrics_csv"]) as stream:
        rows = list(csv.DictReader(stream))
    formal = result["output"]["formal_dice"]
    assert len(rows) == result["input"]["n_val_cases"] * 3 * 2
    for row in rows:  # two independent computations of the same Dice must agree
        expected = formal[row["model"]]["per_case"][row["case"]][row["class_id"]]
        if expected is None:
            assert row["dice"] == ""
        else:
            assert float(row["dice"]) == pytest.approx(expected, abs=1e-9)
    assert any(p.endswith("training_curves.png") for p in review["pictures"])


@pytest.mark.unit
def test_review_command_for_two_prediction_sets_and_its_errors(prediction_sets, tmp_path, capsys):
    from VistaFinetuneLib.cli import main

    root = prediction_sets
    args = ["review", "--pred-a", str(root / "perfect"), "--pred-b", str(root / "eroded"),
            "--ground-truth", str(root / "data" / "labelsTr"), "--names", "perfect", "eroded"]  # fmt: skip
    assert main([*args, "--output-dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "summary.csv").is_file()
    assert main([*args, "--output-dir", str(tmp_path / "out")]) == 2  # never overwrite a previous review
    assert main(["review", str(tmp_path / "not-a-run")]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "no output.json" in err and "Traceback" not in err
