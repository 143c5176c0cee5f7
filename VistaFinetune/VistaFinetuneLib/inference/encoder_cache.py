"""Reuse of VISTA3D's image encoder output between requests on the same image.

MONAI's ``VISTA3D.forward(..., keep_cache=True)`` keeps a single encoder output, not keyed by window, and only for
point-only calls: with more than one sliding window, or the point window (one window centred on each click), it
would answer a window from another window's features. This wrapper stands in for ``network.image_encoder`` and keys
its cache by the window's content (checked exactly with ``torch.equal``), so a reused output is always the one the
encoder would compute. On a miss it computes both decoder branches (point and class), so a class prompt and the
clicks that follow share windows. It is also where a running request is cancelled (between windows).
Runs in the job environment (imports torch).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from VistaFinetuneLib.inference.stage_timer import StageTimer


class EncoderCache(torch.nn.Module):
    """``network.image_encoder`` with a content-keyed, size-bounded cache of its outputs."""

    def __init__(self, encoder: torch.nn.Module, max_bytes: int, timer: StageTimer | None = None):
        super().__init__()
        self.timer = timer or StageTimer("cpu")
        self.encoder = encoder
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, list[tuple[torch.Tensor, tuple]]] = OrderedDict()
        self.bytes = 0
        self.reused = 0
        self.computed = 0
        self.check: Callable[[], None] = lambda: None

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def start_request(self, check: Callable[[], None]) -> None:
        """Reset the per-request counters; ``check`` is called before each window (it raises to cancel)."""
        self.reused = self.computed = 0
        self.check = check

    def request_stats(self) -> dict[str, int]:
        return {"encoder_windows_reused": self.reused, "encoder_windows_computed": self.computed}

    @staticmethod
    def _fingerprint(window: torch.Tensor) -> tuple:
        return (tuple(window.shape), str(window.dtype), str(window.device), float(window.detach().double().sum()))

    @staticmethod
    def _size(outputs: tuple) -> int:
        return sum(t.numel() * t.element_size() for t in outputs if isinstance(t, torch.Tensor))

    def forward(self, window: torch.Tensor, with_point: bool = True, with_label: bool = True):
        self.check()
        with self.timer.stage("encoder"):
            return self._forward(window, with_point, with_label)

    def _forward(self, window: torch.Tensor, with_point: bool, with_label: bool):
        key = self._fingerprint(window)
        outputs = next((out for stored, out in self.entries.get(key, []) if torch.equal(stored, window)), None)
        if outputs is None:
            outputs = self.encoder(window, with_point=True, with_label=True)
            self._store(key, window, outputs)
            self.computed += 1
        else:
            self.entries.move_to_end(key)
            self.reused += 1
        point, label = outputs
        return (point if with_point else []), (label if with_label else [])

    def _store(self, key: tuple, window: torch.Tensor, outputs: tuple) -> None:
        size = self._size(outputs) + window.numel() * window.element_size()
        if size > self.max_bytes:
            return
        while self.entries and self.bytes + size > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= sum(self._size(out) + w.numel() * w.element_size() for w, out in evicted)
        self.entries.setdefault(key, []).append((window.detach().clone(), outputs))
        self.bytes += size
