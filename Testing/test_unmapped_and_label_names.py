"""Friendlier mapping (issue 8 item 5): ``--unmapped background`` stages relabelled copies, dataset.json label names
suggest the mapping, ``--classes`` picks which to finetune."""

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import tree_digest

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.bundle.tiny_bundle import TEMPLATE_DIR
from VistaFinetuneLib.cli import main
from VistaFinetuneLib.data import dataset
from VistaFinetuneLib.data.label_names import find_label_names, mapping_from_names
from VistaFinetuneLib.data.mapping import check_mapping
from VistaFinetuneLib.data.relabel import stage_background
from VistaFinetuneLib.errors import UserError

pytestmark = pytest.mark.unit

CATALOG = LabelCatalog.from_bundle(TEMPLATE_DIR)
# A TotalSegmentator-like multi-organ label: liver 1, spleen 2, left kidney 3, plus values nobody maps.
VALUES = {1: "liver", 2: "spleen", 3: "kidney_left", 7: "Tumor 1", 41: "vertebrae_L1"}
OBLIQUE = np.array([[-0.8, 0.1, 0.0, 40.0], [0.1, -0.8, 0.0, 30.0], [0.0, 0.0, 2.5, -60.0], [0, 0, 0, 1]])


def write_case(root: Path, name: str, values: list[int], dtype, affine=OBLIQUE) -> None:
    """A 12x10x8 CT-like image and a label holding ``values`` in separate slabs."""
    rng = np.random.default_rng(len(name))
    image = rng.normal(-700, 300, size=(12, 10, 8)).astype(np.int16)
    image[2:10, 2:8, 1:7] = 60
    label = np.zeros((12, 10, 8), dtype=dtype)
    for index, value in enumerate(values):
        label[1 + 2 * index : 3 + 2 * index, 2:8, 2:6] = value
    for folder, data in (("imagesTr", image), ("labelsTr", label)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        nib.Nifti1Image(data, affine).to_filename(root / folder / f"{name}.nii.gz")


@pytest.fixture
def multi_organ(tmp_path) -> Path:
    root = tmp_path / "dataset"
    write_case(root, "case_a", [1, 2, 3, 7], np.uint8)
    write_case(root, "case_b", [1, 3, 41], np.int16, affine=np.diag([-1.5, -1.5, 3.0, 1.0]))
    write_case(root, "case_c", [1, 2], np.float32)
    return root


def test_staged_copies_drop_only_unmapped_values_and_keep_the_grid(multi_organ, tmp_path):
    before = tree_digest(multi_organ)
    cases = dataset.find_cases(multi_organ)
    audit = dataset.audit_cases(cases)
    staged, record = stage_background(cases, audit, [1, 3], tmp_path / "run" / "labels")
    assert tree_digest(multi_organ) == before  # the user's files are only read
    assert record["values_set_to_background"] == [2, 7, 41] and record["relabelled_cases"] == 3
    assert record["voxels_set_to_background"]["case_b"] == {"41": 48}
    for case, original in zip(staged, cases, strict=True):
        assert case.image == original.image and case.label == tmp_path / "run" / "labels" / f"{case.name}.nii.gz"
        old, new = nib.load(original.label), nib.load(case.label)
        old_data, new_data = np.asanyarray(old.dataobj), np.asanyarray(new.dataobj)
        assert np.allclose(new.affine, old.affine) and new.get_data_dtype() == old.get_data_dtype()
        assert set(np.unique(new_data)) <= {0, 1, 3}
        kept = np.isin(old_data, [1, 3])
        assert np.array_equal(new_data[kept], old_data[kept]) and not new_data[~kept].any()
    assert dataset.audit_cases(staged).label_values == [1, 3]


def test_cases_with_only_mapped_values_keep_their_own_file(multi_organ, tmp_path):
    cases = dataset.find_cases(multi_organ)
    staged, record = stage_background(cases, dataset.audit_cases(cases), [1, 2, 3, 7, 41], tmp_path / "labels")
    assert staged == cases and record["relabelled_cases"] == 0 and record["staged_labels_dir"] is None
    assert not (tmp_path / "labels").exists()


def test_cases_sharing_a_name_cannot_be_staged(multi_organ, tmp_path):
    cases = dataset.find_cases(multi_organ)
    audit = dataset.audit_cases(cases)
    twins = [cases[0], replace(cases[1], name=cases[0].name)]
    with pytest.raises(UserError, match="several cases are named 'case_a'"):
        stage_background(twins, audit, [1], tmp_path / "labels")


def test_unmapped_values_are_refused_by_default_and_named(multi_organ):
    with pytest.raises(UserError, match=r"value\(s\) \[2, 7, 41\].*--unmapped background"):
        check_mapping([[1, 1], [3, 14]], [1, 2, 3, 7, 41], CATALOG)
    warnings = check_mapping([[1, 1], [3, 14]], [1, 2, 3, 7, 41], CATALOG, unmapped="background")
    assert "label value(s) [2, 7, 41] are not mapped: set to background (0) in staged copies" in warnings
    with pytest.raises(UserError, match="--unmapped 'drop'"):
        check_mapping([[1, 1]], [1], CATALOG, unmapped="drop")


MSD_LABELS = {"0": "background", **{str(k): v for k, v in VALUES.items()}}
NNUNET_LABELS = {"background": 0, **{v: k for k, v in VALUES.items()}}


@pytest.mark.parametrize("labels", [MSD_LABELS, NNUNET_LABELS])
def test_msd_and_nnunet_label_names_are_read(tmp_path, labels):
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x", "labels": labels}))
    assert find_label_names(tmp_path, None) == (VALUES, tmp_path / "dataset.json")
    assert find_label_names(tmp_path / "elsewhere", None) is None


def test_label_names_suggest_the_mapping_and_classes_pick(tmp_path):
    path = tmp_path / "dataset.json"
    names = {1: "liver", 2: "spleen", 3: "kidney_left"}
    pairs, resolution = mapping_from_names(names, path, CATALOG, [1, 2, 3], None)
    assert pairs == [[1, 1], [2, 3], [3, 14]] and resolution["not_selected"] == {}
    pairs, resolution = mapping_from_names(VALUES, path, CATALOG, [1, 2, 3, 7, 41], "liver, Left Kidney")
    assert pairs == [[1, 1], [3, 14]]
    assert resolution["not_selected"] == {"2": "spleen", "7": "Tumor 1", "41": "vertebrae_L1"}
    assert resolution["classes"][1] | {"note": None} == {
        "value": 3, "label_name": "kidney_left", "text": "kidney_left", "id": 14, "name": "left kidney", "note": None
    }  # fmt: skip


def test_names_that_do_not_resolve_are_refused_with_the_way_out(tmp_path):
    with pytest.raises(UserError) as error:
        mapping_from_names(VALUES, tmp_path / "dataset.json", CATALOG, [1, 2, 3, 7, 41], None)
    message = str(error.value)
    assert "7 'Tumor 1'" in message and "liver -> 1" in message and "vertebrae_L1 -> 37" in message
    assert "--classes" in message and "--unmapped background" in message
    with pytest.raises(UserError, match=r"--classes 'pancreas': no single label .* named so \(its labels: 1: liver"):
        mapping_from_names(VALUES, tmp_path / "dataset.json", CATALOG, [1, 2, 3], "pancreas")


def prepare(dataset_dir: Path, bundle: Path, run_dir: Path, *flags: str) -> int:
    return main(["finetune", str(dataset_dir), "--prepare-only", "--skip-review", "--bundle-dir", str(bundle),
                 "--output-dir", str(run_dir), *flags])  # fmt: skip


def test_finetune_stages_relabelled_copies_and_records_what_was_dropped(multi_organ, tiny_bundle_dir, tmp_path, capsys):
    (multi_organ / "dataset.json").write_text(json.dumps({"labels": {"0": "background", **VALUES}}))
    before, bundle_before = tree_digest(multi_organ), tree_digest(tiny_bundle_dir)
    refused = tmp_path / "refused"
    assert prepare(multi_organ, tiny_bundle_dir, refused, "--classes", "liver,kidney_left") == 2
    assert "--unmapped background" in capsys.readouterr().err and not refused.exists()
    run_dir = tmp_path / "run"
    assert (
        prepare(multi_organ, tiny_bundle_dir, run_dir, "--classes", "liver,kidney_left", "--unmapped", "background")
        == 0
    )
    run = json.loads((run_dir / "run.json").read_text())
    assert run["label_mappings"] == {"default": [[1, 1], [3, 14]]} and run["bundle"]["variant"] == "tiny"
    datalist = json.loads((run_dir / "dataset" / "datalist.json").read_text())["training"]
    assert {Path(item["label"]).parent for item in datalist} == {run_dir / "dataset" / "labels"}
    for item in datalist:
        assert set(np.unique(np.asanyarray(nib.load(item["label"]).dataobj))) <= {0, 1, 3}
    assert run["request_resolved"]["unmapped"] == "background" and run["request_resolved"]["classes"] is None
    dropped = run["label_mapping_resolution"]["unmapped"]
    assert dropped["values_set_to_background"] == [2, 7, 41] and dropped["relabelled_cases"] == 3
    assert run["label_mapping_resolution"]["source"] == f"label names in {multi_organ / 'dataset.json'}"
    assert tree_digest(multi_organ) == before and tree_digest(tiny_bundle_dir) == bundle_before


def test_verify_accepts_values_recorded_as_set_to_background_and_only_those(tmp_path):
    from VistaFinetuneLib.finetune.verify import RunRecord, check_labels

    def labels_tier(resolution: dict):
        document = {
            "input": {
                "label_mappings": {"default": [[1, 1], [3, 14]]},
                "dataset_audit": {"label_values": [1, 2, 3, 7]},
                "label_mapping_resolution": resolution,
            }
        }
        (tmp_path / "output.json").write_text(json.dumps(document))
        return check_labels(RunRecord(tmp_path))

    assert labels_tier({"unmapped": {"values_set_to_background": [2, 7]}}).ok
    missing = labels_tier({"unmapped": {"values_set_to_background": [2]}})
    assert not missing.ok and missing.details == [
        "label value 7 occurs in the data but is not in input.label_mappings.default"
    ]
    assert not labels_tier({"source": "--label-mapping"}).ok


def test_flags_and_the_sanity_preset_win_over_dataset_json_names(tmp_path):
    from VistaFinetuneLib.finetune.pipeline import SANITY_MAPPING, FinetuneRequest, resolve_mapping

    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "cancer"}}))  # MSD Task06

    def request(**flags):
        return FinetuneRequest(output_dir=tmp_path / "run", dataset_dir=tmp_path, **flags)

    assert resolve_mapping(request(sanity=True), CATALOG, [1])[0] == SANITY_MAPPING
    assert resolve_mapping(request(label_mapping="[[1, 23]]"), CATALOG, [1])[0] == [[1, 23]]
    with pytest.raises(UserError, match=r"1 'cancer': generic class .*27: colon cancer primaries.*--label-mapping"):
        resolve_mapping(request(), CATALOG, [1])
    with pytest.raises(UserError, match="--classes picks among dataset.json's label names"):
        resolve_mapping(request(classes="cancer", label_mapping="[[1, 23]]"), CATALOG, [1])
