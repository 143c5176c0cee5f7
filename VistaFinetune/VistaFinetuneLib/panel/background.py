"""A slow call (an interpreter probe, a dataset audit) run in a thread, so that a GUI can poll it instead of waiting."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from VistaFinetuneLib.errors import UserError


class BackgroundCall:
    """Runs ``function()`` in a daemon thread; :meth:`poll` never waits.

    A :class:`UserError` is kept as the message to show; any other exception is kept with its type name.
    """

    def __init__(self, function: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(function,), daemon=True, name="panel-background")
        self._thread.start()

    def _run(self, function: Callable[[], Any]) -> None:
        try:
            self.result = function()
        except UserError as error:
            self.error = str(error)
        except Exception as error:  # shown to the user instead of being lost in a thread
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (scripts and tests only); True when done."""
        return self._done.wait(timeout)


def close_in_background(closable: Any) -> threading.Thread:
    """``closable.close()`` in a daemon thread (a worker's shutdown waits for its process): the GUI goes on at once.
    If Slicer quits meanwhile, the worker sees its parent gone and exits by itself."""
    thread = threading.Thread(target=closable.close, daemon=True, name="close-in-background")
    thread.start()
    return thread
