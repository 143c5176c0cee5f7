"""Background jobs for a GUI that must never block and may restart: start, poll, cancel and list engine runs.

A job is ``python -m VistaFinetuneLib ARGS...`` under a detached supervisor (:mod:`job_supervisor`). Everything
about it lives in files, so any process can poll or cancel it later: the run folder (``status.json``,
``output.json``, ``logs/``) and the job folder beside it, ``.<run>.job/`` (``job.json``, ``job.log``,
``exit.json``). Only :func:`start_job` and :func:`cancel_job` with ``wait=True`` take more than a few file reads.
Standard library only; POSIX.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.jobs import processes
from VistaFinetuneLib.jobs.child_env import child_environment
from VistaFinetuneLib.jobs.supervisor import MARKER, JobFiles, read_json_or_none, update_job_record
from VistaFinetuneLib.run_files import write_json_atomic

STATES = ("running", "completed", "failed", "cancelled", "stale", "unknown")
FINISHED = ("completed", "failed", "cancelled")
# The engine's options that take a path: made absolute, since the job runs in its run folder.
PATH_OPTIONS = (
    "--output-dir", "--dataset-dir", "--datalist", "--bundle-dir", "--config-override", "--cache-dir", "--dir",
    "--pred-a", "--pred-b", "--ground-truth", "--images",
)  # fmt: skip
TAIL_LINES = 20
TAIL_BYTES = 16384


@dataclass(frozen=True)
class JobState:
    """What a run folder says about its job at one moment."""

    run_dir: Path
    state: str  # one of STATES
    pid: int | None = None  # the job process (python -m VistaFinetuneLib ...)
    return_code: int | None = None
    phase: str | None = None
    epoch: int | None = None
    max_epochs: int | None = None
    iteration: int | None = None
    iterations_per_epoch: int | None = None
    loss: float | None = None
    val_dice_per_epoch: list[float] = field(default_factory=list)
    eta_seconds: float | None = None
    log_tail: list[str] = field(default_factory=list)  # the current phase's log, else the job's own log
    started: float | None = None  # time.time() of the (latest) start; newest first in list_runs

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def to_json(self) -> dict:
        return asdict(self) | {"run_dir": str(self.run_dir)}


def _tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last lines of a text file, reading at most its last ``TAIL_BYTES``."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - TAIL_BYTES))
            text = stream.read().decode(errors="replace")
    except OSError:
        return []
    found = text.splitlines()
    if size > TAIL_BYTES and found:
        found = found[1:]  # the first line is probably cut
    return found[-lines:]


def _started(run_dir: Path, job: dict | None) -> float | None:
    if job and isinstance(job.get("started"), (int, float)):
        return float(job["started"])
    for path in (run_dir / "run.json", run_dir / "output.json"):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return None


def _job_state(run_dir: Path, job: dict | None, ended: dict | None, status: dict, output: dict) -> str:
    if ended is not None:
        if ended.get("cancelled"):
            return "cancelled"
        # A finetune's verdict is its output.json; a command that writes none is judged by its exit code.
        succeeded = ended.get("return_code") == 0 and output.get("status", "completed") == "completed"
        return "completed" if succeeded else "failed"
    if job is not None:
        if job.get("host") not in (None, socket.gethostname()):
            return "unknown"  # started on another machine: its processes cannot be seen from here
        if job.get("supervisor_pid") is None or _supervisor_alive(job):
            return "running"
        return "stale"
    # Run directly from the command line: no job files.
    if output.get("status") in ("completed", "failed"):
        return output["status"]
    if status.get("state") == "running":
        return "running" if _cli_run_alive(status.get("pid")) else "stale"
    if status.get("state") in ("completed", "failed"):
        return status["state"]
    return "stale" if (run_dir / "run.json").is_file() else "unknown"


def poll_job(run_dir: Path) -> JobState:
    """The job's state from its files and process table (a few small reads; never waits)."""
    run_dir = Path(run_dir).absolute()
    files = JobFiles(run_dir)
    job = read_json_or_none(files.job_json)
    ended = read_json_or_none(files.exit_json)
    status = read_json_or_none(run_dir / "status.json") or {}
    output = read_json_or_none(run_dir / "output.json") or {}
    state = _job_state(run_dir, job, ended, status, output)
    phase = status.get("phase") if state in ("running", "stale") else None
    logs = [run_dir / "logs" / f"{phase}.log"] if phase else []
    logs += [files.log, run_dir / "logs" / "train.log"]
    dice = status.get("val_dice_per_epoch") or (output.get("output") or {}).get("val_dice_per_epoch") or []
    return JobState(
        run_dir=run_dir,
        state=state,
        pid=(job or {}).get("pid") or status.get("pid"),
        return_code=(ended or {}).get("return_code"),
        phase=phase,
        epoch=status.get("epoch"),
        max_epochs=status.get("max_epochs"),
        iteration=status.get("iteration"),
        iterations_per_epoch=status.get("iterations_per_epoch"),
        loss=status.get("loss"),
        val_dice_per_epoch=list(dice),
        eta_seconds=status.get("eta_seconds") if state == "running" else None,
        log_tail=next((_tail(p) for p in logs if p.is_file()), []),
        started=_started(run_dir, job),
    )


