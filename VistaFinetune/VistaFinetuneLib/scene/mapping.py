"""Segment -> VISTA3D class mapping from the scene: suggestions, the user's choices, and what is wrong with them.

A choice is keyed by the segment name as the user typed it, so "Spleen" in every case maps once. Suggestions:
the class whose standard codes a segment's terminology entry carries; else the class the name resolves to
(:meth:`LabelCatalog.resolve`); else a free id >= 133 for a brand-new structure.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import slicer

from VistaFinetuneLib.bundle.labels import MAX_ID, LabelCatalog
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.scene.terminology import class_for_terminology

PARENT_CLASSES = {  # VISTA3D expands these into their parts (the bundle's "subclass" table)
    2: "left kidney (14) and right kidney (5)",
    20: "the five lung lobes (28-32)",
    21: "the individual bones (vertebrae, ribs, ...)",
}
PARAMETER_NAME = "SegmentMapping"


@dataclass(frozen=True)
class SegmentRef:
    """One segment of one segmentation node."""

    node_id: str
    node_name: str
    segment_id: str
    name: str
    terminology: str


@dataclass(frozen=True)
class ClassChoice:
    """The class one segment name maps to (``class_id`` None: leave the segment out) and why."""

    class_id: int | None
    source: str  # "terminology", "name", "new structure" or "user"
    note: str = ""


def collect_segments(segmentation_nodes: list[slicer.vtkMRMLSegmentationNode]) -> list[SegmentRef]:
    """Every segment of the nodes, in node and segment order."""
    refs = []
    for node in segmentation_nodes:
        segmentation = node.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            segment = segmentation.GetSegment(segment_id)
            refs.append(
                SegmentRef(
                    node.GetID(), node.GetName(), segment_id, segment.GetName().strip(), segment.GetTerminology()
                )
            )
    return refs


def suggest_choice(segment: SegmentRef, catalog: LabelCatalog) -> ClassChoice:
    """The class the segment's terminology or name identifies; else a "new structure" choice without an id yet."""
    by_code = class_for_terminology(segment.terminology)
    if by_code is not None and by_code in catalog.classes:
        return ClassChoice(by_code, "terminology", f"terminology entry codes {catalog.classes[by_code]}")
    try:
        class_id = catalog.resolve(segment.name)
    except UserError as error:
        return ClassChoice(None, "new structure", f"a new id: {error}")
    return ClassChoice(class_id, "name", f'"{segment.name}" is {catalog.classes[class_id]}')


def suggest_mapping(segments: list[SegmentRef], catalog: LabelCatalog) -> dict[str, ClassChoice]:
    """A choice per distinct segment name; names nothing identifies get the model's free ids (CT: 133 up), one each."""
    choices: dict[str, ClassChoice] = {}
    for segment in segments:
        if segment.name not in choices:
            choices[segment.name] = suggest_choice(segment, catalog)
    taken = {c.class_id for c in choices.values()}
    free = iter([i for i in catalog.free_ids() if i not in taken])
    for name, choice in choices.items():
        if choice.class_id is None and choice.source == "new structure":
            class_id = next(free, None)
            if class_id is None:
                raise UserError(f'segment "{name}" needs an id for a new structure: {catalog.free_ids_text()}')
            choices[name] = ClassChoice(class_id, "new structure", choice.note)
    return choices


def check_mapping(segments: list[SegmentRef], choices: dict[str, ClassChoice], catalog: LabelCatalog) -> list[str]:
    """Refuse unmapped segments, bad ids and two segments of one node mapped to one class; return warnings."""
    for segment in segments:
        if segment.name not in choices:
            raise UserError(
                f'segment "{segment.name}" of segmentation "{segment.node_name}" is not mapped to a VISTA3D class; '
                "choose a class for it, or leave it out explicitly"
            )
    for name, choice in choices.items():
        if choice.class_id is not None and not 1 <= choice.class_id <= MAX_ID:
            raise UserError(f'segment "{name}": VISTA3D id {choice.class_id} is not between 1 and {MAX_ID}')
    by_node: dict[tuple[str, int], str] = {}
    for segment in segments:
        class_id = choices[segment.name].class_id
        if class_id is None:
            continue
        other = by_node.setdefault((segment.node_id, class_id), segment.name)
        if other != segment.name:
            raise UserError(
                f'segmentation "{segment.node_name}": segments "{other}" and "{segment.name}" are both mapped to '
                f"VISTA3D class {class_id} ({catalog.name(class_id)}); map them to different classes, or merge them"
            )
    if all(c.class_id is None for c in choices.values()):
        raise UserError("no segment is mapped to a VISTA3D class; there is nothing to train on")
    warnings = []
    for name, choice in choices.items():
        if choice.class_id in PARENT_CLASSES:
            warnings.append(
                f'segment "{name}" -> class {choice.class_id} ({catalog.name(choice.class_id)}) is a parent class '
                f"that VISTA3D expands into {PARENT_CLASSES[choice.class_id]}; map to the part you drew, or the "
                "run must switch off the bundle's subclass expansion"
            )
        elif choice.class_id is not None and choice.class_id not in catalog.classes:
            warnings.append(
                f'segment "{name}" -> id {choice.class_id}: a new structure, learned from scratch; it needs point '
                "prompts at inference"
            )
    return warnings


def label_mappings(choices: dict[str, ClassChoice]) -> list[list[int]]:
    """The bundle's ``label_mappings`` for an export whose label values are the class ids themselves."""
    return [[c, c] for c in sorted({ch.class_id for ch in choices.values() if ch.class_id is not None})]


def save_choices(parameter_node: slicer.vtkMRMLScriptedModuleNode, choices: dict[str, ClassChoice]) -> None:
    """Keep the choices in the module's parameter node (one JSON parameter)."""
    parameter_node.SetParameter(PARAMETER_NAME, json.dumps({k: asdict(v) for k, v in choices.items()}))


def load_choices(parameter_node: slicer.vtkMRMLScriptedModuleNode) -> dict[str, ClassChoice]:
    """The choices kept by :func:`save_choices` (none yet: empty)."""
    text = parameter_node.GetParameter(PARAMETER_NAME)
    return {k: ClassChoice(**v) for k, v in json.loads(text).items()} if text else {}
