"""``vista-finetune predict``: class prompts by id and name, clicks in RAS on a rotated anisotropic image, everything,
a folder batch and a finetuned run with a new id, judged against the synthetic phantoms' ground truth."""

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import NEW_CLASS_ID, NEW_CLASS_NAME
from scipy import ndimage

from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.cli import main
from VistaFinetuneLib.data import synthetic
from VistaFinetuneLib.data.geometry import ijk_to_ras, voxel_spacing_mm
from VistaFinetuneLib.errors import UserError
from VistaFinetuneLib.inference.prompts import ClassTable, ImageGrid, build_prompts, points_to_ijk
from VistaFinetuneLib.resources import RESOURCES

LIVER_DICE_BOUND = 0.5  # the tiny pretrained model's liver class prompt: Dice 0.91-0.93 measured on such phantoms
CLICK_RECALL_BOUND = 0.6
SPEC = synthetic.PhantomSpec(shape=(48, 48, 32), spacing_mm=(2.5, 2.5, 3.5), label_values={"liver": 1})


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """Two phantoms (tilted, axis-flipped, anisotropic grids) with the liver labelled 1."""
    root = tmp_path_factory.mktemp("predict-phantoms")
    synthetic.write_dataset(root, 2, seed=404, spec=SPEC)
    return root


def liver_truth(phantoms: Path, name: str = "case_000.nii.gz") -> np.ndarray:
    return np.asarray(nib.load(phantoms / "labelsTr" / name).dataobj) == 1


def deepest_liver_voxel(truth: np.ndarray) -> np.ndarray:
    """The liver voxel farthest from its surface: a click that is inside whichever way it is rounded."""
    depth = ndimage.distance_transform_edt(truth)
    return np.array(np.unravel_index(int(np.argmax(depth)), truth.shape), dtype=np.float64)


def predict(*args: str) -> int:
    return main(["predict", *map(str, args)])


def read_output(path: Path) -> tuple[np.ndarray, dict]:
    legend = json.loads(path.with_name(path.name.replace(".nii.gz", ".legend.json")).read_text())
    return np.asarray(nib.load(path).dataobj), legend


def test_class_prompt_by_name_and_by_id_find_the_liver_on_the_input_grid(tiny_bundle_dir, phantoms, tmp_path):
    image = phantoms / "imagesTr" / "case_000.nii.gz"
    by_name, by_id = tmp_path / "name", tmp_path / "id"
    assert predict(image, "--classes", "Liver", "--bundle-dir", tiny_bundle_dir, "--output-dir", by_name) == 0
    assert predict(image, "--classes", "1", "--bundle-dir", tiny_bundle_dir, "--output-dir", by_id) == 0
    labels, legend = read_output(by_name / "case_000.nii.gz")
    source, written = nib.load(image), nib.load(by_name / "case_000.nii.gz")
    assert written.shape == source.shape and np.array_equal(written.affine, source.affine)
    assert set(np.unique(labels)) <= {0, 1}
    assert dice(labels == 1, liver_truth(phantoms)) > LIVER_DICE_BOUND
    assert np.array_equal(labels, read_output(by_id / "case_000.nii.gz")[0])
    assert legend["labels"]["1"]["name"] == "liver" and legend["model"] == "pretrained"
    weights = (tiny_bundle_dir / "models" / "model.pt").read_bytes()
    assert legend["checkpoint_sha256"] == hashlib.sha256(weights).hexdigest()
    assert sorted(p.name for p in by_name.iterdir()) == ["case_000.legend.json", "case_000.nii.gz"]  # no temp files


def test_a_positive_click_in_ras_returns_the_organ_it_is_in(tiny_bundle_dir, phantoms, tmp_path):
    pytest.importorskip("skimage", reason="the bundle's point-only post-processing needs scikit-image")
    image = phantoms / "imagesTr" / "case_001.nii.gz"
    affine = nib.load(image).affine
    assert not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])))  # rotated
    assert len({round(s, 3) for s in voxel_spacing_mm(affine)}) == 3  # anisotropic
    truth = liver_truth(phantoms, "case_001.nii.gz")
    click = deepest_liver_voxel(truth)
    ras = ijk_to_ras(affine, click).tolist()
    code = predict(
        image, "--points", json.dumps([ras]), "--point-labels", "[1]", "--bundle-dir", tiny_bundle_dir,
        "--output-dir", tmp_path,
    )  # fmt: skip
    assert code == 0
    labels, legend = read_output(tmp_path / "case_001.nii.gz")
    assert labels[tuple(click.astype(int))] == 1
    # The tiny model's point head finds most of the organ (recall 0.79-0.87 measured) but leaks past it.
    assert np.logical_and(labels == 1, truth).sum() / truth.sum() > CLICK_RECALL_BOUND
    assert np.allclose(legend["prompts"]["points_ijk"][0], click, atol=1e-3)
    assert legend["labels"]["1"]["name"] == "point selection"


