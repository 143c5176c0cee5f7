"""From the scene to a tiny finetune and back: export, the real bundle pipeline on the export, both predictions
imported, the review table filled, and the comparison rendered by Slicer's own displayable managers."""

import json
import os
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scene_helpers import add_segmentation, add_volume, new_scene, organ_segments, phantom
from scipy import ndimage

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.data.geometry import ijk_to_ras
from VistaFinetuneLib.scene import nodes
from VistaFinetuneLib.scene.export import ExportCase, TrainingSet, export_training_set, segment_mask
from VistaFinetuneLib.scene.mapping import collect_segments, suggest_mapping
from VistaFinetuneLib.scene.predictions import ClassNaming, class_segment_ids, import_comparison, import_prediction
from VistaFinetuneLib.scene.review_tables import review_tables
from VistaFinetuneLib.scene.terminology import class_color

pytestmark = pytest.mark.e2e

USER_NAMES = [
    {"liver": "Liver", "spleen": "Spleen", "left kidney": "kidney_left"},
    {"liver": "liver", "spleen": "Spleen", "left kidney": "Left Kidney"},
    {"liver": "Liver", "spleen": "spleen", "left kidney": "kidney_left"},
]
VALIDATION_CASE = "CT_3"


@dataclass(frozen=True)
class SceneRun:
    catalog: LabelCatalog
    naming: ClassNaming
    training_set: TrainingSet
    run_dir: Path
    exit_code: int


@pytest.fixture(scope="session")
def scene_run(tiny_bundle_dir, tmp_path_factory) -> SceneRun:
    """Three phantoms in a scene, exported and finetuned with the tiny bundle (--smoke: 2 epochs, micro images)."""
    from VistaFinetuneLib.cli import main

    scene = new_scene()
    cases = []
    for index, names in enumerate(USER_NAMES):
        image, label, affine = phantom(index, seed=21)
        volume = add_volume(scene, f"CT {index + 1}", image, affine)
        segments = organ_segments(label, affine, names)
        segmentation = add_segmentation(scene, f"Segmentation {index + 1}", volume, segments)
        cases.append(ExportCase(volume, segmentation, validation=index == 2))
    catalog = LabelCatalog.from_bundle(tiny_bundle_dir)
    segments = collect_segments([c.segmentation for c in cases])
    choices = suggest_mapping(segments, catalog)
    root = tmp_path_factory.mktemp("scene_run")
    training_set = export_training_set(cases, choices, catalog, root / "dataset")
    run_dir = root / "run"
    code = main(["finetune", *training_set.finetune_arguments(), "--smoke", "--formal-eval", "--learning-rate",
                 "0.002", "--bundle-dir", str(tiny_bundle_dir), "--output-dir", str(run_dir)])  # fmt: skip
    return SceneRun(catalog, ClassNaming.from_mapping(catalog, choices, segments), training_set, run_dir, code)


def predictions_of(run_dir: Path, case: str) -> dict[str, Path]:
    return {m: run_dir / f"eval_{m}" / case / f"{case}_trans.nii.gz" for m in ("pretrained", "finetuned")}


def load_case(scene, run: SceneRun):
    """The validation CT (read back from the export) and both predictions, imported into ``scene``."""
    case = next(c for c in run.training_set.cases if c.name == VALIDATION_CASE)
    volume = nodes.read_volume(scene, case.image, VALIDATION_CASE)
    return case, volume, import_comparison(predictions_of(run.run_dir, case.name), volume, run.naming, case.name)


def test_the_export_trains_and_both_predictions_come_back(scene_run):
    assert scene_run.exit_code == 0
    output = json.loads((scene_run.run_dir / "output.json").read_text())
    assert output["input"]["label_mappings"]["default"] == [[1, 1], [3, 3], [14, 14]]
    case, volume, imported = load_case(new_scene(), scene_run)
    np.testing.assert_allclose(nodes.ijk_to_ras(volume), nib.load(case.label).affine, atol=1e-4)
    for model, node in imported.items():
        prediction = nib.load(predictions_of(scene_run.run_dir, case.name)[model])
        np.testing.assert_allclose(prediction.affine, nodes.ijk_to_ras(volume), atol=1e-4)
        values = np.rint(np.asarray(prediction.dataobj)).astype(int).squeeze()
        ids = class_segment_ids(node)
        assert sorted(ids) == sorted(set(np.unique(values)) - {0, 255})
        for class_id, segment_id in ids.items():
            np.testing.assert_array_equal(segment_mask(node, segment_id, volume), values == class_id)
            expected = {1: "Liver", 3: "Spleen", 14: "kidney_left"}.get(class_id)
            assert expected is None or node.GetSegmentation().GetSegment(segment_id).GetName() == expected


