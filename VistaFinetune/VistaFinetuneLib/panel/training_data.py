"""The Training data and Class mapping sections: one row per case (validation or training, its problems) and
one row per label value (the VISTA3D class it becomes), from a dataset folder or a datalist."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.data import dataset
from VistaFinetuneLib.data.mapping import check_mapping
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.run_files import read_user_json

VALIDATION_FOLD = 0
TRAINING_FOLD = 1


@dataclass
class CaseRow:
    """One image/label pair of the table; a row with problems is left out of the training."""

    name: str
    image: Path
    label: Path
    validation: bool
    label_values: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the pair cannot be used
    warnings: list[str] = field(default_factory=list)  # usable, but worth a look

    @property
    def usable(self) -> bool:
        return not self.problems


@dataclass
class MappingRow:
    """One foreground label value and the VISTA3D class it is trained as (None: not chosen yet)."""

    value: int
    name: str  # the segment's or dataset.json's name for the value; "" when unknown
    class_id: int | None
    score: float | None = None  # how well the suggested class's name matched (None: nothing suggested)


def read_cases(dataset_dir: Path | None, datalist: Path | None) -> list[dataset.Case]:
    """The cases of a datalist (paths relative to ``dataset_dir`` or its own folder) or of a dataset folder."""
    if datalist is not None:
        return dataset.read_datalist(Path(datalist), Path(dataset_dir) if dataset_dir else None)
    if dataset_dir is not None:
        return dataset.find_cases(Path(dataset_dir))
    raise UserError("no training data: choose a dataset folder (imagesTr/ + labelsTr/) or a datalist JSON")


def case_rows(cases: list[dataset.Case]) -> list[CaseRow]:
    """Audit every case (reads each NIfTI pair: run it in the background); folds become the validation choice."""
    if any(case.fold is not None for case in cases) or len(cases) < 2:
        assigned = cases
    else:
        assigned = dataset.assign_folds(cases, seed=0)
    rows = []
    for case in assigned:
        row = CaseRow(case.name, case.image, case.label, validation=case.fold == VALIDATION_FOLD)
        try:
            audit = dataset.audit_case(case)
        except UserError as error:
            row.problems.append(str(error))
        else:
            row.label_values = sorted(audit.label_voxels)
            row.warnings.extend(audit.warnings)
        rows.append(row)
    return rows


def split_problems(rows: list[CaseRow]) -> list[str]:
    """Why the usable rows cannot be trained on as split (empty: they can)."""
    usable = [row for row in rows if row.usable]
    problems = []
    if not any(row.validation for row in usable):
        problems.append("no validation case: tick 'validation' for at least one usable case")
    if all(row.validation for row in usable):
        problems.append("no training case: untick 'validation' for at least one usable case")
    return problems


def label_values(rows: list[CaseRow]) -> list[int]:
    """The foreground values found in the usable cases' labels."""
    return sorted({value for row in rows if row.usable for value in row.label_values})


def dataset_label_names(dataset_dir: Path | None) -> dict[int, str]:
    """Value -> name from a Medical Segmentation Decathlon style ``dataset.json`` (``"labels"``), if there is one."""
    if dataset_dir is None or not (Path(dataset_dir) / "dataset.json").is_file():
        return {}
    content = read_user_json(Path(dataset_dir) / "dataset.json", "dataset description")
    labels = content.get("labels") if isinstance(content, dict) else None
    if not isinstance(labels, dict):
        return {}
    names = {}
    for key, name in labels.items():
        if str(key).isdigit() and isinstance(name, str) and int(key) > 0:
            names[int(key)] = name
    return names


def mapping_rows(values: list[int], names: dict[int, str], catalog: LabelCatalog) -> list[MappingRow]:
    """One row per value, with the class its name suggests (none when the name matches nothing well)."""
    rows = []
    for value in values:
        name = names.get(value, "")
        best = catalog.suggest(name, limit=1) if name else []
        if best:
            rows.append(MappingRow(value, name, best[0][0].id, best[0][1]))
        else:
            rows.append(MappingRow(value, name, None))
    return rows


def class_choices(catalog: LabelCatalog) -> list[tuple[int, str]]:
    """(id, "id: name") for every class of the bundle's table, for a searchable list."""
    return [(c.id, str(c)) for c in catalog.classes.values()]


def new_structure_id(catalog: LabelCatalog, taken: list[int]) -> int:
    """A free id for a brand-new structure: the first one above the table's ids that no row uses yet."""
    free = [i for i in catalog.free_ids() if i not in taken]
    above = [i for i in free if i > max(catalog.classes)]
    if not (above or free):
        raise UserError("no free VISTA3D id is left for a new structure")
    return (above or free)[0]


def mapping_pairs(rows: list[MappingRow]) -> list[list[int]]:
    """The bundle's ``label_mappings``; UserError naming the first value without a class."""
    for row in rows:
        if row.class_id is None:
            label = f"{row.value} ({row.name})" if row.name else str(row.value)
            raise UserError(f"label value {label}: choose its VISTA3D class (or 'new structure')")
    return [[row.value, int(row.class_id)] for row in rows if row.class_id is not None]


def mapping_names(rows: list[MappingRow]) -> dict[int, str]:
    """The user's name of each chosen class (the first row's, if several share it), for ``--class-names``."""
    names: dict[int, str] = {}
    for row in rows:
        if row.class_id is not None and row.name:
            names.setdefault(int(row.class_id), row.name)
    return names


def mapping_messages(rows: list[MappingRow], values: list[int], catalog: LabelCatalog) -> tuple[str | None, list[str]]:
    """(the error that blocks training or None, the warnings) for the mapping as chosen."""
    try:
        return None, check_mapping(mapping_pairs(rows), values, catalog)
    except UserError as error:
        return str(error), []


def write_training_datalist(rows: list[CaseRow], path: Path) -> int:
    """Write the usable rows as a datalist with the chosen split (fold 0: validation); return how many."""
    usable = [row for row in rows if row.usable]
    problems = split_problems(rows)
    if problems:
        raise UserError(problems[0])
    cases = [
        dataset.Case(row.name, row.image, row.label, VALIDATION_FOLD if row.validation else TRAINING_FOLD)
        for row in usable
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.write_datalist(cases, path)
    return len(cases)