def test_everything_over_a_folder_writes_one_labelled_file_per_image(tiny_bundle_dir, phantoms, tmp_path):
    code = predict(
        "--input-dir", phantoms / "imagesTr", "--everything", "--bundle-dir", tiny_bundle_dir, "--output-dir", tmp_path
    )
    assert code == 0
    inference = json.loads((tiny_bundle_dir / "configs" / "inference.json").read_text())
    for name in ("case_000", "case_001"):
        labels, legend = read_output(tmp_path / f"{name}.nii.gz")
        assert labels.shape == nib.load(phantoms / "imagesTr" / f"{name}.nii.gz").shape
        assert legend["prompts"]["everything"] and legend["prompts"]["classes"] == inference["everything_labels"]
        assert set(np.unique(labels)) - {0} <= set(inference["everything_labels"])
        assert 255 not in labels


def test_a_finetuned_class_with_a_new_id_is_found_by_the_name_the_user_gave(new_id_run, phantoms, tmp_path):
    image = phantoms / "imagesTr" / "case_000.nii.gz"
    assert predict(image, "--run", new_id_run, "--classes", NEW_CLASS_NAME.lower(), "--output-dir", tmp_path) == 0
    labels, legend = read_output(tmp_path / "case_000.nii.gz")
    assert set(np.unique(labels)) == {0, NEW_CLASS_ID}
    assert dice(labels == NEW_CLASS_ID, liver_truth(phantoms)) > LIVER_DICE_BOUND
    assert legend["labels"][str(NEW_CLASS_ID)]["name"] == NEW_CLASS_NAME
    assert legend["run_dir"] == str(new_id_run) and legend["model"] == "finetuned"


def test_the_override_lets_new_ids_past_the_upstream_class_prompt_check():
    import torch

    from VistaFinetuneLib.inference.evaluator import allowing_class_ids

    class UpstreamPromptCheckStandIn:
        """The upstream bundle's rule (the tiny bundle's evaluator does not refuse unknown ids)."""

        def check_prompts_format(self, label_prompt, points, point_labels):
            if points is None and any(int(x) > 132 for x in label_prompt):
                raise ValueError("Undefined label prompt detected. Provide point prompts for zero-shot.")
            return label_prompt, points, point_labels

    prompts = [torch.tensor([NEW_CLASS_ID]), torch.tensor([3])]
    with pytest.raises(ValueError, match="Undefined label prompt"):
        UpstreamPromptCheckStandIn().check_prompts_format(prompts, None, None)
    checked, _, _ = allowing_class_ids(UpstreamPromptCheckStandIn, [NEW_CLASS_ID])().check_prompts_format(
        prompts, None, None
    )
    assert [int(x) for x in checked] == [NEW_CLASS_ID, 3]
    with pytest.raises(ValueError, match="Undefined label prompt"):  # other unknown ids are still refused
        allowing_class_ids(UpstreamPromptCheckStandIn, [NEW_CLASS_ID])().check_prompts_format(
            [torch.tensor([140])], None, None
        )


# -- prompt rules and geometry (no model) ---------------------------------------------------------------------------

TABLE = ClassTable(LabelCatalog.from_bundle(RESOURCES / "TinyBundle"), (NEW_CLASS_ID,), {NEW_CLASS_ID: NEW_CLASS_NAME})
GRID = ImageGrid((40, 50, 20), np.eye(4))


def oblique_affine() -> np.ndarray:
    """30 degrees about an oblique axis, spacing 0.8 x 1.3 x 3.0 mm, an LPS-like flip and an offset origin."""
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    angle = np.deg2rad(30.0)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.0, -1.0, 1.0]) @ np.diag([0.8, 1.3, 3.0])
    affine[:3, 3] = [12.5, -40.0, -610.0]
    return affine


