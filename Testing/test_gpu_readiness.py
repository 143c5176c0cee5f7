"""bench/gpu_readiness.py: its --smoke run (the tiny bundle on the CPU) measures every section and leaves the bundle
as it was; a section past its time limit is killed and reported, and a bad bundle folder gets one clear message."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tree_digest

from VistaFinetuneLib.inference.stage_timer import STAGES
from VistaFinetuneLib.resources import ENGINE_ROOT

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gpu_readiness.py"
SECTIONS = ["window", "class", "clicks", "everything", "train-32x32x32-1", "train-32x32x32-5",
            "train-48x48x32-1", "train-48x48x32-5"]  # fmt: skip


def bench(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ENGINE_ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)  # fmt: skip


@pytest.fixture(scope="module")
def smoke(tiny_bundle_dir, tmp_path_factory) -> tuple[dict, subprocess.CompletedProcess, dict, dict]:
    before = tree_digest(tiny_bundle_dir)
    results_file = tmp_path_factory.mktemp("readiness") / "results.json"
    run = bench("--smoke", "--json", str(results_file), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(results_file.read_text()), run, before, tree_digest(tiny_bundle_dir)


@pytest.mark.e2e
def test_smoke_measures_every_section_and_prints_one_table(smoke):
    results, run, _, _ = smoke
    assert list(results["sections"]) == SECTIONS
    assert {name: s["status"] for name, s in results["sections"].items()} == {name: "ok" for name in SECTIONS}
    assert "warm clicks, median" in run.stdout and "s/iteration" in run.stdout


@pytest.mark.e2e
def test_smoke_clicks_and_class_prompts_carry_the_stage_split(smoke):
    sections = smoke[0]["sections"]
    clicks = sections["clicks"]["clicks"]
    assert len(clicks) == 3
    for click in clicks:
        assert list(click["stages"]) == list(STAGES)
        assert click["stages"]["encoder"] > 0 and click["stages"]["heads"] > 0
        assert click["network_s"] == pytest.approx(click["stages"]["encoder"] + click["stages"]["heads"], abs=2e-4)
        assert click["network_s"] < click["seconds"]
    assert all(click["region"] is not None for click in clicks)
    assert sections["clicks"]["whole_volume_last"]["region"] is None
    assert sections["clicks"]["region_equals_whole_volume"] is True
    cold, warm = sections["class"]["cold"], sections["class"]["warm"]
    assert cold["cache"]["image"] == "miss" and warm["cache"]["image"] == "hit"
    assert warm["cache"]["encoder_windows_computed"] == 0 < warm["cache"]["encoder_windows_reused"]
    assert cold["stages"]["read_resample"] > warm["stages"]["read_resample"]


@pytest.mark.e2e
def test_smoke_training_sections_time_iterations_and_the_loader(smoke):
    for name, section in smoke[0]["sections"].items():
        if name.startswith("train-"):
            assert section["iteration_s"] > 0 and 0 <= section["loader_share"] < 1
            assert section["patch"] == [int(v) for v in name.split("-")[1].split("x")]


@pytest.mark.e2e
def test_smoke_leaves_the_bundle_folder_as_it_was(smoke):
    _, _, before, after = smoke
    assert after == before


@pytest.mark.unit
def test_a_section_past_its_limit_is_killed_and_reported(tmp_path):
    sys.path.insert(0, str(BENCH.parent))
    try:
        import gpu_readiness
    finally:
        sys.path.remove(str(BENCH.parent))
    state = {"work": str(tmp_path), "bundle_source": "", "device": "cpu", "smoke": True}
    result = gpu_readiness.child("window", state, limit_s=0.2)  # importing torch alone takes longer
    assert result["status"] == "timed out after 0 s"


@pytest.mark.unit
def test_a_folder_that_is_no_bundle_gets_one_message(tmp_path):
    run = bench(str(tmp_path), timeout=120)
    assert run.returncode != 0
    assert f"{tmp_path}: give a VISTA3D bundle folder" in run.stderr and "Traceback" not in run.stderr
