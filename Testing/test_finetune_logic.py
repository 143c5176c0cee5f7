"""The finetune engine's decisions, on hand-made inputs: mapping, plan, log reading, formal Dice, verdict."""

import hashlib
import json
import os

import nibabel as nib
import numpy as np
import pytest

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.bundle.log import TrainingTrace
from VistaFinetuneLib.bundle.tiny_bundle import TEMPLATE_DIR
from VistaFinetuneLib.data.dataset import Case
from VistaFinetuneLib.data.mapping import check_mapping, mapping_for_anatomy, parse_mapping
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.finetune import staging
from VistaFinetuneLib.finetune.checkpoints import compare_checkpoints
from VistaFinetuneLib.finetune.formal_dice import formal_dice
from VistaFinetuneLib.finetune.plan import make_plan, patch_for_memory
from VistaFinetuneLib.progress import ProgressBar
from VistaFinetuneLib.schema import schema_errors

pytestmark = pytest.mark.unit

CATALOG = LabelCatalog.from_bundle(TEMPLATE_DIR)


# --- label mapping -----------------------------------------------------------------------------------------------


def test_parse_mapping_accepts_pairs_and_rejects_everything_else():
    assert parse_mapping("[[1, 23], [2, 24]]") == [[1, 23], [2, 24]]
    for bad in ("[1, 23]", "[[1, 2, 3]]", "[]", "nope", '[["1", 23]]', "[[true, 2]]"):
        with pytest.raises(UserError, match="--label-mapping"):
            parse_mapping(bad)


@pytest.mark.parametrize(
    ("pairs", "values", "message"),
    [
        ([[1, 255]], [1], "between 1 and 254"),
        ([[1, 0]], [1], "between 1 and 254"),
        ([[1, 3], [1, 4]], [1], "more than once"),
        ([[1, 3], [2, 3]], [1, 2], "more than one label value"),
        ([[5, 3]], [1], "occur in none of the training labels"),
        ([[1, 3]], [1, 2], r"also hold value\(s\) \[2\]"),
        ([[0, 3]], [1], "background"),
    ],
)
def test_check_mapping_refuses_what_the_bundle_would_mistrain_on(pairs, values, message):
    with pytest.raises(UserError, match=message):
        check_mapping(pairs, values, CATALOG)


def test_check_mapping_warns_about_new_classes():
    assert check_mapping([[1, 14], [2, 200]], [1, 2], CATALOG) == [
        "label value 2 maps to id 200, which the bundle's label table does not name: a new class, learned "
        "from scratch; the stock inference.json needs point prompts for it"
    ]


def test_target_anatomy_needs_exactly_one_label_value():
    assert mapping_for_anatomy("Left Kidney", CATALOG, [1])[0] == [[1, 14]]
    with pytest.raises(UserError, match="2 foreground values"):
        mapping_for_anatomy("lung tumor", CATALOG, [1, 2])


# --- plan --------------------------------------------------------------------------------------------------------

GPU = {"cuda_available": True, "device": "cuda:0", "gpu_free_mb": 20_000, "gpu_count": 1, "host_ram_mb": 64_000}


def test_patch_ladder_follows_free_gpu_memory():
    assert patch_for_memory(7_000) == [64, 64, 64]
    assert patch_for_memory(12_000) == [96, 96, 96]
    assert patch_for_memory(20_000) == [128, 128, 128]
    assert patch_for_memory(26_000) == [160, 160, 160]
    assert patch_for_memory(80_000) == [192, 192, 128]