def absolute_paths(command: list[str], cwd: Path | None = None) -> list[str]:
    """``command`` with the values of :data:`PATH_OPTIONS` made absolute against ``cwd`` (default: this process's).

    Positional paths (``finetune DATASET``) are passed as given: give them absolute, or use ``--dataset-dir``.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()

    def absolute(value: str) -> str:
        return str(base / Path(value).expanduser()) if value and not Path(value).expanduser().is_absolute() else value

    result, value_next = [], False
    for arg in command:
        if value_next:
            result.append(absolute(arg))
            value_next = False
        elif arg in PATH_OPTIONS:
            result.append(arg)
            value_next = True
        elif arg.split("=", 1)[0] in PATH_OPTIONS and "=" in arg:
            option, value = arg.split("=", 1)
            result.append(f"{option}={absolute(value)}")
        else:
            result.append(arg)
    return result


def _with_output_dir(command: list[str], run_dir: Path) -> list[str]:
    """A ``finetune`` command writes to ``run_dir``: add ``--output-dir`` when missing, refuse another folder."""
    for index, arg in enumerate(command):
        value = None
        if arg == "--output-dir" and index + 1 < len(command):
            value = command[index + 1]
        elif arg.startswith("--output-dir="):
            value = arg.split("=", 1)[1]
        if value is not None and Path(os.path.normpath(value)) != run_dir:
            raise UserError(f"--output-dir {value} is not the job's run folder {run_dir}")
        if value is not None:
            return command
    return [*command, "--output-dir", str(run_dir)] if command[:1] == ["finetune"] else command


def _new_process_group() -> dict:
    """Popen arguments that detach the supervisor from this process's group (session on POSIX)."""
    return {"creationflags": processes.NEW_PROCESS_GROUP} if processes.on_windows() else {"start_new_session": True}


def start_job(run_dir: Path, command: list[str], python: str = sys.executable) -> JobState:
    """Start ``python -m VistaFinetuneLib COMMAND...`` as a detached background job writing to ``run_dir``.

    ``command`` holds the engine's arguments, e.g. ``["finetune", "--smoke", "--output-dir", str(run_dir)]``;
    to continue a stale or failed job, start the same command again with ``--resume``. Returns at once.
    """
    run_dir = Path(os.path.normpath(Path(run_dir).absolute()))
    if not command:
        raise UserError("start_job: no engine command given")
    current = poll_job(run_dir)
    if current.state == "running":
        raise UserError(f"{run_dir}: a job is already running there (pid {current.pid}); cancel it or wait")
    command = _with_output_dir(absolute_paths(command), run_dir)
    files = JobFiles(run_dir)
    files.dir.mkdir(parents=True, exist_ok=True)
    previous, previous_exit = read_json_or_none(files.job_json), read_json_or_none(files.exit_json)
    history = (previous or {}).pop("history", [])
    if previous is not None:
        history.append({"job": previous, "exit": previous_exit})
    for path in (files.job_json, files.exit_json, files.cancel_json):
        path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)  # the job's working folder; finetune accepts it empty
    job_command = [python, "-m", "VistaFinetuneLib", *command]
    env = child_environment()
    with open(files.log, "a", encoding="utf-8") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(job_command)}\n")
        log.flush()
        supervisor = subprocess.Popen(
            [python, "-m", MARKER, str(run_dir), "--", *job_command],
            cwd=run_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            **_new_process_group(),
        )
    update_job_record(
        files,
        {
            "supervisor_pid": supervisor.pid,
            "command": job_command,
            "engine_args": command,
            "python": python,
            "started": time.time(),
            "host": socket.gethostname(),
            "run_dir": str(run_dir),
            "history": history,
        },
    )
    # Collect the supervisor's exit status when it ends, so that it does not linger as a zombie of this process.
    threading.Thread(target=supervisor.wait, name=f"reap-job-supervisor-{supervisor.pid}", daemon=True).start()
    return poll_job(run_dir)


def _cli_run_alive(pid: int | None) -> bool:
    """Whether the process a CLI run's status.json names still runs (vista-finetune or python -m VistaFinetuneLib,
    not a later process that got its pid)."""
    return processes.alive(pid) and (not processes.has_proc() or "finetune" in processes.cmdline(pid).lower())


def _supervisor_alive(job: dict) -> bool:
    return processes.alive(job.get("supervisor_pid"), MARKER, job.get("supervisor_start_ticks"))


