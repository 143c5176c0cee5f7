"""Benchmark: click-to-segment latency of the VISTA3D Segment Editor effect's logic, with the real warm worker.

    python bench/effect_click_latency.py [--model tiny|full|both] [--clicks 5] [--patch 128]
    python bench/effect_click_latency.py --bundle NV-Segment-CT --ct 512x512x300 [--patch 64] [--clicks 5]

With ``--bundle`` (a real bundle's configs, random full-size weights) and/or ``--ct`` (a body-sized synthetic CT at
0.8x0.8x1 mm), the click path is measured before issue 21 (whole-volume answers) and after (region answers), side by
side in one run, with the share of a later click spent outside the network.

Each click goes the effect's whole way: a display position in a real slice node -> voxel -> worker request (all the
points so far, with the liver class) -> output read back -> changed voxels written through Slicer's Segment Editor
logic (slicer-core). ``tiny`` is the tiny reference bundle; ``full`` is the full-size VISTA3D network (218M
parameters) with random weights made at run time in a temporary folder (never kept; see bench/bench_worker.py),
patch 128^3 by default (``--patch 64`` on a small CPU machine: one 128^3 encoder pass takes minutes there).
Printed side by side per model: the first click (worker start + model load + image upload included), then the
median and range of the following clicks, with the worker's own share (the rest is the image file, reading the
output, the diff and the segment writes). Needs scikit-image in the environment (the bundle's point
post-processing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import slicer
import vtk
from scipy import ndimage
from vtkmodules.util import numpy_support

from VistaFinetuneLib.bundle import tiny_bundle
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.data.geometry import ijk_to_ras
from VistaFinetuneLib.interactive.class_list import ModelClass
from VistaFinetuneLib.interactive.models import pretrained_choice
from VistaFinetuneLib.interactive.worker_client import WorkerClient
from VistaFinetuneLib.scene.nodes import array_to_matrix, matrix_to_array
from VistaFinetuneLib.scene.prompt_logic import PromptLogic
from VistaFinetuneLib.scene.prompt_points import click_to_prompt
from VistaFinetuneLib.scene.segment_update import apply_with_editor_logic
from VistaFinetuneLib.scene.volume_grid import volume_world_affine

LIVER = ModelClass(1, "liver", False, False)


def scene_with_ct(spec: synthetic.PhantomSpec, large: tuple[int, int, int] | None = None):
    if large:  # the body-sized CT bench/gpu_readiness.py makes, at 0.8x0.8x1 mm
        from gpu_readiness import synthetic_ct

        image, labels, affine = synthetic_ct(large, (0.8, 0.8, 1.0), labelled=3)
    else:
        image, labels, affine = synthetic.make_case(3, 0, spec)
    scene = slicer.vtkMRMLScene()
    slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)
    volume = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(volume)
    data = vtk.vtkImageData()
    data.SetDimensions(*image.shape)
    data.AllocateScalars(vtk.VTK_SHORT, 1)
    numpy_support.vtk_to_numpy(data.GetPointData().GetScalars())[:] = image.transpose(2, 1, 0).ravel()
    volume.SetAndObserveImageData(data)
    volume.SetIJKToRASMatrix(array_to_matrix(affine))
    segmentation = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(segmentation)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("liver", "Liver")
    editor_node = slicer.vtkMRMLSegmentEditorNode()
    scene.AddNode(editor_node)
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(scene)
    editor.SetSegmentEditorNode(editor_node)
    editor.SetSegmentationNode(segmentation)
    editor.SetSourceVolumeNode(volume)
    editor.SetCurrentSegmentID(segment_id)
    return scene, volume, segmentation, segment_id, editor, labels == 1


def slice_node_through(scene, ras: np.ndarray):
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    node = scene.CreateNodeByClass("vtkMRMLSliceNode")
    node.UnRegister(None)
    scene.AddNode(node)
    node.SetOrientation("Axial")
    node.SetDimensions(640, 480, 1)
    node.SetFieldOfView(250.0, 187.5, 1.0)
    node.JumpSliceByCentering(*ras)
    node.UpdateMatrices()
    xy = np.linalg.inv(matrix_to_array(node.GetXYToRAS())) @ np.append(ras, 1.0)
    return node, (float(xy[0]), float(xy[1]))


def measure(name: str, bundle: Path, clicks: int, spec, work: Path, large=None, regions: bool = True) -> dict:
    scene, volume, segmentation, segment_id, editor, liver = scene_with_ct(spec, large)
    client = WorkerClient(sys.executable, bundle, work / f"worker-{name}")
    logic = PromptLogic(client, pretrained_choice(name), click_regions=regions)
    depth = ndimage.distance_transform_edt(liver)
    order = np.argsort(depth.ravel())[::-1]
    voxels = [np.unravel_index(i, liver.shape) for i in order[: 40 * clicks : 40]]
    totals, workers, networks = [], [], []
    try:
        for voxel in voxels:
            centre = ijk_to_ras(volume_world_affine(volume), np.asarray(voxel, dtype=float))
            slice_node, xy = slice_node_through(scene, centre)
            started = time.monotonic()
            prompt = click_to_prompt(slice_node, xy, volume, True)
            ticket = logic.click(volume, segmentation, segment_id, prompt, LIVER)
            ticket.wait()
            outcome = logic.collect(lambda writes: apply_with_editor_logic(editor, segmentation, writes))
            if not outcome.ok:
                raise SystemExit(f"{name}: {outcome.message}")
            totals.append(time.monotonic() - started)
            workers.append(outcome.worker_seconds or 0.0)
            networks.append(outcome.network_seconds or 0.0)
            print(f"{name} click {len(totals)}: {totals[-1]:.2f} s (worker {workers[-1]:.2f} s)", flush=True)
    finally:
        client.close()
    return {"first": totals[0], "first_worker": workers[0], "rest": totals[1:], "rest_worker": workers[1:],
            "rest_network": networks[1:]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "full", "both"), default="tiny")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--patch", type=int, default=128, help="the full-size network's sliding window (voxels)")
    parser.add_argument("--bundle", type=Path, help="a real bundle's configs and scripts (random full-size weights)")
    parser.add_argument("--ct", help="a body-sized synthetic CT of this shape, e.g. 512x512x300 (0.8x0.8x1 mm)")
    args = parser.parse_args()
    spec = synthetic.PhantomSpec()
    results = {}
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory(prefix="vista3d-effect-bench-") as folder:
        work = Path(folder)
        if args.bundle or args.ct:  # the click path before issue 21 (whole volume) and after (regions), one run
            from bench_worker import real_bundle

            bundle = real_bundle(work, args.bundle, args.patch) if args.bundle else tiny_bundle.ensure_tiny_bundle()
            large = tuple(int(v) for v in args.ct.split("x")) if args.ct else None
            for regions in (False, True):
                label = "regions" if regions else "whole"
                results[label] = measure(label, bundle, args.clicks, spec, work, large, regions)
            report(results, f"{args.ct or spec.shape} CT, {args.bundle or 'tiny bundle'}")
            return
        if args.model in ("tiny", "both"):
            results["tiny"] = measure("tiny", tiny_bundle.ensure_tiny_bundle(), args.clicks, spec, work)
        if args.model in ("full", "both"):
            sys.path.insert(0, str(Path(__file__).parent))
            from bench_worker import full_size_bundle

            results["full"] = measure("full", full_size_bundle(work, args.patch), args.clicks, spec, work)
    report(results, f"image {spec.shape} voxels")


def report(results: dict, what: str) -> None:
    print(f"\n{what}; click-to-segment seconds (worker's own share in brackets)")
    print(f"{'model':<6} {'first click':>22} {'later clicks, median':>24} {'later clicks, range':>22}")
    for name, r in results.items():
        rest = r["rest"] or [float("nan")]
        rest_worker = r["rest_worker"] or [float("nan")]
        first = f"{r['first']:.2f} ({r['first_worker']:.2f})"
        median = f"{statistics.median(rest):.2f} ({statistics.median(rest_worker):.2f})"
        print(f"{name:<6} {first:>22} {median:>24} {f'{min(rest):.2f}-{max(rest):.2f}':>22}")
    for name, r in results.items():
        if r["rest"] and any(r["rest_network"]):
            outside = statistics.median(1 - n / t for n, t in zip(r["rest_network"], r["rest"], strict=True))
            print(f"{name}: share of a later click spent outside the network (median): {outside:.0%}")
    if "full" in results and "tiny" in results:
        ratio = statistics.median(results["full"]["rest"]) / statistics.median(results["tiny"]["rest"])
        print(f"full / tiny, later clicks: {ratio:.1f}x")


if __name__ == "__main__":
    main()