def test_plan_sizes_by_machine_and_caller_flags_win(monkeypatch):
    monkeypatch.delenv("NPROC_PER_NODE", raising=False)
    plan = make_plan(GPU, n_train_cases=400)
    assert plan.patch_size == [128, 128, 128] and plan.train_dataset_cache_rate == 0.8 and plan.epochs == 5
    plan = make_plan(GPU, 400, patch_size=[64, 64, 64], cache_rate=0.1, epochs=9, learning_rate=1e-4)
    assert (plan.patch_size, plan.train_dataset_cache_rate, plan.epochs, plan.learning_rate) == (
        [64, 64, 64], 0.1, 9, 1e-4,
    )  # fmt: skip
    assert all("given by the caller" in line for line in plan.rationale[:4])
    cpu = make_plan({"cuda_available": False, "host_ram_mb": 8000}, 3)
    assert cpu.patch_size is None and cpu.train_dataset_cache_rate == 1.0


def test_multi_gpu_when_asked_for_and_not_in_presets(monkeypatch):
    monkeypatch.setenv("NPROC_PER_NODE", "4")
    assert make_plan(GPU, 10).multi_gpu and make_plan(GPU, 10).nproc_per_node == 4
    single = make_plan(GPU, 10, allow_multi_gpu=False)
    assert not single.multi_gpu and single.nproc_per_node == 1


# --- overrides ---------------------------------------------------------------------------------------------------


def test_device_flag_is_validated_and_cpu_turns_amp_off(tmp_path):
    plan = make_plan({"cuda_available": False, "host_ram_mb": 8000}, 3)
    kwargs = dict(
        bundle_dir=tmp_path / "b", run_dir=tmp_path / "r", datalist=tmp_path / "r" / "d.json",
        label_mappings=[[1, 3]], plan=plan, auto_seg=True,
    )  # fmt: skip
    overrides = staging.common_overrides(device="cpu", **kwargs)
    assert overrides["device"] == "$torch.device('cpu')" and overrides["amp"] is False
    assert overrides["drop_label_prob"] == 0.0 and overrides["drop_point_prob"] == 1.0
    assert overrides["ckpt_dir"] == str(tmp_path / "r" / "checkpoints")
    with pytest.raises(UserError, match="--device"):
        staging.common_overrides(device="cuda:0'); import os; ('", **kwargs)


# --- reading the bundle's output -----------------------------------------------------------------------------------

LOG = """\
2026-11-23 10:18:43,979 - INFO - Epoch[0] Metrics -- val_mean_dice: 0.4000
2026-11-23 10:18:44,001 - INFO - Epoch: 1/2, Iter: 1/2 -- train_loss: 0.9000
2026-11-23 10:18:45,001 - INFO - Epoch: 1/2, Iter: 2/2 -- train_loss: 0.8000
2026-11-23 10:18:50,000 - INFO - Epoch[1] Metrics -- val_accuracy: 0.9 val_mean_dice: 0.5500
2026-11-23 10:18:50,001 - INFO - Key metric: val_mean_dice best value: 0.55 at epoch: 1
2026-11-23 10:18:51,001 - INFO - Epoch: 2/2, Iter: 1/2 -- train_loss: nan
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
"""


def test_training_trace_reads_the_bundle_log():
    trace = TrainingTrace()
    for line in LOG.splitlines():
        trace.feed(line)
    assert trace.val_dice_per_epoch == [0.4, 0.55] and trace.start_dice == 0.4
    assert (trace.best_value, trace.best_epoch) == (0.55, 1)
    assert trace.losses[:2] == [0.9, 0.8] and not trace.losses_finite
    assert (trace.epoch, trace.max_epochs, trace.iteration, trace.iterations_per_epoch) == (2, 2, 1, 2)
    assert trace.oom


def test_progress_bar_renders_epoch_loss_dice_and_eta():
    state = {"phase": "train", "epoch": 2, "max_epochs": 4, "iteration": 1, "iterations_per_epoch": 2,
             "loss": 0.5, "val_dice_per_epoch": [0.4, 0.61], "eta_seconds": 75}  # fmt: skip
    line = ProgressBar().render(state)
    assert line.startswith("train [#########") and "epoch 2/4" in line and "iter 1/2" in line
    assert "loss 0.5000" in line and "Dice 0.6100" in line and "ETA 01:15" in line


