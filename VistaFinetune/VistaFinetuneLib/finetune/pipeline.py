"""The finetune job, step by step: stage a run folder, run the bundle's phases, score and decide, write output.json.

Phases (:mod:`phases`), each a ``python -m monai.bundle run`` child with its own log in ``RUN_DIR/logs/``:
formal evaluation of the pretrained checkpoint (``evaluate.json``, original spacing) -> training
(``train.json`` + ``train_continual.json`` + overrides) -> formal evaluation of the finetuned checkpoint.
The verdict is :mod:`verdict`'s, the document :mod:`result`'s.
Runs in a job process: imports torch (through :mod:`environment` and :mod:`checkpoints`) when called.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import threading
import time
from pathlib import Path

from VistaFinetuneLib import environment
from VistaFinetuneLib.bundle import tiny_bundle
from VistaFinetuneLib.bundle.compat import compatibility_overrides, installed_monai
from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.bundle.old_inferer import check_new_ids
from VistaFinetuneLib.bundle.runner import BundleRun
from VistaFinetuneLib.bundle.source import sha256_file
from VistaFinetuneLib.bundle.variant import identify_variant
from VistaFinetuneLib.data import dataset, label_names, relabel, synthetic
from VistaFinetuneLib.data.mapping import check_mapping, mapping_for_anatomy, parse_class_names, parse_mapping
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.finetune import checkpoints, forgetting, rounds, staging
from VistaFinetuneLib.finetune.formal_dice import formal_dice
from VistaFinetuneLib.finetune.phases import PhaseOutcome, Progress, StatusWriter, run_phases
from VistaFinetuneLib.finetune.plan import Plan, make_plan
from VistaFinetuneLib.finetune.result import result_document
from VistaFinetuneLib.finetune.run_state import FinetuneRequest, RunScores, StagedRun
from VistaFinetuneLib.finetune.verdict import decide
from VistaFinetuneLib.jobs.remote_run import write_remote_files
from VistaFinetuneLib.review.compare import review_run
from VistaFinetuneLib.run_files import read_json, read_user_json, write_json_atomic
from VistaFinetuneLib.schema import validate_output

SMOKE_MAPPING = [[1, 1], [2, 3], [3, 14]]  # synthetic phantoms: liver, spleen, left kidney
SANITY_MAPPING = [[1, 23]]  # MSD Task06: lung tumour
SANITY_PATCH = [128, 128, 128]
SANITY_LEARNING_RATE = 5e-5


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
    previous = read_json(run_dir / "run.json") if request.resume else {}
    if request.resume:
        request = FinetuneRequest.from_json(previous["request_resolved"] | {"resume": True})
    staged = stage_run(request, run_dir)
    write_run_record(staged, previous)
    if request.prepare_only:
        return prepared_result(staged)
    # The verdict compares checkpoints with torch: importing it while the phases run hides those seconds.
    threading.Thread(target=importlib.import_module, args=("torch",), daemon=True).start()
    status = StatusWriter(run_dir, progress)
    outcome = run_phases(
        staged.phases, staged.stacks, staged.bundle_dir, run_dir, staged.plan.nproc_per_node, status, previous
    )
    result = result_document(staged, outcome, score_run(staged, outcome), time.monotonic() - started)
    add_rounds_and_forgetting(staged, outcome, result)
    validate_output(result)
    write_json_atomic(run_dir / "output.json", result)
    if staged.formal and not outcome.failed and not request.skip_review:
        status.update(force=True, phase="review")
        result["review"] = review_run(run_dir)
        validate_output(result)
        write_json_atomic(run_dir / "output.json", result)
    status.update(force=True, state="failed" if outcome.failed else "completed", phase=None)
    return result


def add_rounds_and_forgetting(staged: StagedRun, outcome: PhaseOutcome, result: dict) -> None:
    """``rounds`` and ``forgetting`` in output.json, and what they mean in the verdict's rationale."""
    if outcome.failed:
        return
    result["rounds"] = rounds.rounds_section(staged.run_dir, result)
    if staged.formal and staged.finetuned_ckpt.is_file():
        threshold, cap = staged.request.forgetting_threshold, staged.request.forgetting_max_classes
        try:
            result["forgetting"] = forgetting.check(staged, threshold, cap)
            rationale = forgetting.rationale(result["forgetting"])
        except UserError as error:  # the run's own result stands; say why the guard could not look
            rationale = [f"forgetting guard: could not run ({error})"]
    else:
        rationale = []
    result["output"]["decision_rationale"] += rounds.round_rationale(staged.run_dir) + rationale


