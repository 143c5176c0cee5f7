"""Reuse of VISTA3D's image encoder output between requests on the same image.

MONAI's ``VISTA3D.forward(..., keep_cache=True)`` keeps a single encoder output, not keyed by window, and only for
point-only calls: with more than one sliding window, or the point window (one window centred on each click), it
would answer a window from another window's features. This wrapper stands in for ``network.image_encoder`` and keys
its cache by the window's content (checked exactly with ``torch.equal``), so a reused output is always the one the
encoder would compute.

What it computes and keeps:

- only the decoder branches the call asks for (point, class, or both); a branch asked for later on a window already
  kept is computed then and added to it. With the bundle's point window, a click's windows are centred on the
  clicks, so they are reused by the following clicks (each sends every point so far); a class prompt's sliding
  windows are reused by a repeated class prompt, and by clicks only without the point window;
- within one request, entries are never evicted to make room: a pass over more windows than the cache holds keeps
  the first ones that fit and skips the rest, instead of evicting its own windows one by one and reusing nothing
  (least recently used entries of earlier requests go first).

It is also where a running request is cancelled (between windows). Runs in the job environment (imports torch).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from VistaFinetuneLib.inference.stage_timer import StageTimer

BRANCHES = ("point", "label")


@dataclass
class Entry:
    """One window's content and the branches computed for it."""

    window: torch.Tensor
    outputs: dict[str, object] = field(default_factory=dict)
    request: int = 0  # the request that last stored into it

    def size(self) -> int:
        tensors = [self.window, *(t for t in self.outputs.values() if isinstance(t, torch.Tensor))]
        return sum(t.numel() * t.element_size() for t in tensors)


class EncoderCache(torch.nn.Module):
    """``network.image_encoder`` with a content-keyed, size-bounded cache of its outputs, per decoder branch."""

    def __init__(self, encoder: torch.nn.Module, max_bytes: int, timer: StageTimer | None = None):
        super().__init__()
        self.encoder = encoder
        self.timer = timer or StageTimer("cpu")
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, list[Entry]] = OrderedDict()
        self.bytes = 0
        self.request = 0
        self.reused = 0
        self.computed = 0
        self.skipped = 0
        self.check: Callable[[], None] = lambda: None

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def start_request(self, check: Callable[[], None]) -> None:
        """Reset the per-request counters; ``check`` is called before each window (it raises to cancel)."""
        self.request += 1
        self.reused = self.computed = self.skipped = 0
        self.check = check

    def request_stats(self) -> dict[str, int]:
        return {
            "encoder_windows_reused": self.reused,
            "encoder_windows_computed": self.computed,
            "encoder_windows_not_kept": self.skipped,
        }

    @staticmethod
    def _fingerprint(window: torch.Tensor) -> tuple:
        return (tuple(window.shape), str(window.dtype), str(window.device), float(window.detach().double().sum()))

    def forward(self, window: torch.Tensor, with_point: bool = True, with_label: bool = True):
        self.check()
        with self.timer.stage("encoder"):
            return self._forward(window, with_point, with_label)

    def _forward(self, window: torch.Tensor, with_point: bool, with_label: bool):
        wanted = [name for name, asked in zip(BRANCHES, (with_point, with_label), strict=True) if asked]
        key = self._fingerprint(window)
        entry = next((e for e in self.entries.get(key, []) if torch.equal(e.window, window)), None)
        missing = [name for name in wanted if entry is None or name not in entry.outputs]
        if not missing:
            self.entries.move_to_end(key)
            self.reused += 1
            return tuple(entry.outputs[name] if name in wanted else [] for name in BRANCHES)
        point, label = self.encoder(window, with_point="point" in missing, with_label="label" in missing)
        computed = {name: out for name, out in zip(BRANCHES, (point, label), strict=True) if name in missing}
        self.computed += 1
        self._store(key, window, entry, computed)
        outputs = (entry.outputs if entry is not None else {}) | computed
        return tuple(outputs[name] if name in wanted else [] for name in BRANCHES)

    def _store(self, key: tuple, window: torch.Tensor, entry: Entry | None, computed: dict) -> None:
        """Keep the new branches, evicting entries of earlier requests (oldest first) but none of this one's."""
        added = Entry(window.detach().clone() if entry is None else window[:0], dict(computed), self.request)
        size = added.size()
        for old_key in list(self.entries):
            if self.bytes + size <= self.max_bytes:
                break
            if old_key == key or any(e.request == self.request for e in self.entries[old_key]):
                continue
            self.bytes -= sum(e.size() for e in self.entries.pop(old_key))
        if self.bytes + size > self.max_bytes:
            self.skipped += 1
            return
        if entry is None:
            self.entries.setdefault(key, []).append(added)
        else:
            entry.outputs.update(computed)
            entry.request = self.request
        self.entries.move_to_end(key)
        self.bytes += size
