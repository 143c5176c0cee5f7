"""The panel controller: what the module's buttons do, over the job API, the plan and the run's files.

No Qt, no Slicer: the widget turns clicks into calls here and shows what comes back. Nothing here waits for
a job; slow steps are background jobs (:mod:`VistaFinetuneLib.jobs.control`) or :class:`BackgroundCall`.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.environment import host_ram_mb
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.finetune.plan import make_plan
from VistaFinetuneLib.jobs import control
from VistaFinetuneLib.jobs import environment as job_environment
from VistaFinetuneLib.panel import correction, training_data
from VistaFinetuneLib.panel.results import RunResults, read_results
from VistaFinetuneLib.run_files import read_user_json

# Share of the progress bar each phase of a finetune fills (a run without formal evaluation only trains).
PHASE_SPANS = {"eval_pretrained": (0, 10), "train": (10, 85), "eval_finetuned": (85, 95), "review": (95, 100)}
PHASE_NAMES = {
    "eval_pretrained": "Scoring the pretrained model",
    "train": "Training",
    "eval_finetuned": "Scoring the finetuned model",
    "review": "Writing the review",
}
BUNDLE_WEIGHTS_MB = 872  # the VISTA3D checkpoint (models/model.pt) a download fetches, about 0.9 GB
CPU_WARNING = (
    "Training would run on the CPU: this job environment has no usable CUDA GPU. A real VISTA3D finetune needs "
    "a GPU (days on a CPU); use the CPU only for the tiny reference bundle or a wiring check."
)


@dataclass
class EnvironmentReport:
    """A job environment as the Setup section shows it."""

    python: str
    lines: list[str]  # what a person reads
    problems: list[str]  # unmet requirements, each with its fix
    on_cpu: bool
    plan_environment: dict  # what :func:`make_plan` sizes the plan by


def describe_environment(python: str) -> EnvironmentReport:
    """Probe ``python`` in a subprocess (seconds: call it through :class:`BackgroundCall`)."""
    info = job_environment.probe_interpreter(python)
    report = job_environment.requirements_report(info)
    gpus = info.get("gpus", [])
    cuda = bool(info.get("cuda_available")) and bool(gpus)
    plan_environment = {
        "cuda_available": cuda,
        "device": "cuda:0" if cuda else "cpu",
        "gpu_free_mb": gpus[0].get("free_mb", 0) if gpus else 0,
        "gpu_count": len(gpus),
        "host_ram_mb": host_ram_mb(),
    }
    return EnvironmentReport(
        python=info["executable"],
        lines=job_environment.format_environment(info, report),
        problems=job_environment.unmet(report),
        on_cpu=not cuda,
        plan_environment=plan_environment,
    )


def managed_environment_commands(directory: Path, cuda: str, python: str) -> list[str]:
    """What creating the managed job environment in ``directory`` with ``python`` (the interpreter that runs the
    creation job) will run, one shell line each (to confirm)."""
    commands = job_environment.create_environment_commands(directory, cuda, python)
    return [shlex.join(command) for command in commands]


@dataclass
class TrainingSettings:
    """The Training section's editable plan."""

    epochs: int
    learning_rate: float
    patch_size: list[int]
    cache_rate: float
    class_prompts_only: bool = False  # --auto-seg: train class prompts only, no point prompts
    rationale: list[str] = field(default_factory=list)


def _bundle_defaults(bundle_dir: Path) -> dict:
    """The bundle's own training values: ``train.json`` overridden by ``train_continual.json``, as it stacks them."""
    merged: dict = {}
    for name in ("train.json", "train_continual.json"):
        path = Path(bundle_dir) / "configs" / name
        content = read_user_json(path, "bundle configuration") if path.is_file() else {}
        merged.update(content if isinstance(content, dict) else {})
    return merged


def default_settings(
    bundle_dir: Path, plan_environment: dict, n_train_cases: int, n_classes: int = 1
) -> TrainingSettings:
    """The engine's plan for this machine, dataset and number of mapped classes (each is prompted every step), with
    the bundle's own values where the plan keeps them."""
    plan = make_plan(plan_environment, n_train_cases, n_classes=max(1, n_classes))
    bundle = _bundle_defaults(bundle_dir)
    patch = plan.patch_size or bundle.get("patch_size") or [128, 128, 128]
    learning_rate = plan.learning_rate if plan.learning_rate is not None else bundle.get("learning_rate", 5e-5)
    if not (isinstance(patch, list) and len(patch) == 3 and all(isinstance(x, int) for x in patch)):
        patch = [128, 128, 128]  # the bundle's patch is an expression, not a list: use its documented default
    return TrainingSettings(
        epochs=plan.epochs,
        learning_rate=float(learning_rate),
        patch_size=[int(x) for x in patch],
        cache_rate=plan.train_dataset_cache_rate,
        rationale=plan.rationale,
    )


