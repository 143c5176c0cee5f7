"""The bundle variant is known from its configs and names, not its metadata's channel count (issue 14, item 4)."""

import json

import pytest
from conftest import tree_digest
from variant_bundles import (
    write_json,
    write_model_zoo_vista3d,
    write_nv_segment_ct,
    write_nv_segment_ctmr,
)

from VistaFinetuneLib.bundle.labels import LabelCatalog, ResolveError
from VistaFinetuneLib.bundle.source import bundle_info, format_info
from VistaFinetuneLib.bundle.tiny_bundle import TEMPLATE_DIR
from VistaFinetuneLib.bundle.variant import identify_variant
from VistaFinetuneLib.cli import main

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def nv_ct(tmp_path_factory):
    return write_nv_segment_ct(tmp_path_factory.mktemp("v") / "NV-Segment-CT")


@pytest.fixture(scope="module")
def nv_ctmr(tmp_path_factory):
    return write_nv_segment_ctmr(tmp_path_factory.mktemp("v") / "NV-Segment-CTMR")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return write_model_zoo_vista3d(tmp_path_factory.mktemp("v") / "vista3d")


def test_nv_segment_ct_with_346_channels_is_the_132_class_ct_model(nv_ct, capsys):
    before = tree_digest(nv_ct)
    variant = identify_variant(nv_ct)
    assert (variant.key, variant.family.name, variant.image_key_needed) == ("nv-segment-ct", "CT", False)
    catalog = LabelCatalog.from_bundle(nv_ct)
    assert sorted(catalog.classes) == list(range(1, 133))
    assert catalog.free_ids() == list(range(133, 255))
    assert {c.id for c in catalog.classes.values() if c.deprecated} == {16, 129, 130, 131}
    with pytest.raises(ResolveError, match="unknown"):  # 133 fibula belongs to the CT+MR table only
        catalog.resolve("fibula")
    info = bundle_info(nv_ct)
    assert info["ctmr"] is False and info["variant"]["key"] == "nv-segment-ct"
    assert info["labels"]["classes"] == 132 and info["labels"]["free_ids"] == list(range(133, 255))
    reasons = " ".join(info["variant"]["reasons"])
    assert "label_dict.json has 124 names" in reasons and "no modality choice" in reasons
    assert "346 output channels" in reasons
    assert main(["bundle", "info", str(nv_ct)]) == 0
    out = capsys.readouterr().out
    assert "variant      NV-Segment-CT: 132 CT classes, because" in out and "free ids     133..254" in out
    assert main(["labels", "--free", "--bundle-dir", str(nv_ct)]) == 0
    assert capsys.readouterr().out.strip() == "122 ids the table leaves free for new structures: 133..254"
    assert tree_digest(nv_ct) == before


def test_nv_segment_ctmr_is_known_by_its_modality_choice_and_has_no_free_id(nv_ctmr, capsys):
    variant = identify_variant(nv_ctmr)
    assert (variant.key, variant.family.name, variant.image_key_needed) == ("nv-segment-ctmr", "CT+MR", True)
    assert variant.modalities == ["CT_BODY", "MRI_BODY", "MRI_BRAIN"] and variant.default_modality == "MRI_BODY"
    catalog = LabelCatalog.from_bundle(nv_ctmr)
    assert sorted(catalog.classes) == list(range(1, 346))
    assert catalog.resolve("left lung") == 135 and catalog.resolve("Left thyroid") == 165
    assert catalog.free_ids() == []
    assert catalog.free_ids_text().startswith("none: the NV-Segment-CTMR model's classes use every id 1..345")
    with pytest.raises(ResolveError, match="133 'fibula' is deprecated in NV-Segment-CTMR") as error:
        catalog.resolve("fibula")
    assert "no supported class" in str(error.value) and "none:" in str(error.value)
    assert main(["bundle", "info", str(nv_ctmr)]) == 0
    out = capsys.readouterr().out
    assert "variant      NV-Segment-CTMR: 345 CT+MR classes" in out and "chooses its classes by modality" in out
    assert "modality     CT_BODY | MRI_BODY | MRI_BRAIN (inference.json default MRI_BODY)" in out
    assert "free ids     none:" in out and "image_key    needed" in out


def test_model_zoo_vista3d_marks_the_ct_deprecated_ids_its_table_does_not(zoo):
    variant = identify_variant(zoo)
    assert variant.key == "vista3d" and variant.family.name == "CT"
    assert any("docs/labels.json" in reason for reason in variant.reasons)
    catalog = LabelCatalog.from_bundle(zoo)
    assert len(catalog.classes) == 132 and catalog.free_ids() == list(range(133, 255))
    assert [c.id for c in catalog.classes.values() if c.deprecated] == [16, 129, 130, 131]
    assert catalog.resolve_name("Liver tumor").id == 26