def test_ras_points_go_to_the_voxel_of_the_saved_files_affine(tmp_path):
    path = tmp_path / "oblique.nii.gz"
    nifti = nib.Nifti1Image(np.zeros((40, 50, 20), dtype=np.int16), oblique_affine())
    nifti.set_qform(oblique_affine(), code=1)
    nifti.set_sform(oblique_affine(), code=1)
    nib.save(nifti, path)
    saved = nib.load(path).affine
    voxels = np.array([[3.0, 7.0, 2.0], [39.0, 0.0, 19.0], [20.4, 25.6, 10.2]])
    ras = nib.affines.apply_affine(saved, voxels)
    grid = ImageGrid((40, 50, 20), saved)
    assert np.allclose(points_to_ijk(ras, "ras", grid, path), voxels, atol=1e-4)
    outside = nib.affines.apply_affine(saved, [[20.0, 25.0, 20.0]])  # one slice past the last
    with pytest.raises(UserError, match=r"oblique.nii.gz: point RAS .* outside the image \(40x50x20 voxels\)"):
        points_to_ijk(outside, "ras", grid, path)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (dict(points=[[1, 2, 3], [4, 5, 6]], point_labels=[1]), r"2 point\(s\) but 1 point label"),
        (dict(points=[[1, 2, 3]]), "points and point labels go together"),
        (dict(points=[[1, 2]], point_labels=[1]), r"is not an \[x, y, z\] triple"),
        (dict(points=[[1, 2, 3]], point_labels=[2]), "use 1 for a positive and 0 for a negative"),
        (dict(points=[[1, 2, 3]], point_labels=[0]), "need at least one positive point"),
        (dict(points=[[1, 2, 300]], point_labels=[1], points_space="ijk"), "outside the image"),
        (dict(classes=["kidney"], points=[[1, 2, 3]], point_labels=[1]), r"class 2 \(kidney\) .* cannot be combined"),
        (dict(classes=["liver", "spleen"], points=[[1, 2, 3]], point_labels=[1]), "at most one class"),
        (dict(classes=["livr"]), r"unknown class \"livr\".*did you mean 1: liver"),
        (dict(classes=["adrenal gland"]), 'ambiguous class "adrenal gland".*left adrenal gland'),
        (dict(classes=[200]), "class 200 is neither in the label table"),
        (dict(classes=[255]), "ids run from 1 to 254"),
        (dict(everything=True, classes=["liver"]), "takes no classes or points"),
        (dict(), "nothing to segment"),
    ],
)
def test_bad_prompts_get_one_clear_message(prompt, message):
    with pytest.raises(UserError, match=message):
        build_prompts(TABLE, GRID, Path("ct.nii.gz"), points_space=prompt.pop("points_space", "ijk"), **prompt)


def test_prompt_rules_that_pass():
    assert build_prompts(TABLE, GRID, Path("ct.nii.gz"), classes=["TUMOR 1", "left kidney", 1]).class_ids == [
        NEW_CLASS_ID, 14, 1
    ]  # fmt: skip
    kidney = build_prompts(
        TABLE, GRID, Path("ct.nii.gz"), classes=[2], points=[[1, 2, 3]], point_labels=[0], points_space="ijk",
        expand_subclasses=False,
    )  # fmt: skip
    assert kidney.class_ids == [2] and kidney.point_labels == [0]  # a finetune that mapped onto 2: no expansion
    everything = build_prompts(TABLE, GRID, Path("ct.nii.gz"), everything=True, everything_ids=[3, 1])
    assert everything.class_ids == [1, 3, NEW_CLASS_ID]  # the run's own classes join the everything list


# -- several GPUs: only the command and the adoption of the bundle's outputs can be tested without GPUs -----------


def test_multi_gpu_batch_is_torchrun_over_the_bundles_own_configs(new_id_run, tiny_bundle_dir, tmp_path):
    import shutil

    from VistaFinetuneLib.inference.models import run_model
    from VistaFinetuneLib.inference.multi_gpu import MULTI_GPU_CONFIGS, multi_gpu_run

    with pytest.raises(UserError, match="no multi-GPU inference .*batch_inference.json"):
        multi_gpu_run(run_model(new_id_run), tmp_path, tmp_path / "work", [1], 2)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle)
    for name in MULTI_GPU_CONFIGS[1:]:
        (bundle / name).write_text("{}")  # stand-ins for NV-Segment-CT's batch and multi-GPU overlays
    run = multi_gpu_run(run_model(new_id_run, bundle), tmp_path / "cts", tmp_path / "work", [NEW_CLASS_ID], 2)
    command = run.command()
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[-4:-1] == ["monai.bundle", "run", "--args_file"]
    assert [Path(p).name for p in run.config_files] == [
        "inference.json", "batch_inference.json", "mgpu_inference.json", "multi_gpu_overrides.json"
    ]  # fmt: skip
    overrides = json.loads(Path(run.config_files[-1]).read_text())
    assert overrides["checkpointloader#load_path"] == str(new_id_run / "checkpoints" / "model_finetune.pt")
    assert overrides["everything_labels"] == [NEW_CLASS_ID] and overrides["evaluator#class_ids"] == [NEW_CLASS_ID]


def test_a_bundle_output_is_adopted_with_255_as_background(new_id_run, phantoms, tmp_path):
    from VistaFinetuneLib.inference.models import run_model
    from VistaFinetuneLib.inference.multi_gpu import adopt_bundle_output

    image = phantoms / "imagesTr" / "case_000.nii.gz"
    source = nib.load(image)
    values = np.zeros(source.shape, dtype=np.float32)
    values[:5], values[10:12] = 255.0, float(NEW_CLASS_ID)
    bundle_output = tmp_path / "case_000_trans.nii.gz"
    nib.save(nib.Nifti1Image(values, source.affine), bundle_output)
    model = run_model(new_id_run)
    adopt_bundle_output(model, model.class_table(), image, bundle_output, tmp_path / "out.nii.gz", [NEW_CLASS_ID])
    labels, legend = read_output(tmp_path / "out.nii.gz")
    assert set(np.unique(labels)) == {0, NEW_CLASS_ID} and legend["unprocessed_voxels"] == 5 * 48 * 32
    entry = legend["labels"][str(NEW_CLASS_ID)]
    assert entry["name"] == NEW_CLASS_NAME and entry["voxels"] == 2 * 48 * 32
