"""What a prediction leaves behind: a label NIfTI on the input image's exact grid and a JSON legend beside it,
each written to a temporary name and renamed, so no reader ever sees half a file."""

from __future__ import annotations

import colorsys
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.run_files import write_json_atomic

LEGEND_SUFFIX = ".legend.json"
MAX_UINT8_ID = 254  # uint8 files keep 255 free: older files and the bundle's own outputs use it for "not processed"
NOT_PROCESSED = 255  # the bundle's stand-in for NaN (not processed) in its own outputs
GOLDEN_RATIO = 0.618033988749895


def image_stem(path: Path) -> str:
    """``ct.nii.gz`` -> ``ct``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def legend_path(label_path: Path) -> Path:
    """``out/ct.nii.gz`` -> ``out/ct.legend.json``."""
    return label_path.with_name(image_stem(label_path) + LEGEND_SUFFIX)


def class_colour(class_id: int) -> list[int]:
    """A stable, well-spread RGB colour (0-255) for a class id."""
    red, green, blue = colorsys.hsv_to_rgb((class_id * GOLDEN_RATIO) % 1.0, 0.65, 0.95)
    return [round(red * 255), round(green * 255), round(blue * 255)]


def check_output_path(path: Path) -> Path:
    """An absolute ``.nii.gz``/``.nii`` path whose folder can be created."""
    path = Path(path).absolute()
    if not path.name.lower().endswith((".nii.gz", ".nii")):
        raise UserError(f"{path}: the output must be a .nii.gz or .nii file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{path.parent}: cannot create the output folder ({error.strerror})") from None
    return path


def label_array(labels: np.ndarray) -> np.ndarray:
    """Class ids in the narrowest type that holds them: uint8 up to 254, uint16 when an id exceeds 254
    (NV-Segment-CTMR's classes run to 345; a value is never wrapped). "Not processed" is not a value here."""
    values = np.asarray(labels)
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint16).max):
        raise ValueError(f"label values {values.min()}..{values.max()} are not class ids")
    if values.size and values.max() > MAX_UINT8_ID:
        return values.astype(np.uint16)
    return values.astype(np.uint8)


def unprocessed_mask(values: np.ndarray, class_ids: list[int] | None) -> np.ndarray:
    """The voxels the bundle did not process: NaN, or its stand-in value 255 when 255 is not a class asked for."""
    values = np.asarray(values)
    mask = ~np.isfinite(values) if values.dtype.kind == "f" else np.zeros(values.shape, dtype=bool)
    if NOT_PROCESSED not in set(class_ids or ()):
        mask |= values == NOT_PROCESSED
    return mask


def keeps_nan_as_255(transform: dict) -> bool:
    """Whether a post-processing transform of a bundle config is its ``torch.nan_to_num(x, nan=255)`` step."""
    return str(transform.get("_target_", "")).endswith("Lambdad") and "nan_to_num" in str(transform.get("func", ""))


def write_labels(image_path: Path, labels: np.ndarray, out_path: Path, start: tuple[int, ...] | None = None) -> None:
    """Write ``labels`` (on the image's grid; with ``start``, a box of it from that voxel on) as a uint8 NIfTI (uint16
    when an id exceeds 254) with the image file's own header and affine (shifted to the box)."""
    import nibabel as nib

    source = nib.load(str(image_path))
    data = label_array(labels)
    header = source.header.copy()
    header.set_data_dtype(data.dtype)
    affine = source.affine.copy()
    if start is not None:
        affine[:3, 3] += affine[:3, :3] @ np.asarray(start, dtype=float)
    image = nib.Nifti1Image(data, affine, header)
    image.header.set_slope_inter(1.0, 0.0)
    handle, temporary = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp.nii.gz", dir=out_path.parent)
    os.close(handle)
    if not out_path.name.lower().endswith(".gz"):
        os.unlink(temporary)
        temporary = temporary[: -len(".gz")]
    try:
        nib.save(image, temporary)
        os.replace(temporary, out_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def label_entries(labels: np.ndarray, class_ids: list[int] | None, name: Callable[[int], str]) -> dict[str, dict]:
    """Value -> name, colour and voxel count, for the values present and those asked for."""
    values, counts = np.unique(labels, return_counts=True)
    present = {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}
    wanted = sorted(set(present) | set(class_ids or []))
    return {str(v): {"name": name(v), "color": class_colour(v), "voxels": present.get(v, 0)} for v in wanted}


def write_prediction(image_path: Path, labels: np.ndarray, out_path: Path, legend: dict) -> Path:
    """Write the label file, then its legend; return the legend's path."""
    write_labels(image_path, labels, out_path)
    path = legend_path(out_path)
    write_json_atomic(path, legend)
    return path