def test_the_review_fills_the_table_node(scene_run):
    metrics_json = scene_run.run_dir / "review" / "metrics.json"
    document = json.loads(metrics_json.read_text())
    tables = review_tables(new_scene(), metrics_json, {1: "liver", 3: "spleen", 14: "left kidney"})
    table = tables["metrics"].GetTable()
    classes = [table.GetColumnByName("Class").GetValue(r) for r in range(table.GetNumberOfRows())]
    assert [c.split()[0] for c in classes] == ["1", "3", "14"]
    for row, name in enumerate(classes):
        for model in ("pretrained", "finetuned"):
            entry = next(s for s in document["summary"] if s["class"] == name and s["model"] == model)
            assert table.GetColumnByName(f"Dice {model}").GetValue(row) == pytest.approx(entry["dice_mean"])
    if "confusion" in document:
        assert tables["confusion"].GetTable().GetNumberOfRows() >= 2


# ---- the comparison rendered by Slicer's displayable managers (trame-slicer, EGL, no X server) ----

VIEW_SIZE = 256
FILL_OPACITY = 0.6
PICTURE_DIR = "VISTAFINETUNE_PICTURE_DIR"  # set it to keep the rendered comparison (docs/scene_comparison.png)


def deep_points(labels: np.ndarray, affine: np.ndarray, class_ids: list[int]) -> list[np.ndarray]:
    """For each class, the voxel deepest inside it (RAS); plus a voxel in the air corner."""
    points = []
    for class_id in class_ids:
        depth = ndimage.distance_transform_edt(labels == class_id)
        points.append(ijk_to_ras(affine, np.array(np.unravel_index(np.argmax(depth), labels.shape), float)))
    points.append(ijk_to_ras(affine, np.array([2.0, 2.0, labels.shape[2] // 2])))
    return points


def centre_pixel(view) -> np.ndarray:
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

    capture = vtkWindowToImageFilter()
    capture.SetInput(view.render_window())
    capture.ReadFrontBufferOff()
    capture.Update()
    image = capture.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[:, :, :3]
    return pixels[height // 2, width // 2].astype(float), pixels[::-1]


@pytest.mark.skipif(
    util.find_spec("trame_slicer") is None,
    reason="trame-slicer[standalone] is not installed (it pins slicer-core 5.11.0.x / vtk 9.6.0; this venv has "
    f"slicer-core {metadata.version('slicer-core')})",
)
def test_slicer_renders_the_comparison(scene_run, tmp_path):
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

    from VistaFinetuneLib.scene.layout import VIEWS, show_comparison, view_xml

    app = SlicerApp()
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    views = {v.name: app.view_manager.create_view(ViewLayoutDefinition.from_xml(view_xml(v))) for v in VIEWS}
    for view in views.values():
        view.render_window().SetSize(VIEW_SIZE, VIEW_SIZE)
    case, volume, predictions = load_case(app.scene, scene_run)
    truth = import_prediction(case.label, volume, scene_run.naming, f"{case.name} ground truth")
    show_comparison(volume, truth, predictions)
    truth_values = np.asarray(nib.load(case.label).dataobj)
    affine = nodes.ijk_to_ras(volume)
    masks = {m: np.rint(np.asarray(nib.load(p).dataobj)).astype(int).squeeze()
             for m, p in predictions_of(scene_run.run_dir, case.name).items()}  # fmt: skip
    for view in views.values():
        view.fit_view_to_content()
    checked = {"shown": 0, "not shown": 0}
    for point in deep_points(truth_values, affine, [1, 14]):  # liver (known before), left kidney (taught now)
        ijk = tuple(np.rint(np.linalg.solve(affine, [*point, 1.0])[:3]).astype(int))
        for view in views.values():
            view.get_view_node().JumpSliceByCentering(*point)
        for name, view in views.items():
            view.render()
            pixel, _ = centre_pixel(view)
            model = next(v.model for v in VIEWS if v.name == name)
            class_id = masks[model][ijk]
            if class_id in (0, 255):
                assert np.ptp(pixel) < 12, f"{name} at {point}: no {model} segment here, yet colour {pixel}"
                checked["not shown"] += 1
            else:  # pixel = (1 - a) * grey + a * colour: removing the colour must leave a grey
                grey = (pixel - FILL_OPACITY * 255 * np.asarray(class_color(class_id))) / (1 - FILL_OPACITY)
                assert np.ptp(pixel) > 12 and np.ptp(grey) < 30, f"{name} at {point}: class {class_id}, {pixel}"
                checked["shown"] += 1
    assert checked["shown"] >= 2 and checked["not shown"] >= 2, checked
    kidney = deep_points(truth_values, affine, [14])[0]
    for view in views.values():
        view.fit_view_to_content()
        view.get_view_node().JumpSliceByOffsetting(*kidney)
        view.render()
    tiles = [centre_pixel(views[v.name])[1] for v in VIEWS]
    picture = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])]).astype(np.uint8)
    from matplotlib import image as mpl_image

    mpl_image.imsave(Path(os.environ.get(PICTURE_DIR, tmp_path)) / "scene_comparison.png", picture)
