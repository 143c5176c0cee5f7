"""Audit a finished run folder on the CPU, tier by tier, from what it recorded and the files it left.

Tiers: schema, checkpoints, trajectory, labels, dataset, formal (when formal evaluation ran) and sanity
(with ``--sanity``). Nothing is retrained; the formal Dice is recomputed from the saved predictions.
A run folder that was moved is read where it is now: recorded paths under the old folder are rebased.
Imports torch (through :mod:`checkpoints`) when the checkpoint tier runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from VistaFinetuneLib import schema
from VistaFinetuneLib.data.dataset import Case, nifti_name
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.finetune import checkpoints
from VistaFinetuneLib.finetune.formal_dice import formal_dice, prediction_path

CKPT_KEYS = ("finetuned_ckpt", "final_ckpt", "pretrained_ckpt", "recommended_ckpt")
COMPARISON_NAMES = {"finetuned_ckpt": "model_finetune.pt", "final_ckpt": "model_final.pt"}
FORMAL_TOLERANCE = 1e-6
MAX_ID = 254


@dataclass
class TierResult:
    """One tier's verdict: passed, failed or skipped (does not apply), with a summary and the problems found."""

    name: str
    ok: bool
    summary: str
    details: list[str] = field(default_factory=list)
    skipped: bool = False

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped else ("PASS" if self.ok else "FAIL")

    def to_json(self) -> dict:
        return {**self.__dict__, "verdict": self.verdict}


