"""The models a user can prompt: the bundle's pretrained weights, or the recommended checkpoint of a finished run.

A finished run is a run folder whose job completed and whose ``output.json`` names a ``recommended_ckpt``; it is
listed by folder name, date, classes (with the names the user gave them) and formal Dice. A run that found no
improvement recommends the pretrained weights; it is listed too, and prompts the pretrained model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.jobs.control import list_runs
from VistaFinetuneLib.run_files import read_json

PRETRAINED = "pretrained"


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model list, and how the worker knows it."""

    key: str  # the worker's model name: "pretrained", or "run:<run folder name>"
    title: str  # shown in the list
    run_dir: Path | None = None  # loaded into the worker with {"op": "load", "run": ...}
    checkpoint: Path | None = None  # the recommended checkpoint (None: the bundle's own weights)
    class_names: dict[int, str] = field(default_factory=dict)  # finetuned class id -> the user's name
    formal_dice: float | None = None
    date: str = ""

    @property
    def is_pretrained(self) -> bool:
        return self.key == PRETRAINED


def pretrained_choice(bundle_name: str) -> ModelChoice:
    return ModelChoice(PRETRAINED, f"Pretrained ({bundle_name})")


def bundle_names(output: dict) -> dict[int, str]:
    """The class names of the bundle a run used (none when its folder is gone or unreadable)."""
    try:
        catalog = LabelCatalog.from_bundle(Path(output.get("model_repo") or ""))
    except UserError:
        return {}
    return {class_id: entry.name for class_id, entry in catalog.classes.items()}


def run_class_names(run_dir: Path, output: dict) -> dict[int, str]:
    """Mapped class id -> name: the user's names when the run recorded them (``class_names`` in run.json or
    output.json's input), else the bundle's name, else ``class <id>``."""
    mapping = (output.get("input") or {}).get("label_mappings", {}).get("default") or []
    known = bundle_names(output)
    names: dict[int, str] = {int(t): known.get(int(t), f"class {int(t)}") for _, t in mapping}
    recorded = {}
    try:
        recorded = read_json(run_dir / "run.json").get("class_names") or {}
    except (OSError, ValueError):
        pass
    recorded = (output.get("input") or {}).get("class_names") or recorded
    for key, name in recorded.items():
        if str(key).isdigit() and isinstance(name, str) and name.strip():
            names[int(key)] = name.strip()
    return names


def finished_run_choice(run_dir: Path, started: float | None) -> ModelChoice | None:
    """The choice a finished run offers, or None when it recommends no checkpoint."""
    try:
        output = read_json(run_dir / "output.json")
    except (OSError, ValueError):
        return None
    result = output.get("output") or {}
    if output.get("status") != "completed" or not result.get("recommended_ckpt"):
        return None
    finetuned = result.get("recommended") == "finetuned"
    dice = result.get("formal_finetuned_val_dice") if finetuned else result.get("formal_pretrained_val_dice")
    date = time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else ""
    names = run_class_names(run_dir, output)
    classes = ", ".join(names[c] for c in sorted(names))
    dice_text = "formal Dice n/a" if dice is None else f"formal Dice {dice:.3f}"
    verdict = "" if finetuned else ", not improved: uses the pretrained weights"
    return ModelChoice(
        key=f"run:{run_dir.name}" if finetuned else PRETRAINED,
        title=f"{run_dir.name} ({date}; {classes}; {dice_text}{verdict})",
        run_dir=run_dir if finetuned else None,
        checkpoint=Path(result["recommended_ckpt"]),
        class_names=names,
        formal_dice=dice,
        date=date,
    )


def finished_run_choices(runs_root: Path) -> list[ModelChoice]:
    """Every finished run under ``runs_root`` that recommends a checkpoint, newest first."""
    choices = []
    for state in list_runs(Path(runs_root)):
        if state.state == "completed":
            choice = finished_run_choice(state.run_dir, state.started)
            if choice is not None:
                choices.append(choice)
    return choices
