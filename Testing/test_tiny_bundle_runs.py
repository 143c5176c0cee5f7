"""The tiny bundle runs through the real ``python -m monai.bundle run``: it learns, finetunes and evaluates."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from conftest import tree_digest

from VistaFinetuneLib.bundle.runner import BundleRun, run_bundle
from VistaFinetuneLib.bundle.tiny_bundle import pretraining_record
from VistaFinetuneLib.data import synthetic

pytestmark = pytest.mark.e2e


def run_stack(bundle, config_names, overrides, work):
    """Run the bundle with its configs ``config_names`` plus an override file; return (exit code, log text)."""
    work.mkdir(parents=True, exist_ok=True)
    override_file = work / "overrides.json"
    override_file.write_text(json.dumps({"bundle_root": str(bundle), **overrides}))
    run = BundleRun(
        bundle_dir=bundle,
        config_files=[bundle / "configs" / name for name in config_names] + [override_file],
        cwd=work,
        log_path=work / "run.log",
        args_path=work / "args.json",
    )
    code = run_bundle(run)
    return code, run.log_path.read_text()


def test_pretraining_learned_the_liver(tiny_bundle_dir):
    record = pretraining_record(tiny_bundle_dir)
    assert record["class"] == {"name": "liver", "id": 1}
    assert record["best_val_mean_dice"] > 0.7
    assert len(record["val_mean_dice_per_epoch"]) == record["recipe"]["epochs"]


def test_finetune_writes_checkpoints_to_the_chosen_ckpt_dir_and_leaves_the_bundle_alone(
    tiny_bundle_dir, micro_dataset, tmp_path
):
    data_dir, datalist = micro_dataset
    before = tree_digest(tiny_bundle_dir)
    overrides = {
        "ckpt_dir": str(tmp_path / "checkpoints"),
        "output_dir": str(tmp_path / "eval"),
        "data_list_file_path": str(datalist),
        "dataset_dir": str(data_dir),
        "epochs": 2,
        "learning_rate": 0.001,
        "label_mappings": {"default": [[1, 1], [3, 14]]},
    }
    code, log = run_stack(tiny_bundle_dir, ["train.json", "train_continual.json"], overrides, tmp_path / "run")
    assert code == 0, log[-3000:]
    assert (tmp_path / "checkpoints" / "model_finetune.pt").is_file()
    assert (tmp_path / "run" / "training.log").is_file()
    assert "Epoch[0] Metrics -- val_mean_dice" in log  # val_at_start: the pretrained model, logged as epoch 0
    assert "Epoch[2] Metrics -- val_mean_dice" in log
    assert f"{tiny_bundle_dir}/models/model.pt" in log  # the finetune started from the pretrained weights
    assert tree_digest(tiny_bundle_dir) == before


def test_formal_evaluation_of_the_pretrained_liver_at_original_spacing(tiny_bundle_dir, tmp_path):
    data_dir = tmp_path / "liver_only"
    items = synthetic.write_dataset(
        data_dir, 2, seed=123, spec=synthetic.PhantomSpec(label_values={"liver": 1}), prefix="held_out"
    )
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{**item, "fold": 0} for item in items]}))
    overrides = {
        "ckpt_path": str(tiny_bundle_dir / "models" / "model.pt"),
        "output_dir": str(tmp_path / "eval"),
        "data_list_file_path": str(datalist),
        "dataset_dir": str(data_dir),
        "label_mappings": {"default": [[1, 1]]},
    }
    code, log = run_stack(
        tiny_bundle_dir, ["train.json", "train_continual.json", "evaluate.json"], overrides, tmp_path / "run"
    )
    assert code == 0, log[-3000:]
    with open(tmp_path / "eval" / "metrics.csv") as handle:
        metrics = {row[0]: float(row[1]) for row in csv.reader(handle, delimiter=",")}
    assert metrics["val_mean_dice"] > 0.7
    for item in items:
        stem = item["image"].split("/")[-1].removesuffix(".nii.gz")
        prediction = nib.load(tmp_path / "eval" / stem / f"{stem}_trans.nii.gz")
        truth = nib.load(data_dir / item["label"])
        assert prediction.shape == truth.shape
        assert np.allclose(prediction.affine, truth.affine, atol=1e-4)
        pred, gt = np.asarray(prediction.dataobj) == 1, np.asarray(truth.dataobj) == 1
        assert 2 * (pred & gt).sum() / (pred.sum() + gt.sum()) > 0.6


def test_inference_with_a_class_prompt_segments_the_liver(tiny_bundle_dir, tmp_path):
    data_dir = tmp_path / "case"
    [item] = synthetic.write_dataset(data_dir, 1, seed=321, spec=synthetic.PhantomSpec(label_values={"liver": 1}))
    overrides = {
        "input_dict": {"image": str(data_dir / item["image"]), "label_prompt": [1]},
        "output_dir": str(tmp_path / "out"),
    }
    code, log = run_stack(tiny_bundle_dir, ["inference.json"], overrides, tmp_path / "run")
    assert code == 0, log[-3000:]
    prediction = nib.load(tmp_path / "out" / "case_000" / "case_000_trans.nii.gz")
    truth = nib.load(data_dir / item["label"])
    assert np.allclose(prediction.affine, truth.affine, atol=1e-4)
    pred, gt = np.asarray(prediction.dataobj) == 1, np.asarray(truth.dataobj) == 1
    assert 2 * (pred & gt).sum() / (pred.sum() + gt.sum()) > 0.6