def stage_run(request: FinetuneRequest, run_dir: Path) -> StagedRun:
    """Check every input, read the cases, make the plan and write the phases' override files."""
    previous = None
    if request.continue_from is not None and not request.resume:
        previous = rounds.read_previous(request.continue_from)
        request = rounds.inherit(request, previous)
    formal = (not request.skip_formal_eval) and (not request.smoke or request.formal_eval)
    bundle_dir = (request.bundle_dir or tiny_bundle.ensure_tiny_bundle()).absolute()
    bundle = check_bundle(bundle_dir, formal)
    for path in request.config_overrides:
        if not path.is_file():
            raise UserError(f"{path}: --config-override file not found")
    check_numbers(request)
    catalog = LabelCatalog.from_bundle(bundle_dir)
    if previous is None:
        cases, datalist, source = load_cases(request, run_dir)
    else:
        added = rounds.new_cases(request)
        cases = rounds.merge_cases(previous, added, request.add_validation)
        datalist, source = run_dir / "dataset" / "datalist.json", f"{previous.run_dir} + {len(added)} new case(s)"
    audit = dataset.audit_cases(cases)
    if previous is None:
        mapping, resolution = resolve_mapping(request, catalog, audit.label_values)
    else:
        mapping, resolution = rounds.merged_mapping(previous, request.label_mapping)
        rounds.check_new_labels(added, audit, mapping, request.unmapped, catalog, request)
        rounds.write_round(run_dir, previous, request.start_from, added, cases)
    warnings = check_mapping(mapping, audit.label_values, catalog, request.unmapped)
    check_new_ids(bundle_dir, [target for _, target in mapping], "the mapping's new ids")
    if not request.resume:
        rounds.write_source_cases(run_dir, cases)
    class_names = mapped_class_names(request.class_names, mapping)
    if request.unmapped == "background":  # relabelled copies in the run folder; the user's labels stay as they are
        labels_dir = run_dir / "dataset" / "labels"
        cases, resolution["unmapped"] = relabel.stage_background(cases, audit, [a for a, _ in mapping], labels_dir)
    if request.resume:  # what was dropped (and how the mapping was found) is known from the first start
        resolution = read_json(run_dir / "run.json").get("label_mapping_resolution", resolution)
    datalist.parent.mkdir(parents=True, exist_ok=True)
    dataset.write_datalist(cases, datalist)
    env = environment.probe(request.device)
    auto_seg = request.auto_seg or request.sanity
    plan = plan_training(request, env, bundle_dir, sum(1 for c in cases if c.fold != 0), len(mapping), auto_seg)
    stacks, compat_names = write_config_stacks(request, run_dir, bundle_dir, datalist, mapping, plan, auto_seg)
    return StagedRun(
        request, run_dir, bundle_dir, bundle, formal, cases, datalist, source, audit, mapping, resolution,
        warnings, env, plan, auto_seg, stacks, compat_names, class_names,
    )  # fmt: skip


