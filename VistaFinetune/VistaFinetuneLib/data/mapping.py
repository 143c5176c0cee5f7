"""The label mapping: which value in the user's labels becomes which VISTA3D class (the bundle's label_mappings)."""

from __future__ import annotations

import json

from VistaFinetuneLib.bundle.labels import MAX_ID, LabelCatalog
from VistaFinetuneLib.errors import UserError


def parse_mapping(text: str) -> list[list[int]]:
    """Parse ``--label-mapping '[[1, 23], [2, 24]]'``."""
    try:
        pairs = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--label-mapping {text!r}: not JSON ({error.msg}); write it like '[[1, 23]]'") from None
    if not isinstance(pairs, list) or not pairs:
        raise UserError(f"--label-mapping {text!r}: expected a non-empty list of [label value, VISTA3D id] pairs")
    for pair in pairs:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
        ):
            raise UserError(f"--label-mapping {text!r}: {pair!r} is not a [label value, VISTA3D id] pair of integers")
    return [[int(a), int(b)] for a, b in pairs]


def mapping_for_anatomy(text: str, catalog: LabelCatalog, label_values: list[int]) -> tuple[list[list[int]], dict]:
    """``--target-anatomy``: one foreground value in the labels, mapped to the class the name resolves to."""
    resolved = catalog.resolve_name(text)
    class_id = resolved.id
    if len(label_values) != 1:
        raise UserError(
            f"--target-anatomy {text!r}: the labels hold {len(label_values)} foreground values {label_values}; "
            f"say which one is {catalog.name(class_id)!r} with --label-mapping '[[value, {class_id}]]'"
        )
    resolution = {"text": text, "class_id": class_id, "class_name": resolved.name, "source": catalog.source}
    if resolved.note:
        resolution["note"] = resolved.note
    return [[label_values[0], class_id]], resolution


UNMAPPED_POLICIES = ("refuse", "background")


def check_mapping(
    pairs: list[list[int]], label_values: list[int], catalog: LabelCatalog | None, unmapped: str = "refuse"
) -> list[str]:
    """Refuse mappings the bundle would mistrain on; return warnings worth recording.

    Label values the mapping leaves out are refused, unless ``unmapped`` is "background" (the caller then stages
    copies of the labels with those values set to 0, see :mod:`data.relabel`).
    """
    if unmapped not in UNMAPPED_POLICIES:
        raise UserError(f"--unmapped {unmapped!r}: choose {' or '.join(UNMAPPED_POLICIES)}")
    sources = [a for a, _ in pairs]
    targets = [b for _, b in pairs]
    duplicates = sorted({a for a in sources if sources.count(a) > 1})
    if duplicates:
        raise UserError(f"label mapping: label value(s) {duplicates} are mapped more than once")
    for source, target in pairs:
        if source <= 0:
            raise UserError(f"label mapping [{source}, {target}]: label value {source} is background; map values >= 1")
        if not 1 <= target <= MAX_ID:
            raise UserError(
                f"label mapping [{source}, {target}]: VISTA3D ids must be between 1 and {MAX_ID} "
                "(0 is background, 255 means 'not processed' and the bundle's training labels are 8-bit, so "
                "NV-Segment-CTMR's classes above 254 can be predicted but not finetuned)"
            )
    duplicate_targets = sorted({b for b in targets if targets.count(b) > 1})
    if duplicate_targets:
        raise UserError(f"label mapping: VISTA3D id(s) {duplicate_targets} receive more than one label value")
    absent = [a for a in sources if a not in label_values]
    if absent:
        raise UserError(
            f"label mapping: label value(s) {absent} occur in none of the training labels "
            f"(values present: {label_values})"
        )
    left_out = [v for v in label_values if v not in sources]
    warnings = []
    if left_out and unmapped == "refuse":
        raise UserError(
            f"label mapping: the labels also hold value(s) {left_out}, which the mapping leaves out; the bundle "
            "would pass them through as VISTA3D ids. Add a [label value, VISTA3D id] pair for each of them "
            "(`vista-finetune labels SEARCH` finds ids), or pass --unmapped background to train on copies of the "
            "labels with those values set to background (your files are not changed)"
        )
    if left_out:
        warnings.append(f"label value(s) {left_out} are not mapped: set to background (0) in staged copies")
    if catalog is not None:
        for source, target in pairs:
            if target not in catalog.classes:
                warnings.append(
                    f"label value {source} maps to id {target}, which the bundle's label table does not name: "
                    "a new class, learned from scratch; the stock inference.json needs point prompts for it"
                )
            elif catalog.classes[target].deprecated:
                instead = ", ".join(str(c) for c in catalog.counterparts(catalog.classes[target]))
                warnings.append(
                    f"label value {source} maps to {catalog.classes[target]}, a deprecated class the bundle's "
                    "inference refuses as a class prompt" + (f"; supported counterpart: {instead}" if instead else "")
                )
    return warnings


def parse_class_names(value: object, where: str) -> dict[int, str]:
    """``{"133": "Tumor 1"}`` -> ``{133: "Tumor 1"}``, refusing anything else."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f'{where}: class names must be a JSON object of id -> name, like {{"133": "Tumor 1"}}')
    names: dict[int, str] = {}
    for key, name in value.items():
        if not str(key).strip().isdigit() or not isinstance(name, str) or not name.strip():
            raise UserError(f'{where}: bad class name entry {key!r}: {name!r} (expected "id": "name")')
        names[int(key)] = name.strip()
    return names
