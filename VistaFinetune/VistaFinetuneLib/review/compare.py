"""Review two sets of predictions against ground truth, per case and per class, in numbers and pictures.

``review_run`` reads a finished finetune run (pretrained vs finetuned formal-evaluation predictions);
``review_predictions`` takes any two prediction folders. Metrics are computed on each ground truth's own grid
(a prediction on another grid is resampled onto it by the affines, nearest neighbour). Outputs in ``OUT_DIR``:
``metrics.csv`` (one row per case, class and model), ``metrics.json`` (rows, summary and confusion),
``summary.csv``, ``confusion.csv`` (per model, the share of each class's truth voxels labelled as each class),
a montage per case and class, ``training_curves.png`` (runs only) and a self-contained ``report.html``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage, stats

from VistaFinetuneLib.data.dataset import nifti_name
from VistaFinetuneLib.data.geometry import voxel_spacing_mm, voxel_to_voxel
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.review import figures as review_figures
from VistaFinetuneLib.review.confusion import add_counts, confusion_counts, confusion_rows, confusion_shares, misplaced
from VistaFinetuneLib.review.seg_metrics import EMPTY_MASK_RULES, label_metrics
from VistaFinetuneLib.run_files import write_json_atomic

METRICS = ("dice", "hd95_mm", "msd_mm", "nsd", "reference_ml", "predicted_ml", "volume_difference_ml")
MAX_MONTAGES = 24


@dataclass(frozen=True)
class ReviewCase:
    """One case to review: its ground truth (in VISTA3D ids), optional image, and a prediction per model."""

    name: str
    truth: Path
    image: Path | None
    predictions: dict[str, Path]


def load_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A label map (rounded to integers) and its affine; a clear error for unreadable files."""
    try:
        image = nib.load(path)
        return np.rint(np.asarray(image.dataobj).squeeze()).astype(np.int32), image.affine
    except Exception as error:  # nibabel raises many types for damaged files
        raise UserError(f"{path}: cannot read it as NIfTI ({error})") from None


def on_grid(labels: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray) -> np.ndarray:
    """``labels`` resampled (nearest neighbour) onto the grid ``shape``/``target_affine``; as is when equal."""
    if labels.shape == tuple(shape) and np.allclose(affine, target_affine, atol=1e-4):
        return labels
    target_to_source = voxel_to_voxel(affine, target_affine)
    return ndimage.affine_transform(
        labels, target_to_source[:3, :3], offset=target_to_source[:3, 3], output_shape=shape, order=0, cval=0
    )


