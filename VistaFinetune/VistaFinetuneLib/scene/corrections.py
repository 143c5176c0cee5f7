"""A corrected prediction -> a case of the next round's training set, written with the followed run's label mapping.

The volume goes to ``imagesTr/NAME.nii.gz``; the segmentation's segments whose name (or terminology) resolves to a
class the run trained go to ``labelsTr/NAME.nii.gz`` as that class's *label value* in the run (the inverse of its
``label_mappings``), so the next round reads them with the run's own mapping. Segments of other classes are left
out and listed. Each added case is a training item of ``datalist.json`` and an entry of ``corrections.json``
(which run it corrects, which nodes it came from). The overlap rule is the export's (:mod:`scene.export`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import slicer

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.data.nifti import write_nifti
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.panel import correction
from VistaFinetuneLib.run_files import read_json, write_json_atomic
from VistaFinetuneLib.scene import nodes
from VistaFinetuneLib.scene.export import ExportCase, case_labels
from VistaFinetuneLib.scene.mapping import ClassChoice, collect_segments, suggest_choice


def case_name(volume: slicer.vtkMRMLScalarVolumeNode, taken: set[str]) -> str:
    """A file-safe case name from the volume's name, unique among ``taken``."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", volume.GetName()).strip("_") or "case"
    name, suffix = base, 2
    while name in taken:
        name, suffix = f"{base}_{suffix}", suffix + 1
    return name


def run_choices(
    segmentation: slicer.vtkMRMLSegmentationNode, mapping: list[list[int]], catalog: LabelCatalog
) -> tuple[dict[str, ClassChoice], list[str]]:
    """Each segment's class when the run trained it (else left out), and the names left out."""
    trained = {target for _, target in mapping}
    choices, left_out = {}, []
    for ref in collect_segments([segmentation]):
        choice = suggest_choice(ref, catalog)
        if choice.class_id in trained:
            choices[ref.name] = choice
        else:
            choices[ref.name] = ClassChoice(None, "user", "not a class of the run")
            left_out.append(ref.name)
    if not any(c.class_id is not None for c in choices.values()):
        classes = ", ".join(f"{t} {catalog.name(t)}" for t in sorted(trained))
        raise UserError(
            f'segmentation "{segmentation.GetName()}": none of its segments is a class the run trained ({classes}); '
            "name the corrected segment after one of them"
        )
    return choices, left_out


def add_correction(
    volume: slicer.vtkMRMLScalarVolumeNode,
    segmentation: slicer.vtkMRMLSegmentationNode,
    run_dir: Path,
    catalog: LabelCatalog,
) -> dict:
    """Write the pair as a training case of the run's corrections folder; return its entry in corrections.json."""
    if volume.GetParentTransformNode() is not None:
        raise UserError(f'volume "{volume.GetName()}" is under a transform; harden it before adding it')
    mapping = correction.run_mapping(run_dir)
    folder = correction.corrections_dir(run_dir)
    record = correction.read_corrections(run_dir)
    name = case_name(volume, {c["name"] for c in record["cases"]} | correction.run_case_names(run_dir, training=True))
    correction.refuse_validation_case(run_dir, name)
    choices, left_out = run_choices(segmentation, mapping, catalog)
    ids = case_labels(ExportCase(volume, segmentation, False), choices)
    values = np.zeros(ids.shape, dtype=np.uint8)
    for value, target in mapping:
        values[ids == target] = value
    image, label = folder / "imagesTr" / f"{name}.nii.gz", folder / "labelsTr" / f"{name}.nii.gz"
    affine = nodes.ijk_to_ras(volume)  # the CT's grid, which case_labels exported the segments onto
    for path, voxels in ((image, nodes.voxels(volume)), (label, values)):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_nifti(path, voxels, affine)
    entry = {
        "name": name,
        "image": str(image),
        "label": str(label),
        "volume": volume.GetName(),
        "segmentation": segmentation.GetName(),
        "correction_of": str(Path(run_dir).absolute()),
        "segments_left_out": left_out,
        "voxels_per_value": {str(v): int((values == v).sum()) for v, _ in mapping if (values == v).any()},
    }
    record["cases"].append(entry)
    write_json_atomic(folder / correction.RECORD, record)
    datalist = folder / "datalist.json"
    items = read_json(datalist)["training"] if datalist.is_file() else []
    write_json_atomic(datalist, {"training": [*items, {"image": str(image), "label": str(label), "fold": 1}]})
    return entry
