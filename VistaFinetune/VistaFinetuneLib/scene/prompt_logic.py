"""The VISTA3D effect's logic, without Qt: clicks and class prompts -> worker requests -> segment writes.

The GUI calls :meth:`PromptLogic.click` or :meth:`PromptLogic.segment_classes` (they return at once), polls
:meth:`PromptLogic.collect` from a timer, and applies the writes ``collect`` hands it through the Segment Editor
(``apply({segment_id: writes})``: one ``saveStateForUndo``, then the writes), one undoable step per result.
Work on MRML nodes happens in these calls, on the GUI's thread; the worker thread only writes the image file,
talks to the worker and reads its output.

The voxel under each click always follows the click (in for a positive point, out for a negative one), whatever
the model answers there; every other voxel is the model's.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import vtk

from VistaFinetuneLib.bundle.labels import normalise
from VistaFinetuneLib.data.nifti import read_nifti, write_nifti
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.inference.point_region import place_region
from VistaFinetuneLib.interactive.class_list import ModelClass, point_rule
from VistaFinetuneLib.interactive.models import ModelChoice
from VistaFinetuneLib.interactive.point_session import PointPrompt, PointSession
from VistaFinetuneLib.interactive.worker_client import Ticket, WorkerClient, WorkerConnection
from VistaFinetuneLib.scene.segment_update import LabelmapWrite, changed_voxel_writes, segment_fingerprint
from VistaFinetuneLib.scene.volume_grid import volume_voxels, volume_world_affine

POINTS_ONLY_VALUE = 1  # the worker's value for a prediction from points without a class
CLASS_TAG = "VISTA3D.classId"  # segment tag: the class a segment was made from

Apply = Callable[[dict[str, list[LabelmapWrite]]], None]


@dataclass
class Pending:
    """A request on its way: what it was for, and where its answer goes."""

    ticket: Ticket
    volume_node: object
    segmentation_node: object
    targets: dict[int, str]  # output value -> segment id
    session: PointSession | None = None
    points: tuple[PointPrompt, ...] = ()
    note: str | None = None
    recolour: frozenset[str] = frozenset()  # new segments, to take their class's colour from the legend
    comparison: bool = False  # pretrained and finetuned outputs, for two new segmentation nodes


def add_class_segment(segmentation_node, model_class: ModelClass) -> str:
    """A new empty segment named after a class and tagged with its id; returns its id."""
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.AddEmptySegment("", model_class.name)
    segmentation.GetSegment(segment_id).SetTag(CLASS_TAG, str(model_class.id))
    return segment_id


def segment_class(segmentation_node, segment_id: str, classes: list[ModelClass]) -> ModelClass | None:
    """The class a segment stands for: the one it was made from (its tag), else the class its name names."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id) if segment_id else None
    if segment is None:
        return None
    tag = vtk.reference("")
    if segment.GetTag(CLASS_TAG, tag) and str(tag).isdigit():
        return next((c for c in classes if c.id == int(str(tag))), None)
    name = normalise(segment.GetName())
    return next((c for c in classes if normalise(c.name) == name), None)


def colour_segments(segmentation_node, targets: dict[int, str], labels: dict) -> None:
    """Give segments filled by class prompts the colour the worker's legend gives their class."""
    for value, segment_id in targets.items():
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        colour = (labels.get(str(value)) or {}).get("color")
        if segment is not None and isinstance(colour, list) and len(colour) == 3:
            scale = 255.0 if max(colour) > 1 else 1.0
            segment.SetColor(*(float(c) / scale for c in colour))


@dataclass(frozen=True)
class Outcome:
    """What one finished request did, for the status line."""

    ok: bool
    message: str
    seconds: float | None = None  # click to segment update, as the user waited
    worker_seconds: float | None = None  # the worker's own total
    voxels_changed: int = 0
    outputs: dict[str, str] | None = None  # a comparison's prediction files: {"pretrained": ..., "finetuned": ...}
    network_seconds: float | None = None  # the network's part of the worker's total (encoder and heads)


