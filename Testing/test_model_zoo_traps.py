"""model-zoo vista3d 0.5.4's traps, on the tiny bundle given them (:func:`variant_bundles.write_runnable_model_zoo`):
its train_continual.json caps training and validation at ``n_train_samples``/``n_val_samples`` cases (the staged
overrides lift the caps), and its inferer drops class prompts above 132 (new ids are refused on it, naming the fix)."""

import json
from pathlib import Path

import pytest
from conftest import NEW_CLASS_ID
from variant_bundles import MODEL_ZOO_SAMPLE_CAP, write_runnable_model_zoo

from VistaFinetuneLib.bundle.old_inferer import drops_new_class_prompts
from VistaFinetuneLib.cli import main
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.inference.models import run_model


@pytest.fixture(scope="module")
def model_zoo(tiny_bundle_dir, tmp_path_factory) -> Path:
    return write_runnable_model_zoo(tiny_bundle_dir, tmp_path_factory.mktemp("zoo") / "vista3d")


def parsed_datasets(stack: list[str]) -> tuple[int, int]:
    """How many cases the training and validation datasets of a config stack hold, as monai.bundle parses them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(stack)
    return len(parser.get_parsed_content("train#dataset#data")), len(parser.get_parsed_content("validate#dataset#data"))


def test_the_staged_overrides_train_and_validate_on_every_case(model_zoo, tmp_path):
    dataset = tmp_path / "data"
    synthetic.write_dataset(dataset, 10, seed=3, spec=synthetic.MICRO_SPEC)  # folds i % 5: 2 validate
    run_dir = tmp_path / "run"
    code = main(
        ["finetune", str(dataset), "--smoke", "--prepare-only", "--label-mapping", "[[1, 1], [2, 3], [3, 14]]",
         "--bundle-dir", str(model_zoo), "--output-dir", str(run_dir)]
    )  # fmt: skip
    assert code == 0
    datalist = json.loads((run_dir / "dataset" / "datalist.json").read_text())["training"]
    n_val = sum(1 for item in datalist if item["fold"] == 0)
    assert len(datalist) - n_val > MODEL_ZOO_SAMPLE_CAP and n_val > MODEL_ZOO_SAMPLE_CAP
    stack = json.loads((run_dir / "run.json").read_text())["config_stacks"]["train"]
    assert parsed_datasets(stack) == (len(datalist) - n_val, n_val)
    staged = json.loads((run_dir / "configs" / "overrides.json").read_text())
    uncapped = tmp_path / "without_the_reset.json"
    uncapped.write_text(json.dumps({k: v for k, v in staged.items() if k not in ("n_train_samples", "n_val_samples")}))
    assert parsed_datasets([*stack[:2], str(uncapped)]) == (MODEL_ZOO_SAMPLE_CAP, MODEL_ZOO_SAMPLE_CAP)  # as before


def test_the_old_inferer_is_told_from_the_fixed_one(model_zoo, tiny_bundle_dir):
    assert drops_new_class_prompts(model_zoo)
    assert not drops_new_class_prompts(tiny_bundle_dir)


def test_new_ids_are_refused_on_the_old_inferer_with_the_fix(model_zoo, tmp_path, capsys):
    dataset = tmp_path / "data"
    synthetic.write_dataset(dataset, 4, seed=4, spec=synthetic.MICRO_SPEC)
    code = main(
        ["finetune", str(dataset), "--smoke", "--prepare-only", "--label-mapping", "[[1, 1], [2, 3], [3, 133]]",
         "--bundle-dir", str(model_zoo), "--output-dir", str(tmp_path / "run")]
    )  # fmt: skip
    assert code != 0
    message = capsys.readouterr().err
    assert "drops class prompts above 132" in message and "[133]" in message and "NV-Segment-CT" in message


def test_a_run_with_new_ids_is_refused_on_the_old_inferer(model_zoo, new_id_run, tmp_path):
    with pytest.raises(UserError, match=f"this run's new classes \\[{NEW_CLASS_ID}\\].*NV-Segment-CT"):
        run_model(new_id_run, model_zoo)
    assert run_model(new_id_run).finetuned_ids == (NEW_CLASS_ID,)  # its own (tiny) bundle keeps them
