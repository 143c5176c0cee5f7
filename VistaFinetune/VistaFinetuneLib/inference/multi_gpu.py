"""A folder batch over several GPUs: torchrun over the bundle's own multi-GPU inference stack
(``inference.json`` + ``batch_inference.json`` + ``mgpu_inference.json``, NV-Segment-CT/CTMR ship them), then each of
the bundle's outputs adopted as this engine's label file and legend.

Only the command and the adoption of outputs can be tested without GPUs; the torchrun itself cannot.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from VistaFinetuneLib.bundle.runner import BundleRun
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.inference.models import ModelSpec, sha256_of
from VistaFinetuneLib.inference.outputs import (
    NOT_PROCESSED,
    image_stem,
    label_array,
    label_entries,
    unprocessed_mask,
    write_prediction,
)
from VistaFinetuneLib.inference.prompts import ClassTable
from VistaFinetuneLib.inference.run_configs import applicable_overrides

MULTI_GPU_CONFIGS = ("configs/inference.json", "configs/batch_inference.json", "configs/mgpu_inference.json")


def multi_gpu_run(model: ModelSpec, input_dir: Path, work_dir: Path, class_ids: list[int], gpus: int) -> BundleRun:
    """The torchrun of the bundle's multi-GPU batch inference over ``input_dir`` (outputs in ``work_dir/bundle``)."""
    if NOT_PROCESSED in class_ids:
        raise UserError(
            f"class {NOT_PROCESSED}: the bundle's multi-GPU run writes {NOT_PROCESSED} for 'not processed', so this "
            "class cannot be told from it there; segment it on one GPU (without --gpus)"
        )
    configs = [model.bundle_dir / name for name in MULTI_GPU_CONFIGS]
    missing = [str(p.relative_to(model.bundle_dir)) for p in configs if not p.is_file()]
    if missing:
        raise UserError(f"{model.bundle_dir}: no multi-GPU inference ({', '.join(missing)} missing); use one GPU")
    inference = json.loads(configs[0].read_text(encoding="utf-8"))
    checkpoint_key = "checkpoint_path" if "checkpoint_path" in inference else "checkpointloader#load_path"
    overrides = (
        applicable_overrides(configs, model.config_overrides)
        | {
            "bundle_root": str(model.bundle_dir),
            "input_dir": str(Path(input_dir).absolute()),
            "output_dir": str(work_dir / "bundle"),
            checkpoint_key: str(model.checkpoint),
            "everything_labels": class_ids,  # batch_inference.json prompts every image with this list
        }
        | model.run_overrides(inference["evaluator"]["_target_"])
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    override_file = work_dir / "multi_gpu_overrides.json"
    override_file.write_text(json.dumps(overrides, indent=2) + "\n")
    return BundleRun(
        bundle_dir=model.bundle_dir,
        config_files=[*configs, override_file],
        cwd=work_dir,
        log_path=work_dir / "multi_gpu_inference.log",
        args_path=work_dir / "multi_gpu_args.json",
        nproc_per_node=gpus,
    )


def adopt_bundle_output(
    model: ModelSpec, table: ClassTable, image: Path, bundle_output: Path, out_path: Path, class_ids: list[int]
) -> Path:
    """Turn the bundle's float label file (255 = not processed) into this engine's label file and legend."""
    import nibabel as nib

    values = np.asarray(nib.load(str(bundle_output)).dataobj)
    shape = nib.load(str(image)).shape
    if values.shape != shape:
        raise UserError(f"{bundle_output}: shape {values.shape} is not the image's {shape} ({image})")
    unprocessed = unprocessed_mask(values, [])
    labels = label_array(np.where(unprocessed, 0, values))
    legend = {
        "image": str(image),
        "labels_file": str(out_path),
        "labels": {"0": {"name": "background", "color": [0, 0, 0]}} | label_entries(labels, class_ids, table.name),
        "model": model.name,
        "weights": model.weights,
        "checkpoint": str(model.checkpoint),
        "checkpoint_sha256": sha256_of(model.checkpoint),
        "bundle_dir": str(model.bundle_dir),
        "run_dir": None if model.run_dir is None else str(model.run_dir),
        "prompts": {"classes": class_ids, "points_ijk": None, "point_labels": None, "multi_gpu": True},
        "unprocessed_voxels": int(unprocessed.sum()),
    }
    return write_prediction(image, labels, out_path, legend)


def bundle_output_of(work_dir: Path, image: Path) -> Path:
    """Where the bundle's SaveImaged put the prediction of ``image`` (``<stem>/<stem>_trans.nii.gz``)."""
    stem = image_stem(image)
    found = sorted((work_dir / "bundle").rglob(f"{stem}_trans.nii*"))
    if not found:
        raise UserError(f"{image}: the multi-GPU run wrote no prediction for it; see {work_dir}")
    return found[0]
