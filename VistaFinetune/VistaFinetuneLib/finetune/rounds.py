"""Rounds of a correction loop: ``finetune --continue-from RUN`` trains the next round on the previous round's
training cases plus the new ones, validates on the previous round's validation cases unchanged (so every round's
Dice is measured on the same cases), and keeps the previous label mapping (new label values may add classes).

A run keeps what the next round needs: ``dataset/source_datalist.json`` (its cases with their own label files and
folds, before any relabelling) and, for a continued run, ``round.json`` (which run it continued, how it started,
which cases are new, and the earlier rounds). ``output.json``'s ``rounds`` lists every round so far.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from VistaFinetuneLib.bundle.config_text import literal
from VistaFinetuneLib.bundle.labels import LabelCatalog, ResolveError
from VistaFinetuneLib.data import dataset, label_names
from VistaFinetuneLib.data.mapping import parse_mapping
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.run_files import read_json, read_user_json, write_json_atomic

SOURCE_DATALIST = "dataset/source_datalist.json"
ROUND_RECORD = "round.json"
START_FROM = ("pretrained", "previous")
PREVIOUS_RISK = (
    "started from the previous round's recommended checkpoint (--start-from previous): faster, but classes the "
    "earlier rounds did not train can drift further each round (forgetting); the maintainers advise one finetune "
    "from the pretrained weights on the merged data (--start-from pretrained, the default)"
)
INHERITED = ("bundle_dir", "epochs", "learning_rate", "patch_size", "cache_rate", "device", "class_names")


@dataclass(frozen=True)
class PreviousRound:
    """A finished run to continue from."""

    run_dir: Path
    record: dict  # its run.json
    output: dict  # its output.json

    @property
    def mapping(self) -> list[list[int]]:
        return [[int(a), int(b)] for a, b in self.record["label_mappings"]["default"]]

    @property
    def recommended_ckpt(self) -> Path:
        return Path(self.output["output"]["recommended_ckpt"])

    def cases(self) -> list[dataset.Case]:
        """Its cases with their own label files (not relabelled copies) and folds."""
        source = self.run_dir / SOURCE_DATALIST
        path = source if source.is_file() else self.run_dir / "dataset" / "datalist.json"
        return dataset.read_datalist(path, None)

    def rounds(self) -> list[dict]:
        """Its ``rounds`` (a run from before rounds existed counts as one round)."""
        return self.output.get("rounds") or [round_entry(self.output, 1, "pretrained", [], [], None)]


def read_previous(run_dir: Path) -> PreviousRound:
    """The run ``--continue-from`` names; it must have finished (output.json, status completed)."""
    run_dir = Path(run_dir).absolute()
    if not (run_dir / "run.json").is_file():
        raise UserError(f"--continue-from {run_dir}: not a finetune run folder (no run.json)")
    output_file = run_dir / "output.json"
    status = read_json(run_dir / "status.json").get("state") if (run_dir / "status.json").is_file() else None
    if not output_file.is_file():
        state = f" (state: {status})" if status else ""
        raise UserError(
            f"--continue-from {run_dir}: the run has not finished{state}; wait for it (or --resume it) first"
        )
    output = read_user_json(output_file, "run result")
    if output.get("status") != "completed" or not (output.get("output") or {}).get("recommended_ckpt"):
        raise UserError(
            f"--continue-from {output_file}: the run did not complete (status {output.get('status')!r}); "
            "continue from a completed run"
        )
    return PreviousRound(run_dir, read_user_json(run_dir / "run.json", "run record"), output)


def inherit(request, previous: PreviousRound):
    """The request with what the caller left unset taken from the previous round's resolved request."""
    before = previous.record.get("request_resolved") or {}
    values = {k: before.get(k) for k in INHERITED if getattr(request, k) is None and before.get(k) is not None}
    if "bundle_dir" in values:
        values["bundle_dir"] = Path(values["bundle_dir"])
    unmapped = "background" if "background" in (request.unmapped, before.get("unmapped")) else "refuse"
    return replace(request, **values, unmapped=unmapped, auto_seg=request.auto_seg or bool(before.get("auto_seg")))


def new_cases(request) -> list[dataset.Case]:
    """The cases this round adds (from DATASET or --datalist)."""
    if request.datalist is not None:
        return dataset.read_datalist(request.datalist.absolute(), request.dataset_dir)
    if request.dataset_dir is not None:
        return dataset.find_cases(request.dataset_dir.absolute())
    raise UserError("--continue-from: give the new cases (a DATASET folder or --datalist); none was given")


