"""The detached supervisor of one background job: ``python -m VistaFinetuneLib.jobs.supervisor RUN_DIR -- CMD...``.

It runs CMD in its own process group (cwd RUN_DIR, TMPDIR in the job folder), records ``job.json``, waits, and
writes ``exit.json``. SIGTERM (or SIGINT/SIGHUP) cancels: the job's group and every descendant get SIGTERM, then
SIGKILL after the grace period (``cancel.json``'s ``grace_seconds``, else 10 s). Whatever the job leaves behind is
killed and reaped before ``exit.json`` is written, so a finished job has no process left. Standard library only.

The job folder is a sibling of the run folder (``finetune`` wants a new, empty run folder): ``.<run>.job/``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from VistaFinetuneLib.jobs import processes
from VistaFinetuneLib.run_files import write_json_atomic

try:
    import fcntl
except ImportError:  # not POSIX: background jobs are unavailable, but the module still imports
    fcntl = None  # type: ignore[assignment]

DEFAULT_GRACE_SECONDS = 10.0
LEFTOVER_GRACE_SECONDS = 2.0
MARKER = "VistaFinetuneLib.jobs.supervisor"  # in the supervisor's command line: tells it from a recycled pid


class JobFiles:
    """Where a run's job files live: ``RUN_DIR.parent/.RUN_NAME.job/``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.dir = self.run_dir.parent / f".{self.run_dir.name}.job"
        self.job_json = self.dir / "job.json"
        self.exit_json = self.dir / "exit.json"
        self.cancel_json = self.dir / "cancel.json"
        self.log = self.dir / "job.log"
        self.tmp = self.dir / "tmp"
        self.lock = self.dir / ".lock"

    @staticmethod
    def run_dir_of(job_dir: Path) -> Path | None:
        """The run folder a ``.NAME.job`` folder belongs to (None for any other folder)."""
        name = job_dir.name
        if name.startswith(".") and name.endswith(".job") and len(name) > len("..job"):
            return job_dir.parent / name[1 : -len(".job")]
        return None


def read_json_or_none(path: Path) -> dict | None:
    """A JSON object from ``path``; None when missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def update_job_record(files: JobFiles, fields: dict) -> None:
    """Merge ``fields`` into ``job.json`` under a file lock (the launcher and the supervisor both write it)."""
    files.dir.mkdir(parents=True, exist_ok=True)
    with open(files.lock, "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        write_json_atomic(files.job_json, (read_json_or_none(files.job_json) or {}) | fields)
    # closing the file releases the lock


class Supervisor:
    """Runs one job to its end and records how it ended."""

    def __init__(self, run_dir: Path, command: list[str]) -> None:
        self.files = JobFiles(run_dir)
        self.command = command
        self.process: subprocess.Popen | None = None
        self.cancel_requested: float | None = None  # time.monotonic() of the first cancel signal
        self.grace = DEFAULT_GRACE_SECONDS
        self.kill_due = False  # the grace period of a cancel is over
        self.forced = False  # SIGKILL was needed

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.cancel_requested is not None:
            return
        self.cancel_requested = time.monotonic()
        request = read_json_or_none(self.files.cancel_json) or {}
        grace = request.get("grace_seconds")
        if isinstance(grace, (int, float)) and grace >= 0:
            self.grace = float(grace)
        print(f"job_supervisor: signal {signum}: cancelling (grace {self.grace:g} s)", flush=True)
        self.signal_job(signal.SIGTERM)
        timer = threading.Timer(self.grace, self.force)
        timer.daemon = True
        timer.start()

    def force(self) -> None:
        """The grace period is over: SIGKILL the job if it still runs (runs in a timer thread)."""
        self.kill_due = True
        process = self.process
        if process is not None and process.returncode is None:
            self.forced = True
            print("job_supervisor: grace period over: SIGKILL", flush=True)
            self.signal_job(processes.KILL)

    def signal_job(self, signum: int) -> None:
        """``signum`` to the job's process group and to every descendant of this supervisor."""
        if self.process is None:
            return
        tree = processes.descendants(os.getpid())
        processes.signal_group(self.process.pid, signum)
        processes.signal_pids(tree, signum)

    def start(self) -> subprocess.Popen:
        env = dict(os.environ)
        env["TMPDIR"] = str(self.files.tmp)
        env["PYTHONUNBUFFERED"] = "1"
        if processes.on_windows():
            group = {"creationflags": processes.NEW_PROCESS_GROUP}
        else:
            group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        process = subprocess.Popen(
            self.command, cwd=self.files.run_dir, env=env, stdin=subprocess.DEVNULL, **group
        )  # stdout and stderr: the supervisor's own, job.log
        if not processes.on_windows():
            try:
                os.setpgid(process.pid, process.pid)  # already done in the child; this closes the race both ways
            except OSError:
                pass
        return process

    def clean_up(self, pgid: int) -> None:
        """Kill and reap whatever the job left: members of its group and (adopted) descendants."""

        def leftovers() -> list[int]:
            processes.reap_children()
            return sorted(set(processes.descendants(os.getpid())) | set(processes.group_members(pgid)))

        left = leftovers()
        if not left:
            return
        print(f"job_supervisor: the job left processes {left}: terminating them", flush=True)
        processes.signal_group(pgid, signal.SIGTERM)
        processes.signal_pids(left, signal.SIGTERM)
        if self.cancel_requested is not None:
            deadline = self.cancel_requested + self.grace
        else:
            deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = leftovers()
        for _ in range(50):
            if not left:
                break
            processes.signal_group(pgid, processes.KILL)
            processes.signal_pids(left, processes.KILL)
            time.sleep(0.05)
            left = leftovers()

    def run(self) -> int:
        for name in ("SIGTERM", "SIGINT", "SIGHUP"):  # Windows has no SIGHUP (and ends a process without SIGTERM)
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self.on_signal)
        processes.become_subreaper()
        self.files.tmp.mkdir(parents=True, exist_ok=True)
        self.files.run_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "supervisor_pid": os.getpid(),
            "supervisor_start_ticks": processes.start_ticks(os.getpid()),
            "command": self.command,
            "python": self.command[0],
        }
        return_code: int | None = None
        if self.cancel_requested is None:
            try:
                self.process = self.start()
            except OSError as error:
                print(f"job_supervisor: cannot start the job: {error}", flush=True)
                return_code = 127
        if self.process is not None:
            pgid = self.process.pid
            update_job_record(
                self.files,
                record
                | {
                    "pid": pgid,
                    "pid_start_ticks": processes.start_ticks(pgid),
                    "pgid": pgid,
                    "started": time.time(),
                    "host": socket.gethostname(),
                },
            )
            if self.cancel_requested is not None:  # a cancel that came while the job was being started
                self.forced = self.kill_due
                self.signal_job(processes.KILL if self.kill_due else signal.SIGTERM)
            return_code = self.process.wait()  # a cancel's signal handler and timer do their work meanwhile
            self.clean_up(pgid)
        write_json_atomic(
            self.files.exit_json,
            {
                "return_code": return_code,
                "ended": time.time(),
                # A job that finished cleanly just as the cancel came stays completed.
                # (On Windows a cancel ends the job's tree from outside: cancel.json says it was one.)
                "cancelled": (self.cancel_requested is not None or self.files.cancel_json.exists())
                and return_code != 0,
                "forced_kill": self.forced,
            },
        )
        return 0 if return_code == 0 else 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        print(f"usage: python -m {MARKER} RUN_DIR -- COMMAND...", file=sys.stderr)
        return 2
    return Supervisor(Path(args[0]), args[2:]).run()


if __name__ == "__main__":
    sys.exit(main())
