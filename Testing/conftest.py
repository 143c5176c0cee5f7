"""Shared fixtures: the tiny reference bundle (shipped, weights checked) and synthetic datasets."""

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from job_python import ROOT, SLICER_PYTHON, job_python

if SLICER_PYTHON:
    import slicer_python_guard

    sys.path.insert(0, str(ROOT / "VistaFinetune"))  # the engine, as Slicer's module paths give it (no install here)

    GUARD = slicer_python_guard.install()

# Tests of what runs in Slicer's own process (panel, effect, scene logic): they run in .venv-slicer, with .venv as
# the job environment, and are left out of the .venv run (a file named on the command line still runs anywhere).
SLICER_PROCESS_TESTS = {
    "test_module_setup.py", "test_module_ui.py", "test_module_widget.py", "test_panel_controller.py",
    "test_effect_classes.py", "test_effect_clicks.py", "test_effect_gui.py", "test_effect_worker.py",
    "test_effect_rules.py", "test_scene_mapping.py", "test_scene_export.py", "test_scene_results.py",
    "test_slicer_python.py", "test_panel_correction.py",
}  # fmt: skip

from VistaFinetuneLib.bundle import tiny_bundle  # noqa: E402
from VistaFinetuneLib.data import synthetic  # noqa: E402
from VistaFinetuneLib.jobs.child_env import child_environment  # noqa: E402


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """Each environment collects its own test files (Slicer-process tests in .venv-slicer, the rest in .venv)."""
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return (collection_path.name in SLICER_PROCESS_TESTS) != SLICER_PYTHON
    return None


@pytest.fixture(autouse=True)
def only_what_slicer_ships():
    """In .venv-slicer, a test fails if anything it ran imported a package that Slicer does not ship."""
    if not SLICER_PYTHON:
        yield
        return
    before = len(GUARD.refused)
    yield
    refused = GUARD.refused[before:]
    assert not refused, f"imported packages that 3D Slicer does not ship: {sorted(set(refused))}"




def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (a bundle folder must never change)."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="session")
def tiny_bundle_dir() -> Path:
    """The shipped tiny bundle (pretrained on the liver only), after its weights' checksum is checked."""
    return tiny_bundle.ensure_tiny_bundle()


@pytest.fixture(scope="session")
def micro_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """Four micro phantoms (liver=1, spleen=2, left kidney=3) and a datalist with two validation cases."""
    root = tmp_path_factory.mktemp("micro")
    items = synthetic.write_dataset(root, 4, seed=99, spec=synthetic.MICRO_SPEC)
    for index, item in enumerate(items):
        item["fold"] = 0 if index < 2 else 1
    datalist = root / "datalist.json"
    datalist.write_text(json.dumps({"training": items}))
    return root, datalist


INJECTION = "$__import__('os').system('touch PWNED')"
SMOKE_MAPPING = "[[1, 1], [2, 3], [3, 14]]"


@dataclass(frozen=True)
class SmokeRun:
    """A finished smoke run and what surrounded it."""

    run_dir: Path
    dataset_dir: Path
    bundle_before: dict[str, str]
    bundle_after: dict[str, str]
    dataset_before: dict[str, str]
    dataset_after: dict[str, str]
    exit_code: int


@pytest.fixture(scope="session")
def smoke_run(tiny_bundle_dir, tmp_path_factory) -> SmokeRun:
    """``vista-finetune finetune DATASET --smoke --formal-eval`` on micro phantoms, in folders named like a config
    injection (about 2 CPU minutes)."""
    root = tmp_path_factory.mktemp("smoke") / INJECTION
    dataset_dir = root / "data"
    synthetic.write_dataset(dataset_dir, 4, seed=5, spec=synthetic.MICRO_SPEC)
    bundle_before, dataset_before = tree_digest(tiny_bundle_dir), tree_digest(dataset_dir)
    run_dir = root / "run"
    args = ["finetune", str(dataset_dir), "--smoke", "--formal-eval", "--label-mapping", SMOKE_MAPPING,
            "--learning-rate", "0.002", "--bundle-dir", str(tiny_bundle_dir), "--output-dir", str(run_dir)]  # fmt: skip
    if SLICER_PYTHON:  # the engine's finetune runs in the job environment, as it does from Slicer
        code = subprocess.run([job_python(), "-m", "VistaFinetuneLib", *args], env=child_environment()).returncode
    else:
        from VistaFinetuneLib.cli import main

        code = main(args)
    bundle_after, dataset_after = tree_digest(tiny_bundle_dir), tree_digest(dataset_dir)
    return SmokeRun(run_dir, dataset_dir, bundle_before, bundle_after, dataset_before, dataset_after, code)


@pytest.fixture(scope="session")
def smoke_run_dir(smoke_run) -> Path:
    """The folder of a completed smoke run with formal evaluation."""
    assert smoke_run.exit_code == 0
    return smoke_run.run_dir


NEW_CLASS_ID = 133
NEW_CLASS_NAME = "Tumor 1"


@pytest.fixture(scope="session")
def new_id_run(tiny_bundle_dir, tmp_path_factory) -> Path:
    """A finetune run folder whose model knows the liver under the new id 133, which the user called "Tumor 1".

    Made without training: its checkpoint is the tiny bundle's weights with class embedding 133 set to the liver's
    (1), which is what finetuning with the mapping [[1, 133]] aims at; run.json records that mapping and name.
    """
    import torch

    from VistaFinetuneLib.finetune.checkpoints import load_state_dict

    run_dir = tmp_path_factory.mktemp("new-id-run")
    state = load_state_dict(tiny_bundle_dir / "models" / "model.pt")
    key = next(k for k in state if k.startswith("class_head.") and k.endswith("class_embeddings.weight"))
    state[key][NEW_CLASS_ID] = state[key][1].clone()
    (run_dir / "checkpoints").mkdir()
    torch.save(state, run_dir / "checkpoints" / "model_finetune.pt")
    record = {
        "request_resolved": {"bundle_dir": str(tiny_bundle_dir)},
        "label_mappings": {"default": [[1, NEW_CLASS_ID]]},
        "class_names": {str(NEW_CLASS_ID): NEW_CLASS_NAME},
    }
    (run_dir / "run.json").write_text(json.dumps(record, indent=2))
    return run_dir


@pytest.fixture(scope="session")
def round_one_run(tiny_bundle_dir, tmp_path_factory) -> Path:
    """Round 1 of a correction loop: the left kidney finetuned (1 epoch) on micro phantoms whose liver and spleen are
    set to background (dataset.json names them), so the forgetting guard checks the liver."""
    from round_cases import first_round

    return first_round(tmp_path_factory.mktemp("round-one"), tiny_bundle_dir)
