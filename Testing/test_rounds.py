"""The correction loop from the command line: two rounds of ``finetune --continue-from`` on the tiny bundle, the
forgetting guard, class routing, and the bad inputs of a round.

Round 1 teaches the left kidney (value 3 -> 14) on micro phantoms whose liver (1) and spleen (2) are set to
background (``--unmapped background``; dataset.json names them); round 2 adds two new cases. One epoch each: the
assertions hold by construction (which cases, which classes, which model answered), never by a training outcome.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from round_cases import finetune, write_cases

from VistaFinetuneLib.cli import main
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.finetune import rounds
from VistaFinetuneLib.panel import correction

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_rounds(round_one_run, tmp_path_factory) -> tuple[Path, Path, Path]:
    """Round 1 (3 cases, 1 validates) and round 2 (+2 new cases) of the left kidney, liver set to background."""
    root = tmp_path_factory.mktemp("rounds")
    added = write_cases(root / "data2", 123, 2, 0, "b")
    run2 = root / "run2"
    assert finetune("--continue-from", str(round_one_run), "--datalist", str(added), "--output-dir", str(run2)) == 0
    return round_one_run, run2, added


def datalist_items(run_dir: Path) -> list[dict]:
    """The run's cases with the user's own label files (the staged datalist points at relabelled copies)."""
    return json.loads((run_dir / rounds.SOURCE_DATALIST).read_text())["training"]


def test_round_two_keeps_validation_and_trains_on_the_union(two_rounds):
    run1, run2, added = two_rounds
    before, after = datalist_items(run1), datalist_items(run2)
    validation = [(i["image"], i["label"]) for i in before if i["fold"] == 0]
    assert [(i["image"], i["label"]) for i in after if i["fold"] == 0] == validation
    new_images = {str((added.parent / i["image"]).absolute()) for i in json.loads(added.read_text())["training"]}
    trained_before = {i["image"] for i in before if i["fold"] != 0}
    assert {i["image"] for i in after if i["fold"] != 0} == trained_before | new_images
    output = json.loads((run2 / "output.json").read_text())
    assert output["input"]["label_mappings"]["default"] == [[3, 14]]
    first, second = output["rounds"]
    assert (first["round"], first["run_dir"], second["round"], second["run_dir"]) == (1, str(run1), 2, str(run2))
    assert (first["n_train_cases"], second["n_train_cases"], second["n_new_cases"]) == (2, 4, 2)
    assert first["validation_cases"] == second["validation_cases"] == ["a_000"]
    assert set(second["formal_dice_per_class"]) == {"14"}
    assert first == json.loads((run1 / "output.json").read_text())["rounds"][0]
    assert any("round 2: continues" in line for line in output["output"]["decision_rationale"])


def test_forgetting_lists_the_liver_with_both_measures(two_rounds):
    for run in two_rounds[:2]:
        guard = json.loads((run / "output.json").read_text())["forgetting"]
        liver = guard["classes"]["1"]
        assert liver["name"] == "liver" and liver["label_value"] == 1
        for key in ("agreement_dice", "finetuned_vs_truth_dice", "pretrained_vs_truth_dice"):
            assert 0.0 <= liver[key] <= 1.0
        assert liver["flagged"] == (liver["agreement_dice"] < guard["threshold"])
        assert guard["classes_checked"][0] == 1 and 14 not in guard["classes_checked"]
        assert len(guard["classes_checked"]) <= guard["max_classes"]  # the CPU cap, with the rest listed
        assert guard["classes_not_checked"] and guard["cap_reason"]


def test_bad_round_inputs(two_rounds, tmp_path, capsys):
    run1, _, added = two_rounds
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text("{}")
    (unfinished / "status.json").write_text(json.dumps({"state": "running"}))
    out = tmp_path / "next"
    assert finetune("--continue-from", str(unfinished), "--datalist", str(added), "--output-dir", str(out)) == 2
    assert "has not finished (state: running)" in capsys.readouterr().err and not out.exists()

    validation = datalist_items(run1)[0]
    assert validation["fold"] == 0
    again = tmp_path / "again.json"
    again.write_text(json.dumps({"training": [{**validation, "fold": 1}]}))
    assert finetune("--continue-from", str(run1), "--datalist", str(again), "--output-dir", str(out)) == 2
    error = capsys.readouterr().err
    assert "already a validation case" in error and "trained on" in error and not out.exists()

    contradicting = write_cases(tmp_path / "data3", 5, 2, 0, "c", names={"3": "liver"})
    assert finetune("--continue-from", str(run1), "--datalist", str(contradicting), "--output-dir", str(out)) == 2
    error = capsys.readouterr().err
    assert "contradict the mapping" in error and "dataset.json" in error and not out.exists()

    assert finetune(
        "--continue-from", str(run1), "--datalist", str(added), "--label-mapping", "[[3, 5]]", "--output-dir", str(out)
    ) == 2  # fmt: skip
    assert "maps it to 14" in capsys.readouterr().err and not out.exists()


@pytest.mark.unit
def test_start_from_previous_starts_training_from_the_previous_checkpoint(tmp_path):
    ckpt = tmp_path / "prev" / "checkpoints" / "model_finetune.pt"
    previous = rounds.PreviousRound(tmp_path / "prev", {}, {"output": {"recommended_ckpt": str(ckpt)}, "rounds": [{}]})
    rounds.write_round(tmp_path, previous, "previous", [], [])
    assert "finetune_model_path" in rounds.start_overrides(tmp_path)
    assert any("forgetting" in line for line in rounds.round_rationale(tmp_path))
    rounds.write_round(tmp_path, previous, "pretrained", [], [])
    assert rounds.start_overrides(tmp_path) == {}
    assert correction.SOURCE_DATALIST == rounds.SOURCE_DATALIST  # the panel reads what the engine writes


@pytest.fixture(scope="module")
def kidney_run(tiny_bundle_dir, tmp_path_factory) -> Path:
    """A run folder that finetuned the left kidney and was judged improved, made without training: its checkpoint is
    the tiny bundle's weights with the first encoder convolution halved (a change every class's answer feels)."""
    import torch

    from VistaFinetuneLib.finetune.checkpoints import load_state_dict

    run_dir = tmp_path_factory.mktemp("kidney-run")
    state = load_state_dict(tiny_bundle_dir / "models" / "model.pt")
    key = next(k for k in state if k.startswith("image_encoder.") and k.endswith("weight") and state[k].ndim == 5)
    state[key] = state[key] * 0.5
    (run_dir / "checkpoints").mkdir()
    torch.save(state, run_dir / "checkpoints" / "model_finetune.pt")
    record = {"request_resolved": {"bundle_dir": str(tiny_bundle_dir)}, "label_mappings": {"default": [[3, 14]]}}
    (run_dir / "run.json").write_text(json.dumps(record))
    formal = {"pretrained": {"per_class": {"14": 0.0}}, "finetuned": {"per_class": {"14": 0.8}}}
    (run_dir / "output.json").write_text(json.dumps({"output": {"recommended": "finetuned", "formal_dice": formal}}))
    return run_dir


def read(out: Path) -> tuple[np.ndarray, dict]:
    labels = np.asarray(nib.load(out / "ct.nii.gz").dataobj)
    return labels, json.loads((out / "ct.legend.json").read_text())


def test_routing_answers_untrained_classes_with_the_pretrained_weights(kidney_run, tiny_bundle_dir, tmp_path):
    from VistaFinetuneLib.inference.models import pretrained_model, run_model
    from VistaFinetuneLib.inference.predictor import Predictor
    from VistaFinetuneLib.inference.segment import SegmentRequest, segment

    image = tmp_path / "ct.nii.gz"
    item = synthetic.write_dataset(tmp_path / "data", 1, seed=3, spec=synthetic.MICRO_SPEC)[0]
    (tmp_path / "data" / item["image"]).rename(image)
    command = ["predict", str(image), "--classes", "liver", "--device", "cpu", "--run", str(kidney_run)]
    assert main([*command, "--output-dir", str(tmp_path / "on")]) == 0  # predict --run, routing on (the default)
    routed, legend = read(tmp_path / "on")
    pre, run = Predictor(pretrained_model(tiny_bundle_dir), "cpu"), Predictor(run_model(kidney_run), "cpu")

    def ask(name: str, classes: list, model, routing: bool = True) -> tuple[np.ndarray, dict]:
        request = SegmentRequest(image, tmp_path / name / "ct.nii.gz", classes=classes, routing=routing)
        segment(model, request, pretrained=lambda: pre)
        return read(tmp_path / name)

    pretrained, _ = ask("pre", ["liver"], pre)
    unrouted, legend_off = ask("off", ["liver"], run, routing=False)
    assert (pretrained == 1).sum() > 0
    assert np.array_equal(routed, pretrained)
    assert not np.array_equal(unrouted, pretrained)
    assert legend["labels"]["1"]["answered_by"] == "pretrained" and legend["routing"]["on"]
    assert legend["routing"]["run_classes"] == [14]
    assert legend["routing"]["checkpoints"]["pretrained"]["checkpoint"] == str(tiny_bundle_dir / "models" / "model.pt")
    assert legend_off["labels"]["1"]["answered_by"] == "finetuned" and not legend_off["routing"]["on"]
    both, legend_both = ask("both", ["liver", "left kidney"], run)
    answered = {v: e["answered_by"] for v, e in legend_both["labels"].items() if v != "0"}
    assert answered == {"1": "pretrained", "14": "finetuned"}
    kidney, _ = ask("kidney", ["left kidney"], run)
    assert np.array_equal(both[kidney == 14], kidney[kidney == 14])


@pytest.mark.unit
def test_new_cases_train_unless_added_to_validation(tmp_path):
    from VistaFinetuneLib.data.dataset import Case, write_datalist
    from VistaFinetuneLib.errors import UserError

    def case(name: str, fold: int) -> Case:
        for folder in ("imagesTr", "labelsTr"):
            (tmp_path / folder).mkdir(exist_ok=True)
            (tmp_path / folder / f"{name}.nii.gz").touch()
        return Case(name, tmp_path / "imagesTr" / f"{name}.nii.gz", tmp_path / "labelsTr" / f"{name}.nii.gz", fold)

    run = tmp_path / "run"
    (run / "dataset").mkdir(parents=True)
    write_datalist([case("v", 0), case("t", 1)], run / rounds.SOURCE_DATALIST)
    previous = rounds.PreviousRound(run, {}, {})
    new = [case("n0", 0), case("n1", None)]
    folds = {c.name: c.fold for c in rounds.merge_cases(previous, new, add_validation=False)}
    assert folds == {"v": 0, "t": 1, "n0": 1, "n1": 1}
    folds = {c.name: c.fold for c in rounds.merge_cases(previous, new, add_validation=True)}
    assert folds == {"v": 0, "t": 1, "n0": 0, "n1": 1}
    with pytest.raises(UserError, match="already a validation case"):
        rounds.merge_cases(previous, [Case("renamed", case("v", 0).image, case("v", 0).label, 1)], False)
