"""The label table: reading it from the three places a bundle keeps it, and resolving free text to class ids."""

import json
import re
from pathlib import Path

import pytest

from VistaFinetuneLib.bundle.labels import LabelCatalog, LabelClass, ResolveError, name_keys
from VistaFinetuneLib.bundle.tiny_bundle import TEMPLATE_DIR
from VistaFinetuneLib.errors import UserError

pytestmark = pytest.mark.unit

TINY_METADATA = TEMPLATE_DIR / "configs" / "metadata.json"
CT_CHANNEL_DEF: dict[str, str] = json.loads(TINY_METADATA.read_text())["network_data_format"]["outputs"]["pred"][
    "channel_def"
]
CT_NAMES = {int(key): name for key, name in CT_CHANNEL_DEF.items() if key != "0"}
NV_CT_OMITTED = {2, 16, 18, 20, 21, 129, 130, 131}  # ids the NV-Segment-CT label_dict.json leaves out
# A few real entries past 132 from the NV-Segment-CTMR label_dict.json.
CTMR_EXTRA = {
    "fibula (deprecated)": 133,
    "intervertebral discs": 134,
    "left lung": 135,
    "vertebrae": 146,
    "uterus (deprecated)": 162,
    "breast left": 163,
    "3rd-Ventricle": 214,
}
CANDIDATE = re.compile(r"\b(\d+): ")


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def metadata_with(channel_def: dict) -> dict:
    return {"version": "0.0.1", "network_data_format": {"outputs": {"pred": {"channel_def": channel_def}}}}


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> LabelCatalog:
    """The 132-class CT table, read from a bundle whose metadata.json carries the tiny bundle's channel_def."""
    bundle = tmp_path_factory.mktemp("ct_bundle")
    write_json(bundle / "configs" / "metadata.json", metadata_with(CT_CHANNEL_DEF))
    return LabelCatalog.from_bundle(bundle)


def test_metadata_channel_def_is_read_without_background(ct, tmp_path):
    assert len(CT_CHANNEL_DEF) == 133
    assert sorted(ct.classes) == list(range(1, 133))
    assert ct.classes[14] == LabelClass(14, "left kidney", False)
    assert all(c.id == i and c.name == CT_NAMES[i] for i, c in ct.classes.items())
    assert Path(ct.source).name == "metadata.json" and Path(ct.source).parent.name == "configs"


def test_metadata_is_preferred_and_a_metadata_without_channel_def_falls_through(tmp_path):
    write_json(tmp_path / "configs" / "metadata.json", metadata_with({"0": "background", "1": "liver"}))
    write_json(tmp_path / "configs" / "label_dict.json", {"spleen": 3})
    assert LabelCatalog.from_bundle(tmp_path).source == str(tmp_path / "configs" / "metadata.json")
    write_json(tmp_path / "configs" / "metadata.json", {"version": "0.5.4", "network_data_format": {}})
    catalog = LabelCatalog.from_bundle(tmp_path)
    assert catalog.source == str(tmp_path / "configs" / "label_dict.json")
    assert list(catalog.classes) == [3]


def test_nv_segment_ct_label_dict_name_to_id(tmp_path):
    table = {name: i for i, name in CT_NAMES.items() if i not in NV_CT_OMITTED}
    write_json(tmp_path / "configs" / "label_dict.json", table)
    catalog = LabelCatalog.from_bundle(tmp_path)
    assert len(catalog.classes) == 124
    assert catalog.source == str(tmp_path / "configs" / "label_dict.json")
    assert catalog.resolve("left kidney") == 14
    assert catalog.free_ids() == list(range(133, 255))  # 2, 16, 18... are the CT model's, missing from the file
    with pytest.raises(UserError, match="ambiguous") as error:  # no class is just "kidney" in this table
        catalog.resolve("kidney")
    assert {"5", "14"} <= set(CANDIDATE.findall(str(error.value)))


