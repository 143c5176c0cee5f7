"""Micro phantoms for the correction-loop tests: cases named ``PREFIX_NNN`` with a datalist and label names."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from job_python import SLICER_PYTHON, job_python

from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.jobs.child_env import child_environment

NAMES = {"0": "background", "1": "liver", "2": "spleen", "3": "left kidney"}


def write_cases(root: Path, seed: int, count: int, validation: int, prefix: str, names=NAMES) -> Path:
    """Micro phantoms named ``PREFIX_NNN`` with a datalist (the first ``validation`` in fold 0) and dataset.json."""
    items = synthetic.write_dataset(root, count, seed=seed, spec=synthetic.MICRO_SPEC)
    listed = []
    for index, item in enumerate(items):
        renamed = {}
        for key in ("image", "label"):
            source = root / item[key]
            target = source.with_name(source.name.replace("case", prefix))
            source.rename(target)
            renamed[key] = str(target.relative_to(root))
        listed.append(renamed | {"fold": 0 if index < validation else 1})
    (root / "datalist.json").write_text(json.dumps({"training": listed}))
    (root / "dataset.json").write_text(json.dumps({"labels": names}))
    return root / "datalist.json"


def finetune(*args: str) -> int:
    """``vista-finetune finetune ARGS`` for one epoch, without the review (in the job environment when the tests run
    in the Slicer-Python one, as from Slicer)."""
    argv = ["finetune", *args, "--epochs", "1", "--learning-rate", "0.002", "--skip-review"]
    if SLICER_PYTHON:
        return subprocess.run([job_python(), "-m", "VistaFinetuneLib", *argv], env=child_environment()).returncode
    from VistaFinetuneLib.cli import main

    return main(argv)


def first_round(root: Path, bundle_dir: Path) -> Path:
    """Round 1: the left kidney (3 -> 14) on 3 micro phantoms (1 validates), liver and spleen set to background."""
    datalist = write_cases(root / "data1", 99, 3, 1, "a")
    run_dir = root / "run1"
    mapping = ["--label-mapping", "[[3, 14]]", "--unmapped", "background", "--auto-seg"]
    mapping += ["--bundle-dir", str(bundle_dir)]
    assert finetune("--datalist", str(datalist), "--output-dir", str(run_dir), *mapping) == 0
    return run_dir
