"""The label mapping suggested by an MSD-style ``dataset.json``'s label names (``"labels": {"1": "liver"}``).

Each named label value resolves, by name, to a VISTA3D class of the bundle's table; ``--classes liver,spleen``
picks which of them to finetune (the others must then be set to background or mapped explicitly).
nnU-Net v2's ``{"liver": 1}`` form is read too; its region-based labels (lists of values) are refused.
"""

from __future__ import annotations

from pathlib import Path

from VistaFinetuneLib.bundle.labels import LabelCatalog, ResolveError, normalise
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.run_files import read_user_json

BACKGROUND_NAMES = {("background",), ("bg",), ("unlabeled",), ("unlabelled",)}


def _parse(labels: object, path: Path) -> dict[int, str]:
    """``{"0": "background", "1": "liver"}`` or ``{"background": 0, "liver": 1}`` as ``{1: "liver"}``."""
    if not isinstance(labels, dict):
        raise UserError(f'{path}: "labels" is not an object of label value -> name')
    names: dict[int, str] = {}
    for key, value in labels.items():
        if str(key).strip().isdigit() and isinstance(value, str):
            number, name = int(key), value
        elif isinstance(value, int) and not isinstance(value, bool) and isinstance(key, str):
            number, name = value, key
        else:
            raise UserError(f'{path}: "labels" entry {key!r}: {value!r} is not a label value and a name')
        if number in names:
            raise UserError(f'{path}: "labels" names value {number} twice ({names[number]!r}, {name!r})')
        names[number] = name
    return {v: n for v, n in sorted(names.items()) if v != 0 and normalise(n) not in BACKGROUND_NAMES}


def find_label_names(dataset_dir: Path | None, datalist: Path | None) -> tuple[dict[int, str], Path] | None:
    """The named label values of the datalist (if it has "labels") or of ``DATASET/dataset.json``; None if none."""
    candidates = [p for p in (datalist, dataset_dir and Path(dataset_dir) / "dataset.json") if p is not None]
    for path in candidates:
        path = Path(path)
        if path.is_file():
            content = read_user_json(path, "dataset description")
            if isinstance(content, dict) and "labels" in content:
                return _parse(content["labels"], path), path
    return None


def _pick(text: str, names: dict[int, str], catalog: LabelCatalog, path: Path) -> int:
    """The label value ``--classes`` means by ``text``: the value named so, or the one naming the same class."""
    wanted = normalise(text)
    same_name = [v for v, n in names.items() if normalise(n) == wanted]
    if len(same_name) == 1:
        return same_name[0]
    try:
        class_id = catalog.resolve(text)
    except ResolveError:
        class_id = None
    same_class = [v for v, n in names.items() if class_id is not None and _resolves_to(n, catalog) == class_id]
    if len(same_class) == 1:
        return same_class[0]
    listed = ", ".join(f"{v}: {n}" for v, n in names.items())
    raise UserError(f"--classes {text!r}: no single label in {path} is named so (its labels: {listed})")


def _resolves_to(name: str, catalog: LabelCatalog) -> int | None:
    try:
        return catalog.resolve(name)
    except ResolveError:
        return None


def mapping_from_names(
    names: dict[int, str], path: Path, catalog: LabelCatalog, label_values: list[int], classes: str | None
) -> tuple[list[list[int]], dict]:
    """[[label value, VISTA3D id], ...] for the named values present in the labels (or those ``classes`` picks)."""
    if classes is not None:
        picked = [_pick(text, names, catalog, path) for text in classes.split(",") if text.strip()]
        if not picked:
            raise UserError("--classes: give one or more label names separated by commas, e.g. liver,spleen")
    else:
        picked = [v for v in names if v in label_values]
    pairs, entries, failures = [], [], []
    for value in dict.fromkeys(picked):
        try:
            resolution = catalog.resolve_name(names[value])
        except ResolveError as error:
            failures.append(f"{value} {names[value]!r}: {error}")
            continue
        pairs.append([value, resolution.id])
        entries.append({"value": value, "label_name": names[value]} | resolution.to_json())
    if failures:
        resolved = ", ".join(f"{e['label_name']} -> {e['id']}" for e in entries) or "none"
        raise UserError(
            f"{path}: the label names suggest a mapping, but " + "; ".join(failures) + f". Resolved: {resolved}. "
            "Pick the labels to finetune with --classes NAME,NAME (and --unmapped background for the rest), "
            "or give --label-mapping '[[value, VISTA3D id], ...]'"
        )
    not_picked = {str(v): n for v, n in names.items() if v not in picked}
    resolution = {"source": f"label names in {path}", "classes": entries, "not_selected": not_picked}
    return pairs, resolution
