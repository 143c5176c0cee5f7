"""The panel's Qt-free logic (VistaFinetuneLib.panel): case and mapping rows, the plan, the command, progress,
results. Real NIfTI files and real bundle configs; the job itself runs in test_module_widget.py."""

import argparse
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from job_python import job_python

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.data.nifti import read_nifti, write_nifti
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.jobs.child_env import child_environment
from VistaFinetuneLib.jobs.control import JobState
from VistaFinetuneLib.panel import training_data
from VistaFinetuneLib.panel.background import BackgroundCall
from VistaFinetuneLib.panel.controller import (
    PanelController,
    TrainingSettings,
    default_settings,
    finetune_command,
    progress_view,
    training_data_path,
)
from VistaFinetuneLib.panel.curves import curve_picture
from VistaFinetuneLib.panel.results import EPOCH_ZERO_WARNING, NO_EVIDENCE, read_results
from VistaFinetuneLib.resources import RESOURCES

pytestmark = pytest.mark.unit

TINY_TEMPLATE = RESOURCES / "TinyBundle"
CPU = {"cuda_available": False, "device": "cpu", "gpu_free_mb": 0, "gpu_count": 0, "host_ram_mb": 16000}


@pytest.fixture(scope="module")
def catalog() -> LabelCatalog:
    return LabelCatalog.from_bundle(TINY_TEMPLATE)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """Four micro phantoms (liver=1, spleen=2, left kidney=3) and one broken pair (label on another grid)."""
    root = tmp_path_factory.mktemp("panel-data")
    synthetic.write_dataset(root, 4, seed=3, spec=synthetic.MICRO_SPEC)
    image, affine = read_nifti(root / "imagesTr" / "case_000.nii.gz")
    write_nifti(root / "imagesTr" / "zz_broken.nii.gz", image, affine)
    shifted = affine.copy()
    shifted[:3, 3] += 5.0
    write_nifti(root / "labelsTr" / "zz_broken.nii.gz", np.zeros(image.shape, np.uint8), shifted)
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "Liver", "2": "spleen",
                                                              "3": "L kidney"}}))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def rows(dataset_dir) -> list[training_data.CaseRow]:
    return training_data.case_rows(training_data.read_cases(dataset_dir, None))


def test_case_rows_audit_every_case_and_put_problems_on_the_row(rows):
    assert [row.name for row in rows] == ["case_000", "case_001", "case_002", "case_003", "zz_broken"]
    broken = rows[-1]
    assert not broken.usable and "affine differs" in broken.problems[0] and "zz_broken" in broken.problems[0]
    assert all(row.usable and row.label_values == [1, 2, 3] for row in rows[:-1])
    assert sum(row.validation for row in rows) == 1  # the engine's seeded split: about one case in five
    assert training_data.label_values(rows) == [1, 2, 3]


def test_split_problems_and_the_written_datalist(rows, tmp_path):
    for row in rows:
        row.validation = False
    assert training_data.split_problems(rows) == ["no validation case: tick 'validation' for at least one usable case"]
    with pytest.raises(UserError, match="no validation case"):
        training_data.write_training_datalist(rows, tmp_path / "datalist.json")
    rows[1].validation = True
    assert training_data.write_training_datalist(rows, tmp_path / "datalist.json") == 4  # the broken pair is left out
    items = json.loads((tmp_path / "datalist.json").read_text())["training"]
    assert [(Path(i["image"]).name, i["fold"]) for i in items] == [
        ("case_000.nii.gz", 1), ("case_001.nii.gz", 0), ("case_002.nii.gz", 1), ("case_003.nii.gz", 1)
    ]  # fmt: skip


def test_mapping_rows_suggest_classes_from_names(dataset_dir, catalog):
    names = training_data.dataset_label_names(dataset_dir)
    assert names == {1: "Liver", 2: "spleen", 3: "L kidney"}
    mapping = training_data.mapping_rows([1, 2, 3], names, catalog)
    assert [(row.value, row.class_id) for row in mapping] == [(1, 1), (2, 3), (3, 14)]
    assert training_data.mapping_pairs(mapping) == [[1, 1], [2, 3], [3, 14]]
    assert training_data.mapping_messages(mapping, [1, 2, 3], catalog) == (None, [])
    unnamed = training_data.mapping_rows([1, 2], {}, catalog)
    assert [row.class_id for row in unnamed] == [None, None]
    error, _ = training_data.mapping_messages(unnamed, [1, 2], catalog)
    assert error == "label value 1: choose its VISTA3D class (or 'new structure')"


