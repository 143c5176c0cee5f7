"""Where one prediction's seconds go: read and resample, encoder, heads, stitching, post-processing, inversion, write.

A :class:`StageTimer` adds up wall seconds per stage over one request; on a CUDA device it synchronises before
reading the clock, so a stage is charged for the device work it queued (and not the next stage). The network's
time is measured around each call of the network (forward hooks) and the encoder's inside the encoder wrapper;
``heads`` is the difference. The inferer's time less the network's is ``stitch`` (window extraction, blending,
moving windows between devices). Runs in the job environment (imports torch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

STAGES = ("read_resample", "encoder", "heads", "stitch", "postprocess", "inversion", "write")


class StageTimer:
    """Seconds per stage of the request in progress."""

    def __init__(self, device: str) -> None:
        self.synchronise: Callable[[], None] = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
        self.seconds: dict[str, float] = {}

    def reset(self) -> None:
        self.seconds = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.synchronise()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.synchronise()
            self.add(name, time.perf_counter() - started)

    def stages(self) -> dict[str, float]:
        """Every stage in order (0 for those this request did not run), with ``heads`` = network - encoder and
        ``stitch`` = inferer - network."""
        seconds = dict(self.seconds)
        network, inferer = seconds.pop("network", 0.0), seconds.pop("inferer", 0.0)
        seconds["heads"] = max(network - seconds.get("encoder", 0.0), 0.0)
        seconds["stitch"] = max(inferer - network, 0.0)
        return {name: round(seconds.get(name, 0.0), 4) for name in STAGES}

    def time_network(self, network: torch.nn.Module) -> None:
        """Charge every call of ``network`` to the stage ``network``."""
        started: list[float] = []

        def before(module, args):
            self.synchronise()
            started.append(time.perf_counter())

        def after(module, args, output):
            self.synchronise()
            self.add("network", time.perf_counter() - started.pop())

        network.register_forward_pre_hook(before)
        network.register_forward_hook(after)


class Timed:
    """A callable (a transform, the inferer) whose calls are charged to one stage; other attributes pass through."""

    def __init__(self, wrapped: Callable, timer: StageTimer, stage: str) -> None:
        self.wrapped, self.timer, self.stage_name = wrapped, timer, stage

    def __call__(self, *args, **kwargs):
        with self.timer.stage(self.stage_name):
            return self.wrapped(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["wrapped"], name)


def network_share(stages: dict[str, float], total: float) -> float | None:
    """The encoder's and heads' part of ``total`` (None when there is no total)."""
    if not total:
        return None
    return round((stages.get("encoder", 0.0) + stages.get("heads", 0.0)) / total, 3)
