"""``vista-finetune serve``, the warm worker, as a real subprocess speaking JSON lines: several requests on one image,
switching models, bad requests answered while it keeps serving, cancel, the socket's token, and parent death."""

import importlib.util
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import NEW_CLASS_ID, NEW_CLASS_NAME
from scipy import ndimage

from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.data.geometry import ijk_to_ras
from VistaFinetuneLib.inference.stage_timer import STAGES
from VistaFinetuneLib.jobs.processes import alive
from VistaFinetuneLib.resources import ENGINE_ROOT

SPEC = synthetic.PhantomSpec(shape=(48, 48, 32), spacing_mm=(2.5, 2.5, 3.5), label_values={"liver": 1})
START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 120.0


def worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "VistaFinetuneLib", "serve", *map(str, args)]


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ENGINE_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class WorkerProcess:
    """A ``serve`` subprocess and its stdout read line by line in a thread."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen(
            worker_command(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=worker_env(),
        )  # fmt: skip
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.next_line(START_TIMEOUT_S)
        self.pending: dict = {}

    def _read(self) -> None:
        for raw in self.process.stdout:
            self.lines.put(json.loads(raw))  # every stdout line must be JSON

    def next_line(self, timeout: float) -> dict:
        return self.lines.get(timeout=timeout)

    def send(self, message: dict | str) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        self.process.stdin.write((text + "\n").encode())
        self.process.stdin.flush()

    def answer(self, request_id, timeout: float = REQUEST_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while request_id not in self.pending:
            line = self.next_line(max(deadline - time.monotonic(), 0.01))
            self.pending[line.get("id")] = line
        return self.pending.pop(request_id)

    def ask(self, message: dict, timeout: float = REQUEST_TIMEOUT_S) -> dict:
        self.send(message)
        return self.answer(message["id"], timeout)

    def close(self) -> int:
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("worker-phantoms")
    synthetic.write_dataset(root, 2, seed=505, spec=SPEC)
    return root, np.asarray(nib.load(root / "labelsTr" / "case_000.nii.gz").dataobj) == 1


@pytest.fixture(scope="module")
def worker(tiny_bundle_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("worker-out")
    process = WorkerProcess("--bundle-dir", tiny_bundle_dir, "--output-dir", out, "--socket")
    yield process
    process.close()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def labels_of(response: dict) -> np.ndarray:
    return np.asarray(nib.load(response["output"]).dataobj)


def test_ready_line_names_the_models_and_the_socket(worker, tiny_bundle_dir):
    ready = worker.ready
    assert ready["event"] == "ready" and ready["protocol"] == 1
    assert ready["models"]["pretrained"]["checkpoint"] == str(tiny_bundle_dir / "models" / "model.pt")
    assert ready["socket"]["host"] == "127.0.0.1" and len(ready["socket"]["token"]) >= 32


def test_a_class_prompt_then_clicks_on_the_same_image_reuse_the_image_and_encoder(worker, phantom, tmp_path):
    root, truth = phantom
    image = str(root / "imagesTr" / "case_000.nii.gz")
    first = worker.ask({"id": "class", "op": "predict", "image": image, "classes": ["liver"]})
    assert first["ok"], first
    assert first["cache"]["image"] == "miss" and dice(labels_of(first) == 1, truth) > 0.5
    stages = first["timings"]["stages"]
    assert list(stages) == list(STAGES) and stages["read_resample"] > 0 and stages["encoder"] > 0
    assert first["timings"]["network_s"] == pytest.approx(stages["encoder"] + stages["heads"], abs=2e-4)
    assert sum(stages.values()) <= first["timings"]["total_s"]
    assert json.loads(Path(first["legend"]).read_text())["seconds"]["stages"]["encoder"] == stages["encoder"]
    affine = nib.load(image).affine
    depth = ndimage.distance_transform_edt(truth)
    inside = np.array(np.unravel_index(int(np.argmax(depth)), truth.shape))
    clicks = [ijk_to_ras(affine, inside).tolist()]
    if importlib.util.find_spec("skimage") is None:  # an environment without the bundle's scikit-image
        refused = worker.ask({"id": "click-0", "op": "predict", "image": image, "points": clicks, "point_labels": [1]})
        assert refused["error"]["kind"] == "user_error" and "need scikit-image" in refused["error"]["message"]
        return
    for request_id in ("click-1", "click-2"):
        response = worker.ask(
            {"id": request_id, "op": "predict", "image": image, "classes": [1], "points": clicks,
             "point_labels": [1] * len(clicks), "output": str(tmp_path / f"{request_id}.nii.gz")}
        )  # fmt: skip
        assert response["ok"], response
        cache = response["cache"]
        assert cache["image"] == "hit" and cache["encoder_windows_computed"] <= 1  # at most the new click's window
        assert labels_of(response)[tuple(inside)] == 1
        clicks.append(ijk_to_ras(affine, inside + [2, 0, 0]).tolist())
    assert cache["encoder_windows_reused"] >= 1  # the first click's window
    assert response["timings"]["stages"]["read_resample"] < stages["read_resample"]  # the image was kept
    legend = json.loads(Path(response["legend"]).read_text())
    assert legend["prompts"]["point_labels"] == [1, 1] and legend["prompts"]["classes"] == [1]


def test_switching_models_and_back_gives_the_same_answer(worker, new_id_run, phantom, tmp_path):
    root, truth = phantom
    image = str(root / "imagesTr" / "case_000.nii.gz")
    ask = {"op": "predict", "image": image, "classes": ["liver"]}
    before = worker.ask({"id": "before", **ask, "output": str(tmp_path / "before.nii.gz")})
    missing = worker.ask({"id": "missing", **ask, "model": "finetuned"})
    assert missing["error"]["kind"] == "user_error" and "'finetuned' is not loaded" in missing["error"]["message"]
    loaded = worker.ask({"id": "load", "op": "load", "model": "finetuned", "run": str(new_id_run)})
    assert loaded["ok"] and loaded["info"]["class_ids"] == [NEW_CLASS_ID], loaded
    tuned = worker.ask(
        {"id": "tuned", "op": "predict", "model": "finetuned", "image": image, "classes": [NEW_CLASS_NAME]}
    )
    assert tuned["ok"] and tuned["labels"][str(NEW_CLASS_ID)]["name"] == NEW_CLASS_NAME, tuned
    after = worker.ask({"id": "after", **ask, "output": str(tmp_path / "after.nii.gz")})
    assert np.array_equal(labels_of(before), labels_of(after))
    assert np.array_equal(labels_of(tuned) == NEW_CLASS_ID, labels_of(after) == 1)  # same weights, new id


def test_bad_requests_get_an_error_object_and_the_worker_keeps_serving(worker, phantom, tmp_path):
    root, _ = phantom
    image = str(root / "imagesTr" / "case_000.nii.gz")
    worker.send("{this is not json")
    assert worker.answer(None)["error"]["kind"] == "bad_request"
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    bad_checkpoint = tmp_path / "bad.pt"
    import torch

    torch.save(
        {"class_head.class_embeddings.weight": torch.zeros(3, 3), "extra.weight": torch.zeros(1)}, bad_checkpoint
    )
    cases = {
        "op": ({"op": "paint"}, "bad_request", "unknown op 'paint'"),
        "type": ({"op": "predict", "image": 7}, "bad_request", "'image' has the wrong type"),
        "missing": ({"op": "predict", "image": str(tmp_path / "none.nii.gz"), "classes": [1]}, "user_error",
                    "the image file does not exist"),
        "corrupt": ({"op": "predict", "image": str(corrupt), "classes": [1]}, "user_error", "cannot read the image"),
        "unknown class": ({"op": "predict", "image": image, "classes": ["spleeen"]}, "user_error",
                          "did you mean 3: spleen"),
        "outside": ({"op": "predict", "image": image, "classes": [1], "points": [[0, 0, 5000]], "point_labels": [1]},
                    "user_error", "outside the image"),
        "lengths": ({"op": "predict", "image": image, "points": [[0, 0, 0]], "point_labels": [1, 0]}, "user_error",
                    r"1 point(s) but 2 point label(s)"),
        "checkpoint": ({"op": "load", "model": "broken", "checkpoint": str(bad_checkpoint)}, "user_error",
                       "does not fit the network"),
    }  # fmt: skip
    for request_id, (request, kind, message) in cases.items():
        response = worker.ask({"id": request_id, **request})
        assert not response["ok"] and response["error"]["kind"] == kind, response
        assert message in response["error"]["message"], response
    assert "shape mismatches (class_head.class_embeddings.weight: checkpoint (3, 3)" in response["error"]["message"]
    assert "unexpected keys (extra.weight)" in response["error"]["message"]
    assert worker.ask({"id": "still", "op": "ping"})["ok"]


def test_cancel_stops_a_running_request_and_writes_nothing(worker, phantom, tmp_path):
    root, _ = phantom
    output = tmp_path / "cancelled.nii.gz"
    worker.send(
        {"id": "long", "op": "predict", "image": str(root / "imagesTr" / "case_000.nii.gz"), "everything": True,
         "use_point_window": False, "output": str(output)}
    )  # fmt: skip
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while worker.ask({"id": "poll", "op": "ping"})["busy"] != "long" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.ask({"id": "cancel", "op": "cancel", "target": "long"})["cancelled"] == "long"
    assert worker.answer("long")["error"]["kind"] == "cancelled"
    assert not output.exists() and list(tmp_path.iterdir()) == []
    again = worker.ask(
        {"id": "after-cancel", "op": "predict", "image": str(root / "imagesTr" / "case_000.nii.gz"), "classes": [1],
         "output": str(output)}
    )  # fmt: skip
    assert again["ok"] and output.exists(), again  # the evaluator runs again after a cancelled run


def test_the_socket_needs_the_token(worker):
    address = (worker.ready["socket"]["host"], worker.ready["socket"]["port"])
    with socket.create_connection(address, timeout=30) as wrong, wrong.makefile("rb") as answers:
        wrong.sendall(b'{"op": "hello", "token": "guess"}\n{"id": 1, "op": "ping"}\n')
        assert json.loads(answers.readline())["ok"] is False
        assert answers.readline() == b""  # closed without answering the ping
    with socket.create_connection(address, timeout=30) as right, right.makefile("rb") as answers:
        right.sendall(json.dumps({"op": "hello", "token": worker.ready["socket"]["token"]}).encode() + b"\n")
        assert json.loads(answers.readline())["ok"]
        right.sendall(b'{"id": "s", "op": "ping"}\n')
        assert json.loads(answers.readline()) == {"id": "s", "op": "ping", "ok": True, "busy": None}


def test_shutdown_ends_the_worker(worker):  # the module's last use of the worker
    assert worker.ask({"id": "bye", "op": "shutdown"})["ok"]
    assert worker.process.wait(timeout=60) == 0


PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    stdin = int(sys.argv[1])  # a pipe the test holds open: the parent's death does not end the worker's stdin
    worker = subprocess.Popen(sys.argv[2:], stdin=stdin, stdout=subprocess.PIPE, pass_fds=(stdin,))
    print(worker.pid, flush=True)
    worker.stdout.readline()  # ready
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_the_worker_exits_when_its_parent_dies(tmp_path):
    read_end, write_end = os.pipe()
    command = worker_command("--no-pretrained", "--output-dir", tmp_path)  # no model: quick to start
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(read_end), *command], stdout=subprocess.PIPE, text=True, env=worker_env(),
        pass_fds=(read_end,),
    )  # fmt: skip
    os.close(read_end)
    worker_pid = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "ready"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(worker_pid)
    finally:
        os.close(write_end)
        if alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)
