"""Which model a prediction uses: a bundle, a checkpoint (the bundle's own or a finetuned run's), and what the run
taught it (its label mapping's VISTA3D ids and the names the user gave them).

No torch here. A run folder is read, never written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.bundle.old_inferer import check_new_ids
from VistaFinetuneLib.data.mapping import parse_class_names
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.inference.prompts import SUBCLASS_PARENTS, UPSTREAM_CLASS_PROMPT_IDS, ClassTable
from VistaFinetuneLib.inference.run_configs import user_overrides_of_run
from VistaFinetuneLib.run_files import read_user_json

RUN_CHECKPOINTS = ("checkpoints/model_finetune.pt", "checkpoints/model_final.pt")
INFERENCE_CONFIG = "configs/inference.json"


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """One loadable model."""

    name: str
    bundle_dir: Path
    checkpoint: Path
    run_dir: Path | None = None
    finetuned_ids: tuple[int, ...] = ()
    user_names: dict[int, str] = field(default_factory=dict)
    config_overrides: tuple[Path, ...] = ()  # stacked on inference.json: the run's --config-override files, then now's
    pretrained_weights: bool = False  # a run whose checkpoint equals the bundle's weights (the epoch-0 trap)

    @property
    def weights(self) -> str:
        """What the weights are, for legends and model info: "pretrained weights" for the epoch-0 trap."""
        if self.run_dir is None:
            return "pretrained weights" if self.name == "pretrained" else "checkpoint"
        return "pretrained weights" if self.pretrained_weights else "finetuned"

    @property
    def config_file(self) -> Path:
        return self.bundle_dir / INFERENCE_CONFIG

    def class_table(self, extra_names: dict[int, str] | None = None) -> ClassTable:
        """The classes this model can be asked for, with names given now (``extra_names``) taking precedence."""
        names = self.user_names | (extra_names or {})
        return ClassTable(LabelCatalog.from_bundle(self.bundle_dir), self.finetuned_ids, names)

    def run_overrides(self, evaluator_target: str) -> dict:
        """Config overrides: no subclass expansion when a finetuned run mapped onto a subclass parent, and the
        engine's evaluator (:mod:`VistaFinetuneLib.inference.evaluator`: a run's new ids accepted as class prompts,
        points mapped in numpy) around the bundle's own (``evaluator_target``)."""
        finetuned = set(self.finetuned_ids)
        overrides: dict = {}
        if finetuned & set(SUBCLASS_PARENTS):
            overrides["subclass"] = {}
        overrides["evaluator#base_class"] = evaluator_target
        overrides["evaluator#class_ids"] = sorted(finetuned) if finetuned - UPSTREAM_CLASS_PROMPT_IDS else []
        overrides["evaluator#_target_"] = "VistaFinetuneLib.inference.evaluator.engine_evaluator"
        return overrides

    def describe(self) -> dict:
        return {
            "bundle_dir": str(self.bundle_dir),
            "checkpoint": str(self.checkpoint),
            "run_dir": None if self.run_dir is None else str(self.run_dir),
            "class_ids": list(self.finetuned_ids),
            "config_overrides": [str(p) for p in self.config_overrides],
            "weights": self.weights,
        }


def check_bundle(bundle_dir: Path) -> Path:
    """The bundle folder, which must hold ``configs/inference.json``."""
    bundle_dir = Path(bundle_dir).absolute()
    if not (bundle_dir / INFERENCE_CONFIG).is_file():
        raise UserError(f"{bundle_dir}: not a VISTA3D bundle folder (no {INFERENCE_CONFIG})")
    return bundle_dir


def pretrained_model(bundle_dir: Path, name: str = "pretrained") -> ModelSpec:
    """The bundle's own weights, ``models/model.pt``."""
    bundle_dir = check_bundle(bundle_dir)
    checkpoint = bundle_dir / "models" / "model.pt"
    if not checkpoint.is_file():
        raise UserError(f"{bundle_dir}: the bundle has no weights at models/model.pt (download them first)")
    return ModelSpec(name, bundle_dir, checkpoint)


def checkpoint_model(bundle_dir: Path, checkpoint: Path, name: str = "finetuned") -> ModelSpec:
    """A checkpoint file for the bundle's network (no run folder: no mapping or names known)."""
    checkpoint = Path(checkpoint).absolute()
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: the checkpoint file does not exist")
    return ModelSpec(name, check_bundle(bundle_dir), checkpoint)


def run_model(run_dir: Path, bundle_dir: Path | None = None, name: str = "finetuned") -> ModelSpec:
    """A finetuned run: its best checkpoint, its bundle, its label mapping's ids and the class names it recorded.

    The names come from ``run.json``'s optional ``"class_names"`` (``{"133": "Tumor 1"}``, written by whoever
    started the run, e.g. the Slicer module from the segment names).
    """
    run_dir = Path(run_dir).absolute()
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise UserError(f"{run_dir}: not a finetune run folder (no run.json)")
    record = read_user_json(run_json, "run record")
    checkpoint = next((run_dir / p for p in RUN_CHECKPOINTS if (run_dir / p).is_file()), None)
    if checkpoint is None:
        raise UserError(f"{run_dir}: the run has no finetuned checkpoint ({' or '.join(RUN_CHECKPOINTS)})")
    if bundle_dir is None:
        recorded = (record.get("request_resolved") or {}).get("bundle_dir") or (record.get("bundle") or {}).get("path")
        if not recorded:
            raise UserError(f"{run_json}: names no bundle folder; give --bundle-dir")
        bundle_dir = Path(recorded)
    pairs = (record.get("label_mappings") or {}).get("default") or []
    try:
        ids = tuple(sorted({int(pair[1]) for pair in pairs}))
    except (TypeError, ValueError, IndexError):
        raise UserError(f"{run_json}: label_mappings is not a list of [label value, VISTA3D id] pairs") from None
    names = parse_class_names(record.get("class_names"), str(run_json))
    bundle_dir = check_bundle(bundle_dir)
    check_new_ids(bundle_dir, ids, "this run's new classes")
    overrides = user_overrides_of_run(record, run_dir, bundle_dir, run_json)
    same = checkpoint_matches_pretrained(run_dir, checkpoint)
    return ModelSpec(name, bundle_dir, checkpoint, run_dir, ids, names, overrides, same)


def checkpoint_matches_pretrained(run_dir: Path, checkpoint: Path) -> bool:
    """Whether the run's output.json found this checkpoint tensor-for-tensor equal to the pretrained weights (no
    epoch beat the pretrained model's validation: the bundle kept its epoch-0 copy). False when unknown."""
    output = run_dir / "output.json"
    if not output.is_file():
        return False
    section = read_user_json(output, "run result").get("output") or {}
    comparison = (section.get("checkpoint_comparisons_to_pretrained") or {}).get(checkpoint.name) or {}
    return comparison.get("identical") is True
