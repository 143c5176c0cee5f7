"""The forgetting guard: what finetuning did to the classes the run did not train, on the validation images.

The classes checked are those the user's labels hold but the run did not train (values set to background with
``--unmapped background`` whose label names, from dataset.json, name a VISTA3D class), then the classes of the
bundle's everything list the pretrained model finds on the validation images. For each, per validation case: the
Dice of the finetuned checkpoint's prediction against the pretrained checkpoint's (agreement), and, where the labels
hold the class, against the ground truth (and the pretrained model's own, for comparison).

A class whose mean agreement falls below the threshold is flagged. The default, 0.90, is about the Dice two expert
readers reach on the same large organ (liver, spleen, kidney: 0.90-0.95): a finetune that moves an untouched class
further from the pretrained answer than a second reader would is more than noise and worth a look. Smaller
structures disagree more between readers; raise or lower it with ``--forgetting-threshold``.

On a CPU the check is capped (:data:`CPU_MAX_CLASSES`, label classes first): each class is one more prompt for two
models on every validation image. Runs in the job process (imports torch through the predictor).
"""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np

from VistaFinetuneLib.bundle.labels import LabelCatalog, ResolveError
from VistaFinetuneLib.data import dataset, label_names
from VistaFinetuneLib.finetune import rounds
from VistaFinetuneLib.inference.prompts import SUBCLASS_PARENTS, UPSTREAM_CLASS_PROMPT_IDS, Prompts
from VistaFinetuneLib.review.seg_metrics import dice
from VistaFinetuneLib.run_files import read_json

AGREEMENT_THRESHOLD = 0.90
CPU_MAX_CLASSES = 2


def label_classes(staged, catalog: LabelCatalog) -> dict[int, int]:
    """VISTA3D id -> label value, for label values the run did not train whose label names name a class."""
    mapped = {a for a, _ in staged.mapping}
    trained = {b for _, b in staged.mapping}
    found = {}
    for value, name in sorted(known_label_names(staged).items()):
        if value in mapped or value not in staged.audit.label_values:
            continue
        try:
            class_id = catalog.resolve(name)
        except ResolveError:
            continue
        if class_id not in trained:
            found[class_id] = value
    return found


def known_label_names(staged) -> dict[int, str]:
    """Label value -> name: from this run's dataset.json or datalist, else (a later round) the previous round's."""
    named = label_names.find_label_names(rounds.label_folder(staged.request), staged.request.datalist)
    if named:
        return dict(named[0])
    record = rounds.read_round(staged.run_dir)
    path = Path(record["continue_from"]) / "output.json" if record else None
    guard = (read_json(path).get("forgetting") or {}) if path is not None and path.is_file() else {}
    return {int(v): n for v, n in (guard.get("label_names") or {}).items()}


def candidates(staged, catalog: LabelCatalog, held: dict[int, int], everything: list[int], cap: int | None) -> tuple:
    """The classes to check (label classes first, then the everything list) and those the cap leaves out."""
    trained = {b for _, b in staged.mapping}
    allowed = UPSTREAM_CLASS_PROMPT_IDS - trained - set(SUBCLASS_PARENTS)
    order = [c for c in dict.fromkeys([*held, *everything]) if c in allowed]
    return (order, []) if cap is None else (order[:cap], order[cap:])


def read_truth(case: dataset.Case) -> np.ndarray:
    return np.rint(np.asarray(nib.load(case.label).dataobj).squeeze()).astype(np.int32)


def mean(values: list[float | None]) -> float | None:
    scored = [v for v in values if v is not None]
    return round(float(np.mean(scored)), 6) if scored else None


