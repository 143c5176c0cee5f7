"""One prediction from request to files: resolve the prompts for the model, run it, write the labels and legend.

Shared by ``vista-finetune predict`` and the warm worker, so both answer the same request the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from VistaFinetuneLib import __version__
from VistaFinetuneLib.data.geometry import ijk_to_ras
from VistaFinetuneLib.inference import routing
from VistaFinetuneLib.inference.outputs import check_output_path, label_entries, legend_path, write_labels
from VistaFinetuneLib.inference.prompts import POINTS_ONLY_VALUE, build_prompts
from VistaFinetuneLib.run_files import write_json_atomic


@dataclass
class SegmentRequest:
    """What to segment on which image, and where the label file goes."""

    image: Path
    output: Path
    classes: list[str | int] | None = None
    points: object = None
    point_labels: object = None
    points_space: str = "ras"
    everything: bool = False
    class_names: dict[int, str] = field(default_factory=dict)
    use_point_window: bool | None = None
    routing: bool = True  # a run answers only the classes it improved; the pretrained weights the others
    region: bool = False  # a point-window click may answer with the box its windows cover only


def segment(
    predictor, request: SegmentRequest, check: Callable[[], None] = lambda: None, pretrained: Callable | None = None
) -> dict:
    """Run ``request`` on a :class:`~VistaFinetuneLib.inference.predictor.Predictor`; return the response fields.

    ``pretrained`` gives the bundle's pretrained predictor for class routing (:mod:`routing`)."""
    started = time.monotonic()
    image = Path(request.image).absolute()
    output = check_output_path(request.output)
    table = predictor.model.class_table(request.class_names)
    grid = predictor.grid(image)
    everything_ids = predictor.everything_ids_for(image) if request.everything else predictor.everything_ids
    prompts = build_prompts(
        table, grid, image,
        classes=request.classes, points=request.points, point_labels=request.point_labels,
        points_space=request.points_space, everything=request.everything, everything_ids=everything_ids,
        expand_subclasses=predictor.expands_subclasses,
    )  # fmt: skip
    route = routing.routing_of(predictor.model) if request.routing and pretrained is not None else None
    prediction, answered = routing.routed_predict(
        predictor, pretrained, route, image, prompts, request.use_point_window, check, request.region
    )
    check()

    def name(value: int) -> str:
        return "point selection" if prompts.class_ids is None and value == POINTS_ONLY_VALUE else table.name(value)

    labels = label_entries(prediction.labels, prompts.class_ids or ([] if prompts.points_ijk is None else [1]), name)
    for value, entry in labels.items():
        entry["answered_by"] = answered.get(int(value), predictor.model.name)
    point_window = predictor.default_point_window if request.use_point_window is None else request.use_point_window
    write_started = time.monotonic()
    legend = {
        "image": str(image),
        "labels_file": str(output),
        "labels": {"0": {"name": "background", "color": [0, 0, 0]}} | labels,
        "model": predictor.model.name,
        "weights": predictor.model.weights,
        "checkpoint": str(predictor.model.checkpoint),
        "checkpoint_sha256": predictor.checkpoint_sha256,
        "bundle_dir": str(predictor.model.bundle_dir),
        "run_dir": None if predictor.model.run_dir is None else str(predictor.model.run_dir),
        "routing": routing.legend_section(predictor, pretrained, route, answered),
        "prompts": prompts.to_json()
        | {
            "classes_given": request.classes,
            "points_space": request.points_space,
            "points_ras": None if prompts.points_ijk is None else ijk_to_ras(grid.affine, prompts.points_ijk).tolist(),
            "use_point_window": point_window,
        },
        "unprocessed_voxels": prediction.unprocessed_voxels,
        "cache": prediction.cache,
        "producer": {"name": "VistaFinetune", "version": __version__},
    }
    start = prediction.region_start
    region = None if start is None else {"start": list(start), "shape": list(grid.shape)}
    legend["region"] = region
    write_labels(image, prediction.labels, output, start)
    timings = dict(prediction.timings)
    timings["stages"] = dict(timings["stages"], write=round(time.monotonic() - write_started, 4))
    timings["network_s"] = round(timings["stages"]["encoder"] + timings["stages"]["heads"], 4)
    timings["total_s"] = round(time.monotonic() - started, 4)
    legend["seconds"] = timings
    legend_file = legend_path(output)
    write_json_atomic(legend_file, legend)
    timings["write_s"] = round(time.monotonic() - write_started, 4)
    timings["total_s"] = round(time.monotonic() - started, 4)
    return {
        "output": str(output),
        "legend": str(legend_file),
        "labels": labels,
        "timings": timings,
        "cache": prediction.cache,
        "region": region,
    }
