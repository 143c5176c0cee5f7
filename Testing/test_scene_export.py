"""Volumes and segmentations in the scene become a training set: files equal the nodes, bad input is named."""

import json

import numpy as np
import pytest
from scene_helpers import ORGAN_VALUES, add_segmentation, add_volume, new_scene, organ_segments, phantom

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.data import dataset
from VistaFinetuneLib.data.geometry import voxel_to_voxel
from VistaFinetuneLib.data.nifti import read_nifti
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.resources import RESOURCES
from VistaFinetuneLib.scene import nodes
from VistaFinetuneLib.scene.export import OVERLAP_RULE, ExportCase, export_training_set
from VistaFinetuneLib.scene.mapping import ClassChoice, collect_segments, suggest_mapping

pytestmark = pytest.mark.unit

CATALOG = LabelCatalog.from_bundle(RESOURCES / "TinyBundle")


def finer_grid(affine: np.ndarray, shape) -> tuple[np.ndarray, tuple]:
    """A grid over the same region at half the voxel size along i and j, shifted by a quarter voxel."""
    fine = affine.copy()
    fine[:3, :2] /= 2.0
    fine[:3, 3] += affine[:3, :3] @ np.array([-0.25, -0.25, 0.0])
    return fine, (shape[0] * 2, shape[1] * 2, shape[2])


def resample(mask: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, shape) -> np.ndarray:
    from scipy import ndimage

    m = voxel_to_voxel(affine, target_affine)
    return ndimage.affine_transform(mask.astype(np.uint8), m[:3, :3], m[:3, 3], output_shape=shape, order=0) > 0


@pytest.fixture()
def scene_cases():
    """Three phantoms: case 2's segmentation lies on a finer grid than its CT; users' own segment names."""
    scene = new_scene()
    cases, truths = [], []
    names = [{"liver": "Liver", "spleen": "Spleen", "left kidney": "kidney_left"},
             {"liver": "liver", "left kidney": "Left Kidney"},
             {"spleen": "Spleen", "left kidney": "kidney_left"}]  # fmt: skip
    for index, organ_names in enumerate(names):
        image, label, affine = phantom(index)
        volume = add_volume(scene, f"CT {index + 1}", image, affine)
        segments = organ_segments(label, affine, organ_names)
        if index == 1:
            fine, shape = finer_grid(affine, label.shape)
            segments = {n: (resample(m, a, fine, shape), fine) for n, (m, a) in segments.items()}
        segmentation = add_segmentation(scene, f"Segmentation {index + 1}", volume, segments)
        cases.append(ExportCase(volume, segmentation, validation=index == 2))
        truths.append((image, label, affine, organ_names))
    return scene, cases, truths


def test_export_round_trip_equals_the_nodes(scene_cases, tmp_path):
    scene, cases, truths = scene_cases
    choices = suggest_mapping(collect_segments([c.segmentation for c in cases]), CATALOG)
    storage_before = [c.volume.GetStorageNodeID() for c in cases]
    exported = export_training_set(cases, choices, CATALOG, tmp_path / "dataset")
    assert exported.label_mappings == [[1, 1], [3, 3], [14, 14]]
    assert [c.fold for c in exported.cases] == [1, 1, 0]
    for case, written, (image, label, affine, organ_names) in zip(cases, exported.cases, truths, strict=True):
        (ct, ct_affine), (values, label_affine) = read_nifti(written.image), read_nifti(written.label)
        np.testing.assert_allclose(ct_affine, nodes.ijk_to_ras(case.volume), atol=1e-5)
        np.testing.assert_allclose(label_affine, affine, atol=1e-5)
        np.testing.assert_array_equal(ct, nodes.voxels(case.volume))
        np.testing.assert_array_equal(ct, image)
        assert values.shape == image.shape
        expected = np.zeros_like(label)
        for organ, target in (("liver", 1), ("spleen", 3), ("left kidney", 14)):
            if organ in organ_names:
                expected[label == ORGAN_VALUES[organ]] = target
        present = {v for v in np.unique(values)} - {0}
        if written.name == "CT_2":  # resampled from the finer grid: the same voxels up to the boundary
            assert present == {1, 14}
            for class_id in (1, 14):
                overlap = np.logical_and(values == class_id, expected == class_id).sum()
                assert 2 * overlap / ((values == class_id).sum() + (expected == class_id).sum()) > 0.9
        else:
            np.testing.assert_array_equal(values, expected)
    assert [c.volume.GetStorageNodeID() for c in cases] == storage_before  # the user's nodes are untouched
    found = dataset.read_datalist(exported.datalist, None)
    assert [(c.name, c.fold) for c in found] == [("CT_1", 1), ("CT_2", 1), ("CT_3", 0)]
    manifest = json.loads((exported.dataset_dir / "export.json").read_text())
    assert manifest["overlap_rule"] == OVERLAP_RULE
    assert manifest["mapping"]["kidney_left"]["class_id"] == 14
    assert exported.class_names == {1: "Liver", 3: "Spleen", 14: "kidney_left"}  # the users' names, first seen
    assert exported.finetune_arguments() == ["--datalist", str(exported.datalist), "--label-mapping",
                                             "[[1, 1], [3, 3], [14, 14]]", "--class-names",
                                             '{"1": "Liver", "3": "Spleen", "14": "kidney_left"}']  # fmt: skip


