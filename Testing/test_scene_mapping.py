"""Segment names and terminology entries, as users make them, suggest VISTA3D classes; bad choices are refused."""

import numpy as np
import pytest
import slicer
from scene_helpers import add_segmentation, add_volume, new_scene

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.resources import RESOURCES
from VistaFinetuneLib.scene.mapping import (
    ClassChoice,
    check_mapping,
    collect_segments,
    label_mappings,
    load_choices,
    save_choices,
    suggest_mapping,
)
from VistaFinetuneLib.scene.terminology import class_for_terminology, class_table

pytestmark = pytest.mark.unit

CATALOG = LabelCatalog.from_bundle(RESOURCES / "TinyBundle")
KIDNEY_LEFT_ENTRY = class_table()[14].serialized()
SLICER_DEFAULT_ENTRY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~SCT^85756007^Tissue~^^~"
    "Anatomic codes - DICOM master list~^^~^^"
)


def segmentations(*named: list[str], terminology=None):
    scene = new_scene()
    affine = np.diag([-1.5, -1.5, 3.0, 1.0])
    volume = add_volume(scene, "CT", np.zeros((8, 8, 4), np.int16), affine)
    result = []
    for index, names in enumerate(named):
        masks = {}
        for n, name in enumerate(names):
            mask = np.zeros((8, 8, 4), bool)
            mask[n, :2, :2] = True
            masks[name] = (mask, affine)
        result.append(add_segmentation(scene, f"Segmentation {index + 1}", volume, masks, terminology))
    return result


def test_names_as_users_type_them_and_a_new_structure():
    nodes = segmentations(["Spleen", "kidney_left", "Tumor 1"], ["Left Kidney", "spleen"])
    choices = suggest_mapping(collect_segments(nodes), CATALOG)
    ids = {name: choice.class_id for name, choice in choices.items()}
    assert ids == {"Spleen": 3, "kidney_left": 14, "Tumor 1": 133, "Left Kidney": 14, "spleen": 3}
    assert choices["Tumor 1"].source == "new structure" and "Tumor 1" in choices["Tumor 1"].note
    assert check_mapping(collect_segments(nodes), choices, CATALOG) == [
        'segment "Tumor 1" -> id 133: a new structure, learned from scratch; it needs point prompts at inference'
    ]
    assert label_mappings(choices) == [[3, 3], [14, 14], [133, 133]]


def test_each_new_structure_gets_its_own_free_id():
    choices = suggest_mapping(collect_segments(segmentations(["Tumor 1", "Tumor 2", "Cyst"])), CATALOG)
    assert [c.class_id for c in choices.values()] == [133, 134, 135]


def test_a_new_structure_on_the_ctmr_model_is_refused_because_it_has_no_free_ids(tmp_path):
    from variant_bundles import write_nv_segment_ctmr

    ctmr = LabelCatalog.from_bundle(write_nv_segment_ctmr(tmp_path / "NV-Segment-CTMR"))
    assert ctmr.free_ids() == []
    with pytest.raises(UserError, match='segment "Tumor 1" needs an id for a new structure: none'):
        suggest_mapping(collect_segments(segmentations(["Spleen", "Tumor 1"])), ctmr)


def test_a_terminology_entry_identifies_a_generically_named_segment():
    nodes = segmentations(["Segment_1"], terminology={"Segment_1": KIDNEY_LEFT_ENTRY})
    choice = suggest_mapping(collect_segments(nodes), CATALOG)["Segment_1"]
    assert (choice.class_id, choice.source) == (14, "terminology")


def test_slicer_default_terminology_leaves_the_name_in_charge():
    nodes = segmentations(["Liver"], terminology={"Liver": SLICER_DEFAULT_ENTRY})
    assert class_for_terminology(SLICER_DEFAULT_ENTRY) is None
    assert suggest_mapping(collect_segments(nodes), CATALOG)["Liver"] == ClassChoice(1, "name", '"Liver" is 1: liver')


def test_the_shipped_table_serializes_entries_slicer_reads_back():
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(KIDNEY_LEFT_ENTRY, entry)
    assert entry.GetTypeObject().GetCodeValue() == "64033007"  # SNOMED CT: kidney structure
    assert entry.GetTypeModifierObject().GetCodeValue() == "7771000"  # SNOMED CT: left
    assert class_table()[1].type == ("SCT", "10200004", "Liver")
    for class_id, row in class_table().items():  # every code maps back to its own class
        assert class_for_terminology(row.serialized()) == class_id


def test_parent_classes_are_flagged():
    nodes = segmentations(["Kidney", "Lung"])
    choices = suggest_mapping(collect_segments(nodes), CATALOG)
    warnings = check_mapping(collect_segments(nodes), choices, CATALOG)
    assert [c.class_id for c in choices.values()] == [2, 20]
    assert len(warnings) == 2 and "left kidney (14) and right kidney (5)" in warnings[0]
    assert "parent class" in warnings[1]


def test_two_segments_of_one_segmentation_mapped_to_one_class_is_refused():
    nodes = segmentations(["Left Kidney", "kidney_left"])
    segments = collect_segments(nodes)
    with pytest.raises(UserError, match='"Segmentation 1": segments "Left Kidney" and "kidney_left" are both mapped to '
                                        r"VISTA3D class 14 \(left kidney\)"):  # fmt: skip
        check_mapping(segments, suggest_mapping(segments, CATALOG), CATALOG)


def test_an_unmapped_segment_is_refused_and_one_left_out_explicitly_is_not():
    segments = collect_segments(segmentations(["Spleen", "Ruler"]))
    with pytest.raises(UserError, match='segment "Ruler" of segmentation "Segmentation 1" is not mapped'):
        check_mapping(segments, {"Spleen": ClassChoice(3, "name")}, CATALOG)
    assert (
        check_mapping(segments, {"Spleen": ClassChoice(3, "name"), "Ruler": ClassChoice(None, "user")}, CATALOG) == []
    )
    with pytest.raises(UserError, match="no segment is mapped"):
        check_mapping(segments, {"Spleen": ClassChoice(None, "user"), "Ruler": ClassChoice(None, "user")}, CATALOG)


def test_choices_live_in_the_parameter_node():
    parameter_node = slicer.vtkMRMLScriptedModuleNode()
    assert load_choices(parameter_node) == {}
    choices = {
        "Spleen": ClassChoice(3, "name", "x"),
        "Tumor 1": ClassChoice(140, "user"),
        "Ruler": ClassChoice(None, "user"),
    }
    save_choices(parameter_node, choices)
    assert load_choices(parameter_node) == choices
