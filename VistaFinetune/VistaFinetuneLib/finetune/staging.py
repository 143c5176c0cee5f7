"""Generated override files for a run: everything the bundle's own configs leave to the caller.

Overrides only ever go into ``RUN_DIR/configs/``; user-supplied text (paths) passes through
:func:`config_text.literal` so MONAI's config parser never evaluates it.
"""

from __future__ import annotations

import re
from pathlib import Path

from VistaFinetuneLib.bundle.config_text import literal
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.finetune.plan import Plan

DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def device_expression(device: str) -> str:
    """A config expression for ``--device``, accepted only in the forms ``cpu``, ``cuda`` or ``cuda:N``."""
    if not DEVICE.match(device):
        raise UserError(f"--device {device!r}: use cpu, cuda or cuda:N")
    return f"$torch.device('{device}')"


def common_overrides(
    *,
    bundle_dir: Path,
    run_dir: Path,
    datalist: Path,
    label_mappings: list[list[int]],
    plan: Plan,
    device: str | None,
    auto_seg: bool,
) -> dict:
    """Overrides shared by every phase (training and both formal evaluations)."""
    overrides: dict = {
        "bundle_root": literal(str(bundle_dir)),
        "ckpt_dir": literal(str(run_dir / "checkpoints")),
        "output_dir": literal(str(run_dir / "eval")),
        "mlflow_dir": literal(str(run_dir / "mlruns")),
        "data_list_file_path": literal(str(datalist)),
        "dataset_dir": literal(str(datalist.parent)),
        "finetune_model_path": literal(str(bundle_dir / "models" / "model.pt")),
        "fold": 0,
        "label_mappings": {"default": label_mappings},
        "image_key": "image",
        "label_key": "label",
        "use_mlflow": False,
        "use_tensorboard": False,
        "epochs": plan.epochs,
        "train_dataset_cache_rate": plan.train_dataset_cache_rate,
        "n_train_samples": None,  # model-zoo vista3d <= 0.5.8 caps both at 10 cases: every case trains/validates
        "n_val_samples": None,
    }
    if plan.patch_size is not None:
        overrides["patch_size"] = plan.patch_size
    if plan.learning_rate is not None:
        overrides["learning_rate"] = plan.learning_rate
    if plan.num_workers is not None:
        overrides["train#dataloader#num_workers"] = plan.num_workers
        overrides["validate#dataloader#num_workers"] = plan.num_workers
    if device is not None and not plan.multi_gpu:  # multi_gpu_train.json's cuda:$LOCAL_RANK must stay
        overrides |= device_overrides(device)
    if auto_seg:
        overrides["drop_label_prob"] = 0.0
        overrides["drop_point_prob"] = 1.0
    return overrides


def device_overrides(device: str) -> dict:
    """``--device``: the device expression, and AMP off on the CPU."""
    overrides: dict = {"device": device_expression(device)}
    if device == "cpu":
        overrides["amp"] = False
        overrides["validate#evaluator#amp"] = False
    return overrides


def training_overrides() -> dict:
    """Keep the last epoch too: the bundle saves only the best-scoring checkpoint."""
    final_saver = {
        "_target_": "CheckpointSaver",
        "save_dir": "@ckpt_dir",
        "save_dict": {"model": "@network"},
        "save_final": True,
        "final_filename": "model_final.pt",
    }
    return {"+train#handlers": [final_saver]}


def evaluation_overrides(checkpoint: Path, output_dir: Path, device: str | None = None) -> dict:
    """Formal evaluation of one checkpoint, outputs in its own folder; ``device`` when the common overrides leave
    it out (multi-GPU training: the evaluations run in one process)."""
    overrides = {"ckpt_path": literal(str(checkpoint)), "output_dir": literal(str(output_dir))}
    return overrides | (device_overrides(device) if device is not None else {})