@dataclass
class PromptLogic:
    """State of the effect between clicks: the model, the sessions per segment, the request in flight."""

    client: WorkerClient
    model: ModelChoice
    sessions: dict[tuple, PointSession] = field(default_factory=dict)
    pending: Pending | None = None
    images: dict[str, tuple[str, Path]] = field(default_factory=dict)  # volume node id -> (fingerprint, file)
    routing: bool = True  # a run answers only the classes it improved (inference/routing.py); off: it answers all
    click_regions: bool = True  # ask for a click's windows' box only (False: the whole volume, as before issue 21)

    @property
    def busy(self) -> bool:
        return self.pending is not None

    def set_model(self, choice: ModelChoice) -> None:
        """Prompt another model from the next request on; the worker loads it on first use and keeps it."""
        self.model = choice

    # Requests (GUI thread)

    def click(
        self, volume_node, segmentation_node, segment_id: str, prompt: PointPrompt, model_class: ModelClass | None
    ) -> Ticket:
        """Send every point of the segment's session, plus this one, with the segment's class when allowed."""
        self._refuse_when_busy()
        note = point_rule(model_class)
        class_id = None if model_class is None or note else model_class.id
        key = (volume_node.GetID(), segment_id, self.model.key, class_id)
        session = self.sessions.setdefault(key, PointSession(key))
        session.sync(segment_fingerprint(segmentation_node, segment_id))
        points = (*session.points, prompt)
        request = {
            "points": [list(p.ijk) for p in points],
            "point_labels": [1 if p.positive else 0 for p in points],
            "points_space": "ijk",
        }
        if class_id is not None:
            request["classes"] = [class_id]
        value = POINTS_ONLY_VALUE if class_id is None else class_id
        ticket = self._predict(volume_node, request)
        self.pending = Pending(ticket, volume_node, segmentation_node, {value: segment_id}, session, points, note)
        return ticket

    def segment_classes(
        self, volume_node, segmentation_node, targets: dict[int, str], new_segments: frozenset[str] = frozenset()
    ) -> Ticket:
        """Segment the whole volume with class prompts; ``targets`` maps each class id to the segment to fill
        (``new_segments`` among them take their class's colour)."""
        self._refuse_when_busy()
        if not targets:
            raise UserError("choose at least one class to segment")
        ticket = self._predict(volume_node, {"classes": sorted(targets)})
        self.pending = Pending(ticket, volume_node, segmentation_node, dict(targets), recolour=frozenset(new_segments))
        return ticket

    def compare(self, volume_node, finetuned: ModelChoice, class_ids: list[int]) -> Ticket:
        """Class prompts on one volume with the pretrained model and a finetuned run, one after the other."""
        self._refuse_when_busy()
        if finetuned.is_pretrained or finetuned.run_dir is None:
            raise UserError("choose a finetuned run that improved on the pretrained model to compare with it")
        if not class_ids:
            raise UserError("choose at least one class to compare")
        image_path, write_image = self._image_file(volume_node)
        names = {str(k): v for k, v in finetuned.class_names.items()}
        requests = {
            model: {"op": "predict", "model": key, "image": str(image_path), "classes": sorted(class_ids),
                    "class_names": names, "routing": False}  # the comparison is of the checkpoints themselves
            for model, key in (("pretrained", "pretrained"), ("finetuned", finetuned.key))
        }  # fmt: skip

        def task(connection: WorkerConnection) -> dict:
            if write_image is not None:
                write_image()
            connection.ensure_model(finetuned.key, {"run": str(finetuned.run_dir)})
            return {model: connection.call(request) for model, request in requests.items()}

        ticket = self.client.submit(task)
        self.pending = Pending(ticket, volume_node, None, {}, comparison=True)
        return ticket

    def _refuse_when_busy(self) -> None:
        if self.pending is not None:
            raise UserError("VISTA3D is still working on the previous request; wait for it or cancel it")

    def _predict(self, volume_node, prompts: dict) -> Ticket:
        image_path, write_image = self._image_file(volume_node)
        model, load = self._model_request()
        request = {"op": "predict", "model": model, "image": str(image_path), "routing": self.routing, **prompts}
        if "points" in prompts and self.click_regions:  # a click's answer may cover its windows' box only
            request["region"] = True
        if self.model.class_names:
            request["class_names"] = {str(k): v for k, v in self.model.class_names.items()}
        shape = tuple(volume_node.GetImageData().GetDimensions())

        def task(connection: WorkerConnection) -> np.ndarray:
            if write_image is not None:
                write_image()
            if load is not None:
                connection.ensure_model(model, load)
            response = connection.call(request)
            labels = read_nifti(Path(response["output"]))[0]
            region = response.get("region")
            if region:
                labels = place_region(labels, region["start"], region["shape"])
            if labels.shape != shape:
                raise UserError(f"{response['output']}: the prediction has shape {labels.shape}, expected {shape}")
            return {"labels": labels, "response": response}

        return self.client.submit(task)

    def _model_request(self) -> tuple[str, dict | None]:
        if self.model.is_pretrained:
            return "pretrained", None
        return self.model.key, {"run": str(self.model.run_dir)}

    def _image_file(self, volume_node) -> tuple[Path, Callable[[], None] | None]:
        """The NIfTI the worker reads for this volume (world affine, parent transform included), and the writer to
        run first when the volume changed since it was last written."""
        affine = volume_world_affine(volume_node)
        image = volume_node.GetImageData()
        fingerprint = f"{image.GetMTime()}-{hashlib.blake2b(affine.tobytes(), digest_size=8).hexdigest()}"
        known = self.images.get(volume_node.GetID())
        if known is not None and known[0] == fingerprint and known[1].is_file():
            return known[1], None
        safe_id = "".join(c if c.isalnum() else "_" for c in volume_node.GetID())
        path = self.client.output_dir / "images" / f"{safe_id}-{image.GetMTime()}.nii"
        voxels = volume_voxels(volume_node)  # copied here: VTK data is read on the GUI thread only
        previous = known[1] if known is not None else None
        self.images[volume_node.GetID()] = (fingerprint, path)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".partial.nii")
            write_nifti(temporary, voxels, affine)
            temporary.replace(path)
            if previous is not None and previous != path:
                previous.unlink(missing_ok=True)

        return path, write

    # Results (GUI thread)

    def collect(self, apply: Apply) -> Outcome | None:
        """If the request in flight has finished, write its result through ``apply`` and say what happened."""
        pending = self.pending
        if pending is None or not pending.ticket.done:
            return None
        self.pending = None
        ticket = pending.ticket
        if ticket.error is not None:
            return Outcome(False, str(ticket.error), ticket.seconds)
        if pending.comparison:
            outputs = {model: response["output"] for model, response in ticket.result.items()}
            seconds = time.monotonic() - ticket.submitted
            worker_seconds = sum((r.get("timings") or {}).get("total_s") or 0.0 for r in ticket.result.values())
            return Outcome(True, f"pretrained and finetuned in {seconds:.2f} s", seconds, worker_seconds, 0, outputs)
        labels, response = ticket.result["labels"], ticket.result["response"]
        previous = pending.session.previous_prediction() if pending.session is not None else None
        predictions = {segment_id: labels == value for value, segment_id in pending.targets.items()}
        for prediction in predictions.values():
            for point in pending.points:  # the voxel under a click always follows the click
                prediction[point.ijk] = point.positive
        writes = {
            segment_id: changed_voxel_writes(previous, prediction, pending.volume_node, pending.segmentation_node)
            for segment_id, prediction in predictions.items()
        }
        if any(writes.values()):
            apply(writes)
        recolour = {value: segment for value, segment in pending.targets.items() if segment in pending.recolour}
        colour_segments(pending.segmentation_node, recolour, response.get("labels") or {})
        if pending.session is not None:
            ((segment_id, prediction),) = predictions.items()
            fingerprint = segment_fingerprint(pending.segmentation_node, segment_id)
            pending.session.record(pending.points, prediction, fingerprint)
        changed = sum(w.voxels for segment_writes in writes.values() for w in segment_writes)
        seconds = time.monotonic() - ticket.submitted
        timings = response.get("timings") or {}
        message = f"{changed} voxels changed in {seconds:.2f} s"
        if pending.note:
            message += ". " + pending.note
        worker_seconds, network_seconds = timings.get("total_s"), timings.get("network_s")
        return Outcome(True, message, seconds, worker_seconds, changed, network_seconds=network_seconds)

    def points_of(self, volume_node, segment_id: str, model_class: ModelClass | None) -> tuple[PointPrompt, ...]:
        """The clicks of a segment's session (for the markers)."""
        class_id = None if model_class is None or point_rule(model_class) else model_class.id
        session = self.sessions.get((volume_node.GetID(), segment_id, self.model.key, class_id))
        return session.points if session is not None else ()

    def forget_points(self) -> None:
        """Drop every session: the next click starts afresh from the segments as they are."""
        self.sessions.clear()
