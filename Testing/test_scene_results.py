"""Results come back into the scene: predictions as named, coloured, coded segments on the CT's geometry, review
tables and training curves, the comparison layout, and point prompts from markups."""

import json
from xml.etree import ElementTree

import numpy as np
import pytest
import slicer
import vtk
from scene_helpers import add_segmentation, add_volume, new_scene, phantom

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.data.geometry import ijk_to_ras
from VistaFinetuneLib.data.nifti import read_nifti, write_nifti
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.resources import RESOURCES
from VistaFinetuneLib.scene import nodes
from VistaFinetuneLib.scene.export import segment_mask
from VistaFinetuneLib.scene.layout import LAYOUT_ID, VIEWS, layout_xml, register_layout, show_comparison
from VistaFinetuneLib.scene.mapping import ClassChoice, collect_segments
from VistaFinetuneLib.scene.points import point_prompts
from VistaFinetuneLib.scene.predictions import ClassNaming, class_segment_ids, import_comparison
from VistaFinetuneLib.scene.review_tables import TrainingCurves, review_tables
from VistaFinetuneLib.scene.terminology import class_color, class_table

pytestmark = pytest.mark.unit

CATALOG = LabelCatalog.from_bundle(RESOURCES / "TinyBundle")


def table_columns(table_node) -> dict[str, list]:
    table = table_node.GetTable()
    columns = {}
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        columns[column.GetName()] = [column.GetValue(r) for r in range(table.GetNumberOfRows())]
    return columns


@pytest.fixture()
def ct_and_predictions(tmp_path):
    """A phantom CT node and two prediction files on its grid (255 marks a slab as not processed)."""
    scene = new_scene()
    image, label, affine = phantom(1)
    volume = add_volume(scene, "CT 2", image, affine)
    pretrained = np.where(label == 1, 1, 0).astype(np.uint8)  # knows the liver only
    finetuned = np.select([label == 1, label == 2, label == 3], [1, 3, 14], 0).astype(np.uint8)
    finetuned[:, :, :2] = 255
    paths = {}
    for model, array in (("pretrained", pretrained), ("finetuned", finetuned)):
        paths[model] = tmp_path / f"{model}.nii.gz"
        write_nifti(paths[model], array, affine)
    return scene, volume, paths, {"pretrained": pretrained, "finetuned": finetuned}


def test_predictions_become_two_named_coded_nodes_on_the_ct(ct_and_predictions):
    scene, volume, paths, arrays = ct_and_predictions
    naming = ClassNaming(CATALOG, user_names={14: "kidney_left", 3: "Spleen"})
    result = import_comparison(paths, volume, naming, "CT 2")
    assert {m: n.GetName() for m, n in result.items()} == {
        "pretrained": "CT 2 — VISTA3D pretrained",
        "finetuned": "CT 2 — VISTA3D finetuned",
    }
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # the reading node is gone
    for model, node in result.items():
        ids = class_segment_ids(node)
        expected = arrays[model].copy()
        expected[expected == 255] = 0
        assert sorted(ids) == sorted(set(np.unique(expected)) - {0})
        for class_id, segment_id in ids.items():
            mask = segment_mask(node, segment_id, volume)
            np.testing.assert_array_equal(mask, expected == class_id)
            segment = node.GetSegmentation().GetSegment(segment_id)
            assert segment.GetColor() == pytest.approx(class_color(class_id))
            assert segment.GetTerminology() == class_table()[class_id].serialized()
            internal = slicer.vtkOrientedImageData()  # the segment's own labelmap lies on the CT's grid
            slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(node, segment_id, internal)
            world = vtk.vtkMatrix4x4()
            internal.GetImageToWorldMatrix(world)
            np.testing.assert_allclose(nodes.matrix_to_array(world), nodes.ijk_to_ras(volume), atol=1e-4)
    finetuned = result["finetuned"].GetSegmentation()
    names = {c: finetuned.GetSegment(s).GetName() for c, s in class_segment_ids(result["finetuned"]).items()}
    assert names == {1: "liver", 3: "Spleen", 14: "kidney_left"}
    assert class_color(1) == pytest.approx((221 / 255, 130 / 255, 101 / 255))  # Slicer's liver colour