def test_a_new_structure_gets_a_free_id_above_the_table_and_a_warning(catalog):
    new_id = training_data.new_structure_id(catalog, taken=[])
    assert new_id == max(catalog.classes) + 1 and new_id not in catalog.classes
    assert training_data.new_structure_id(catalog, taken=[new_id]) == new_id + 1
    mapping = [training_data.MappingRow(1, "my structure", new_id)]
    error, warnings = training_data.mapping_messages(mapping, [1], catalog)
    assert error is None and len(warnings) == 1 and "new class" in warnings[0]
    error, _ = training_data.mapping_messages(mapping, [1, 2], catalog)
    assert "value(s) [2]" in error  # an unmapped value blocks the start


def test_plan_prefills_from_the_engine_and_the_bundle():
    settings = default_settings(TINY_TEMPLATE, CPU, n_train_cases=8)
    assert settings.epochs == 5 and settings.learning_rate == 5e-05  # the plan's default; train_continual.json's
    assert settings.patch_size == [32, 32, 32]  # no GPU to size it by: the bundle's own (train.json)
    assert settings.cache_rate == 1.0 and any("cache rate" in why for why in settings.rationale)
    gpu = default_settings(TINY_TEMPLATE, CPU | {"cuda_available": True, "device": "cuda:0", "gpu_free_mb": 20000}, 8)
    assert gpu.patch_size == [128, 128, 128]  # sized by the free GPU memory


def test_the_plan_counts_the_mapped_classes_every_step_prompts():
    environment = CPU | {"cuda_available": True, "device": "cuda:0", "gpu_free_mb": 20000}
    one, six = (default_settings(TINY_TEMPLATE, environment, 8, n_classes=n) for n in (1, 6))
    assert math.prod(six.patch_size) < math.prod(one.patch_size)
    assert any("6 prompted class(es)" in why for why in six.rationale)


def parsed_by_the_engine(command: list[str]) -> argparse.Namespace:
    """The engine's command line parser's reading of ``command``, in the job environment (where the CLI runs)."""
    code = ("import json, sys; from VistaFinetuneLib.cli import build_parser; "
            "print(json.dumps(vars(build_parser().parse_args(json.loads(sys.argv[1]))), default=str))")  # fmt: skip
    done = subprocess.run([job_python(), "-c", code, json.dumps([str(part) for part in command])],
                          capture_output=True, text=True, env=child_environment(), check=True)  # fmt: skip
    return argparse.Namespace(**json.loads(done.stdout))


def test_the_command_is_one_the_engine_accepts(tmp_path):
    settings = TrainingSettings(epochs=3, learning_rate=2e-4, patch_size=[64, 64, 32], cache_rate=0.5,
                                class_prompts_only=True)  # fmt: skip
    command = finetune_command(
        tmp_path / "d.json", tmp_path / "run", [[1, 14]], {14: "Left Kidney"}, settings, tmp_path / "bundle"
    )
    args = parsed_by_the_engine(command)
    assert json.loads(args.class_names) == {"14": "Left Kidney"}
    assert (args.epochs, args.learning_rate, args.patch_size, args.cache_rate) == (3, 2e-4, [64, 64, 32], 0.5)
    assert json.loads(args.label_mapping) == [[1, 14]] and args.auto_seg and args.bundle_dir == str(tmp_path / "bundle")


def test_progress_view_spans_the_phases(tmp_path):
    training = JobState(tmp_path, "running", phase="train", epoch=2, max_epochs=4, iteration=1,
                        iterations_per_epoch=2, loss=0.5, eta_seconds=75.0)  # fmt: skip
    view = progress_view(training, [(0.5, 0.9)])
    assert view.percent == 10 + int(75 * 3 / 8) and not view.finished
    assert view.headline == "Training: epoch 2/4, iteration 1/2, loss 0.5000"
    assert view.eta == "about 1 min 15 s left in training"
    assert progress_view(JobState(tmp_path, "running", phase="eval_finetuned"), []).percent == 85
    done = progress_view(JobState(tmp_path, "completed"), [])
    assert done.percent == 100 and done.finished
    assert "resume" in progress_view(JobState(tmp_path, "stale", phase="train"), []).headline
    failed = JobState(tmp_path, "failed", log_tail=["--- start", "error: /b/models/model.pt: weights missing"])
    assert progress_view(failed, []).headline == "The run failed: /b/models/model.pt: weights missing"