def test_ctmr_label_dict_with_index_objects_and_deprecated_names(tmp_path):
    names = {("prostate or uterus (deprecated)" if i == 16 else name): i for i, name in CT_NAMES.items()}
    table = {
        name: {"index": i, "datasets": ["CT"], "CT": ["TotalSegmentatorV2"]}
        for name, i in {**names, **CTMR_EXTRA}.items()
    }
    write_json(tmp_path / "configs" / "label_dict.json", table)
    catalog = LabelCatalog.from_bundle(tmp_path)
    assert len(catalog.classes) == 132 + len(CTMR_EXTRA)
    assert catalog.classes[16] == LabelClass(16, "prostate or uterus", True)
    assert catalog.classes[162] == LabelClass(162, "uterus", True)
    assert catalog.resolve("vertebrae") == 146  # a class of its own in CTMR
    assert catalog.resolve("3rd ventricle") == 214
    assert catalog.resolve("Left Breast") == 163
    assert catalog.resolve("lung_left") == 135
    assert catalog.free_ids() == []  # the CT+MR model's ids 1..345 are all taken, whatever this file lists


def test_model_zoo_docs_labels_json(ct, tmp_path):
    write_json(tmp_path / "docs" / "labels.json", {name: i for i, name in CT_NAMES.items()})
    catalog = LabelCatalog.from_bundle(tmp_path)
    assert catalog.source == str(tmp_path / "docs" / "labels.json")
    assert catalog.classes == ct.classes


def test_missing_table_names_the_folder(tmp_path):
    bundle = tmp_path / "my bundle"
    write_json(bundle / "configs" / "metadata.json", {"version": "0.5.4"})
    with pytest.raises(UserError, match="no label table") as error:
        LabelCatalog.from_bundle(bundle)
    assert str(bundle) in str(error.value)
    with pytest.raises(UserError) as error:
        LabelCatalog.from_bundle(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(error.value)


@pytest.mark.parametrize(
    ("relative", "content"),
    [
        ("configs/metadata.json", '{"network_data_format": {"outputs": '),
        ("configs/label_dict.json", '{"liver": 1,}'),
        ("configs/label_dict.json", '{"liver": "one"}'),
        ("configs/label_dict.json", '{"liver": {"datasets": []}}'),
        ("configs/label_dict.json", '{"liver": 1, "hepar": 1}'),
        ("docs/labels.json", '["liver"]'),
        ("configs/metadata.json", json.dumps(metadata_with({"one": "liver"}))),
        ("configs/metadata.json", json.dumps(metadata_with({"0": "background"}))),
    ],
)
def test_malformed_table_names_the_file(tmp_path, relative, content):
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(UserError) as error:
        LabelCatalog.from_bundle(tmp_path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kidney_left", 14),
        ("Left Kidney", 14),
        ("L kidney", 14),
        ("rt. kidney", 5),
        ("kidney", 2),
        ("urinary bladder", 15),
        ("Spleen", 3),
        ("  SPLEEN  ", 3),
        ("lung tumor", 23),
        ("lung tumour", 23),
        ("Tumour-Lung", 23),
        ("gall bladder", 10),
        ("IVC", 7),
        ("Vertebra_L5", 33),
        ("upper lobe, left lung", 28),
        ("prostate", 118),
        ("23", 23),
        (" 7 ", 7),
    ],
)
def test_resolve_free_text_and_numbers(ct, text, expected):
    assert ct.resolve(text) == expected


def test_deprecated_names_are_not_chosen_and_lose_to_a_current_twin():
    channel_def = {**CT_CHANNEL_DEF, "16": "prostate or uterus (deprecated)", "131": "vertebrae L6 (deprecated)"}
    catalog = LabelCatalog.from_channel_def(channel_def, "ctmr metadata")
    assert catalog.classes[16].deprecated and catalog.classes[16].name == "prostate or uterus"
    assert not catalog.classes[118].deprecated
    assert catalog.resolve("prostate or uterus") == 118  # its one supported counterpart
    assert catalog.resolve("Prostate or Uterus (deprecated)") == 118
    assert catalog.resolve("prostate") == 118
    assert catalog.name(16) == "prostate or uterus"
    with pytest.raises(UserError, match="vertebrae L6' is marked deprecated in ctmr metadata"):
        catalog.resolve("vertebrae L6")
    twin = LabelCatalog.from_channel_def({**channel_def, "200": "Prostate_or_Uterus"}, "twin")
    assert twin.resolve("prostate or uterus") == 200
    twins = LabelCatalog.from_channel_def({**channel_def, "200": "spleen"}, "twins")
    with pytest.raises(UserError, match="ambiguous") as error:
        twins.resolve("spleen")
    assert set(CANDIDATE.findall(str(error.value))) == {"3", "200"}


