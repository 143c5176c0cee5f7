"""Class routing: a finetuned run answers only the classes it was finetuned on and judged improved; every other class
prompt is answered by the bundle's pretrained weights, so a finetune cannot quietly change what the model knew.

Which classes a run answers (from its folder, never written):

- a run with ``output.json``: its mapped classes, when the verdict recommended the finetuned checkpoint and the class's
  formal Dice rose (finetuned > pretrained; every mapped class when no per-class Dice was computed); none otherwise;
- a run without ``output.json`` (not scored): its mapped classes;
- always: its ids the pretrained model cannot be asked for (new ids >= 133), which only the run knows.

Points without a class are the run's. A request for classes of both kinds runs both models and overlays the run's
classes on the pretrained answer. The legend names the model (and checkpoint) that answered each class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from VistaFinetuneLib.inference.models import ModelSpec
from VistaFinetuneLib.inference.outputs import label_array
from VistaFinetuneLib.inference.prompts import UPSTREAM_CLASS_PROMPT_IDS, Prompts
from VistaFinetuneLib.run_files import read_json


@dataclass(frozen=True)
class Routing:
    """The classes a run answers, and why."""

    run_classes: frozenset[int]
    reason: str

    def answers(self, class_id: int) -> bool:
        return class_id in self.run_classes or class_id not in UPSTREAM_CLASS_PROMPT_IDS

    def to_json(self) -> dict:
        return {"run_classes": sorted(self.run_classes), "reason": self.reason}


def improved_classes(output: dict, mapped: tuple[int, ...]) -> tuple[frozenset[int], str]:
    """The mapped classes the run's verdict and formal Dice say it improved."""
    out = output.get("output") or {}
    if out.get("recommended") != "finetuned":
        return frozenset(), "the run found no evidence of improvement: the pretrained weights answer its classes"
    formal = out.get("formal_dice") or {}
    before = (formal.get("pretrained") or {}).get("per_class") or {}
    after = (formal.get("finetuned") or {}).get("per_class") or {}
    if not after:
        return frozenset(mapped), "the run was judged improved (no per-class Dice): it answers its mapped classes"
    rose = frozenset(c for c in mapped if (after.get(str(c)) or 0.0) > (before.get(str(c)) or 0.0))
    return rose, "the run answers the mapped classes whose formal Dice rose; the pretrained weights the others"


def routing_of(model: ModelSpec) -> Routing | None:
    """The routing of a finetuned run; None for the pretrained weights or a bare checkpoint."""
    if model.run_dir is None:
        return None
    output = Path(model.run_dir) / "output.json"
    if not output.is_file():
        return Routing(frozenset(model.finetuned_ids), "the run is not scored (no output.json): its mapped classes")
    return Routing(*improved_classes(read_json(output), model.finetuned_ids))


def routed_predict(
    predictor,
    pretrained: Callable[[], object] | None,
    routing: Routing | None,
    image: Path,
    prompts: Prompts,
    use_point_window: bool | None,
    check: Callable[[], None],
    region: bool = False,
):
    """The prediction for ``prompts``, each class from the model routing gives it; and class id -> model name.
    ``region``: a point-window click may answer with a box of the grid (see the predictor)."""

    def run(model, these: Prompts):
        return model.predict(image, these, use_point_window, check, region=region)

    own_name = predictor.model.name
    ids = list(prompts.class_ids or [])
    if routing is None or pretrained is None or prompts.class_ids is None:
        return run(predictor, prompts), dict.fromkeys(ids, own_name)
    own = [c for c in ids if routing.answers(c)]
    other = [c for c in ids if not routing.answers(c)]
    if not other:
        return run(predictor, prompts), dict.fromkeys(ids, own_name)
    base = pretrained()
    answered = dict.fromkeys(other, base.model.name) | dict.fromkeys(own, own_name)
    if not own or prompts.points_ijk is not None:  # points prompt one object: its one class decides
        return run(base, prompts), answered
    first = run(base, replace(prompts, class_ids=other))
    second = run(predictor, replace(prompts, class_ids=own))
    first.labels = label_array(np.where(second.labels != 0, second.labels, first.labels))
    first.unprocessed_voxels = max(first.unprocessed_voxels, second.unprocessed_voxels)
    first.timings = summed_timings(first.timings, second.timings)
    return first, answered


def summed_timings(first: dict, second: dict) -> dict:
    """Two predictions' seconds added up, stage by stage."""
    return {
        key: summed_timings(value, second.get(key, {}))
        if isinstance(value, dict)
        else round(value + second.get(key, 0.0), 4)
        for key, value in first.items()
    }


def lazy_pretrained(model: ModelSpec, build: Callable[[ModelSpec], object]) -> Callable[[], object]:
    """A function that builds the pretrained model of ``model``'s bundle on first call, then returns it."""
    from VistaFinetuneLib.inference.models import pretrained_model

    built: list = []

    def get():
        if not built:
            built.append(build(pretrained_model(model.bundle_dir)))
        return built[0]

    return get


def legend_section(predictor, pretrained, route: Routing | None, answered: dict[int, str]) -> dict:
    """The legend's ``routing``: on or off, the classes the run answers, and each answering model's checkpoint."""
    models = {predictor.model.name: predictor}
    if pretrained is not None and set(answered.values()) - {predictor.model.name}:
        base = pretrained()
        models[base.model.name] = base
    return {
        "on": route is not None,
        **(route.to_json() if route is not None else {}),
        "answered_by": {str(k): v for k, v in answered.items()},
        "checkpoints": {
            name: {"checkpoint": str(p.model.checkpoint), "sha256": p.checkpoint_sha256} for name, p in models.items()
        },
    }
