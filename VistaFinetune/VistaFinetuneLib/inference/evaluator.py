"""The engine's evaluator override: the bundle's own evaluator class with two changes.

1. A finetuned class with a new id (>= 133) is segmentable by its class prompt. The upstream bundle's
   ``Vista3dEvaluator.check_prompts_format`` refuses class prompts outside 1..132 (minus the legacy ids) unless
   points are given ("Undefined label prompt detected"), although a finetune taught the network those ids. The
   run's own ids are checked as a supported stand-in and passed on unchanged.
2. Point prompts work with numpy 2. Upstream's ``transform_points`` receives the points as a tensor and the affine
   as ``np.linalg.inv(inputs.affine[0]) @ ...``; under numpy 2, ``np.linalg.inv`` of a tensor returns a tensor, the
   product is a tensor and the next ``torch.from_numpy`` raises "expected np.ndarray (got Tensor)". Both arguments
   are handed to the bundle's own ``transform_points`` as numpy arrays, and its result is returned as one.

Everything else (the other checks, the point transform itself, the inferer call) stays the bundle's. The factory is
named as the evaluator's ``_target_`` in an override. Runs in the job environment.
"""

from __future__ import annotations

STAND_IN_ID = 1  # liver: accepted as a class prompt by every VISTA3D bundle version


def allowing_class_ids(base_class: type, class_ids: list[int]) -> type:
    """A subclass of the bundle's evaluator that accepts ``class_ids`` as class prompts and maps points in numpy."""
    allowed = {int(x) for x in class_ids}

    class FinetunedClassEvaluator(base_class):
        def transform_points(self, point, affine):
            return _numpy(super().transform_points(_numpy(point), _numpy(affine)))

        def check_prompts_format(self, label_prompt, points, point_labels):
            if not isinstance(label_prompt, list) or not any(_as_int(x) in allowed for x in label_prompt):
                return super().check_prompts_format(label_prompt, points, point_labels)
            stand_in = [_like(x, STAND_IN_ID) if _as_int(x) in allowed else x for x in label_prompt]
            _, points, point_labels = super().check_prompts_format(stand_in, points, point_labels)
            return label_prompt, points, point_labels

    FinetunedClassEvaluator.__qualname__ = f"FinetunedClassEvaluator[{base_class.__qualname__}]"
    return FinetunedClassEvaluator


def engine_evaluator(base_class: str, class_ids: list[int], **kwargs):
    """Build the bundle's evaluator (``base_class``: its dotted name, as in the config's ``_target_``) with ``kwargs``
    and the two changes above."""
    import pydoc

    found = pydoc.locate(base_class)
    if not isinstance(found, type):
        raise ValueError(f"the bundle's evaluator {base_class!r} cannot be imported")
    return allowing_class_ids(found, class_ids)(**kwargs)


def _as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def _like(value, class_id: int):
    """``class_id`` in the form of ``value`` (a tensor stays a tensor of the same shape)."""
    import torch

    if isinstance(value, torch.Tensor):
        return torch.full_like(value, class_id)
    return class_id


def _numpy(value):
    """A tensor (on any device) or array-like as a numpy array."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
