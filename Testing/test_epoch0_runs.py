"""A run whose finetuned checkpoint equals the pretrained weights (the epoch-0 trap: no epoch beat the pretrained
model's validation, so the bundle kept its copy) is served as what it is: "pretrained weights", by ``predict --run``
(legend and a note) and by the warm worker."""

import json
import shutil
from pathlib import Path

import pytest
from test_worker import WorkerProcess

from VistaFinetuneLib.cli import main
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.finetune.checkpoints import compare_checkpoints
from VistaFinetuneLib.inference.models import run_model

SPEC = synthetic.PhantomSpec(shape=(32, 32, 24), spacing_mm=(3.0, 3.0, 4.0), label_values={"liver": 1})


def write_run(tiny_bundle_dir: Path, run_dir: Path, checkpoint_source: Path) -> Path:
    """A run folder whose model_finetune.pt is ``checkpoint_source`` and whose output.json holds the real
    comparison of it with the bundle's weights."""
    (run_dir / "checkpoints").mkdir(parents=True)
    checkpoint = run_dir / "checkpoints" / "model_finetune.pt"
    shutil.copyfile(checkpoint_source, checkpoint)
    pretrained = tiny_bundle_dir / "models" / "model.pt"
    comparison = compare_checkpoints(pretrained, checkpoint).to_json()
    output = {"output": {"checkpoint_comparisons_to_pretrained": {checkpoint.name: comparison}}}
    (run_dir / "output.json").write_text(json.dumps(output))
    record = {"request_resolved": {"bundle_dir": str(tiny_bundle_dir)}, "label_mappings": {"default": [[1, 1]]}}
    (run_dir / "run.json").write_text(json.dumps(record))
    return run_dir


@pytest.fixture(scope="module")
def epoch0_run(tiny_bundle_dir, tmp_path_factory) -> Path:
    return write_run(
        tiny_bundle_dir, tmp_path_factory.mktemp("epoch0") / "run", tiny_bundle_dir / "models" / "model.pt"
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("epoch0-image")
    synthetic.write_dataset(root, 1, seed=21, spec=SPEC)
    return root / "imagesTr" / "case_000.nii.gz"


def test_predict_run_says_pretrained_weights(epoch0_run, new_id_run, image, tmp_path, capsys):
    assert run_model(epoch0_run).weights == "pretrained weights"
    assert run_model(new_id_run).weights == "finetuned"  # no output.json: nothing says it equals the pretrained
    args = ["predict", str(image), "--run", str(epoch0_run), "--classes", "liver", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    assert "equals the pretrained weights" in capsys.readouterr().err
    legend = json.loads((tmp_path / "case_000.legend.json").read_text())
    assert legend["weights"] == "pretrained weights" and legend["run_dir"] == str(epoch0_run)


def test_the_worker_says_pretrained_weights(epoch0_run, tiny_bundle_dir, tmp_path):
    worker = WorkerProcess("--bundle-dir", tiny_bundle_dir, "--output-dir", tmp_path, "--run", epoch0_run)
    try:
        assert worker.ready["models"]["pretrained"]["weights"] == "pretrained weights"
        assert worker.ready["models"]["finetuned"]["weights"] == "pretrained weights"
    finally:
        worker.close()