def test_user_names_and_terminology_come_from_the_mapping():
    scene = new_scene()
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    volume = add_volume(scene, "CT", np.zeros((6, 6, 3), np.int16), affine)
    mask = np.zeros((6, 6, 3), bool)
    mask[1:3, 1:3, 1] = True
    entry = class_table()[14].serialized()
    seg = add_segmentation(scene, "S", volume, {"Segment_1": (mask, affine), "Tumor 1": (mask, affine)},
                           terminology={"Segment_1": entry})  # fmt: skip
    choices = {"Segment_1": ClassChoice(14, "terminology"), "Tumor 1": ClassChoice(133, "new structure")}
    naming = ClassNaming.from_mapping(CATALOG, choices, collect_segments([seg]))
    assert naming.name(14) == "Segment_1" and naming.terminology(14) == entry
    assert naming.name(133) == "Tumor 1" and naming.terminology(133) is None
    assert naming.name(3) == "spleen" and naming.name(140) == "new structure 140"


def test_a_prediction_of_another_case_is_refused(ct_and_predictions, tmp_path):
    scene, volume, paths, arrays = ct_and_predictions
    far = read_nifti(paths["pretrained"])[1].copy()
    far[:3, 3] += 1000.0
    write_nifti(tmp_path / "far.nii.gz", arrays["pretrained"], far)
    with pytest.raises(UserError, match='far.nii.gz: the prediction does not overlap volume "CT 2"'):
        import_comparison({"pretrained": tmp_path / "far.nii.gz"}, volume, ClassNaming(CATALOG), "CT 2")
    with pytest.raises(UserError, match="missing.nii.gz: the file does not exist"):
        import_comparison({"pretrained": tmp_path / "missing.nii.gz"}, volume, ClassNaming(CATALOG), "CT 2")


METRICS = {
    "models": ["pretrained", "finetuned"],
    "summary": [
        {"class": "1 liver", "model": "pretrained", "dice_mean": 0.8, "hd95_mm_mean": 6.0, "nsd_mean": 0.7},
        {"class": "1 liver", "model": "finetuned", "dice_mean": 0.85, "hd95_mm_mean": 4.5, "nsd_mean": 0.75},
        {"class": "1 liver", "model": "finetuned - pretrained (paired Dice)", "dice_mean": 0.05},
        {"class": "14 left kidney", "model": "pretrained", "dice_mean": 0.0, "hd95_mm_mean": None, "nsd_mean": 0.0},
        {"class": "14 left kidney", "model": "finetuned", "dice_mean": 0.6, "hd95_mm_mean": 8.0, "nsd_mean": 0.5},
    ],
    "confusion": {
        "pretrained": {"1": {"1": 0.9, "14": 0.0, "0": 0.1}, "14": {"1": 0.3, "14": 0.0, "0": 0.7}},
        "finetuned": {"1": {"1": 0.95, "14": 0.0, "0": 0.05}, "14": {"1": 0.0, "14": 0.6, "0": 0.4}},
    },
}


def test_review_tables_hold_metrics_differences_and_confusion(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(METRICS))
    tables = review_tables(new_scene(), path, {1: "liver", 14: "left kidney"})
    metrics = table_columns(tables["metrics"])
    assert metrics["Class"] == ["1 liver", "14 left kidney"]
    assert metrics["Dice pretrained"] == [0.8, 0.0] and metrics["Dice finetuned"] == [0.85, 0.6]
    assert metrics["Dice difference"] == pytest.approx([0.05, 0.6])
    assert metrics["HD95 (mm) difference"][0] == pytest.approx(-1.5) and np.isnan(metrics["HD95 (mm) difference"][1])
    assert metrics["NSD finetuned"] == [0.75, 0.5]
    confusion = table_columns(tables["confusion"])
    assert confusion["Model"] == ["pretrained", "pretrained", "finetuned", "finetuned"]
    assert confusion["Ground truth"] == ["1 liver", "14 left kidney"] * 2
    assert confusion["labelled 1 liver"] == [0.9, 0.3, 0.95, 0.0]
    assert confusion["labelled background"] == [0.1, 0.7, 0.05, 0.4]
    del METRICS["confusion"]
    path.write_text(json.dumps(METRICS))
    assert set(review_tables(new_scene(), path, {})) == {"metrics"}


