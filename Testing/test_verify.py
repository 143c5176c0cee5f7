"""``vista-finetune verify``: a real smoke run passes every tier; each kind of damage fails the tier that owns it."""

import json
import math
import shutil
from pathlib import Path

import pytest

from VistaFinetuneLib.cli import main
from VistaFinetuneLib.finetune.verify import TierResult, format_results, verify_run

pytestmark = pytest.mark.e2e

TIERS = ["schema", "checkpoints", "trajectory", "labels", "dataset", "formal", "sanity"]


@pytest.fixture
def run_copy(smoke_run_dir, tmp_path) -> Path:
    """A copy of the smoke run in another place (recorded paths under the run folder are rebased onto it)."""
    copy = tmp_path / "moved-run"
    shutil.copytree(smoke_run_dir, copy)
    return copy


def edit_output(run_dir: Path, change) -> None:
    path = run_dir / "output.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2))  # NaN is written as the JSON extension NaN, as json.dumps does


def failed(run_dir: Path) -> set[str]:
    return {r.name for r in verify_run(run_dir) if not r.ok}


def test_a_real_smoke_run_passes_every_tier(smoke_run_dir, capsys):
    results = verify_run(smoke_run_dir)
    assert [r.name for r in results] == TIERS
    assert [r.verdict for r in results] == ["PASS"] * 6 + ["SKIP"]  # formal eval ran; not a --sanity run
    assert main(["verify", str(smoke_run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("schema       PASS  ")
    assert [line.split()[0] for line in lines] == TIERS


def test_a_moved_copy_still_passes(run_copy, capsys):
    assert main(["verify", str(run_copy)]) == 0
    assert f"its files are read from {run_copy}" in capsys.readouterr().out


def test_truncated_checkpoint_fails_the_checkpoint_tier(run_copy, capsys):
    ckpt = run_copy / "checkpoints" / "model_final.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    assert failed(run_copy) == {"checkpoints"}
    assert main(["verify", str(run_copy)]) == 1
    out = capsys.readouterr().out
    assert "checkpoints  FAIL" in out and "model_final.pt" in out


def recommend_finetuned(doc: dict) -> None:
    """Make the recorded verdict "finetuned" (whatever this machine's smoke run concluded)."""
    doc["output"].update(recommended="finetuned", recommended_ckpt=doc["output"]["finetuned_ckpt"], improved=True)


def test_recommending_a_finetuned_checkpoint_equal_to_the_pretrained_fails(run_copy):
    edit_output(run_copy, recommend_finetuned)
    doc = json.loads((run_copy / "output.json").read_text())
    shutil.copyfile(doc["output"]["pretrained_ckpt"], run_copy / "checkpoints" / "model_finetune.pt")
    edit_output(
        run_copy,
        lambda d: d["output"]["checkpoint_comparisons_to_pretrained"]["model_finetune.pt"].update(identical=False),
    )  # the record still says it differs: only the files tell
    assert failed(run_copy) == {"checkpoints"}
    assert any("equals the pretrained weights" in d for r in verify_run(run_copy) for d in r.details)


def test_recorded_identical_comparison_with_finetuned_recommendation_fails(run_copy):
    edit_output(run_copy, recommend_finetuned)
    edit_output(
        run_copy,
        lambda d: d["output"]["checkpoint_comparisons_to_pretrained"]["model_finetune.pt"].update(identical=True),
    )
    assert failed(run_copy) == {"checkpoints"}
    assert main(["verify", str(run_copy)]) == 1


@pytest.mark.parametrize("value", [math.nan, 1.5, -0.1])
def test_impossible_validation_dice_fails_the_trajectory_tier(run_copy, value):
    edit_output(run_copy, lambda d: d["output"]["val_dice_per_epoch"].__setitem__(1, value))
    assert failed(run_copy) == {"trajectory"}
    assert main(["verify", str(run_copy)]) == 1


def test_oom_and_nonfinite_loss_fail_the_trajectory_tier(run_copy):
    edit_output(run_copy, lambda d: d["output"].update(oom=True, train_loss_finite=False))
    (trajectory,) = [r for r in verify_run(run_copy) if r.name == "trajectory"]
    assert not trajectory.ok and len(trajectory.details) == 2


def test_deleted_prediction_fails_the_formal_tier(run_copy, capsys):
    predictions = sorted((run_copy / "eval_finetuned").glob("*/*_trans.nii.gz"))
    assert predictions
    predictions[0].unlink()
    assert failed(run_copy) == {"formal"}
    assert main(["verify", str(run_copy)]) == 1
    assert "no prediction for validation case" in capsys.readouterr().out


def test_formal_dice_off_by_a_hundredth_fails_the_formal_tier(run_copy):
    edit_output(
        run_copy,
        lambda d: d["output"].update(formal_finetuned_val_dice=d["output"]["formal_finetuned_val_dice"] + 0.01),
    )
    assert failed(run_copy) == {"formal"}
    assert main(["verify", str(run_copy)]) == 1


def test_removed_label_mapping_pair_fails_the_label_tier(run_copy, capsys):
    doc = json.loads((run_copy / "output.json").read_text())
    _, removed = doc["input"]["label_mappings"]["default"][-1]
    edit_output(run_copy, lambda d: d["input"]["label_mappings"]["default"].pop())
    # the formal tier rescoring without that class disagrees with the record exactly when the remaining classes'
    # mean differs from the recorded mean (it does not when, say, every class scored the same)
    formal_changes = False
    for phase in ("pretrained", "finetuned"):
        per_class = doc["output"]["formal_dice"][phase]["per_class"]
        kept = [v for k, v in per_class.items() if int(k) != removed and v is not None]
        formal_changes |= abs(sum(kept) / len(kept) - doc["output"][f"formal_{phase}_val_dice"]) > 1e-6
    assert failed(run_copy) == ({"labels", "formal"} if formal_changes else {"labels"})
    assert main(["verify", str(run_copy)]) == 1
    assert "label value 3 occurs in the data but is not in input.label_mappings.default" in capsys.readouterr().out


def test_id_outside_1_to_254_fails_the_label_tier(run_copy):
    edit_output(run_copy, lambda d: d["input"]["label_mappings"]["default"][0].__setitem__(1, 0))
    assert "labels" in failed(run_copy)


def test_missing_dataset_file_and_wrong_case_count_fail_the_dataset_tier(run_copy):
    datalist = run_copy / "dataset" / "datalist.json"
    content = json.loads(datalist.read_text())
    item = next(item for item in content["training"] if item.get("fold") != 0)  # a training case
    item["image"] = str(Path(item["image"]).with_name("gone.nii.gz"))
    datalist.write_text(json.dumps(content))
    edit_output(run_copy, lambda d: d["input"].update(n_val_cases=d["input"]["n_val_cases"] + 1))
    (dataset,) = [r for r in verify_run(run_copy) if r.name == "dataset"]
    assert not dataset.ok and len(dataset.details) == 2
    assert failed(run_copy) == {"dataset"}


def test_failed_sanity_reference_check_fails_the_sanity_tier(run_copy):
    edit_output(run_copy, lambda d: d["input"].update(sanity=True))
    (sanity,) = [r for r in verify_run(run_copy) if r.name == "sanity"]
    assert not sanity.ok  # a --sanity run must record its reference checks
    edit_output(
        run_copy, lambda d: d["output"].update(sanity_reference_checks={"a": True, "formal_finetuned_val_dice": False})
    )
    (sanity,) = [r for r in verify_run(run_copy) if r.name == "sanity"]
    assert not sanity.ok and sanity.details == ["formal_finetuned_val_dice is False"]
    edit_output(run_copy, lambda d: d["output"].update(sanity_reference_checks={"a": True}))
    assert failed(run_copy) == set()


def test_schema_violation_fails_the_schema_tier(run_copy):
    edit_output(run_copy, lambda d: d["output"].pop("oom"))
    assert {"schema", "trajectory"} == failed(run_copy)
    assert main(["verify", str(run_copy)]) == 1


@pytest.mark.unit
def test_missing_output_json_is_a_user_error_naming_the_folder(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and "output.json" in err


@pytest.mark.unit
def test_format_results_one_verdict_line_per_tier_and_indented_problems():
    lines = format_results(
        [
            TierResult("schema", True, "fine"),
            TierResult("formal", False, "1 problem(s)", ["off"]),
            TierResult("sanity", True, "n/a", skipped=True),
        ]
    )
    assert lines == [
        "schema       PASS  fine",
        "formal       FAIL  1 problem(s)",
        "    - off",
        "sanity       SKIP  n/a",
    ]