class RunRecord:
    """output.json of a run folder, with recorded paths mapped to where the folder is now."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir).absolute()
        path = self.run_dir / "output.json"
        if not path.is_file():
            raise UserError(f"{self.run_dir}: no output.json in this folder; is it a vista-finetune run folder?")
        try:
            self.doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"{path}: cannot read output.json ({error})") from error
        if not isinstance(self.doc, dict):
            raise UserError(f"{path}: output.json is not a JSON object")
        cwd = (self.doc.get("invocation") or {}).get("cwd")
        self.recorded_dir = Path(cwd) if isinstance(cwd, str) and cwd else self.run_dir

    @property
    def output(self) -> dict:
        return self.doc["output"]

    @property
    def input(self) -> dict:
        return self.doc["input"]

    def path(self, recorded: str) -> Path:
        """A recorded path, rebased onto the run folder's current place if it lay under the recorded one."""
        path = Path(recorded)
        try:
            return self.run_dir / path.relative_to(self.recorded_dir)
        except ValueError:
            return path

    def datalist(self) -> tuple[Path, list[dict]]:
        """The datalist file and its ``training`` items; ValueError if it cannot be read."""
        path = self.path(self.input["datalist"])
        if not path.is_file():
            raise ValueError(f"{path}: the datalist does not exist")
        try:
            items = json.loads(path.read_text(encoding="utf-8"))["training"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: cannot read the datalist ({error})") from error
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise ValueError(f"{path}: the training list is not a list of objects")
        return path, items

    def validation_cases(self) -> list[Case]:
        """The fold-0 cases of the datalist, paths rebased."""
        _, items = self.datalist()
        cases = []
        for item in items:
            if item.get("fold") == 0:
                image, label = self.path(item["image"]), self.path(item["label"])
                cases.append(Case(nifti_name(image) or image.name, image, label, 0))
        return cases


def check_schema(run: RunRecord) -> TierResult:
    errors = schema.schema_errors(run.doc)
    if errors:
        return TierResult("schema", False, f"{len(errors)} schema violation(s)", errors)
    return TierResult("schema", True, f"output.json matches {schema.SCHEMA_PATH.name}")


def check_checkpoints(run: RunRecord) -> TierResult:
    out = run.output
    problems: list[str] = []
    loaded: dict[Path, bool] = {}
    for key in CKPT_KEYS:
        recorded = out.get(key)
        if recorded is None:
            continue
        path = run.path(recorded)
        if path not in loaded:
            try:
                if not path.is_file():
                    raise ValueError("the file does not exist")
                tensors = checkpoints.load_state_dict(path)
                loaded[path] = bool(tensors)
                if not tensors:
                    problems.append(f"{key} {path}: holds no tensors")
            except Exception as error:  # torch raises many kinds for a broken file
                loaded[path] = False
                problems.append(f"{key} {path}: does not load with torch.load(weights_only=True): {error}")
    if out.get("finetuned_ckpt_exists") != (out.get("finetuned_ckpt") is not None):
        problems.append("finetuned_ckpt_exists disagrees with finetuned_ckpt")
    if out.get("recommended") is not None and out.get("recommended_ckpt") is None:
        problems.append(f"recommended is {out.get('recommended')!r} but recommended_ckpt is null")
    problems += _recommended_problems(run)
    names = ", ".join(k for k in CKPT_KEYS if out.get(k) is not None)
    if problems:
        return TierResult("checkpoints", False, f"{len(problems)} problem(s)", problems)
    return TierResult("checkpoints", True, f"{len(loaded)} checkpoint file(s) load as tensors ({names})")


def _recommended_problems(run: RunRecord) -> list[str]:
    """The recommended checkpoint must not be a finetuned one that equals the pretrained weights."""
    out = run.output
    recommended = out.get("recommended_ckpt")
    if recommended is None:
        return []
    comparisons = out.get("checkpoint_comparisons_to_pretrained") or {}
    for key, label in COMPARISON_NAMES.items():
        if out.get(key) is None or run.path(out[key]) != run.path(recommended):
            continue
        recorded = comparisons.get(label)
        if recorded is None:
            return [f"recommended_ckpt is {label} but output.json records no comparison of it to the pretrained model"]
        if recorded.get("identical"):
            return [f"recommended_ckpt is {label}, which equals the pretrained weights tensor for tensor"]
        try:
            actual = checkpoints.compare_checkpoints(run.path(out["pretrained_ckpt"]), run.path(recommended))
        except Exception as error:  # reported above as a load failure too
            return [f"cannot compare the recommended {label} with the pretrained weights: {error}"]
        if actual.identical:
            return [f"recommended_ckpt {label} equals the pretrained weights (output.json says it differs)"]
    return []


def check_trajectory(run: RunRecord) -> TierResult:
    out = run.output
    problems = []
    if run.doc.get("status") != "completed":
        problems.append(f"the run status is {run.doc.get('status')!r}: {run.doc.get('error')}")
    for phase, record in (run.doc.get("runtime", {}).get("phases") or {}).items():
        if record.get("return_code") not in (0, None):
            problems.append(f"phase {phase} exited with code {record['return_code']}")
    dices = out["val_dice_per_epoch"]
    if not dices:
        problems.append("no training-time validation Dice was recorded")
    for index, value in enumerate(dices):
        if not isinstance(value, int | float) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            problems.append(f"val_dice_per_epoch[{index}] = {value!r} is not a finite Dice in [0, 1]")
    if out.get("train_loss_finite") is not True:
        problems.append(f"train_loss_finite is {out.get('train_loss_finite')!r} (a NaN/inf or no training loss)")
    if out.get("oom") is not False:
        problems.append(f"oom is {out.get('oom')!r}: the run ran out of memory")
    if problems:
        return TierResult("trajectory", False, f"{len(problems)} problem(s)", problems)
    shown = ", ".join(f"{v:.4f}" for v in dices)
    return TierResult("trajectory", True, f"{len(dices)} validation Dice value(s) in [0, 1] ({shown}); loss finite")


def check_labels(run: RunRecord) -> TierResult:
    mapping = run.input["label_mappings"]["default"]
    values = run.input["dataset_audit"]["label_values"]
    problems = []
    sources = [pair[0] for pair in mapping]
    for source in sorted({s for s in sources if sources.count(s) > 1}):
        problems.append(f"label value {source} is mapped more than once")
    for source, target in mapping:
        if not (isinstance(target, int) and 1 <= target <= MAX_ID):
            problems.append(f"label value {source} maps to {target!r}, not a VISTA3D id in 1..{MAX_ID}")
    # --unmapped background: values recorded as set to 0 in the run's staged copies of the labels
    dropped = ((run.input.get("label_mapping_resolution") or {}).get("unmapped") or {}).get("values_set_to_background")
    background = set(dropped or [])
    for value in values:
        if value not in sources and value not in background:
            problems.append(f"label value {value} occurs in the data but is not in input.label_mappings.default")
    if problems:
        return TierResult("labels", False, f"{len(problems)} problem(s)", problems)
    pairs = ", ".join(f"{a}->{b}" for a, b in mapping)
    zeroed = f"; {sorted(background)} set to background in staged copies" if background else ""
    return TierResult("labels", True, f"every label value {values} is mapped ({pairs}){zeroed}")


def check_dataset(run: RunRecord) -> TierResult:
    try:
        path, items = run.datalist()
    except ValueError as error:
        return TierResult("dataset", False, "datalist unreadable", [str(error)])
    problems = []
    n_val = sum(1 for item in items if item.get("fold") == 0)
    n_train = len(items) - n_val
    for label, found, recorded in (("training", n_train, "n_train_cases"), ("validation", n_val, "n_val_cases")):
        if found != run.input[recorded]:
            problems.append(f"{path}: {found} {label} case(s), output.json records {recorded}={run.input[recorded]}")
    audited = len(run.input["dataset_audit"]["cases"])
    if audited != len(items):
        problems.append(f"{path}: {len(items)} case(s), but the dataset audit covers {audited}")
    for index, item in enumerate(items):
        for key in ("image", "label"):
            value = item.get(key)
            if not isinstance(value, str) or not run.path(value).is_file():
                problems.append(f"{path}: item {index} {key} {value!r} does not exist")
    if problems:
        return TierResult("dataset", False, f"{len(problems)} problem(s)", problems)
    return TierResult("dataset", True, f"{n_train} training + {n_val} validation cases, all files present")


def check_formal(run: RunRecord) -> TierResult:
    out = run.output
    if not out.get("formal_eval_enabled"):
        return TierResult("formal", True, "formal evaluation was not enabled", skipped=True)
    try:
        cases = run.validation_cases()
    except (ValueError, KeyError, TypeError) as error:
        return TierResult("formal", False, "no validation cases", [str(error)])
    mapping = run.input["label_mappings"]["default"]
    problems, scores = [], []
    for phase in ("pretrained", "finetuned"):
        recorded = out.get(f"formal_{phase}_val_dice")
        folder = run.run_dir / f"eval_{phase}"
        missing = [c.name for c in cases if not prediction_path(folder, c.name).is_file()]
        if missing:
            problems.append(f"{folder}: no prediction for validation case(s) {', '.join(missing)}")
            continue
        if recorded is None:
            problems.append(f"formal_{phase}_val_dice is null though the evaluation ran")
            continue
        try:
            mean = formal_dice(folder, cases, mapping).mean
        except (OSError, ValueError) as error:
            problems.append(f"{folder}: cannot recompute the Dice: {error}")
            continue
        if mean is None or abs(mean - recorded) > FORMAL_TOLERANCE:
            problems.append(f"formal_{phase}_val_dice is {recorded!r}, recomputed {mean!r}")
        scores.append(f"{phase} {mean:.6f}")
    if problems:
        return TierResult("formal", False, f"{len(problems)} problem(s)", problems)
    return TierResult("formal", True, f"{len(cases)} validation case(s) rescored: {', '.join(scores)}")


def check_sanity(run: RunRecord) -> TierResult:
    if not run.input.get("sanity"):
        return TierResult("sanity", True, "not a --sanity run", skipped=True)
    checks = run.output.get("sanity_reference_checks")
    if not checks:
        return TierResult("sanity", False, "no sanity_reference_checks recorded")
    failed = [f"{name} is {value!r}" for name, value in checks.items() if value is not True]
    if failed:
        return TierResult("sanity", False, f"{len(failed)} of {len(checks)} reference check(s) failed", failed)
    return TierResult("sanity", True, f"all {len(checks)} reference checks hold")


TIERS: tuple[tuple[str, Callable[[RunRecord], TierResult]], ...] = (
    ("schema", check_schema),
    ("checkpoints", check_checkpoints),
    ("trajectory", check_trajectory),
    ("labels", check_labels),
    ("dataset", check_dataset),
    ("formal", check_formal),
    ("sanity", check_sanity),
)


def verify_run(run_dir: Path) -> list[TierResult]:
    """Every tier's result; UserError if ``run_dir`` has no readable output.json."""
    return verify_record(RunRecord(Path(run_dir)))


def verify_record(run: RunRecord) -> list[TierResult]:
    """Every tier's result for a loaded run record."""
    results = []
    for name, check in TIERS:
        try:
            results.append(check(run))
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            # A document that breaks the schema may lack what a tier reads.
            results.append(TierResult(name, False, "output.json lacks what this tier reads", [repr(error)]))
    return results


def format_results(results: list[TierResult]) -> list[str]:
    """One verdict line per tier (``schema       PASS  ...``), each failure's problems indented below it."""
    lines = []
    for result in results:
        lines.append(f"{result.name:<12} {result.verdict:<5} {result.summary}")
        if not result.ok:
            lines.extend(f"    - {detail}" for detail in result.details)
    return lines
