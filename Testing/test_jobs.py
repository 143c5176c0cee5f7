"""Background jobs with real processes: start, poll, cancel, kill and resume, two at once, list.

The heavy scenarios share tiny finetunes to stay within a few CPU minutes: one job is killed with SIGKILL as
soon as training starts (stale), then resumed while a fresh job runs beside it (two concurrent runs).
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from VistaFinetuneLib.cli import main
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.jobs import control as jobs
from VistaFinetuneLib.jobs import processes
from VistaFinetuneLib.jobs.supervisor import MARKER, JobFiles
from VistaFinetuneLib.schema import load_schema, schema_errors

pytestmark = pytest.mark.e2e

TINY = ["finetune", "--smoke", "--skip-formal-eval", "--skip-review", "--epochs", "2"]
JOB_TIMEOUT = 480.0


def tiny_command(bundle: Path, run_dir: Path, *extra: str) -> list[str]:
    return [*TINY, "--bundle-dir", str(bundle), "--output-dir", str(run_dir), *extra]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def wait_for(predicate, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def status_of(run_dir: Path) -> dict:
    try:
        return read(run_dir / "status.json")
    except (OSError, ValueError):
        return {}


def processes_mentioning(run_dir: Path) -> list[int]:
    """Live processes whose command line holds the run folder's path (this test process excluded)."""
    return [
        p.pid
        for p in processes.all_processes()
        if p.pid != os.getpid() and p.state != "Z" and str(run_dir) in processes.cmdline(p.pid)
    ]