def mapped_class_names(text: str | None, mapping: list[list[int]]) -> dict[int, str]:
    """``--class-names``: the user's names of mapped classes (VISTA3D id -> name); each id must be mapped."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f'--class-names {text!r} is not JSON; write it like \'{{"133": "Tumor 1"}}\'') from None
    names = parse_class_names(value, "--class-names")
    targets = {target for _, target in mapping}
    unmapped = sorted(set(names) - targets)
    if unmapped:
        trained = sorted(targets)
        raise UserError(f"--class-names names id(s) {unmapped} that the label mapping does not train ({trained})")
    return names


def plan_training(
    request: FinetuneRequest, env: dict, bundle_dir: Path, n_train: int, n_classes: int, auto_seg: bool
) -> Plan:
    """The engine's plan for this machine, with the caller's flags and the presets (smoke, sanity) applied;
    ``n_classes`` mapped classes are prompted each step, with point prompts unless ``auto_seg``."""
    settings = dict(
        patch_size=flag_or_preset(request.patch_size, SANITY_PATCH, request.sanity),
        cache_rate=request.cache_rate,
        epochs=request.epochs,
        learning_rate=flag_or_preset(request.learning_rate, SANITY_LEARNING_RATE, request.sanity),
        default_epochs=2 if request.smoke else 5,
        n_classes=n_classes,
        point_prompts=not auto_seg,
    )
    plan = make_plan(env, n_train, allow_multi_gpu=not (request.sanity or request.smoke), **settings)
    if plan.multi_gpu and not (bundle_dir / "configs" / "multi_gpu_train.json").is_file():
        plan = make_plan(env, n_train, allow_multi_gpu=False, **settings)
        plan.rationale.append("single process: the bundle has no configs/multi_gpu_train.json")
    return plan


def write_config_stacks(
    request: FinetuneRequest,
    run_dir: Path,
    bundle_dir: Path,
    datalist: Path,
    mapping: list[list[int]],
    plan: Plan,
    auto_seg: bool,
) -> tuple[dict[str, list[Path]], list[str]]:
    """Write the override files into ``RUN_DIR/configs``; return each phase's config stack and the compat names."""
    configs_dir = run_dir / "configs"
    common = configs_dir / "overrides.json"
    write_json_atomic(
        common,
        staging.common_overrides(
            bundle_dir=bundle_dir, run_dir=run_dir, datalist=datalist, label_mappings=mapping, plan=plan,
            device=request.device, auto_seg=auto_seg,
        ),
    )  # fmt: skip
    train_extra = configs_dir / "train_overrides.json"
    compat, compat_names = compatibility_overrides(installed_monai())
    write_json_atomic(train_extra, staging.training_overrides() | compat | rounds.start_overrides(run_dir))
    checkpoints_by_phase = {
        "eval_pretrained": bundle_dir / "models" / "model.pt",
        "eval_finetuned": run_dir / "checkpoints" / "model_finetune.pt",
    }
    evaluation_device = request.device if plan.multi_gpu else None  # else in the common overrides
    for name, ckpt in checkpoints_by_phase.items():
        overrides = staging.evaluation_overrides(ckpt, run_dir / name, evaluation_device)
        write_json_atomic(configs_dir / f"{name}_overrides.json", overrides)
    user = copy_user_overrides(request.config_overrides, run_dir)
    base = [bundle_dir / "configs" / "train.json", bundle_dir / "configs" / "train_continual.json"]
    multi_gpu = [bundle_dir / "configs" / "multi_gpu_train.json"] if plan.multi_gpu else []
    stacks = {"train": [*base, *multi_gpu, common, train_extra, *user]}
    for name in checkpoints_by_phase:
        evaluate = bundle_dir / "configs" / "evaluate.json"
        stacks[name] = [*base, evaluate, common, configs_dir / f"{name}_overrides.json", *user]
    return stacks, compat_names