def relabel(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """User label values -> VISTA3D ids (values not in the mapping become background)."""
    out = np.zeros_like(labels)
    for source, target in mapping.items():
        out[labels == source] = target
    return out


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of b - a over paired cases with a 95% t confidence interval."""
    differences = [y - x for x, y in zip(a, b, strict=True)]
    n = len(differences)
    if n == 0:
        return {"n": 0, "mean": None, "ci95_low": None, "ci95_high": None}
    mean = float(np.mean(differences))
    if n == 1:
        return {"n": 1, "mean": mean, "ci95_low": None, "ci95_high": None}
    half = float(stats.t.ppf(0.975, n - 1) * np.std(differences, ddof=1) / math.sqrt(n))
    return {"n": n, "mean": mean, "ci95_low": mean - half, "ci95_high": mean + half}


def summarise(rows: list[dict], models: tuple[str, str], class_names: dict[int, str]) -> list[dict]:
    """Per class and model: mean, median and worst case of Dice/HD95/NSD; then the paired Dice difference."""
    summary = []
    for class_id in sorted({r["class_id"] for r in rows}):
        per_model = {m: [r for r in rows if r["class_id"] == class_id and r["model"] == m] for m in models}
        for model in models:
            dice = [r["dice"] for r in per_model[model] if r["dice"] is not None]
            hd95 = [r["hd95_mm"] for r in per_model[model] if r["hd95_mm"] is not None]
            nsd = [r["nsd"] for r in per_model[model] if r["nsd"] is not None]
            worst = min((r for r in per_model[model] if r["dice"] is not None), key=lambda r: r["dice"], default=None)
            summary.append(
                {
                    "class": f"{class_id} {class_names.get(class_id, '')}".strip(),
                    "model": model,
                    "cases": len(dice),
                    "dice_mean": float(np.mean(dice)) if dice else None,
                    "dice_median": float(np.median(dice)) if dice else None,
                    "dice_worst": None if worst is None else worst["dice"],
                    "worst_case": None if worst is None else worst["case"],
                    "hd95_mm_mean": float(np.mean(hd95)) if hd95 else None,
                    "nsd_mean": float(np.mean(nsd)) if nsd else None,
                }
            )
        scored = {
            r["case"]: r["dice"] for r in per_model[models[0]] if r["dice"] is not None
        }  # cases scored by both models
        pairs = [
            (scored[r["case"]], r["dice"])
            for r in per_model[models[1]]
            if r["case"] in scored and r["dice"] is not None
        ]
        difference = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
        summary.append(
            {
                "class": f"{class_id} {class_names.get(class_id, '')}".strip(),
                "model": f"{models[1]} - {models[0]} (paired Dice)",
                "cases": difference["n"],
                "dice_mean": difference["mean"],
                "dice_median": None,
                "dice_worst": None,
                "worst_case": f"95% CI [{_fmt(difference['ci95_low'])}, {_fmt(difference['ci95_high'])}]",
                "hd95_mm_mean": None,
                "nsd_mean": None,
            }
        )
    return summary


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"


def review(
    cases: list[ReviewCase],
    class_ids: list[int],
    class_names: dict[int, str],
    models: tuple[str, str],
    out_dir: Path,
    title: str,
    tolerance_mm: float = 2.0,
    curves: dict | None = None,
    notes: list[str] | None = None,
) -> dict:
    """Compute metrics for every case, class and model; write tables, pictures and the HTML page."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    images: list[tuple[str, Path]] = []
    counts: dict[str, dict[int, dict[int, int]]] = {model: {} for model in models}
    for case in cases:
        truth, truth_affine = load_labels(case.truth)
        spacing = voxel_spacing_mm(truth_affine)
        predictions = {}
        for model in models:
            labels, affine = load_labels(case.predictions[model])
            predictions[model] = on_grid(labels, affine, truth.shape, truth_affine)
        for model in models:
            for class_id, metrics in label_metrics(predictions[model], truth, spacing, class_ids, tolerance_mm).items():
                rows.append({"case": case.name, "class_id": class_id, "model": model, **metrics.to_json()})
            add_counts(counts[model], confusion_counts(predictions[model], truth, class_ids))
        if case.image is not None:
            image = np.asarray(nib.load(case.image).dataobj).squeeze()
            for class_id in class_ids:
                if len(images) >= MAX_MONTAGES or not (truth == class_id).any():
                    continue
                png = out_dir / "montages" / f"{case.name}_class{class_id}.png"
                png.parent.mkdir(exist_ok=True)
                name = class_names.get(class_id, f"class {class_id}")
                review_figures.case_montage(
                    image, truth_affine, truth, predictions, class_id, png, f"{case.name} — {name} (class {class_id})"
                )
                images.append((f"{case.name}: {name} (class {class_id})", png))
    summary = summarise(rows, models, class_names)
    confusion = {model: confusion_shares(counts[model]) for model in models}
    table = [row for model in models for row in confusion_rows(confusion[model], class_names, model)]
    if curves is not None:
        png = review_figures.training_curves(
            curves["loss"], curves["val_dice"], curves["formal_pretrained"], curves["formal_finetuned"],
            out_dir / "training_curves.png",
        )  # fmt: skip
        images.insert(0, ("training curves: loss and validation Dice per epoch", png))
    with open(out_dir / "metrics.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["case", "class_id", "model", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    with open(out_dir / "confusion.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["model", "ground truth", "labelled as", "share"])
        writer.writeheader()
        writer.writerows(table)
    with open(out_dir / "summary.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(summary[0]) if summary else ["class"])
        writer.writeheader()
        writer.writerows(summary)
    document = {
        "models": list(models),
        "class_ids": class_ids,
        "tolerance_mm": tolerance_mm,
        "empty_mask_rules": EMPTY_MASK_RULES,
        "rows": rows,
        "summary": summary,
        "confusion": confusion,
    }
    write_json_atomic(out_dir / "metrics.json", document)
    misplaced_notes = [f"{m}: {s}" for m in models for s in misplaced(confusion[m], class_names)]
    review_figures.html_report(
        title, summary, rows, images, [*(notes or []), *misplaced_notes, EMPTY_MASK_RULES], out_dir / "report.html",
        table,
    )  # fmt: skip
    return {
        "dir": str(out_dir),
        "html": str(out_dir / "report.html"),
        "metrics_csv": str(out_dir / "metrics.csv"),
        "metrics_json": str(out_dir / "metrics.json"),
        "summary_csv": str(out_dir / "summary.csv"),
        "confusion_csv": str(out_dir / "confusion.csv"),
        "pictures": [str(p) for _, p in images],
    }


def review_run(run_dir: Path, tolerance_mm: float = 2.0) -> dict:
    """Review a finished finetune run: pretrained vs finetuned formal-evaluation predictions."""
    from VistaFinetuneLib.bundle.labels import LabelCatalog

    output_path = run_dir / "output.json"
    if not output_path.is_file():
        raise UserError(f"{run_dir}: no output.json; is this a finetune run folder?")
    result = json.loads(output_path.read_text())
    mapping = {int(a): int(b) for a, b in result["input"]["label_mappings"]["default"]}
    datalist = json.loads(Path(result["input"]["datalist"]).read_text())["training"]
    truth_dir = run_dir / "review" / "ground_truth"
    cases = []
    for item in (i for i in datalist if i.get("fold") == 0):
        name = nifti_name(Path(item["label"]))
        predictions = {m: run_dir / f"eval_{m}" / name / f"{name}_trans.nii.gz" for m in ("pretrained", "finetuned")}
        missing = [str(p) for p in predictions.values() if not p.is_file()]
        if missing:
            raise UserError(f"{missing[0]}: prediction missing; the run's formal evaluations did not complete")
        labels, affine = load_labels(Path(item["label"]))
        truth = truth_dir / f"{name}.nii.gz"
        truth.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(relabel(labels, mapping).astype(np.uint8), affine), truth)
        cases.append(ReviewCase(name, truth, Path(item["image"]), predictions))
    try:
        catalog_names = {c.id: c.name for c in LabelCatalog.from_bundle(Path(result["model_repo"])).classes.values()}
    except UserError:
        catalog_names = {}
    out = result["output"]
    log = Path(result["runtime"]["phases"].get("train", {}).get("log", ""))
    curves = {
        "loss": review_figures.mean_loss_per_epoch(log.read_text(errors="replace").splitlines())
        if log.is_file()
        else [],
        "val_dice": out["val_dice_per_epoch"],
        "formal_pretrained": out["formal_pretrained_val_dice"],
        "formal_finetuned": out["formal_finetuned_val_dice"],
    }
    notes = [
        f"Run {run_dir}: recommended checkpoint {out['recommended']} ({out['recommended_ckpt']}).",
        *out["decision_rationale"],
    ]
    return review(
        cases, sorted(set(mapping.values())), catalog_names, ("pretrained", "finetuned"), run_dir / "review",
        "VistaFinetune review: pretrained vs finetuned", tolerance_mm, curves, notes,
    )  # fmt: skip


def _files_by_case(folder: Path, what: str) -> dict[str, Path]:
    """Case name -> NIfTI: ``<case>.nii[.gz]`` or the bundle's ``<case>/<case>_trans.nii.gz``."""
    if not folder.is_dir():
        raise UserError(f"{folder}: {what} folder not found")
    found = {}
    for path in sorted(folder.rglob("*.nii*")):
        name = nifti_name(path)
        if name is None:
            continue
        found[name.removesuffix("_trans") if path.parent.name == name.removesuffix("_trans") else name] = path
    if not found:
        raise UserError(f"{folder}: no NIfTI files in the {what} folder")
    return found


def review_predictions(
    pred_a: Path, pred_b: Path, ground_truth: Path, out_dir: Path, images: Path | None = None,
    names: tuple[str, str] = ("a", "b"), tolerance_mm: float = 2.0,
) -> dict:  # fmt: skip
    """Review any two prediction folders against a ground-truth folder (labels already in the predictions' ids)."""
    truths = _files_by_case(ground_truth, "ground-truth")
    first, second = _files_by_case(pred_a, "--pred-a"), _files_by_case(pred_b, "--pred-b")
    image_files = _files_by_case(images, "--images") if images is not None else {}
    missing = sorted(set(truths) - set(first)) or sorted(set(truths) - set(second))
    if missing:
        raise UserError(f"{ground_truth / missing[0]}: no prediction for case {missing[0]!r} in both folders")
    class_ids = sorted({int(v) for p in truths.values() for v in np.unique(load_labels(p)[0]) if 0 < v < 255})
    if not class_ids:
        raise UserError(f"{ground_truth}: the ground truth holds no foreground label")
    cases = [
        ReviewCase(name, truths[name], image_files.get(name), {names[0]: first[name], names[1]: second[name]})
        for name in sorted(truths)
    ]
    return review(cases, class_ids, {}, names, out_dir, f"VistaFinetune review: {names[0]} vs {names[1]}", tolerance_mm)
