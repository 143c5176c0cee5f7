"""``finetune`` and ``demo``: run a finetune with a progress bar and print what a person reads after it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from VistaFinetuneLib.bundle import tiny_bundle
from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.finetune.verdict import MIN_IMPROVEMENT
from VistaFinetuneLib.review.confusion import misplaced

DEMO_CASES = 10
DEMO_VAL_CASES = 3
DEMO_EPOCHS = 8
DEMO_LEARNING_RATE = 0.002


def run_with_progress(request) -> dict:
    """Run a finetune request with the progress bar on stderr."""
    from VistaFinetuneLib.finetune.pipeline import run_finetune
    from VistaFinetuneLib.progress import ProgressBar

    bar = ProgressBar()
    try:
        return run_finetune(request, bar)
    finally:
        bar.close()


def parse_patch(text: str) -> list[int]:
    """``--patch-size '[128,128,128]'`` (or a single number for a cube)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON; write it like '[128,128,128]'") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * 3
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(x, int) and x >= 16 for x in value)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected three integers >= 16")
    return value


def cmd_finetune(args: argparse.Namespace) -> int:
    """Finetune the bundle on a dataset; write RUN_DIR/output.json."""
    from VistaFinetuneLib.finetune.pipeline import FinetuneRequest

    dataset_dir = args.dataset_dir or args.dataset
    request = FinetuneRequest(
        output_dir=Path(args.output_dir),
        dataset_dir=Path(dataset_dir) if dataset_dir else None,
        datalist=Path(args.datalist) if args.datalist else None,
        bundle_dir=Path(args.bundle_dir) if args.bundle_dir else None,
        target_anatomy=args.target_anatomy,
        label_mapping=args.label_mapping,
        patch_size=args.patch_size,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        cache_rate=args.cache_rate,
        smoke=args.smoke,
        sanity=args.sanity,
        auto_seg=args.auto_seg,
        skip_formal_eval=args.skip_formal_eval,
        formal_eval=args.formal_eval,
        config_overrides=[Path(p) for p in args.config_override],
        device=args.device,
        resume=args.resume,
        skip_review=args.skip_review,
        prepare_only=args.prepare_only,
        min_improvement=args.min_improvement,
        class_names=args.class_names,
        argv=sys.argv[1:],
        unmapped=args.unmapped,
        classes=args.classes,
        continue_from=Path(args.continue_from) if args.continue_from else None,
        start_from=args.start_from,
        add_validation=args.add_validation,
        forgetting_threshold=args.forgetting_threshold,
        forgetting_max_classes=args.forgetting_max_classes,
    )
    result = run_with_progress(request)
    if result["status"] == "prepared":
        print(f"prepared {result['run_dir']}; run it elsewhere (same paths) with:")
        for name, command in result["commands"].items():
            print(f"  [{name}] {command}")
        return 0
    print_summary(result)
    return 0 if result["status"] == "completed" else 1


def mapped_class_names(result: dict) -> dict[int, str]:
    """VISTA3D id -> name for the run's mapped classes (from the bundle's label table when it can be read)."""
    try:
        catalog = {c.id: c.name for c in LabelCatalog.from_bundle(Path(result["model_repo"])).classes.values()}
    except UserError:
        catalog = {}
    return {t: catalog.get(t, f"class {t}") for _, t in result["input"]["label_mappings"]["default"]}


def print_summary(result: dict) -> None:
    """A few lines a person reads after a finetune."""
    out = result["output"]

    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    print(f"run: {result['runtime']['log_path'].rsplit('/logs/', 1)[0]} ({result['status']})")
    if result["error"]:
        print(f"error: {result['error']}")
    mapping = ", ".join(f"{a}->{b}" for a, b in result["input"]["label_mappings"]["default"])
    print(f"label mapping (label value -> VISTA3D id): {mapping}")
    dropped = result["input"].get("label_mapping_resolution", {}).get("unmapped")
    if dropped and dropped["values_set_to_background"]:
        print(
            f"set to background: label value(s) {dropped['values_set_to_background']} in "
            f"{dropped['relabelled_cases']} case(s), staged copies in {dropped['staged_labels_dir']}"
        )
    print(f"training-time validation Dice per epoch: {', '.join(score(v) for v in out['val_dice_per_epoch'])}")
    if out["formal_eval_enabled"]:
        print(
            f"formal Dice (original spacing): pretrained {score(out['formal_pretrained_val_dice'])} -> "
            f"finetuned {score(out['formal_finetuned_val_dice'])}"
        )
    print(f"finetuned checkpoint equals pretrained weights: {out['finetuned_ckpt_matches_pretrained_weights']}")
    print(f"recommended checkpoint: {out['recommended']} ({out['recommended_ckpt']})")
    for reason in out["decision_rationale"]:
        print(f"  - {reason}")
    names = mapped_class_names(result)
    for model, formal in out["formal_dice"].items():
        for sentence in misplaced(formal["confusion"], names):
            print(f"  {model}: {sentence}")
    print_rounds_and_forgetting(result)