def user_override_copies(paths: list[Path], run_dir: Path) -> list[Path]:
    """Where the run keeps its copies of the ``--config-override`` files: ``RUN_DIR/configs/user/NN-name`` (a path
    there already, as on ``--resume``, is its own copy)."""
    folder = (run_dir / "configs" / "user").absolute()
    return [
        Path(path).absolute() if Path(path).absolute().parent == folder else folder / f"{index:02d}-{path.name}"
        for index, path in enumerate(paths, start=1)
    ]


def copy_user_overrides(paths: list[Path], run_dir: Path) -> list[Path]:
    """Copy the ``--config-override`` files into the run folder, so that the run keeps what it was trained with
    (prediction builds the model from them too, and ``--resume`` reads the copies)."""
    copies = user_override_copies(paths, run_dir)
    for path, copy in zip(paths, copies, strict=True):
        copy.parent.mkdir(parents=True, exist_ok=True)
        if path.absolute() != copy.absolute():
            shutil.copyfile(path, copy)
    return copies


def write_run_record(staged: StagedRun, previous: dict) -> None:
    """``run.json``: the request as given and as resolved (what --resume re-reads), bundle, mapping, plan, stacks."""
    request = staged.request
    resolved = request.to_json() | {
        "output_dir": str(staged.run_dir),
        "bundle_dir": str(staged.bundle_dir),
        "datalist": str(staged.datalist),
        "dataset_dir": None,
        "config_overrides": [str(p) for p in user_override_copies(request.config_overrides, staged.run_dir)],
        "label_mapping": json.dumps(staged.mapping),
        "target_anatomy": None,
        "classes": None,
        "continue_from": None,  # round.json holds it: a resumed round does not merge its cases again
        "add_validation": False,
        "resume": False,
        "prepare_only": False,
    }
    write_json_atomic(
        staged.run_dir / "run.json",
        {
            "request": previous.get("request", request.to_json()),
            "request_resolved": previous.get("request_resolved", resolved),
            "bundle": staged.bundle,
            "label_mappings": {"default": staged.mapping},
            "class_names": {str(k): v for k, v in staged.class_names.items()},
            "label_mapping_resolution": staged.resolution,
            "plan": staged.plan.to_json(),
            "config_stacks": {k: [str(p) for p in v] for k, v in staged.stacks.items()},
        },
    )


def prepared_result(staged: StagedRun) -> dict:
    """``--prepare-only``: the commands that run the phases elsewhere (same paths)."""
    run_dir = staged.run_dir
    runs = {
        name: BundleRun(
            staged.bundle_dir,
            staged.stacks[name],
            run_dir,
            run_dir / "logs" / f"{name}.log",
            run_dir / "configs" / f"{name}_args.json",
            nproc_per_node=staged.plan.nproc_per_node if name == "train" else 1,
        )  # fmt: skip
        for name in staged.phases
    }
    return {
        "status": "prepared",
        "run_dir": str(run_dir),
        "commands": write_remote_files(run_dir, runs, staged.plan.nproc_per_node),
    }


def score_run(staged: StagedRun, outcome: PhaseOutcome) -> RunScores:
    """Rescore the saved predictions, compare the checkpoints with the pretrained one, and decide."""
    formal = {
        name: formal_dice(staged.run_dir / name, staged.val_cases, staged.mapping)
        for name in ("eval_pretrained", "eval_finetuned")
        if staged.formal and name in outcome.done
    }
    comparisons = {
        path.name: checkpoints.compare_checkpoints(staged.pretrained_ckpt, path)
        for path in (staged.finetuned_ckpt, staged.final_ckpt)
        if path.is_file()
    }
    scores = RunScores(formal, comparisons, None)
    if not outcome.failed:
        trace = outcome.trace
        pair = (scores.pretrained, scores.finetuned) if scores.pretrained and scores.finetuned else None
        best = max(trace.val_dice_per_epoch) if trace.val_dice_per_epoch else None
        scores.verdict = decide(
            comparisons.get("model_finetune.pt"), pair, trace.start_dice, best, staged.request.min_improvement
        )
    return scores
