"""``--unmapped background``: copies of the training labels, in the run folder, with unmapped values set to 0.

The user's label files are only read. A case whose labels hold no unmapped value keeps its own file; the
others get ``RUN_DIR/dataset/labels/<case>.nii.gz``, on the same grid (header and affine kept) and dtype.
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from VistaFinetuneLib.data.dataset import Case, DatasetAudit
from VistaFinetuneLib.errors import UserError

LOAD_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)


def _write_without(source: Path, target: Path, dropped: list[int]) -> None:
    """Copy the label file ``source`` to ``target`` with the ``dropped`` values set to 0."""
    try:
        image = nib.load(source)
        data = np.asanyarray(image.dataobj)
    except LOAD_ERRORS as error:
        raise UserError(f"{source}: cannot read the label file ({error})") from error
    dtype = image.get_data_dtype()
    relabelled = np.where(np.isin(data, dropped), 0, data).astype(dtype)
    header = image.header.copy()
    header.set_slope_inter(None, None)
    target.parent.mkdir(parents=True, exist_ok=True)
    type(image)(relabelled, None, header).to_filename(target)


def stage_background(
    cases: list[Case], audit: DatasetAudit, mapped_values: list[int], out_dir: Path
) -> tuple[list[Case], dict]:
    """Cases whose labels hold only mapped values (relabelled copies where needed), and a record of what was
    dropped: the values, their voxels per case, and where the copies are."""
    keep = set(mapped_values)
    names = [case.name for case in cases]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(
            f"--unmapped background: several cases are named {twice[0]!r}; the staged copies are named after their "
            "case, so give each image its own file name"
        )
    voxels = {a.name: a.label_voxels for a in audit.cases}
    staged: list[Case] = []
    dropped_voxels: dict[str, dict[str, int]] = {}
    for case in cases:
        dropped = sorted(v for v in voxels[case.name] if v not in keep)
        if not dropped:
            staged.append(case)
            continue
        target = Path(out_dir) / f"{case.name}.nii.gz"
        _write_without(case.label, target, dropped)
        staged.append(replace(case, label=target))
        dropped_voxels[case.name] = {str(v): voxels[case.name][v] for v in dropped}
    values = sorted({int(v) for per_case in dropped_voxels.values() for v in per_case})
    record = {
        "policy": "background",
        "values_set_to_background": values,
        "voxels_set_to_background": dropped_voxels,
        "relabelled_cases": len(dropped_voxels),
        "staged_labels_dir": str(out_dir) if dropped_voxels else None,
    }
    return staged, record