def job_processes(run_dir: Path) -> list[int]:
    """The live processes of the job in ``run_dir``: supervisor, job, its group and their descendants.

    Recorded start times (``/proc``) keep a recycled pid or group id from being taken for the job's.
    """
    run_dir = Path(run_dir).absolute()
    job = read_json_or_none(JobFiles(run_dir).job_json)
    found: set[int] = set()
    if job is None:  # run directly from the command line: its status.json names the process
        pid = (read_json_or_none(run_dir / "status.json") or {}).get("pid")
        if _cli_run_alive(pid):
            found.add(pid)
    else:
        if _supervisor_alive(job):
            found.add(job["supervisor_pid"])
        pid, pgid, started = job.get("pid"), job.get("pgid"), job.get("pid_start_ticks")
        if processes.alive(pid, None, started):
            found.add(pid)
        leader = processes.start_ticks(pgid)
        if pgid and (leader is None or started is None or leader == started):  # the group is still the job's
            found.update(processes.group_members(pgid))
    for pid in list(found):
        found.update(processes.descendants(pid))
    found.discard(os.getpid())
    return sorted(found)


def _kill_without_supervisor(run_dir: Path, grace_seconds: float, wait: bool) -> None:
    """SIGTERM the job's processes, then SIGKILL those left after the grace period (in a thread if not waiting)."""
    job = read_json_or_none(JobFiles(run_dir).job_json) or {}
    pgid = job.get("pgid")
    pids = job_processes(run_dir)
    ours = bool(pgid) and bool(set(processes.group_members(pgid)) & set(pids))  # the job's group, not a new one
    if ours:
        processes.signal_group(pgid, signal.SIGTERM)
    processes.signal_pids(pids, signal.SIGTERM)

    def finish() -> None:
        deadline = time.monotonic() + grace_seconds
        while job_processes(run_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = job_processes(run_dir)
        if ours and left:
            processes.signal_group(pgid, processes.KILL)
        processes.signal_pids(left, processes.KILL)

    if wait:
        finish()
    else:
        threading.Thread(target=finish, name="kill-stale-job", daemon=True).start()


def cancel_job(run_dir: Path, grace_seconds: float = 10.0, wait: bool = True) -> JobState:
    """Cancel a running (or stale) job: SIGTERM, then SIGKILL after ``grace_seconds``, for the whole tree.

    The supervisor does it when alive; else this call signals the recorded processes itself. With ``wait``,
    returns once every process of the job is gone (at most about ``grace_seconds`` + 10 s); else at once.
    """
    run_dir = Path(run_dir).absolute()
    files = JobFiles(run_dir)
    current = poll_job(run_dir)
    if current.state not in ("running", "stale"):
        return current
    job = read_json_or_none(files.job_json)
    if job is not None:
        write_json_atomic(files.cancel_json, {"requested": time.time(), "grace_seconds": grace_seconds})
    if current.state == "running" and job is not None and _supervisor_alive(job) and processes.on_windows():
        # No SIGTERM to forward on Windows: end the job's tree; the supervisor sees it end and records the cancel.
        processes.kill_tree(job.get("pid") or job["supervisor_pid"])
    elif current.state == "running" and job is not None and _supervisor_alive(job):
        try:
            os.kill(job["supervisor_pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    else:
        _kill_without_supervisor(run_dir, grace_seconds, wait)
        if job is not None and not files.exit_json.exists():
            write_json_atomic(
                files.exit_json, {"return_code": None, "ended": time.time(), "cancelled": True, "forced_kill": False}
            )
    if wait:
        deadline = time.monotonic() + grace_seconds + 10.0
        while time.monotonic() < deadline and (job_processes(run_dir) or poll_job(run_dir).state == "running"):
            time.sleep(0.05)
    return poll_job(run_dir)


def wait_job(run_dir: Path, timeout: float | None = None, interval: float = 1.0) -> JobState:
    """Poll until the job is no longer running or ``timeout`` seconds have passed (for scripts and tests)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = poll_job(run_dir)
        if state.state != "running" or (deadline is not None and time.monotonic() >= deadline):
            return state
        time.sleep(interval)


def list_runs(root: Path) -> list[JobState]:
    """Every run folder directly under ``root`` (with ``run.json``, ``output.json`` or job files), newest first."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise UserError(f"{root}: folder not found")
    runs: set[Path] = set()
    for entry in root.iterdir():
        if not entry.is_dir():
            continue
        owner = JobFiles.run_dir_of(entry)
        if owner is not None and (entry / "job.json").is_file():
            runs.add(owner)
        elif any((entry / name).is_file() for name in ("run.json", "output.json")):
            runs.add(entry)
    states = [poll_job(run) for run in runs]
    return sorted(states, key=lambda s: (s.started or 0.0, str(s.run_dir)), reverse=True)
