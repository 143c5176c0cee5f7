"""Compatibility overrides for running the VISTA3D bundle on a newer MONAI than its reference 1.4.0.

MONAI >= 1.5 computes ``DiceLoss(squared_pred=True)`` with ``torch.linalg.vector_norm``, which rejects the boolean
target the bundle's trainer passes (``labels == class``). The override wraps the bundle's own loss, whatever it is,
so that a boolean target reaches it as float; the bundle folder is untouched.
"""

from __future__ import annotations

import functools
from importlib import metadata

FLOAT_TARGET_LOSS = "float-target-loss"


def monai_version_tuple(version: str) -> tuple[int, int]:
    """``"1.5.2"`` -> ``(1, 5)``."""
    major, minor, *_ = (version.split("+")[0].split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def installed_monai() -> str | None:
    try:
        return metadata.version("monai")
    except metadata.PackageNotFoundError:
        return None


def compatibility_overrides(monai_version: str | None) -> tuple[dict, list[str]]:
    """The overrides this MONAI needs and their names (for output.json); none for MONAI < 1.5."""
    if monai_version is None or monai_version_tuple(monai_version) < (1, 5):
        return {}, []
    overrides = {
        # MONAI binds ``import a.b`` to the name "a.b", so the package is imported under its own name first.
        "+imports": ["$import VistaFinetuneLib", "$import VistaFinetuneLib.bundle.compat"],
        "train#trainer#loss_function": "$VistaFinetuneLib.bundle.compat.FloatTargetLoss(@loss)",
    }
    return overrides, [FLOAT_TARGET_LOSS]


def __getattr__(name: str):
    # FloatTargetLoss subclasses torch.nn.Module; build it on first use so importing this module needs no torch.
    if name == "FloatTargetLoss":
        return _float_target_loss_class()
    raise AttributeError(name)


@functools.cache
def _float_target_loss_class():
    import torch

    class FloatTargetLoss(torch.nn.Module):
        """Call the wrapped loss with a boolean target cast to the prediction's float type."""

        def __init__(self, loss: torch.nn.Module) -> None:
            super().__init__()
            self.loss = loss

        def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if target.dtype == torch.bool:
                target = target.to(prediction.dtype)
            return self.loss(prediction, target)

    return FloatTargetLoss
