"""``predict --gpus N --everything`` evaluates the bundle's ``everything_labels`` as the bundle does: NV-Segment-CT's
``$`` expression, and NV-Segment-CTMR's choice by modality (CT_BODY for CT images without --modality).

The torchrun itself needs GPUs: ``run_bundle`` is replaced by a stand-in (named so) that records the run it was
given; the command and its override file are real."""

import json
import shutil
from pathlib import Path

import pytest
from variant_bundles import CTMR_EVERYTHING, EVERYTHING_CT, write_runnable_ctmr

from VistaFinetuneLib.cli import main
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.inference.multi_gpu import MULTI_GPU_CONFIGS

SPEC = synthetic.PhantomSpec(shape=(24, 24, 16), spacing_mm=(3.0, 3.0, 4.0), label_values={"liver": 1})
EVERYTHING_CT_IDS = sorted(set(range(1, 133)) - {2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132})


def with_multi_gpu_configs(bundle: Path) -> Path:
    for name in MULTI_GPU_CONFIGS[1:]:
        (bundle / name).write_text("{}")  # stand-ins for the batch and multi-GPU overlays
    return bundle


@pytest.fixture
def recorded_runs(monkeypatch) -> list:
    """A stand-in for the torchrun (no GPUs here): records each run and fails it, so nothing is adopted."""
    runs = []

    def run_bundle_without_gpus(run, *args, **kwargs):
        runs.append(run)
        return 1

    monkeypatch.setattr("VistaFinetuneLib.bundle.runner.run_bundle", run_bundle_without_gpus)
    return runs


def everything_sent(recorded_runs, images: Path, bundle: Path, out: Path) -> list[int]:
    code = main(["predict", "--input-dir", str(images), "--gpus", "2", "--everything", "--bundle-dir", str(bundle),
                 "--output-dir", str(out)])  # fmt: skip
    assert code != 0 and len(recorded_runs) == 1  # the stand-in's failure, after the run was built
    return json.loads(Path(recorded_runs[0].config_files[-1]).read_text())["everything_labels"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mgpu-cts")
    synthetic.write_dataset(root, 2, seed=12, spec=SPEC)
    return root / "imagesTr"


def test_the_everything_expression_is_evaluated(tiny_bundle_dir, images, tmp_path, recorded_runs):
    bundle = with_multi_gpu_configs(Path(shutil.copytree(tiny_bundle_dir, tmp_path / "bundle")))
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    (bundle / "configs" / "inference.json").write_text(json.dumps(config | {"everything_labels": EVERYTHING_CT}))
    assert everything_sent(recorded_runs, images, bundle, tmp_path / "out") == EVERYTHING_CT_IDS


def test_a_ctmr_bundle_gets_the_ct_list_for_ct_images(tiny_bundle_dir, images, tmp_path, recorded_runs):
    bundle = with_multi_gpu_configs(write_runnable_ctmr(tiny_bundle_dir, tmp_path / "ctmr"))
    assert everything_sent(recorded_runs, images, bundle, tmp_path / "out") == CTMR_EVERYTHING["CT_BODY"]