def merge_cases(previous: PreviousRound, added: list[dataset.Case], add_validation: bool) -> list[dataset.Case]:
    """The previous round's cases as they were, plus the new ones: training cases, or (``--add-validation``) the
    new cases a datalist puts in fold 0 as validation cases of their own."""
    old = previous.cases()
    where = {str(c.image.resolve()): c for c in old} | {c.name: c for c in old}
    merged = list(old)
    for case in added:
        known = where.get(str(case.image.resolve())) or where.get(case.name)
        if known is not None:
            role = "validation" if known.fold == 0 else "training"
            raise UserError(
                f"{case.image}: already a {role} case ({known.name}) of {previous.run_dir}"
                + (
                    "; a validation case added to training would score the model on a case it trained on"
                    if known.fold == 0
                    else "; it trains in this round already"
                )
            )
        fold = 0 if add_validation and case.fold == 0 else 1
        merged.append(dataset.Case(case.name, case.image, case.label, fold))
        where[case.name] = merged[-1]
    return sorted(merged, key=lambda c: c.name)


def merged_mapping(previous: PreviousRound, text: str | None) -> tuple[list[list[int]], dict]:
    """The previous mapping, plus the pairs ``--label-mapping`` adds; changing a previous pair is refused."""
    old = previous.mapping
    if text is None:
        return old, {"source": f"label mapping of {previous.run_dir}"}
    given = {a: b for a, b in parse_mapping(text)}
    for value, target in old:
        if value in given and given[value] != target:
            raise UserError(
                f"--label-mapping maps label value {value} to {given[value]}, but {previous.run_dir} maps it to "
                f"{target}; a round keeps the previous mapping (new values may add classes)"
            )
    added = [[a, b] for a, b in given.items() if a not in dict(old)]
    return old + added, {"source": f"label mapping of {previous.run_dir}, plus --label-mapping", "added": added}


def check_new_labels(
    added: list[dataset.Case],
    audit: dataset.DatasetAudit,
    mapping: list[list[int]],
    unmapped: str,
    catalog: LabelCatalog | None,
    request,
) -> None:
    """A new case must not contradict the mapping: no value it leaves out (unless set to background), and no label
    name (dataset.json) that resolves to another class than the mapping gives its value."""
    mapped = dict((a, b) for a, b in mapping)
    voxels = {a.name: a.label_voxels for a in audit.cases}
    for case in added:
        extra = sorted(v for v in voxels.get(case.name, {}) if v not in mapped)
        if extra and unmapped == "refuse":
            raise UserError(
                f"{case.label}: holds label value(s) {extra}, which the label mapping {mapping} does not map; add "
                f"them as new classes with --label-mapping '[[{extra[0]}, VISTA3D id]]' or pass --unmapped background"
            )
    named = label_names.find_label_names(label_folder(request), request.datalist)
    if named is None or catalog is None:
        return
    names, path = named
    for value, name in names.items():
        try:
            class_id = catalog.resolve(name)
        except ResolveError:
            continue
        if value in mapped and mapped[value] != class_id:
            raise UserError(
                f"{path}: names label value {value} {name!r} (class {class_id}), but the label mapping gives value "
                f"{value} class {mapped[value]} ({catalog.name(mapped[value])}); the new cases contradict the "
                "mapping: relabel them, or map them in a run of their own"
            )


def label_folder(request) -> Path | None:
    """Where a dataset.json naming the labels may be: the dataset folder, else the datalist's folder."""
    if request.dataset_dir is not None:
        return Path(request.dataset_dir)
    return None if request.datalist is None else Path(request.datalist).parent


def start_checkpoint(previous: PreviousRound, start_from: str) -> Path | None:
    """The weights training starts from: None for the bundle's own (the default), else the previous recommended."""
    if start_from not in START_FROM:
        raise UserError(f"--start-from {start_from!r}: choose {' or '.join(START_FROM)}")
    return previous.recommended_ckpt if start_from == "previous" else None