def test_the_tiny_bundle_is_known_by_its_name():
    variant = identify_variant(TEMPLATE_DIR)
    assert variant.key == "tiny" and variant.family.model_classes == 132
    assert any("VistaFinetune tiny VISTA3D" in reason for reason in variant.reasons)


def test_configs_outweigh_a_folder_name(tmp_path):
    """A CTMR-named folder holding CT configs is the CT model; the initial NV-Segment-CT commit, whose
    inference.json chose classes by modality, is the CT+MR model whatever the folder says."""
    ct_configs = write_nv_segment_ct(tmp_path / "NV-Segment-CTMR")
    variant = identify_variant(ct_configs)
    assert variant.key == "nv-segment-ct"
    assert "the name says NV-Segment-CTMR, but the configs above decide" in variant.reasons
    ctmr_configs = write_nv_segment_ctmr(tmp_path / "nv-segment-ct")
    assert identify_variant(ctmr_configs).key == "nv-segment-ctmr"


def test_a_modality_key_nothing_uses_is_not_a_modality_choice(nv_ct, tmp_path):
    inference = json.loads((nv_ct / "configs" / "inference.json").read_text()) | {"modality": "CT_BODY"}
    bundle = write_nv_segment_ct(tmp_path / "b")
    write_json(bundle / "configs" / "inference.json", inference)
    assert identify_variant(bundle).key == "nv-segment-ct"


@pytest.mark.parametrize(("folder", "key"), [("NV-Segment-CT", "nv-segment-ct"), ("vista3d_0.5.4", "vista3d"),
                                             ("nv_segment_ctmr", "nv-segment-ctmr")])  # fmt: skip
def test_the_name_decides_when_the_configs_do_not(tmp_path, folder, key):
    from variant_bundles import ctmr_channel_def, metadata

    write_json(tmp_path / folder / "configs" / "metadata.json", metadata(ctmr_channel_def(), "0.6.0"))
    variant = identify_variant(tmp_path / folder)
    assert variant.key == key and any("the name" in reason for reason in variant.reasons)
    expected = 345 if key == "nv-segment-ctmr" else 132
    assert len(LabelCatalog.from_bundle(tmp_path / folder).classes) == expected


def test_the_channel_count_alone_is_reported_as_weak_evidence(tmp_path):
    from variant_bundles import ctmr_channel_def, metadata

    write_json(tmp_path / "b" / "configs" / "metadata.json", metadata(ctmr_channel_def(), "9"))
    info = bundle_info(tmp_path / "b")
    assert info["variant"]["key"] == "unknown" and info["ctmr"] is True
    assert "only configs/metadata.json's channel count (345 classes) suggests CT+MR" in info["variant"]["reasons"][0]
    assert any(line.startswith("variant      unrecognised VISTA3D bundle") for line in format_info(info))


@pytest.mark.parametrize(
    ("writer", "text", "expected"),
    [
        (write_nv_segment_ct, "Liver tumor", 26),
        (write_nv_segment_ctmr, "liver_tumour", 26),
        (write_nv_segment_ct, "prostate or uterus", 118),
        (write_nv_segment_ctmr, "ascending aorta", 6),
    ],
)
def test_a_deprecated_name_resolves_to_its_one_supported_counterpart_with_a_note(tmp_path, writer, text, expected):
    catalog = LabelCatalog.from_bundle(writer(tmp_path / "b"))
    resolution = catalog.resolve_name(text)
    assert resolution.id == expected
    assert "deprecated" in resolution.note and f"resolved to its supported counterpart {expected}:" in resolution.note


def test_deprecated_names_with_several_or_no_counterparts_are_refused_with_the_reason(nv_ct):
    catalog = LabelCatalog.from_bundle(nv_ct)
    with pytest.raises(ResolveError, match="supported candidates: 116: left kidney cyst, 117") as error:
        catalog.resolve("kidney mass")
    assert [c.id for c in error.value.candidates] == [116, 117]
    with pytest.raises(ResolveError, match="its inference refuses it as a class prompt") as error:
        catalog.resolve("vertebrae L6")
    assert "no supported class" in str(error.value) and "133..254" in str(error.value)
    with pytest.raises(ResolveError, match="no supported class"):  # not answered with "prostate"
        catalog.resolve("uterus")
    with pytest.raises(ResolveError, match="class id 130: 130 'liver tumor' is deprecated.*use 26: hepatic tumor"):
        catalog.resolve("130")


def test_deprecated_ids_are_never_suggested(nv_ct):
    catalog = LabelCatalog.from_bundle(nv_ct)
    for text in ("liver tumor", "kidney mass", "vertebrae L6", "prostate or uterus", "vertebra"):
        assert all(not c.deprecated for c, _ in catalog.suggest(text, limit=20))
    with pytest.raises(ResolveError) as error:
        catalog.resolve("vertebrae")
    assert 131 not in [c.id for c in error.value.candidates]
