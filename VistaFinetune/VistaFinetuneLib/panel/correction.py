"""The panel's "Correct and finetune again" section, without Qt or Slicer: where corrections of a run go, the next
round's command, the rounds plot and the forgetting table.

Corrections of ``RUN`` are written (by :mod:`VistaFinetuneLib.scene.corrections`) into ``RUN.corrections/`` beside
the run folder: ``imagesTr/``, ``labelsTr/``, ``datalist.json`` (training items) and ``corrections.json``.
*Finetune again* runs ``finetune --continue-from RUN --datalist RUN.corrections/datalist.json`` into a new run
folder: the engine keeps the run's validation cases, mapping and settings (see ``finetune/rounds.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.panel.curves import MARGIN
from VistaFinetuneLib.run_files import read_user_json

RECORD = "corrections.json"
SOURCE_DATALIST = "dataset/source_datalist.json"  # finetune/rounds.py writes it (kept in step by a test)
COLOURS = ("#1a8f1a", "#1f5fbf", "#bf1f1f", "#bf8f1f", "#8f1fbf", "#1f8fbf")


def corrections_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir).absolute()
    return run_dir.parent / f"{run_dir.name}.corrections"


def read_corrections(run_dir: Path) -> dict:
    """``corrections.json`` of the run (empty when none was added yet)."""
    path = corrections_dir(run_dir) / RECORD
    return read_user_json(path, "corrections") if path.is_file() else {"correction_of": str(run_dir), "cases": []}


def run_record(run_dir: Path, name: str) -> dict:
    path = Path(run_dir) / name
    if not path.is_file():
        raise UserError(f"{path}: missing; follow a finished run before adding corrections")
    return read_user_json(path, "run record")


def run_mapping(run_dir: Path) -> list[list[int]]:
    """The run's label mapping (label value -> VISTA3D id)."""
    return [[int(a), int(b)] for a, b in run_record(run_dir, "run.json")["label_mappings"]["default"]]


def run_case_names(run_dir: Path, training: bool) -> set[str]:
    """Names of the run's training (or validation) cases."""
    path = Path(run_dir) / SOURCE_DATALIST
    path = path if path.is_file() else Path(run_dir) / "dataset" / "datalist.json"
    items = read_user_json(path, "datalist")["training"] if path.is_file() else []
    names = set()
    for item in items:
        if (item.get("fold") == 0) != training:
            names.add(Path(item["image"]).name.removesuffix(".gz").removesuffix(".nii"))
    return names


def refuse_validation_case(run_dir: Path, name: str) -> None:
    """A validation case of the run cannot become a training case: its Dice would then be measured on training data."""
    if name in run_case_names(run_dir, training=False):
        raise UserError(
            f'"{name}" is a validation case of {run_dir}: adding it to training would score the next round on a case '
            "it trained on; correct a case that is not used for validation"
        )


def pending_summary(run_dir: Path) -> str:
    """One line: the corrections waiting for the next round."""
    cases = read_corrections(run_dir)["cases"]
    if not cases:
        return "No corrected case added yet."
    return f"{len(cases)} corrected case(s) ready for the next round: " + ", ".join(c["name"] for c in cases)


def finetune_again_command(run_dir: Path, next_run_dir: Path, start_from_previous: bool) -> list[str]:
    """The engine arguments of the next round."""
    datalist = corrections_dir(run_dir) / "datalist.json"
    if not datalist.is_file():
        raise UserError("no corrected case: add one with 'Add to training set' first")
    command = ["finetune", "--continue-from", str(Path(run_dir).absolute()), "--datalist", str(datalist),
               "--output-dir", str(next_run_dir)]  # fmt: skip
    return command + (["--start-from", "previous"] if start_from_previous else [])


@dataclass(frozen=True)
class RoundsPicture:
    """Dice per class against round, as polylines in pixels (the widget draws them), with a caption."""

    width: int
    height: int
    lines: list[tuple[str, str, list[tuple[int, int]]]]  # (class label, colour, points)
    caption: str


def rounds_picture(output: dict, width: int, height: int) -> RoundsPicture:
    """Round on x (1..N), formal Dice per class on y (0..1), same validation cases every round."""
    rounds = output.get("rounds") or []
    count = max(len(rounds), 2)

    def x(index: int) -> int:
        return int(round(MARGIN + (width - 2 * MARGIN) * index / (count - 1)))

    def y(value: float) -> int:
        return int(round(height - MARGIN - (height - 2 * MARGIN) * min(max(value, 0.0), 1.0)))

    classes = sorted({k for r in rounds for k in (r.get("formal_dice_per_class") or {})}, key=int)
    lines = []
    for number, class_id in enumerate(classes):
        points = [
            (x(i), y(r["formal_dice_per_class"][class_id]))
            for i, r in enumerate(rounds)
            if (r.get("formal_dice_per_class") or {}).get(class_id) is not None
        ]
        lines.append((class_id, COLOURS[number % len(COLOURS)], points))
    last = rounds[-1]["formal_dice_per_class"] if rounds else {}
    caption = f"{len(rounds)} round(s); last: " + ", ".join(
        f"{k} {v:.3f}" for k, v in (last or {}).items() if v is not None
    )
    return RoundsPicture(width, height, lines, caption if rounds else "no rounds yet")


@dataclass(frozen=True)
class ForgettingRow:
    """One class the run did not train, as the forgetting table shows it."""

    class_label: str
    agreement: str
    pretrained_vs_truth: str
    finetuned_vs_truth: str
    flagged: bool


def forgetting_rows(output: dict) -> tuple[list[ForgettingRow], str]:
    """The table rows and a note (threshold, cap)."""
    guard = output.get("forgetting")
    if not guard:
        return [], "No forgetting check in this run (it needs a formal evaluation)."

    def text(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [
        ForgettingRow(f"{c}: {v['name']}", text(v["agreement_dice"]), text(v["pretrained_vs_truth_dice"]),
                      text(v["finetuned_vs_truth_dice"]), v["flagged"])
        for c, v in guard["classes"].items()
    ]  # fmt: skip
    note = f"Flagged below agreement {guard['threshold']:.2f}."
    if guard["classes_not_checked"]:
        note += f" {guard['cap_reason']}: {len(guard['classes_not_checked'])} more not checked."
    return rows, note


def read_output(run_dir: Path) -> dict:
    path = Path(run_dir) / "output.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
