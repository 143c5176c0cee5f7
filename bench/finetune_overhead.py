"""Benchmark: the training phase through ``vista-finetune finetune --skip-formal-eval`` versus the raw
``python -m monai.bundle run`` of the same config stack, on the same data and epochs, alternating.

    .venv/bin/python bench/finetune_overhead.py [--rounds 3] [--epochs 2] [--cases 6]

Prints each round's wall times side by side and the ratio of medians (target: at most 1.10).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from VistaFinetuneLib.bundle import tiny_bundle
from VistaFinetuneLib.bundle.runner import QUIET_WARNINGS
from VistaFinetuneLib.data import synthetic

MAPPING = [[1, 1], [2, 3], [3, 14]]


def timed(command: list[str], cwd: Path, env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cases", type=int, default=6)
    args = parser.parse_args()
    bundle = tiny_bundle.ensure_tiny_bundle()
    work = Path(tempfile.mkdtemp(prefix="vf-bench-"))
    data = work / "data"
    synthetic.write_dataset(data, args.cases, seed=3, spec=synthetic.MICRO_SPEC)
    engine = [sys.executable, "-m", "VistaFinetuneLib", "finetune", str(data), "--skip-formal-eval",
              "--label-mapping", json.dumps(MAPPING), "--epochs", str(args.epochs), "--learning-rate", "0.001",
              "--bundle-dir", str(bundle)]  # fmt: skip

    # One engine run stages the exact config stack the raw runs reuse (with their own output folders).
    first = work / "engine-0"
    subprocess.run([*engine, "--output-dir", str(first)], check=True, stdout=subprocess.DEVNULL)
    stack = json.loads((first / "configs" / "train_args.json").read_text())["config_file"]
    env = dict(os.environ, PYTHONPATH=str(bundle), PYTHONWARNINGS=QUIET_WARNINGS)

    engine_times, raw_times = [], []
    for round_index in range(1, args.rounds + 1):
        run_dir = work / f"engine-{round_index}"
        engine_times.append(timed([*engine, "--output-dir", str(run_dir)], work))
        raw_dir = work / f"raw-{round_index}"
        raw_dir.mkdir()
        redirect = raw_dir / "redirect.json"
        redirect.write_text(json.dumps({"ckpt_dir": str(raw_dir / "checkpoints"), "output_dir": str(raw_dir)}))
        raw = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps([*stack, str(redirect)])]
        raw_times.append(timed(raw, raw_dir, env))
        print(f"round {round_index}: vista-finetune {engine_times[-1]:7.1f} s   raw {raw_times[-1]:7.1f} s")
    engine_median, raw_median = statistics.median(engine_times), statistics.median(raw_times)
    print(
        f"median: vista-finetune {engine_median:.1f} s, raw {raw_median:.1f} s, ratio {engine_median / raw_median:.3f}"
    )
    print(f"({args.cases} micro cases, {args.epochs} epochs, training phase only; work folder {work})")


if __name__ == "__main__":
    main()
