"""Command line: ``vista-finetune`` / ``python -m VistaFinetuneLib``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from VistaFinetuneLib import __version__
from VistaFinetuneLib.bundle import tiny_bundle
from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.bundle.source import SOURCES as BUNDLE_SOURCES
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.finetune.verdict import MIN_IMPROVEMENT
from VistaFinetuneLib.review.confusion import misplaced

DEMO_CASES = 10
DEMO_VAL_CASES = 3
DEMO_EPOCHS = 8
DEMO_LEARNING_RATE = 0.002


def cmd_synthetic(args: argparse.Namespace) -> int:
    """Write a synthetic CT dataset (imagesTr/ + labelsTr/)."""
    spec = synthetic.MICRO_SPEC if args.micro else synthetic.PhantomSpec()
    out_dir = Path(args.out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: the folder is not empty; choose a new folder for the synthetic dataset")
    items = synthetic.write_dataset(out_dir, args.cases, seed=args.seed, spec=spec)
    print(f"Wrote {len(items)} synthetic CT cases ({'x'.join(map(str, spec.shape))} voxels) to {out_dir}")
    return 0


def cmd_tiny_bundle(args: argparse.Namespace) -> int:
    """Print the shipped tiny bundle's folder (weights checked); ``--rebuild DIR`` pretrains it again there."""
    if args.rebuild is None:
        print(tiny_bundle.ensure_tiny_bundle())
        return 0
    dest = Path(args.rebuild).absolute()
    if dest.exists():
        raise UserError(f"{dest}: already exists; --rebuild needs a new folder")
    record = tiny_bundle.build_tiny_bundle(dest, log=lambda m: print(m, file=sys.stderr))
    print(f"rebuilt {dest / 'models' / 'model.pt'} in {record['seconds']} s")
    print(f"best pretraining val_mean_dice {record['best_val_mean_dice']:.4f}")
    shipped = tiny_bundle.TEMPLATE_DIR / "docs" / "pretraining.json"
    if shipped.is_file():
        expected = tiny_bundle.pretraining_record(tiny_bundle.TEMPLATE_DIR).get("weights_sha256")
        same = "the same as" if record["weights_sha256"] == expected else "differs from"
        print(f"SHA-256 {record['weights_sha256']} ({same} the shipped {expected})")
    return 0


def run_with_progress(request) -> dict:
    """Run a finetune request with the progress bar on stderr."""
    from VistaFinetuneLib.finetune.pipeline import run_finetune
    from VistaFinetuneLib.progress import ProgressBar

    bar = ProgressBar()
    try:
        return run_finetune(request, bar)
    finally:
        bar.close()


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


def cmd_labels(args: argparse.Namespace) -> int:
    """List or search the bundle's classes; resolve free-text names to ids; list the free ids."""
    from VistaFinetuneLib.bundle.labels import ResolveError

    bundle = Path(args.bundle_dir) if args.bundle_dir else tiny_bundle.TEMPLATE_DIR
    catalog = LabelCatalog.from_bundle(bundle)
    if args.free:
        print(f"{len(catalog.free_ids())} ids the table leaves free for new structures: {catalog.free_ids_text()}")
        return 0
    if args.resolve:
        results = []
        for text in args.resolve:
            try:
                results.append(catalog.resolve_name(text).to_json())
            except ResolveError as error:
                if not args.json:
                    raise
                results.append(error.to_json())
        if args.json:
            table = {"bundle": str(bundle), "variant": catalog.variant, "table": catalog.source}
            print(json.dumps(table | {"results": results}, indent=2))
            return 0 if all(r["id"] is not None for r in results) else 1
        for result in results:
            print(f"{result['text']!r} -> {result['id']}: {result['name']}")
            if result["note"]:
                print(f"  note: {result['note']}")
        return 0
    query = " ".join(args.query)
    found = catalog.search(query)
    for item in found:
        print(item)
    if not found:
        suggestions = ", ".join(str(c) for c, _ in catalog.suggest(query)) or "none"
        print(f"no class matches {query!r}; similar: {suggestions}", file=sys.stderr)
        return 1
    return 0


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


def cmd_bundle_download(args: argparse.Namespace) -> int:
    """Download a VISTA3D bundle (pinned version) and record its weights' SHA-256."""
    from VistaFinetuneLib.bundle.source import bundle_info, download_bundle, format_info

    bundle = download_bundle(args.name, Path(args.dir), args.version, log=lambda m: print(m, file=sys.stderr))
    for line in format_info(bundle_info(bundle)):
        print(line)
    print(f"use it with: vista-finetune finetune ... --bundle-dir {bundle}")
    return 0