def finetune_command(
    datalist: Path,
    run_dir: Path,
    mapping: list[list[int]],
    class_names: dict[int, str],
    settings: TrainingSettings,
    bundle_dir: Path | None,
) -> list[str]:
    """The engine arguments of the run (what ``vista-finetune`` would be given in a terminal)."""
    command = [
        "finetune",
        "--datalist", str(datalist),
        "--output-dir", str(run_dir),
        "--label-mapping", json.dumps(mapping),
        "--class-names", json.dumps({str(k): v for k, v in class_names.items()}),
        "--epochs", str(settings.epochs),
        "--learning-rate", repr(float(settings.learning_rate)),
        "--patch-size", json.dumps(settings.patch_size),
        "--cache-rate", repr(float(settings.cache_rate)),
    ]  # fmt: skip
    if settings.class_prompts_only:
        command.append("--auto-seg")
    if bundle_dir is not None:
        command += ["--bundle-dir", str(bundle_dir)]
    return command


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass
class ProgressView:
    """What the Training section shows of a job at one poll."""

    state: str
    percent: int
    headline: str
    eta: str
    log: list[str]
    loss: list[tuple[float, float]]  # (epoch as a fraction, loss)
    val_dice: list[float]  # per epoch; index 0 is the pretrained model's
    max_epochs: int | None
    finished: bool


def progress_view(state: control.JobState, loss: list[tuple[float, float]]) -> ProgressView:
    """A job state as a percentage, a headline and an ETA."""
    if state.state == "completed":
        percent, headline = 100, "Finished: see Results."
    elif state.state in ("failed", "cancelled", "stale", "unknown"):
        percent = 0
        errors = [line.removeprefix("error: ") for line in state.log_tail if line.startswith("error: ")]
        headline = {
            "failed": f"The run failed: {errors[-1]}" if errors else "The run failed: see the log.",
            "cancelled": "Cancelled.",
            "stale": "The job stopped without finishing (Slicer or the machine restarted?): start it again to resume.",
            "unknown": "No job in this folder, or it runs on another machine.",
        }[state.state]
    else:
        low, high = PHASE_SPANS.get(state.phase or "", (0, 0))
        fraction = 0.0
        headline = PHASE_NAMES.get(state.phase or "", "Starting")
        if state.phase == "train" and state.epoch and state.max_epochs:
            per_epoch = state.iterations_per_epoch or 0
            done = (state.epoch - 1) * per_epoch + (state.iteration or 0)
            fraction = done / (state.max_epochs * per_epoch) if per_epoch else (state.epoch - 1) / state.max_epochs
            headline += f": epoch {state.epoch}/{state.max_epochs}"
            if per_epoch:
                headline += f", iteration {state.iteration or 0}/{per_epoch}"
            if state.loss is not None:
                headline += f", loss {state.loss:.4f}"
        percent = int(low + (high - low) * min(max(fraction, 0.0), 1.0))
    eta = f"about {_duration(state.eta_seconds)} left in training" if state.eta_seconds else ""
    return ProgressView(
        state=state.state,
        percent=percent,
        headline=headline,
        eta=eta,
        log=list(state.log_tail),
        loss=list(loss),
        val_dice=list(state.val_dice_per_epoch),
        max_epochs=state.max_epochs,
        finished=state.state != "running",
    )


