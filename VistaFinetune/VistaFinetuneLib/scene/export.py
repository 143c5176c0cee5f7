"""Export (volume, segmentation) pairs from the scene into a training set the engine reads.

For each case: ``imagesTr/NAME.nii.gz`` (the volume as it is) and ``labelsTr/NAME.nii.gz`` (the mapped segments
as VISTA3D class ids on the volume's exact grid; a segmentation on another grid is resampled onto it by Slicer's
segmentation logic), plus ``datalist.json`` (fold 0 = the cases the user chose for validation) and
``export.json`` (which node became which file, the mapping, the overlap rule). Label values are the class ids
themselves, so the bundle's ``label_mappings`` is the identity on them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.data.nifti import write_nifti
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.run_files import write_json_atomic
from VistaFinetuneLib.scene import nodes
from VistaFinetuneLib.scene.mapping import ClassChoice, check_mapping, collect_segments, label_mappings

OVERLAP_RULE = (
    "Where segments overlap, a voxel takes the class of the smallest segment (fewest voxels on the volume's "
    "grid; ties go to the segment listed later), so a lesion drawn inside its organ stays a lesion."
)


@dataclass(frozen=True)
class ExportCase:
    """A volume, the segmentation drawn on it (None: not chosen yet) and whether it validates or trains."""

    volume: slicer.vtkMRMLScalarVolumeNode
    segmentation: slicer.vtkMRMLSegmentationNode | None
    validation: bool


@dataclass(frozen=True)
class ExportedCase:
    """One written case."""

    name: str
    image: Path
    label: Path
    fold: int
    voxels_per_class: dict[int, int]


@dataclass(frozen=True)
class TrainingSet:
    """What an export wrote, and how to start a finetune on it."""

    dataset_dir: Path
    datalist: Path
    label_mappings: list[list[int]]
    cases: list[ExportedCase]
    class_names: dict[int, str]  # the user's segment name of each mapped class (the first, if several)
    warnings: list[str] = field(default_factory=list)

    def finetune_arguments(self) -> list[str]:
        """The ``vista-finetune finetune`` arguments that train on this export."""
        names = json.dumps({str(k): v for k, v in self.class_names.items()})
        return ["--datalist", str(self.datalist), "--label-mapping", json.dumps(self.label_mappings),
                "--class-names", names]  # fmt: skip


def _case_names(cases: list[ExportCase]) -> list[str]:
    """File-safe, unique case names from the volume node names."""
    names: list[str] = []
    for case in cases:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", case.volume.GetName()).strip("_") or "case"
        name, suffix = base, 2
        while name in names:
            name, suffix = f"{base}_{suffix}", suffix + 1
        names.append(name)
    return names


def _check_cases(cases: list[ExportCase]) -> None:
    if not cases:
        raise UserError("no cases chosen: pick at least one volume with its segmentation")
    for case in cases:
        if case.volume.GetParentTransformNode() is not None:
            raise UserError(
                f'volume "{case.volume.GetName()}" is under the transform '
                f'"{case.volume.GetParentTransformNode().GetName()}"; harden it (or remove it) before exporting, '
                "so that the exported file has the geometry you see"
            )
        if case.segmentation is None:
            raise UserError(
                f'volume "{case.volume.GetName()}" has no segmentation; choose the segmentation drawn on it, '
                "or leave the volume out"
            )
    if all(case.validation for case in cases) or not any(case.validation for case in cases):
        raise UserError(
            f"{sum(c.validation for c in cases)} of {len(cases)} cases are marked for validation; the bundle needs "
            "at least one validation case and one training case"
        )


def segment_voxels(segmentation: slicer.vtkMRMLSegmentationNode, segment_id: str) -> int:
    """How many voxels the segment holds on its own grid."""
    image = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentation, segment_id, image)
    scalars = image.GetPointData().GetScalars()
    return 0 if scalars is None else int(np.count_nonzero(numpy_support.vtk_to_numpy(scalars)))


def segment_mask(
    segmentation: slicer.vtkMRMLSegmentationNode, segment_id: str, volume: slicer.vtkMRMLScalarVolumeNode
) -> np.ndarray:
    """The segment as a boolean ``[i, j, k]`` mask on the volume's grid (resampled when its grid differs)."""
    scene = segmentation.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "VistaFinetune export (temporary)")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        done = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation, ids, labelmap, volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        )
        if not done:
            raise UserError(
                f'segmentation "{segmentation.GetName()}": segment {segment_id} could not be exported onto '
                f'volume "{volume.GetName()}"'
            )
        return nodes.voxels(labelmap) > 0
    finally:
        display = labelmap.GetDisplayNode()
        scene.RemoveNode(labelmap)
        if display is not None:
            scene.RemoveNode(display)


