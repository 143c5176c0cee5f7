"""Peak GPU memory of a phase, sampled with ``nvidia-smi`` (0 where there is none)."""

from __future__ import annotations

import shutil
import subprocess
import threading


class GpuMemoryMonitor:
    """Samples the used memory of every GPU in a background thread while a phase runs."""

    def __init__(self, interval_seconds: float = 2.0) -> None:
        self.interval = interval_seconds
        self.peak_mb = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._smi = shutil.which("nvidia-smi")

    def _sample(self) -> int:
        try:
            output = subprocess.run(
                [self._smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            return max((int(x) for x in output.split() if x.strip().isdigit()), default=0)
        except (OSError, subprocess.SubprocessError, ValueError):
            return 0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self._sample())

    def __enter__(self) -> GpuMemoryMonitor:
        if self._smi:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
