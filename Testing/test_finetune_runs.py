"""``vista-finetune finetune`` end to end on the tiny bundle: phases, verdict, traps, resume and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
from conftest import INJECTION, SMOKE_MAPPING, tree_digest

from VistaFinetuneLib.cli import main
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.jobs.control import poll_job
from VistaFinetuneLib.schema import schema_errors

pytestmark = pytest.mark.e2e


def load_output(run_dir):
    return json.loads((run_dir / "output.json").read_text())


# --- one full run: formal evaluation, training, formal evaluation -------------------------------------------------


def test_full_run_writes_a_valid_output_with_every_phase(smoke_run, smoke_run_dir):
    result = load_output(smoke_run_dir)
    assert schema_errors(result) == []
    assert result["status"] == "completed" and result["runtime"]["return_code"] == 0
    assert set(result["runtime"]["phases"]) == {"eval_pretrained", "train", "eval_finetuned"}
    for phase in result["runtime"]["phases"].values():
        assert phase["return_code"] == 0 and os.path.isfile(phase["log"])
    out = result["output"]
    assert len(out["val_dice_per_epoch"]) == 3  # epoch 0 (pretrained) + 2 epochs
    assert out["training_start_val_dice"] == out["val_dice_per_epoch"][0]
    best_epoch = out["training_best_epoch_index"]
    assert out["val_dice_per_epoch"][best_epoch] == pytest.approx(out["training_best_val_dice"], abs=1e-4)
    for which in ("pretrained", "finetuned"):
        formal = out["formal_dice"][which]
        assert set(formal["per_class"]) == {"1", "3", "14"}  # every mapped class counts
        scored = [v for v in formal["per_class"].values() if v is not None]
        assert formal["mean"] == pytest.approx(sum(scored) / len(scored))
    assert out["formal_pretrained_val_dice"] == out["formal_dice"]["pretrained"]["mean"]
    assert out["improved"] == (out["recommended"] == "finetuned")
    comparisons = out["checkpoint_comparisons_to_pretrained"]
    assert comparisons["model_final.pt"]["identical"] is False  # training at lr 2e-3 changed the weights
    assert out["finetuned_ckpt_matches_pretrained_weights"] == comparisons["model_finetune.pt"]["identical"]
    if out["finetuned_ckpt_matches_pretrained_weights"]:
        assert out["recommended"] == "pretrained"


def test_run_dir_layout_and_status(smoke_run_dir):
    for name in ("run.json", "status.json", "dataset/datalist.json", "configs/overrides.json",
                 "checkpoints/model_finetune.pt", "checkpoints/model_final.pt", "logs/train.log"):  # fmt: skip
        assert (smoke_run_dir / name).is_file(), name
    status = json.loads((smoke_run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["epoch"] == status["max_epochs"] == 2
    assert len(status["val_dice_per_epoch"]) == 3
    stacks = json.loads((smoke_run_dir / "run.json").read_text())["config_stacks"]
    assert [p.rsplit("/", 1)[-1] for p in stacks["train"]] == [
        "train.json", "train_continual.json", "overrides.json", "train_overrides.json",
    ]  # fmt: skip
    assert [p.rsplit("/", 1)[-1] for p in stacks["eval_finetuned"]][:3] == [
        "train.json", "train_continual.json", "evaluate.json",
    ]  # fmt: skip
    datalist = json.loads((smoke_run_dir / "dataset" / "datalist.json").read_text())["training"]
    validation = [item for item in datalist if item["fold"] == 0]
    for item in validation:
        name = os.path.basename(item["image"]).removesuffix(".nii.gz")
        for phase in ("eval_pretrained", "eval_finetuned"):
            assert (smoke_run_dir / phase / name / f"{name}_trans.nii.gz").is_file()


def test_nothing_outside_the_run_dir_changes_and_nothing_is_evaluated(smoke_run, smoke_run_dir):
    assert INJECTION in str(smoke_run_dir)
    assert smoke_run.bundle_after == smoke_run.bundle_before  # the bundle folder is byte-for-byte unchanged
    assert smoke_run.dataset_after == smoke_run.dataset_before  # so is the user's dataset
    assert not list(smoke_run_dir.parent.rglob("PWNED")) and not os.path.exists("PWNED")
    overrides = json.loads((smoke_run_dir / "configs" / "overrides.json").read_text())
    assert overrides["ckpt_dir"] == str(smoke_run_dir / "checkpoints")


# --- the epoch-0 trap ----------------------------------------------------------------------------------------------


def test_a_finetune_that_cannot_beat_the_start_recommends_the_pretrained_model(tiny_bundle_dir, tmp_path):
    run_dir = tmp_path / "trap"
    code = main(
        ["finetune", "--smoke", "--skip-formal-eval", "--learning-rate", "0", "--bundle-dir", str(tiny_bundle_dir),
         "--output-dir", str(run_dir)]
    )  # fmt: skip
    out = load_output(run_dir)["output"]
    assert code == 0
    assert out["finetuned_ckpt_matches_pretrained_weights"] is True
    assert out["recommended"] == "pretrained" and out["improved"] is False
    assert out["recommended_ckpt"] == str(tiny_bundle_dir / "models" / "model.pt")
    assert out["formal_eval_enabled"] is False and out["formal_pretrained_val_dice"] is None
    assert "epoch-0 trap" in out["decision_rationale"][0]
    assert out["training_best_epoch_index"] == 0  # the bundle's own record: the best epoch is the pretrained one


# --- resume --------------------------------------------------------------------------------------------------------


def test_resume_continues_a_killed_run_without_redoing_finished_phases(tiny_bundle_dir, tmp_path):
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "VistaFinetuneLib", "finetune", "--smoke", "--formal-eval",
               "--bundle-dir", str(tiny_bundle_dir), "--output-dir", str(run_dir)]  # fmt: skip
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status_file = run_dir / "status.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if status_file.is_file() and json.loads(status_file.read_text()).get("phase") == "train":
            break
        assert process.poll() is None, "the run ended before training started"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "output.json").exists()

    assert main(["finetune", "--resume", "--output-dir", str(run_dir)]) == 0
    result = load_output(run_dir)
    phases = result["runtime"]["phases"]
    assert phases["eval_pretrained"]["skipped"] is True
    assert phases["train"]["skipped"] is False and phases["eval_finetuned"]["skipped"] is False
    assert result["status"] == "completed" and result["output"]["formal_finetuned_val_dice"] is not None
    assert len(result["output"]["val_dice_per_epoch"]) == 3


# --- bad input -----------------------------------------------------------------------------------------------------


@pytest.fixture()
def user_dataset(tmp_path):
    """A valid micro dataset the user owns (labels 1, 2, 3)."""
    synthetic.write_dataset(tmp_path / "data", 3, seed=11, spec=synthetic.MICRO_SPEC)
    return tmp_path / "data"


def run_bad(args, capsys, tiny_bundle_dir, run_dir):
    code = main(["finetune", *args, "--bundle-dir", str(tiny_bundle_dir), "--output-dir", str(run_dir)])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err and captured.err.startswith("error: ")
    assert not run_dir.exists()  # a refused run leaves no folder behind
    return captured.err


def corrupt_case(data, case="case_001"):
    path = data / "imagesTr" / f"{case}.nii.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def shift_label_affine(data, case="case_001"):
    path = data / "labelsTr" / f"{case}.nii.gz"
    label = nib.load(path)
    affine = label.affine.copy()
    affine[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), affine), path)
    return path


def crop_label(data, case="case_001"):
    path = data / "labelsTr" / f"{case}.nii.gz"
    label = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:-2], label.affine), path)
    return path


def orphan_image(data):
    (data / "labelsTr" / "case_002.nii.gz").unlink()
    return data / "imagesTr" / "case_002.nii.gz"


def datalist_without_fold_0(data):
    items = [
        {"image": f"imagesTr/case_00{i}.nii.gz", "label": f"labelsTr/case_00{i}.nii.gz", "fold": 1} for i in range(3)
    ]
    path = data / "folds.json"
    path.write_text(json.dumps({"training": items}))
    return path


BAD_DATA = {
    "image without label": (orphan_image, [], "no label"),
    "shape mismatch": (crop_label, [], "shape"),
    "affine mismatch": (shift_label_affine, [], "affine"),
    "corrupt NIfTI": (corrupt_case, [], "case_001.nii.gz"),
}


@pytest.mark.parametrize("problem", list(BAD_DATA))
def test_bad_dataset_files_are_named_and_refused(problem, user_dataset, capsys, tiny_bundle_dir, tmp_path):
    damage, extra, words = BAD_DATA[problem]
    named = damage(user_dataset)
    before = tree_digest(user_dataset)
    message = run_bad([str(user_dataset), "--label-mapping", SMOKE_MAPPING, *extra], capsys, tiny_bundle_dir,
                      tmp_path / "run")  # fmt: skip
    assert named.name in message and words in message.lower()
    assert tree_digest(user_dataset) == before


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--label-mapping", "[[1, 1], [2, 3], [3, 255]]"], "between 1 and 254"),
        (["--label-mapping", "[[1, 1], [2, 3]]"], "also hold value(s) [3]"),
        (["--label-mapping", "[[1, 1], [2, 3], [3, 14], [7, 15]]"], "[7] occur in none"),
        (["--target-anatomy", "left kidney"], "3 foreground values"),
        (["--target-anatomy", "vertebrae"], "ambiguous"),
        (["--target-anatomy", "flux capacitor"], "unknown"),
        (["--label-mapping", SMOKE_MAPPING, "--epochs", "0"], "at least one epoch"),
        (["--label-mapping", SMOKE_MAPPING, "--cache-rate", "1.5"], "between 0 and 1"),
        (["--label-mapping", SMOKE_MAPPING, "--learning-rate", "-0.001"], "must not be negative"),
        ([], "no label mapping"),
    ],
)
def test_bad_mappings_are_refused(args, words, user_dataset, capsys, tiny_bundle_dir, tmp_path):
    message = run_bad([str(user_dataset), *args], capsys, tiny_bundle_dir, tmp_path / "run")
    assert words in message


def test_missing_empty_and_fold_less_data_are_refused(user_dataset, capsys, tiny_bundle_dir, tmp_path):
    message = run_bad([str(tmp_path / "nowhere")], capsys, tiny_bundle_dir, tmp_path / "run")
    assert "nowhere" in message
    (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
    (tmp_path / "empty" / "labelsTr").mkdir()
    assert "empty" in run_bad([str(tmp_path / "empty")], capsys, tiny_bundle_dir, tmp_path / "run")
    folds = datalist_without_fold_0(user_dataset)
    message = run_bad(["--datalist", str(folds), "--dataset-dir", str(user_dataset), "--label-mapping", SMOKE_MAPPING],
                      capsys, tiny_bundle_dir, tmp_path / "run")  # fmt: skip
    assert "fold 0" in message
    message = run_bad(["--sanity"], capsys, tiny_bundle_dir, tmp_path / "run")
    assert "Task06" in message


def test_incomplete_bundles_and_used_run_dirs_are_refused(user_dataset, capsys, tiny_bundle_dir, tmp_path):
    no_configs = tmp_path / "bundle_without_configs"
    (no_configs / "models").mkdir(parents=True)
    message = run_bad(["--smoke"], capsys, no_configs, tmp_path / "run")
    assert "configs/train.json" in message
    no_weights = tmp_path / "bundle_without_weights"
    (no_weights / "configs").mkdir(parents=True)
    for name in ("train.json", "train_continual.json", "evaluate.json"):
        (no_weights / "configs" / name).write_text((tiny_bundle_dir / "configs" / name).read_text())
    message = run_bad(["--smoke"], capsys, no_weights, tmp_path / "run")
    assert "model.pt" in message
    used = tmp_path / "used"
    used.mkdir()
    (used / "output.json").write_text("{}")
    code = main(["finetune", "--smoke", "--bundle-dir", str(tiny_bundle_dir), "--output-dir", str(used)])
    assert code == 2 and "already holds files" in capsys.readouterr().err
    assert (used / "output.json").read_text() == "{}"


# --- running elsewhere ---------------------------------------------------------------------------------------------


def test_prepare_only_stages_a_run_that_resume_then_runs(tiny_bundle_dir, tmp_path, capsys):
    run_dir = tmp_path / "prepared run"
    code = main(
        ["finetune", "--smoke", "--skip-formal-eval", "--skip-review", "--prepare-only",
         "--bundle-dir", str(tiny_bundle_dir), "--output-dir", str(run_dir)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "sbatch" in printed and "--resume" in printed
    assert not (run_dir / "output.json").exists() and not (run_dir / "logs" / "train.log").exists()
    for script in ("run_commands.sh", "slurm.sbatch"):
        assert subprocess.run(["bash", "-n", str(run_dir / script)]).returncode == 0
    args = json.loads((run_dir / "configs" / "train_args.json").read_text())
    assert all(os.path.isfile(path) for path in args["config_file"])
    assert main(["finetune", "--resume", "--output-dir", str(run_dir)]) == 0
    assert load_output(run_dir)["status"] == "completed"
    assert poll_job(run_dir).state == "completed"  # what the panel sees of a run done elsewhere
