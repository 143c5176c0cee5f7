"""The override that makes a finetuned class with a new id (>= 133) segmentable by its class prompt.

The upstream bundle's ``Vista3dEvaluator.check_prompts_format`` refuses class prompts outside 1..132 (minus the
legacy ids) unless points are given ("Undefined label prompt detected"), although a finetune taught the network
those ids. This factory, named as the evaluator's ``_target_`` in an override, builds the bundle's own evaluator
class with one change: the run's own ids are checked as a supported stand-in and passed on unchanged. Everything
else (the other checks, the point transform, the inferer call) stays the bundle's. Runs in the job environment.
"""

from __future__ import annotations

STAND_IN_ID = 1  # liver: accepted as a class prompt by every VISTA3D bundle version


def allowing_class_ids(base_class: type, class_ids: list[int]) -> type:
    """A subclass of the bundle's evaluator that accepts ``class_ids`` as class prompts."""
    allowed = {int(x) for x in class_ids}

    class FinetunedClassEvaluator(base_class):
        def check_prompts_format(self, label_prompt, points, point_labels):
            if not isinstance(label_prompt, list) or not any(_as_int(x) in allowed for x in label_prompt):
                return super().check_prompts_format(label_prompt, points, point_labels)
            stand_in = [_like(x, STAND_IN_ID) if _as_int(x) in allowed else x for x in label_prompt]
            _, points, point_labels = super().check_prompts_format(stand_in, points, point_labels)
            return label_prompt, points, point_labels

    FinetunedClassEvaluator.__qualname__ = f"FinetunedClassEvaluator[{base_class.__qualname__}]"
    return FinetunedClassEvaluator


def finetuned_class_evaluator(base_class: type, class_ids: list[int], **kwargs):
    """Build the bundle's evaluator (``base_class``) with ``kwargs``, accepting ``class_ids`` as class prompts."""
    return allowing_class_ids(base_class, class_ids)(**kwargs)


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
