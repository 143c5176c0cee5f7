"""How the tiny reference bundle's "pretrained" weights are made: the bundle's own ``train.json`` +
``train_continual.json`` trained from scratch on synthetic phantoms in which only the liver is labelled.

Training on a CPU is not bit-reproducible across thread counts and machines, which is why the weights are shipped
(:mod:`VistaFinetuneLib.bundle.tiny_bundle`) rather than rebuilt; ``vista-finetune tiny-bundle --rebuild`` makes them
again the same way. A test checks that the shipped record's build key still matches the template, the phantom
generator and the recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from VistaFinetuneLib.bundle.runner import BundleRun, run_bundle
from VistaFinetuneLib.bundle.source import sha256_file
from VistaFinetuneLib.bundle.tiny_bundle import PRETRAINED_CLASS, TEMPLATE_DIR, copy_template, ignored
from VistaFinetuneLib.data import synthetic

EPOCH_LINE = re.compile(r"Epoch\[(\d+)\] Metrics -- .*val_mean_dice: ([0-9.]+)")


@dataclass(frozen=True)
class PretrainRecipe:
    """How the tiny bundle's pretrained weights are made."""

    num_cases: int = 17
    num_val_cases: int = 3
    epochs: int = 10
    learning_rate: float = 0.002
    drop_label_prob: float = 0.0
    drop_point_prob: float = 0.5
    seed: int = 20261123


RECIPE = PretrainRecipe()


def build_key(recipe: PretrainRecipe = RECIPE) -> str:
    """A digest of what shapes the weights: the configs and scripts, the phantom generator, the recipe."""
    digest = hashlib.sha256()
    for path in sorted(p for p in TEMPLATE_DIR.rglob("*") if p.is_file() and not ignored(p.relative_to(TEMPLATE_DIR))):
        digest.update(path.relative_to(TEMPLATE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update(Path(synthetic.__file__).read_bytes())
    digest.update(json.dumps(asdict(recipe), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def write_pretraining_data(work_dir: Path, recipe: PretrainRecipe) -> tuple[Path, Path]:
    """Phantoms labelled with the liver only, and a datalist with fold 0 as validation."""
    data_dir = work_dir / "data"
    spec = synthetic.PhantomSpec(label_values={PRETRAINED_CLASS[0]: 1})
    items = synthetic.write_dataset(data_dir, recipe.num_cases, seed=recipe.seed, spec=spec)
    for index, item in enumerate(items):
        item["fold"] = 0 if index < recipe.num_val_cases else 1
    datalist = work_dir / "datalist.json"
    datalist.write_text(json.dumps({"training": items}, indent=2) + "\n")
    return data_dir, datalist


def pretrain_overrides(bundle_dir: Path, work_dir: Path, data_dir: Path, datalist: Path, recipe: PretrainRecipe):
    """Overrides that train from scratch and save the best checkpoint as ``models/model.pt``."""
    return {
        "bundle_root": str(bundle_dir),
        "ckpt_dir": str(bundle_dir / "models"),
        "output_dir": str(work_dir / "eval"),
        "data_list_file_path": str(datalist),
        "dataset_dir": str(data_dir),
        "finetune": False,
        "val_at_start": False,
        "epochs": recipe.epochs,
        "learning_rate": recipe.learning_rate,
        "drop_label_prob": recipe.drop_label_prob,
        "drop_point_prob": recipe.drop_point_prob,
        "lr_schedule#activate": True,
        "label_mappings": {"default": [[1, PRETRAINED_CLASS[1]]]},
        "validate#handlers#3#key_metric_filename": "model.pt",
    }


def build_tiny_bundle(dest: Path, recipe: PretrainRecipe = RECIPE, log: Callable[[str], None] = print) -> dict:
    """Build the bundle at ``dest`` (which must not exist): copy the template, pretrain, record the trajectory."""
    work_dir = dest.with_name(dest.name + ".work")
    shutil.rmtree(work_dir, ignore_errors=True)
    copy_template(dest)
    data_dir, datalist = write_pretraining_data(work_dir, recipe)
    overrides = work_dir / "pretrain_overrides.json"
    overrides.write_text(json.dumps(pretrain_overrides(dest, work_dir, data_dir, datalist, recipe), indent=2))
    configs = dest / "configs"
    run = BundleRun(
        bundle_dir=dest,
        config_files=[configs / "train.json", configs / "train_continual.json", overrides],
        cwd=work_dir,
        log_path=work_dir / "pretrain.log",
        args_path=work_dir / "pretrain_args.json",
    )
    dice_per_epoch: list[float] = []

    def on_line(line: str) -> None:
        match = EPOCH_LINE.search(line)
        if match:
            dice_per_epoch.append(float(match.group(2)))
            log(f"  pretraining epoch {match.group(1)}/{recipe.epochs}: val_mean_dice {float(match.group(2)):.3f}")

    started = time.monotonic()
    code = run_bundle(run, on_line)
    weights = dest / "models" / "model.pt"
    if code != 0 or not weights.is_file():
        raise RuntimeError(f"pretraining the tiny bundle failed (exit code {code}); see {run.log_path}")
    record = {
        "recipe": asdict(recipe),
        "class": {"name": PRETRAINED_CLASS[0], "id": PRETRAINED_CLASS[1]},
        "val_mean_dice_per_epoch": dice_per_epoch,
        "best_val_mean_dice": max(dice_per_epoch),
        "seconds": round(time.monotonic() - started, 1),
        "build_key": build_key(recipe),
        "weights_sha256": sha256_file(weights),
        "built_with": {p: metadata.version(p) for p in ("monai", "torch", "numpy")}
        | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    }
    (dest / "docs").mkdir(exist_ok=True)
    (dest / "docs" / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(work_dir, ignore_errors=True)
    return record
