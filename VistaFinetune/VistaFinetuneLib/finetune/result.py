"""``RUN_DIR/output.json``: the seed skill's fields and meanings, plus the evidence behind the verdict."""

from __future__ import annotations

from pathlib import Path

from VistaFinetuneLib import __version__
from VistaFinetuneLib.bundle.runner import BundleRun
from VistaFinetuneLib.finetune.formal_dice import METHOD as FORMAL_DICE_METHOD
from VistaFinetuneLib.finetune.phases import PhaseOutcome
from VistaFinetuneLib.finetune.run_state import RunScores, StagedRun

DISCLAIMER = (
    "Research use only. Not for clinical deployment, clinical interpretation, autonomous diagnosis or "
    "regulatory submission. Check every prediction."
)
REGRESSION_MARGIN = 0.005
SANITY_REFERENCE = {  # the DFW single-GPU Task06 run reproduced by the seed skill
    "formal_pretrained_val_dice": 0.65,
    "formal_finetuned_val_dice": 0.67,
    "formal_improvement_over_pretrained": 0.005,
    "training_start_val_dice": 0.65,
    "training_best_val_dice": 0.68,
    "improvement_over_baseline": 0.005,
}


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 6)


def log_tail(path: Path, lines: int = 20) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []


def output_section(staged: StagedRun, outcome: PhaseOutcome, scores: RunScores) -> dict:
    """The ``output`` object: checkpoints, recommendation, training-time and formal scores, and why."""
    trace, verdict = outcome.trace, scores.verdict
    recommended = None if verdict is None else verdict.recommended
    recommended_ckpt = {"finetuned": staged.finetuned_ckpt, "pretrained": staged.pretrained_ckpt}.get(recommended)
    comparison = scores.comparisons.get("model_finetune.pt")
    start = trace.start_dice
    best = max(trace.val_dice_per_epoch) if trace.val_dice_per_epoch else None
    pre = scores.pretrained.mean if scores.pretrained else None
    ft = scores.finetuned.mean if scores.finetuned else None
    both = scores.pretrained is not None and scores.finetuned is not None
    # The bundle's own "Key metric ... at epoch: N" names the epoch model_finetune.pt holds (0: the pretrained).
    best_epoch = trace.best_epoch
    return {
        "finetuned_ckpt": str(staged.finetuned_ckpt) if staged.finetuned_ckpt.is_file() else None,
        "finetuned_ckpt_exists": staged.finetuned_ckpt.is_file(),
        "final_ckpt": str(staged.final_ckpt) if staged.final_ckpt.is_file() else None,
        "pretrained_ckpt": str(staged.pretrained_ckpt),
        "recommended_ckpt": None if recommended_ckpt is None else str(recommended_ckpt),
        "recommended": recommended,
        "checkpoint_comparisons_to_pretrained": {k: v.to_json() for k, v in scores.comparisons.items()},
        "finetuned_ckpt_matches_pretrained_weights": None if comparison is None else comparison.identical,
        "baseline_val_dice": start,
        "best_val_dice": best,
        "best_epoch_index": best_epoch,
        "improvement_over_baseline": difference(start, best),
        "regressed": None if start is None or best is None else best < start - REGRESSION_MARGIN,
        "improved": None if recommended is None else recommended == "finetuned",
        "training_start_val_dice": start,
        "training_best_val_dice": best,
        "training_best_epoch_index": best_epoch,
        "formal_eval_enabled": staged.formal,
        "formal_pretrained_val_dice": pre,
        "formal_finetuned_val_dice": ft,
        "formal_improvement_over_pretrained": difference(pre, ft),
        "formal_regressed": None if not both else (ft or 0) < (pre or 0) - REGRESSION_MARGIN,
        "formal_improved": None if not both else (ft or 0) > (pre or 0),
        "improvement_evidence": None if verdict is None else verdict.evidence_json(),
        "formal_dice": {k.removeprefix("eval_"): v.to_json() for k, v in scores.formal.items()},
        "formal_dice_method": FORMAL_DICE_METHOD,
        "val_dice_per_epoch": trace.val_dice_per_epoch,
        "train_loss_first": trace.losses[0] if trace.losses else None,
        "train_loss_last": trace.losses[-1] if trace.losses else None,
        "train_loss_finite": trace.losses_finite,
        "oom": trace.oom,
        "decision_rationale": ([outcome.failed] if outcome.failed else verdict.rationale) + staged.warnings,
        "sanity_reference_checks": None,
        "sanity_recovery_demonstrated": None,
    }