def reaped(pid: int) -> bool:
    """Gone for good: not even a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --- a job killed with SIGKILL, resumed beside a fresh job -------------------------------------------------------


@dataclass
class Pair:
    fresh: Path
    resumed: Path
    stale_state: jobs.JobState
    killed_job: dict
    overlap: bool  # both were seen running at the same poll
    fresh_state: jobs.JobState
    resumed_state: jobs.JobState
    seconds: float


@pytest.fixture(scope="module")
def pair(tiny_bundle_dir, tmp_path_factory) -> Pair:
    root = tmp_path_factory.mktemp("jobs")
    fresh, resumed = root / "fresh", root / "resumed"
    jobs.start_job(resumed, tiny_command(tiny_bundle_dir, resumed))
    assert wait_for(lambda: status_of(resumed).get("phase") == "train", 300), jobs.poll_job(resumed).log_tail
    killed = read(JobFiles(resumed).job_json)
    os.killpg(killed["pgid"], signal.SIGKILL)
    os.kill(killed["supervisor_pid"], signal.SIGKILL)
    assert wait_for(lambda: not processes.alive(killed["supervisor_pid"]), 10)
    assert wait_for(lambda: not processes.group_members(killed["pgid"]), 10)
    stale = jobs.poll_job(resumed)

    started = time.monotonic()
    jobs.start_job(fresh, tiny_command(tiny_bundle_dir, fresh))
    jobs.start_job(resumed, tiny_command(tiny_bundle_dir, resumed, "--resume"))
    overlap = False
    while time.monotonic() - started < JOB_TIMEOUT:
        states = [jobs.poll_job(fresh), jobs.poll_job(resumed)]
        overlap = overlap or all(s.state == "running" for s in states)
        if all(s.finished for s in states):
            break
        time.sleep(1.0)
    seconds = time.monotonic() - started
    for run in (fresh, resumed):  # never leave a job behind, whatever happened
        jobs.cancel_job(run, grace_seconds=2)
    return Pair(fresh, resumed, stale, killed, overlap, jobs.poll_job(fresh), jobs.poll_job(resumed), seconds)


def test_start_job_runs_a_finetune_to_completion(pair):
    state = pair.fresh_state
    assert state.state == "completed", state.log_tail
    assert state.return_code == 0 and state.phase is None and state.eta_seconds is None
    result = read(pair.fresh / "output.json")
    assert schema_errors(result) == []
    assert result["status"] == "completed" and result["error"] is None
    assert set(load_schema()["required"]) <= set(result)
    assert len(result["output"]["val_dice_per_epoch"]) == 3  # epoch 0 (pretrained) + 2 epochs
    assert state.val_dice_per_epoch == result["output"]["val_dice_per_epoch"]
    assert status_of(pair.fresh)["state"] == "completed"
    files = JobFiles(pair.fresh)
    assert read(files.exit_json)["return_code"] == 0 and read(files.exit_json)["cancelled"] is False
    job = read(files.job_json)
    assert job["engine_args"][0] == "finetune" and job["pid"] == job["pgid"] != job["supervisor_pid"]
    assert any("(completed)" in line for line in files.log.read_text().splitlines())  # the CLI's summary
    assert not processes_mentioning(pair.fresh)


def test_a_killed_job_is_stale_and_resumes_to_completion(pair):
    assert pair.stale_state.state == "stale" and pair.stale_state.phase == "train"
    assert pair.stale_state.return_code is None
    state = pair.resumed_state
    assert state.state == "completed", state.log_tail
    result = read(pair.resumed / "output.json")
    assert result["status"] == "completed" and schema_errors(result) == []
    assert result["runtime"]["phases"]["train"]["skipped"] is False
    assert len(result["output"]["val_dice_per_epoch"]) == 3
    job = read(JobFiles(pair.resumed).job_json)
    assert job["engine_args"][-1] == "--resume" and job["pid"] != pair.killed_job["pid"]
    assert [h["job"]["pid"] for h in job["history"]] == [pair.killed_job["pid"]]
    assert job["history"][0]["exit"] is None  # the killed supervisor never wrote exit.json


def test_two_concurrent_runs_complete_independently(pair):
    assert pair.overlap, "the two jobs never ran at the same time"
    assert pair.fresh_state.state == pair.resumed_state.state == "completed"
    assert pair.fresh_state.pid != pair.resumed_state.pid
    for run in (pair.fresh, pair.resumed):
        result = read(run / "output.json")
        assert result["invocation"]["cwd"] == str(run)
        for phase in result["runtime"]["phases"].values():
            assert Path(phase["log"]).parent == run / "logs"
        assert result["output"]["finetuned_ckpt"].startswith(str(run / "checkpoints"))
        assert Path(result["input"]["datalist"]).is_relative_to(run)
    fresh, resumed = read(pair.fresh / "output.json"), read(pair.resumed / "output.json")
    assert sorted(fresh) == sorted(resumed) and sorted(fresh["output"]) == sorted(resumed["output"])
    print(f"\ntwo concurrent tiny jobs (one resumed) finished in {pair.seconds:.1f} s")


# --- cancel --------------------------------------------------------------------------------------------------------


def test_cancel_mid_epoch_stops_every_process(tiny_bundle_dir, tmp_path):
    run_dir = tmp_path / "cancelled"
    jobs.start_job(run_dir, tiny_command(tiny_bundle_dir, run_dir))

    def training() -> bool:
        status = status_of(run_dir)
        return status.get("phase") == "train" and (status.get("iteration") or 0) >= 1

    pids: set[int] = set()
    try:
        assert wait_for(training, 300), jobs.poll_job(run_dir).log_tail
        running = jobs.poll_job(run_dir)
        assert running.state == "running" and running.phase == "train" and running.iteration >= 1
        job = read(JobFiles(run_dir).job_json)
        pids.update({job["supervisor_pid"], job["pid"], *processes.group_members(job["pgid"])})
        pids.update(processes_mentioning(run_dir))
        assert len(pids) >= 3  # supervisor, job and the bundle's training process at least
    finally:
        started = time.monotonic()
        state = jobs.cancel_job(run_dir)
        seconds = time.monotonic() - started
    print(f"\ncancel_job took {seconds:.2f} s for {len(pids)} processes")
    assert state.state == "cancelled" and seconds < 15
    ended = read(JobFiles(run_dir).exit_json)
    assert ended["cancelled"] is True and ended["forced_kill"] is False and ended["return_code"] == -signal.SIGTERM
    assert wait_for(lambda: all(reaped(pid) for pid in pids), 2, 0.05), [p for p in pids if not reaped(p)]
    assert not processes.group_members(job["pgid"]) and not processes_mentioning(run_dir)
    assert not (run_dir / "output.json").exists()
    assert jobs.cancel_job(run_dir).state == "cancelled"  # cancelling again changes nothing


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", code], start_new_session=True)  # leaves the job's process group
time.sleep(600)
"""


