"""Read what the VISTA3D bundle prints: epoch metrics, training loss, the best key metric, out-of-memory."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

EPOCH_METRICS = re.compile(r"Epoch\[(\d+)\] Metrics -- .*?val_mean_dice: ([-+0-9.eEnaN]+)")
ITERATION_LOSS = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+) -- train_loss: ([-+0-9.eEnaNif]+)")
BEST_METRIC = re.compile(r"Key metric: val_mean_dice best value: ([-+0-9.eE]+) at epoch: (\d+)")
OUT_OF_MEMORY = re.compile(
    r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|DefaultCPUAllocator: can't allocate"
)


@dataclass
class TrainingTrace:
    """The training-time record, built line by line from the bundle's output."""

    val_dice_by_epoch: dict[int, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    epoch: int = 0
    max_epochs: int | None = None
    iteration: int = 0
    iterations_per_epoch: int | None = None
    best_value: float | None = None
    best_epoch: int | None = None
    oom: bool = False

    def feed(self, line: str) -> bool:
        """Take one line of output; return True when it changed the trace."""
        if match := ITERATION_LOSS.search(line):
            self.epoch, self.max_epochs = int(match.group(1)), int(match.group(2))
            self.iteration, self.iterations_per_epoch = int(match.group(3)), int(match.group(4))
            self.losses.append(float(match.group(5)))
            return True
        if match := EPOCH_METRICS.search(line):
            self.val_dice_by_epoch[int(match.group(1))] = float(match.group(2))
            return True
        if match := BEST_METRIC.search(line):
            self.best_value, self.best_epoch = float(match.group(1)), int(match.group(2))
            return True
        if OUT_OF_MEMORY.search(line):
            self.oom = True
            return True
        return False

    @property
    def val_dice_per_epoch(self) -> list[float]:
        """Validation Dice in epoch order, epoch 0 (the start, with ``val_at_start``) first when present."""
        return [self.val_dice_by_epoch[k] for k in sorted(self.val_dice_by_epoch)]

    @property
    def start_dice(self) -> float | None:
        return self.val_dice_by_epoch.get(0)

    @property
    def losses_finite(self) -> bool:
        return all(math.isfinite(x) for x in self.losses)
