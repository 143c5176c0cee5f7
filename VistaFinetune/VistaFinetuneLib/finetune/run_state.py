"""The state of a finetune run as the pipeline passes it on: the request (the CLI flags), the staged run (inputs
checked, plan made, configs written) and the scores; shared by :mod:`pipeline` and :mod:`result`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from VistaFinetuneLib.data import dataset
from VistaFinetuneLib.finetune import checkpoints
from VistaFinetuneLib.finetune.forgetting import AGREEMENT_THRESHOLD
from VistaFinetuneLib.finetune.formal_dice import FormalDice
from VistaFinetuneLib.finetune.phases import PHASES
from VistaFinetuneLib.finetune.plan import Plan
from VistaFinetuneLib.finetune.verdict import MIN_IMPROVEMENT, Verdict


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
    min_improvement: float = MIN_IMPROVEMENT
    class_names: str | None = None  # JSON {"133": "Tumor 1"}: the user's names of mapped classes
    argv: list[str] = field(default_factory=list)
    unmapped: str = "refuse"  # or "background": unmapped label values become 0 in staged copies
    classes: str | None = None  # comma-separated dataset.json label names to finetune
    continue_from: Path | None = None  # the previous round's run folder (see :mod:`rounds`)
    start_from: str = "pretrained"  # or "previous": the previous round's recommended checkpoint
    add_validation: bool = False  # new cases in fold 0 join validation (scored apart)
    forgetting_threshold: float = AGREEMENT_THRESHOLD
    forgetting_max_classes: int | None = None  # None: all on a GPU, forgetting.CPU_MAX_CLASSES on a CPU

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_json(cls, data: dict) -> FinetuneRequest:
        """The inverse of :meth:`to_json`."""
        paths = ("output_dir", "dataset_dir", "datalist", "bundle_dir", "continue_from")
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: (Path(v) if k in paths and v is not None else v) for k, v in data.items() if k in known}
        fields["config_overrides"] = [Path(p) for p in data.get("config_overrides", [])]
        return cls(**fields)


@dataclass
class StagedRun:
    """A run folder ready for the phases: the inputs checked, the plan made, the configs written."""

    request: FinetuneRequest
    run_dir: Path
    bundle_dir: Path
    bundle: dict
    formal: bool
    cases: list[dataset.Case]
    datalist: Path
    source: str
    audit: dataset.DatasetAudit
    mapping: list[list[int]]
    resolution: dict
    warnings: list[str]
    env: dict
    plan: Plan
    auto_seg: bool
    stacks: dict[str, list[Path]]
    compat_names: list[str]
    class_names: dict[int, str]

    @property
    def train_cases(self) -> list[dataset.Case]:
        return [c for c in self.cases if c.fold != 0]

    @property
    def val_cases(self) -> list[dataset.Case]:
        return [c for c in self.cases if c.fold == 0]

    @property
    def pretrained_ckpt(self) -> Path:
        return self.bundle_dir / "models" / "model.pt"

    @property
    def finetuned_ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "model_finetune.pt"

    @property
    def final_ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "model_final.pt"

    @property
    def phases(self) -> list[str]:
        return [p for p in PHASES if self.formal or p == "train"]


@dataclass
class RunScores:
    """The formal Dice of each evaluated checkpoint, the checkpoint comparisons and the verdict."""

    formal: dict[str, FormalDice]
    comparisons: dict[str, checkpoints.Comparison]
    verdict: Verdict | None

    @property
    def pretrained(self) -> FormalDice | None:
        return self.formal.get("eval_pretrained")

    @property
    def finetuned(self) -> FormalDice | None:
        return self.formal.get("eval_finetuned")
