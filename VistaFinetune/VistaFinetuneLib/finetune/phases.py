"""The bundle's phases of a finetune run, each a ``python -m monai.bundle run`` child, with live status.

``status.json`` in the run folder is rewritten as the phases go (phase, epoch, iteration, loss, Dice, ETA);
``run_phases`` runs the phases in order, skips those a resumed run already finished and stops at the first failure.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from VistaFinetuneLib.bundle.log import TrainingTrace
from VistaFinetuneLib.bundle.runner import BundleRun, run_bundle
from VistaFinetuneLib.jobs.gpu_monitor import GpuMemoryMonitor
from VistaFinetuneLib.run_files import read_json, write_json_atomic

PHASES = ("eval_pretrained", "train", "eval_finetuned")
Progress = Callable[[dict], None]


class StatusWriter:
    """Rewrites ``status.json`` atomically as the run goes: phase, epoch, iteration, loss, Dice, ETA."""

    def __init__(self, run_dir: Path, progress: Progress | None) -> None:
        self.path = run_dir / "status.json"
        self.progress = progress
        self.state: dict = {"state": "running", "pid": os.getpid(), "phase": None, "phases": {}}
        self.last_write = 0.0
        self.epochs_seen = 0

    def update(self, force: bool = False, **fields) -> None:
        self.state.update(fields)
        self.state["updated"] = time.time()
        now = time.monotonic()
        if force or now - self.last_write >= 0.5:
            write_json_atomic(self.path, self.state)
            self.last_write = now
        if self.progress is not None:
            self.progress(self.state)

    def training_line(self, trace: TrainingTrace, phase_started: float) -> None:
        done = (max(trace.epoch, 1) - 1) * (trace.iterations_per_epoch or 0) + trace.iteration
        total = (trace.max_epochs or 0) * (trace.iterations_per_epoch or 0)
        elapsed = time.monotonic() - phase_started
        eta = elapsed / done * (total - done) if done and total else None
        self.update(
            epoch=trace.epoch,
            max_epochs=trace.max_epochs,
            iteration=trace.iteration,
            iterations_per_epoch=trace.iterations_per_epoch,
            loss=trace.losses[-1] if trace.losses else None,
            val_dice_per_epoch=trace.val_dice_per_epoch,
            eta_seconds=None if eta is None else round(eta, 1),
            force=len(trace.val_dice_by_epoch) != self.epochs_seen,  # every validation result reaches the file
        )
        self.epochs_seen = len(trace.val_dice_by_epoch)


def run_phase(
    name: str,
    bundle_dir: Path,
    config_files: list[Path],
    run_dir: Path,
    status: StatusWriter,
    trace: TrainingTrace | None = None,
    nproc_per_node: int = 1,
) -> dict:
    """Run one phase of the bundle; return its record (command, config stack, log, exit code, time, GPU peak)."""
    run = BundleRun(
        bundle_dir=bundle_dir,
        config_files=config_files,
        cwd=run_dir,
        log_path=run_dir / "logs" / f"{name}.log",
        args_path=run_dir / "configs" / f"{name}_args.json",
        nproc_per_node=nproc_per_node,
    )
    status.update(force=True, phase=name)
    started = time.monotonic()

    def on_line(line: str) -> None:
        if trace is not None and trace.feed(line):
            status.training_line(trace, started)

    with GpuMemoryMonitor() as monitor:
        code = run_bundle(run, on_line)
    record = {
        "command": " ".join(run.command()),
        "config_stack": [str(p) for p in config_files],
        "log": str(run.log_path),
        "return_code": code,
        "seconds": round(time.monotonic() - started, 1),
        "peak_gpu_mb": monitor.peak_mb,
    }
    status.state["phases"][name] = {"return_code": code, "seconds": record["seconds"]}
    status.update(force=True)
    return record


@dataclass
class PhaseOutcome:
    """What the phases left: which finished, their records, the training trace, the first failure."""

    done: list[str]
    records: dict[str, dict]
    trace: TrainingTrace = field(default_factory=TrainingTrace)
    failed: str | None = None


def run_phases(
    phases: list[str],
    stacks: dict[str, list[Path]],
    bundle_dir: Path,
    run_dir: Path,
    nproc_per_node: int,
    status: StatusWriter,
    previous: dict,
) -> PhaseOutcome:
    """Run ``phases`` in order; ``previous`` (run.json of a resumed run) names those already done."""
    outcome = PhaseOutcome(list(previous.get("phases_done", [])), dict(previous.get("phase_records", {})))
    finetuned_ckpt = run_dir / "checkpoints" / "model_finetune.pt"
    for name in phases:
        if name in outcome.done:
            outcome.records[name]["skipped"] = True
            continue
        if name == "eval_finetuned" and not finetuned_ckpt.is_file():
            outcome.failed = "training wrote no model_finetune.pt"
            break
        # A phase starts clean: leftovers of an interrupted attempt (this run's own files) would mislead.
        shutil.rmtree(run_dir / ("checkpoints" if name == "train" else name), ignore_errors=True)
        training = name == "train"
        record = run_phase(
            name, bundle_dir, stacks[name], run_dir, status, outcome.trace if training else None,
            nproc_per_node if training else 1,
        )  # fmt: skip
        outcome.records[name] = record
        if record["return_code"] != 0:
            outcome.failed = f"phase {name} failed with exit code {record['return_code']}; see {record['log']}"
            break
        outcome.done.append(name)
        progress_record = {"phases_done": outcome.done, "phase_records": outcome.records}
        write_json_atomic(run_dir / "run.json", read_json(run_dir / "run.json") | progress_record)
    if "train" in outcome.done and not outcome.trace.val_dice_by_epoch:  # resumed after training: read its log
        for line in Path(outcome.records["train"]["log"]).read_text(errors="replace").splitlines():
            outcome.trace.feed(line)
    return outcome