def write_round(run_dir: Path, previous: PreviousRound, start_from: str, added, cases) -> None:
    """``round.json``: what this round continues and adds."""
    names = {c.name for c in added}
    ckpt = start_checkpoint(previous, start_from)
    rounds = previous.rounds()
    write_json_atomic(
        run_dir / ROUND_RECORD,
        {
            "round": len(rounds) + 1,
            "continue_from": str(previous.run_dir),
            "start_from": start_from,
            "start_checkpoint": None if ckpt is None else str(ckpt),
            "new_cases": sorted(names),
            "new_validation_cases": sorted(c.name for c in cases if c.name in names and c.fold == 0),
            "anchor_validation_cases": sorted(c.name for c in cases if c.fold == 0 and c.name not in names),
            "previous_rounds": rounds,
        },
    )


def read_round(run_dir: Path) -> dict | None:
    path = Path(run_dir) / ROUND_RECORD
    return read_json(path) if path.is_file() else None


def start_overrides(run_dir: Path) -> dict:
    """The training override that starts from the previous round's checkpoint (``--start-from previous``)."""
    record = read_round(run_dir)
    if not record or not record.get("start_checkpoint"):
        return {}
    return {"finetune_model_path": literal(record["start_checkpoint"])}


def write_source_cases(run_dir: Path, cases: list[dataset.Case]) -> None:
    """The run's cases before relabelling: what the next round starts from."""
    path = Path(run_dir) / SOURCE_DATALIST
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.write_datalist(cases, path)


def class_means(per_case: dict, cases: list[str] | None) -> dict[str, float | None]:
    """Per-class mean Dice over ``cases`` (all when None), from formal Dice's per-case table."""
    chosen = [c for c in per_case if cases is None or c in cases]
    classes = sorted({k for c in chosen for k in per_case[c]}, key=int)
    means = {}
    for k in classes:
        values = [per_case[c][k] for c in chosen if per_case[c].get(k) is not None]
        means[k] = round(sum(values) / len(values), 6) if values else None
    return means


def round_entry(output: dict, number: int, start_from: str, new: list[str], new_val: list[str], anchor) -> dict:
    """One round: run folder, case counts and the formal Dice per class of its recommended checkpoint."""
    out, given = output["output"], output["input"]
    recommended = out.get("recommended")
    formal = (out.get("formal_dice") or {}).get(recommended or "") or {}
    per_case = formal.get("per_case") or {}
    entry = {
        "round": number,
        "run_dir": output["invocation"]["cwd"],
        "start_from": start_from,
        "n_train_cases": given["n_train_cases"],
        "n_val_cases": given["n_val_cases"],
        "n_new_cases": len(new),
        "new_cases": list(new),
        "recommended": recommended,
        "recommended_ckpt": out.get("recommended_ckpt"),
        "formal_dice_per_class": class_means(per_case, anchor) if per_case else formal.get("per_class"),
        "validation_cases": sorted(anchor) if anchor is not None else sorted(per_case),
    }
    if new_val:
        entry["new_validation_dice_per_class"] = class_means(per_case, new_val)
    return entry


def rounds_section(run_dir: Path, output: dict) -> list[dict]:
    """``output.json``'s ``rounds``: the earlier rounds as recorded, then this one."""
    record = read_round(run_dir)
    if record is None:
        return [round_entry(output, 1, "pretrained", [], [], None)]
    entry = round_entry(
        output, record["round"], record["start_from"], record["new_cases"], record["new_validation_cases"],
        record["anchor_validation_cases"],
    )  # fmt: skip
    return [*record["previous_rounds"], entry]


def round_rationale(run_dir: Path) -> list[str]:
    """What the verdict says about how this round started."""
    record = read_round(run_dir)
    if record is None:
        return []
    apart = len(record["new_validation_cases"])
    said = [
        f"round {record['round']}: continues {record['continue_from']} with {len(record['new_cases'])} new case(s); "
        f"validation on the same {len(record['anchor_validation_cases'])} case(s) as before"
        + (f", plus {apart} new ones scored apart" if apart else "")
    ]
    return said + ([PREVIOUS_RISK] if record["start_from"] == "previous" else [])


def describe(rounds: list[dict]) -> list[str]:
    """One line per round for the CLI summary."""
    lines = []
    for entry in rounds:
        dice = ", ".join(
            f"{k}: {'-' if v is None else f'{v:.3f}'}" for k, v in (entry["formal_dice_per_class"] or {}).items()
        )
        lines.append(
            f"round {entry['round']}: {entry['n_train_cases']} train / {entry['n_val_cases']} val cases "
            f"(+{entry['n_new_cases']} new), recommended {entry['recommended']}, Dice per class {{{dice}}}"
        )
    return lines
