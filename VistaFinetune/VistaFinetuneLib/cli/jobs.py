"""``jobs start|status|cancel|list`` and ``env [create]``: background jobs and their environments."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from VistaFinetuneLib.errors import UserError


def format_job(state) -> list[str]:
    """A few lines describing a :class:`jobs.JobState` for a person."""
    from VistaFinetuneLib.progress import format_seconds

    lines = [f"state: {state.state}" + (f" (pid {state.pid})" if state.pid and state.state == "running" else "")]
    if state.return_code is not None:
        lines.append(f"return code: {state.return_code}")
    if state.phase:
        line = f"phase: {state.phase}"
        if state.phase == "train" and state.max_epochs:
            line += f"  epoch {state.epoch}/{state.max_epochs}"
            line += f"  iteration {state.iteration}/{state.iterations_per_epoch}"
            line += "" if state.loss is None else f"  loss {state.loss:.4f}"
            line += f"  ETA {format_seconds(state.eta_seconds)}"
        lines.append(line)
    if state.val_dice_per_epoch:
        lines.append(f"validation Dice per epoch: {', '.join(f'{v:.4f}' for v in state.val_dice_per_epoch)}")
    lines.append(f"run folder: {state.run_dir}")
    return lines


def cmd_jobs_start(args: argparse.Namespace) -> int:
    """Start an engine command as a background job writing to RUN_DIR."""
    from VistaFinetuneLib.jobs.control import start_job

    engine_args = args.engine_args[1:] if args.engine_args[:1] == ["--"] else args.engine_args
    if not engine_args:
        raise UserError("jobs start: give the engine command after --, e.g. jobs start RUN -- finetune --smoke")
    state = start_job(Path(args.run_dir), engine_args, python=args.python or sys.executable)
    print(f"started: {state.run_dir} (state {state.state})")
    print(f"follow it with: vista-finetune jobs status {state.run_dir}")
    return 0


def cmd_jobs_status(args: argparse.Namespace) -> int:
    """Describe the job of RUN_DIR (never waits)."""
    from VistaFinetuneLib.jobs.control import poll_job

    state = poll_job(Path(args.run_dir))
    if args.json:
        print(json.dumps(state.to_json(), indent=2))
        return 0
    for line in format_job(state):
        print(line)
    if state.log_tail:
        print("log:")
        for line in state.log_tail[-args.lines :]:
            print(f"  {line}")
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    """Cancel the job of RUN_DIR: SIGTERM, then SIGKILL after the grace period, for all its processes."""
    from VistaFinetuneLib.jobs.control import cancel_job

    started = time.monotonic()
    state = cancel_job(Path(args.run_dir), grace_seconds=args.grace, wait=not args.no_wait)
    print(f"{state.state} ({time.monotonic() - started:.1f} s): {state.run_dir}")
    return 0 if state.state in ("cancelled", "completed", "failed") or args.no_wait else 1


def cmd_jobs_list(args: argparse.Namespace) -> int:
    """One line per run folder under ROOT, newest first."""
    from VistaFinetuneLib.jobs.control import list_runs

    states = list_runs(Path(args.root))
    if args.json:
        print(json.dumps([s.to_json() for s in states], indent=2))
        return 0
    for s in states:
        epoch = f"{s.epoch}/{s.max_epochs}" if s.epoch is not None and s.max_epochs else "-"
        dice = f"{s.val_dice_per_epoch[-1]:.4f}" if s.val_dice_per_epoch else "-"
        print(f"{s.state:<9}  {s.phase or '-':<15}  epoch {epoch:<7}  Dice {dice:<6}  {s.run_dir}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """Describe a job environment (this interpreter or --python) and check it against the bundle's requirements."""
    from VistaFinetuneLib.jobs.environment import format_environment, probe_interpreter, requirements_report, unmet

    info = probe_interpreter(args.python or sys.executable)
    report = requirements_report(info)
    if args.json:
        print(json.dumps(info | {"requirements_report": report, "requirements_met": not unmet(report)}, indent=2))
    else:
        for line in format_environment(info, report):
            print(line)
    return 0 if not unmet(report) else 1


def cmd_env_create(args: argparse.Namespace) -> int:
    """Create the managed job environment: a venv with torch and the pinned requirements."""
    from VistaFinetuneLib.jobs.environment import (
        create_environment,
        format_environment,
        probe_interpreter,
        requirements_report,
    )

    python = create_environment(Path(args.dir), args.cuda)
    info = probe_interpreter(python)
    for line in format_environment(info, requirements_report(info)):
        print(line)
    print(f"check it any time with: vista-finetune env --python {python}")
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this group's commands, each with its handler."""
    jobs = commands.add_parser("jobs", help="background jobs: start, follow, cancel and list runs")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    start = jobs_commands.add_parser("start", help="start an engine command in the background: RUN_DIR -- ARGS...")
    start.add_argument("run_dir", help="the job's run folder (its files go to the hidden .RUN_DIR.job beside it)")
    start.add_argument("--python", help="the interpreter of the job (default: this one)")
    start.add_argument("engine_args", nargs=argparse.REMAINDER, help="-- then the engine's arguments")
    start.set_defaults(handler=cmd_jobs_start)
    status = jobs_commands.add_parser("status", help="the state, progress and log tail of a run (never waits)")
    status.add_argument("run_dir")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.add_argument("--lines", type=int, default=10, help="log lines to show")
    status.set_defaults(handler=cmd_jobs_status)
    cancel = jobs_commands.add_parser("cancel", help="cancel a running job and every process it started")
    cancel.add_argument("run_dir")
    cancel.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    cancel.add_argument("--no-wait", action="store_true", help="return at once instead of when all have ended")
    cancel.set_defaults(handler=cmd_jobs_cancel)
    listing = jobs_commands.add_parser("list", help="one line per run folder under ROOT, newest first")
    listing.add_argument("root")
    listing.add_argument("--json", action="store_true", help="print the states as JSON")
    listing.set_defaults(handler=cmd_jobs_list)

    env = commands.add_parser(
        "env", help="describe a job environment and check the bundle's requirements (exit 1: not met)"
    )
    env.add_argument("--python", help="the interpreter to probe (default: this one)")
    env.add_argument("--json", action="store_true", help="print the description as JSON")
    env.set_defaults(handler=cmd_env)
    env_commands = env.add_subparsers(dest="env_command")
    create = env_commands.add_parser("create", help="create the managed job environment (venv + pinned stack)")
    create.add_argument("dir", help="a new folder for the venv")
    create.add_argument("--cuda", choices=["cu121", "cu124", "cu126", "cpu"], help="torch build (required with a GPU)")
    create.set_defaults(handler=cmd_env_create)