def cmd_bundle_info(args: argparse.Namespace) -> int:
    """Describe a bundle folder (reads only)."""
    from VistaFinetuneLib.bundle.source import bundle_info, format_info

    info = bundle_info(Path(args.dir))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for line in format_info(info):
            print(line)
    return 0


def format_job(state) -> list[str]:
    """A few lines describing a :class:`jobs.JobState` for a person."""
    from VistaFinetuneLib.progress import format_seconds

    lines = [f"state: {state.state}" + (f" (pid {state.pid})" if state.pid and state.state == "running" else "")]
    if state.return_code is not None:
        lines.append(f"return code: {state.return_code}")
    if state.phase:
        line = f"phase: {state.phase}"
        if state.phase == "train" and state.max_epochs:
            line += f"  epoch {state.epoch}/{state.max_epochs}"
            line += f"  iteration {state.iteration}/{state.iterations_per_epoch}"
            line += "" if state.loss is None else f"  loss {state.loss:.4f}"
            line += f"  ETA {format_seconds(state.eta_seconds)}"
        lines.append(line)
    if state.val_dice_per_epoch:
        lines.append(f"validation Dice per epoch: {', '.join(f'{v:.4f}' for v in state.val_dice_per_epoch)}")
    lines.append(f"run folder: {state.run_dir}")
    return lines


def cmd_jobs_start(args: argparse.Namespace) -> int:
    """Start an engine command as a background job writing to RUN_DIR."""
    from VistaFinetuneLib.jobs.control import start_job

    engine_args = args.engine_args[1:] if args.engine_args[:1] == ["--"] else args.engine_args
    if not engine_args:
        raise UserError("jobs start: give the engine command after --, e.g. jobs start RUN -- finetune --smoke")
    state = start_job(Path(args.run_dir), engine_args, python=args.python or sys.executable)
    print(f"started: {state.run_dir} (state {state.state})")
    print(f"follow it with: vista-finetune jobs status {state.run_dir}")
    return 0


def cmd_jobs_status(args: argparse.Namespace) -> int:
    """Describe the job of RUN_DIR (never waits)."""
    from VistaFinetuneLib.jobs.control import poll_job

    state = poll_job(Path(args.run_dir))
    if args.json:
        print(json.dumps(state.to_json(), indent=2))
        return 0
    for line in format_job(state):
        print(line)
    if state.log_tail:
        print("log:")
        for line in state.log_tail[-args.lines :]:
            print(f"  {line}")
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    """Cancel the job of RUN_DIR: SIGTERM, then SIGKILL after the grace period, for all its processes."""
    from VistaFinetuneLib.jobs.control import cancel_job

    started = time.monotonic()
    state = cancel_job(Path(args.run_dir), grace_seconds=args.grace, wait=not args.no_wait)
    print(f"{state.state} ({time.monotonic() - started:.1f} s): {state.run_dir}")
    return 0 if state.state in ("cancelled", "completed", "failed") or args.no_wait else 1


