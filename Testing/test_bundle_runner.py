"""Running ``python -m monai.bundle run`` as a child process, with awkward paths."""

import json
import sys

import pytest

from VistaFinetuneLib.bundle.runner import BundleRun, run_bundle

pytestmark = pytest.mark.e2e

ODD_NAME = "odd $x @y %z 'q' [1] é"


def make_bundle(root, run_expressions):
    """A minimal real bundle whose config imports its own ``scripts`` package, as the VISTA3D configs do."""
    (root / "configs").mkdir(parents=True)
    (root / "scripts").mkdir()
    (root / "scripts" / "__init__.py").write_text("GREETING = 'hello from scripts'\n")
    config = {"imports": ["$import pathlib", "$import scripts"], "run": run_expressions}
    (root / "configs" / "main.json").write_text(json.dumps(config))
    return root


def test_child_runs_in_cwd_with_bundle_importable_and_no_path_on_the_command_line(tmp_path):
    bundle = make_bundle(tmp_path / ODD_NAME / "bundle", ["$pathlib.Path('marker.txt').write_text(scripts.GREETING)"])
    work = tmp_path / ODD_NAME / "run"
    lines = []
    run = BundleRun(
        bundle_dir=bundle,
        config_files=[bundle / "configs" / "main.json"],
        cwd=work,
        log_path=work / "logs" / "main.log",
        args_path=work / "configs" / "args.json",
        python=sys.executable,
    )
    assert run_bundle(run, lines.append) == 0
    assert (work / "marker.txt").read_text() == "hello from scripts"
    assert (work / "logs" / "main.log").read_text().startswith("$ ")
    assert run.command()[1:5] == ["-m", "monai.bundle", "run", "--args_file"]
    assert ODD_NAME not in " ".join(run.command()[:-1])
    args = json.loads(run.args_path.read_text())
    assert args["config_file"] == [str((bundle / "configs" / "main.json").resolve())]
    assert not any("DeprecationWarning" in line for line in lines)
    assert not (bundle / "marker.txt").exists()


def test_failing_config_returns_a_non_zero_exit_code(tmp_path):
    bundle = make_bundle(tmp_path / "bundle", ["$1 / 0"])
    run = BundleRun(
        bundle_dir=bundle,
        config_files=[bundle / "configs" / "main.json"],
        cwd=tmp_path / "run",
        log_path=tmp_path / "run" / "main.log",
        args_path=tmp_path / "run" / "args.json",
    )
    assert run_bundle(run) != 0
    assert "ZeroDivisionError" in (tmp_path / "run" / "main.log").read_text()


def test_multi_gpu_runs_go_through_torchrun_from_the_same_interpreter(tmp_path):
    run = BundleRun(
        bundle_dir=tmp_path,
        config_files=[],
        cwd=tmp_path,
        log_path=tmp_path / "l.log",
        args_path=tmp_path / "a.json",
        python="/env/bin/python",
        nproc_per_node=4,
    )
    assert run.command()[:5] == ["/env/bin/python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert run.command()[5:9] == ["-m", "monai.bundle", "run", "--args_file"]