def test_training_curves_follow_status_json(tmp_path):
    scene = new_scene()
    curves = TrainingCurves(scene)
    status = tmp_path / "status.json"
    for state in (
        {"phase": "train", "epoch": 1, "iteration": 1, "iterations_per_epoch": 2, "loss": 0.9},
        {"phase": "train", "epoch": 1, "iteration": 2, "iterations_per_epoch": 2, "loss": 0.8,
         "val_dice_per_epoch": [0.2]},
        {"phase": "train", "epoch": 1, "iteration": 2, "iterations_per_epoch": 2, "loss": 0.8,
         "val_dice_per_epoch": [0.2]},  # the same state read twice adds nothing
        {"phase": "train", "epoch": 2, "iteration": 1, "iterations_per_epoch": 2, "loss": 0.5,
         "val_dice_per_epoch": [0.2]},
    ):  # fmt: skip
        status.write_text(json.dumps(state))
        curves.update_from_file(status)
    assert table_columns(curves.loss_table) == {"epoch": [0.5, 1.0, 1.5], "loss": [0.9, 0.8, 0.5]}
    assert table_columns(curves.dice_table) == {"epoch": [1.0], "validation Dice": [0.2]}
    assert curves.chart.GetNumberOfPlotSeriesNodes() == 2
    assert curves.series["dice"].GetTableNodeID() == curves.dice_table.GetID()


def test_comparison_layout_links_views_and_assigns_display_nodes(ct_and_predictions):
    scene, volume, paths, _ = ct_and_predictions
    root = ElementTree.fromstring(layout_xml())
    views = root.findall(".//view")
    assert [v.get("singletontag") for v in views] == [v.name for v in VIEWS]
    assert [v.find("property[@name='orientation']").text for v in views] == ["Axial", "Axial", "Coronal", "Coronal"]
    layout_node = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    assert register_layout(layout_node) == LAYOUT_ID and layout_node.IsLayoutDescription(LAYOUT_ID)
    predictions = import_comparison(paths, volume, ClassNaming(CATALOG), "CT 2")
    truth = add_segmentation(scene, "CT 2 ground truth", volume, {"liver": (np.ones((2, 2, 2), bool), np.eye(4))})
    with pytest.raises(UserError, match="switch to the comparison layout first"):
        show_comparison(volume, truth, predictions)
    logics = []
    for view in VIEWS:  # what the layout manager does when the layout is shown
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        logic.AddSliceNode(view.name)
        logics.append(logic)
    shown = show_comparison(volume, truth, predictions)
    slice_ids = {}
    for view in VIEWS:
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
            if node.GetLayoutName() == view.name:
                slice_ids[view.name] = node.GetID()
    assert shown["CT 2 — VISTA3D pretrained"] == ["VistaPretrainedAxial", "VistaPretrainedCoronal"]
    pre = predictions["pretrained"].GetDisplayNode()
    assert list(pre.GetViewNodeIDs()) == [slice_ids["VistaPretrainedAxial"], slice_ids["VistaPretrainedCoronal"]]
    fine = predictions["finetuned"].GetDisplayNode()
    assert list(fine.GetViewNodeIDs()) == [slice_ids["VistaFinetunedAxial"], slice_ids["VistaFinetunedCoronal"]]
    gt = truth.GetDisplayNode()
    assert len(gt.GetViewNodeIDs()) == 4 and not gt.GetVisibility2DFill() and gt.GetVisibility2DOutline()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        assert composite.GetBackgroundVolumeID() == volume.GetID() and composite.GetLinkedControl()


def test_control_points_become_voxel_prompts():
    scene = new_scene()
    image, _, affine = phantom(0)
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Clicks")
    wanted = np.array([[10, 20, 5], [30, 12, 20], [4, 40, 30]])
    for ijk in wanted:
        markups.AddControlPoint(*ijk_to_ras(affine, ijk + 0.2))  # a click off the voxel centre
    markups.SetNthControlPointSelected(1, False)  # unselected: a negative click
    markups.AddControlPoint(0.0, 0.0, 0.0)
    markups.UnsetNthControlPointPosition(3)  # a point not placed yet is skipped
    prompts = point_prompts(markups, affine, image.shape)
    assert prompts.points_ijk == wanted.tolist()
    assert prompts.labels == [1, 0, 1]
    assert prompts.to_json() == {"points": wanted.tolist(), "point_labels": [1, 0, 1]}
    markups.AddControlPoint(*ijk_to_ras(affine, np.array([100, 0, 0])))
    with pytest.raises(UserError, match='markups "Clicks": point .* lies outside the image'):
        point_prompts(markups, affine, image.shape)
    with pytest.raises(UserError, match="no placed control points"):
        point_prompts(scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Empty"), affine, image.shape)
    assert nodes.voxels(add_volume(scene, "v", image, affine)).shape == image.shape