# --- formal Dice ---------------------------------------------------------------------------------------------------


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


def test_formal_dice_counts_every_mapped_class(tmp_path):
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[:5] = 1  # user value 1 -> VISTA3D 3: 500 voxels
    truth[7:] = 2  # user value 2 -> VISTA3D 14: 300 voxels
    prediction = np.zeros_like(truth, dtype=np.float32)
    prediction[:4] = 3  # 400 of the 500 voxels
    prediction[7:] = 14
    prediction[9, 9, 9] = 255  # "not processed": background
    write(tmp_path / "labels" / "a.nii.gz", truth)
    write(tmp_path / "eval" / "a" / "a_trans.nii.gz", prediction)
    (tmp_path / "eval" / "metrics.csv").write_text("val_mean_dice,0.8888\n")
    case = Case("a", tmp_path / "a.nii.gz", tmp_path / "labels" / "a.nii.gz", 0)
    result = formal_dice(tmp_path / "eval", [case], [[1, 3], [2, 14]])
    assert result.per_class[3] == pytest.approx(2 * 400 / 900)
    assert result.per_class[14] == pytest.approx(2 * 299 / 599)
    assert result.mean == pytest.approx((2 * 400 / 900 + 2 * 299 / 599) / 2)
    assert result.bundle_val_mean_dice == 0.8888
    assert result.confusion["3"] == {"3": 0.8, "14": 0.0, "0": 0.2}  # 100 liver voxels were left as background
    assert json.loads(json.dumps(result.to_json()))["per_class"]["14"] == result.per_class[14]


def test_formal_dice_rules_for_empty_masks(tmp_path):
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[:2] = 1
    prediction = np.zeros_like(truth, dtype=np.float32)
    prediction[:2] = 3
    prediction[5, 5, 5] = 14  # predicted, absent from the truth: Dice 0
    write(tmp_path / "l" / "a.nii.gz", truth)
    write(tmp_path / "eval" / "a" / "a_trans.nii.gz", prediction)
    write(tmp_path / "l" / "b.nii.gz", truth)
    write(tmp_path / "eval" / "b" / "b_trans.nii.gz", np.where(prediction == 14, 0, prediction))
    cases = [Case(n, tmp_path / f"{n}.nii.gz", tmp_path / "l" / f"{n}.nii.gz", 0) for n in "ab"]
    result = formal_dice(tmp_path / "eval", cases, [[1, 3], [2, 14]])
    assert result.per_case["a"] == {3: 1.0, 14: 0.0}
    assert result.per_case["b"] == {3: 1.0, 14: None}  # both empty: not scored
    assert result.per_class == {3: 1.0, 14: 0.0}


# --- checkpoints and schema ----------------------------------------------------------------------------------------


def test_compare_checkpoints_tensor_by_tensor(tmp_path):
    import torch

    weights = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    torch.save(weights, tmp_path / "pre.pt")
    torch.save({"model": {"module." + k: v.clone() for k, v in weights.items()}}, tmp_path / "same.pt")
    torch.save({"a": torch.arange(4.0) + 0.5, "b": torch.ones(2, 2)}, tmp_path / "changed.pt")
    assert compare_checkpoints(tmp_path / "pre.pt", tmp_path / "same.pt").identical
    changed = compare_checkpoints(tmp_path / "pre.pt", tmp_path / "changed.pt")
    assert not changed.identical and changed.tensors_changed == 1 and changed.max_abs_difference == 0.5


def test_schema_rejects_an_output_missing_its_verdict():
    errors = schema_errors({"skill": "nv_segment_ct_finetune", "output": {}})
    assert any("recommended_ckpt" in e for e in errors) and any("'plan' is a required property" in e for e in errors)


# --- newer MONAI ---------------------------------------------------------------------------------------------------


