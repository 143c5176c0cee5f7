"""Process inspection and signalling by pid and process group, without blocking (``/proc`` on Linux).

Windows has no process groups to signal, no SIGKILL, and ``os.kill(pid, 0)`` there *terminates* the process: a
liveness check asks the Windows API instead, and ending a job's processes is ``taskkill /T /F`` of its tree (no
grace period there).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
PR_SET_CHILD_SUBREAPER = 36
KILL = getattr(signal, "SIGKILL", signal.SIGTERM)  # Windows: no SIGKILL (ending a process there is always forced)
# Start a job in a process group of its own (Windows: so that Slicer's console events do not reach it).
NEW_PROCESS_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
STILL_ACTIVE = 259
ERROR_ACCESS_DENIED = 5


def on_windows() -> bool:
    return os.name == "nt"


def _kernel32():
    return ctypes.WinDLL("kernel32")


def _windows_alive(pid: int) -> bool:
    """Whether ``pid`` runs, from the Windows API (OpenProcess + GetExitCodeProcess)."""
    kernel32 = _kernel32()
    handle = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return kernel32.GetLastError() == ERROR_ACCESS_DENIED  # it exists, under another user
    try:
        code = ctypes.c_ulong()
        return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def kill_tree(pid: int) -> bool:
    """Windows: end ``pid`` and every process it started (``taskkill /T /F``); False when it was already gone."""
    done = subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, text=True)
    return done.returncode == 0


@dataclass(frozen=True)
class ProcessInfo:
    """One line of ``/proc/<pid>/stat``: the fields this engine needs."""

    pid: int
    state: str
    ppid: int
    pgid: int
    start_ticks: int  # when it started, in clock ticks after boot: tells it from a later process with its pid


def has_proc() -> bool:
    return sys.platform.startswith("linux") and PROC.is_dir()


def process_info(pid: int) -> ProcessInfo | None:
    """The process's state, parent and group from ``/proc``; None when it is gone or there is no ``/proc``."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name (in parentheses) may hold spaces
    try:
        return ProcessInfo(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ('' when unknown, gone or a zombie)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def start_ticks(pid: int | None) -> int | None:
    """When ``pid`` started (None when unknown): record it to recognise the process later."""
    info = process_info(pid) if pid else None
    return None if info is None else info.start_ticks


def alive(pid: int | None, marker: str | None = None, started: int | None = None) -> bool:
    """Whether ``pid`` runs (zombies count as gone). A recycled pid is not taken for the process that had it:
    with ``started`` (:func:`start_ticks` recorded earlier) the start times must match; with ``marker``, the
    command line must hold it."""
    if not pid or pid <= 0:
        return False
    if on_windows():
        return _windows_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    if has_proc():
        info = process_info(pid)
        if info is None or info.state in ("Z", "X"):
            return False
        if started is not None and info.start_ticks != started:
            return False
        if marker is not None and marker not in cmdline(pid):
            return False
    return True


def all_processes() -> list[ProcessInfo]:
    """Every process ``/proc`` shows (empty without ``/proc``)."""
    if not has_proc():
        return []
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            info = process_info(int(entry.name))
            if info is not None:
                found.append(info)
    return found


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    if on_windows():
        return [pgid] if alive(pgid) else []  # no groups to list: the leader stands for it
    if not has_proc():
        try:
            os.killpg(pgid, 0)
        except OSError:
            return []
        return [pgid]  # some member exists; without /proc the leader's pid stands for the group
    return [p.pid for p in all_processes() if p.pgid == pgid and p.state not in ("Z", "X")]


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, their children, ...), from one scan of ``/proc``."""
    children: dict[int, list[int]] = {}
    states = {}
    for info in all_processes():
        children.setdefault(info.ppid, []).append(info.pid)
        states[info.pid] = info.state
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return [p for p in found if states.get(p) not in ("Z", "X")]


def signal_group(pgid: int | None, signum: int) -> bool:
    """Send ``signum`` to a process group; False when the group is gone."""
    if not pgid or pgid <= 1:
        return False
    if on_windows():
        return kill_tree(pgid)
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def signal_pids(pids: list[int], signum: int) -> None:
    """Send ``signum`` to each pid, ignoring the ones already gone."""
    for pid in pids:
        if pid > 1 and pid != os.getpid() and on_windows():
            kill_tree(pid)
        elif pid > 1 and pid != os.getpid():
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass


def become_subreaper() -> bool:
    """Linux: adopt orphaned descendants (so they can be found, killed and reaped here); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_children() -> list[int]:
    """Collect every exited child of this process without waiting; return their pids (none on Windows)."""
    if on_windows():
        return []
    reaped = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append(pid)
