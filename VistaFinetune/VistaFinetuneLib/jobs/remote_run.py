"""``finetune --prepare-only``: a staged run folder plus the exact commands to run it on another machine.

The folder holds everything the phases read besides the bundle and the images (configs, overrides, datalist,
run.json). The commands assume the same absolute paths there (shared storage); ``finetune --resume`` then runs
every phase, decides and writes output.json, and the job API can watch the folder while it does.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from VistaFinetuneLib.bundle.runner import BundleRun

SLURM_TEMPLATE = """#!/bin/bash
#SBATCH --job-name=vista-finetune
#SBATCH --nodes=1
#SBATCH --gres=gpu:{gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --output={log}
# Submit with: sbatch {script}
# PYTHON must be the job environment's interpreter (monai==1.4.0, numpy<2, a CUDA torch, VistaFinetune installed).
set -euo pipefail
PYTHON="${{PYTHON:-{python}}}"
{env}"$PYTHON" -m VistaFinetuneLib finetune --resume --output-dir {run_dir}
"""


def phase_commands(runs: dict[str, BundleRun]) -> dict[str, str]:
    """Each phase as one shell line: cd to the run folder, bundle root importable, the exact monai command."""
    lines = {}
    for name, run in runs.items():
        run.write_args()
        env = run.environment()
        command = " ".join(shlex.quote(part) for part in run.command())
        lines[name] = f"cd {shlex.quote(str(run.cwd))} && PYTHONPATH={shlex.quote(env['PYTHONPATH'])} {command}"
    return lines


def write_remote_files(run_dir: Path, runs: dict[str, BundleRun], nproc_per_node: int) -> dict[str, str]:
    """Write ``run_commands.sh`` and ``slurm.sbatch`` into the run folder; return the commands by name."""
    quoted_run = shlex.quote(str(run_dir))
    python = shlex.quote(sys.executable)
    whole = f"{python} -m VistaFinetuneLib finetune --resume --output-dir {quoted_run}"
    phases = phase_commands(runs)
    env = f"NPROC_PER_NODE={nproc_per_node} " if nproc_per_node > 1 else ""
    script = [
        "#!/usr/bin/env bash",
        "# Run this prepared finetune (same absolute paths, e.g. shared storage).",
        "# All phases, the verdict and output.json (VistaFinetune installed in the job environment):",
        f"{env}{whole}",
        "",
        "# Or phase by phase with MONAI alone (no verdict, no output.json):",
        *[f"# {name}:\n#   {line}" for name, line in phases.items()],
    ]
    (run_dir / "run_commands.sh").write_text("\n".join(script) + "\n")
    slurm = SLURM_TEMPLATE.format(
        gpus=max(nproc_per_node, 1),
        cpus=8 * max(nproc_per_node, 1),
        log=run_dir / "logs" / "slurm-%j.log",  # #SBATCH lines take no shell quoting
        script=shlex.quote(str(run_dir / "slurm.sbatch")),
        python=sys.executable.replace('"', '\\"'),
        env=f"export NPROC_PER_NODE={nproc_per_node}\n" if nproc_per_node > 1 else "",
        run_dir=quoted_run,
    )
    (run_dir / "slurm.sbatch").write_text(slurm)
    (run_dir / "logs").mkdir(exist_ok=True)
    return {"all_phases": f"{env}{whole}", "slurm": f"sbatch {shlex.quote(str(run_dir / 'slurm.sbatch'))}", **phases}