def test_compatibility_override_only_from_monai_1_5_and_it_casts_bool_targets():
    import torch
    from monai.losses import DiceCELoss

    from VistaFinetuneLib.bundle.compat import FloatTargetLoss, compatibility_overrides

    assert compatibility_overrides("1.4.0") == ({}, [])
    overrides, names = compatibility_overrides("1.6.1")
    assert names == ["float-target-loss"]
    assert overrides["train#trainer#loss_function"] == "$VistaFinetuneLib.bundle.compat.FloatTargetLoss(@loss)"
    seen = []
    wrapped = FloatTargetLoss(lambda prediction, target: seen.append(target.dtype) or torch.zeros(()))
    wrapped(torch.zeros(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2, dtype=torch.bool))
    assert seen == [torch.float32]
    loss = DiceCELoss(sigmoid=True, squared_pred=True)
    prediction, target = torch.randn(1, 1, 4, 4, 4), torch.rand(1, 1, 4, 4, 4) > 0.5
    assert torch.isclose(FloatTargetLoss(loss)(prediction, target), loss(prediction, target.float()))


# --- environment ---------------------------------------------------------------------------------------------------

FAKE_NVIDIA_SMI = """#!/bin/sh
# Stand-in for nvidia-smi: no GPU exists on the test machines.
echo "0, NVIDIA H100 80GB HBM3, 81559, 80000"
echo "1, NVIDIA H100 80GB HBM3, 81559, 12000"
"""


def test_environment_reads_gpus_from_nvidia_smi_without_importing_torch(tmp_path, monkeypatch):
    import subprocess
    import sys

    import torch

    from VistaFinetuneLib import environment

    assert environment.torch_cuda_build() == torch.version.cuda  # read from torch/version.py
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [g["free_mb"] for g in environment.visible_gpus()] == [80000, 12000]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [(g["index"], g["free_mb"]) for g in environment.visible_gpus()] == [(1, 12000)]
    code = "import sys; from VistaFinetuneLib import environment; environment.probe(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_check_bundle_reads_metadata_and_names_a_broken_file(tmp_path):
    from VistaFinetuneLib.finetune.pipeline import check_bundle

    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    for name in ("train.json", "train_continual.json", "evaluate.json"):
        (tmp_path / "configs" / name).write_text("{}")
    (tmp_path / "models" / "model.pt").write_bytes(b"weights")
    (tmp_path / "configs" / "metadata.json").write_text('{"name": "VISTA3D", "version": "0.5.4"}')
    bundle = check_bundle(tmp_path, formal=True)
    assert (bundle["name"], bundle["version"]) == ("VISTA3D", "0.5.4")
    assert bundle["weights_sha256"] == hashlib.sha256(b"weights").hexdigest()
    (tmp_path / "configs" / "metadata.json").write_text("{not json")
    with pytest.raises(UserError, match=r"metadata\.json: cannot read the bundle metadata"):
        check_bundle(tmp_path, formal=True)


# --- the user's class names ----------------------------------------------------------------------------------------


def test_class_names_are_recorded_in_run_json_for_prediction_and_must_name_mapped_ids(tmp_path):
    from VistaFinetuneLib.cli import main
    from VistaFinetuneLib.data import synthetic
    from VistaFinetuneLib.inference.models import run_model

    data = tmp_path / "data"
    synthetic.write_dataset(data, 4, seed=5, spec=synthetic.MICRO_SPEC)
    base = ["finetune", str(data), "--smoke", "--prepare-only", "--label-mapping", "[[1, 1], [2, 3], [3, 133]]"]
    assert main([*base, "--output-dir", str(tmp_path / "run"), "--class-names", '{"133": "Tumor 1"}']) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["class_names"] == {"133": "Tumor 1"}
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "model_finetune.pt").write_bytes(b"")  # the reader only needs its path
    assert run_model(tmp_path / "run").user_names == {133: "Tumor 1"}
    assert main([*base, "--output-dir", str(tmp_path / "bad"), "--class-names", '{"14": "Left Kidney"}']) == 2
    assert not (tmp_path / "bad").exists()