def case_labels(case: ExportCase, choices: dict[str, ClassChoice]) -> np.ndarray:
    """The case's mapped segments as class ids on the volume's grid (uint8, ``[i, j, k]``), overlap rule applied."""
    segmentation, volume = case.segmentation, case.volume
    where = f'segmentation "{segmentation.GetName()}" (volume "{volume.GetName()}")'
    refs = collect_segments([segmentation])
    if not refs or all(segment_voxels(segmentation, ref.segment_id) == 0 for ref in refs):
        raise UserError(f"{where} is empty: it has no segment with any voxel painted")
    mapped = [ref for ref in refs if choices[ref.name].class_id is not None]
    painted = [ref for ref in mapped if segment_voxels(segmentation, ref.segment_id) > 0]
    if not painted:
        raise UserError(f"{where} holds none of the mapped segments (its segments: {[r.name for r in refs]})")
    masks = [(ref, segment_mask(segmentation, ref.segment_id, volume)) for ref in painted]
    if not any(mask.any() for _, mask in masks):
        raise UserError(f"{where} does not overlap its volume: none of its painted voxels lie inside the volume")
    shape = nodes.voxels(volume).shape
    labels = np.zeros(shape, dtype=np.uint8)
    order = sorted(range(len(masks)), key=lambda i: (-int(masks[i][1].sum()), i))
    for index in order:
        ref, mask = masks[index]
        labels[mask] = choices[ref.name].class_id
    return labels


@dataclass(frozen=True)
class CaseArrays:
    """One case read from the scene, ready to be written by any thread (no MRML object in it)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    fold: int


class TrainingSetWriter:
    """An export in steps, so that Slicer never waits on files: :meth:`read_case` takes one case from the scene
    (MRML: the GUI thread, one case at a time), :meth:`write_case` writes its two files (any thread), and
    :meth:`finish` writes the datalist and the manifest."""

    def __init__(
        self, cases: list[ExportCase], choices: dict[str, ClassChoice], catalog: LabelCatalog, dataset_dir: Path
    ) -> None:
        self.dataset_dir = Path(dataset_dir).absolute()
        if self.dataset_dir.exists() and any(self.dataset_dir.iterdir()):
            raise UserError(f"{self.dataset_dir}: the folder already holds files; export into a new folder")
        _check_cases(cases)
        self.cases, self.choices, self.catalog = cases, choices, catalog
        self.names = _case_names(cases)
        self.warnings = check_mapping(collect_segments([c.segmentation for c in cases]), choices, catalog)
        self.segmentation_names = [c.segmentation.GetName() for c in cases]
        self.volume_names = [c.volume.GetName() for c in cases]
        self.exported: list[ExportedCase] = []

    def read_case(self, index: int) -> CaseArrays:
        """Case ``index`` as arrays: its voxels, its mapped labels on the volume's grid and its affine (GUI thread)."""
        case = self.cases[index]
        labels = case_labels(case, self.choices)
        fold = 0 if case.validation else 1
        return CaseArrays(self.names[index], nodes.voxels(case.volume).copy(), labels, nodes.ijk_to_ras(case.volume),
                          fold)  # fmt: skip

    def write_case(self, arrays: CaseArrays) -> ExportedCase:
        """Write one case's image and label files (no MRML: any thread)."""
        image = self.dataset_dir / "imagesTr" / f"{arrays.name}.nii.gz"
        label = self.dataset_dir / "labelsTr" / f"{arrays.name}.nii.gz"
        for path, voxels in ((image, arrays.image), (label, arrays.labels)):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_nifti(path, voxels, arrays.affine)
        values, counts = np.unique(arrays.labels[arrays.labels > 0], return_counts=True)
        voxels = dict(zip(values.tolist(), counts.tolist(), strict=True))
        exported = ExportedCase(arrays.name, image, label, arrays.fold, voxels)
        self.exported.append(exported)
        return exported

    def finish(self) -> TrainingSet:
        """Write the datalist and the manifest of the cases written; the training set."""
        exported = sorted(self.exported, key=lambda e: self.names.index(e.name))
        items = [{"image": f"imagesTr/{e.name}.nii.gz", "label": f"labelsTr/{e.name}.nii.gz", "fold": e.fold}
                 for e in exported]  # fmt: skip
        datalist = self.dataset_dir / "datalist.json"
        write_json_atomic(datalist, {"training": items})
        pairs = label_mappings(self.choices)
        catalog = self.catalog
        manifest = {
            "cases": [
                {"name": e.name, "volume": self.volume_names[i], "segmentation": self.segmentation_names[i],
                 "fold": e.fold, "voxels_per_class": {str(k): v for k, v in e.voxels_per_class.items()}}
                for e in exported for i in [self.names.index(e.name)]
            ],
            "mapping": {name: {"class_id": ch.class_id,
                               "class_name": catalog.name(ch.class_id) if ch.class_id else None,
                               "source": ch.source, "note": ch.note} for name, ch in self.choices.items()},
            "label_mappings": pairs,
            "overlap_rule": OVERLAP_RULE,
            "warnings": self.warnings,
        }  # fmt: skip
        write_json_atomic(self.dataset_dir / "export.json", manifest)
        names: dict[int, str] = {}
        for name, choice in self.choices.items():
            if choice.class_id is not None:
                names.setdefault(choice.class_id, name)
        return TrainingSet(self.dataset_dir, datalist, pairs, exported, names, self.warnings)


def export_training_set(
    cases: list[ExportCase], choices: dict[str, ClassChoice], catalog: LabelCatalog, dataset_dir: Path
) -> TrainingSet:
    """Write every case, the datalist and the manifest into ``dataset_dir`` (a new or empty folder), at once."""
    writer = TrainingSetWriter(cases, choices, catalog, dataset_dir)
    for index in range(len(cases)):
        writer.write_case(writer.read_case(index))
    return writer.finish()