@pytest.mark.parametrize("text", ["0", "133", "200"])
def test_numbers_outside_the_table_are_refused(ct, text):
    with pytest.raises(UserError, match=f"class id {text} is not in the label table"):
        ct.resolve(text)


def test_text_contained_in_several_names_is_ambiguous_with_five_candidates(ct):
    with pytest.raises(UserError, match="ambiguous") as error:
        ct.resolve("vertebrae")
    message = str(error.value)
    assert "unknown" not in message and "25 classes" in message  # 26 less the deprecated vertebrae L6
    listed = [int(i) for i in CANDIDATE.findall(message)]
    assert len(listed) == 5
    assert all(CT_NAMES[i].startswith("vertebrae ") and f"{i}: {CT_NAMES[i]}" in message for i in listed)


@pytest.mark.parametrize(
    ("text", "candidate"),
    [("livr", "1: liver"), ("kidny left", "14: left kidney"), ("thyroid carcinoma", "126: thyroid gland")],
)
def test_unknown_text_is_refused_with_suggestions_not_picked(ct, text, candidate):
    with pytest.raises(UserError, match="unknown") as error:
        ct.resolve(text)
    message = str(error.value)
    assert candidate in message and ct.source in message
    assert len(CANDIDATE.findall(message)) <= 5


def test_unknown_text_with_nothing_similar(ct):
    with pytest.raises(UserError, match=r"unknown.*no similar names"):
        ct.resolve("xyzzy")
    with pytest.raises(UserError, match="empty"):
        ct.resolve(" _ ")


def test_suggest_ranks_best_first_with_scores_in_unit_interval(ct):
    suggestions = ct.suggest("kidny left", limit=4)
    assert len(suggestions) == 4
    assert suggestions[0][0].id == 14
    scores = [score for _, score in suggestions]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > scores[1]
    assert ct.suggest("Left Kidney")[0] == (ct.classes[14], 1.0)
    assert ct.suggest("23", limit=3) == [(ct.classes[23], 1.0)]
    assert ct.suggest("qqqqqqqq") == []


def test_search_matches_all_tokens_in_any_order(ct):
    assert [c.id for c in ct.search("rib left")] == list(range(63, 75))
    assert [c.id for c in ct.search("Left_Rib")] == list(range(63, 75))
    assert [c.id for c in ct.search("L kidney")] == [14, 116]
    assert [c.id for c in ct.search("lobe lung right")] == [30, 31, 32]
    assert ct.search("pineal") == []
    assert ct.search("") == list(ct.classes.values())


def test_free_ids_exclude_the_table(ct):
    assert ct.free_ids() == list(range(133, 255))
    sparse = LabelCatalog.from_channel_def({"0": "background", "1": "liver", "254": "custom"}, "sparse")
    assert sparse.free_ids() == list(range(2, 254))


def test_name_of_known_background_and_unknown_ids(ct):
    assert ct.name(14) == "left kidney"
    assert ct.name(0) == "background"
    assert ct.name(200) == "class 200 (not in the table)"


def test_labels_command_lists_free_ids_as_ranges(capsys):
    from VistaFinetuneLib.cli import main

    assert main(["labels", "--free"]) == 0
    assert capsys.readouterr().out.strip() == "122 ids the table leaves free for new structures: 133..254"


