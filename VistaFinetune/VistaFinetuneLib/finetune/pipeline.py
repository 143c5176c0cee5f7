"""The finetune job: stage a run directory, run the bundle's phases, decide honestly, write output.json.

Phases, each a ``python -m monai.bundle run`` child with its own log in ``RUN_DIR/logs/``:
formal evaluation of the pretrained checkpoint (``evaluate.json``, original spacing) -> training
(``train.json`` + ``train_continual.json`` + overrides) -> formal evaluation of the finetuned checkpoint.
Runs in a job process: imports torch (through :mod:`environment` and :mod:`checkpoints`) when called.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from VistaFinetuneLib import __version__, environment
from VistaFinetuneLib.bundle import tiny_bundle
from VistaFinetuneLib.bundle.compat import compatibility_overrides, installed_monai
from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.bundle.log import TrainingTrace
from VistaFinetuneLib.bundle.runner import BundleRun, run_bundle
from VistaFinetuneLib.bundle.source import sha256_file
from VistaFinetuneLib.bundle.variant import identify_variant
from VistaFinetuneLib.data import dataset, label_names, relabel, synthetic
from VistaFinetuneLib.data.mapping import check_mapping, mapping_for_anatomy, parse_mapping
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.finetune import checkpoints, staging
from VistaFinetuneLib.finetune.formal_dice import METHOD as FORMAL_DICE_METHOD
from VistaFinetuneLib.finetune.formal_dice import formal_dice
from VistaFinetuneLib.finetune.plan import Plan, make_plan
from VistaFinetuneLib.jobs.gpu_monitor import GpuMemoryMonitor
from VistaFinetuneLib.jobs.remote_run import write_remote_files
from VistaFinetuneLib.review.compare import review_run
from VistaFinetuneLib.run_files import read_json, read_user_json, write_json_atomic
from VistaFinetuneLib.schema import validate_output

DISCLAIMER = (
    "Research use only. Not for clinical deployment, clinical interpretation, autonomous diagnosis or "
    "regulatory submission. Check every prediction."
)
SMOKE_MAPPING = [[1, 1], [2, 3], [3, 14]]  # synthetic phantoms: liver, spleen, left kidney
SANITY_MAPPING = [[1, 23]]  # MSD Task06: lung tumour
SANITY_PATCH = [128, 128, 128]
SANITY_LEARNING_RATE = 5e-5
SANITY_REFERENCE = {  # the DFW single-GPU Task06 run reproduced by the seed skill
    "formal_pretrained_val_dice": 0.65,
    "formal_finetuned_val_dice": 0.67,
    "formal_improvement_over_pretrained": 0.005,
    "training_start_val_dice": 0.65,
    "training_best_val_dice": 0.68,
    "improvement_over_baseline": 0.005,
}
PHASES = ("eval_pretrained", "train", "eval_finetuned")


@dataclass
class FinetuneRequest:
    """What the caller asked for (the CLI flags)."""

    output_dir: Path
    dataset_dir: Path | None = None
    datalist: Path | None = None
    bundle_dir: Path | None = None
    target_anatomy: str | None = None
    label_mapping: str | None = None
    patch_size: list[int] | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    cache_rate: float | None = None
    smoke: bool = False
    sanity: bool = False
    auto_seg: bool = False
    skip_formal_eval: bool = False
    formal_eval: bool = False
    skip_review: bool = False
    config_overrides: list[Path] = field(default_factory=list)
    device: str | None = None
    resume: bool = False
    prepare_only: bool = False
    argv: list[str] = field(default_factory=list)
    unmapped: str = "refuse"  # or "background": unmapped label values become 0 in staged copies
    classes: str | None = None  # comma-separated dataset.json label names to finetune

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_json(cls, data: dict) -> FinetuneRequest:
        """The inverse of :meth:`to_json`."""
        paths = ("output_dir", "dataset_dir", "datalist", "bundle_dir")
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: (Path(v) if k in paths and v is not None else v) for k, v in data.items() if k in known}
        fields["config_overrides"] = [Path(p) for p in data.get("config_overrides", [])]
        return cls(**fields)


Progress = Callable[[dict], None]


def check_bundle(bundle_dir: Path, formal: bool) -> dict:
    """The bundle must have the configs the phases use and its pretrained weights; describe it."""
    if not bundle_dir.is_dir():
        raise UserError(f"{bundle_dir}: bundle folder not found")
    needed = ["configs/train.json", "configs/train_continual.json"] + (["configs/evaluate.json"] if formal else [])
    missing = [name for name in needed if not (bundle_dir / name).is_file()]
    if missing:
        raise UserError(f"{bundle_dir}: not a VISTA3D bundle folder, missing {', '.join(missing)}")
    weights = bundle_dir / "models" / "model.pt"
    if not weights.is_file():
        raise UserError(
            f"{weights}: the bundle's pretrained weights are missing; download them "
            "(vista-finetune bundle download) or copy model.pt there"
        )
    configs = hashlib.sha256()
    for path in sorted((bundle_dir / "configs").glob("*.json")):
        configs.update(path.name.encode() + path.read_bytes())
    metadata = bundle_dir / "configs" / "metadata.json"
    meta = read_user_json(metadata, "bundle metadata") if metadata.is_file() else {}
    if not isinstance(meta, dict):
        raise UserError(f"{metadata}: the bundle metadata is not a JSON object")
    return {
        "path": str(bundle_dir),
        "name": str(meta.get("name") or bundle_dir.name),
        "version": None if meta.get("version") is None else str(meta["version"]),
        "variant": identify_variant(bundle_dir).key,  # which model's label table the names resolve against
        "configs_sha256": configs.hexdigest(),
        "weights_sha256": sha256_file(weights),
    }


def prepare_run_dir(request: FinetuneRequest) -> Path:
    """A fresh run folder, or (``--resume``) the folder of an earlier run of this command."""
    run_dir = request.output_dir.absolute()
    if request.resume:
        if not (run_dir / "run.json").is_file():
            raise UserError(f"{run_dir}: nothing to resume (no run.json); start a new run without --resume")
        return run_dir
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(
            f"{run_dir}: the folder already holds files (another run?); choose a new --output-dir or pass --resume"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def load_cases(request: FinetuneRequest, run_dir: Path) -> tuple[list[dataset.Case], Path, str]:
    """Find the training cases; with ``--smoke`` and no data, write the micro synthetic fixture."""
    if request.datalist is not None:
        cases = dataset.read_datalist(request.datalist.absolute(), request.dataset_dir)
        source = f"datalist {request.datalist}"
    elif request.dataset_dir is not None:
        cases = dataset.find_cases(request.dataset_dir.absolute())
        source = f"folder {request.dataset_dir}"
    elif request.smoke:
        fixture = run_dir / "dataset" / "synthetic"
        synthetic.write_dataset(fixture, 4, seed=0, spec=synthetic.MICRO_SPEC)
        cases = dataset.find_cases(fixture)
        source = "micro synthetic fixture (4 cases)"
    elif request.sanity:
        raise UserError(
            "--sanity reproduces the MSD Task06 lung tumour recipe and needs its data: pass the Task06_Lung "
            "folder (imagesTr/ + labelsTr/) as DATASET; none was given"
        )
    else:
        raise UserError("no training data: pass a DATASET folder (imagesTr/ + labelsTr/), --dataset-dir or --datalist")
    cases = dataset.assign_folds(cases, seed=0)
    return cases, run_dir / "dataset" / "datalist.json", source


def resolve_mapping(
    request: FinetuneRequest, catalog: LabelCatalog | None, label_values: list[int]
) -> tuple[list[list[int]], dict]:
    """The label mapping from the flags, dataset.json's label names, the preset, or (smoke on the synthetic
    fixture) its known classes."""
    if request.classes is not None and (request.label_mapping is not None or request.target_anatomy is not None):
        raise UserError("--classes picks among dataset.json's label names; give it or --label-mapping/--target-anatomy")
    if request.label_mapping is not None:
        return parse_mapping(request.label_mapping), {"source": "--label-mapping"}
    if request.target_anatomy is not None:
        if catalog is None:
            raise UserError("--target-anatomy needs the bundle's label table, which was not found")
        return mapping_for_anatomy(request.target_anatomy, catalog, label_values)
    if request.sanity and request.classes is None:
        return SANITY_MAPPING, {"source": "--sanity preset (MSD Task06 lung tumour)"}
    named = label_names.find_label_names(request.dataset_dir, request.datalist)
    if named is not None and catalog is not None:
        return label_names.mapping_from_names(*named, catalog, label_values, request.classes)
    if request.classes is not None:
        raise UserError("--classes: no MSD-style dataset.json with label names in the dataset folder or datalist")
    if request.smoke and request.dataset_dir is None and request.datalist is None:
        return SMOKE_MAPPING, {"source": "--smoke preset (synthetic liver, spleen, left kidney)"}
    raise UserError(
        f"no label mapping: the labels hold values {label_values}; pass --label-mapping '[[value, VISTA3D id]]' "
        "or --target-anatomy NAME (vista-finetune labels lists the ids)"
    )


class StatusWriter:
    """Rewrites ``status.json`` atomically as the run goes: phase, epoch, iteration, loss, Dice, ETA."""

    def __init__(self, run_dir: Path, progress: Progress | None) -> None:
        self.path = run_dir / "status.json"
        self.progress = progress
        self.state: dict = {"state": "running", "pid": os.getpid(), "phase": None, "phases": {}}
        self.last_write = 0.0
        self.epochs_seen = 0

    def update(self, force: bool = False, **fields) -> None:
        self.state.update(fields)
        self.state["updated"] = time.time()
        now = time.monotonic()
        if force or now - self.last_write >= 0.5:
            write_json_atomic(self.path, self.state)
            self.last_write = now
        if self.progress is not None:
            self.progress(self.state)

    def training_line(self, trace: TrainingTrace, phase_started: float) -> None:
        done = (max(trace.epoch, 1) - 1) * (trace.iterations_per_epoch or 0) + trace.iteration
        total = (trace.max_epochs or 0) * (trace.iterations_per_epoch or 0)
        elapsed = time.monotonic() - phase_started
        eta = elapsed / done * (total - done) if done and total else None
        self.update(
            epoch=trace.epoch,
            max_epochs=trace.max_epochs,
            iteration=trace.iteration,
            iterations_per_epoch=trace.iterations_per_epoch,
            loss=trace.losses[-1] if trace.losses else None,
            val_dice_per_epoch=trace.val_dice_per_epoch,
            eta_seconds=None if eta is None else round(eta, 1),
            force=len(trace.val_dice_by_epoch) != self.epochs_seen,  # every validation result reaches the file
        )
        self.epochs_seen = len(trace.val_dice_by_epoch)


def run_phase(
    name: str,
    bundle_dir: Path,
    config_files: list[Path],
    run_dir: Path,
    status: StatusWriter,
    trace: TrainingTrace | None = None,
    nproc_per_node: int = 1,
) -> dict:
    """Run one phase of the bundle; return its record (command, config stack, log, exit code, time, GPU peak)."""
    run = BundleRun(
        bundle_dir=bundle_dir,
        config_files=config_files,
        cwd=run_dir,
        log_path=run_dir / "logs" / f"{name}.log",
        args_path=run_dir / "configs" / f"{name}_args.json",
        nproc_per_node=nproc_per_node,
    )
    status.update(force=True, phase=name)
    started = time.monotonic()

    def on_line(line: str) -> None:
        if trace is not None and trace.feed(line):
            status.training_line(trace, started)

    with GpuMemoryMonitor() as monitor:
        code = run_bundle(run, on_line)
    record = {
        "command": " ".join(run.command()),
        "config_stack": [str(p) for p in config_files],
        "log": str(run.log_path),
        "return_code": code,
        "seconds": round(time.monotonic() - started, 1),
        "peak_gpu_mb": monitor.peak_mb,
    }
    status.state["phases"][name] = {"return_code": code, "seconds": record["seconds"]}
    status.update(force=True)
    return record


def check_numbers(request: FinetuneRequest) -> None:
    """Refuse numeric flags the bundle cannot run with."""
    if request.epochs is not None and request.epochs < 1:
        raise UserError(f"--epochs {request.epochs}: train for at least one epoch")
    if request.learning_rate is not None and request.learning_rate < 0:
        raise UserError(f"--learning-rate {request.learning_rate}: must not be negative")
    if request.cache_rate is not None and not 0.0 <= request.cache_rate <= 1.0:
        raise UserError(f"--cache-rate {request.cache_rate}: a fraction between 0 and 1")


def flag_or_preset(value, preset, preset_on: bool):
    """A caller's flag wins (0 included); else the preset's value when the preset is on; else None (the bundle's)."""
    if value is not None:
        return value
    return preset if preset_on else None


def log_tail(path: Path, lines: int = 20) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []


def decide(
    comparison: checkpoints.Comparison | None,
    formal_pre: float | None,
    formal_ft: float | None,
    start: float | None,
    best: float | None,
) -> tuple[str, list[str]]:
    """Pick ``pretrained`` or ``finetuned``: only a changed checkpoint that scores higher can win."""
    why = []
    if comparison is None:
        return "pretrained", ["no finetuned checkpoint was written"]
    if comparison.identical:
        return "pretrained", [
            "model_finetune.pt equals the pretrained weights tensor for tensor (the epoch-0 trap: no epoch beat "
            "the validation score of the pretrained model)"
        ]
    why.append(f"model_finetune.pt differs from the pretrained weights in {comparison.tensors_changed} tensors")
    if formal_pre is not None and formal_ft is not None:
        if formal_ft > formal_pre:
            why.append(f"formal Dice rose from {formal_pre:.4f} to {formal_ft:.4f}")
            return "finetuned", why
        why.append(f"formal Dice did not rise ({formal_pre:.4f} -> {formal_ft:.4f})")
        return "pretrained", why
    if start is not None and best is not None:
        if best > start:
            why.append(f"no formal evaluation; training-time Dice rose from {start:.4f} to {best:.4f}")
            return "finetuned", why
        why.append(f"no formal evaluation; training-time Dice did not rise ({start:.4f} -> {best:.4f})")
        return "pretrained", why
    why.append("no score to compare the checkpoints by")
    return "pretrained", why


def run_finetune(request: FinetuneRequest, progress: Progress | None = None) -> dict:
    """Run the whole job; return output.json's content (also written to ``RUN_DIR/output.json``).

    Bad input raises :class:`UserError` before any phase starts; a run folder this call created is then removed.
    """
    run_dir = request.output_dir.absolute()
    created = not run_dir.exists()
    try:
        return _run_finetune(request, progress)
    except UserError:
        if created and run_dir.is_dir() and not (run_dir / "run.json").exists():
            shutil.rmtree(run_dir)
        raise


def _run_finetune(request: FinetuneRequest, progress: Progress | None) -> dict:
    started = time.monotonic()
    run_dir = prepare_run_dir(request)
    if request.resume:
        request = FinetuneRequest.from_json(read_json(run_dir / "run.json")["request_resolved"] | {"resume": True})
    formal = (not request.skip_formal_eval) and (not request.smoke or request.formal_eval)
    bundle_dir = (request.bundle_dir or tiny_bundle.ensure_tiny_bundle(log=lambda m: None)).absolute()
    bundle = check_bundle(bundle_dir, formal)
    for path in request.config_overrides:
        if not path.is_file():
            raise UserError(f"{path}: --config-override file not found")
    check_numbers(request)
    catalog = LabelCatalog.from_bundle(bundle_dir)
    cases, datalist, source = load_cases(request, run_dir)
    audit = dataset.audit_cases(cases)
    mapping, resolution = resolve_mapping(request, catalog, audit.label_values)
    warnings = check_mapping(mapping, audit.label_values, catalog, request.unmapped)
    if request.unmapped == "background":  # relabelled copies in the run folder; the user's labels stay as they are
        labels_dir = run_dir / "dataset" / "labels"
        cases, resolution["unmapped"] = relabel.stage_background(cases, audit, [a for a, _ in mapping], labels_dir)
    datalist.parent.mkdir(parents=True, exist_ok=True)
    dataset.write_datalist(cases, datalist)
    train_cases = [c for c in cases if c.fold != 0]
    val_cases = [c for c in cases if c.fold == 0]
    env = environment.probe(request.device)
    preset_epochs = 2 if request.smoke else 5
    plan = make_plan(
        env,
        len(train_cases),
        patch_size=flag_or_preset(request.patch_size, SANITY_PATCH, request.sanity),
        cache_rate=request.cache_rate,
        epochs=request.epochs,
        learning_rate=flag_or_preset(request.learning_rate, SANITY_LEARNING_RATE, request.sanity),
        default_epochs=preset_epochs,
        allow_multi_gpu=not (request.sanity or request.smoke),
    )
    if plan.multi_gpu and not (bundle_dir / "configs" / "multi_gpu_train.json").is_file():
        plan = Plan(**{**plan.to_json(), "multi_gpu": False, "nproc_per_node": 1})
        plan.rationale.append("single process: the bundle has no configs/multi_gpu_train.json")
    auto_seg = request.auto_seg or request.sanity
    configs_dir = run_dir / "configs"
    common = configs_dir / "overrides.json"
    write_json_atomic(
        common,
        staging.common_overrides(
            bundle_dir=bundle_dir,
            run_dir=run_dir,
            datalist=datalist,
            label_mappings=mapping,
            plan=plan,
            device=request.device,
            auto_seg=auto_seg,
        ),
    )
    train_extra = configs_dir / "train_overrides.json"
    compat, compat_names = compatibility_overrides(installed_monai())
    write_json_atomic(train_extra, staging.training_overrides() | compat)
    pretrained_ckpt = bundle_dir / "models" / "model.pt"
    finetuned_ckpt = run_dir / "checkpoints" / "model_finetune.pt"
    final_ckpt = run_dir / "checkpoints" / "model_final.pt"
    evals = {
        "eval_pretrained": (pretrained_ckpt, run_dir / "eval_pretrained"),
        "eval_finetuned": (finetuned_ckpt, run_dir / "eval_finetuned"),
    }
    for name, (ckpt, out) in evals.items():
        write_json_atomic(configs_dir / f"{name}_overrides.json", staging.evaluation_overrides(ckpt, out))
    user = [p.absolute() for p in request.config_overrides]
    bundle_configs = bundle_dir / "configs"
    stacks = {
        "train": [bundle_configs / "train.json", bundle_configs / "train_continual.json"]
        + ([bundle_configs / "multi_gpu_train.json"] if plan.multi_gpu else [])
        + [common, train_extra, *user],
    }
    for name in evals:
        stacks[name] = [
            bundle_configs / "train.json",
            bundle_configs / "train_continual.json",
            bundle_configs / "evaluate.json",
            common,
            configs_dir / f"{name}_overrides.json",
            *user,
        ]
    # What --resume re-reads: the same cases, folds and mapping, whatever the original flags pointed at.
    resolved = request.to_json() | {
        "output_dir": str(run_dir),
        "bundle_dir": str(bundle_dir),
        "datalist": str(datalist),
        "dataset_dir": None,
        "config_overrides": [str(p) for p in user],
        "label_mapping": json.dumps(mapping),
        "target_anatomy": None,
        "classes": None,
        "resume": False,
        "prepare_only": False,
    }
    previous = read_json(run_dir / "run.json") if request.resume else {}
    resolution = previous.get("label_mapping_resolution", resolution)  # what was dropped is known at the start
    write_json_atomic(
        run_dir / "run.json",
        {
            "request": previous.get("request", request.to_json()),
            "request_resolved": previous.get("request_resolved", resolved),
            "bundle": bundle,
            "label_mappings": {"default": mapping},
            "label_mapping_resolution": resolution,
            "plan": plan.to_json(),
            "config_stacks": {k: [str(p) for p in v] for k, v in stacks.items()},
        },
    )

    if request.prepare_only:
        runs = {
            name: BundleRun(
                bundle_dir,
                stack,
                run_dir,
                run_dir / "logs" / f"{name}.log",
                run_dir / "configs" / f"{name}_args.json",
                nproc_per_node=plan.nproc_per_node if name == "train" else 1,
            )  # fmt: skip
            for name, stack in stacks.items()
            if formal or name == "train"
        }
        return {
            "status": "prepared",
            "run_dir": str(run_dir),
            "commands": write_remote_files(run_dir, runs, plan.nproc_per_node),
        }

    # The verdict compares checkpoints with torch: importing it while the phases run hides those seconds.
    threading.Thread(target=importlib.import_module, args=("torch",), daemon=True).start()
    status = StatusWriter(run_dir, progress)
    done = previous.get("phases_done", []) if request.resume else []
    phase_records: dict[str, dict] = dict(previous.get("phase_records", {}))
    trace = TrainingTrace()
    order = [p for p in PHASES if formal or p == "train"]
    failed = None
    for name in order:
        if name in done:
            phase_records[name]["skipped"] = True
            continue
        if name == "eval_finetuned" and not finetuned_ckpt.is_file():
            failed = failed or "training wrote no model_finetune.pt"
            break
        # A phase starts clean: leftovers of an interrupted attempt (this run's own files) would mislead.
        shutil.rmtree(run_dir / ("checkpoints" if name == "train" else name), ignore_errors=True)
        training = name == "train"
        record = run_phase(
            name, bundle_dir, stacks[name], run_dir, status, trace if training else None,
            plan.nproc_per_node if training else 1,
        )  # fmt: skip
        phase_records[name] = record
        if record["return_code"] != 0:
            failed = f"phase {name} failed with exit code {record['return_code']}; see {record['log']}"
            break
        done.append(name)
        run_json = read_json(run_dir / "run.json")
        write_json_atomic(run_dir / "run.json", run_json | {"phases_done": done, "phase_records": phase_records})
    if "train" in done and not trace.val_dice_by_epoch:
        for line in Path(phase_records["train"]["log"]).read_text(errors="replace").splitlines():
            trace.feed(line)

    formal_scores = {}
    if formal:
        for name, (_, out) in evals.items():
            if name in done:
                formal_scores[name] = formal_dice(out, val_cases, mapping)
    comparisons = {}
    for label, path in (("model_finetune.pt", finetuned_ckpt), ("model_final.pt", final_ckpt)):
        if path.is_file():
            comparisons[label] = checkpoints.compare_checkpoints(pretrained_ckpt, path)
    pre = formal_scores.get("eval_pretrained")
    ft = formal_scores.get("eval_finetuned")
    start = trace.start_dice
    best = max(trace.val_dice_per_epoch) if trace.val_dice_per_epoch else None
    # The bundle's own "Key metric ... at epoch: N" names the epoch model_finetune.pt holds (0: the pretrained).
    best_epoch = trace.best_epoch
    comparison = comparisons.get("model_finetune.pt")
    if failed:
        recommended, rationale = None, [failed]
    else:
        recommended, rationale = decide(comparison, pre and pre.mean, ft and ft.mean, start, best)
    recommended_ckpt = {"finetuned": finetuned_ckpt, "pretrained": pretrained_ckpt}.get(recommended)

    def difference(a, b):
        return None if a is None or b is None else round(b - a, 6)

    output = {
        "finetuned_ckpt": str(finetuned_ckpt) if finetuned_ckpt.is_file() else None,
        "finetuned_ckpt_exists": finetuned_ckpt.is_file(),
        "final_ckpt": str(final_ckpt) if final_ckpt.is_file() else None,
        "pretrained_ckpt": str(pretrained_ckpt),
        "recommended_ckpt": None if recommended_ckpt is None else str(recommended_ckpt),
        "recommended": recommended,
        "checkpoint_comparisons_to_pretrained": {k: v.to_json() for k, v in comparisons.items()},
        "finetuned_ckpt_matches_pretrained_weights": None if comparison is None else comparison.identical,
        "baseline_val_dice": start,
        "best_val_dice": best,
        "best_epoch_index": best_epoch,
        "improvement_over_baseline": difference(start, best),
        "regressed": None if start is None or best is None else best < start - 0.005,
        "improved": None if recommended is None else recommended == "finetuned",
        "training_start_val_dice": start,
        "training_best_val_dice": best,
        "training_best_epoch_index": best_epoch,
        "formal_eval_enabled": formal,
        "formal_pretrained_val_dice": pre and pre.mean,
        "formal_finetuned_val_dice": ft and ft.mean,
        "formal_improvement_over_pretrained": difference(pre and pre.mean, ft and ft.mean),
        "formal_regressed": None if not (pre and ft) else (ft.mean or 0) < (pre.mean or 0) - 0.005,
        "formal_improved": None if not (pre and ft) else (ft.mean or 0) > (pre.mean or 0),
        "formal_dice": {k.removeprefix("eval_"): v.to_json() for k, v in formal_scores.items()},
        "formal_dice_method": FORMAL_DICE_METHOD,
        "val_dice_per_epoch": trace.val_dice_per_epoch,
        "train_loss_first": trace.losses[0] if trace.losses else None,
        "train_loss_last": trace.losses[-1] if trace.losses else None,
        "train_loss_finite": trace.losses_finite,
        "oom": trace.oom,
        "decision_rationale": rationale + warnings,
        "sanity_reference_checks": None,
        "sanity_recovery_demonstrated": None,
    }
    if request.sanity and not failed:
        checks = {k: (output[k] is not None and output[k] >= v) for k, v in SANITY_REFERENCE.items()}
        checks["finetuned_ckpt_differs_from_pretrained"] = comparison is not None and not comparison.identical
        output["sanity_reference_checks"] = checks
        output["sanity_recovery_demonstrated"] = all(checks.values())
    main_log = Path(phase_records.get("train", {}).get("log", run_dir / "logs" / "train.log"))
    return_code = next((r["return_code"] for r in phase_records.values() if r.get("return_code")), 0)
    train_stack = [str(p) for p in stacks["train"]]
    result = {
        "skill": "nv_segment_ct_finetune",
        "producer": {"name": "VistaFinetune", "version": __version__},
        "status": "failed" if failed else "completed",
        "error": failed,
        "model": str(bundle["name"]),
        "model_repo": str(bundle_dir),
        "version": bundle["version"] or "unknown",
        "bundle": bundle,
        "input": {
            "dataset_dir": str(request.dataset_dir or datalist.parent),
            "datalist": str(datalist),
            "datalist_source": source,
            "n_train_cases": len(train_cases),
            "n_val_cases": len(val_cases),
            "label_mappings": {"default": mapping},
            "label_mapping_resolution": resolution,
            "dataset_audit": audit.to_json(),
            "smoke": request.smoke,
            "sanity": request.sanity,
            "auto_seg": auto_seg,
            "target_anatomy": request.target_anatomy,
        },
        "environment": env,
        "plan": plan.to_json(),
        "invocation": {
            "command": " ".join(phase_records.get("train", {}).get("command", "").split()),
            "command_prefix": " ".join(
                BundleRun(bundle_dir, [], run_dir, run_dir, run_dir, nproc_per_node=plan.nproc_per_node).command()[:-2]
            ),
            "config_stack": train_stack,
            "multi_gpu": plan.multi_gpu,
            "cwd": str(run_dir),
            "override_file": str(common),
            "argv": request.argv,
            "phases": {
                name: {"command": r["command"], "config_stack": r["config_stack"], "log": r["log"]}
                for name, r in phase_records.items()
            },
        },
        "output": output,
        "runtime": {
            "wall_seconds": round(time.monotonic() - started, 1),
            "peak_gpu_mb": max([r.get("peak_gpu_mb", 0) for r in phase_records.values()] + [0]),
            "phase_peak_gpu_mb": {k: r.get("peak_gpu_mb", 0) for k, r in phase_records.items()},
            "return_code": return_code,
            "log_path": str(main_log),
            "log_tail": log_tail(main_log),
            "phases": {
                k: {
                    "return_code": r.get("return_code"),
                    "seconds": r.get("seconds", 0.0),
                    "log": r["log"],
                    "skipped": bool(r.get("skipped")),
                }
                for k, r in phase_records.items()
            },
        },
        "compatibility_overrides": compat_names,
        "intended_use_disclaimer": DISCLAIMER,
    }
    validate_output(result)
    write_json_atomic(run_dir / "output.json", result)
    if formal and not failed and not request.skip_review:
        status.update(force=True, phase="review")
        result["review"] = review_run(run_dir)
        validate_output(result)
        write_json_atomic(run_dir / "output.json", result)
    status.update(force=True, state="failed" if failed else "completed", phase=None)
    return result
