"""A one-line progress display for the command line, fed with ``status.json`` states."""

from __future__ import annotations

import sys
from typing import TextIO


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """Draws ``train [#####-----] epoch e/E iter i/I loss x Dice y ETA mm:ss`` on one line."""

    def __init__(self, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced since import
        self.width = width
        self.tty = self.stream.isatty()
        self.last = ""
        self.last_milestone: tuple = ()

    def __call__(self, state: dict) -> None:
        line = self.render(state)
        if line == self.last:
            return
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self.last)))
        else:  # a log file: one line per phase, epoch and validation result
            milestone = (state.get("phase"), state.get("epoch"), len(state.get("val_dice_per_epoch") or []))
            if milestone == self.last_milestone:
                return
            self.last_milestone = milestone
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last = line

    def render(self, state: dict) -> str:
        phase = state.get("phase") or state.get("state", "")
        if phase != "train" or not state.get("max_epochs"):
            return f"{phase}"
        per_epoch = state.get("iterations_per_epoch") or 1
        done = (max(state.get("epoch", 1), 1) - 1) * per_epoch + (state.get("iteration") or 0)
        total = state["max_epochs"] * per_epoch
        filled = int(self.width * done / max(total, 1))
        dice = state.get("val_dice_per_epoch") or []
        loss = state.get("loss")
        return (
            f"train [{'#' * filled}{'-' * (self.width - filled)}] epoch {state.get('epoch')}/{state['max_epochs']} "
            f"iter {state.get('iteration')}/{per_epoch} loss {'-' if loss is None else f'{loss:.4f}'} "
            f"Dice {'-' if not dice else f'{dice[-1]:.4f}'} ETA {format_seconds(state.get('eta_seconds'))}"
        )

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()