def check(staged, threshold: float = AGREEMENT_THRESHOLD, max_classes: int | None = None) -> dict:
    """The ``forgetting`` section of output.json."""
    from VistaFinetuneLib.inference.models import checkpoint_model, pretrained_model
    from VistaFinetuneLib.inference.predictor import Predictor

    started = time.monotonic()
    catalog = LabelCatalog.from_bundle(staged.bundle_dir)
    device = staged.env.get("device") or "cpu"
    on_cpu = not str(device).startswith("cuda")
    cap = max_classes if max_classes is not None else (CPU_MAX_CLASSES if on_cpu else None)
    held = label_classes(staged, catalog)
    pretrained = Predictor(pretrained_model(staged.bundle_dir), staged.request.device)
    finetuned = Predictor(checkpoint_model(staged.bundle_dir, staged.finetuned_ckpt), staged.request.device)
    checked, capped = candidates(staged, catalog, held, pretrained.everything_ids, cap)
    source = {c.name: c for c in dataset.read_datalist(staged.run_dir / rounds.SOURCE_DATALIST, None)}
    per_case: dict[str, dict[int, dict]] = {}
    for case in staged.val_cases:
        truth = read_truth(source.get(case.name, case)) if held else None
        prompts = Prompts(list(checked), None, None)
        before = pretrained.predict(case.image, prompts).labels if checked else None
        after = finetuned.predict(case.image, prompts).labels if checked else None
        per_case[case.name] = {
            c: case_scores(before == c, after == c, None if c not in held or truth is None else truth == held[c])
            for c in checked
        }
    classes = {}
    for c in checked:
        scores = [per_case[name][c] for name in per_case]
        found = any(s["pretrained_voxels"] for s in scores) or c in held
        if not found:
            continue
        agreement = mean([s["agreement"] for s in scores])
        classes[str(c)] = {
            "name": catalog.name(c),
            "label_value": held.get(c),
            "agreement_dice": agreement,
            "finetuned_vs_truth_dice": mean([s["finetuned_vs_truth"] for s in scores]) if c in held else None,
            "pretrained_vs_truth_dice": mean([s["pretrained_vs_truth"] for s in scores]) if c in held else None,
            "flagged": agreement is not None and agreement < threshold,
            "per_case": {name: per_case[name][c] for name in per_case},
        }
    return {
        "threshold": threshold,
        "threshold_reason": "about the Dice two expert readers reach on one large organ (0.90-0.95)",
        "finetuned_ckpt": str(staged.finetuned_ckpt),
        "validation_cases": [c.name for c in staged.val_cases],
        "device": device,
        "max_classes": cap,
        "classes_checked": checked,
        "classes_not_checked": capped,
        "cap_reason": None if cap is None else f"at most {cap} class(es) checked ({'CPU' if on_cpu else 'flag'})",
        "classes": classes,
        "flagged": [c for c, v in classes.items() if v["flagged"]],
        "label_names": {str(v): n for v, n in known_label_names(staged).items()},
        "seconds": round(time.monotonic() - started, 1),
    }


def case_scores(before: np.ndarray, after: np.ndarray, truth: np.ndarray | None) -> dict:
    """One class on one case: agreement, and Dice against the truth where the labels hold the class."""
    return {
        "agreement": dice(after, before),
        "finetuned_vs_truth": None if truth is None else dice(after, truth),
        "pretrained_vs_truth": None if truth is None else dice(before, truth),
        "pretrained_voxels": int(before.sum()),
        "finetuned_voxels": int(after.sum()),
    }


def rationale(section: dict) -> list[str]:
    """What the verdict says about the classes the run did not train."""
    if not section["classes"]:
        return ["forgetting guard: no untrained class found on the validation images"]
    parts = [
        f"{v['name']} ({c}) agreement {fmt(v['agreement_dice'])}"
        + (f", vs truth {fmt(v['pretrained_vs_truth_dice'])} -> {fmt(v['finetuned_vs_truth_dice'])}"
           if v["label_value"] is not None else "")
        for c, v in section["classes"].items()
    ]  # fmt: skip
    said = f"forgetting guard (classes not finetuned, finetuned vs pretrained Dice): {'; '.join(parts)}"
    flagged = [f"{section['classes'][c]['name']} ({c})" for c in section["flagged"]]
    lines = [said]
    if flagged:
        lines.append(
            f"forgetting: {', '.join(flagged)} agree(s) with the pretrained model below {section['threshold']:.2f}: "
            "the finetune changed a class it was not taught; class routing answers it with the pretrained weights"
        )
    if section["classes_not_checked"]:
        lines.append(f"forgetting guard: {section['cap_reason']}; {not_checked(section)}")
    return lines


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def not_checked(section: dict) -> str:
    """The classes the cap left out, briefly."""
    left = section["classes_not_checked"]
    shown = ", ".join(map(str, left[:8])) + (f" and {len(left) - 8} more" if len(left) > 8 else "")
    return f"not checked: {shown}"
