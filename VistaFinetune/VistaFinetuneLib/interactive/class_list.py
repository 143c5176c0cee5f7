"""The classes a model can be prompted with: the bundle's table plus a finetuned run's classes under the user's names,
searchable, with VISTA3D's kidney/lung/bone rule.

VISTA3D expands the class prompts kidney (2), lung (20) and bone (21) into their parts (left and right kidney,
the lung lobes, the single bones) and cannot combine them with point prompts. A finetune that mapped its own
structures onto one of these ids turns the expansion off, so there they behave like any class.
"""

from __future__ import annotations

from dataclasses import dataclass

from VistaFinetuneLib.bundle.labels import LabelCatalog, normalise
from VistaFinetuneLib.interactive.models import ModelChoice

SUBCLASS_PARENTS = {2: "kidney", 20: "lung", 21: "bone"}
PARTS = {2: "left kidney (14) or right kidney (5)", 20: "a lung lobe (28-32)", 21: "a single bone"}


@dataclass(frozen=True)
class ModelClass:
    """One class of the model, as listed."""

    id: int
    name: str
    finetuned: bool  # taught by the chosen run
    expands_to_parts: bool  # a kidney/lung/bone parent whose prompt VISTA3D expands

    @property
    def title(self) -> str:
        tag = ", finetuned" if self.finetuned else ""
        return f"{self.name} ({self.id}{tag})"


def model_classes(catalog: LabelCatalog, choice: ModelChoice) -> list[ModelClass]:
    """A run's classes first, under the user's names (tagged finetuned when the run's own checkpoint is used),
    then the bundle's other classes in id order."""
    named = dict(choice.class_names)
    classes = []
    for class_id in sorted(named):
        name = named[class_id]
        if name == f"class {class_id}" and class_id in catalog.classes:
            name = catalog.classes[class_id].name  # a run whose bundle folder is gone
        classes.append(ModelClass(class_id, name, not choice.is_pretrained, False))
    for entry in catalog.classes.values():
        if entry.id not in named and not entry.deprecated:
            classes.append(ModelClass(entry.id, entry.name, False, entry.id in SUBCLASS_PARENTS))
    return classes


def search_classes(classes: list[ModelClass], text: str) -> list[ModelClass]:
    """Classes whose name holds every word of ``text`` (any order, abbreviations like "L" allowed), or whose id
    is ``text``; all classes for an empty text."""
    text = text.strip()
    if not text:
        return list(classes)
    if text.isdigit():
        return [c for c in classes if c.id == int(text)]
    wanted = normalise(text)
    return [c for c in classes if all(any(w in token for token in normalise(c.name)) for w in wanted)]


def point_rule(model_class: ModelClass | None) -> str | None:
    """Why clicks on a segment of this class are sent without the class, or None when the rule does not apply."""
    if model_class is None or not model_class.expands_to_parts:
        return None
    return (
        f"VISTA3D expands '{model_class.name}' ({model_class.id}) into its parts and cannot combine it with "
        f"clicks, so clicks are sent without the class (the model segments the structure you click). "
        f"For a class-guided click choose the part, e.g. {PARTS[model_class.id]}."
    )