# Segment names as Slicer and TotalSegmentator users type them, with the CT id each must resolve to (None: refused).
# On the code before issue 8 item 5, 36 of these 50 resolved correctly; now all do.
TYPED_NAMES = [
    ("Spleen", 3), ("liver", 1), ("kidney_left", 14), ("Left Kidney", 14), ("kidney_right", 5), ("Right kidney", 5),
    ("adrenal_gland_left", 9), ("Left adrenal", 9), ("Right adrenal gland", 8), ("gland of adrenal left", 9),
    ("lung_upper_lobe_left", 28), ("Upper lobe of left lung", 28), ("lung_middle_lobe_right", 31),
    ("Right lower lobe of lung", 32), ("vertebrae_L1", 37), ("L1 vertebra", 37), ("Vertebra T12", 38), ("C7", 50),
    ("urinary bladder", 15), ("urinary_bladder", 15), ("Oesophagus", 11), ("gall bladder", 10),
    ("thyroid_gland", 126), ("Thyroid", 126), ("small intestine", 19), ("portal vein", 17),
    ("portal_vein_and_splenic_vein", 17), ("inferior vena cava", 7), ("IVC", 7), ("iliac_vena_left", 60),
    ("Left iliac vein", 60), ("clavicula_right", 92), ("Right clavicle", 92), ("hip_left", 95), ("Left hip bone", 95),
    ("rib_left_1", 63), ("Left 1st rib", 63), ("gluteus_maximus_right", 99), ("Right gluteus maximus muscle", 99),
    ("costal cartilage", 114), ("Pulmonary veins", 119), ("atrial_appendage_left", 108), ("kidney_cyst_left", 116),
    ("Liver tumour", 26), ("hepatic tumor", 26), ("lung", 20),
    ("Tumor 1", None), ("Segment_1", None), ("kidney cyst", None), ("left lung", None),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), TYPED_NAMES)
def test_names_as_users_type_them(ct, text, expected):
    if expected is None:
        with pytest.raises(ResolveError):
            ct.resolve(text)
    else:
        assert ct.resolve(text) == expected


@pytest.mark.parametrize(
    ("text", "candidates"),
    [("adrenal", {8, 9}), ("kidney cyst", {116, 117}), ("hip bone", {95, 96}), ("upper lobe", {28, 30})],
)
def test_two_classes_that_fit_are_refused_with_both_as_candidates(ct, text, candidates):
    with pytest.raises(ResolveError, match="ambiguous") as error:
        ct.resolve(text)
    assert {c.id for c in error.value.candidates} == candidates


@pytest.mark.parametrize(
    ("text", "candidates"),
    [("Tumor", {23, 24, 26, 27, 128}), ("tumours", {23, 24, 26, 27, 128}), ("mass", {23, 24, 26, 27, 128}),
     ("lesion", {23, 24, 26, 27, 128}), ("cyst", {116, 117}), ("blood vessel", {6, 7, 17, 25, 58, 59, 60, 61}),
     ("muscle", {98, 99, 100, 101, 102, 103, 104, 105})],
)  # fmt: skip
def test_a_generic_word_is_refused_with_the_classes_it_could_mean(ct, text, candidates):
    with pytest.raises(ResolveError, match=f'generic class "{text}": it names no one structure') as error:
        ct.resolve(text)
    assert {c.id for c in error.value.candidates} == candidates


def test_a_generic_word_that_is_a_class_name_resolves_to_it(ct):
    assert ct.resolve("bone") == 21  # the class named "bone" (the skeleton, expanded into its bones)
    assert ct.resolve("lung tumour") == 23 and ct.resolve("left kidney cyst") == 116


def test_no_two_supported_ct_classes_share_a_normalised_name(ct):
    keys = [key for c in ct.classes.values() if not c.deprecated for key in name_keys(c.name)]
    assert len(keys) == len(set(keys))


def test_labels_resolve_json_for_programs(capsys):
    from VistaFinetuneLib.cli import main

    code = main(["labels", "--resolve", "Left adrenal", "--resolve", "Liver tumour", "--resolve", "Tumor 1", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 1  # one name did not resolve
    assert document["variant"] == "VistaFinetune tiny reference bundle"
    first, second, third = document["results"]
    assert first == {"text": "Left adrenal", "id": 9, "name": "left adrenal gland", "note": None}
    assert second["id"] == 26 and "130 'liver tumor'" in second["note"]
    assert third["id"] is None and "unknown" in third["error"]
    assert {"id": 23, "name": "lung tumor"} in third["candidates"]
    assert main(["labels", "--resolve", "spleen", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == 3
