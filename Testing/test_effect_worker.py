"""The VISTA3D effect's logic against the real warm worker on the tiny bundle (which knows the liver, class 1).

Clicks go through real slice nodes onto a synthetic CT on a rotated, anisotropic grid under a parent transform,
the worker (``vista-finetune serve``, a real process) answers, and the changes land in the segment through Slicer's
Segment Editor logic (slicer-core): positive and negative clicks, undo, model switching, class prompts, a restart
after the worker died.
"""

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from effect_scene import build_effect_scene, copy_run_with_names, xy_of
from job_python import job_python, job_python_has
from scipy import ndimage

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.data.geometry import ijk_to_ras
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.interactive.class_list import model_classes
from VistaFinetuneLib.interactive.models import ModelChoice, pretrained_choice
from VistaFinetuneLib.interactive.worker_client import WorkerClient
from VistaFinetuneLib.scene.prompt_logic import PromptLogic, add_class_segment, segment_class
from VistaFinetuneLib.scene.prompt_points import click_to_prompt
from VistaFinetuneLib.scene.segment_update import apply_with_editor_logic
from VistaFinetuneLib.scene.volume_grid import volume_world_affine

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not job_python_has("skimage"),
        reason="the bundle's point post-processing needs scikit-image (VistaFinetune/Resources/requirements.txt)",
    ),
]
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def worker(tiny_bundle_dir, tmp_path_factory):
    client = WorkerClient(job_python(), tiny_bundle_dir, tmp_path_factory.mktemp("worker"))
    yield client
    process = client.connection.process if client.connection else None
    client.close()
    assert process is None or process.poll() is not None, "the worker outlived close()"


@pytest.fixture(scope="module")
def ct():
    scene = build_effect_scene(seed=21)
    assert scene.segmentation.GetSegmentation().GetSegment(scene.segment_id).GetName() == "Liver"
    return scene


def deepest(mask: np.ndarray) -> tuple[int, int, int]:
    depth = ndimage.distance_transform_edt(mask)
    return tuple(int(v) for v in np.unravel_index(depth.argmax(), depth.shape))


def click(logic, scene, voxel, positive, model_class, orientation="Axial"):
    """Click at a voxel's centre in a slice view through it; wait for the worker; write the result."""
    centre = ijk_to_ras(volume_world_affine(scene.volume), np.asarray(voxel, dtype=float))
    slice_node = scene.slice_node(orientation, centre)
    prompt = click_to_prompt(slice_node, xy_of(slice_node, centre), scene.volume, positive)
    assert prompt.ijk == tuple(voxel)
    ticket = logic.click(scene.volume, scene.segmentation, scene.segment_id, prompt, model_class)
    points = logic.pending.points
    assert ticket.wait(TIMEOUT_S)
    outcome = logic.collect(lambda writes: apply_with_editor_logic(scene.editor, scene.segmentation, writes))
    assert outcome is not None and outcome.ok, outcome
    assert 0 < outcome.network_seconds < outcome.worker_seconds  # the status line's network share
    print(f"click ({'+' if positive else '-'}, {len(points)} points): {outcome.seconds:.2f} s "
          f"(worker {outcome.worker_seconds:.2f} s), {outcome.voxels_changed} voxels changed")  # fmt: skip
    return outcome, points


@pytest.fixture(scope="module")
def liver_class(tiny_bundle_dir, ct):
    classes = model_classes(LabelCatalog.from_bundle(tiny_bundle_dir), pretrained_choice("tiny"))
    found = segment_class(ct.segmentation, ct.segment_id, classes)  # the segment is named "Liver"
    assert found is not None and found.id == 1
    return found


def test_positive_then_negative_clicks_and_undo(worker, ct, liver_class):
    logic = PromptLogic(worker, pretrained_choice("tiny"))
    liver = ct.labels == 1
    inside = deepest(liver)
    click(logic, ct, inside, True, liver_class)
    after_positive = ct.segment_on_volume_grid()
    assert after_positive[inside], "the positive click's voxel is not in the segment"
    assert (after_positive & liver).sum() > 0.5 * liver.sum()
    assert worker.starts == 1

    # A negative click just outside the liver: preferably on a voxel the positive click wrongly took.
    ring = ndimage.binary_dilation(liver, iterations=2) & ~liver
    candidates = np.argwhere(ring & after_positive) if (ring & after_positive).any() else np.argwhere(ring)
    distances = np.linalg.norm(candidates - np.asarray(inside), axis=1)
    outside = tuple(int(v) for v in candidates[distances.argmin()])
    _, points = click(logic, ct, outside, False, liver_class, orientation="Coronal")
    assert [p.positive for p in points] == [True, False]
    after_negative = ct.segment_on_volume_grid()
    assert not after_negative[outside], "the negative click's voxel is in the segment"
    assert after_negative[inside]

    # The Segment Editor's undo takes the negative click back; the next click continues from the positive one.
    ct.editor.Undo()
    np.testing.assert_array_equal(ct.segment_on_volume_grid(), after_positive)
    second = deepest(liver & (np.indices(liver.shape)[2] != inside[2]))
    _, points = click(logic, ct, second, True, liver_class, orientation="Sagittal")
    assert [p.ijk for p in points] == [inside, second]
    assert worker.starts == 1, "the worker was restarted between clicks"