class PanelController:
    """One panel's runs: where they go, the one it follows, and the job calls for it."""

    def __init__(self, runs_root: Path, job_python: str) -> None:
        self.runs_root = Path(runs_root).absolute()
        self.job_python = job_python
        self.run_dir: Path | None = None
        self._loss: dict[tuple[int, int], float] = {}
        self._iterations_per_epoch = 0
        self._last_percent = 0  # a running job between its last phase and its exit is finishing, not starting

    def new_run_dir(self) -> Path:
        """A fresh run folder under the runs folder, named by the time."""
        name = time.strftime("finetune-%Y%m%d-%H%M%S")
        candidate, index = self.runs_root / name, 1
        while candidate.exists() or training_data_path(candidate).parent.exists():
            index += 1
            candidate = self.runs_root / f"{name}-{index}"
        return candidate

    def start(
        self,
        rows: list[training_data.CaseRow],
        mapping_rows: list[training_data.MappingRow],
        catalog: LabelCatalog,
        settings: TrainingSettings,
        bundle_dir: Path | None,
    ) -> ProgressView:
        """Check the inputs, write the run's datalist beside the run folder, start the job; returns at once."""
        values = training_data.label_values([row for row in rows if row.usable])
        error, _warnings = training_data.mapping_messages(mapping_rows, values, catalog)
        if error:
            raise UserError(error)
        run_dir = self.new_run_dir()
        datalist = training_data_path(run_dir)
        training_data.write_training_datalist(rows, datalist)
        pairs, names = training_data.mapping_pairs(mapping_rows), training_data.mapping_names(mapping_rows)
        command = finetune_command(datalist, run_dir, pairs, names, settings, bundle_dir)
        control.start_job(run_dir, command, python=self.job_python)
        return self.attach(run_dir)

    def start_exported(
        self,
        run_dir: Path,
        datalist: Path,
        mapping: list[list[int]],
        class_names: dict[int, str],
        settings: TrainingSettings,
        bundle_dir: Path | None,
    ) -> ProgressView:
        """Start a finetune on a training set already written (the scene's cases, exported beside ``run_dir``)."""
        command = finetune_command(datalist, run_dir, mapping, class_names, settings, bundle_dir)
        control.start_job(run_dir, command, python=self.job_python)
        return self.attach(run_dir)

    def attach(self, run_dir: Path) -> ProgressView:
        """Follow the run in ``run_dir`` (running or finished), e.g. after Slicer restarted."""
        self.run_dir = Path(run_dir).absolute()
        self._loss = {}
        self._last_percent = 0
        return self.poll()

    def latest_run(self) -> Path | None:
        """The newest run folder under the runs folder, if any."""
        if not self.runs_root.is_dir():
            return None
        runs = control.list_runs(self.runs_root)
        return runs[0].run_dir if runs else None

    def poll(self) -> ProgressView:
        """The followed run's progress (a few file reads; never waits)."""
        if self.run_dir is None:
            raise UserError("no run to follow: start one or re-attach to a run folder")
        state = control.poll_job(self.run_dir)
        if state.phase == "train" and state.epoch and state.loss is not None:
            self._iterations_per_epoch = state.iterations_per_epoch or self._iterations_per_epoch
            self._loss[(state.epoch, state.iteration or 0)] = state.loss
        per_epoch = max(self._iterations_per_epoch, 1)
        loss = [(epoch - 1 + iteration / per_epoch, value) for (epoch, iteration), value in sorted(self._loss.items())]
        view = progress_view(state, loss)
        if view.state == "running" and state.phase is None and self._last_percent > 0:
            view.percent, view.headline = self._last_percent, "Finishing"
        self._last_percent = view.percent if view.state == "running" else 0
        return view

    def cancel(self) -> ProgressView:
        """Ask the followed job to stop (SIGTERM, then SIGKILL after the grace period); returns at once."""
        if self.run_dir is None:
            raise UserError("no run to cancel")
        control.cancel_job(self.run_dir, wait=False)
        return self.poll()

    def results(self) -> RunResults:
        """The followed run's results (output.json)."""
        if self.run_dir is None:
            raise UserError("no run selected")
        return read_results(self.run_dir)

    def finetune_again(self, start_from_previous: bool = False) -> ProgressView:
        """Start the next round from the followed run, on its cases plus the corrections added to it."""
        if self.run_dir is None:
            raise UserError("no run followed: finetune again continues the run the panel follows")
        run_dir = self.new_run_dir()
        command = correction.finetune_again_command(self.run_dir, run_dir, start_from_previous)
        control.start_job(run_dir, command, python=self.job_python)
        return self.attach(run_dir)

    def start_bundle_download(self, name: str, parent_dir: Path) -> Path:
        """Download a bundle into ``parent_dir/name`` as a background job; returns the job's folder to poll."""
        job_dir = Path(parent_dir).absolute() / f".{name}-download"
        control.start_job(job_dir, ["bundle", "download", "--name", name, "--dir", str(Path(parent_dir).absolute())],
                          python=self.job_python)  # fmt: skip
        return job_dir

    def start_environment_creation(self, directory: Path, cuda: str, python: str) -> Path:
        """Create the managed job environment in ``directory`` as a background job run by ``python``."""
        directory = Path(directory).absolute()
        if directory.exists() and any(directory.iterdir()):
            raise UserError(f"{directory}: the folder is not empty; choose a new folder for the job environment")
        control.start_job(directory, ["env", "create", str(directory), "--cuda", cuda], python=python)
        return directory


def training_data_path(run_dir: Path) -> Path:
    """Where the panel writes a run's datalist: ``RUN_DIR.inputs/datalist.json`` beside the (new, empty) run folder."""
    return run_dir.parent / f"{run_dir.name}.inputs" / "datalist.json"
