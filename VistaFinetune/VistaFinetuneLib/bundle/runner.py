"""Run ``python -m monai.bundle run`` over a stack of config files as a child process.

The arguments travel in an ``--args_file`` JSON so that no path reaches MONAI's command-line parser, the child
runs with the bundle root importable (the configs do ``$import scripts``) and with a working directory of the
caller's choice (the bundle's ``logging.conf`` writes ``training.log`` there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.jobs import processes
from VistaFinetuneLib.resources import ENGINE_ROOT

# monai 1.4.0 emits ~70 of these on import under torch >= 2.9; they say nothing about the run.
QUIET_WARNINGS = "ignore:`torch.jit.:DeprecationWarning"


@dataclass(frozen=True)
class BundleRun:
    """One invocation of the bundle: which configs, from where, logged to which file."""

    bundle_dir: Path
    config_files: Sequence[Path]
    cwd: Path
    log_path: Path
    args_path: Path
    python: str = sys.executable
    nproc_per_node: int = 1  # > 1: one process per GPU under torchrun (its own rendezvous port, --standalone)

    def write_args(self) -> None:
        """Write the ``--args_file`` JSON: the config stack and the bundle's logging configuration."""
        args = {"config_file": [str(Path(p).resolve()) for p in self.config_files]}
        logging_conf = self.bundle_dir / "configs" / "logging.conf"
        if logging_conf.is_file():
            args["logging_file"] = str(logging_conf.resolve())
        self.args_path.parent.mkdir(parents=True, exist_ok=True)
        self.args_path.write_text(json.dumps(args, indent=2) + "\n")

    def launcher(self) -> list[str]:
        """The interpreter part of the command: plain Python, or torchrun from the same environment."""
        if self.nproc_per_node > 1 and processes.on_windows():
            raise UserError(
                f"{self.nproc_per_node} GPUs: multi-GPU training (torch.distributed with NCCL) does not run on "
                "Windows; set NPROC_PER_NODE=1 to train on one GPU, or train on Linux"
            )
        if self.nproc_per_node > 1:
            return [
                self.python,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={self.nproc_per_node}",
            ]
        return [self.python]

    def command(self) -> list[str]:
        """The exact command line of the child process."""
        return [*self.launcher(), "-m", "monai.bundle", "run", "--args_file", str(self.args_path.resolve())]

    def environment(self) -> dict[str, str]:
        """The child's environment: bundle root first on PYTHONPATH, unbuffered, no bytecode written, quiet imports."""
        env = dict(os.environ)
        # The bundle root (for ``$import scripts``), then this engine (for its compatibility overrides).
        paths = [str(self.bundle_dir.resolve()), str(ENGINE_ROOT)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # never write __pycache__ into the bundle folder
        env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), QUIET_WARNINGS]))
        return env


def run_bundle(run: BundleRun, on_line: Callable[[str], None] | None = None) -> int:
    """Run the bundle to completion, copying its output to ``run.log_path`` (and ``on_line``); return the exit code."""
    run.write_args()
    run.cwd.mkdir(parents=True, exist_ok=True)
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(run.log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(run.command()) + "\n")
        log.flush()
        with subprocess.Popen(
            run.command(),
            cwd=run.cwd,
            env=run.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                log.flush()
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            return process.wait()