@pytest.fixture(scope="module")
def named_run(smoke_run_dir, tmp_path_factory):
    return copy_run_with_names(smoke_run_dir, tmp_path_factory.mktemp("runs"), "kidney-run", {"14": "My left kidney"})


def test_switching_models_loads_the_run_once_and_starts_new_point_sessions(worker, ct, liver_class, named_run):
    logic = PromptLogic(worker, pretrained_choice("tiny"))
    finetuned = ModelChoice("run:kidney-run", "kidney-run", run_dir=named_run, class_names={14: "My left kidney"})
    logic.set_model(finetuned)
    inside = deepest(ct.labels == 1)
    _, points = click(logic, ct, inside, True, liver_class)
    assert len(points) == 1  # a new model: a new session
    assert "run:kidney-run" in worker.connection.loaded
    logic.set_model(pretrained_choice("tiny"))
    logic.set_model(finetuned)
    _, points = click(logic, ct, inside, True, liver_class)
    assert len(points) == 2 and "run:kidney-run" in worker.connection.loaded


def test_class_prompt_fills_a_new_segment_named_and_coloured_from_the_class(worker, ct, liver_class):
    logic = PromptLogic(worker, pretrained_choice("tiny"))
    segment_id = add_class_segment(ct.segmentation, liver_class)
    segment = ct.segmentation.GetSegmentation().GetSegment(segment_id)
    segment.SetColor(0.0, 0.0, 0.0)
    ticket = logic.segment_classes(ct.volume, ct.segmentation, {1: segment_id}, frozenset([segment_id]))
    assert ticket.wait(TIMEOUT_S)
    outcome = logic.collect(lambda writes: apply_with_editor_logic(ct.editor, ct.segmentation, writes))
    assert outcome.ok, outcome
    found, liver = ct.segment_on_volume_grid(segment_id), ct.labels == 1
    assert segment.GetName() == "liver" and segment_class(ct.segmentation, segment_id, [liver_class]) == liver_class
    assert (found & liver).sum() > 0.5 * liver.sum()
    assert segment.GetColor() != (0.0, 0.0, 0.0)


def test_a_dead_worker_is_restarted_with_a_message(worker, ct, liver_class):
    logic = PromptLogic(worker, pretrained_choice("tiny"))
    process = worker.connection.process
    os.kill(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    click(logic, ct, deepest(ct.labels == 1), True, liver_class)
    assert worker.starts == 2
    assert "had stopped" in (worker.notice or "")
    assert worker.connection.process.pid != process.pid


def test_compare_fills_a_pretrained_and_a_finetuned_segmentation(worker, ct, named_run, tiny_bundle_dir):
    from VistaFinetuneLib.scene.predictions import ClassNaming, import_comparison

    logic = PromptLogic(worker, pretrained_choice("tiny"))
    finetuned = ModelChoice("run:kidney-run", "kidney-run", run_dir=named_run, class_names={14: "My left kidney"})
    ticket = logic.compare(ct.volume, finetuned, [1, 14])
    assert ticket.wait(TIMEOUT_S)
    outcome = logic.collect(lambda writes: pytest.fail("a comparison writes no segment"))
    assert outcome.ok and set(outcome.outputs) == {"pretrained", "finetuned"}, outcome
    naming = ClassNaming(LabelCatalog.from_bundle(tiny_bundle_dir), dict(finetuned.class_names))
    nodes = import_comparison({k: Path(v) for k, v in outcome.outputs.items()}, ct.volume, naming, "CT")
    assert sorted(n.GetName() for n in nodes.values()) == ["CT — VISTA3D finetuned", "CT — VISTA3D pretrained"]
    names = {nodes["pretrained"].GetSegmentation().GetNthSegment(i).GetName()
             for i in range(nodes["pretrained"].GetSegmentation().GetNumberOfSegments())}  # fmt: skip
    assert "liver" in names
    with pytest.raises(UserError, match="finetuned run"):
        logic.compare(ct.volume, pretrained_choice("tiny"), [1])