def test_curve_picture_scales_loss_and_dice():
    picture = curve_picture([(0.0, 2.0), (1.0, 1.0)], [0.25, 0.75], max_epochs=1, width=106, height=56)
    assert picture.loss == [(6, 6), (100, 50)]  # highest loss at the top, lowest at the bottom
    assert picture.dice == [(6, 39), (100, 17)]  # Dice on 0..1
    assert picture.caption == "loss 1.0000; val Dice 0.7500 (start 0.2500, best 0.7500)"


def write_output(run_dir: Path, **output) -> None:
    datalist = run_dir / "datalist.json"
    items = [{"image": f"/a/{c}.nii.gz", "label": f"/b/{c}.nii.gz", "fold": f} for c, f in (("c1", 0), ("c2", 1))]
    datalist.write_text(json.dumps({"training": items}))
    result = {
        "status": "completed", "error": None, "model_repo": str(TINY_TEMPLATE),
        "input": {"label_mappings": {"default": [[1, 1], [3, 14]]}, "datalist": str(datalist)},
        "output": {"formal_eval_enabled": True, "decision_rationale": ["why"], **output},
    }  # fmt: skip
    (run_dir / "output.json").write_text(json.dumps(result))


def test_results_say_the_epoch_zero_trap_and_no_evidence(tmp_path):
    write_output(tmp_path, recommended="pretrained", improved=False, finetuned_ckpt_matches_pretrained_weights=True,
                 formal_dice={"pretrained": {"per_class": {"1": 0.8, "14": 0.1}, "per_case": {"c1": {"1": 0.8}}},
                              "finetuned": {"per_class": {"1": 0.8, "14": 0.1}}})  # fmt: skip
    results = read_results(tmp_path)
    assert results.verdict == NO_EVIDENCE and results.warnings == [EPOCH_ZERO_WARNING]
    assert [(r.class_id, r.name, r.pretrained, r.finetuned) for r in results.per_class] == [
        (1, "liver", 0.8, 0.8), (14, "left kidney", 0.1, 0.1)
    ]  # fmt: skip
    assert results.validation_cases == ["c1"] and results.per_case["c1"][0].pretrained == 0.8


def test_results_recommend_the_finetuned_checkpoint(tmp_path):
    write_output(
        tmp_path,
        recommended="finetuned",
        improved=True,
        finetuned_ckpt_matches_pretrained_weights=False,
        formal_dice={"pretrained": {"per_class": {"14": 0.1}}, "finetuned": {"per_class": {"14": 0.5}}},
    )
    results = read_results(tmp_path)
    assert results.verdict == "Recommendation: use the finetuned checkpoint." and results.warnings == []
    assert results.per_class[1].difference == pytest.approx(0.4)


def test_no_results_before_the_run_ends(tmp_path):
    with pytest.raises(UserError, match="no results yet"):
        read_results(tmp_path)


def test_run_folders_and_their_datalist_never_collide(tmp_path):
    controller = PanelController(tmp_path / "runs", "python")
    first = controller.new_run_dir()
    training_data_path(first).parent.mkdir(parents=True)
    second = controller.new_run_dir()
    assert second != first and second.parent == first.parent == tmp_path / "runs"
    assert training_data_path(first) == tmp_path / "runs" / f"{first.name}.inputs" / "datalist.json"
    with pytest.raises(UserError, match="no run to follow"):
        controller.poll()


def test_background_call_keeps_the_engine_message():
    def bad():
        raise UserError("/x: the dataset folder does not exist")

    call = BackgroundCall(bad)
    assert call.wait(10) and call.error == "/x: the dataset folder does not exist" and call.result is None
    ok = BackgroundCall(lambda: 42)
    assert ok.wait(10) and ok.result == 42 and ok.error is None
