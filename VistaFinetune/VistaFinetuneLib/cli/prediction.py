"""``predict`` and ``serve``: segment with the pretrained or a finetuned model, once or from a warm worker."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from VistaFinetuneLib.bundle import tiny_bundle
from VistaFinetuneLib.errors import UserError


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
    """The model a predict or serve command names: a finetuned run or checkpoint, else the bundle's own weights;
    built with the run's config overrides, then those of ``--config-override``."""
    import dataclasses

    from VistaFinetuneLib.inference.models import checkpoint_model, pretrained_model, run_model
    from VistaFinetuneLib.inference.run_configs import check_override_files

    bundle = Path(args.bundle_dir) if args.bundle_dir else None
    if args.run and args.checkpoint:
        raise UserError("give --run or --checkpoint, not both")
    if args.run:
        model = run_model(Path(args.run), bundle)
    elif args.checkpoint:
        model = checkpoint_model(bundle or tiny_bundle.ensure_tiny_bundle(), Path(args.checkpoint))
    else:
        model = pretrained_model(bundle or tiny_bundle.ensure_tiny_bundle())
    extra = check_override_files([Path(p) for p in args.config_override])
    return dataclasses.replace(model, config_overrides=model.config_overrides + extra)


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
    from VistaFinetuneLib.inference.routing import lazy_pretrained
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
    if model.pretrained_weights:
        print(
            f"note: {model.run_dir}: its finetuned checkpoint equals the pretrained weights (no epoch beat them, the "
            "epoch-0 trap): these are the pretrained weights' predictions",
            file=sys.stderr,
        )
    if args.gpus > 1:
        return predict_multi_gpu(args, model, images, outputs, classes, model.class_table(names))
    predictor = Predictor(model, args.device, modality=args.modality)
    pretrained = lazy_pretrained(model, lambda spec: Predictor(spec, args.device, modality=args.modality))
    for image, output in zip(images, outputs, strict=True):
        request = SegmentRequest(
            image, output, classes=classes, points=points, point_labels=point_labels, points_space=args.points_space,
            everything=args.everything, class_names=names, use_point_window=False if args.no_point_window else None,
            routing=not args.no_routing,
        )  # fmt: skip
        result = segment(predictor, request, pretrained=pretrained)
        entries = result["labels"].items()
        found = ", ".join(f"{v} {e['name']} ({e['voxels']} voxels, {e['answered_by']})" for v, e in entries)
        print(f"{output}: {found or 'nothing'} [{result['timings']['total_s']:.1f} s]")
    return 0


def predict_multi_gpu(args, model, images: list[Path], outputs: list[Path], classes, table) -> int:
    """``predict --input-dir --gpus N``: torchrun over the bundle's multi-GPU inference configs."""
    from VistaFinetuneLib.bundle.runner import run_bundle
    from VistaFinetuneLib.inference.everything import folder_everything_ids
    from VistaFinetuneLib.inference.multi_gpu import adopt_bundle_output, bundle_output_of, multi_gpu_run

    if not args.input_dir or args.points:
        raise UserError("--gpus N (N > 1) segments a folder (--input-dir) by --classes or --everything")
    if args.everything:  # a plain list or the bundle's $ expression, evaluated as the bundle would
        listed = folder_everything_ids(
            model.config_file, model.bundle_dir, model.config_overrides, images, args.modality
        )
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
    if args.run or args.checkpoint or args.config_override:  # overrides alone: the bundle's weights, overridden
        models.append(selected_model(args))
    if not args.no_pretrained and (args.run or args.checkpoint or not args.config_override):
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
    command.add_argument(
        "--config-override", action="append", default=[], help="JSON file stacked on inference.json (after a run's)"
    )


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this group's commands, each with its handler."""
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
    predict.add_argument(
        "--no-routing",
        action="store_true",
        help="with --run: the run's checkpoint answers every class (default: only the classes it improved; the "
        "pretrained weights answer the others)",
    )
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
