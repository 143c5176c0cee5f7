"""Segment terminology: the shipped VISTA3D class -> SNOMED CT table and Slicer's ``TerminologyEntry`` strings.

A serialized entry is ``context~category~type~modifier~regionContext~region~regionModifier``, each code written
``scheme^value^meaning`` (``vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry``).
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from functools import lru_cache

import slicer

from VistaFinetuneLib.resources import RESOURCES

TABLE_PATH = RESOURCES / "Terminology" / "vista3d_snomed.json"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
GOLDEN_RATIO = 0.618033988749895


@dataclass(frozen=True)
class ClassTerminology:
    """The standard codes of one VISTA3D class: ``(scheme, value, meaning)`` triples and a display colour."""

    class_id: int
    context: str
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    modifier: tuple[str, str, str] | None
    color: tuple[int, int, int] | None

    def serialized(self) -> str:
        """The segment's ``TerminologyEntry`` tag value."""
        modifier = self.modifier or ("", "", "")
        return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
            self.context,
            self.category[1], self.category[0], self.category[2],
            self.type[1], self.type[0], self.type[2],
            modifier[1], modifier[0], modifier[2],
            REGION_CONTEXT, "", "", "", "", "", "",
        )  # fmt: skip


@lru_cache(maxsize=1)
def class_table() -> dict[int, ClassTerminology]:
    """The shipped table, by VISTA3D class id (only classes with standard codes are in it)."""
    content = json.loads(TABLE_PATH.read_text(encoding="utf-8"))
    table = {}
    for key, entry in content["classes"].items():
        table[int(key)] = ClassTerminology(
            class_id=int(key),
            context=entry["context"],
            category=tuple(entry["category"]),
            type=tuple(entry["type"]),
            modifier=tuple(entry["modifier"]) if entry["modifier"] else None,
            color=tuple(entry["color"]) if entry["color"] else None,
        )
    return table


def type_codes(serialized: str) -> tuple[str, str] | None:
    """``(type code value, modifier code value)`` of a serialized entry; None when it has no type code."""
    parts = serialized.split("~")
    if len(parts) < 4:
        return None
    type_value = parts[2].split("^")[1] if parts[2].count("^") >= 1 else ""
    modifier_value = parts[3].split("^")[1] if parts[3].count("^") >= 1 else ""
    return (type_value, modifier_value) if type_value else None


def class_for_terminology(serialized: str) -> int | None:
    """The VISTA3D class whose standard type (and modifier) codes the entry carries, if any."""
    codes = type_codes(serialized)
    if codes is None:
        return None
    for class_id, entry in class_table().items():
        if (entry.type[1], entry.modifier[1] if entry.modifier else "") == codes:
            return class_id
    return None


def class_color(class_id: int) -> tuple[float, float, float]:
    """RGB in [0, 1]: the standard colour of the class, else a distinct colour derived from its id."""
    entry = class_table().get(class_id)
    if entry is not None and entry.color is not None:
        return tuple(c / 255.0 for c in entry.color)
    return colorsys.hsv_to_rgb((class_id * GOLDEN_RATIO) % 1.0, 0.65, 0.95)
