"""The VISTA3D effect's class list: the bundle's classes plus a run's classes under the user's names, searchable,
and the kidney/lung/bone rule (VISTA3D expands 2/20/21 into their parts and cannot combine them with clicks)."""

from pathlib import Path

import pytest

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.interactive.class_list import model_classes, point_rule, search_classes
from VistaFinetuneLib.interactive.models import ModelChoice, pretrained_choice
from VistaFinetuneLib.resources import RESOURCES

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def catalog():
    return LabelCatalog.from_bundle(RESOURCES / "TinyBundle")  # the CT bundle's 132-class table


def test_run_classes_come_first_under_the_users_names(catalog):
    run = ModelChoice("run:tumours", "tumours", run_dir=Path("runs/tumours"),
                      class_names={133: "Tumor 1", 14: "class 14"})  # fmt: skip
    classes = model_classes(catalog, run)
    assert [c.title for c in classes[:2]] == ["left kidney (14, finetuned)", "Tumor 1 (133, finetuned)"]
    assert [c.id for c in classes].count(14) == 1
    assert not any(c.finetuned for c in model_classes(catalog, pretrained_choice("CT")))
    assert all(c.id not in (16, 18, 129, 130, 131) or not catalog.classes[c.id].deprecated for c in classes)


def test_search_by_words_abbreviations_or_id(catalog):
    classes = model_classes(catalog, pretrained_choice("CT"))
    found = search_classes(classes, "L kidney")
    assert 14 in [c.id for c in found] and all({"left", "kidney"} <= set(c.name.split()) for c in found)
    assert [c.name for c in search_classes(classes, "5")] == ["right kidney"]
    assert {2, 5, 14} <= {c.id for c in search_classes(classes, "kidney")}
    assert len(search_classes(classes, "")) == len(classes)
    assert search_classes(classes, "no such organ") == []


def test_kidney_lung_bone_rule_is_explained_only_where_it_applies(catalog):
    classes = {c.id: c for c in model_classes(catalog, pretrained_choice("CT"))}
    for parent in (2, 20, 21):
        assert classes[parent].expands_to_parts
        assert "cannot combine" in point_rule(classes[parent])
    assert "left kidney (14)" in point_rule(classes[2])
    assert point_rule(classes[1]) is None and point_rule(None) is None
    # A finetune that mapped its own structure onto id 2 turned the expansion off.
    mapped = model_classes(catalog, ModelChoice("run:k", "k", run_dir=Path("k"), class_names={2: "Kidneys"}))
    assert mapped[0].title == "Kidneys (2, finetuned)" and point_rule(mapped[0]) is None
