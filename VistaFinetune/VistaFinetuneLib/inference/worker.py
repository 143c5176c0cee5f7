"""The warm worker, ``vista-finetune serve``: models loaded once, answering prediction requests as JSON lines.

Protocol version 1 (stable; additions only add optional fields).

Start (in the job environment, the one with torch)::

    python -m VistaFinetuneLib serve [--bundle-dir B] [--run RUN_DIR | --checkpoint PT] [--no-pretrained]
        [--device cpu|cuda:N] [--output-dir DIR] [--socket] [--parent-pid PID] [--encoder-cache-mb MB]
        [--no-point-window] [--modality CT_BODY|MRI_BODY|MRI_BRAIN]

It loads the bundle's pretrained weights as model ``"pretrained"`` (unless ``--no-pretrained``) and, with ``--run``
or ``--checkpoint``, a finetuned checkpoint as model ``"finetuned"``; with ``--no-pretrained`` alone it starts at once
with no model (send ``load`` requests). Every line it writes on stdout is one JSON object; logs and warnings go to
stderr. Its first line is::

    {"event": "ready", "protocol": 1, "pid": 1234, "device": "cpu", "output_dir": "/tmp/vistafinetune-x",
     "models": {"pretrained": {...model info}},
     "socket": null}            # with --socket: {"host": "127.0.0.1", "port": 40123, "token": "<hex>"}

or, when a model given at start cannot be loaded, ``{"event": "error", "ok": false, "error": {...}}`` (exit code 2).

Requests are JSON objects, one per line, on stdin (or on the socket). Each may carry an ``"id"`` (string or
number) that its response echoes; every response has ``"id"``, ``"op"`` and ``"ok"``. A failed request answers::

    {"id": 7, "op": "predict", "ok": false, "error": {"kind": KIND, "message": "one sentence for the user"}}

with KIND one of ``"bad_request"`` (malformed line, unknown op, wrong field types), ``"user_error"`` (missing or
corrupt image, unknown or ambiguous class, points outside the image, a model that is not loaded, a checkpoint
that does not fit the network, ...), ``"cancelled"`` or ``"internal"``. The worker keeps serving after any error.

Operations:

- ``{"op": "ping"}`` -> ``{"ok": true, "busy": <id of the running request or null>}``
- ``{"op": "status"}`` -> ``{"ok": true, "models": {name: model info}, "busy": ..., "cache": {...}}``
- ``{"op": "load", "model": NAME, "run": RUN_DIR}`` or ``{"op": "load", "model": NAME, "checkpoint": PT}``
  (optional ``"bundle_dir"``) -> ``{"ok": true, "model": NAME, "info": model info}``; replaces a model of that name.
  Model info: ``{"checkpoint": path, "sha256": hex, "bundle_dir": path, "class_ids": [finetuned ids],
  "seconds": load time}``.
- ``{"op": "unload", "model": NAME}`` -> ``{"ok": true}``
- ``{"op": "predict", "model": "pretrained"|"finetuned"|NAME, "image": PATH, ...}`` with the prompts
  (all optional, at least one of them):
    - ``"classes"``: list of class ids or names (``[1, "left kidney", "Tumor 1"]``);
    - ``"points"``: ``[[x, y, z], ...]`` and ``"point_labels"``: ``[1, 0, ...]`` (1 positive, 0 negative), same
      length; ``"points_space"``: ``"ras"`` (millimetres, Slicer's RAS; the default) or ``"ijk"`` (voxel indices of
      the image file);
    - ``"everything": true``: the bundle's everything list (plus a finetuned run's own classes);
  and the options ``"output"`` (the label file to write, ``.nii.gz``; default ``OUTPUT_DIR/<model>/<stem>.nii.gz``),
  ``"class_names"`` (``{"133": "Tumor 1"}``: names the user gave, used to resolve and in the legend),
  ``"use_point_window"`` (bool; default the bundle's ``use_point_window``), ``"routing"`` (bool, default true:
  a finetuned run answers only the classes it improved, the bundle's pretrained weights the others; see
  :mod:`VistaFinetuneLib.inference.routing`; each legend label says which model answered it), ``"region"`` (bool,
  default false: a click with the point window may then answer with the box of the grid its windows cover only).
  Response::

    {"id": ..., "op": "predict", "ok": true, "output": "/abs/out.nii.gz", "legend": "/abs/out.legend.json",
     "labels": {"1": {"name": "liver", "color": [r, g, b]}, ...},   # the values present in the output
     "timings": {"image_s": .., "inference_s": .., "postprocess_s": .., "write_s": .., "total_s": ..,
                 "network_s": .., "stages": {"read_resample": .., "encoder": .., "heads": .., "stitch": ..,
                                             "postprocess": .., "inversion": .., "write": ..}},
     "cache": {"image": "hit"|"miss", "encoder_windows_reused": n, "encoder_windows_computed": m,
               "encoder_windows_not_kept": k},
     "region": null}           # with "region": true on a click: {"start": [i, j, k], "shape": [X, Y, Z]}

  The output is a label NIfTI on the input image's exact grid (shape and affine), values = VISTA3D class ids
  (a points-only prompt gives value 1), 0 = background (the bundle's "not processed" value 255 is written as 0);
  the legend JSON beside it holds value -> name and colour, the model, its checkpoint SHA-256, the prompts used
  and the seconds. With a ``"region"`` answer the file holds that box only (its affine shifted to the box's first
  voxel; every voxel outside it is 0): the same labels as the whole-volume answer, voxel for voxel. Both files
  are written to temporary names and renamed: no reader sees half a file.
- ``{"op": "cancel", "target": ID}`` (``target`` omitted: whatever runs) -> ``{"ok": true, "cancelled": ID|null}``;
  the cancelled request then answers with ``"kind": "cancelled"`` and writes no output.
- ``{"op": "shutdown"}`` -> ``{"ok": true}``, then the worker exits (code 0).

``ping``, ``status``, ``cancel`` and ``shutdown`` are answered at once, even while a prediction runs; ``load``,
``unload`` and ``predict`` run one at a time in arrival order. Between requests on the same image with the same
model the worker keeps the preprocessed image and the image encoder's output per sliding window (a click costs the
point head, plus the encoder for a window it has not seen: with the bundle's point window, the window centred on
the new click).

With ``--socket`` the worker also listens on 127.0.0.1 only (an ephemeral port, given in the ready line). A
connection must first send ``{"op": "hello", "token": TOKEN}`` (answered ``{"op": "hello", "ok": true}``); any
other first line is answered with an error and the connection is closed. Responses go to the connection that sent
the request.

The worker exits on ``shutdown``, on end of stdin, on SIGTERM, and when its parent process (``--parent-pid``,
default the process that started it) ends.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from VistaFinetuneLib.data.mapping import parse_class_names
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.inference.models import ModelSpec, checkpoint_model, run_model
from VistaFinetuneLib.inference.outputs import image_stem
from VistaFinetuneLib.inference.predictor import Cancelled
from VistaFinetuneLib.inference.routing import lazy_pretrained
from VistaFinetuneLib.inference.segment import SegmentRequest
from VistaFinetuneLib.jobs.processes import alive, start_ticks

PROTOCOL = 1
IMMEDIATE_OPS = ("ping", "status", "cancel", "shutdown")
QUEUED_OPS = ("load", "unload", "predict")
PARENT_POLL_SECONDS = 0.5
Reply = Callable[[dict], None]


class BadRequest(Exception):
    """A request the protocol does not allow (answered with kind "bad_request")."""


def error_response(request_id, op, kind: str, message: str) -> dict:
    return {"id": request_id, "op": op, "ok": False, "error": {"kind": kind, "message": message}}


def field_of(request: dict, name: str, types: tuple, required: bool = False, default=None):
    """A request field of the given JSON types, or ``default``."""
    value = request.get(name, default)
    if value is None:
        if required:
            raise BadRequest(f"{request.get('op')}: the field {name!r} is required")
        return default
    if isinstance(value, bool) and bool not in types:
        raise BadRequest(f"{request.get('op')}: the field {name!r} has the wrong type (bool)")
    if not isinstance(value, types):
        raise BadRequest(f"{request.get('op')}: the field {name!r} has the wrong type ({type(value).__name__})")
    return value


@dataclass
class Job:
    """A queued request and where its answer goes."""

    request: dict
    reply: Reply


class Worker:
    """Loaded models, a queue of requests run one at a time, and the channels that feed it."""

    def __init__(self, output_dir: Path, build_predictor: Callable[[ModelSpec], object]):
        self.output_dir = output_dir
        self.build_predictor = build_predictor
        self.models: dict[str, object] = {}
        self.routing_models: dict[str, Callable[[], object]] = {}  # bundle folder -> its pretrained model (routing)
        self.jobs: list[Job] = []
        self.condition = threading.Condition()
        self.running: dict | None = None
        self.cancel_requested = False
        self.stopping = False

    # -- channels (any thread) -------------------------------------------------------------------------------
    def handle_line(self, line: str, reply: Reply) -> None:
        """Parse one request line; answer immediate ops at once, queue the others."""
        line = line.strip()
        if not line:
            return
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            reply(error_response(None, None, "bad_request", f"not a JSON object: {error.msg} at column {error.colno}"))
            return
        if not isinstance(request, dict):
            reply(error_response(None, None, "bad_request", "a request must be a JSON object"))
            return
        request_id, op = request.get("id"), request.get("op")
        if op in IMMEDIATE_OPS:
            reply(self.immediate(request))
        elif op in QUEUED_OPS:
            with self.condition:
                self.jobs.append(Job(request, reply))
                self.condition.notify_all()
        else:
            known = ", ".join(IMMEDIATE_OPS + QUEUED_OPS)
            reply(error_response(request_id, op, "bad_request", f"unknown op {op!r}; the ops are {known}"))

    def immediate(self, request: dict) -> dict:
        request_id, op = request.get("id"), request["op"]
        with self.condition:
            busy = None if self.running is None else self.running.get("id")
            if op == "ping":
                return {"id": request_id, "op": op, "ok": True, "busy": busy}
            if op == "status":
                return {"id": request_id, "op": op, "ok": True, "busy": busy, "queued": len(self.jobs)} | self.state()
            if op == "cancel":
                return {"id": request_id, "op": op, "ok": True, "cancelled": self.cancel(request.get("target"))}
            self.stop()
            return {"id": request_id, "op": op, "ok": True}

    def state(self) -> dict:
        return {
            "models": {name: predictor.info() for name, predictor in self.models.items()},
            "cache": {
                name: {"image": None if p.cached is None else p.cached.key[0], "encoder_bytes": p.encoder_cache.bytes}
                for name, p in self.models.items()
            },
        }

    def cancel(self, target) -> object:
        """Cancel the running request (or a queued one) with id ``target`` (None: the running one)."""
        if self.running is not None and (target is None or self.running.get("id") == target):
            self.cancel_requested = True
            return self.running.get("id")
        for job in list(self.jobs):
            if target is not None and job.request.get("id") == target:
                self.jobs.remove(job)
                job.reply(error_response(target, job.request.get("op"), "cancelled", "cancelled before it started"))
                return target
        return None

    def stop(self) -> None:
        """Stop serving: cancel what runs, drop what waits (called with the condition held or from a signal)."""
        self.stopping = True
        self.cancel_requested = self.running is not None
        self.condition.notify_all()

    # -- the serving loop (main thread) ----------------------------------------------------------------------
    def check_cancelled(self) -> None:
        if self.cancel_requested:
            raise Cancelled()

    def serve(self) -> None:
        """Run queued requests one at a time until stopped."""
        while True:
            with self.condition:
                while not self.jobs and not self.stopping:
                    self.condition.wait(timeout=PARENT_POLL_SECONDS)
                if self.stopping:
                    for job in self.jobs:
                        job.reply(error_response(job.request.get("id"), job.request.get("op"), "cancelled", "shutdown"))
                    self.jobs.clear()
                    return
                job = self.jobs.pop(0)
                self.running, self.cancel_requested = job.request, False
            response = self.run(job.request)
            with self.condition:
                self.running, self.cancel_requested = None, False
            job.reply(response)

    def run(self, request: dict) -> dict:
        request_id, op = request.get("id"), request["op"]
        try:
            handler = {"load": self.load, "unload": self.unload, "predict": self.predict}[op]
            return {"id": request_id, "op": op, "ok": True} | handler(request)
        except BadRequest as error:
            return error_response(request_id, op, "bad_request", str(error))
        except UserError as error:
            return error_response(request_id, op, "user_error", str(error))
        except Cancelled:
            return error_response(request_id, op, "cancelled", "cancelled; no output was written")
        except Exception as error:  # the worker keeps serving; the traceback goes to stderr
            traceback.print_exc(file=sys.stderr)
            return error_response(request_id, op, "internal", f"{type(error).__name__}: {error}")

    def load(self, request: dict) -> dict:
        name = field_of(request, "model", (str,), required=True)
        run = field_of(request, "run", (str,))
        checkpoint = field_of(request, "checkpoint", (str,))
        bundle = field_of(request, "bundle_dir", (str,))
        if (run is None) == (checkpoint is None):
            raise BadRequest("load: give exactly one of 'run' and 'checkpoint'")
        if checkpoint is not None and bundle is None:
            some = next(iter(self.models.values()), None)
            if some is None:
                raise BadRequest("load: a checkpoint needs 'bundle_dir' when no model is loaded yet")
            bundle = str(some.model.bundle_dir)
        if run is not None:
            spec = run_model(Path(run), Path(bundle) if bundle else None, name)
        else:
            spec = checkpoint_model(Path(bundle), Path(checkpoint), name)
        predictor = self.build_predictor(spec)  # a model of that name is replaced only once the new one loaded
        self.models[name] = predictor
        return {"model": name, "info": predictor.info()}

    def unload(self, request: dict) -> dict:
        name = field_of(request, "model", (str,), required=True)
        if self.models.pop(name, None) is None:
            raise UserError(f"model {name!r} is not loaded")
        return {"model": name}

    def predict(self, request: dict) -> dict:
        from VistaFinetuneLib.inference.segment import segment

        name = field_of(request, "model", (str,), default="pretrained")
        if name not in self.models:
            loaded = ", ".join(self.models) or "none"
            raise UserError(f"model {name!r} is not loaded (loaded: {loaded}); load it first with the 'load' op")
        image = Path(field_of(request, "image", (str,), required=True))
        output = field_of(request, "output", (str,))
        classes = field_of(request, "classes", (list,))
        if classes is not None and not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes):
            raise BadRequest("predict: 'classes' must be a list of class ids and names")
        segment_request = SegmentRequest(
            image=image,
            output=Path(output) if output else self.output_dir / name / f"{image_stem(image)}.nii.gz",
            classes=classes,
            points=field_of(request, "points", (list,)),
            point_labels=field_of(request, "point_labels", (list,)),
            points_space=field_of(request, "points_space", (str,), default="ras"),
            everything=field_of(request, "everything", (bool,), default=False),
            class_names=parse_class_names(field_of(request, "class_names", (dict,)), "predict: class_names"),
            use_point_window=field_of(request, "use_point_window", (bool,)),
            routing=field_of(request, "routing", (bool,), default=True),
            region=field_of(request, "region", (bool,), default=False),
        )
        return segment(self.models[name], segment_request, self.check_cancelled, self.pretrained_for(name))

    def pretrained_for(self, name: str):
        """Class routing's pretrained model for model ``name``: the loaded "pretrained" one when it is of the same
        bundle, else one built on first use and kept."""
        model = self.models[name].model
        if model.run_dir is None:
            return None
        loaded = self.models.get("pretrained")
        if loaded is not None and loaded.model.run_dir is None and loaded.model.bundle_dir == model.bundle_dir:
            return lambda: loaded
        key = str(model.bundle_dir)
        if key not in self.routing_models:
            self.routing_models[key] = lazy_pretrained(model, self.build_predictor)
        return self.routing_models[key]


class LineWriter:
    """Writes response lines to one stream, one whole line at a time."""

    def __init__(self, write: Callable[[bytes], None]):
        self.write = write
        self.lock = threading.Lock()

    def __call__(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self.lock:
            try:
                self.write(data)
            except OSError:
                pass  # the reader went away; the worker keeps serving the others


def protocol_stdout() -> LineWriter:
    """The protocol channel on the original stdout; anything else printed to fd 1 goes to stderr."""
    stream = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return LineWriter(stream.write)


def read_stdin(worker: Worker, reply: Reply) -> None:
    for raw in sys.stdin.buffer:
        worker.handle_line(raw.decode("utf-8", errors="replace"), reply)
    with worker.condition:
        worker.stop()  # end of stdin: the parent closed its end


def serve_socket(worker: Worker, server: socket.socket, token: str) -> None:
    while True:
        connection, _ = server.accept()
        threading.Thread(target=serve_connection, args=(worker, connection, token), daemon=True).start()


def serve_connection(worker: Worker, connection: socket.socket, token: str) -> None:
    reply = LineWriter(connection.sendall)
    with connection, connection.makefile("rb") as lines:
        first = lines.readline().decode("utf-8", errors="replace")
        try:
            hello = json.loads(first)
        except json.JSONDecodeError:
            hello = None
        if not (isinstance(hello, dict) and hello.get("op") == "hello" and secrets.compare_digest(
            str(hello.get("token", "")), token
        )):  # fmt: skip
            reply(error_response(None, "hello", "bad_request", 'first send {"op": "hello", "token": TOKEN}'))
            return
        reply({"id": hello.get("id"), "op": "hello", "ok": True})
        for raw in lines:
            worker.handle_line(raw.decode("utf-8", errors="replace"), reply)


def watch_parent(worker: Worker, parent_pid: int) -> None:
    """Stop the worker when the parent process ends (or this process is handed to another parent)."""
    started = start_ticks(parent_pid)
    while True:
        time.sleep(PARENT_POLL_SECONDS)
        if not alive(parent_pid, started=started) or (os.name == "posix" and os.getppid() != parent_pid):
            print(f"vista-finetune serve: parent process {parent_pid} ended; stopping", file=sys.stderr)
            with worker.condition:
                worker.stop()
            return


def start_worker(
    models: list[ModelSpec],
    output_dir: Path,
    build_predictor: Callable[[ModelSpec], object],
    use_socket: bool = False,
    parent_pid: int | None = None,
) -> int:
    """Load the models, announce readiness, and serve stdin (and the socket) until told to stop; then exit the
    process (code 0). Returns only when a model cannot be loaded (code 2, after an error line)."""
    reply = protocol_stdout()
    worker = Worker(output_dir, build_predictor)
    try:
        for spec in models:
            worker.models[spec.name] = build_predictor(spec)
    except UserError as error:
        reply({"event": "error", "ok": False, "error": {"kind": "user_error", "message": str(error)}})
        return 2
    socket_info = None
    if use_socket:
        server = socket.create_server(("127.0.0.1", 0))
        token = secrets.token_hex(16)
        socket_info = {"host": "127.0.0.1", "port": server.getsockname()[1], "token": token}
        threading.Thread(target=serve_socket, args=(worker, server, token), daemon=True).start()
    parent = parent_pid or os.getppid()
    threading.Thread(target=watch_parent, args=(worker, parent), daemon=True).start()

    def on_signal(signum, frame) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    devices = sorted({p.device for p in worker.models.values()})
    reply(
        {
            "event": "ready",
            "protocol": PROTOCOL,
            "pid": os.getpid(),
            "device": devices[0] if len(devices) == 1 else (devices or None),
            "output_dir": str(output_dir),
            "models": {name: p.info() for name, p in worker.models.items()},
            "socket": socket_info,
        }
    )
    threading.Thread(target=read_stdin, args=(worker, reply), daemon=True).start()
    worker.serve()
    sys.stderr.flush()
    # The reader threads are blocked in reads; the interpreter's shutdown would abort on them, so end here.
    os._exit(0)
