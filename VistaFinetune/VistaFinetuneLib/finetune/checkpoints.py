"""Compare checkpoints tensor by tensor: the only reliable test of whether a finetune changed the weights.

The bundle's ``CheckpointSaver`` keeps the best validation score across the whole run, and with
``val_at_start`` the pretrained network is scored first (epoch 0): if no later epoch beats it strictly,
``model_finetune.pt`` is the pretrained model re-serialised, equal in every tensor though not in bytes.
Runs in a job process (imports torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_DICT_KEYS = ("state_dict", "model", "network")


def load_state_dict(path: Path) -> dict:
    """The tensors of a checkpoint: a bare state dict, or one under ``state_dict``/``model``/``network``."""
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    for key in STATE_DICT_KEYS:
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"{path}: not a checkpoint of tensors")
    return {k.removeprefix("module."): v for k, v in payload.items()}


@dataclass(frozen=True)
class Comparison:
    """How two checkpoints differ."""

    identical: bool
    same_keys: bool
    tensors_compared: int
    tensors_changed: int
    max_abs_difference: float  # over tensors of equal shape and dtype

    def to_json(self) -> dict:
        return self.__dict__.copy()


def compare_checkpoints(first: Path, second: Path) -> Comparison:
    """Compare every tensor of two checkpoints (same keys, shapes, dtypes and values means identical)."""
    import torch

    a, b = load_state_dict(first), load_state_dict(second)
    common = sorted(set(a) & set(b))
    changed, largest = 0, 0.0
    for key in common:
        x, y = a[key], b[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            changed += 1
        elif not torch.equal(x, y):
            changed += 1
            if x.is_floating_point():
                largest = max(largest, float((x.double() - y.double()).abs().max()))
    same_keys = set(a) == set(b)
    return Comparison(
        identical=same_keys and changed == 0,
        same_keys=same_keys,
        tensors_compared=len(common),
        tensors_changed=changed,
        max_abs_difference=largest,
    )
