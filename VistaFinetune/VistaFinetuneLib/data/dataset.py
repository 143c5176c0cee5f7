"""The training dataset: find image/label pairs, read a datalist, audit the NIfTI files, split into folds.

The VISTA3D bundle validates on the items whose ``fold`` is 0 and trains on all others (an item without a
fold is a training item), reading paths relative to the dataset folder or absolute.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from VistaFinetuneLib.data.geometry import ijk_to_ras, voxel_spacing_mm
from VistaFinetuneLib.data.nifti import READ_ERRORS, read_nifti
from VistaFinetuneLib.errors import UserError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MAX_PERCENTILE_SAMPLES = 4_000_000  # larger images get percentiles from an evenly strided sample


@dataclass(frozen=True)
class Case:
    """One image/label pair; ``fold`` 0 is validation, any other value or None is training."""

    name: str
    image: Path
    label: Path
    fold: int | None = None


def nifti_name(path: Path) -> str | None:
    """The basename without .nii/.nii.gz, or None for anything else (hidden files included)."""
    if path.name.startswith("."):
        return None
    for suffix in NIFTI_SUFFIXES:
        if path.name.lower().endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _nifti_files(folder: Path) -> dict[str, Path]:
    """Name -> file for the NIfTI files in ``folder``; two files with one name are an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = nifti_name(path)
        if name is None or not path.is_file():
            continue
        if name in found:
            raise UserError(f"{path}: another file in {folder} has the same name ({found[name].name}); keep one")
        found[name] = path.absolute()
    return found


def find_cases(dataset_dir: Path) -> list[Case]:
    """Pair ``imagesTr/NAME.nii[.gz]`` with ``labelsTr/NAME.nii[.gz]``, sorted by name."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        problem = "is not a folder" if dataset_dir.exists() else "does not exist"
        raise UserError(f"{dataset_dir}: the dataset folder {problem}")
    folders = {}
    for sub in ("imagesTr", "labelsTr"):
        if not (dataset_dir / sub).is_dir():
            raise UserError(f"{dataset_dir / sub}: missing; a dataset folder holds imagesTr/ and labelsTr/")
        folders[sub] = _nifti_files(dataset_dir / sub)
    images, labels = folders["imagesTr"], folders["labelsTr"]
    if not images:
        raise UserError(f"{dataset_dir / 'imagesTr'}: no .nii or .nii.gz images in the folder")
    for name, image in images.items():
        if name not in labels:
            raise UserError(f"{image}: the image has no label (expected labelsTr/{name}.nii.gz or .nii)")
    for name, label in labels.items():
        if name not in images:
            raise UserError(f"{label}: the label has no image (expected imagesTr/{name}.nii.gz or .nii)")
    return [Case(name, images[name], labels[name]) for name in sorted(images)]


def read_datalist(datalist: Path, dataset_dir: Path | None) -> list[Case]:
    """Cases from a datalist's ``training`` list; relative paths start at ``dataset_dir`` (default: its folder)."""
    datalist = Path(datalist)
    base = Path(dataset_dir) if dataset_dir is not None else datalist.parent
    try:
        content = json.loads(datalist.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{datalist}: cannot read the datalist ({error})") from error
    except json.JSONDecodeError as error:
        raise UserError(f"{datalist}: not valid JSON ({error})") from error
    if not isinstance(content, dict) or not isinstance(content.get("training"), list):
        raise UserError(f'{datalist}: no "training" list (expected {{"training": [{{"image": ..., "label": ...}}]}})')
    cases = []
    for index, item in enumerate(content["training"]):
        where = f'{datalist}: "training" item {index}'
        if not isinstance(item, dict):
            raise UserError(f"{where} is not an object with image and label")
        paths = {}
        for key in ("image", "label"):
            value = item.get(key)
            if not isinstance(value, str) or not value:
                raise UserError(f'{where} has no "{key}" path (a single file path string is required)')
            path = (base / value).absolute()
            if not path.is_file():
                raise UserError(f"{where}: the {key} file {path} does not exist")
            paths[key] = path
        fold = item.get("fold")
        if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int)):
            raise UserError(f"{where} has fold {fold!r}; a fold must be an integer")
        name = nifti_name(paths["image"]) or paths["image"].name
        cases.append(Case(name, paths["image"], paths["label"], fold))
    return cases


@dataclass(frozen=True)
class CaseAudit:
    """What one image/label pair holds."""

    name: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    label_voxels: dict[int, int]
    label_volumes_ml: dict[int, float]
    hu_p1: float
    hu_p50: float
    hu_p99: float
    looks_like_ct: bool
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetAudit:
    """The audits of all cases and the label values found."""

    cases: list[CaseAudit]
    label_values: list[int]

    def to_json(self) -> dict:
        """A JSON-ready dict (label values become string keys)."""
        cases = []
        for case in self.cases:
            entry = asdict(case)
            entry["shape"] = list(case.shape)
            entry["spacing_mm"] = list(case.spacing_mm)
            entry["label_voxels"] = {str(k): v for k, v in case.label_voxels.items()}
            entry["label_volumes_ml"] = {str(k): v for k, v in case.label_volumes_ml.items()}
            cases.append(entry)
        return {"cases": cases, "label_values": list(self.label_values)}


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(3D data with scl_slope/inter applied, affine); UserError naming the file if it cannot be read."""
    try:
        data, affine = read_nifti(path)
    except READ_ERRORS as error:
        raise UserError(f"{path}: cannot read the NIfTI file; it may be corrupt or truncated ({error})") from error
    if data.ndim < 3 or any(size != 1 for size in data.shape[3:]):
        raise UserError(f"{path}: shape {data.shape} is not a single 3D volume")
    return data.reshape(data.shape[:3]), affine


def _grid_mismatch_mm(affine_a: np.ndarray, affine_b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where two affines put the corner voxels of a volume."""
    corners = np.array(np.meshgrid(*[[0, size - 1] for size in shape[:3]], indexing="ij")).reshape(3, -1).T
    return float(np.linalg.norm(ijk_to_ras(affine_a, corners) - ijk_to_ras(affine_b, corners), axis=1).max())


