"""The clicks on one segment of one volume, and what each accepted prediction wrote, so that undo stays in step.

VISTA3D predicts from all the points at once, so each click sends every point so far and the segment changes by
the difference between the new prediction and the previous one. The Segment Editor's undo (or any other edit)
changes the segment behind the session's back; before each click the session compares the segment's fingerprint
with those recorded after its own writes: a match with an earlier step drops the later points (undo took them
back), no match starts afresh from the segment as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_STEPS = 20  # predictions kept for undo (bit-packed masks on the volume's grid)


@dataclass(frozen=True)
class PointPrompt:
    """One click: the voxel it fell in, that voxel's centre in world RAS, and whether it is positive."""

    ijk: tuple[int, int, int]
    ras: tuple[float, float, float]
    positive: bool


@dataclass(frozen=True)
class Step:
    """The state after one accepted prediction (or the start): points, the prediction, the segment's fingerprint."""

    points: tuple[PointPrompt, ...]
    packed: np.ndarray | None
    shape: tuple[int, int, int] | None
    fingerprint: str

    def prediction(self) -> np.ndarray | None:
        if self.packed is None:
            return None
        count = int(np.prod(self.shape))
        return np.unpackbits(self.packed, count=count).reshape(self.shape).astype(bool)


@dataclass
class PointSession:
    """Points and predictions on one segment of one volume with one model and class."""

    key: tuple
    steps: list[Step] = field(default_factory=list)

    def sync(self, fingerprint: str) -> bool:
        """Bring the session in step with the segment; False when it had to start afresh."""
        for index in range(len(self.steps) - 1, -1, -1):
            if self.steps[index].fingerprint == fingerprint:
                del self.steps[index + 1 :]
                return True
        self.steps = [Step((), None, None, fingerprint)]
        return False

    @property
    def points(self) -> tuple[PointPrompt, ...]:
        return self.steps[-1].points if self.steps else ()

    def previous_prediction(self) -> np.ndarray | None:
        return self.steps[-1].prediction() if self.steps else None

    def record(self, points: tuple[PointPrompt, ...], prediction: np.ndarray, fingerprint: str) -> None:
        """Remember an accepted prediction and the segment's fingerprint after it was written."""
        packed = np.packbits(prediction.astype(bool).ravel())
        self.steps.append(Step(tuple(points), packed, tuple(prediction.shape), fingerprint))
        if len(self.steps) > MAX_STEPS:
            # Keep the start, so that undoing every click still matches; drop the oldest intermediate steps.
            del self.steps[1 : len(self.steps) - MAX_STEPS + 1]
