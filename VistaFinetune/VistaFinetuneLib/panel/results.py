"""The Results and Review sections: what a finished run's output.json says, as rows and sentences."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.data.dataset import nifti_name
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.run_files import read_user_json

EPOCH_ZERO_WARNING = (
    "The finetuned checkpoint equals the pretrained weights (the epoch-0 trap): no training epoch beat the "
    "pretrained model's validation score, so the bundle kept the pretrained weights."
)
NO_EVIDENCE = "No evidence of improvement: keep the pretrained model."


@dataclass(frozen=True)
class ClassDice:
    """Formal Dice of one class (or of one case's class) for both checkpoints."""

    class_id: int
    name: str
    pretrained: float | None
    finetuned: float | None

    @property
    def difference(self) -> float | None:
        if self.pretrained is None or self.finetuned is None:
            return None
        return self.finetuned - self.pretrained


@dataclass
class RunResults:
    """The verdict of a run and the numbers behind it."""

    run_dir: Path
    status: str
    error: str | None
    recommended: str | None  # "pretrained", "finetuned" or None (the run failed)
    recommended_ckpt: str | None
    improved: bool | None
    reasons: list[str]
    warnings: list[str]
    per_class: list[ClassDice]
    mean_pretrained: float | None
    mean_finetuned: float | None
    validation_cases: list[str]
    report_html: Path | None
    bundle_dir: Path | None = None
    case_images: dict[str, Path] = field(default_factory=dict)  # validation case -> its CT
    per_case: dict[str, list[ClassDice]] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """One sentence: the recommendation."""
        if self.recommended is None:
            return f"The run {self.status}: {self.error or 'no recommendation'}"
        if self.recommended == "finetuned":
            return "Recommendation: use the finetuned checkpoint."
        return NO_EVIDENCE


def _class_names(result: dict) -> dict[int, str]:
    try:
        catalog = LabelCatalog.from_bundle(Path(result.get("model_repo", "")))
    except UserError:
        return {}
    return {c.id: c.name for c in catalog.classes.values()}


def _dice_rows(pre: dict, ft: dict, class_ids: list[int], names: dict[int, str]) -> list[ClassDice]:
    return [
        ClassDice(class_id, names.get(class_id, f"class {class_id}"), pre.get(str(class_id)), ft.get(str(class_id)))
        for class_id in class_ids
    ]


def validation_cases(result: dict) -> dict[str, Path]:
    """The run's validation cases (fold 0 of its datalist): name -> image."""
    try:
        items = json.loads(Path(result["input"]["datalist"]).read_text(encoding="utf-8"))["training"]
    except (OSError, KeyError, ValueError):
        return {}
    return {
        nifti_name(Path(item["label"])) or Path(item["label"]).name: Path(item["image"])
        for item in items
        if item.get("fold") == 0
    }


def read_results(run_dir: Path) -> RunResults:
    """Read ``RUN_DIR/output.json``; UserError naming the file when there is none yet."""
    path = Path(run_dir) / "output.json"
    if not path.is_file():
        raise UserError(f"{path}: no results yet (the run has not finished)")
    result = read_user_json(path, "run results")
    out = result.get("output", {})
    formal = out.get("formal_dice", {})
    pre, ft = formal.get("pretrained", {}), formal.get("finetuned", {})
    class_ids = sorted({int(b) for _, b in result.get("input", {}).get("label_mappings", {}).get("default", [])})
    names = _class_names(result)
    warnings = []
    if out.get("finetuned_ckpt_matches_pretrained_weights"):
        warnings.append(EPOCH_ZERO_WARNING)
    if not out.get("formal_eval_enabled"):
        warnings.append("No formal evaluation: the verdict rests on the training-time validation Dice.")
    per_case = {
        case: _dice_rows(pre.get("per_case", {}).get(case, {}), ft.get("per_case", {}).get(case, {}), class_ids, names)
        for case in sorted(set(pre.get("per_case", {})) | set(ft.get("per_case", {})))
    }
    report = (result.get("review") or {}).get("html")
    return RunResults(
        run_dir=Path(run_dir),
        status=result.get("status", "unknown"),
        error=result.get("error"),
        recommended=out.get("recommended"),
        recommended_ckpt=out.get("recommended_ckpt"),
        improved=out.get("improved"),
        reasons=list(out.get("decision_rationale", [])),
        warnings=warnings,
        per_class=_dice_rows(pre.get("per_class", {}), ft.get("per_class", {}), class_ids, names),
        mean_pretrained=out.get("formal_pretrained_val_dice"),
        mean_finetuned=out.get("formal_finetuned_val_dice"),
        validation_cases=list(validation_cases(result)),
        report_html=Path(report) if report and Path(report).is_file() else None,
        bundle_dir=Path(result["model_repo"]) if result.get("model_repo") else None,
        case_images=validation_cases(result),
        per_case=per_case,
    )


def ground_truth_file(run_dir: Path, case: str) -> Path | None:
    """The case's ground truth in VISTA3D class ids, written by the run's review (None before it ran)."""
    path = Path(run_dir) / "review" / "ground_truth" / f"{case}.nii.gz"
    return path if path.is_file() else None