def audit_case(case: Case, affine_tolerance_mm: float = 0.01) -> CaseAudit:
    """Read one pair fully and check that the label fits the image; UserError naming the file otherwise."""
    image, image_affine = _load(case.image)
    label, label_affine = _load(case.label)
    if image.shape != label.shape:
        raise UserError(f"{case.label}: shape {label.shape} differs from the image shape {image.shape} ({case.image})")
    mismatch = _grid_mismatch_mm(image_affine, label_affine, image.shape)
    if mismatch > affine_tolerance_mm:
        raise UserError(
            f"{case.label}: the label's voxel-to-world affine differs from the image's ({case.image}) by up to "
            f"{mismatch:.4g} mm (tolerance {affine_tolerance_mm} mm); save the label on the image's grid"
        )
    if label.dtype.kind == "f":
        fractional = ~np.isfinite(label) | (label != np.round(label))
        if fractional.any():
            raise UserError(f"{case.label}: the label has non-integer values (e.g. {label[fractional].flat[0]!r})")
    low, high = (label.min(), label.max()) if label.size else (0, 0)
    if low < 0 or high >= 255:
        raise UserError(f"{case.label}: label values must be 0..254; found values from {low:g} to {high:g}")
    counts = np.zeros(255, dtype=np.int64)
    for plane in label.T:  # one slice at a time keeps the integer copy small
        counts += np.bincount(np.ravel(plane, order="K").astype(np.intp), minlength=255)
    spacing = np.asarray(voxel_spacing_mm(image_affine))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    voxels = {value: int(count) for value, count in enumerate(counts) if value > 0 and count > 0}
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise UserError(f"{case.image}: the image holds NaN or infinite values")
    step = max(1, image.size // MAX_PERCENTILE_SAMPLES)
    p1, p50, p99 = (float(v) for v in np.percentile(np.ravel(image, order="K")[::step], [1, 50, 99]))
    warnings = []
    # Air below -500 HU and tissue above 0; -3100 allows the -3024/-2048 padding outside a scanner's field of view.
    looks_like_ct = p1 < -500 and p99 > 0 and p1 >= -3100 and p99 <= 4000
    if not looks_like_ct:
        warnings.append(
            f"{case.image}: does not look like CT in Hounsfield units (1st/50th/99th percentiles {p1:g}/{p50:g}/"
            f"{p99:g}); VISTA3D expects CT intensities in HU"
        )
    if not voxels:
        warnings.append(f"{case.label}: the label is empty (background only)")
    return CaseAudit(
        name=case.name,
        shape=(int(image.shape[0]), int(image.shape[1]), int(image.shape[2])),
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        label_voxels=voxels,
        label_volumes_ml={value: count * voxel_ml for value, count in voxels.items()},
        hu_p1=p1,
        hu_p50=p50,
        hu_p99=p99,
        looks_like_ct=looks_like_ct,
        warnings=warnings,
    )


def audit_cases(cases: list[Case], affine_tolerance_mm: float = 0.01) -> DatasetAudit:
    """Audit every case; the affine tolerance is the largest allowed corner-voxel displacement in mm."""
    audits = [audit_case(case, affine_tolerance_mm) for case in cases]
    values = sorted({value for audit in audits for value in audit.label_voxels})
    return DatasetAudit(audits, values)


def assign_folds(cases: list[Case], seed: int = 0, num_folds: int = 5) -> list[Case]:
    """Keep given folds (fold 0 required), or shuffle with ``seed`` and give fold 0 about 1/num_folds of the cases."""
    if any(case.fold is not None for case in cases):
        if not any(case.fold == 0 for case in cases):
            raise UserError("no validation case: no item has fold 0")
        if all(case.fold == 0 for case in cases):
            raise UserError("no training case: every item has fold 0")
        return sorted(cases, key=lambda case: case.name)
    if len(cases) < 2:
        raise UserError(f"{len(cases)} case(s): need at least two, one for training and one for validation")
    if num_folds < 2:
        raise UserError(f"num_folds is {num_folds}; it must be at least 2")
    order = sorted(cases, key=lambda case: case.name)
    random.Random(seed).shuffle(order)
    num_val = min(max(1, round(len(order) / num_folds)), len(order) - 1)
    folds = [0] * num_val + [1 + index % (num_folds - 1) for index in range(len(order) - num_val)]
    assigned = [Case(case.name, case.image, case.label, fold) for case, fold in zip(order, folds, strict=True)]
    return sorted(assigned, key=lambda case: case.name)


def write_datalist(cases: list[Case], path: Path) -> None:
    """Write ``{"training": [...]}`` with absolute paths, sorted by name, atomically (a case without fold has none)."""
    path = Path(path)
    items = []
    for case in sorted(cases, key=lambda case: case.name):
        item: dict[str, str | int] = {"image": str(Path(case.image).absolute())}
        item["label"] = str(Path(case.label).absolute())
        if case.fold is not None:
            item["fold"] = case.fold
        items.append(item)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump({"training": items}, stream, indent=2, ensure_ascii=False)
            stream.write("\n")
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