def test_overlapping_segments_follow_the_rule(tmp_path):
    scene = new_scene()
    affine = np.array([[0.0, -1.2, 0, 10], [0.9, 0, 0, -5], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    volumes = [add_volume(scene, f"CT {i}", np.zeros((12, 12, 6), np.int16), affine) for i in range(2)]
    organ = np.zeros((12, 12, 6), bool)
    organ[2:10, 2:10, 1:5] = True
    lesion = np.zeros_like(organ)
    lesion[4:7, 4:7, 2:4] = True
    seg = add_segmentation(scene, "Segmentation", volumes[0], {"Tumor 1": (lesion, affine), "Liver": (organ, affine)})
    other = add_segmentation(scene, "Other", volumes[1], {"Liver": (organ, affine)})
    choices = suggest_mapping(collect_segments([seg, other]), CATALOG)
    exported = export_training_set(
        [ExportCase(volumes[0], seg, False), ExportCase(volumes[1], other, True)], choices, CATALOG, tmp_path / "d"
    )
    values = read_nifti(exported.cases[0].label)[0]
    assert (values[lesion] == 133).all()  # the lesion, drawn inside the liver, stays a lesion
    assert (values[organ & ~lesion] == 1).all() and (values[~organ] == 0).all()
    assert exported.cases[0].voxels_per_class == {1: int(organ.sum() - lesion.sum()), 133: int(lesion.sum())}


def two_cases(scene, first_segments, second=None, second_affine=None):
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    volumes = [add_volume(scene, f"CT {i + 1}", np.zeros((10, 10, 5), np.int16), affine) for i in range(2)]
    mask = np.zeros((10, 10, 5), bool)
    mask[3:6, 3:6, 1:3] = True
    segs = [add_segmentation(scene, "Seg 1", volumes[0], first_segments(mask, affine))]
    segs.append(
        add_segmentation(scene, "Seg 2", volumes[1], second(mask, affine) if second else {"Liver": (mask, affine)})
    )
    return [ExportCase(volumes[0], segs[0], False), ExportCase(volumes[1], segs[1], True)]


@pytest.mark.parametrize(
    ("first", "choices", "message"),
    [
        (lambda m, a: {"Liver": (np.zeros_like(m), a)}, None,
         r'segmentation "Seg 1" \(volume "CT 1"\) is empty: it has no segment with any voxel painted'),
        (lambda m, a: {"Liver": (m, a @ np.array([[1, 0, 0, 500], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))}, None,
         r'segmentation "Seg 1" \(volume "CT 1"\) does not overlap its volume'),
        (lambda m, a: {"Liver": (m, a), "Ruler": (m, a)}, {"Liver": ClassChoice(1, "name")},
         'segment "Ruler" of segmentation "Seg 1" is not mapped to a VISTA3D class'),
        (lambda m, a: {"Liver": (m, a), "liver": (m, a)}, None,
         'segmentation "Seg 1": segments "Liver" and "liver" are both mapped to VISTA3D class 1'),
        (lambda m, a: {"Ruler": (m, a)}, {"Liver": ClassChoice(1, "name"), "Ruler": ClassChoice(None, "user")},
         r'segmentation "Seg 1" \(volume "CT 1"\) holds none of the mapped segments'),
    ],
    ids=["empty segmentation", "no overlap", "unmapped segment", "two segments to one class", "nothing mapped"],
)  # fmt: skip
def test_bad_input_is_named(first, choices, message, tmp_path):
    cases = two_cases(new_scene(), first)
    choices = choices or suggest_mapping(collect_segments([c.segmentation for c in cases]), CATALOG)
    with pytest.raises(UserError, match=message):
        export_training_set(cases, choices, CATALOG, tmp_path / "dataset")
    assert not (tmp_path / "dataset" / "datalist.json").exists()


def test_a_volume_without_segmentation_a_missing_validation_choice_and_a_transform_are_named(tmp_path):
    cases = two_cases(new_scene(), lambda m, a: {"Liver": (m, a)})
    choices = {"Liver": ClassChoice(1, "name")}
    with pytest.raises(UserError, match='volume "CT 2" has no segmentation'):
        export_training_set([cases[0], ExportCase(cases[1].volume, None, True)], choices, CATALOG, tmp_path / "a")
    with pytest.raises(UserError, match="0 of 2 cases are marked for validation"):
        export_training_set([cases[0], ExportCase(cases[1].volume, cases[1].segmentation, False)], choices, CATALOG,
                            tmp_path / "b")  # fmt: skip
    moved = cases[0].volume.GetScene().AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    cases[0].volume.SetAndObserveTransformNodeID(moved.GetID())
    with pytest.raises(UserError, match='volume "CT 1" is under the transform "Registration"; harden it'):
        export_training_set(cases, choices, CATALOG, tmp_path / "t")
    cases[0].volume.SetAndObserveTransformNodeID(None)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mine.txt").write_text("the user's")
    with pytest.raises(UserError, match="already holds files"):
        export_training_set(cases, choices, CATALOG, tmp_path / "c")
    assert (tmp_path / "c" / "mine.txt").read_text() == "the user's"