def supervise(run_dir: Path, code: str) -> subprocess.Popen:
    """The supervisor over ``python -c code``, started the way start_job starts it."""
    files = JobFiles(run_dir)
    files.dir.mkdir(parents=True)
    with open(files.log, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", MARKER, str(run_dir), "--", sys.executable, "-c", code],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip


def test_cancel_kills_a_job_that_ignores_sigterm_and_its_escaped_child(tmp_path):
    run_dir = tmp_path / "stubborn"
    supervisor = supervise(run_dir, STUBBORN)
    try:
        assert wait_for(lambda: len(processes.descendants(supervisor.pid)) == 2, 30)
        tree = processes.descendants(supervisor.pid)
        assert jobs.poll_job(run_dir).state == "running"
        started = time.monotonic()
        state = jobs.cancel_job(run_dir, grace_seconds=1.0)
        seconds = time.monotonic() - started
        assert supervisor.wait(5) == 1
    finally:
        supervisor.kill()
        supervisor.wait()
    assert state.state == "cancelled" and 1.0 <= seconds < 5
    ended = read(JobFiles(run_dir).exit_json)
    assert ended["forced_kill"] is True and ended["return_code"] == -signal.SIGKILL
    # the escaped child too: killed and reaped (by the supervisor, or by init once the supervisor is gone)
    assert wait_for(lambda: all(reaped(pid) for pid in tree), 5, 0.05), [p for p in tree if not reaped(p)]


def test_cancel_of_a_job_whose_supervisor_died_kills_the_job_directly(tmp_path):
    run_dir = tmp_path / "orphan"
    supervisor = supervise(run_dir, "import time; time.sleep(600)")
    try:
        assert wait_for(lambda: JobFiles(run_dir).job_json.is_file() and processes.descendants(supervisor.pid), 30)
        job = read(JobFiles(run_dir).job_json)
    finally:
        supervisor.kill()
        supervisor.wait()
    assert processes.alive(job["pid"]) and jobs.poll_job(run_dir).state == "stale"
    state = jobs.cancel_job(run_dir, grace_seconds=1.0)
    assert state.state == "cancelled" and not processes.alive(job["pid"])


# --- without a job, and lists -------------------------------------------------------------------------------------


def test_poll_job_without_a_job(tmp_path):
    assert jobs.poll_job(tmp_path).state == "unknown"
    assert jobs.poll_job(tmp_path / "missing").state == "unknown"
    for status in ("completed", "failed"):
        run = tmp_path / status
        run.mkdir()
        (run / "output.json").write_text(json.dumps({"status": status, "output": {"val_dice_per_epoch": [0.5]}}))
        state = jobs.poll_job(run)
        assert state.state == status and state.val_dice_per_epoch == [0.5] and state.pid is None
    died = tmp_path / "died"
    died.mkdir()
    (died / "run.json").write_text("{}")
    (died / "status.json").write_text(json.dumps({"state": "running", "pid": 2**22 + 1, "phase": "train"}))
    assert jobs.poll_job(died).state == "stale" and jobs.poll_job(died).phase == "train"
    assert jobs.cancel_job(died).state == "stale"  # nothing to stop


def test_list_runs_newest_first_and_the_cli(tmp_path, capsys):
    now = time.time()
    older, newest, middle = tmp_path / "older", tmp_path / "newest", tmp_path / "middle"
    for run in (older, newest):
        run.mkdir()
    (older / "run.json").write_text("{}")
    os.utime(older / "run.json", (now - 300, now - 300))
    (newest / "output.json").write_text(json.dumps({"status": "failed"}))
    os.utime(newest / "output.json", (now - 100, now - 100))
    files = JobFiles(middle)  # job files only: the job ran a command that wrote no run folder
    files.dir.mkdir()
    files.job_json.write_text(json.dumps({"supervisor_pid": 2**22 + 1, "started": now - 200}))
    files.exit_json.write_text(json.dumps({"return_code": 0, "cancelled": False}))
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "file.txt").write_text("")
    states = jobs.list_runs(tmp_path)
    assert [(s.run_dir.name, s.state) for s in states] == [
        ("newest", "failed"), ("middle", "completed"), ("older", "stale"),
    ]  # fmt: skip
    assert main(["jobs", "list", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["failed", "completed", "stale"] and lines[0].endswith("newest")
    assert main(["jobs", "status", str(middle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "completed"


def test_jobs_start_from_the_cli_with_another_engine_command(tmp_path, capsys):
    run_dir = tmp_path / "synthetic-job"
    assert main(["jobs", "start", str(run_dir), "--", "synthetic", "data", "--micro", "--cases", "1"]) == 0
    state = jobs.wait_job(run_dir, timeout=120, interval=0.2)
    assert state.state == "completed", state.log_tail
    assert (run_dir / "data" / "imagesTr").is_dir()  # relative positional paths are taken in the run folder
    assert any("Wrote 1 synthetic CT cases" in line for line in state.log_tail)
    with pytest.raises(SystemExit):
        main(["jobs", "status"])
    assert main(["jobs", "start", str(run_dir)]) == 2  # no engine command


def test_absolute_paths_and_output_dir(tmp_path):
    command = ["finetune", "--bundle-dir", "b", "--datalist=d.json", "--label-mapping", "[[1, 2]]", "x"]
    assert jobs.absolute_paths(command, tmp_path) == [
        "finetune", "--bundle-dir", str(tmp_path / "b"), f"--datalist={tmp_path / 'd.json'}",
        "--label-mapping", "[[1, 2]]", "x",
    ]  # fmt: skip
    run = tmp_path / "run"
    assert jobs._with_output_dir(["finetune", "--smoke"], run) == ["finetune", "--smoke", "--output-dir", str(run)]
    assert jobs._with_output_dir(["synthetic", "x"], run) == ["synthetic", "x"]
    with pytest.raises(UserError, match="not the job's run folder"):
        jobs.start_job(tmp_path / "a", ["finetune", "--smoke", "--output-dir", str(tmp_path / "b")])
    assert not (tmp_path / "a").exists()
