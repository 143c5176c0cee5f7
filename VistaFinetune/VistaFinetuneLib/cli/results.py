"""``review`` and ``verify``: look at a finished run."""

from __future__ import annotations

import argparse
from pathlib import Path

from VistaFinetuneLib.errors import UserError


def cmd_review(args: argparse.Namespace) -> int:
    """Review a run (pretrained vs finetuned) or any two prediction folders against ground truth."""
    from VistaFinetuneLib.review.compare import review_predictions, review_run

    if args.run_dir:
        if args.pred_a or args.pred_b or args.ground_truth:
            raise UserError("review: give RUN_DIR, or --pred-a/--pred-b/--ground-truth with --output-dir, not both")
        result = review_run(Path(args.run_dir).absolute(), args.tolerance_mm)
    else:
        if not (args.pred_a and args.pred_b and args.ground_truth and args.output_dir):
            raise UserError("review: --pred-a, --pred-b, --ground-truth and --output-dir go together")
        out_dir = Path(args.output_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise UserError(f"{out_dir}: the folder is not empty; choose a new --output-dir")
        result = review_predictions(
            Path(args.pred_a), Path(args.pred_b), Path(args.ground_truth), out_dir,
            images=Path(args.images) if args.images else None, names=tuple(args.names), tolerance_mm=args.tolerance_mm,
        )  # fmt: skip
    print(f"metrics: {result['metrics_csv']}")
    print(f"summary: {result['summary_csv']}")
    print(f"report:  {result['html']} ({len(result['pictures'])} pictures)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Audit a finished run folder tier by tier; exit 0 only if every tier passes."""
    from VistaFinetuneLib.finetune.verify import RunRecord, format_results, verify_record

    run = RunRecord(Path(args.run_dir))
    if run.recorded_dir != run.run_dir:
        print(f"note: the run was recorded in {run.recorded_dir}; its files are read from {run.run_dir}")
    results = verify_record(run)
    for line in format_results(results):
        print(line)
    return 0 if all(result.ok for result in results) else 1


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this group's commands, each with its handler."""
    review = commands.add_parser("review", help="per-case/per-class metrics, pictures and an HTML report")
    review.add_argument("run_dir", nargs="?", help="a finished finetune run (pretrained vs finetuned)")
    review.add_argument("--pred-a", help="first prediction folder (<case>.nii.gz or <case>/<case>_trans.nii.gz)")
    review.add_argument("--pred-b", help="second prediction folder")
    review.add_argument("--ground-truth", help="ground-truth label folder, in the predictions' class ids")
    review.add_argument("--images", help="CT folder for the pictures (optional)")
    review.add_argument("--names", nargs=2, default=["a", "b"], metavar=("A", "B"), help="names of the two sets")
    review.add_argument("--output-dir", help="where the review goes (with --pred-a/--pred-b)")
    review.add_argument("--tolerance-mm", type=float, default=2.0, help="normalized surface Dice tolerance")
    review.set_defaults(handler=cmd_review)

    verify = commands.add_parser("verify", help="audit a finished run folder (CPU only); exit 0 if every tier passes")
    verify.add_argument("run_dir", help="the run folder holding output.json")
    verify.set_defaults(handler=cmd_verify)