def cmd_jobs_list(args: argparse.Namespace) -> int:
    """One line per run folder under ROOT, newest first."""
    from VistaFinetuneLib.jobs.control import list_runs

    states = list_runs(Path(args.root))
    if args.json:
        print(json.dumps([s.to_json() for s in states], indent=2))
        return 0
    for s in states:
        epoch = f"{s.epoch}/{s.max_epochs}" if s.epoch is not None and s.max_epochs else "-"
        dice = f"{s.val_dice_per_epoch[-1]:.4f}" if s.val_dice_per_epoch else "-"
        print(f"{s.state:<9}  {s.phase or '-':<15}  epoch {epoch:<7}  Dice {dice:<6}  {s.run_dir}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """Describe a job environment (this interpreter or --python) and check it against the bundle's requirements."""
    from VistaFinetuneLib.jobs.environment import format_environment, probe_interpreter, requirements_report, unmet

    info = probe_interpreter(args.python or sys.executable)
    report = requirements_report(info)
    if args.json:
        print(json.dumps(info | {"requirements_report": report, "requirements_met": not unmet(report)}, indent=2))
    else:
        for line in format_environment(info, report):
            print(line)
    return 0 if not unmet(report) else 1


def cmd_env_create(args: argparse.Namespace) -> int:
    """Create the managed job environment: a venv with torch and the pinned requirements."""
    from VistaFinetuneLib.jobs.environment import (
        create_environment,
        format_environment,
        probe_interpreter,
        requirements_report,
    )

    python = create_environment(Path(args.dir), args.cuda)
    info = probe_interpreter(python)
    for line in format_environment(info, requirements_report(info)):
        print(line)
    print(f"check it any time with: vista-finetune env --python {python}")
    return 0


def json_argument(text: str, what: str):
    """A JSON value given inline or as the path of a .json file."""
    source = Path(text)
    if text.strip().lower().endswith(".json") and source.is_file():
        from VistaFinetuneLib.run_files import read_user_json

        return read_user_json(source, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{what} {text!r}: not JSON ({error.msg}) and not a .json file") from None


def selected_model(args: argparse.Namespace):
    """The model a predict or serve command names: a finetuned run or checkpoint, else the bundle's own weights."""
    from VistaFinetuneLib.inference.models import checkpoint_model, pretrained_model, run_model

    bundle = Path(args.bundle_dir) if args.bundle_dir else None
    if args.run and args.checkpoint:
        raise UserError("give --run or --checkpoint, not both")
    if args.run:
        return run_model(Path(args.run), bundle)
    bundle = bundle or tiny_bundle.ensure_tiny_bundle()
    if args.checkpoint:
        return checkpoint_model(bundle, Path(args.checkpoint))
    return pretrained_model(bundle)


def prediction_inputs(args: argparse.Namespace) -> list[Path]:
    """IMAGE, or every NIfTI file of --input-dir (sorted)."""
    if bool(args.image) == bool(args.input_dir):
        raise UserError("predict: give one IMAGE or --input-dir DIR")
    if args.image:
        return [Path(args.image).absolute()]
    folder = Path(args.input_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: the input folder does not exist")
    images = sorted(p.absolute() for p in folder.iterdir() if p.name.lower().endswith((".nii.gz", ".nii")))
    if not images:
        raise UserError(f"{folder}: no .nii.gz or .nii images in the input folder")
    if args.points:
        raise UserError("predict: points belong to one image; give IMAGE instead of --input-dir with --points")
    return images


def cmd_predict(args: argparse.Namespace) -> int:
    """Segment one image or a folder with the pretrained or a finetuned model; write labels and legends."""
    from VistaFinetuneLib.data.mapping import parse_class_names
    from VistaFinetuneLib.inference.outputs import image_stem
    from VistaFinetuneLib.inference.predictor import Predictor
    from VistaFinetuneLib.inference.segment import SegmentRequest, segment

    images = prediction_inputs(args)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    points = json_argument(args.points, "--points") if args.points else None
    point_labels = json_argument(args.point_labels, "--point-labels") if args.point_labels else None
    names = (
        parse_class_names(json_argument(args.class_names, "--class-names"), "--class-names") if args.class_names else {}
    )
    out_dir = Path(args.output_dir).absolute()
    outputs = [out_dir / f"{image_stem(image)}.nii.gz" for image in images]
    existing = [str(p) for p in outputs if p.exists()]
    if existing:
        raise UserError(f"{existing[0]}: the output exists already; choose a new --output-dir")
    model = selected_model(args)
    if args.gpus > 1:
        return predict_multi_gpu(args, model, images, outputs, classes, model.class_table(names))
    predictor = Predictor(model, args.device, modality=args.modality)
    for image, output in zip(images, outputs, strict=True):
        request = SegmentRequest(
            image, output, classes=classes, points=points, point_labels=point_labels, points_space=args.points_space,
            everything=args.everything, class_names=names, use_point_window=False if args.no_point_window else None,
        )  # fmt: skip
        result = segment(predictor, request)
        found = ", ".join(f"{v} {e['name']} ({e['voxels']} voxels)" for v, e in result["labels"].items()) or "nothing"
        print(f"{output}: {found} [{result['timings']['total_s']:.1f} s]")
    return 0


def predict_multi_gpu(args, model, images: list[Path], outputs: list[Path], classes, table) -> int:
    """``predict --input-dir --gpus N``: torchrun over the bundle's multi-GPU inference configs."""
    from VistaFinetuneLib.bundle.runner import run_bundle
    from VistaFinetuneLib.inference.multi_gpu import adopt_bundle_output, bundle_output_of, multi_gpu_run

    if not args.input_dir or args.points:
        raise UserError("--gpus N (N > 1) segments a folder (--input-dir) by --classes or --everything")
    if args.everything:
        listed = json.loads(model.config_file.read_text(encoding="utf-8")).get("everything_labels")
        if not isinstance(listed, list):
            raise UserError(f"{model.config_file}: everything_labels is not a plain list; give --classes")
        class_ids = sorted(set(listed) | set(model.finetuned_ids))
    elif classes:
        class_ids = list(dict.fromkeys(table.resolve(c) for c in classes))
    else:
        raise UserError("nothing to segment: give --classes or --everything")
    work_dir = Path(args.output_dir).absolute() / ".bundle-run"
    run = multi_gpu_run(model, Path(args.input_dir), work_dir, class_ids, args.gpus)
    print("$ " + " ".join(run.command()), file=sys.stderr)
    code = run_bundle(run)
    if code != 0:
        raise UserError(f"the multi-GPU bundle run failed (exit code {code}); see {run.log_path}")
    for image, output in zip(images, outputs, strict=True):
        adopt_bundle_output(model, table, image, bundle_output_of(work_dir, image), output, class_ids)
        print(output)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The warm worker: JSON-lines requests on stdin (and optionally a 127.0.0.1 socket)."""
    import tempfile

    from VistaFinetuneLib.inference.models import pretrained_model
    from VistaFinetuneLib.inference.predictor import Predictor
    from VistaFinetuneLib.inference.worker import start_worker

    models = []
    if args.run or args.checkpoint:
        models.append(selected_model(args))
    if not args.no_pretrained:
        bundle = Path(args.bundle_dir) if args.bundle_dir else (models[0].bundle_dir if models else None)
        models.insert(0, pretrained_model(bundle or tiny_bundle.ensure_tiny_bundle()))
    out_dir = Path(args.output_dir).absolute() if args.output_dir else Path(tempfile.mkdtemp(prefix="vistafinetune-"))

    def build(spec):
        return Predictor(
            spec, args.device, use_point_window=False if args.no_point_window else None,
            encoder_cache_bytes=args.encoder_cache_mb << 20, modality=args.modality,
        )  # fmt: skip

    return start_worker(models, out_dir, build, use_socket=args.socket, parent_pid=args.parent_pid)


def add_model_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--bundle-dir", help="bundle folder (default: the run's bundle, else the tiny bundle)")
    command.add_argument("--run", help="a finetune run folder: its checkpoint, label mapping and class names")
    command.add_argument("--checkpoint", help="a checkpoint file for the bundle's network")
    command.add_argument("--device", help="cuda:0, cuda:N or cpu (default: the bundle's choice)")
    command.add_argument("--modality", help="NV-Segment-CTMR: CT_BODY, MRI_BODY or MRI_BRAIN")
    command.add_argument("--no-point-window", action="store_true", help="clicks over the whole image, not windows")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vista-finetune", description="Finetune the MONAI VISTA3D bundle on your CT data."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synthetic", help="write a synthetic CT-like dataset")
    synth.add_argument("out_dir")
    synth.add_argument("--cases", type=int, default=8)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--micro", action="store_true", help="small volumes for smoke runs")
    synth.set_defaults(handler=cmd_synthetic)

    tiny = commands.add_parser("tiny-bundle", help="print the shipped tiny reference bundle's folder")
    tiny.add_argument("--rebuild", metavar="DIR", help="pretrain the tiny bundle again into the new folder DIR")
    tiny.set_defaults(handler=cmd_tiny_bundle)

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
    finetune.set_defaults(handler=cmd_finetune)

    labels = commands.add_parser("labels", help="list, search or resolve the bundle's class names")
    labels.add_argument("query", nargs="*", help="words to search for (none: list all)")
    labels.add_argument("--resolve", action="append", help="resolve a free-text name to one id (repeatable)")
    labels.add_argument("--free", action="store_true", help="the ids a brand-new structure can map to")
    labels.add_argument("--bundle-dir", help="bundle folder (default: the tiny reference bundle's CT table)")
    labels.add_argument("--json", action="store_true", help="with --resolve: results as JSON (exit 1 if any fail)")
    labels.set_defaults(handler=cmd_labels)

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

    bundle = commands.add_parser("bundle", help="download a VISTA3D bundle or describe a bundle folder")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    download = bundle_commands.add_parser("download", help="download a bundle and checksum its weights")
    download.add_argument("--name", required=True, choices=list(BUNDLE_SOURCES))
    download.add_argument("--version", help="bundle version (vista3d) or Hugging Face revision (default: pinned)")
    download.add_argument("--dir", required=True, help="parent folder; the bundle goes to DIR/NAME")
    download.set_defaults(handler=cmd_bundle_download)
    info = bundle_commands.add_parser("info", help="describe a bundle folder: configs, weights, labels, monai")
    info.add_argument("dir", help="the bundle folder")
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.set_defaults(handler=cmd_bundle_info)

    jobs = commands.add_parser("jobs", help="background jobs: start, follow, cancel and list runs")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    start = jobs_commands.add_parser("start", help="start an engine command in the background: RUN_DIR -- ARGS...")
    start.add_argument("run_dir", help="the job's run folder (its files go to the hidden .RUN_DIR.job beside it)")
    start.add_argument("--python", help="the interpreter of the job (default: this one)")
    start.add_argument("engine_args", nargs=argparse.REMAINDER, help="-- then the engine's arguments")
    start.set_defaults(handler=cmd_jobs_start)
    status = jobs_commands.add_parser("status", help="the state, progress and log tail of a run (never waits)")
    status.add_argument("run_dir")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.add_argument("--lines", type=int, default=10, help="log lines to show")
    status.set_defaults(handler=cmd_jobs_status)
    cancel = jobs_commands.add_parser("cancel", help="cancel a running job and every process it started")
    cancel.add_argument("run_dir")
    cancel.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    cancel.add_argument("--no-wait", action="store_true", help="return at once instead of when all have ended")
    cancel.set_defaults(handler=cmd_jobs_cancel)
    listing = jobs_commands.add_parser("list", help="one line per run folder under ROOT, newest first")
    listing.add_argument("root")
    listing.add_argument("--json", action="store_true", help="print the states as JSON")
    listing.set_defaults(handler=cmd_jobs_list)

    env = commands.add_parser(
        "env", help="describe a job environment and check the bundle's requirements (exit 1: not met)"
    )
    env.add_argument("--python", help="the interpreter to probe (default: this one)")
    env.add_argument("--json", action="store_true", help="print the description as JSON")
    env.set_defaults(handler=cmd_env)
    env_commands = env.add_subparsers(dest="env_command")
    create = env_commands.add_parser("create", help="create the managed job environment (venv + pinned stack)")
    create.add_argument("dir", help="a new folder for the venv")
    create.add_argument("--cuda", choices=["cu121", "cu124", "cu126", "cpu"], help="torch build (required with a GPU)")
    create.set_defaults(handler=cmd_env_create)

    predict = commands.add_parser("predict", help="segment images by class, points or everything")
    predict.add_argument("image", nargs="?", help="a CT image (.nii.gz)")
    predict.add_argument("--input-dir", help="segment every .nii.gz/.nii image of this folder")
    predict.add_argument("--output-dir", required=True, help="where <image>.nii.gz and <image>.legend.json go")
    add_model_arguments(predict)
    predict.add_argument("--classes", help='class ids or names, comma-separated: "liver, left kidney, 133"')
    predict.add_argument("--points", help="JSON [[x, y, z], ...] (or a .json file) of points on one object")
    predict.add_argument("--point-labels", help="JSON [1, 0, ...]: 1 positive, 0 negative, one per point")
    predict.add_argument("--points-space", choices=["ras", "ijk"], default="ras", help="RAS mm or voxel indices")
    predict.add_argument("--everything", action="store_true", help="the bundle's everything list (+ run classes)")
    predict.add_argument("--class-names", help='JSON {"133": "Tumor 1"}: names you gave to classes')
    predict.add_argument("--gpus", type=int, default=1, help="N > 1: torchrun over the bundle's multi-GPU configs")
    predict.set_defaults(handler=cmd_predict)

    serve = commands.add_parser("serve", help="the warm worker: JSON-lines requests on stdin/stdout")
    add_model_arguments(serve)
    serve.add_argument("--no-pretrained", action="store_true", help="do not load the bundle's weights at start")
    serve.add_argument("--output-dir", help="default folder for outputs (default: a new temporary folder)")
    serve.add_argument("--socket", action="store_true", help="also listen on 127.0.0.1 (port and token in 'ready')")
    serve.add_argument("--parent-pid", type=int, help="exit when this process ends (default: the parent)")
    serve.add_argument("--encoder-cache-mb", type=int, default=2048, help="memory for encoder outputs per model")
    serve.set_defaults(handler=cmd_serve)

    demo = commands.add_parser("demo", help="run the embedded demo on synthetic data")
    demo.add_argument("--output-dir", help="default: runs/demo-<date>-<time>")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