def print_rounds_and_forgetting(result: dict) -> None:
    """The rounds so far (when more than one) and the forgetting guard's table."""
    from VistaFinetuneLib.finetune.forgetting import not_checked
    from VistaFinetuneLib.finetune.rounds import describe

    if len(result.get("rounds") or []) > 1:
        print("rounds (formal Dice on the same validation cases):")
        for line in describe(result["rounds"]):
            print(f"  {line}")
    guard = result.get("forgetting")
    if not guard:
        return
    print(f"forgetting guard (classes not finetuned; flagged below agreement {guard['threshold']:.2f}):")
    for class_id, entry in guard["classes"].items():
        truth = ""
        if entry["label_value"] is not None:
            before, after = entry["pretrained_vs_truth_dice"], entry["finetuned_vs_truth_dice"]
            truth = f", vs ground truth {score(before)} -> {score(after)}"
        flag = "  FLAGGED" if entry["flagged"] else ""
        print(f"  {entry['name']} ({class_id}): agreement {score(entry['agreement_dice'])}{truth}{flag}")
    if guard["classes_not_checked"]:
        print(f"  {guard['cap_reason']}; {not_checked(guard)}")


def score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded default job: teach the tiny pretrained VISTA3D a structure it does not know, and judge it."""
    from VistaFinetuneLib.finetune.pipeline import FinetuneRequest

    out_dir = Path(args.output_dir or time.strftime("runs/demo-%Y%m%d-%H%M%S"))
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: the folder is not empty; choose a new folder for the demo (--output-dir)")
    bundle = tiny_bundle.ensure_tiny_bundle()
    record = tiny_bundle.pretraining_record(bundle)
    known, untaught = tiny_bundle.PRETRAINED_CLASS, tiny_bundle.UNTAUGHT_CLASS
    print(
        f"Tiny pretrained VISTA3D: knows the {known[0]} (class {known[1]}, pretraining validation Dice "
        f"{record['best_val_mean_dice']:.3f}); has never been taught the {untaught[0]} (class {untaught[1]})."
    )
    spec = synthetic.PhantomSpec(label_values={known[0]: 1, untaught[0]: 2})
    items = synthetic.write_dataset(out_dir / "dataset", DEMO_CASES, seed=7, spec=spec)
    datalist = out_dir / "dataset" / "datalist.json"  # the first DEMO_VAL_CASES validate: enough for an interval
    folds = [{**item, "fold": 0 if index < DEMO_VAL_CASES else 1} for index, item in enumerate(items)]
    datalist.write_text(json.dumps({"training": folds}, indent=2) + "\n")
    names = {"0": "background", "1": known[0], "2": untaught[0]}  # the forgetting guard finds the liver by name
    (out_dir / "dataset" / "dataset.json").write_text(json.dumps({"labels": names}, indent=2) + "\n")
    print(
        f"Synthetic CT dataset: {DEMO_CASES} cases ({DEMO_VAL_CASES} for validation) in {out_dir / 'dataset'} "
        f"(label 1 = {known[0]}, 2 = {untaught[0]})"
    )
    print(
        f"Finetuning (class prompts) the {untaught[0]} with label mapping [[2, {untaught[1]}]] through the bundle "
        f"(--unmapped background: the {known[0]} label is set to 0 in staged copies) ..."
    )
    request = FinetuneRequest(
        output_dir=out_dir / "run",
        dataset_dir=out_dir / "dataset",
        datalist=datalist,
        bundle_dir=bundle,
        label_mapping=json.dumps([[2, untaught[1]]]),
        unmapped="background",
        epochs=DEMO_EPOCHS,
        learning_rate=DEMO_LEARNING_RATE,
        auto_seg=True,  # class prompts only: what the formal evaluation scores
        argv=sys.argv[1:],
    )
    result = run_with_progress(request)
    print()
    print_summary(result)
    formal = result["output"]["formal_dice"]
    if "pretrained" in formal and "finetuned" in formal:
        names = mapped_class_names(result)
        for class_id in formal["pretrained"]["per_class"]:
            before, after = formal["pretrained"]["per_class"][class_id], formal["finetuned"]["per_class"][class_id]
            shown = " -> ".join("-" if v is None else f"{v:.3f}" for v in (before, after))
            print(f"  {names[int(class_id)]} (class {class_id}): formal Dice {shown}")
    print(f"output.json: {out_dir / 'run' / 'output.json'}")
    return 0 if result["status"] == "completed" else 1


def add_round_arguments(finetune: argparse.ArgumentParser) -> None:
    """Rounds of the correction loop and the forgetting guard."""
    from VistaFinetuneLib.finetune.forgetting import AGREEMENT_THRESHOLD

    finetune.add_argument(
        "--continue-from",
        metavar="RUN",
        help="the next round of RUN: its training cases plus the new ones (DATASET or --datalist), its validation "
        "cases unchanged, its label mapping (--label-mapping may add classes)",
    )
    finetune.add_argument(
        "--start-from",
        choices=["pretrained", "previous"],
        default="pretrained",
        help="with --continue-from: train from the pretrained weights (default: one finetune on the merged data) "
        "or from the previous round's recommended checkpoint (faster; risks forgetting)",
    )
    finetune.add_argument(
        "--add-validation",
        action="store_true",
        help="with --continue-from: new cases in fold 0 of --datalist join validation (scored apart)",
    )
    finetune.add_argument(
        "--forgetting-threshold",
        type=float,
        default=AGREEMENT_THRESHOLD,
        help=f"flag a class not finetuned whose agreement with the pretrained model falls below this Dice "
        f"(default {AGREEMENT_THRESHOLD})",
    )
    finetune.add_argument(
        "--forgetting-max-classes", type=int, help="classes the forgetting guard checks at most (default: 2 on a CPU)"
    )


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this group's commands, each with its handler."""
    finetune = commands.add_parser("finetune", help="finetune the bundle on a dataset and write RUN_DIR/output.json")
    finetune.add_argument("dataset", nargs="?", help="dataset folder with imagesTr/ and labelsTr/")
    finetune.add_argument("--output-dir", required=True, help="the run folder (must be new unless --resume)")
    finetune.add_argument("--smoke", action="store_true", help="wiring check: micro synthetic data, 2 epochs")
    finetune.add_argument("--sanity", action="store_true", help="MSD Task06 lung tumour recipe of the seed skill")
    finetune.add_argument("--auto-seg", action="store_true", help="train class prompts only (no point prompts)")
    finetune.add_argument("--dataset-dir", help="dataset folder (same as DATASET); base of a datalist's paths")
    finetune.add_argument("--datalist", help="datalist JSON: training items with image, label and fold")
    finetune.add_argument("--target-anatomy", help="VISTA3D class for the single label value, by name")
    finetune.add_argument("--label-mapping", help="JSON pairs [[label value, VISTA3D id], ...]")
    finetune.add_argument(
        "--classes", help="dataset.json label names to finetune, e.g. liver,spleen (mapped by name to VISTA3D ids)"
    )
    finetune.add_argument(
        "--unmapped",
        choices=["refuse", "background"],
        default="refuse",
        help="label values the mapping leaves out: refuse (default), or set them to 0 in copies in the run folder",
    )
    finetune.add_argument("--patch-size", type=parse_patch, help="training patch, e.g. '[128,128,128]'")
    finetune.add_argument("--epochs", type=int)
    finetune.add_argument("--learning-rate", type=float)
    finetune.add_argument("--cache-rate", type=float)
    finetune.add_argument("--skip-formal-eval", action="store_true", help="skip evaluate.json before and after")
    finetune.add_argument("--formal-eval", action="store_true", help="with --smoke: run the formal evaluations")
    finetune.add_argument("--bundle-dir", help="bundle folder (default: the tiny reference bundle)")
    finetune.add_argument("--config-override", action="append", default=[], help="JSON file stacked last")
    finetune.add_argument("--device", help="cuda:0, cuda:N or cpu (default: cuda:0 when available)")
    finetune.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    finetune.add_argument("--prepare-only", action="store_true", help="stage the run and print commands to run it")
    finetune.add_argument("--skip-review", action="store_true", help="no review after the formal evaluations")
    finetune.add_argument(
        "--class-names",
        help='JSON {"VISTA3D id": "your name"} for mapped classes, e.g. \'{"133": "Tumor 1"}\' (kept for prediction)',
    )
    finetune.add_argument(
        "--min-improvement",
        type=float,
        default=MIN_IMPROVEMENT,
        help=f"smallest Dice gain that recommends the finetuned checkpoint (default {MIN_IMPROVEMENT})",
    )
    add_round_arguments(finetune)
    finetune.set_defaults(handler=cmd_finetune)

    demo = commands.add_parser("demo", help="run the embedded demo on synthetic data")
    demo.add_argument("--output-dir", help="default: runs/demo-<date>-<time>")
    demo.set_defaults(handler=cmd_demo)
