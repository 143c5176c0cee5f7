"""The warm worker, ``vista-finetune serve``: models loaded once, answering prediction requests as JSON lines.

Protocol version 1 (stable; additions only add optional fields).

Start (in the job environment, the one with torch)::

    python -m VistaFinetuneLib serve [--bundle-dir B] [--run RUN_DIR | --checkpoint PT] [--no-pretrained]
        [--device cpu|cuda:N] [--output-dir DIR] [--socket] [--parent-pid PID] [--encoder-cache-mb MB]

It loads the bundle's pretrained weights as model ``"pretrained"`` (unless ``--no-pretrained``) and, with ``--run``
or ``--checkpoint``, a finetuned checkpoint as model ``"finetuned"``. Every line it writes on stdout is one JSON
object; logs and warnings go to stderr. Its first line is::

    {"event": "ready", "protocol": 1, "pid": 1234, "device": "cpu", "models": {"pretrained": {...}},
     "socket": null}            # with --socket: {"host": "127.0.0.1", "port": 40123, "token": "<hex>"}

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
  ``"use_point_window"`` (bool; default the bundle's ``use_point_window``).
  Response::

    {"id": ..., "op": "predict", "ok": true, "output": "/abs/out.nii.gz", "legend": "/abs/out.legend.json",
     "labels": {"1": {"name": "liver", "color": [r, g, b]}, ...},   # the values present in the output
     "timings": {"image_s": .., "inference_s": .., "postprocess_s": .., "write_s": .., "total_s": ..},
     "cache": {"image": "hit"|"miss", "encoder_windows_reused": n, "encoder_windows_computed": m}}

  The output is a label NIfTI on the input image's exact grid (shape and affine), values = VISTA3D class ids
  (a points-only prompt gives value 1), 0 = background (the bundle's "not processed" value 255 is written as 0);
  the legend JSON beside it holds value -> name and colour, the model, its checkpoint SHA-256, the prompts used
  and the seconds. Both files are written to temporary names and renamed: no reader sees half a file.
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
