"""A run finetuned through a ``--config-override`` that changes the network is usable: ``predict --run`` and the
warm worker build the network as the run was trained (from run.json's ``config_stacks``), and ``predict`` takes
``--config-override`` of its own for a bare checkpoint."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_worker import WorkerProcess

from VistaFinetuneLib.cli import main
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.inference.models import run_model

NARROW_ENCODER = {"network_def#image_encoder#init_filters": 4, "train#handlers#0#strict_shape": False}
SPEC = synthetic.PhantomSpec(shape=(40, 40, 28), spacing_mm=(2.5, 2.5, 3.5), label_values={"liver": 1})


@pytest.fixture(scope="module")
def narrow_run(tiny_bundle_dir, tmp_path_factory) -> tuple[Path, Path, Path]:
    """A one-epoch smoke finetune whose override halves the encoder's filters (the pretrained encoder's layers of
    another shape are skipped); the override file is then deleted: the run keeps its copy."""
    root = tmp_path_factory.mktemp("narrow")
    dataset_dir = root / "data"
    synthetic.write_dataset(dataset_dir, 4, seed=7, spec=synthetic.MICRO_SPEC)
    override = root / "narrow_encoder.json"
    override.write_text(json.dumps(NARROW_ENCODER))
    run_dir = root / "run"
    code = main(
        ["finetune", str(dataset_dir), "--smoke", "--epochs", "1", "--label-mapping", "[[1, 1], [2, 3], [3, 14]]",
         "--bundle-dir", str(tiny_bundle_dir), "--output-dir", str(run_dir), "--config-override", str(override)]
    )  # fmt: skip
    assert code == 0
    override.unlink()
    images = root / "images"
    synthetic.write_dataset(images, 1, seed=8, spec=SPEC)
    return run_dir, images / "imagesTr" / "case_000.nii.gz", root


def test_predict_run_builds_the_network_the_run_was_trained_with(narrow_run, tmp_path):
    run_dir, image, _ = narrow_run
    model = run_model(run_dir)
    assert [p.name for p in model.config_overrides] == ["01-narrow_encoder.json"]
    resolved = json.loads((run_dir / "run.json").read_text())["request_resolved"]["config_overrides"]
    assert resolved == [str(run_dir / "configs" / "user" / "01-narrow_encoder.json")]  # what --resume reads
    args = ["predict", str(image), "--run", str(run_dir), "--classes", "liver", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    labels = np.asarray(nib.load(tmp_path / "case_000.nii.gz").dataobj)
    assert labels.shape == SPEC.shape


def test_a_bare_checkpoint_needs_and_takes_the_override(narrow_run, tmp_path, capsys):
    run_dir, image, root = narrow_run
    checkpoint = run_dir / "checkpoints" / "model_finetune.pt"
    args = ["predict", str(image), "--checkpoint", str(checkpoint), "--classes", "liver"]
    assert main([*args, "--output-dir", str(tmp_path / "without")]) != 0
    assert "does not fit the network" in capsys.readouterr().err
    override = root / "again.json"
    override.write_text(json.dumps(NARROW_ENCODER))
    assert main([*args, "--output-dir", str(tmp_path / "with"), "--config-override", str(override)]) == 0
    assert (tmp_path / "with" / "case_000.nii.gz").is_file()


def test_the_worker_loads_the_run_with_its_network(narrow_run, tiny_bundle_dir, tmp_path):
    run_dir, image, _ = narrow_run
    worker = WorkerProcess("--bundle-dir", tiny_bundle_dir, "--output-dir", tmp_path)
    try:
        loaded = worker.ask({"id": "load", "op": "load", "model": "narrow", "run": str(run_dir)})
        assert loaded["ok"], loaded
        assert [Path(p).name for p in loaded["info"]["config_overrides"]] == ["01-narrow_encoder.json"]
        answer = worker.ask({"id": "p", "op": "predict", "model": "narrow", "image": str(image), "classes": [1]})
        assert answer["ok"], answer
        assert np.asarray(nib.load(answer["output"]).dataobj).shape == SPEC.shape
    finally:
        worker.close()
