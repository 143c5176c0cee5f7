"""A client of the warm worker (``vista-finetune serve``, protocol v1 in ``inference/worker.py``) for a GUI that
must never wait.

The worker process starts on the first request, in the job environment's interpreter, and serves every later
request (other clicks, other volumes, other models). All talking to it happens on one persistent thread, in order:
a task submitted from the GUI runs there and hands back a :class:`Ticket` the GUI polls. When the worker dies, the
running task fails with a message saying so, and the next task starts a fresh worker. :meth:`WorkerClient.close`
shuts it down (the worker also exits when this process ends).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from VistaFinetuneLib.jobs.child_env import child_environment

STARTUP_TIMEOUT_S = 600.0  # importing torch and monai and loading a full-size checkpoint on a slow disk
SHUTDOWN_GRACE_S = 5.0
STDERR_LINES = 40
_EOF = object()


class WorkerError(Exception):
    """A request the worker refused or could not answer, in one sentence for the user."""

    def __init__(self, message: str, kind: str = "user_error") -> None:
        super().__init__(message)
        self.kind = kind


class Ticket:
    """A task's future: poll :attr:`done` from the GUI, then read :attr:`result` or :attr:`error`."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.result: Any = None
        self.error: Exception | None = None
        self.submitted = time.monotonic()
        self.seconds: float | None = None  # submit to done: what the user waited

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def _finish(self, result: Any = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self.seconds = time.monotonic() - self.submitted
        self._event.set()


class WorkerConnection:
    """The running worker process, as a task on the client thread sees it."""

    def __init__(self, command: list[str], env: dict[str, str], startup_timeout_s: float) -> None:
        self.command = command
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            encoding="utf-8", errors="replace", bufsize=1, env=env,
        )  # fmt: skip
        self.lines: queue.Queue = queue.Queue()
        self.stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self.ids = itertools.count(1)
        self.write_lock = threading.Lock()
        self.loaded: set[str] = set()
        threading.Thread(target=self._read_stdout, name="vista3d-worker-stdout", daemon=True).start()
        threading.Thread(target=self._read_stderr, name="vista3d-worker-stderr", daemon=True).start()
        self.ready = self._next_message(startup_timeout_s, "to start")
        if self.ready.get("event") != "ready":
            raise WorkerError(f"the VISTA3D worker did not start properly (first line: {self.ready})", "internal")
        self.loaded = set((self.ready.get("models") or {}).keys())

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(_EOF)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line.rstrip())

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def died_message(self, doing: str) -> str:
        code = self.process.poll()
        tail = " | ".join(line for line in list(self.stderr)[-3:] if line) or "no error output"
        return f"the VISTA3D worker stopped {doing} (exit code {code}; {tail})"

    def _next_message(self, timeout_s: float | None, doing: str) -> dict:
        while True:
            try:
                line = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                self.stop()
                raise WorkerError(
                    f"the VISTA3D worker did not answer within {timeout_s:.0f} s {doing}", "internal"
                ) from None
            if line is _EOF:
                self.process.wait()
                raise WorkerError(self.died_message(doing), "crashed")
            line = line.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                self.stderr.append(line)  # not protocol: a stray print; keep it as log
                continue
            if isinstance(message, dict):
                return message

    def send(self, request: dict) -> None:
        with self.write_lock:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()

    def call(self, request: dict, timeout_s: float | None = None) -> dict:
        """Send one request and return its successful response; a :class:`WorkerError` for a failed one."""
        request = dict(request, id=next(self.ids))
        try:
            self.send(request)
        except (BrokenPipeError, OSError):
            self.process.wait()
            raise WorkerError(self.died_message("before the request was sent"), "crashed") from None
        while True:
            response = self._next_message(timeout_s, f"while answering '{request.get('op')}'")
            if response.get("id") != request["id"]:
                continue  # an event, or the answer to a cancel sent from another thread
            if not response.get("ok"):
                error = response.get("error") or {}
                raise WorkerError(error.get("message") or f"the worker refused {request.get('op')}", error.get("kind"))
            return response

    def ensure_model(self, name: str, load_request: dict) -> None:
        """Load a model under ``name`` unless the worker has it already."""
        if name not in self.loaded:
            self.call({"op": "load", "model": name, **load_request})
            self.loaded.add(name)

    def stop(self) -> None:
        """Ask the worker to shut down; terminate, then kill it if it does not."""
        if self.alive:
            try:
                self.send({"op": "shutdown", "id": "shutdown"})
                self.process.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                self.process.wait(SHUTDOWN_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(SHUTDOWN_GRACE_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()


class WorkerClient:
    """Starts the worker on first use and runs every task on one persistent thread."""

    def __init__(
        self, python: str, bundle_dir: Path, output_dir: Path, device: str | None = None,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> None:  # fmt: skip
        self.python = python
        self.bundle_dir = Path(bundle_dir)
        self.output_dir = Path(output_dir)
        self.device = device
        self.startup_timeout_s = startup_timeout_s
        self.connection: WorkerConnection | None = None
        self.starts = 0
        self.notice: str | None = None  # a message for the user about the worker's life (a crash, a restart)
        self.last_latency_s: float | None = None
        self._tasks: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def command(self) -> list[str]:
        command = [self.python, "-m", "VistaFinetuneLib", "serve", "--bundle-dir", str(self.bundle_dir)]
        command += ["--output-dir", str(self.output_dir), "--parent-pid", str(os.getpid())]
        return command + (["--device", self.device] if self.device else [])

    def _environment(self) -> dict[str, str]:
        env = child_environment()
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def submit(self, task: Callable[[WorkerConnection], Any]) -> Ticket:
        """Run ``task(connection)`` on the client thread, after the worker runs; returns at once."""
        if self._closed:
            raise WorkerError("the VISTA3D worker client is closed", "internal")
        ticket = Ticket()
        self._tasks.put((task, ticket))
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="vista3d-worker-client", daemon=True)
            self._thread.start()
        return ticket

    def call(self, request: dict, timeout_s: float | None = None) -> dict:
        """One request, waited for (for scripts and tests; a GUI uses :meth:`submit`)."""
        ticket = self.submit(lambda connection: connection.call(request))
        ticket.wait(timeout_s)
        if ticket.error is not None:
            raise ticket.error
        return ticket.result

    def _connect(self) -> WorkerConnection:
        if self.connection is not None and self.connection.alive:
            return self.connection
        if self.connection is not None:
            code = self.connection.process.poll()
            self.notice = f"the VISTA3D worker had stopped (exit code {code}); a new one was started"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.connection = None
        self.connection = WorkerConnection(self.command(), self._environment(), self.startup_timeout_s)
        self.starts += 1
        return self.connection

    def _serve(self) -> None:
        while True:
            task, ticket = self._tasks.get()
            if task is None:
                if self.connection is not None:
                    self.connection.stop()
                ticket._finish()
                return
            try:
                result = task(self._connect())
            except WorkerError as error:
                if error.kind == "crashed":
                    self.notice = f"{error}; it will be restarted on the next request"
                ticket._finish(error=error)
            except Exception as error:  # a bug or an unreadable output: report it on the ticket, keep serving
                ticket._finish(error=WorkerError(f"{type(error).__name__}: {error}", "internal"))
            else:
                ticket._finish(result)
                self.last_latency_s = ticket.seconds

    @property
    def pid(self) -> int | None:
        return self.connection.process.pid if self.connection is not None and self.connection.alive else None

    def cancel(self) -> None:
        """Ask the worker to cancel whatever it runs (answered at once; the running task then fails)."""
        if self.connection is not None and self.connection.alive:
            self.connection.send({"op": "cancel", "id": "cancel"})

    def close(self, timeout_s: float = 2 * SHUTDOWN_GRACE_S + 5) -> None:
        """Stop the worker and the client thread (queued tasks run first)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        self.cancel()
        ticket = Ticket()
        self._tasks.put((None, ticket))
        ticket.wait(timeout_s)