def add_sanity_checks(output: dict) -> None:
    """``--sanity``: compare with the reference run the seed skill reproduced."""
    checks = {k: (output[k] is not None and output[k] >= v) for k, v in SANITY_REFERENCE.items()}
    checks["finetuned_ckpt_differs_from_pretrained"] = output["finetuned_ckpt_matches_pretrained_weights"] is False
    output["sanity_reference_checks"] = checks
    output["sanity_recovery_demonstrated"] = all(checks.values())


def invocation_section(staged: StagedRun, outcome: PhaseOutcome) -> dict:
    """How the phases were run: the training command, its config stack, and every phase's command and log."""
    records, run_dir = outcome.records, staged.run_dir
    prefix = BundleRun(staged.bundle_dir, [], run_dir, run_dir, run_dir, nproc_per_node=staged.plan.nproc_per_node)
    return {
        "command": " ".join(records.get("train", {}).get("command", "").split()),
        "command_prefix": " ".join(prefix.command()[:-2]),
        "config_stack": [str(p) for p in staged.stacks["train"]],
        "multi_gpu": staged.plan.multi_gpu,
        "cwd": str(run_dir),
        "override_file": str(run_dir / "configs" / "overrides.json"),
        "argv": staged.request.argv,
        "phases": {
            name: {"command": r["command"], "config_stack": r["config_stack"], "log": r["log"]}
            for name, r in records.items()
        },
    }


def runtime_section(staged: StagedRun, outcome: PhaseOutcome, seconds: float) -> dict:
    """Wall time, GPU peaks, exit codes and the training log's tail."""
    records = outcome.records
    main_log = Path(records.get("train", {}).get("log", staged.run_dir / "logs" / "train.log"))
    return {
        "wall_seconds": round(seconds, 1),
        "peak_gpu_mb": max([r.get("peak_gpu_mb", 0) for r in records.values()] + [0]),
        "phase_peak_gpu_mb": {k: r.get("peak_gpu_mb", 0) for k, r in records.items()},
        "return_code": next((r["return_code"] for r in records.values() if r.get("return_code")), 0),
        "log_path": str(main_log),
        "log_tail": log_tail(main_log),
        "phases": {
            k: {
                "return_code": r.get("return_code"),
                "seconds": r.get("seconds", 0.0),
                "log": r["log"],
                "skipped": bool(r.get("skipped")),
            }
            for k, r in records.items()
        },
    }


def input_section(staged: StagedRun) -> dict:
    request = staged.request
    return {
        "dataset_dir": str(request.dataset_dir or staged.datalist.parent),
        "datalist": str(staged.datalist),
        "datalist_source": staged.source,
        "n_train_cases": len(staged.train_cases),
        "n_val_cases": len(staged.val_cases),
        "label_mappings": {"default": staged.mapping},
        "class_names": {str(k): v for k, v in staged.class_names.items()},
        "label_mapping_resolution": staged.resolution,
        "dataset_audit": staged.audit.to_json(),
        "smoke": request.smoke,
        "sanity": request.sanity,
        "auto_seg": staged.auto_seg,
        "target_anatomy": request.target_anatomy,
    }


def result_document(staged: StagedRun, outcome: PhaseOutcome, scores: RunScores, seconds: float) -> dict:
    """The whole of output.json."""
    output = output_section(staged, outcome, scores)
    if staged.request.sanity and not outcome.failed:
        add_sanity_checks(output)
    bundle = staged.bundle
    return {
        "skill": "nv_segment_ct_finetune",
        "producer": {"name": "VistaFinetune", "version": __version__},
        "status": "failed" if outcome.failed else "completed",
        "error": outcome.failed,
        "model": str(bundle["name"]),
        "model_repo": str(staged.bundle_dir),
        "version": bundle["version"] or "unknown",
        "bundle": bundle,
        "input": input_section(staged),
        "environment": staged.env,
        "plan": staged.plan.to_json(),
        "invocation": invocation_section(staged, outcome),
        "output": output,
        "runtime": runtime_section(staged, outcome, seconds),
        "compatibility_overrides": staged.compat_names,
        "intended_use_disclaimer": DISCLAIMER,
    }
